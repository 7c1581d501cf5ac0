//! teepay-routing: the hub's payment network map and router (DESIGN §8).
//!
//! Pure: no I/O, no clock. The hub feeds it channels from its DB and chain sync, node
//! response times it measured, and reservations from in-flight instances; it answers with
//! shortest-time routes ([`Graph::find_route`]), multi-path splits
//! ([`Graph::find_multipath`]) and one route per leg for swaps ([`Network::route_legs`]).

mod graph;
mod route;
pub mod topology;

pub use graph::{ChannelInfo, ChannelSnapshot, DEFAULT_LATENCY_US, Graph};
pub use route::{Route, RouteQuery};

use std::collections::BTreeMap;
use teepay_types::{Address, Amount, ChainId, ChannelId, Leg};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("source and destination are the same node")]
    SameEndpoints,
    #[error("node {0} is not in the network map")]
    UnknownNode(Address),
    #[error("no channels on chain {0:?}")]
    UnknownChain(ChainId),
    #[error("channel {0:?} is not in the network map")]
    UnknownChannel(ChannelId),
    #[error("{1} is not a party of channel {0:?}")]
    NotAParty(ChannelId, Address),
    #[error("channel {0:?} has the same node on both sides")]
    SelfChannel(ChannelId),
    #[error("channel {0:?} was reported again with different parties")]
    PartiesChanged(ChannelId),
    #[error("no route with enough capacity within the fee limit")]
    NoRoute,
    #[error("channel {channel:?} can carry {available:?}, not {needed:?}")]
    InsufficientCapacity { channel: ChannelId, needed: Amount, available: Amount },
    #[error("balance of channel {0:?} would overflow")]
    Overflow(ChannelId),
    #[error("release of more than is reserved on channel {0:?}")]
    NotReserved(ChannelId),
}

/// The network maps of every chain the hub serves.
#[derive(Debug, Clone, Default)]
pub struct Network {
    chains: BTreeMap<ChainId, Graph>,
}

impl Network {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn chain(&self, chain: ChainId) -> Result<&Graph, RouteError> {
        self.chains.get(&chain).ok_or(RouteError::UnknownChain(chain))
    }

    pub fn chain_mut(&mut self, chain: ChainId) -> &mut Graph {
        self.chains.entry(chain).or_default()
    }

    pub fn chains(&self) -> impl Iterator<Item = (&ChainId, &Graph)> {
        self.chains.iter()
    }

    /// A node's measured response time, on every chain it is on.
    pub fn set_latency(&mut self, node: Address, latency_us: u32) {
        for g in self.chains.values_mut() {
            if g.latency(node).is_some() {
                g.set_latency(node, latency_us);
            }
        }
    }

    /// One route per leg (a swap's transfers). Legs on the same chain are routed in order
    /// against the capacity the earlier ones leave, so they never double-book a channel.
    pub fn route_legs(&self, legs: &[(ChainId, RouteQuery)]) -> Result<Vec<Leg>, RouteError> {
        let mut scratch: BTreeMap<ChainId, Graph> = BTreeMap::new();
        let mut out = Vec::with_capacity(legs.len());
        for (chain, q) in legs {
            if !scratch.contains_key(chain) {
                scratch.insert(*chain, self.chain(*chain)?.clone());
            }
            let g = scratch.get_mut(chain).expect("inserted above");
            let route = g.find_route(q)?;
            for hop in &route.hops {
                g.reserve(hop.channel, hop.from, hop.amount)?;
            }
            out.push(route.into_leg(*chain));
        }
        Ok(out)
    }
}
