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
use teepay_types::{Address, Amount, Asset, ChainId, ChannelId, Leg};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("source and destination are the same node")]
    SameEndpoints,
    #[error("node {0} is not in the network map")]
    UnknownNode(Address),
    #[error("no channels of {1} on {0}")]
    NoChannels(ChainId, Asset),
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

/// The network maps the hub serves, one per (chain, asset) (DESIGN §11): a route uses
/// channels of one asset only, so each asset of each chain is a map of its own.
#[derive(Debug, Clone, Default)]
pub struct Network {
    graphs: BTreeMap<(ChainId, Asset), Graph>,
}

impl Network {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn graph(&self, chain: ChainId, asset: Asset) -> Result<&Graph, RouteError> {
        self.graphs.get(&(chain, asset)).ok_or(RouteError::NoChannels(chain, asset))
    }

    pub fn graph_mut(&mut self, chain: ChainId, asset: Asset) -> &mut Graph {
        self.graphs.entry((chain, asset)).or_default()
    }

    /// The map holding `channel` on `chain`, whatever its asset (chain events name the
    /// channel only once it is open).
    pub fn graph_of_channel_mut(&mut self, chain: ChainId, channel: ChannelId) -> Option<&mut Graph> {
        self.graphs
            .range_mut((chain, Asset::Native)..)
            .take_while(|((c, _), _)| *c == chain)
            .map(|(_, g)| g)
            .find(|g| g.channel(channel).is_some())
    }

    pub fn graphs(&self) -> impl Iterator<Item = (&(ChainId, Asset), &Graph)> {
        self.graphs.iter()
    }

    /// A node's measured response time, on every chain it is on.
    pub fn set_latency(&mut self, node: Address, latency_us: u32) {
        for g in self.graphs.values_mut() {
            if g.latency(node).is_some() {
                g.set_latency(node, latency_us);
            }
        }
    }

    /// One route per leg (a swap's transfers). Legs on the same map are routed in order
    /// against the capacity the earlier ones leave, so they never double-book a channel.
    pub fn route_legs(&self, legs: &[(ChainId, Asset, RouteQuery)]) -> Result<Vec<Leg>, RouteError> {
        let mut scratch: BTreeMap<(ChainId, Asset), Graph> = BTreeMap::new();
        let mut out = Vec::with_capacity(legs.len());
        for (chain, asset, q) in legs {
            let key = (*chain, *asset);
            let g = match scratch.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(self.graph(*chain, *asset)?.clone())
                }
            };
            let route = g.find_route(q)?;
            for hop in &route.hops {
                g.reserve(hop.channel, hop.from, hop.amount)?;
            }
            out.push(route.into_leg(*chain, *asset));
        }
        Ok(out)
    }
}
