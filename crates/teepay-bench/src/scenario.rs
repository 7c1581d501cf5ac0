//! Bench scenarios: who holds channels with whom (with balances and fees), and the stream of
//! payments or swaps to drive through them. Nodes are indices into the bench's enclaves.

use anyhow::{Context, Result, bail};
use std::collections::VecDeque;
use std::path::Path;
use teepay_routing::topology::{SplitMix64, Topology};
use teepay_types::{ChainId, FeePolicy};

pub const CHAIN_A: ChainId = ChainId(1);
pub const CHAIN_B: ChainId = ChainId(2);
/// Per side of every synthetic channel: never the limit.
pub const DEPOSIT: u128 = 1 << 100;

#[derive(Debug, Clone)]
pub struct BenchChannel {
    pub chain: ChainId,
    pub x: usize,
    pub y: usize,
    pub balance_x: u128,
    pub balance_y: u128,
    pub fee_x: FeePolicy,
    pub fee_y: FeePolicy,
}

#[derive(Debug, Clone)]
pub enum Job {
    Pay {
        chain: ChainId,
        payer: usize,
        payee: usize,
        amount: u128,
        max_fee: u128,
    },
    /// Each give: (from, chain, to, amount); every party gives and receives once.
    Swap {
        gives: Vec<(usize, ChainId, usize, u128)>,
    },
}

impl Job {
    /// The nodes that order or receive value in the job (intermediaries come with them).
    pub fn parties(&self) -> Vec<usize> {
        match self {
            Job::Pay { payer, payee, .. } => vec![*payer, *payee],
            Job::Swap { gives } => gives.iter().flat_map(|g| [g.0, g.2]).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// One line for the report: what the nodes, channels and jobs are.
    pub description: String,
    pub nodes: usize,
    pub chains: Vec<ChainId>,
    pub channels: Vec<BenchChannel>,
    /// Cycled through: the k-th job started is `jobs[k % jobs.len()]`.
    pub jobs: Vec<Job>,
    pub hops: &'static str,
}

impl Scenario {
    /// Untimed jobs run before the measured ones: enough of the first `measured` jobs that
    /// every node taking part in one of them has finished one. Round messages are MAC'd from
    /// the first (the session key is derived at attestation), but a node signs its payment
    /// orders until the hub has MAC'd a batch to it (proof the hub holds the session); a
    /// long-lived node pays that once per hub, so the measured run is the steady state (the
    /// output says so).
    pub fn warm_up(&self, measured: usize) -> Vec<Job> {
        let mut seen = std::collections::HashSet::new();
        self.jobs
            .iter()
            .take(measured)
            .filter(|job| job.parties().into_iter().fold(false, |new, p| seen.insert(p) | new))
            .cloned()
            .collect()
    }
    pub fn is_swap(&self) -> bool {
        matches!(self.jobs.first(), Some(Job::Swap { .. }))
    }
}

/// Which payments a graph scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Routes {
    /// Payer and payee exactly three hops apart.
    ThreeHop,
    /// Uniformly random payer and payee (whatever the route).
    Random,
}

/// `two-hubs`: intermediaries 0 and 1 with a channel between them, `leaves` leaves on each.
pub fn two_hubs(leaves: usize) -> Scenario {
    let mut channels = vec![synthetic(CHAIN_A, 0, 1, FeePolicy::default())];
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for i in 0..leaves * 2 {
        let node = 2 + i;
        let side = i % 2;
        channels.push(synthetic(CHAIN_A, side, node, FeePolicy::default()));
        if side == 0 { left.push(node) } else { right.push(node) }
    }
    // Alternate directions and cover every (left, right) pair so balances stay level.
    let mut jobs = Vec::new();
    for (i, l) in left.iter().enumerate() {
        for j in 0..right.len() {
            let r = right[(i + j) % right.len()];
            jobs.push(pay(CHAIN_A, *l, r, 1, 0));
            jobs.push(pay(CHAIN_A, r, *l, 1, 0));
        }
    }
    Scenario {
        name: "two-hubs".into(),
        description: format!(
            "{} nodes (2 intermediaries, {leaves} leaves each), {} channels, 3-hop payments of 1 wei",
            2 + 2 * leaves,
            channels.len()
        ),
        nodes: 2 + leaves * 2,
        chains: vec![CHAIN_A],
        channels,
        jobs,
        hops: "3",
    }
}

fn synthetic(chain: ChainId, x: usize, y: usize, fee: FeePolicy) -> BenchChannel {
    BenchChannel { chain, x, y, balance_x: DEPOSIT, balance_y: DEPOSIT, fee_x: fee, fee_y: fee }
}

fn pay(chain: ChainId, payer: usize, payee: usize, amount: u128, max_fee: u128) -> Job {
    Job::Pay { chain, payer, payee, amount, max_fee }
}

/// `scale-free-N`: a Barabási–Albert graph (2 channels per new node), 1-wei payments.
pub fn scale_free(nodes: usize, routes: Routes) -> Result<Scenario> {
    if nodes < 5 {
        bail!("a scale-free scenario needs at least 5 nodes");
    }
    let topo = Topology::scale_free(nodes as u32, 2, DEPOSIT, FeePolicy::default(), 7);
    from_topology(format!("scale-free-{nodes}"), &topo, routes, 1, 0, "scale-free (Barabási–Albert, m = 2)")
}

/// `ln`: the 2020 Lightning Network graph with its balances and fee policies; payments of
/// 10 sat (10,000 msat, the unit of the data) with LDK's default fee limit (1% + 50 sat).
pub fn lightning(dir: &Path, routes: Routes) -> Result<Scenario> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).with_context(|| {
            format!("reading {} (set --ln-graph to the ln-graph-2020 directory)", dir.join(f).display())
        })
    };
    let topo = Topology::lightning_csv(&read("channels.csv")?, &read("edges.csv")?)?;
    let amount = 10_000;
    from_topology("ln".into(), &topo, routes, amount, amount / 100 + 50_000, "Lightning Network 2020")
}

fn from_topology(
    name: String,
    topo: &Topology,
    routes: Routes,
    amount: u128,
    max_fee: u128,
    what: &str,
) -> Result<Scenario> {
    let n = topo.nodes as usize;
    let channels: Vec<BenchChannel> = topo
        .channels
        .iter()
        .map(|c| BenchChannel {
            chain: CHAIN_A,
            x: c.a as usize,
            y: c.b as usize,
            balance_x: c.balance_a,
            balance_y: c.balance_b,
            fee_x: c.fee_a,
            fee_y: c.fee_b,
        })
        .collect();
    // Pairs usable in both directions: at least `amount` on each side of every hop would be
    // the router's business; here only the hop count is chosen.
    let mut adj = vec![Vec::new(); n];
    for c in &topo.channels {
        adj[c.a as usize].push(c.b as usize);
        adj[c.b as usize].push(c.a as usize);
    }
    let mut rng = SplitMix64::new(11);
    let mut jobs = Vec::new();
    let mut attempts = 0;
    while jobs.len() < 2_000 && attempts < 20_000 {
        attempts += 1;
        let s = rng.below(n as u64) as usize;
        let d = match routes {
            Routes::Random => {
                let d = rng.below(n as u64) as usize;
                if d == s || adj[s].is_empty() || adj[d].is_empty() {
                    continue;
                }
                d
            }
            Routes::ThreeHop => {
                let at3 = at_distance(&adj, s, 3);
                if at3.is_empty() {
                    continue;
                }
                at3[rng.below(at3.len() as u64) as usize]
            }
        };
        jobs.push(pay(CHAIN_A, s, d, amount, max_fee));
        jobs.push(pay(CHAIN_A, d, s, amount, max_fee));
    }
    if jobs.is_empty() {
        bail!("{name}: no payer/payee pairs found for {routes:?} routes");
    }
    Ok(Scenario {
        description: format!(
            "{what}: {n} nodes, {} channels, {} payments of {amount}",
            channels.len(),
            match routes {
                Routes::ThreeHop => "3-hop",
                Routes::Random => "random-pair",
            }
        ),
        name,
        nodes: n,
        chains: vec![CHAIN_A],
        channels,
        jobs,
        hops: match routes {
            Routes::ThreeHop => "3",
            Routes::Random => "any",
        },
    })
}

/// Nodes exactly `k` hops from `s` (breadth-first).
fn at_distance(adj: &[Vec<usize>], s: usize, k: usize) -> Vec<usize> {
    let mut dist = vec![usize::MAX; adj.len()];
    dist[s] = 0;
    let mut queue = VecDeque::from([s]);
    let mut out = Vec::new();
    while let Some(u) = queue.pop_front() {
        if dist[u] == k {
            out.push(u);
            continue;
        }
        for &v in &adj[u] {
            if dist[v] == usize::MAX {
                dist[v] = dist[u] + 1;
                queue.push_back(v);
            }
        }
    }
    out
}

/// `swap`: `leaves` parties, each with a channel to intermediary 0 on chain A and to
/// intermediary 1 on chain B. A 2-party swap: p gives on A to q, q gives on B to p (2 hops
/// each). A 4-party swap is a ring p1 →A p2 →B p3 →A p4 →B p1.
pub fn swap(leaves: usize, parties: usize) -> Result<Scenario> {
    if parties != 2 && parties != 4 {
        bail!("--parties must be 2 or 4");
    }
    if leaves < parties {
        bail!("--leaves must be at least --parties");
    }
    let mut channels = Vec::new();
    for leaf in 0..leaves {
        channels.push(synthetic(CHAIN_A, 0, 2 + leaf, FeePolicy::default()));
        channels.push(synthetic(CHAIN_B, 1, 2 + leaf, FeePolicy::default()));
    }
    let mut jobs = Vec::new();
    for start in 0..leaves {
        let p: Vec<usize> = (0..parties).map(|i| 2 + (start + i * (1 + start % 3)) % leaves).collect();
        let mut distinct = p.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != parties {
            continue;
        }
        let gives = (0..parties)
            .map(|i| (p[i], if i % 2 == 0 { CHAIN_A } else { CHAIN_B }, p[(i + 1) % parties], 1))
            .collect();
        jobs.push(Job::Swap { gives });
    }
    if jobs.is_empty() {
        bail!("no swap rings with distinct parties; use more --leaves");
    }
    Ok(Scenario {
        name: format!("swap-{parties}"),
        description: format!(
            "{} nodes (2 intermediaries, {leaves} parties), {} channels on 2 chains, {parties}-party cross-chain swaps of 1 wei per transfer",
            2 + leaves,
            channels.len()
        ),
        nodes: 2 + leaves,
        chains: vec![CHAIN_A, CHAIN_B],
        channels,
        jobs,
        hops: "2 per transfer",
    })
}
