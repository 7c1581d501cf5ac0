//! TOML configuration of `teepay hub` and `teepay node` (flags override file values).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// `http://…` JSON-RPC URL of an EVM node.
    pub rpc: String,
    /// The `PaymentChannels` address (from `teepay deploy`).
    pub contract: String,
    /// The contract's deployment block (sync starts there).
    #[serde(default)]
    pub from_block: u64,
    /// Blocks an event must be buried under before it is used (the hub's RESOLVE is
    /// irreversible). Default: the chain's finality depth (`teepay_chain::finality`: 64 on
    /// Ethereum and any chain not listed, 0 on a local development node).
    pub confirmations: Option<u64>,
    /// Token symbols for amounts and assets on this chain (node only): `usdc = "0x…"` lets
    /// `12.5usdc` and `--asset usdc` name that token.
    #[serde(default)]
    pub tokens: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    #[serde(default = "default_hub_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_hub_api")]
    pub api: SocketAddr,
    pub metrics: Option<SocketAddr>,
    #[serde(default = "default_hub_dir")]
    pub state_dir: PathBuf,
    /// `sqlite://path` (default: `<state_dir>/hub.db`) or `postgres://…`.
    pub db: Option<String>,
    pub attestation_key: Option<String>,
    #[serde(default = "default_prepare_timeout")]
    pub prepare_timeout_ms: u64,
    /// How long after a swap's deadline a party may claim REVERT for its locks on-chain if
    /// no decision reached anyone (DESIGN §10; default two days).
    #[serde(default = "default_swap_lock_time")]
    pub swap_lock_time_ms: u64,
    /// Extra time to collect round messages before each flush (0: adaptive batching only).
    #[serde(default)]
    pub batch_window_us: u64,
    /// Instances ask for peer acks: COMMIT forwards every participant's own signed
    /// PREPARED ack, and nodes check them (one ECDSA signature and several recoveries per
    /// participant: the cautious, slower mode).
    #[serde(default)]
    pub verify_peer_acks: bool,
    #[serde(default)]
    pub chains: Vec<ChainConfig>,
    /// A hub group (DESIGN §10): every replica's config lists every replica; `replica` says
    /// which one this process is. With one replica (or none) this is a single hub.
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    pub replica: Option<u64>,
    /// Create the hub identity and the group if this replica has no state (the group's
    /// first start, on one replica only; the others are provisioned by a running replica).
    #[serde(default)]
    pub bootstrap: bool,
    /// A hub group's governance: the address of the operators' key that admits replicas'
    /// enclaves as members (`teepay group admit`). Required for a group: its enclaves then let
    /// a flush out only once a majority of the members hold it, whatever any host does.
    pub governance: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub id: u64,
    /// Where nodes connect while this replica leads.
    pub link: SocketAddr,
    /// Where the other replicas reach it (Raft and provisioning).
    pub raft: SocketAddr,
    /// The client API while it leads.
    pub api: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The hub's node port.
    #[serde(default = "default_hub_listen")]
    pub hub: SocketAddr,
    #[serde(default = "default_node_api")]
    pub api: SocketAddr,
    #[serde(default = "default_node_dir")]
    pub state_dir: PathBuf,
    pub attestation_key: Option<String>,
    /// The node enclave NACKs every instance without peer acks (fixed when the enclave is
    /// created: it is part of the enclave's sealed configuration).
    #[serde(default)]
    pub require_peer_acks: bool,
    /// The other replicas' node ports of a hub group (`link` of each `[[replicas]]`): tried
    /// in turn when the hub in use cannot be reached.
    #[serde(default)]
    pub standby_hubs: Vec<SocketAddr>,
    #[serde(default)]
    pub chains: Vec<ChainConfig>,
    /// Merchant backends told of every invoice and payment event (`teepay_events::webhook`).
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (verified against the system's roots and `ca_file`), or `http://…` for a
    /// receiver on this machine or a private network.
    pub url: String,
    /// Signs every delivery (HMAC-SHA256, `X-Teepay-Signature`); at least 16 characters.
    pub secret: String,
    /// Event kinds by prefix (`invoice.`, `payment.succeeded`); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// PEM certificates to trust for this URL besides the system's (a private CA, or the
    /// receiver's self-signed certificate).
    pub ca_file: Option<PathBuf>,
}

fn default_hub_listen() -> SocketAddr {
    "127.0.0.1:9700".parse().expect("valid")
}
fn default_hub_api() -> SocketAddr {
    "127.0.0.1:9701".parse().expect("valid")
}
fn default_node_api() -> SocketAddr {
    "127.0.0.1:9710".parse().expect("valid")
}
fn default_hub_dir() -> PathBuf {
    "teepay-hub".into()
}
fn default_node_dir() -> PathBuf {
    "teepay-node".into()
}
fn default_prepare_timeout() -> u64 {
    3_000
}
fn default_swap_lock_time() -> u64 {
    2 * teepay_coordinator::DAY_MS
}

pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
}
