//! The demo's hub: a group of three replicas (DESIGN §10), each the same service `teepay hub`
//! runs with `[[replicas]]` — its own enclave, state directory and channel DB — in this
//! process, over loopback. Only the leader drives nodes; nodes know every replica's link.

use super::world::DemoChain;
use crate::dev::{HUB_MEASUREMENT, NODE_MEASUREMENT, attestation_key};
use anyhow::{Result, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use teepay_coordinator::SignedMembership;
use teepay_hub::replicated::{ReplicaSpec, ReplicatedConfig, RunningReplica, start};
use teepay_hub::runtime::{HubChain, HubRuntimeConfig};
use teepay_hub::service::HubControl;
use teepay_hub::sync::SyncConfig;
use teepay_types::{Address, ChainId, SigningKey};

pub const REPLICAS: usize = 3;

pub struct DemoHub {
    /// The operators' key: it admits every replica's enclave as a member of the group.
    governance: SigningKey,
    specs: Vec<ReplicaSpec>,
    configs: Vec<HubRuntimeConfig>,
    pub replicas: Vec<Option<RunningReplica>>,
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn runtime_config(dir: &Path, chains: &[DemoChain]) -> Result<HubRuntimeConfig> {
    Ok(HubRuntimeConfig {
        listen: "127.0.0.1:0".parse()?,
        state_dir: dir.to_path_buf(),
        db_url: format!("sqlite://{}", dir.join("hub.db").display()),
        chains: chains
            .iter()
            .map(|c| HubChain {
                chain: c.chain.clone(),
                sync: SyncConfig { confirmations: 0, ..SyncConfig::new(c.id, c.contract, c.from_block) },
            })
            .collect(),
        attestation_key: attestation_key(),
        measurement: HUB_MEASUREMENT,
        allowed_node_measurements: vec![NODE_MEASUREMENT],
        // Long enough for a swap caught by a leader's loss to complete under the next one.
        prepare_timeout: Duration::from_secs(6),
        swap_lock_time: Duration::from_millis(2 * teepay_coordinator::DAY_MS),
        retransmit_after: Duration::from_millis(200),
        round_auth: Default::default(),
        peer_acks: false,
        tick: Duration::from_millis(20),
        batch_window: Duration::ZERO,
        sync_poll: Duration::from_millis(10),
        metrics_listen: None,
        api_listen: None,
    })
}

impl DemoHub {
    /// Starts replica 1 (which creates the hub identity), then 2 and 3 (provisioned by it).
    pub async fn start(dir: &Path, chains: &[DemoChain]) -> Result<DemoHub> {
        let mut specs = Vec::new();
        for id in 1..=REPLICAS as u64 {
            specs.push(ReplicaSpec { id, link: free_addr()?, raft: free_addr()?, api: None });
        }
        let configs = (1..=REPLICAS)
            .map(|i| runtime_config(&dir.join(format!("hub{i}")), chains))
            .collect::<Result<Vec<_>>>()?;
        let governance = SigningKey::from_entropy(teepay_link::os_entropy()?)?;
        let mut hub = DemoHub { governance, specs, configs, replicas: (0..REPLICAS).map(|_| None).collect() };
        for i in 0..REPLICAS {
            hub.start_replica(i).await?;
        }
        hub.admit_members().await?;
        Ok(hub)
    }

    /// What `teepay group admit` does: the operators sign every replica enclave's member key
    /// into the membership; the leader's enclave checks the signature and replicates it.
    /// From then on a flush leaves only once two of the three enclaves hold it.
    async fn admit_members(&self) -> Result<()> {
        let members: Vec<Address> = self
            .replicas
            .iter()
            .flatten()
            .map(|r| r.with_shadow(|s| s.member_address()))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("a replica of the group has no member key"))?;
        let hub = self.enclave();
        let signed = SignedMembership::sign(&self.governance, hub, 1, members);
        let membership = self.control().await?.update_membership(signed).await.map_err(anyhow::Error::msg)?;
        if membership.members.len() != REPLICAS {
            bail!("the group admitted {} members, not {REPLICAS}", membership.members.len());
        }
        Ok(())
    }

    async fn start_replica(&mut self, i: usize) -> Result<()> {
        let cfg = ReplicatedConfig {
            hub: self.configs[i].clone(),
            me: self.specs[i].id,
            replicas: self.specs.clone(),
            bootstrap: i == 0,
            governance: Some(self.governance.address()),
        };
        self.replicas[i] = Some(start(cfg).await?);
        Ok(())
    }

    /// Every replica's node link: the first for `hub`, the rest as standbys.
    pub fn links(&self) -> (SocketAddr, Vec<SocketAddr>) {
        (self.specs[0].link, self.specs[1..].iter().map(|s| s.link).collect())
    }

    /// The hub identity every replica shares.
    pub fn enclave(&self) -> Address {
        self.replicas.iter().flatten().next().map(|r| r.enclave).unwrap_or_default()
    }

    /// Which replica leads now, if one does.
    pub fn leader(&self) -> Option<usize> {
        self.replicas.iter().position(|r| r.as_ref().is_some_and(|r| r.control().is_some()))
    }

    /// The leader's executor, waiting (up to 20 s) for a replica to lead.
    pub async fn control(&self) -> Result<HubControl> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.replicas.iter().flatten().find_map(|r| r.control()) {
                return Ok(c);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("no hub replica leads");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every running replica's sync has applied `block` of `chain`.
    pub async fn synced(&self, chain: ChainId, block: u64) {
        for r in self.replicas.iter().flatten() {
            r.synced(chain, block).await;
        }
    }

    /// Stops replica `i` at once, as a crash would (its files stay).
    pub async fn kill(&mut self, i: usize) {
        if let Some(r) = self.replicas[i].take() {
            r.stop().await;
        }
    }

    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.start_replica(i).await
    }
}
