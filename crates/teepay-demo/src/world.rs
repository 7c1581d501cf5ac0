//! The demo's world: two chains with `PaymentChannels` deployed, the hub group, and node daemons
//! with their chain watchers — the same services `teepay hub` / `teepay node` run, in one
//! process, talking over loopback TCP.

use super::group::DemoHub;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use teepay_chain::contract::{deploy, send_from_key};
use teepay_chain::{AnyChain, Chain, Receipt};
use teepay_enclave::{NodeConfig, NodeEnclave, Request, Response};
use teepay_link::host::{FilePlatform, SealedLogFile};
use teepay_link::wire::WireStatus;
use teepay_node::onchain::{ChainLink, spawn_watcher};
use teepay_node::{NodeError, NodeHandle, NodeSettings, spawn};
use teepay_types::Platform as _;
use teepay_types::{Address, Amount, ChainId, InstanceId};
use tokio::sync::watch;

use crate::dev::{HUB_MEASUREMENT, NODE_MEASUREMENT, attestation_key};

pub const ETHER: u128 = 1_000_000_000_000_000_000;

pub fn eth(wei: u128) -> String {
    units_of(wei, ETHER)
}

/// `amount` base units as whole units of `one` with four decimals (table columns).
pub fn units_of(amount: u128, one: u128) -> String {
    format!("{}.{:04}", amount / one, (amount % one) / (one / 10_000).max(1))
}

pub struct DemoChain {
    pub name: &'static str,
    pub chain: AnyChain,
    pub id: ChainId,
    pub contract: Address,
    pub from_block: u64,
}

impl DemoChain {
    pub fn link(&self) -> ChainLink<AnyChain> {
        ChainLink {
            chain: self.chain.clone(),
            id: self.id,
            contract: self.contract,
            from_block: self.from_block,
            confirmations: 0,
        }
    }
}

pub struct DemoNode {
    pub name: &'static str,
    pub handle: NodeHandle,
    dir: PathBuf,
    daemon: Option<tokio::task::JoinHandle<()>>,
    watchers: Vec<(tokio::task::JoinHandle<()>, watch::Receiver<u64>)>,
}

pub struct World {
    pub dir: PathBuf,
    pub chains: Vec<DemoChain>,
    pub hub: DemoHub,
    pub nodes: Vec<DemoNode>,
    /// Gas each node's enclave paid, per (chain, node).
    pub gas: BTreeMap<(ChainId, Address), u128>,
    /// What each node's enclave account was given, per (chain, node).
    pub funded: BTreeMap<(ChainId, Address), u128>,
}

fn node_config(chains: &[DemoChain]) -> NodeConfig {
    NodeConfig {
        measurement: NODE_MEASUREMENT,
        attestation_authority: attestation_key().address(),
        allowed_hub_measurements: vec![HUB_MEASUREMENT],
        contracts: chains.iter().map(|c| (c.id, c.contract)).collect(),
        max_tx_fee: Amount(ETHER / 100),
        require_peer_acks: false,
    }
}

/// Connects (or creates) the two chains and deploys the contract on each.
pub async fn chains(rpc: Option<&[String]>) -> Result<Vec<DemoChain>> {
    let names = ["chain A", "chain B"];
    let mut out = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let chain = match rpc {
            Some(urls) => AnyChain::from_spec(&urls[i], ChainId(0))?,
            None => AnyChain::from_spec("embedded", ChainId(31337 + i as u64))?,
        };
        let id = chain.chain_id().await.with_context(|| format!("{name} at {}", chain.describe()))?;
        let d =
            deploy(&chain, &teepay_chain::dev::dev_key(0), attestation_key().address(), &[NODE_MEASUREMENT])
                .await
                .with_context(|| format!("deploying PaymentChannels on {name}"))?;
        out.push(DemoChain { name, chain, id, contract: d.address, from_block: d.block });
    }
    if out[0].id == out[1].id {
        bail!("both chains report chain id {}; start them with different --chain-id", out[0].id.0);
    }
    Ok(out)
}

impl World {
    /// Creates a node enclave, starts its daemon and watchers, funds its account on every
    /// chain from a dev account and registers it with each contract (an enclave-built tx).
    pub async fn add_node(&mut self, name: &'static str, dev_index: usize) -> Result<Address> {
        let dir = self.dir.join(name);
        let platform = FilePlatform::open(&dir)?;
        let entropy = teepay_link::os_entropy()?;
        let (enclave, sealed) = NodeEnclave::create(platform, node_config(&self.chains), entropy)?;
        if !enclave.platform().persists_sealed() {
            SealedLogFile::at(&dir.join("sealed")).record(&sealed)?;
        }
        let (handle, daemon) = self.spawn_daemon(&dir, enclave)?;
        let address = handle.address;
        for ci in 0..self.chains.len() {
            let c = &self.chains[ci];
            let amount = 10 * ETHER;
            send_from_key(
                &c.chain,
                &teepay_chain::dev::dev_key(dev_index),
                Some(address),
                Amount(amount),
                vec![],
            )
            .await
            .with_context(|| format!("funding {name} on {}", c.name))?;
            self.funded.insert((c.id, address), amount);
            let Response::Report(report) = handle.enclave(Request::Report { chain: c.id }).await? else {
                bail!("unexpected enclave response")
            };
            let quote = report.attest(&attestation_key());
            if let Some(r) = teepay_node::onchain::register(&handle, &c.link(), &quote).await? {
                self.pay_gas(ci, &r);
            }
        }
        self.nodes.push(DemoNode { name, handle, dir, daemon: Some(daemon), watchers: vec![] });
        self.start_watchers(self.nodes.len() - 1).await?;
        Ok(address)
    }

    fn spawn_daemon(
        &self,
        dir: &Path,
        mut enclave: NodeEnclave<FilePlatform>,
    ) -> Result<(NodeHandle, tokio::task::JoinHandle<()>)> {
        let Response::Report(report) = enclave.handle(0, Request::Report { chain: ChainId(0) })?.response
        else {
            bail!("unexpected enclave response")
        };
        let (hub, standby_hubs) = self.hub.links();
        let settings = NodeSettings {
            hub,
            standby_hubs,
            state_path: dir.join("sealed"),
            quote: report.attest(&attestation_key()),
            reconnect_after: Duration::from_millis(50),
            order_ttl: Duration::from_secs(60),
            events: Some(teepay_events::EventLog::in_memory(10_000)),
        };
        Ok(spawn(enclave, settings))
    }

    /// One watcher per chain for node `i`; returns once the hub admitted the node.
    async fn start_watchers(&mut self, i: usize) -> Result<()> {
        let handle = self.nodes[i].handle.clone();
        self.nodes[i].watchers = self
            .chains
            .iter()
            .map(|c| spawn_watcher(handle.clone(), c.link(), Duration::from_millis(10)))
            .collect();
        wait_ready(&handle).await
    }

    /// Simulates a crash: the daemon and its watchers stop at once (sealed state is on disk).
    pub fn stop_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(d) = node.daemon.take() {
            d.abort();
        }
        for (w, _) in node.watchers.drain(..) {
            w.abort();
        }
    }

    /// Restarts a stopped node from its persisted sealed state.
    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        let dir = self.nodes[i].dir.clone();
        let platform = FilePlatform::open(&dir)?;
        let log = platform.restorable(&dir.join("sealed"))?.context("no sealed state to restart from")?;
        let enclave = NodeEnclave::restore(platform, &log)?;
        let (handle, daemon) = self.spawn_daemon(&dir, enclave)?;
        self.nodes[i].handle = handle;
        self.nodes[i].daemon = Some(daemon);
        self.start_watchers(i).await
    }

    pub fn pay_gas(&mut self, chain_index: usize, r: &Receipt) {
        *self.gas.entry((self.chains[chain_index].id, r.from)).or_default() += r.fee().0;
    }

    /// Waits until the hub and every running node have applied all blocks mined so far.
    pub async fn settle_sync(&self) -> Result<()> {
        for c in &self.chains {
            let head = c.chain.block_number().await?;
            self.hub.synced(c.id, head).await;
        }
        for n in &self.nodes {
            for (ci, (_, rx)) in n.watchers.iter().enumerate() {
                let head = self.chains[ci].chain.block_number().await?;
                let mut rx = rx.clone();
                rx.wait_for(|next| *next > head).await.context("watcher stopped")?;
            }
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> &NodeHandle {
        &self.nodes.iter().find(|n| n.name == name).expect("known node").handle
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).expect("known node")
    }
}

/// Until the node's link is up and the hub admitted it (unadmitted nodes are refused).
pub async fn wait_ready(node: &NodeHandle) -> Result<()> {
    for _ in 0..500 {
        match node.status(InstanceId([0; 32])).await {
            Ok(_) => return Ok(()),
            Err(NodeError::Disconnected | NodeError::Refused(_)) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("node never connected to the hub")
}

/// Polls an instance until it is final.
pub async fn wait_final(node: &NodeHandle, id: InstanceId, limit: Duration) -> Result<WireStatus> {
    let start = std::time::Instant::now();
    loop {
        match node.status(id).await {
            Ok(WireStatus::InFlight) | Err(NodeError::Disconnected) => {}
            Ok(s) => return Ok(s),
            Err(e) => return Err(e.into()),
        }
        if start.elapsed() > limit {
            bail!("instance {id} still in flight after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
