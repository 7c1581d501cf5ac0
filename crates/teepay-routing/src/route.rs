//! Shortest-time routes (DESIGN §8). The hub drives every path node in parallel, so a route
//! takes about rounds × its slowest node's response time: the primary cost is the largest
//! node latency on the path (a bottleneck, not a sum). Ties break by fewer hops, then by
//! lower fees. Fees are charged by each intermediary on what it forwards, per its outgoing
//! channel's policy, so amounts grow from the payee back to the payer.
//!
//! Search: a minimax Dijkstra from the payer finds the least bottleneck T at which the payee
//! is reachable with enough capacity for the bare amount; then a Dijkstra from the payee
//! backwards over nodes with latency ≤ T minimizes (hops, amount the payer must send),
//! keeping every non-dominated label per node (capacity limits make a longer but cheaper
//! partial route worth keeping). If fees push every route over a capacity or `max_fee` at T,
//! the next larger latency threshold is tried.

use crate::RouteError;
use crate::graph::{Adjacent, EdgeIdx, Graph, NodeIdx};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use teepay_types::{Address, Amount, Asset, ChainId, Hop, Leg};

/// A payment to route: `amount` is what the destination receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteQuery {
    pub source: Address,
    pub destination: Address,
    pub amount: Amount,
    /// The most the source pays intermediaries on top of `amount`.
    pub max_fee: Amount,
}

/// A route: hops with the amount each forwards, its total fee and its bottleneck latency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub hops: Vec<Hop>,
    pub fee: Amount,
    /// The slowest path node's response time: the route's estimated time per round.
    pub latency_us: u32,
}

impl Route {
    pub fn sent(&self) -> Amount {
        self.hops.first().map_or(Amount::ZERO, |h| h.amount)
    }

    pub fn into_leg(self, chain: ChainId, asset: Asset) -> Leg {
        Leg { chain, asset, hops: self.hops }
    }
}

/// Longest route considered. Bounds the labels kept per node (one per hop count at most).
pub const MAX_HOPS: u32 = 20;

/// A partial route from some node to the destination (labels live in an arena).
#[derive(Clone, Copy)]
struct Label {
    node: NodeIdx,
    /// What `node` must receive (or, at the source, send) for the destination to get the
    /// query's amount.
    amount: u128,
    /// The edge `node` forwards over, and the label at that edge's far end.
    next: Option<(EdgeIdx, usize)>,
}
impl Graph {
    fn validate(&self, q: &RouteQuery) -> Result<(NodeIdx, NodeIdx), RouteError> {
        if q.amount.is_zero() {
            return Err(RouteError::ZeroAmount);
        }
        if q.source == q.destination {
            return Err(RouteError::SameEndpoints);
        }
        Ok((self.index_of(q.source)?, self.index_of(q.destination)?))
    }

    /// Least achievable bottleneck latency from `src` to `dst` over edges that can carry
    /// `amount` (ignoring fees), or `None` when unreachable.
    fn bottleneck(&self, src: NodeIdx, dst: NodeIdx, amount: u128) -> Option<u32> {
        let mut best = vec![u32::MAX; self.nodes.len()];
        let mut heap = BinaryHeap::new();
        best[src as usize] = self.nodes[src as usize].latency_us;
        heap.push(Reverse((best[src as usize], src)));
        while let Some(Reverse((cost, u))) = heap.pop() {
            if u == dst {
                return Some(cost);
            }
            if cost > best[u as usize] {
                continue;
            }
            for adj in &self.nodes[u as usize].out {
                if self.spendable[adj.edge as usize] < amount {
                    continue;
                }
                let c = cost.max(self.nodes[adj.peer as usize].latency_us);
                if c < best[adj.peer as usize] {
                    best[adj.peer as usize] = c;
                    heap.push(Reverse((c, adj.peer)));
                }
            }
        }
        None
    }

    /// Backward label-setting search from `dst` over nodes with latency ≤ `limit`, in
    /// (hops, amount) order. A node keeps every label no other label at it dominates (fewer
    /// or equal hops *and* a smaller or equal amount): a label with more hops but a smaller
    /// amount can still fit a tight channel further upstream, so one label per node is not
    /// enough. Both components only grow along a route, so the first label popped at the
    /// source is optimal (and its route simple).
    ///
    /// The search is an A*: `to_source[u]` is a lower bound on the hops from the source to
    /// `u` (see [`hops_from`](Self::hops_from)), so labels are popped by (hops so far + bound,
    /// amount). Both keys only grow along a route and the bound is consistent, so the first
    /// label popped at the source is still optimal, while nodes that cannot be on a route
    /// with fewest hops are never expanded before one is found.
    fn best_path(
        &self,
        src: NodeIdx,
        dst: NodeIdx,
        q: &RouteQuery,
        limit: u32,
        to_source: &[u32],
    ) -> Option<Route> {
        let budget = q.amount.0.saturating_add(q.max_fee.0);
        let mut arena: Vec<Label> = vec![Label { node: dst, amount: q.amount.0, next: None }];
        let mut kept: HashMap<NodeIdx, Vec<(u32, u128)>> = HashMap::new();
        kept.insert(dst, vec![(0, q.amount.0)]);
        let mut heap = BinaryHeap::new();
        heap.push(Reverse((to_source[dst as usize], q.amount.0, 0u32, 0usize)));
        while let Some(Reverse((_, amount, hops, at))) = heap.pop() {
            let v = arena[at].node;
            if v == src {
                return Some(self.materialize(&arena, at));
            }
            for &Adjacent { edge: e, peer: u } in &self.nodes[v as usize].inc {
                let estimate = (hops + 1).saturating_add(to_source[u as usize]);
                if u == dst
                    || estimate > MAX_HOPS
                    || self.spendable[e as usize] < amount
                    || self.nodes[u as usize].latency_us > limit
                {
                    continue;
                }
                let edge = &self.edges[e as usize];
                // The source pays no fee to itself; an intermediary adds its own.
                let needed = if u == src {
                    amount
                } else {
                    match edge.fee.fee(Amount(amount)).and_then(|f| f.0.checked_add(amount)) {
                        Some(n) => n,
                        None => continue,
                    }
                };
                if needed > budget {
                    continue;
                }
                let labels = kept.entry(u).or_default();
                if labels.iter().any(|&(h, a)| h <= hops + 1 && a <= needed) {
                    continue;
                }
                labels.retain(|&(h, a)| !(hops < h && needed <= a));
                labels.push((hops + 1, needed));
                arena.push(Label { node: u, amount: needed, next: Some((e, at)) });
                heap.push(Reverse((estimate, needed, hops + 1, arena.len() - 1)));
            }
        }
        None
    }

    /// Hops from `src` to every node over edges that can carry `amount` (a breadth-first
    /// search, ignoring fees and latency, so never more than a route's true hop count). It
    /// stops as soon as a completed level holds an in-neighbour of `dst`, i.e. one level
    /// *before* the level holding `dst` — on a scale-free graph that last level is most of
    /// the graph, so skipping it is most of the saving. Every node it did not reach is at
    /// least one level further, which is what it records for them (exact for `dst` and the
    /// rest of its level). `None` when `dst` is unreachable.
    fn hops_from(&self, src: NodeIdx, dst: NodeIdx, amount: u128) -> Option<Vec<u32>> {
        let mut dist = vec![u32::MAX; self.nodes.len()];
        dist[src as usize] = 0;
        // Nodes that can forward `amount` to `dst` in one hop (checked per level member, so a
        // level costs its size, not its out-degree).
        let feeders: std::collections::HashSet<NodeIdx> = self.nodes[dst as usize]
            .inc
            .iter()
            .filter(|adj| self.spendable[adj.edge as usize] >= amount)
            .map(|adj| adj.peer)
            .collect();
        let feeds_dst = |u: NodeIdx| feeders.contains(&u);
        let (mut level, mut next) = (vec![src], Vec::new());
        let mut depth = 0;
        loop {
            if level.is_empty() {
                return None;
            }
            // `src` itself may feed `dst` (depth 0: a direct channel).
            if level.iter().any(|&u| feeds_dst(u)) {
                break;
            }
            for &u in &level {
                for adj in &self.nodes[u as usize].out {
                    if dist[adj.peer as usize] == u32::MAX && self.spendable[adj.edge as usize] >= amount {
                        dist[adj.peer as usize] = depth + 1;
                        next.push(adj.peer);
                    }
                }
            }
            depth += 1;
            std::mem::swap(&mut level, &mut next);
            next.clear();
        }
        for d in &mut dist {
            if *d == u32::MAX {
                *d = depth + 1;
            }
        }
        Some(dist)
    }

    fn materialize(&self, arena: &[Label], start: usize) -> Route {
        let mut hops = Vec::new();
        let mut label = arena[start];
        let mut latency = self.nodes[label.node as usize].latency_us;
        let sent = label.amount;
        while let Some((e, next)) = label.next {
            let edge = &self.edges[e as usize];
            let to = arena[next];
            hops.push(Hop {
                channel: edge.channel,
                from: self.nodes[label.node as usize].address,
                to: self.nodes[to.node as usize].address,
                amount: Amount(to.amount),
            });
            latency = latency.max(self.nodes[to.node as usize].latency_us);
            label = to;
        }
        let delivered = hops.last().map_or(0, |h| h.amount.0);
        Route { hops, fee: Amount(sent - delivered), latency_us: latency }
    }

    /// The shortest-time single-path route for `q`.
    pub fn find_route(&self, q: &RouteQuery) -> Result<Route, RouteError> {
        let (src, dst) = self.validate(q)?;
        let to_source = self.hops_from(src, dst, q.amount.0).ok_or(RouteError::NoRoute)?;
        // With one latency everywhere (the common case before the hub has measured anyone)
        // the bottleneck search could only return it.
        let first = if self.latencies.len() == 1 {
            *self.latencies.keys().next().expect("one entry")
        } else {
            self.bottleneck(src, dst, q.amount.0).ok_or(RouteError::NoRoute)?
        };
        // Thresholds to try: the bottleneck, then each larger distinct latency (fees can make
        // a cheap bottleneck infeasible). Bounded, then one unrestricted attempt if some node
        // is slower still.
        let mut thresholds: Vec<u32> = Vec::with_capacity(18);
        thresholds.push(first);
        thresholds.extend(self.latencies.range(first + 1..).map(|(l, _)| *l).take(16));
        if self.latencies.range(first + 1..).nth(16).is_some() {
            thresholds.push(u32::MAX);
        }
        for limit in thresholds {
            if let Some(route) = self.best_path(src, dst, q, limit, &to_source) {
                return Ok(route);
            }
        }
        Err(RouteError::NoRoute)
    }

    /// Like [`find_route`](Self::find_route), splitting the amount over up to `max_parts`
    /// paths when no single path has the capacity. Parts are chosen greedily, each the
    /// shortest-time path for the largest amount it can carry given the parts before it;
    /// together they deliver exactly `amount` and pay at most `max_fee` in fees.
    pub fn find_multipath(&self, q: &RouteQuery, max_parts: usize) -> Result<Vec<Route>, RouteError> {
        match self.find_route(q) {
            Ok(route) => return Ok(vec![route]),
            Err(RouteError::NoRoute) if max_parts > 1 => {}
            Err(e) => return Err(e),
        }
        let mut scratch = self.clone();
        let mut parts = Vec::new();
        let (mut remaining, mut fee_left) = (q.amount.0, q.max_fee.0);
        while remaining > 0 && parts.len() < max_parts {
            // The largest part (binary search) that still has a route within the fee budget.
            let try_part = |g: &Graph, amount: u128| {
                g.find_route(&RouteQuery { amount: Amount(amount), max_fee: Amount(fee_left), ..*q }).ok()
            };
            let (mut lo, mut hi, mut best) = (1u128, remaining, None);
            while lo <= hi {
                let mid = lo + (hi - lo) / 2;
                match try_part(&scratch, mid) {
                    Some(route) => {
                        best = Some(route);
                        lo = mid + 1;
                    }
                    None => hi = mid - 1,
                }
            }
            let Some(route) = best else { break };
            for hop in &route.hops {
                scratch.reserve(hop.channel, hop.from, hop.amount)?;
            }
            remaining -= route.hops.last().map_or(0, |h| h.amount.0);
            fee_left -= route.fee.0;
            parts.push(route);
        }
        if remaining > 0 { Err(RouteError::NoRoute) } else { Ok(parts) }
    }
}
