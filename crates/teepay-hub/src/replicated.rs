//! One replica of a hub group (issue 15): `teepay hub` with `[[replicas]]`.
//!
//! Every replica follows the chains into its own channel DB and keeps its shadow coordinator
//! on the group's committed log (`replication.rs`), and serves the client API (a follower
//! answers with where the leader's is). The one that leads also runs the executor, on a fork
//! of its shadow, and the node link; every flush is committed through Raft before it is
//! released. When it stops leading — another replica was elected, a flush could not be
//! committed, or it has not heard from a majority for a while (cut off) — it stops both, so
//! nodes reconnect to whoever leads now.

use crate::api::HubApi;
use crate::metrics::Metrics;
use crate::replication::{HubApply, RaftGate, ShadowSigner};
use crate::runtime::{
    ControlSlot, HubRuntimeConfig, RuntimeError, executor_for, hub_config, io, open_store, serve_metrics,
    sync_loop,
};
use crate::service::{HubHandle, HubSettings, serve};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use teepay_coordinator::{Candidate, Coordinator, ProvisionGift};
use teepay_link::host::FilePlatform;
use teepay_replica::log_store::FileLogStore;
use teepay_replica::network::{Provisioner, Services, TcpNetwork, request_provision, serve_with};
use teepay_replica::openraft::{BasicNode, ServerState};
use teepay_replica::state_machine::Replayed;
use teepay_replica::{Raft, ReplicaId};
use teepay_store::Store;
use teepay_types::{Address, ChainId, Quote};

/// One member of the group, as every replica's config lists it.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub id: ReplicaId,
    /// Where nodes connect while this replica leads.
    pub link: SocketAddr,
    /// Where the other replicas reach this one (Raft, provisioning).
    pub raft: SocketAddr,
    /// The client API while this replica leads.
    pub api: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct ReplicatedConfig {
    /// `listen` and `api_listen` are ignored: this replica's come from `replicas`.
    pub hub: HubRuntimeConfig,
    pub me: ReplicaId,
    pub replicas: Vec<ReplicaSpec>,
    /// Create the hub identity if this replica has no state (the group's first start, on
    /// one replica only); otherwise a replica without state is provisioned by a peer.
    pub bootstrap: bool,
    /// The operators' key that admits the group's members (`teepay group admit`): with it the
    /// bootstrap replica founds a group whose enclaves release a flush only for a majority
    /// of the members' commit receipts (`teepay_coordinator::group`). Without it, every
    /// replica's host is trusted to run Raft faithfully.
    pub governance: Option<Address>,
}

/// A leader that has not heard from a majority for this long stops driving nodes.
const QUORUM_LOST_AFTER: Duration = Duration::from_millis(1_500);
/// At most one provisioning request per this interval (each encrypts the whole state).
const PROVISION_INTERVAL: Duration = Duration::from_millis(200);

pub struct RunningReplica {
    pub id: ReplicaId,
    /// The hub identity every replica shares: nodes see one hub.
    pub enclave: Address,
    pub quote: Quote,
    pub raft: Raft,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub metrics_addr: Option<SocketAddr>,
    shadow: Replayed<HubApply>,
    slot: ControlSlot,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningReplica")
            .field("id", &self.id)
            .field("enclave", &self.enclave)
            .finish_non_exhaustive()
    }
}

impl RunningReplica {
    /// The group's committed hub state as this replica has applied it.
    pub fn with_shadow<T>(&self, f: impl FnOnce(&Coordinator<FilePlatform>) -> T) -> T {
        self.shadow.with_app(|a| f(a.shadow()))
    }

    /// The executor while this replica leads (None while it follows).
    pub fn control(&self) -> Option<crate::service::HubControl> {
        self.slot.get()
    }

    /// Waits until this replica's chain sync has applied `block` on chain `chain`.
    pub async fn synced(&self, chain: ChainId, block: u64) {
        self.metrics.synced(chain, block).await
    }

    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
    }
}

pub async fn start(cfg: ReplicatedConfig) -> Result<RunningReplica, RuntimeError> {
    let me = cfg.replicas.iter().find(|r| r.id == cfg.me).cloned().ok_or_else(|| RuntimeError::Io {
        what: format!("replica {} is not among [[replicas]]", cfg.me),
        error: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let (store, metrics) = open_store(&cfg.hub).await?;
    let state = cfg.hub.state_dir.clone();
    let shadow = open_shadow(&cfg, &state).await?;
    let enclave = shadow.address();
    let quote = shadow.report(ChainId(0)).attest(&cfg.hub.attestation_key);
    let member = shadow.member_address();
    tracing::info!(replica = cfg.me, %enclave, ?member, seq = shadow.replica_chain().seq, "hub replica enclave ready");

    let raft_dir = state.join("raft");
    let votes =
        crate::replication::SealedVotes::open(&state.join("raft-vote")).map_err(io("raft vote platform"))?;
    let log =
        FileLogStore::open_with(&raft_dir, Some(Arc::new(votes))).map_err(|e| replica_io("raft log", e))?;
    let sm = Replayed::open(&raft_dir, HubApply::new(shadow)).map_err(|e| replica_io("raft state", e))?;
    let config = Arc::new(teepay_replica::config().validate().map_err(|e| RuntimeError::Io {
        what: "raft config".into(),
        error: std::io::Error::other(e.to_string()),
    })?);
    let peers = cfg.replicas.iter().map(|r| (r.id, r.raft.to_string())).collect();
    let signer = Arc::new(ShadowSigner(sm.clone()));
    let network = TcpNetwork::new(signer.clone()).with_addresses(peers);
    let raft = Raft::new(cfg.me, config, network, log, sm.clone()).await.map_err(|e| RuntimeError::Io {
        what: "starting raft".into(),
        error: std::io::Error::other(e.to_string()),
    })?;
    let listener = teepay_link::tcp::listen(me.raft, crate::RESTART_PATIENCE)
        .await
        .map_err(io(format!("replica port {}", me.raft)))?;
    let services = Services {
        provisioner: Some(provisioner(sm.clone())),
        receipts: Some(crate::replication::receipt_source(sm.clone())),
    };
    let mut tasks = vec![tokio::spawn(serve_with(listener, raft.clone(), signer.clone(), services))];
    if cfg.bootstrap {
        let members: BTreeMap<ReplicaId, BasicNode> =
            cfg.replicas.iter().map(|r| (r.id, BasicNode::new(r.raft.to_string()))).collect();
        // Refused once the group exists (a restart): nothing to do then.
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(error = %e, "group already initialized");
        }
    }

    let slot = ControlSlot::default();
    // Each replica's own: a subscriber follows the leader's, and resyncs after a failover.
    let events = crate::runtime::open_events(&state)?;
    for c in cfg.hub.chains.clone() {
        tasks.push(tokio::spawn(sync_loop(
            c,
            store.clone(),
            slot.clone(),
            metrics.clone(),
            cfg.hub.sync_poll,
        )));
    }
    let mut metrics_addr = None;
    if let Some(addr) = cfg.hub.metrics_listen {
        let (bound, task) =
            serve_metrics(addr, metrics.clone()).await.map_err(io(format!("metrics on {addr}")))?;
        metrics_addr = Some(bound);
        tasks.push(task);
    }
    let id = me.id;
    // The client API on every replica: the leader answers, a follower says where it is.
    if let Some(addr) = me.api {
        let raft_for_hint = raft.clone();
        let apis: BTreeMap<ReplicaId, SocketAddr> =
            cfg.replicas.iter().filter_map(|r| r.api.map(|a| (r.id, a))).collect();
        let leader_api = Arc::new(move || {
            let leader = raft_for_hint.metrics().borrow().current_leader?;
            apis.get(&leader).map(|a| format!("http://{a}"))
        });
        let shadow = sm.clone();
        let group = Arc::new(move || shadow.with_app(|a| crate::api::group_info(a.shadow())));
        let (_, task) = HubApi::for_replica(slot.clone(), leader_api, group)
            .with_events(events.clone())
            .serve(addr)
            .await
            .map_err(io(format!("gRPC API on {addr}")))?;
        tasks.push(task);
    }
    let role = Role {
        cfg,
        me,
        raft: raft.clone(),
        sm: sm.clone(),
        signer,
        events,
        store: store.clone(),
        metrics: metrics.clone(),
        slot: slot.clone(),
    };
    tasks.push(tokio::spawn(role.run()));
    Ok(RunningReplica { id, enclave, quote, raft, store, metrics, metrics_addr, shadow: sm, slot, tasks })
}

fn replica_io(what: &str, e: teepay_replica::ReplicaError) -> RuntimeError {
    RuntimeError::Io { what: what.into(), error: std::io::Error::other(e.to_string()) }
}

/// The shadow from this replica's own sealed state; else, on the bootstrap replica, a new
/// hub identity; else provisioned by a peer (retried until one answers).
async fn open_shadow(
    cfg: &ReplicatedConfig,
    state: &Path,
) -> Result<Coordinator<FilePlatform>, RuntimeError> {
    let dir = state.join("shadow");
    let platform = FilePlatform::open(&dir).map_err(io("shadow platform files"))?;
    if let Some(log) = platform.restorable(&dir.join("host-copy")).map_err(io("shadow sealed state"))? {
        return Ok(Coordinator::restore(platform, &log)?);
    }
    if cfg.bootstrap {
        let entropy = teepay_link::os_entropy().map_err(io("OS entropy"))?;
        let mut hub = Coordinator::create(platform, hub_config(&cfg.hub), entropy)?;
        if let Some(governance) = cfg.governance {
            let member = hub.found_group(governance, teepay_link::os_entropy().map_err(io("OS entropy"))?)?;
            tracing::info!(%member, %governance, "hub group founded: admit its members with `teepay group admit`");
        }
        hub.flush(); // sealed (the platform persists it) before anyone sees the key
        tracing::info!(enclave = %hub.address(), "hub identity created (group bootstrap)");
        return Ok(hub);
    }
    drop(platform);
    let mut attempt = 0u32;
    loop {
        for peer in cfg.replicas.iter().filter(|r| r.id != cfg.me) {
            let platform = FilePlatform::open(&dir).map_err(io("shadow platform files"))?;
            let entropy = teepay_link::os_entropy().map_err(io("OS entropy"))?;
            let candidate = Candidate::new(platform, cfg.hub.measurement, entropy)?;
            let quote = candidate.report(ChainId(0)).attest(&cfg.hub.attestation_key);
            let answer = request_provision(&peer.raft.to_string(), &teepay_types::encode(&quote)).await;
            let bytes = match answer {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(why)) => {
                    tracing::warn!(peer = peer.id, %why, "provisioning refused");
                    continue;
                }
                Err(e) => {
                    if attempt.is_multiple_of(10) {
                        tracing::info!(peer = peer.id, error = %e, "waiting for a peer to provision this replica");
                    }
                    continue;
                }
            };
            let Ok((gift, snapshot)) = teepay_types::decode::<(ProvisionGift, Vec<u8>)>(&bytes) else {
                tracing::warn!(peer = peer.id, "malformed provisioning answer");
                continue;
            };
            let (hub, _sealed) = candidate.join(&gift, &snapshot)?;
            tracing::info!(peer = peer.id, enclave = %hub.address(), "provisioned by a peer");
            return Ok(hub);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Answers a joining replica from this replica's shadow: the enclave checks its quote and
/// encrypts the identity for it; the snapshot is the committed state under the group key.
fn provisioner(sm: Replayed<HubApply>) -> Provisioner {
    let last = std::sync::Mutex::new(None::<Instant>);
    Arc::new(move |quote: &[u8]| {
        {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < PROVISION_INTERVAL) {
                return Err("busy: retry shortly".into());
            }
            *last = Some(Instant::now());
        }
        let quote: Quote = teepay_types::decode(quote).map_err(|e| format!("quote: {e}"))?;
        sm.with_app(|a| {
            let gift = a.shadow().provision(&quote).map_err(|e| e.to_string())?;
            let snapshot = a.shadow().group_snapshot().map_err(|e| e.to_string())?;
            Ok(teepay_types::encode(&(gift, snapshot)))
        })
    })
}

/// What a leader runs; dropping it closes all of it.
struct Office {
    handle: Option<HubHandle>,
    api: Option<tokio::task::JoinHandle<()>>,
    slot: ControlSlot,
}

impl Office {
    fn executor_stopped(&self) -> bool {
        self.handle.as_ref().is_none_or(HubHandle::executor_stopped)
    }
}

impl Drop for Office {
    fn drop(&mut self) {
        self.slot.set(None);
        if let Some(h) = self.handle.take() {
            h.stop();
        }
        if let Some(api) = self.api.take() {
            api.abort();
        }
    }
}

/// A follower's node port: every connection gets one frame naming the leader's node port
/// (`teepay_link::send_follower_hint`) and is closed. Unauthenticated and only a hint: a
/// node follows it only to a replica it is configured with, and authenticates the hub there.
async fn answer_with_leader(addr: SocketAddr, raft: Raft, replicas: Vec<ReplicaSpec>) {
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            // The node link of this replica's last term may still be closing.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    // Connections answered at once; beyond, new ones are closed unanswered.
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let leader = raft.metrics().borrow().current_leader;
        let hint = leader.and_then(|l| replicas.iter().find(|r| r.id == l)).map(|r| r.link.to_string());
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        tokio::spawn(async move {
            // The hint, then the node's first frame read and dropped before closing: a
            // close with unread data would reset the connection and could lose the hint.
            let exchange = async {
                teepay_link::send_follower_hint(&mut stream, hint.as_deref()).await?;
                let mut first = [0u8; 128];
                tokio::io::AsyncReadExt::read(&mut stream, &mut first).await?;
                Ok::<_, teepay_link::LinkError>(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), exchange).await;
            drop(slot);
        });
    }
}

/// Leads when elected: the executor, node link and API run only on the leader.
struct Role {
    cfg: ReplicatedConfig,
    me: ReplicaSpec,
    raft: Raft,
    sm: Replayed<HubApply>,
    signer: Arc<ShadowSigner>,
    events: Arc<teepay_events::EventLog>,
    store: Store,
    metrics: Arc<Metrics>,
    slot: ControlSlot,
}

impl Role {
    fn leads(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let quorum = m.millis_since_quorum_ack.is_none_or(|ms| ms < QUORUM_LOST_AFTER.as_millis() as u64);
        m.state == ServerState::Leader && m.current_leader == Some(self.me.id) && quorum
    }

    async fn run(self) {
        loop {
            // While following, the node port says where the leader is (nodes dial it next).
            let hints =
                tokio::spawn(answer_with_leader(self.me.link, self.raft.clone(), self.cfg.replicas.clone()));
            while !self.leads() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            hints.abort();
            let _ = hints.await; // its listener is closed before the node link binds the port
            match self.take_office().await {
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(Some((handle, api))) => {
                    tracing::info!(replica = self.me.id, link = %handle.addr, "leading the hub group");
                    // Closes the node link, the executor and the API however this ends
                    // (also when this task is aborted: a replica stopped in-process).
                    let office = Office { handle: Some(handle), api, slot: self.slot.clone() };
                    while self.leads() && !office.executor_stopped() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tracing::warn!(replica = self.me.id, "no longer leading: node link and API closed");
                    drop(office);
                }
                Err(e) => {
                    tracing::error!(replica = self.me.id, error = %e, "could not take office");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Waits until every committed entry is applied here, forks the shadow and serves.
    /// None: it turned out not to lead after all (a replica just restarted may believe it
    /// still does until it hears from the group).
    async fn take_office(
        &self,
    ) -> Result<Option<(HubHandle, Option<tokio::task::JoinHandle<()>>)>, RuntimeError> {
        if let Err(e) = self.raft.ensure_linearizable().await {
            tracing::info!(replica = self.me.id, error = %e, "not confirmed as leader");
            return Ok(None);
        }
        let platform = FilePlatform::open(&self.cfg.hub.state_dir.join("leader"))
            .map_err(io("leader platform files"))?;
        let (mut live, _sealed) = self.sm.with_app(|a| a.shadow().fork(platform))?;
        live.set_round_auth(self.cfg.hub.round_auth);
        live.set_peer_acks(self.cfg.hub.peer_acks);
        let quote = live.report(ChainId(0)).attest(&self.cfg.hub.attestation_key);
        let executor = executor_for(live, &self.store).await?;
        let settings = HubSettings {
            listen: self.me.link,
            state_path: self.cfg.hub.state_dir.join("leader").join("hub.sealed"),
            quote,
            tick: self.cfg.hub.tick,
            batch_window: self.cfg.hub.batch_window,
            metrics: self.metrics.clone(),
            finished: None,
            gate: Some(Arc::new(RaftGate::new(self.raft.clone()).with_receipts(
                self.cfg.replicas.iter().filter(|r| r.id != self.me.id).map(|r| (r.id, r.raft.to_string())),
                self.signer.clone(),
            ))),
            events: Some(self.events.clone()),
        };
        let handle = serve(executor, Some(self.store.clone()), settings)
            .await
            .map_err(io(format!("node link on {}", self.me.link)))?;
        self.slot.set(Some(handle.control()));
        // Chain events applied to the DB between the map load and now.
        if let Ok(net) = crate::load_network(&self.store).await {
            handle.control().reload_network(net);
        }
        Ok(Some((handle, None)))
    }
}
