//! The payment network map of one chain: nodes with their measured response times, channels
//! with per-direction spendable capacity (balance minus in-flight reservations) and fee
//! policy. Kept current by the hub from chain sync and from acks.

use crate::RouteError;
use std::collections::{BTreeMap, HashMap};
use teepay_types::{Address, Amount, ChannelId, FeePolicy};

pub(crate) type NodeIdx = u32;
pub(crate) type EdgeIdx = u32;

/// A node's response time as the hub measures it (microseconds), used as the routing cost:
/// the hub talks to every path node in parallel, so a route takes as long as its slowest node.
pub const DEFAULT_LATENCY_US: u32 = 1_000;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub address: Address,
    pub latency_us: u32,
    /// Outgoing directed edges.
    pub out: Vec<Adjacent>,
    /// Incoming directed edges (the backward search walks these).
    pub inc: Vec<Adjacent>,
}

/// An edge as a node's adjacency list holds it: with the node at its other end, so a search
/// reads only this list and the edge's entry in [`Graph::available`] (the full edges are
/// large and cold; scanning them dominated route searches).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adjacent {
    pub edge: EdgeIdx,
    pub peer: NodeIdx,
}

/// One direction of a channel: `from` pays the other party (adjacency lists name it).
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub channel: ChannelId,
    pub from: NodeIdx,
    /// The sender's balance in this channel.
    pub balance: u128,
    /// Amount reserved by in-flight instances on this direction.
    pub reserved: u128,
    /// Charged by `from` when it forwards over this edge as an intermediary.
    pub fee: FeePolicy,
    pub enabled: bool,
    /// In-flight instances locking the channel, both directions (kept equal on its two
    /// edges): at `MAX_LOCKS_PER_CHANNEL` its parties' enclaves NACK one more, so the router
    /// treats it as full rather than route a payment into a certain refund.
    pub channel_locks: u32,
}

impl Edge {
    pub fn available(&self) -> u128 {
        let full = self.channel_locks as usize >= teepay_types::MAX_LOCKS_PER_CHANNEL;
        if self.enabled && !full { self.balance.saturating_sub(self.reserved) } else { 0 }
    }
}

/// What the hub knows about a channel (from its DB / chain sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub id: ChannelId,
    pub a: Address,
    pub b: Address,
    pub balance_a: Amount,
    pub balance_b: Amount,
    /// Fee A charges forwarding towards B, and B towards A.
    pub fee_a: FeePolicy,
    pub fee_b: FeePolicy,
}

/// A channel as the map holds it now (for the network-map API and the hub's DB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSnapshot {
    pub info: ChannelInfo,
    /// Held by in-flight instances on A's and on B's side.
    pub reserved_a: Amount,
    pub reserved_b: Amount,
    pub open: bool,
}

/// The network map of one chain.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) node_index: HashMap<Address, NodeIdx>,
    pub(crate) edges: Vec<Edge>,
    /// Channel → its two directed edges (A→B, B→A).
    pub(crate) channel_index: HashMap<ChannelId, [EdgeIdx; 2]>,
    /// Each edge's [`Edge::available`], kept in step with every change to the edge.
    pub(crate) spendable: Vec<u128>,
    /// How many nodes have each response time (the router's latency thresholds).
    pub(crate) latencies: BTreeMap<u32, u32>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn channel_count(&self) -> usize {
        self.channel_index.len()
    }

    pub(crate) fn node(&mut self, address: Address) -> NodeIdx {
        if let Some(i) = self.node_index.get(&address) {
            return *i;
        }
        let i = self.nodes.len() as NodeIdx;
        self.nodes.push(Node { address, latency_us: DEFAULT_LATENCY_US, out: Vec::new(), inc: Vec::new() });
        self.node_index.insert(address, i);
        *self.latencies.entry(DEFAULT_LATENCY_US).or_default() += 1;
        i
    }

    pub(crate) fn index_of(&self, address: Address) -> Result<NodeIdx, RouteError> {
        self.node_index.get(&address).copied().ok_or(RouteError::UnknownNode(address))
    }

    /// Records a node's measured response time.
    pub fn set_latency(&mut self, address: Address, latency_us: u32) {
        let i = self.node(address);
        let old = std::mem::replace(&mut self.nodes[i as usize].latency_us, latency_us);
        if let Some(n) = self.latencies.get_mut(&old) {
            *n -= 1;
            if *n == 0 {
                self.latencies.remove(&old);
            }
        }
        *self.latencies.entry(latency_us).or_default() += 1;
    }

    /// Re-derives an edge's entry in `spendable` after a change.
    fn refresh(&mut self, e: EdgeIdx) {
        self.spendable[e as usize] = self.edges[e as usize].available();
    }

    pub fn latency(&self, address: Address) -> Option<u32> {
        self.node_index.get(&address).map(|i| self.nodes[*i as usize].latency_us)
    }

    /// Adds a channel, or updates balances and fees of a known one (reservations are kept).
    pub fn upsert_channel(&mut self, info: &ChannelInfo) -> Result<(), RouteError> {
        if info.a == info.b {
            return Err(RouteError::SelfChannel(info.id));
        }
        if let Some([ab, ba]) = self.channel_index.get(&info.id).copied() {
            let (ea, eb) = (&self.edges[ab as usize], &self.edges[ba as usize]);
            if self.nodes[ea.from as usize].address != info.a
                || self.nodes[eb.from as usize].address != info.b
            {
                return Err(RouteError::PartiesChanged(info.id));
            }
            for (e, balance, fee) in [(ab, info.balance_a, info.fee_a), (ba, info.balance_b, info.fee_b)] {
                let edge = &mut self.edges[e as usize];
                edge.balance = balance.0;
                edge.fee = fee;
                edge.enabled = true;
                self.refresh(e);
            }
            return Ok(());
        }
        let (a, b) = (self.node(info.a), self.node(info.b));
        let ab = self.edges.len() as EdgeIdx;
        let ba = ab + 1;
        for (from, balance, fee) in [(a, info.balance_a, info.fee_a), (b, info.balance_b, info.fee_b)] {
            self.edges.push(Edge {
                channel: info.id,
                from,
                balance: balance.0,
                reserved: 0,
                fee,
                enabled: true,
                channel_locks: 0,
            });
            self.spendable.push(balance.0);
        }
        self.nodes[a as usize].out.push(Adjacent { edge: ab, peer: b });
        self.nodes[b as usize].inc.push(Adjacent { edge: ab, peer: a });
        self.nodes[b as usize].out.push(Adjacent { edge: ba, peer: a });
        self.nodes[a as usize].inc.push(Adjacent { edge: ba, peer: b });
        self.channel_index.insert(info.id, [ab, ba]);
        Ok(())
    }

    /// A deposit seen on-chain: `party`'s side of `channel` grows by `amount`.
    pub fn credit(&mut self, channel: ChannelId, party: Address, amount: Amount) -> Result<(), RouteError> {
        let e = self.edge_from(channel, party)?;
        let edge = &mut self.edges[e as usize];
        edge.balance = edge.balance.checked_add(amount.0).ok_or(RouteError::Overflow(channel))?;
        self.refresh(e);
        Ok(())
    }

    pub fn channel(&self, id: ChannelId) -> Option<ChannelSnapshot> {
        let [ab, ba] = *self.channel_index.get(&id)?;
        let (x, y) = (&self.edges[ab as usize], &self.edges[ba as usize]);
        Some(ChannelSnapshot {
            info: ChannelInfo {
                id,
                a: self.nodes[x.from as usize].address,
                b: self.nodes[y.from as usize].address,
                balance_a: Amount(x.balance),
                balance_b: Amount(y.balance),
                fee_a: x.fee,
                fee_b: y.fee,
            },
            reserved_a: Amount(x.reserved),
            reserved_b: Amount(y.reserved),
            open: x.enabled,
        })
    }

    /// Every channel, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = ChannelSnapshot> + '_ {
        self.channel_index.keys().filter_map(|id| self.channel(*id))
    }

    /// A closed channel stops carrying payments (its slots are kept; ids never repeat).
    pub fn close_channel(&mut self, id: ChannelId) -> Result<(), RouteError> {
        let [ab, ba] = *self.channel_index.get(&id).ok_or(RouteError::UnknownChannel(id))?;
        self.edges[ab as usize].enabled = false;
        self.edges[ba as usize].enabled = false;
        self.refresh(ab);
        self.refresh(ba);
        Ok(())
    }

    fn edge_from(&self, channel: ChannelId, from: Address) -> Result<EdgeIdx, RouteError> {
        let pair = self.channel_index.get(&channel).ok_or(RouteError::UnknownChannel(channel))?;
        pair.iter()
            .copied()
            .find(|e| self.nodes[self.edges[*e as usize].from as usize].address == from)
            .ok_or(RouteError::NotAParty(channel, from))
    }

    /// What `from` can still send over `channel`.
    pub fn available(&self, channel: ChannelId, from: Address) -> Result<Amount, RouteError> {
        Ok(Amount(self.edges[self.edge_from(channel, from)? as usize].available()))
    }

    /// Reserves `amount` on `from`'s side for an in-flight instance.
    pub fn reserve(&mut self, channel: ChannelId, from: Address, amount: Amount) -> Result<(), RouteError> {
        let e = self.edge_from(channel, from)?;
        let edge = &mut self.edges[e as usize];
        if edge.available() < amount.0 {
            return Err(RouteError::InsufficientCapacity {
                channel,
                needed: amount,
                available: Amount(edge.available()),
            });
        }
        edge.reserved += amount.0;
        self.count_lock(channel, 1);
        Ok(())
    }

    /// Adds `delta` (±1) to both edges' lock count and refreshes their capacity.
    fn count_lock(&mut self, channel: ChannelId, delta: i32) {
        let [ab, ba] = self.channel_index[&channel];
        for e in [ab, ba] {
            let edge = &mut self.edges[e as usize];
            edge.channel_locks = edge.channel_locks.saturating_add_signed(delta);
            self.refresh(e);
        }
    }

    /// Ends a reservation: the instance refunded (`applied` false) or its transfer applied.
    pub fn release(
        &mut self,
        channel: ChannelId,
        from: Address,
        amount: Amount,
        applied: bool,
    ) -> Result<(), RouteError> {
        let e = self.edge_from(channel, from)?;
        let [ab, ba] = self.channel_index[&channel];
        let back = if e == ab { ba } else { ab };
        let edge = &mut self.edges[e as usize];
        if edge.reserved < amount.0 {
            return Err(RouteError::NotReserved(channel));
        }
        edge.reserved -= amount.0;
        if applied {
            edge.balance = edge.balance.saturating_sub(amount.0);
            self.edges[back as usize].balance += amount.0;
        }
        self.count_lock(channel, -1);
        Ok(())
    }
}
