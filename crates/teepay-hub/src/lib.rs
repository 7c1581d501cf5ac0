//! teepay-hub: the hub's services around its enclave (DESIGN §8) — contract sync into the
//! channel DB and the payment network map built from it. (The protocol executor, node link
//! and client API build on these.)

pub mod admission;
pub mod api;
pub mod executor;
pub mod metrics;
pub mod replicated;
pub mod replication;
pub mod runtime;
pub mod service;
pub mod sync;

use teepay_routing::{ChannelInfo, Network, RouteError};
use teepay_store::{ChannelStatus, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("channel DB: {0}")]
    Store(#[from] StoreError),
    #[error("network map: {0}")]
    Route(#[from] RouteError),
}

/// How long a (re)starting hub waits for a port something else holds for a moment (an
/// outgoing connection given it while nobody listened: `teepay_link::tcp::listen`).
pub const RESTART_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The payment network map as the DB knows it: every open channel with the hub's view of
/// its balances and its parties' fee policies. Called at start; sync and acks keep it current.
pub async fn load_network(store: &Store) -> Result<Network, HubError> {
    let mut net = Network::new();
    let mut failed = None;
    store
        .for_each_channel(|ch| {
            if ch.status != ChannelStatus::Open || failed.is_some() {
                return Ok(());
            }
            let info = ChannelInfo {
                id: ch.id,
                a: ch.a,
                b: ch.b,
                balance_a: ch.balance_a,
                balance_b: ch.balance_b,
                fee_a: ch.fee_a,
                fee_b: ch.fee_b,
            };
            // One map per (chain, asset): a route never mixes a token's channels with ether's.
            if let Err(e) =
                net.graph_mut(ch.chain, teepay_types::Asset::from_token(ch.token)).upsert_channel(&info)
            {
                failed = Some(e);
            }
            Ok(())
        })
        .await?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(net),
    }
}
