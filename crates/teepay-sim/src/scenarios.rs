//! Named scenarios for the checker and tests, and random networks for sampling.

use crate::rng::SplitMix64;
use crate::world::{Budget, World};
use std::collections::{BTreeSet, VecDeque};
use teepay_enclave::FeePolicy;
use teepay_types::{Address, Amount, Asset, ChainId, SealLimits};

pub const CHAIN_1: ChainId = ChainId(1);
pub const CHAIN_2: ChainId = ChainId(2);

/// The default fault budget of the exhaustive checker: one duplicate and one crash/restart
/// per schedule, which explores in seconds. Forgeries are not budgeted: the explorer checks
/// a forged copy of every in-flight message at every state. Ejects, drops, refund requests
/// and clock jumps are enabled with `--faults` (their spaces take minutes to hours).
pub fn exhaustive_budget() -> Budget {
    Budget { duplicates: 1, crashes: 1, ..Budget::default() }
}

fn fee(base: u128, ppm: u32) -> FeePolicy {
    FeePolicy { base: Amount(base), ppm }
}

/// payer → i1 → i2 → payee on one chain: one three-hop payment of 10 (fees 1 + 1).
pub fn three_hop() -> World {
    three_hop_in(World::new(3))
}

/// [`three_hop`] with peer acks: every COMMIT carries all four signed PREPARED acks.
pub fn three_hop_with_peer_acks() -> World {
    three_hop_in(World::with_peer_acks(3))
}

/// [`three_hop`]'s nodes, channels and payment in `w` (a world configured beforehand).
pub fn three_hop_in(w: World) -> World {
    three_hop_with(w, |_| {})
}

/// [`three_hop_in`], with `before_payment` run once the channels are open.
fn three_hop_with(mut w: World, before_payment: impl FnOnce(&mut World)) -> World {
    let [p, i1, i2, r] = ["payer", "hop1", "hop2", "payee"].map(|n| w.add_node(n));
    w.open_channel(CHAIN_1, p, i1, 100, 100, fee(0, 0), fee(1, 0));
    w.open_channel(CHAIN_1, i1, i2, 100, 100, fee(1, 0), fee(1, 0));
    w.open_channel(CHAIN_1, i2, r, 100, 100, fee(1, 0), fee(0, 0));
    before_payment(&mut w);
    w.pay(CHAIN_1, &[p, i1, i2, r], 10, 5).expect("valid payment");
    w.budget = exhaustive_budget();
    w
}

/// A token on chain 1 (a stablecoin, say) for the scenarios that swap tokens.
pub const TOKEN_1: Asset = Asset::Erc20(Address([0x51; 20]));
/// A token on chain 2.
pub const TOKEN_2: Asset = Asset::Erc20(Address([0x52; 20]));

/// Four parties swap in a ring across two chains and three assets: A→B on chain 1 in
/// [`TOKEN_1`], B→C on chain 2 in ether, C→D on chain 1 in ether, D→A on chain 2 in
/// [`TOKEN_2`], atomically. Beside each token channel runs an ether channel between the same
/// parties, so a leg routed over the wrong one would show in the per-asset accounting.
pub fn swap_2chain_4party() -> World {
    let mut w = World::new(4);
    let [a, b, c, d] = ["alice", "bob", "carol", "dave"].map(|n| w.add_node(n));
    w.open_channel_of(CHAIN_1, TOKEN_1, a, b, 100, 100, fee(0, 0), fee(0, 0));
    w.open_channel(CHAIN_1, a, b, 100, 100, fee(0, 0), fee(0, 0));
    w.open_channel(CHAIN_2, b, c, 100, 100, fee(0, 0), fee(0, 0));
    w.open_channel(CHAIN_1, c, d, 100, 100, fee(0, 0), fee(0, 0));
    w.open_channel_of(CHAIN_2, TOKEN_2, d, a, 100, 100, fee(0, 0), fee(0, 0));
    w.swap_of(&[
        (CHAIN_1, TOKEN_1, vec![a, b], 10),
        (CHAIN_2, Asset::Native, vec![b, c], 20),
        (CHAIN_1, Asset::Native, vec![c, d], 30),
        (CHAIN_2, TOKEN_2, vec![d, a], 40),
    ])
    .expect("valid swap");
    w.budget = exhaustive_budget();
    w
}

/// [`three_hop`] where hosts lie: per schedule one lie of a node's host to its enclave (an
/// invented deposit, an open channel reported settled, a rolled-back sealed log, a replayed
/// batch), the hub host's replay of an order or its report of an outcome the contract never
/// recorded; the final invariants hold for every honest node (3.2M states, ~160 s of CPU in
/// release).
pub fn three_hop_hostile_hosts() -> World {
    let mut w = three_hop();
    w.budget = Budget { lies: 1, ..Budget::default() };
    w
}

pub fn by_name(name: &str) -> Option<World> {
    match name {
        "three-hop" => Some(three_hop()),
        "three-hop-hostile-hosts" => Some(three_hop_hostile_hosts()),
        "three-hop-hub-group" => Some(three_hop_hub_group()),
        "swap-2chain-4party" => Some(swap_2chain_4party()),
        "three-hop-peer-acks" => Some(three_hop_with_peer_acks()),
        _ => None,
    }
}

pub const SCENARIOS: &[&str] = &[
    "three-hop",
    "swap-2chain-4party",
    "three-hop-peer-acks",
    "three-hop-hostile-hosts",
    "three-hop-hub-group",
];

/// Shortest path by hops over `chain`'s channels (the sim's stand-in for the router).
pub fn bfs_path(w: &World, chain: ChainId, from: usize, to: usize) -> Option<Vec<usize>> {
    let n = w.nodes.len();
    let mut prev = vec![usize::MAX; n];
    let mut seen = BTreeSet::from([from]);
    let mut queue = VecDeque::from([from]);
    while let Some(u) = queue.pop_front() {
        if u == to {
            let mut path = vec![to];
            while *path.last().expect("non-empty") != from {
                path.push(prev[*path.last().expect("non-empty")]);
            }
            path.reverse();
            return Some(path);
        }
        for (v, p) in prev.iter_mut().enumerate() {
            if w.channel_between(chain, u, v).is_some() && seen.insert(v) {
                *p = u;
                queue.push_back(v);
            }
        }
    }
    None
}

/// A random network of `nodes` nodes (a ring plus random chords on chain 1, a ring on
/// chain 2) with `payments` concurrent payments and `swaps` concurrent two-party swaps.
pub fn random_network(seed: u64, nodes: usize, payments: usize, swaps: usize) -> World {
    let mut rng = SplitMix64::new(seed);
    // One network in three runs with peer acks, so random schedules cover both COMMIT forms.
    let mut w = if seed % 3 == 2 { World::with_peer_acks(seed) } else { World::new(seed) };
    let ids: Vec<usize> = (0..nodes).map(|i| w.add_node(&format!("n{i}"))).collect();
    // Snapshots every 0–3 deltas (by seed), so crashes land on every mix of snapshot and
    // delta and each restart's replay is checked against the state it replaces.
    w.set_seal_limits(SealLimits { min_log_bytes: 0, max_deltas: (seed % 4) as usize });
    let random_fee = |rng: &mut SplitMix64| fee(u128::from(rng.below(3)), rng.below(5_000) as u32);
    let open = |w: &mut World, rng: &mut SplitMix64, chain: ChainId, a: usize, b: usize| {
        if a != b && w.channel_between(chain, a, b).is_none() {
            let (da, db) = (100 + u128::from(rng.below(900)), 100 + u128::from(rng.below(900)));
            let (fa, fb) = (random_fee(rng), random_fee(rng));
            w.open_channel(chain, a, b, da, db, fa, fb);
        }
    };
    for i in 0..nodes {
        open(&mut w, &mut rng, CHAIN_1, ids[i], ids[(i + 1) % nodes]);
        open(&mut w, &mut rng, CHAIN_2, ids[i], ids[(i + 1) % nodes]);
    }
    for _ in 0..nodes {
        let (a, b) = (rng.below(nodes as u64) as usize, rng.below(nodes as u64) as usize);
        open(&mut w, &mut rng, CHAIN_1, ids[a], ids[b]);
    }
    if seed.is_multiple_of(2) {
        warm_up_sessions(&mut w, &ids);
    }
    // Half the networks run a hub group (a leader and two standbys) whose leader may be
    // lost mid-run (`Action::Failover`).
    if seed % 4 < 2 {
        w.add_standbys(2);
    }
    for _ in 0..payments {
        let (src, dst) = distinct_pair(&mut rng, nodes);
        let path = bfs_path(&w, CHAIN_1, src, dst).expect("the ring connects everyone");
        let amount = 1 + u128::from(rng.below(60));
        // A hub-side refusal (e.g. nothing) is impossible here; node-side refusals
        // (insufficient funds under concurrency) are part of what we test.
        w.pay(CHAIN_1, &path, amount, 200).expect("hub accepts well-formed payments");
    }
    for _ in 0..swaps {
        let (x, y) = distinct_pair(&mut rng, nodes);
        let there = bfs_path(&w, CHAIN_1, x, y).expect("ring");
        let back = bfs_path(&w, CHAIN_2, y, x).expect("ring");
        let (give, get) = (1 + u128::from(rng.below(40)), 1 + u128::from(rng.below(40)));
        w.swap(&[(CHAIN_1, there, give), (CHAIN_2, back, get)]).expect("hub accepts well-formed swaps");
    }
    w.budget = Budget {
        duplicates: 3,
        drops: 3,
        tampers: 2,
        crashes: 3,
        ejects: 2,
        refunds: 3,
        ticks: 2,
        lies: 3,
        failovers: 2,
    };
    w
}

/// [`three_hop`] with a hub group: the leader and two standby replicas; one leader loss and
/// nothing else per schedule (with a duplicate too it runs for long minutes).
pub fn three_hop_hub_group() -> World {
    let mut w = three_hop_with(World::new(3), |w| w.add_standbys(2));
    w.budget = Budget { failovers: 1, ..Budget::default() };
    w
}

/// One fault-free payment from every node to its ring neighbour, delivered to the end: every
/// node and the hub then share a session the hub has used, so the workload's payment orders
/// are MAC'd instead of signed (half the random networks start this way, half cold).
fn warm_up_sessions(w: &mut World, ids: &[usize]) {
    for (i, &node) in ids.iter().enumerate() {
        let next = ids[(i + 1) % ids.len()];
        w.pay(CHAIN_1, &[node, next], 1, 0).expect("hub accepts a one-hop payment");
    }
    w.drain().expect("a fault-free warm-up keeps every invariant");
}

fn distinct_pair(rng: &mut SplitMix64, n: usize) -> (usize, usize) {
    let a = rng.below(n as u64) as usize;
    let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
    (a, b)
}
