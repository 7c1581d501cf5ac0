//! Router tests: the DESIGN §8 objective on hand-built graphs, every route's validity, and
//! exact optimality against brute force over all simple paths of random small graphs.

use proptest::prelude::*;
use teepay_routing::{ChannelInfo, Graph, Network, Route, RouteError, RouteQuery};
use teepay_types::{Address, Amount, Asset, ChainId, ChannelId, FeePolicy, Hop};

fn addr(i: u8) -> Address {
    Address([i; 20])
}

fn fee(base: u128, ppm: u32) -> FeePolicy {
    FeePolicy { base: Amount(base), ppm }
}

fn channel(
    id: u8,
    a: u8,
    b: u8,
    bal_a: u128,
    bal_b: u128,
    fee_a: FeePolicy,
    fee_b: FeePolicy,
) -> ChannelInfo {
    ChannelInfo {
        id: ChannelId([id; 32]),
        a: addr(a),
        b: addr(b),
        balance_a: Amount(bal_a),
        balance_b: Amount(bal_b),
        fee_a,
        fee_b,
    }
}

fn query(s: u8, d: u8, amount: u128, max_fee: u128) -> RouteQuery {
    RouteQuery { source: addr(s), destination: addr(d), amount: Amount(amount), max_fee: Amount(max_fee) }
}

fn nodes(route: &Route) -> Vec<u8> {
    let mut out = vec![route.hops[0].from.0[0]];
    out.extend(route.hops.iter().map(|h| h.to.0[0]));
    out
}

#[test]
fn prefers_the_faster_bottleneck_over_fewer_hops() {
    let mut g = Graph::new();
    // 1 → 2 → 5 (slow node 2) versus 1 → 3 → 4 → 5 (fast nodes).
    for c in [
        channel(1, 1, 2, 100, 0, fee(0, 0), fee(0, 0)),
        channel(2, 2, 5, 100, 0, fee(0, 0), fee(0, 0)),
        channel(3, 1, 3, 100, 0, fee(0, 0), fee(0, 0)),
        channel(4, 3, 4, 100, 0, fee(0, 0), fee(0, 0)),
        channel(5, 4, 5, 100, 0, fee(0, 0), fee(0, 0)),
    ] {
        g.upsert_channel(&c).unwrap();
    }
    for n in [1, 3, 4, 5] {
        g.set_latency(addr(n), 200);
    }
    g.set_latency(addr(2), 5_000);
    let r = g.find_route(&query(1, 5, 10, 0)).unwrap();
    assert_eq!(nodes(&r), vec![1, 3, 4, 5]);
    assert_eq!(r.latency_us, 200);
    // Equal latencies: fewer hops wins.
    g.set_latency(addr(2), 200);
    assert_eq!(nodes(&g.find_route(&query(1, 5, 10, 0)).unwrap()), vec![1, 2, 5]);
}

#[test]
fn tie_breaks_by_fees_and_computes_amounts_backwards() {
    let mut g = Graph::new();
    // Two 2-hop paths; intermediary 2 charges more than 3.
    for c in [
        channel(1, 1, 2, 1000, 0, fee(0, 0), fee(0, 0)),
        channel(2, 2, 4, 1000, 0, fee(5, 10_000), fee(0, 0)),
        channel(3, 1, 3, 1000, 0, fee(0, 0), fee(0, 0)),
        channel(4, 3, 4, 1000, 0, fee(1, 1_000), fee(0, 0)),
    ] {
        g.upsert_channel(&c).unwrap();
    }
    let r = g.find_route(&query(1, 4, 500, 10)).unwrap();
    assert_eq!(nodes(&r), vec![1, 3, 4]);
    // Node 3 forwards 500 and charges 1 + floor(500 * 0.1%) = 1.
    assert_eq!(r.hops.iter().map(|h| h.amount.0).collect::<Vec<_>>(), vec![501, 500]);
    assert_eq!(r.fee, Amount(1));
    // The fee limit excludes every path that charges.
    assert_eq!(g.find_route(&query(1, 4, 500, 0)), Err(RouteError::NoRoute));
}

#[test]
fn respects_direction_and_reservations() {
    let mut g = Graph::new();
    g.upsert_channel(&channel(1, 1, 2, 100, 30, fee(0, 0), fee(0, 0))).unwrap();
    assert!(g.find_route(&query(1, 2, 100, 0)).is_ok());
    assert_eq!(g.find_route(&query(2, 1, 31, 0)), Err(RouteError::NoRoute), "B's side holds only 30");
    g.reserve(ChannelId([1; 32]), addr(1), Amount(60)).unwrap();
    assert_eq!(g.find_route(&query(1, 2, 41, 0)), Err(RouteError::NoRoute), "60 of 100 in flight");
    assert!(g.find_route(&query(1, 2, 40, 0)).is_ok());
    assert!(matches!(
        g.reserve(ChannelId([1; 32]), addr(1), Amount(41)),
        Err(RouteError::InsufficientCapacity { .. })
    ));
    g.release(ChannelId([1; 32]), addr(1), Amount(60), true).unwrap();
    assert_eq!(g.available(ChannelId([1; 32]), addr(2)).unwrap(), Amount(90), "applied: B's side grew");
    assert_eq!(g.available(ChannelId([1; 32]), addr(1)).unwrap(), Amount(40));
    assert_eq!(
        g.release(ChannelId([1; 32]), addr(1), Amount(1), false),
        Err(RouteError::NotReserved(ChannelId([1; 32])))
    );
    g.credit(ChannelId([1; 32]), addr(1), Amount(5)).unwrap();
    assert_eq!(g.available(ChannelId([1; 32]), addr(1)).unwrap(), Amount(45), "a deposit on A's side");
    assert_eq!(
        g.credit(ChannelId([1; 32]), addr(1), Amount(u128::MAX)),
        Err(RouteError::Overflow(ChannelId([1; 32])))
    );
    assert_eq!(
        g.credit(ChannelId([1; 32]), addr(3), Amount(1)),
        Err(RouteError::NotAParty(ChannelId([1; 32]), addr(3)))
    );
    let snap = g.channel(ChannelId([1; 32])).unwrap();
    assert_eq!((snap.info.balance_a, snap.info.balance_b, snap.open), (Amount(45), Amount(90), true));
    g.close_channel(ChannelId([1; 32])).unwrap();
    assert_eq!(g.find_route(&query(1, 2, 1, 0)), Err(RouteError::NoRoute));
    assert!(!g.channels().next().unwrap().open);
}

#[test]
fn bad_queries_get_typed_errors() {
    let mut g = Graph::new();
    g.upsert_channel(&channel(1, 1, 2, 100, 0, fee(0, 0), fee(0, 0))).unwrap();
    assert_eq!(g.find_route(&query(1, 2, 0, 0)), Err(RouteError::ZeroAmount));
    assert_eq!(g.find_route(&query(1, 1, 5, 0)), Err(RouteError::SameEndpoints));
    assert_eq!(g.find_route(&query(1, 9, 5, 0)), Err(RouteError::UnknownNode(addr(9))));
    assert_eq!(g.find_route(&query(1, 2, u128::MAX, 0)), Err(RouteError::NoRoute));
    assert_eq!(
        g.upsert_channel(&channel(2, 3, 3, 1, 1, fee(0, 0), fee(0, 0))),
        Err(RouteError::SelfChannel(ChannelId([2; 32])))
    );
    assert_eq!(
        g.upsert_channel(&channel(1, 1, 3, 1, 1, fee(0, 0), fee(0, 0))),
        Err(RouteError::PartiesChanged(ChannelId([1; 32])))
    );
    assert!(matches!(Network::new().graph(ChainId(5), Asset::Native), Err(RouteError::NoChannels(..))));
}

#[test]
fn splits_over_paths_when_no_single_path_has_capacity() {
    let mut g = Graph::new();
    for c in [
        channel(1, 1, 2, 60, 0, fee(0, 0), fee(0, 0)),
        channel(2, 2, 4, 60, 0, fee(1, 0), fee(0, 0)),
        channel(3, 1, 3, 60, 0, fee(0, 0), fee(0, 0)),
        channel(4, 3, 4, 60, 0, fee(1, 0), fee(0, 0)),
    ] {
        g.upsert_channel(&c).unwrap();
    }
    assert_eq!(g.find_route(&query(1, 4, 100, 10)), Err(RouteError::NoRoute));
    let parts = g.find_multipath(&query(1, 4, 100, 10), 4).unwrap();
    assert_eq!(parts.len(), 2);
    let delivered: u128 = parts.iter().map(|r| r.hops.last().unwrap().amount.0).sum();
    let fees: u128 = parts.iter().map(|r| r.fee.0).sum();
    assert_eq!((delivered, fees), (100, 2));
    assert_eq!(
        g.find_multipath(&query(1, 4, 120, 10), 4),
        Err(RouteError::NoRoute),
        "fees need capacity too"
    );
    assert_eq!(g.find_multipath(&query(1, 4, 100, 10), 1), Err(RouteError::NoRoute));
}

#[test]
fn legs_on_one_chain_do_not_double_book() {
    const ETH: Asset = Asset::Native;
    let mut net = Network::new();
    net.graph_mut(ChainId(1), ETH).upsert_channel(&channel(1, 1, 2, 100, 0, fee(0, 0), fee(0, 0))).unwrap();
    net.graph_mut(ChainId(2), ETH).upsert_channel(&channel(2, 2, 1, 100, 0, fee(0, 0), fee(0, 0))).unwrap();
    let legs = net
        .route_legs(&[(ChainId(1), ETH, query(1, 2, 60, 0)), (ChainId(2), ETH, query(2, 1, 60, 0))])
        .unwrap();
    assert_eq!(legs.len(), 2);
    assert_eq!(legs[1].chain, ChainId(2));
    assert_eq!(
        net.route_legs(&[(ChainId(1), ETH, query(1, 2, 60, 0)), (ChainId(1), ETH, query(1, 2, 60, 0))]),
        Err(RouteError::NoRoute)
    );
    assert!(
        net.graph(ChainId(1), ETH).unwrap().find_route(&query(1, 2, 100, 0)).is_ok(),
        "routing reserved nothing"
    );
}

#[test]
fn each_asset_of_a_chain_is_a_map_of_its_own() {
    let usdc = Asset::Erc20(addr(77));
    let mut net = Network::new();
    // 1 → 2 in ether, 2 → 3 in the token: no route 1 → 3 in either asset.
    net.graph_mut(ChainId(1), Asset::Native)
        .upsert_channel(&channel(1, 1, 2, 100, 0, fee(0, 0), fee(0, 0)))
        .unwrap();
    net.graph_mut(ChainId(1), usdc).upsert_channel(&channel(2, 2, 3, 100, 0, fee(0, 0), fee(0, 0))).unwrap();
    net.graph_mut(ChainId(1), usdc).upsert_channel(&channel(3, 1, 2, 100, 0, fee(0, 0), fee(0, 0))).unwrap();
    for asset in [Asset::Native, usdc] {
        let routed = net.route_legs(&[(ChainId(1), asset, query(1, 3, 10, 0))]);
        if asset == usdc {
            let legs = routed.unwrap();
            assert_eq!(legs[0].asset, usdc, "the leg names the asset it moves");
            assert_eq!(
                legs[0].hops.iter().map(|h| h.channel).collect::<Vec<_>>(),
                [ChannelId([3; 32]), ChannelId([2; 32])]
            );
        } else {
            assert!(routed.is_err(), "the ether map has no path to 3: {routed:?}");
        }
    }
    assert!(matches!(net.graph(ChainId(2), usdc), Err(RouteError::NoChannels(ChainId(2), a)) if a == usdc));
    // Chain events name a channel, not its asset: it is found in whichever map holds it.
    let g = net.graph_of_channel_mut(ChainId(1), ChannelId([2; 32])).expect("the token map holds it");
    g.credit(ChannelId([2; 32]), addr(3), Amount(5)).unwrap();
    assert_eq!(
        net.graph(ChainId(1), usdc).unwrap().available(ChannelId([2; 32]), addr(3)).unwrap(),
        Amount(5)
    );
    assert!(net.graph_of_channel_mut(ChainId(2), ChannelId([2; 32])).is_none(), "another chain's");
}

// ------------------------------------------------------------------ properties

#[derive(Debug, Clone)]
struct Net {
    latency: Vec<u32>,
    channels: Vec<ChannelInfo>,
}

fn net_strategy() -> impl Strategy<Value = Net> {
    let n = 7usize;
    (
        prop::collection::vec(prop::sample::select(vec![100u32, 200, 300, 900]), n),
        prop::collection::vec(
            (0..n as u8, 0..n as u8, 0u128..300, 0u128..300, 0u128..4, 0u32..50_000, 0u128..4, 0u32..50_000),
            4..16,
        ),
    )
        .prop_map(|(latency, raw)| {
            let channels = raw
                .into_iter()
                .enumerate()
                .filter(|(_, (a, b, ..))| a != b)
                .map(|(i, (a, b, ba, bb, fa, pa, fb, pb))| ChannelInfo {
                    id: ChannelId([i as u8 + 1; 32]),
                    a: addr(a + 1),
                    b: addr(b + 1),
                    balance_a: Amount(ba),
                    balance_b: Amount(bb),
                    fee_a: fee(fa, pa),
                    fee_b: fee(fb, pb),
                })
                .collect();
            Net { latency, channels }
        })
}

fn build(net: &Net) -> Graph {
    let mut g = Graph::new();
    for c in &net.channels {
        g.upsert_channel(c).unwrap();
    }
    for (i, l) in net.latency.iter().enumerate() {
        if g.latency(addr(i as u8 + 1)).is_some() {
            g.set_latency(addr(i as u8 + 1), *l);
        }
    }
    g
}

/// Every simple path's (bottleneck, hops, sent) if it is feasible, by exhaustive search.
fn brute_force(g: &Graph, net: &Net, q: &RouteQuery) -> Option<(u32, usize, u128)> {
    // Directed edges: (from, to, channel index, a_to_b).
    let mut edges = Vec::new();
    for (i, c) in net.channels.iter().enumerate() {
        edges.push((c.a, c.b, i, true));
        edges.push((c.b, c.a, i, false));
    }
    let mut best: Option<(u32, usize, u128)> = None;
    // A partial path: its nodes, and the (channel index, A→B?) of each hop.
    type Partial = (Vec<Address>, Vec<(usize, bool)>);
    let mut stack: Vec<Partial> = vec![(vec![q.source], Vec::new())];
    while let Some((path, used)) = stack.pop() {
        let last = *path.last().unwrap();
        if last == q.destination {
            // Amounts backwards from the destination.
            let mut amount = q.amount.0;
            let mut ok = true;
            for (k, (ci, a_to_b)) in used.iter().enumerate().rev() {
                let c = &net.channels[*ci];
                let avail = g.available(c.id, if *a_to_b { c.a } else { c.b }).unwrap().0;
                if avail < amount {
                    ok = false;
                    break;
                }
                if k > 0 {
                    let policy = if *a_to_b { c.fee_a } else { c.fee_b };
                    amount += policy.fee(Amount(amount)).unwrap().0;
                }
            }
            if ok && amount - q.amount.0 <= q.max_fee.0 {
                let bottleneck = path.iter().map(|a| g.latency(*a).unwrap()).max().unwrap();
                let key = (bottleneck, used.len(), amount);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
            continue;
        }
        for (from, to, ci, a_to_b) in &edges {
            if *from == last && !path.contains(to) {
                let mut p = path.clone();
                p.push(*to);
                let mut u = used.clone();
                u.push((*ci, *a_to_b));
                stack.push((p, u));
            }
        }
    }
    best
}

fn assert_valid(g: &Graph, q: &RouteQuery, r: &Route) {
    assert_eq!(r.hops.first().unwrap().from, q.source);
    assert_eq!(r.hops.last().unwrap().to, q.destination);
    assert_eq!(r.hops.last().unwrap().amount, q.amount, "the destination gets exactly the amount");
    for w in r.hops.windows(2) {
        let (inc, out): (&Hop, &Hop) = (&w[0], &w[1]);
        assert_eq!(inc.to, out.from, "hops connect");
        assert!(inc.amount >= out.amount);
    }
    for h in &r.hops {
        assert!(g.available(h.channel, h.from).unwrap() >= h.amount, "every hop fits its capacity");
    }
    assert_eq!(r.fee.0, r.sent().0 - q.amount.0);
    assert!(r.fee <= q.max_fee);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn routes_are_valid_and_optimal(net in net_strategy(), s in 1u8..8, d in 1u8..8, amount in 1u128..200, max_fee in 0u128..40) {
        let g = build(&net);
        prop_assume!(s != d && g.latency(addr(s)).is_some() && g.latency(addr(d)).is_some());
        let q = query(s, d, amount, max_fee);
        let expected = brute_force(&g, &net, &q);
        match g.find_route(&q) {
            Ok(r) => {
                assert_valid(&g, &q, &r);
                let key = (r.latency_us, r.hops.len(), r.sent().0);
                prop_assert_eq!(Some(key), expected, "route {:?}", r);
            }
            Err(RouteError::NoRoute) => prop_assert_eq!(expected, None),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn multipath_parts_are_valid_and_deliver_exactly(net in net_strategy(), s in 1u8..8, d in 1u8..8, amount in 1u128..500, max_fee in 0u128..40) {
        let g = build(&net);
        prop_assume!(s != d && g.latency(addr(s)).is_some() && g.latency(addr(d)).is_some());
        let q = query(s, d, amount, max_fee);
        if let Ok(parts) = g.find_multipath(&q, 4) {
            let mut scratch = g.clone();
            let mut delivered = 0;
            let mut fees = 0;
            for p in &parts {
                let pq = RouteQuery { amount: p.hops.last().unwrap().amount, max_fee: Amount(q.max_fee.0 - fees), ..q };
                assert_valid(&scratch, &pq, p);
                for h in &p.hops {
                    scratch.reserve(h.channel, h.from, h.amount).unwrap();
                }
                delivered += pq.amount.0;
                fees += p.fee.0;
            }
            prop_assert_eq!(delivered, amount);
            prop_assert!(fees <= max_fee);
        }
    }
}

/// Found by the property test: the 1-hop-shorter partial route to node 4 charges a fee that
/// no longer fits the payer's channel, while the longer fee-free one does.
#[test]
fn keeps_a_longer_cheaper_partial_route_when_capacity_is_tight() {
    let mut g = Graph::new();
    for c in [
        channel(1, 3, 7, 0, 7, fee(0, 0), fee(0, 0)),
        channel(2, 4, 7, 7, 0, fee(0, 0), fee(0, 0)),
        channel(3, 3, 4, 0, 7, fee(0, 0), fee(2, 0)),
        channel(4, 4, 5, 0, 7, fee(0, 0), fee(0, 0)),
    ] {
        g.upsert_channel(&c).unwrap();
    }
    let r = g.find_route(&query(5, 3, 6, 2)).unwrap();
    assert_eq!(nodes(&r), vec![5, 4, 7, 3]);
    assert_eq!(r.fee, Amount(0));
}

/// A channel carrying `MAX_LOCKS_PER_CHANNEL` in-flight instances (both directions together)
/// is full: its enclaves would NACK one more, so the router goes around it (or reports no
/// route) instead of sending a payment into a certain refund; a released lock reopens it.
#[test]
fn a_channel_at_the_lock_cap_is_routed_around() {
    let cap = teepay_types::MAX_LOCKS_PER_CHANNEL;
    let mut g = Graph::new();
    for c in [
        channel(1, 1, 2, 1_000_000, 1_000_000, fee(0, 0), fee(0, 0)),
        channel(2, 1, 3, 1_000_000, 0, fee(0, 0), fee(5, 0)),
        channel(3, 3, 2, 1_000_000, 0, fee(5, 0), fee(0, 0)),
    ] {
        g.upsert_channel(&c).unwrap();
    }
    let direct = ChannelId([1; 32]);
    for i in 0..cap {
        // Both directions count towards the one cap.
        let from = if i % 2 == 0 { addr(1) } else { addr(2) };
        g.reserve(direct, from, Amount(1)).unwrap();
    }
    assert_eq!(g.available(direct, addr(1)).unwrap(), Amount(0));
    assert!(matches!(g.reserve(direct, addr(1), Amount(1)), Err(RouteError::InsufficientCapacity { .. })));
    assert_eq!(nodes(&g.find_route(&query(1, 2, 10, 10)).unwrap()), vec![1, 3, 2], "around the full channel");
    g.release(direct, addr(1), Amount(1), false).unwrap();
    assert_eq!(
        nodes(&g.find_route(&query(1, 2, 10, 10)).unwrap()),
        vec![1, 2],
        "one lock freed: direct again"
    );
}
