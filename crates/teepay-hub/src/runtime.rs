//! The whole hub wired together: channel DB, contract sync per chain, the hub enclave
//! (restored from its sealed state or created and sealed at once), the executor service and
//! the `/metrics` endpoint. `teepay hub` and `teepay demo` call [`start`].

use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::service::{HubControl, HubHandle, HubSettings, serve};
use crate::sync::{SyncConfig, SyncError, sync_once, sync_to_head};
use crate::{HubError, load_network};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use teepay_chain::AnyChain;
use teepay_coordinator::{Coordinator, HubConfig};
use teepay_link::host::{FilePlatform, SealedLogFile};
use teepay_store::{InstanceStatus, Store};
use teepay_types::Platform;
use teepay_types::{
    Address, ChainId, Hash32, InstanceId, InstanceKind, Outcome, Quote, RoundAuth, SigningKey,
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("chain sync: {0}")]
    Sync(#[from] SyncError),
    #[error("hub enclave: {0}")]
    Enclave(#[from] teepay_coordinator::HubError),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |error| RuntimeError::Io { what, error }
}

/// One chain the hub follows.
#[derive(Debug, Clone)]
pub struct HubChain {
    pub chain: AnyChain,
    pub sync: SyncConfig,
}

#[derive(Debug, Clone)]
pub struct HubRuntimeConfig {
    /// Where nodes connect.
    pub listen: SocketAddr,
    /// The hub enclave's platform files and sealed state.
    pub state_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub db_url: String,
    pub chains: Vec<HubChain>,
    /// Simulation mode: the attestation service's key that turns the hub enclave's report
    /// into a quote (on TEE hardware the quote comes from the platform).
    pub attestation_key: SigningKey,
    pub measurement: Hash32,
    pub allowed_node_measurements: Vec<Hash32>,
    pub prepare_timeout: Duration,
    /// See [`HubConfig::swap_lock_time`] (default two days).
    pub swap_lock_time: Duration,
    pub retransmit_after: Duration,
    /// Session MACs (default) or a signature on every round message.
    pub round_auth: RoundAuth,
    /// New instances ask for peer acks (`--verify-peer-acks`, see [`HubConfig::peer_acks`]).
    pub peer_acks: bool,
    pub tick: Duration,
    /// See [`HubSettings::batch_window`].
    pub batch_window: Duration,
    pub sync_poll: Duration,
    /// Serves Prometheus `/metrics` here when set.
    pub metrics_listen: Option<SocketAddr>,
    /// Serves the gRPC client API (`teepay.v1.Hub`) here when set.
    pub api_listen: Option<SocketAddr>,
}

/// A started hub.
#[derive(Debug)]
pub struct RunningHub {
    pub handle: HubHandle,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub metrics_addr: Option<SocketAddr>,
    pub api_addr: Option<SocketAddr>,
    /// The hub enclave's address and quote.
    pub enclave: Address,
    pub quote: Quote,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningHub {
    pub fn control(&self) -> HubControl {
        self.handle.control()
    }

    /// Waits until every chain's sync has applied `block` on chain `chain`.
    pub async fn synced(&self, chain: ChainId, block: u64) {
        self.metrics.synced(chain, block).await
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        self.handle.stop();
    }
}

/// Starts everything; returns once the hub accepts nodes (chains synced to their head).
pub async fn start(cfg: HubRuntimeConfig) -> Result<RunningHub, RuntimeError> {
    let (store, metrics) = open_store(&cfg).await?;

    let platform = FilePlatform::open(&cfg.state_dir).map_err(io("hub platform files"))?;
    let sealed_path = cfg.state_dir.join("hub.sealed");
    // The platform keeps the blob sealed under its counter; `hub.sealed` is the host's copy.
    let restorable =
        platform.restorable(&sealed_path).map_err(io(format!("reading {}", sealed_path.display())))?;
    let coordinator = match restorable {
        Some(log) => {
            let mut c = Coordinator::restore(platform, &log)?;
            c.set_round_auth(cfg.round_auth);
            c.set_peer_acks(cfg.peer_acks);
            tracing::info!(enclave = %c.address(), instances = c.inspect().instances.len(), "hub enclave restored");
            c
        }
        None => {
            let config = hub_config(&cfg);
            let entropy = teepay_link::os_entropy().map_err(io("OS entropy"))?;
            let mut c = Coordinator::create(platform, config, entropy)?;
            // Sealed before any node sees the key: a restart must come back as the same hub.
            if let Some(blob) = c.flush().sealed
                && !c.platform().persists_sealed()
            {
                SealedLogFile::at(&sealed_path)
                    .record(&blob)
                    .map_err(io(format!("writing {}", sealed_path.display())))?;
            }
            tracing::info!(enclave = %c.address(), "hub enclave created");
            c
        }
    };
    let quote = coordinator.report(ChainId(0)).attest(&cfg.attestation_key);
    let enclave = coordinator.address();

    let executor = executor_for(coordinator, &store).await?;
    let events = open_events(&cfg.state_dir)?;

    let settings = HubSettings {
        listen: cfg.listen,
        state_path: sealed_path,
        quote: quote.clone(),
        tick: cfg.tick,
        batch_window: cfg.batch_window,
        metrics: metrics.clone(),
        finished: None,
        gate: None,
        events: Some(events.clone()),
    };
    let handle = serve(executor, Some(store.clone()), settings)
        .await
        .map_err(io(format!("listening on {}", cfg.listen)))?;
    let mut tasks = Vec::new();
    for c in cfg.chains.clone() {
        let slot = ControlSlot::default();
        slot.set(Some(handle.control()));
        tasks.push(tokio::spawn(sync_loop(c, store.clone(), slot, metrics.clone(), cfg.sync_poll)));
    }
    let mut metrics_addr = None;
    if let Some(addr) = cfg.metrics_listen {
        let (bound, task) =
            serve_metrics(addr, metrics.clone()).await.map_err(io(format!("metrics on {addr}")))?;
        metrics_addr = Some(bound);
        tasks.push(task);
    }
    let mut api_addr = None;
    if let Some(addr) = cfg.api_listen {
        let (bound, task) = crate::api::HubApi::new(handle.control())
            .with_events(events.clone())
            .serve(addr)
            .await
            .map_err(io(format!("gRPC API on {addr}")))?;
        api_addr = Some(bound);
        tasks.push(task);
    }
    tracing::info!(listen = %handle.addr, ?metrics_addr, ?api_addr, "hub started");
    Ok(RunningHub { handle, store, metrics, metrics_addr, api_addr, enclave, quote, tasks })
}

/// The state directory, the channel DB synced to every chain's head, and the metrics.
pub(crate) async fn open_store(cfg: &HubRuntimeConfig) -> Result<(Store, Arc<Metrics>), RuntimeError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(io(format!("creating {}", cfg.state_dir.display())))?;
    let store = Store::connect(&cfg.db_url).await.map_err(HubError::from)?;
    let metrics = Arc::new(Metrics::new(&cfg.chains.iter().map(|c| c.sync.chain.0).collect::<Vec<_>>()));
    for c in &cfg.chains {
        let r = sync_to_head(&c.chain, &store, &c.sync).await?;
        metrics.set_sync(c.sync.chain.0, r.next_block, r.head);
        tracing::info!(chain = c.sync.chain.0, at = %c.chain.describe(), head = r.head, events = r.events, "chain synced");
    }
    Ok((store, metrics))
}

/// The hub enclave's configuration from the runtime's.
pub(crate) fn hub_config(cfg: &HubRuntimeConfig) -> HubConfig {
    HubConfig {
        measurement: cfg.measurement,
        attestation_authority: cfg.attestation_key.address(),
        allowed_node_measurements: cfg.allowed_node_measurements.clone(),
        prepare_timeout: cfg.prepare_timeout.as_millis() as u64,
        retransmit_after: cfg.retransmit_after.as_millis() as u64,
        round_auth: cfg.round_auth,
        peer_acks: cfg.peer_acks,
        swap_lock_time: cfg.swap_lock_time.as_millis() as u64,
    }
}

/// The executor over a restored (or forked) hub enclave, caught up with the DB: instances
/// the enclave decided while the DB still lists them in flight are finished again, and
/// outcomes fixed on-chain while no executor ran reach the enclave.
pub async fn executor_for<P: Platform>(
    coordinator: Coordinator<P>,
    store: &Store,
) -> Result<Executor<P>, RuntimeError> {
    let network = load_network(store).await?;
    let mut executor = Executor::new(coordinator, network);
    for row in store.instances_with_status(InstanceStatus::InFlight).await.map_err(HubError::from)? {
        executor.resume(row.id);
    }
    // Instances the crash kept from the DB altogether (started and maybe ended between the
    // seal and the DB's write): recorded now, and finished again if decided.
    let restored: Vec<_> =
        executor.coordinator().inspect().instances.values().map(|i| (i.spec.clone(), i.created_at)).collect();
    for (spec, created_at) in restored {
        if store.instance(spec.id).await.map_err(HubError::from)?.is_none() {
            store
                .insert_instance(&crate::service::started_row(&spec, created_at))
                .await
                .map_err(HubError::from)?;
            executor.resume(spec.id);
        }
    }
    let replayed = replay_chain_outcomes(&mut executor, store, teepay_link::host::now_ms()).await?;
    if replayed > 0 {
        tracing::info!(instances = replayed, "outcomes fixed on-chain while the hub was down resolved");
    }
    Ok(executor)
}

/// Hands the hub enclave every on-chain outcome the DB holds for an instance it has not
/// decided: outcomes fixed while the hub was down (the startup sync applies them to the DB
/// only), or applied to the DB just before a crash and never handed over. Idempotent (the
/// enclave ignores an outcome it already has). Returns how many instances it resolved.
pub async fn replay_chain_outcomes<P: Platform>(
    executor: &mut Executor<P>,
    store: &Store,
    now: u64,
) -> Result<usize, HubError> {
    let undecided: Vec<(InstanceId, ChainId)> = executor
        .coordinator()
        .inspect()
        .instances
        .iter()
        .filter(|(_, i)| i.spec.kind == InstanceKind::MultiHop && i.phase.outcome().is_none())
        .filter_map(|(id, i)| Some((*id, i.spec.legs.first()?.chain)))
        .collect();
    let mut resolved = 0;
    for (id, chain) in undecided {
        if let Some(applied) = store.instance_outcome(chain, id).await.map_err(HubError::from)? {
            let outcome = if applied { Outcome::Apply } else { Outcome::Revert };
            match executor.on_chain_outcome(now, id, outcome) {
                Ok(()) => resolved += 1,
                Err(e) => {
                    tracing::error!(instance = %id, ?outcome, error = %e, "recorded on-chain outcome refused")
                }
            }
        }
    }
    Ok(resolved)
}

/// The executor that chain events go to: always there for a single hub; only while it
/// leads for a replica of a hub group (whose DB follows the chains either way).
#[derive(Debug, Clone, Default)]
pub struct ControlSlot(Arc<std::sync::Mutex<Option<HubControl>>>);

impl ControlSlot {
    pub fn set(&self, control: Option<HubControl>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = control;
    }
    pub fn get(&self) -> Option<HubControl> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Follows one chain: applied events go to the executor's map (and ejects to RESOLVE).
pub(crate) async fn sync_loop(
    c: HubChain,
    store: Store,
    slot: ControlSlot,
    metrics: Arc<Metrics>,
    poll: Duration,
) {
    loop {
        match sync_once(&c.chain, &store, &c.sync).await {
            Ok(r) => {
                metrics.set_sync(c.sync.chain.0, r.next_block, r.head);
                let control = slot.get();
                if let Some(to) = r.rolled_back_to {
                    tracing::warn!(chain = c.sync.chain.0, to, "reorganization: channel DB rolled back");
                    match (load_network(&store).await, &control) {
                        (Ok(net), Some(control)) => control.reload_network(net),
                        (Ok(_), None) => {}
                        (Err(e), _) => tracing::error!(error = %e, "rebuilding the network map"),
                    }
                }
                for event in r.applied {
                    tracing::debug!(chain = c.sync.chain.0, ?event, "contract event");
                    if let Some(control) = &control {
                        control.chain_event(c.sync.chain, event);
                    }
                }
                if r.next_block + c.sync.confirmations <= r.head {
                    continue; // more backlog: no pause
                }
            }
            Err(e) => tracing::warn!(chain = c.sync.chain.0, error = %e, "chain sync"),
        }
        tokio::time::sleep(poll).await;
    }
}

pub(crate) async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
        }),
    );
    let listener = teepay_link::tcp::listen(addr, crate::RESTART_PATIENCE).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((bound, task))
}

/// How many instance events a hub keeps for subscribers that resume.
pub const EVENTS_KEPT: usize = 100_000;

/// The hub's event log, `<state>/events.jsonl`.
pub fn open_events(state_dir: &std::path::Path) -> Result<Arc<teepay_events::EventLog>, RuntimeError> {
    std::fs::create_dir_all(state_dir).map_err(io(format!("state directory {}", state_dir.display())))?;
    let path = state_dir.join("events.jsonl");
    teepay_events::EventLog::open(&path, EVENTS_KEPT).map_err(io(format!("event log {}", path.display())))
}
