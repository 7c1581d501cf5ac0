//! The hub service: the async shell around [`Executor`]. One task owns the executor (and so
//! the hub enclave); connection tasks only move frames. Round messages are batched
//! adaptively: the executor task drains every event that is queued, then flushes once — one
//! signed batch per node — so batches grow with load and cost nothing when idle.
//!
//! Before any batch leaves, the hub enclave's sealed state (a delta appended to its sealed
//! log, or a snapshot that replaces it) is written durably: a crash can never lose a
//! decision that a node has already seen. The flush runs via `block_in_place`, so its
//! `fdatasync` does not hold up the runtime's other tasks.

use crate::admission::{
    ACCEPT_BACKOFF, HANDSHAKE_DEADLINE, HANDSHAKES_PER_SECOND, INBOUND_PER_CONNECTION, Limits,
    OUTBOUND_PER_CONNECTION, QuotePolicy, RateLimit,
};
use crate::executor::{ExecError, Executor, Finished, Status};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use teepay_chain::contract::ContractEvent;
pub use teepay_link::host::{now_ms, persist_atomic};
use teepay_link::wire::{HubMessage, NodeMessage, WireStatus};
use teepay_link::{Link, LinkError, handshake, os_entropy};
use teepay_routing::{ChannelSnapshot, Network};
use teepay_store::{InstanceRow, InstanceStatus, Store};
use teepay_types::{
    Address, ChainId, Hash32, InstanceId, InstanceKind, LinkRole, PaymentReceipt, Platform, Quote, Signature,
    encode,
};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub listen: SocketAddr,
    /// Where the hub enclave's sealed state lives.
    pub state_path: PathBuf,
    /// The hub enclave's quote, sent to every node so its enclave can attest the hub.
    pub quote: Quote,
    /// How often timeouts and retransmissions are checked.
    pub tick: Duration,
    /// Extra time to collect round messages before each flush (zero: adaptive only — drain
    /// what is queued, then flush).
    pub batch_window: Duration,
    pub metrics: Arc<Metrics>,
    /// Receives every instance that reached its final status (benchmarks, embedders).
    pub finished: Option<mpsc::UnboundedSender<Finished>>,
    /// A replicated hub's leader: each flush's replicated-log entry must be committed here
    /// before anything of that flush leaves (None: a single hub, durable once sealed).
    pub gate: Option<Arc<dyn ReleaseGate>>,
    /// Where instance events go (`SubscribeInstances`), written with the status rows.
    pub events: Option<Arc<teepay_events::EventLog>>,
}

/// Where a replicated hub commits each flush before releasing it (the Raft group, in
/// `replication.rs`); the executor itself knows nothing of replication.
pub trait ReleaseGate: Send + Sync + std::fmt::Debug {
    /// Resolves once `entry` is committed on a majority; an error means this hub can no
    /// longer commit (it lost the lead): nothing of the flush may leave, and the executor
    /// stops.
    fn committed(
        &self,
        entry: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;

    /// Receipts of the other replicas' enclaves for the entries up to `seq`: as many as a
    /// majority needs, or as many as answered. A hub group's enclave releases a flush's
    /// batches only for a majority's (`Coordinator::release`).
    fn receipts(
        &self,
        seq: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<teepay_coordinator::Receipt>> + Send + '_>>;
}

/// How long a group's leader keeps asking for the receipts of a flush before it gives up the
/// lead (its executor stops; whoever leads next resends what was decided).
const RELEASE_DEADLINE: Duration = Duration::from_secs(5);

/// The held flushes' batches once a majority of the group's enclaves hold them; None if
/// that did not happen within [`RELEASE_DEADLINE`].
async fn release_held<P: Platform>(
    exec: &mut Executor<P>,
    gate: Option<&dyn ReleaseGate>,
) -> Option<Vec<teepay_types::SignedHubBatch>> {
    let started = tokio::time::Instant::now();
    let seq = exec.coordinator().replica_chain().seq;
    let mut batches = Vec::new();
    let mut receipts = Vec::new();
    loop {
        batches.extend(exec.coordinator_mut().release(&receipts));
        if exec.coordinator().held() == 0 {
            return Some(batches);
        }
        let gate = gate?;
        if started.elapsed() > RELEASE_DEADLINE {
            return None;
        }
        receipts = gate.receipts(seq).await;
        if receipts.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every map the hub routes on, per (chain, asset), with each channel's balances and reservations.
pub type NetworkMap = Vec<((ChainId, teepay_types::Asset), Vec<ChannelSnapshot>)>;

enum Event {
    SignLink {
        transcript: Hash32,
        reply: oneshot::Sender<Signature>,
    },
    Connected {
        node: Address,
        conn: u64,
        tx: mpsc::Sender<Vec<u8>>,
    },
    Message {
        node: Address,
        msg: NodeMessage,
        /// Held until the executor has handled the message (bounds each link's backlog).
        _permit: OwnedSemaphorePermit,
    },
    Disconnected {
        node: Address,
        conn: u64,
    },
    Tick,
    /// The status DB holds this instance's final status.
    Recorded(InstanceId),
    /// A confirmed contract event from chain sync.
    Chain {
        chain: ChainId,
        event: ContractEvent,
    },
    /// Sync rolled the DB back (a deep reorg): the map is rebuilt from it.
    ReloadNetwork(Network),
    Status {
        instance: InstanceId,
        reply: oneshot::Sender<Option<Status>>,
    },
    Network {
        reply: oneshot::Sender<NetworkMap>,
    },
    Admitted {
        node: Address,
        reply: oneshot::Sender<bool>,
    },
    Membership {
        signed: teepay_coordinator::SignedMembership,
        reply: oneshot::Sender<Result<teepay_coordinator::Membership, String>>,
    },
}

/// A running hub: its bound address, control and queries, and a way to stop it.
#[derive(Debug)]
pub struct HubHandle {
    pub addr: SocketAddr,
    control: HubControl,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Feeds chain events into a running hub and queries it; cheap to clone.
#[derive(Debug, Clone)]
pub struct HubControl {
    events: mpsc::UnboundedSender<Event>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Event")
    }
}

impl HubControl {
    /// A confirmed contract event (from sync): map updates and RESOLVE after ejects.
    pub fn chain_event(&self, chain: ChainId, event: ContractEvent) {
        let _ = self.events.send(Event::Chain { chain, event });
    }

    pub fn reload_network(&self, network: Network) {
        let _ = self.events.send(Event::ReloadNetwork(network));
    }

    /// A payment's or swap's status; `None` for an id this hub never started.
    pub async fn status(&self, instance: InstanceId) -> Option<Status> {
        let (reply, answer) = oneshot::channel();
        self.events.send(Event::Status { instance, reply }).ok()?;
        answer.await.ok().flatten()
    }

    /// True iff the hub enclave admitted `node`'s attested enclave.
    pub async fn is_admitted(&self, node: Address) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.events.send(Event::Admitted { node, reply }).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Hands a member list signed by the group's governance key to the hub enclave, which
    /// checks it and replicates it with the next flush: the membership now in force, or
    /// why it was refused.
    pub async fn update_membership(
        &self,
        signed: teepay_coordinator::SignedMembership,
    ) -> Result<teepay_coordinator::Membership, String> {
        let (reply, answer) = oneshot::channel();
        self.events.send(Event::Membership { signed, reply }).map_err(|_| "the hub stopped".to_string())?;
        answer.await.map_err(|_| "the hub stopped".to_string())?
    }

    /// The network map: every channel per (chain, asset) with balances and reservations.
    pub async fn network(&self) -> NetworkMap {
        let (reply, answer) = oneshot::channel();
        if self.events.send(Event::Network { reply }).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

impl HubHandle {
    pub fn control(&self) -> HubControl {
        self.control.clone()
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }

    /// True once the executor task has ended (e.g. a flush could not be committed).
    pub fn executor_stopped(&self) -> bool {
        self.tasks.first().is_some_and(|t| t.is_finished())
    }

    /// Resolves when the executor task ends (it could not make a flush durable, or it
    /// panicked): a hub without it drives no instance, so its daemon should exit and be
    /// restarted from the sealed state rather than linger holding its port.
    pub async fn executor_ended(&mut self) {
        match self.tasks.first_mut() {
            Some(executor) => drop(executor.await),
            None => std::future::pending().await,
        }
    }
}

/// Binds, and serves until stopped. `store` receives every instance's status.
pub async fn serve<P: Platform + Send + 'static>(
    executor: Executor<P>,
    store: Option<Store>,
    settings: HubSettings,
) -> std::io::Result<HubHandle> {
    let listener = teepay_link::tcp::listen(settings.listen, crate::RESTART_PATIENCE).await?;
    let addr = listener.local_addr()?;
    let config = &executor.coordinator().inspect().config;
    let policy = QuotePolicy {
        authority: config.attestation_authority,
        measurements: config.allowed_node_measurements.clone(),
    };
    let (events, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(run_executor(executor, store, settings.clone(), rx, events.clone())));
    let ticker = events.clone();
    let tick = settings.tick;
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            if ticker.send(Event::Tick).is_err() {
                return;
            }
        }
    }));
    let control = HubControl { events: events.clone() };
    tasks.push(tokio::spawn(accept_loop(listener, events, settings.quote, policy)));
    Ok(HubHandle { addr, control, tasks })
}

async fn accept_loop(
    listener: TcpListener,
    events: mpsc::UnboundedSender<Event>,
    quote: Quote,
    policy: QuotePolicy,
) {
    let mut next_conn = 0u64;
    let limits = Limits::default();
    let mut rate = RateLimit::per_second(HANDSHAKES_PER_SECOND);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permits = match limits.admit(&mut rate, std::time::Instant::now()) {
            Ok(permits) => permits,
            Err(why) => {
                tracing::debug!(?why, "connection refused at accept");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_conn += 1;
        let (events, quote, policy) = (events.clone(), quote.clone(), policy.clone());
        tokio::spawn(connection(stream, next_conn, events, quote, policy, permits));
    }
}

/// Most messages one write to a node carries (bounds the buffer a slow node can pin).
const MAX_BURST: usize = 256;

async fn connection(
    stream: tokio::net::TcpStream,
    conn: u64,
    events: mpsc::UnboundedSender<Event>,
    quote: Quote,
    policy: QuotePolicy,
    (_connection, handshake_slot): (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    let (r, w) = stream.into_split();
    let Ok(entropy) = os_entropy() else { return };
    let signer = events.clone();
    let sign = move |transcript| async move {
        let (reply, answer) = oneshot::channel();
        signer
            .send(Event::SignLink { transcript, reply })
            .map_err(|_| LinkError::Signer("hub stopped".into()))?;
        answer.await.map_err(|_| LinkError::Signer("hub stopped".into()))
    };
    // Only a peer whose attestation quote verifies gets the hub enclave to sign the link;
    // until the hub enclave admits that quote (Register), everything it sends except
    // Register is refused.
    let accept = |peer, credentials: &[u8]| policy.admits(peer, credentials);
    let shake = handshake(r, w, LinkRole::Responder, entropy, &[], sign, accept);
    let Ok(Ok(Link { mut reader, mut writer, peer: node })) =
        tokio::time::timeout(HANDSHAKE_DEADLINE, shake).await
    else {
        return;
    };
    drop(handshake_slot);
    let (tx, mut outgoing) = mpsc::channel::<Vec<u8>>(OUTBOUND_PER_CONNECTION);
    if events.send(Event::Connected { node, conn, tx: tx.clone() }).is_err() {
        return;
    }
    let _ = tx.try_send(HubMessage::Welcome(quote).to_bytes());
    drop(tx);
    let mut writer = tokio::spawn(async move {
        // Whatever else is already queued for this node goes out in the same write.
        let mut burst = Vec::new();
        while outgoing.recv_many(&mut burst, MAX_BURST).await > 0 {
            if writer.send_all(burst.iter().map(Vec::as_slice)).await.is_err() {
                return;
            }
            burst.clear();
        }
    });
    // Messages waiting for the executor: a permit each, returned when it is handled.
    let inbound = Arc::new(Semaphore::new(INBOUND_PER_CONNECTION));
    let reading = async {
        loop {
            let Ok(permit) = inbound.clone().acquire_owned().await else { break };
            let Ok(bytes) = reader.recv().await else { break };
            match NodeMessage::from_bytes(&bytes) {
                Ok(msg) => {
                    if events.send(Event::Message { node, msg, _permit: permit }).is_err() {
                        break;
                    }
                }
                // A malformed message ends the connection: the peer is broken or hostile.
                Err(_) => break,
            }
        }
    };
    // The writer ends when the hub drops this node (its queue overflowed, or a newer link
    // replaced it): then the connection ends too.
    tokio::select! {
        _ = reading => {}
        _ = &mut writer => {}
    }
    writer.abort();
    let _ = events.send(Event::Disconnected { node, conn });
}

struct Peers {
    links: HashMap<Address, (u64, mpsc::Sender<Vec<u8>>)>,
    /// When the oldest unanswered batch went to each node: its ack gives the node's
    /// response time, which the router minimizes (DESIGN §8).
    awaiting: HashMap<Address, std::time::Instant>,
    /// Smoothed response time per node (µs).
    latency: HashMap<Address, u32>,
}

impl Peers {
    /// An ack arrived: fold its response time into the node's estimate (EWMA, 1/8).
    fn measure(&mut self, node: Address) -> Option<u32> {
        let sample = self.awaiting.remove(&node)?.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let estimate = match self.latency.get(&node) {
            Some(old) => ((*old as u64 * 7 + sample as u64) / 8) as u32,
            None => sample,
        };
        self.latency.insert(node, estimate);
        Some(estimate)
    }
}

impl Peers {
    /// Queues `msg` for `node`; a node whose queue is full (it does not read) is dropped:
    /// its link closes, and it reconnects and gets the current round retransmitted.
    fn send(&mut self, node: Address, msg: &HubMessage) {
        if let Some((_, tx)) = self.links.get(&node)
            && let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg.to_bytes())
        {
            tracing::warn!(%node, queued = OUTBOUND_PER_CONNECTION, "node does not read its link: dropped");
            self.links.remove(&node);
            self.awaiting.remove(&node);
        }
    }
}

fn wire_status(s: Option<&Status>) -> WireStatus {
    match s {
        None => WireStatus::Unknown,
        Some(Status::InFlight) => WireStatus::InFlight,
        Some(Status::Succeeded) => WireStatus::Succeeded,
        Some(Status::Refunded(r)) => WireStatus::Refunded(r.clone()),
    }
}

enum StatusWrite {
    Started(InstanceRow),
    Finished(Finished),
    /// A status the executor no longer holds (e.g. from before a restart): answered from
    /// the DB, after every write queued before it.
    Lookup {
        instance: InstanceId,
        request: u64,
        to: mpsc::Sender<Vec<u8>>,
    },
    /// A payee's receipt, checked by the executor, kept for its payer.
    Receipt(PaymentReceipt),
    /// The receipt kept for an instance, if any, sent to the node asking its status (its
    /// payer, which may have been offline when the receipt came).
    ReceiptLookup {
        instance: InstanceId,
        to: mpsc::Sender<Vec<u8>>,
    },
}

/// How many times a status write is tried before it is given up (about 23 s of back-off).
const STATUS_WRITE_TRIES: u32 = 8;

/// Runs a status write again while it fails, backing off from 100 ms to 10 s (a DB
/// restarting, a pool exhausted): an ended instance leaves the hub enclave only once the DB
/// recorded it, so a write lost for a moment's outage would hold it there until a restart.
/// Writes stay in order: the next one waits.
async fn retrying<T, W, F>(mut write: W) -> teepay_store::Result<T>
where
    W: FnMut() -> F,
    F: std::future::Future<Output = teepay_store::Result<T>>,
{
    let mut pause = Duration::from_millis(100);
    for _ in 1..STATUS_WRITE_TRIES {
        match write().await {
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "status write failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            done => return done,
        }
    }
    write().await
}

/// Sends the receipt the DB keeps for `instance`, if any, to a node's link.
async fn send_receipt(
    store: &Store,
    instance: InstanceId,
    to: &mpsc::Sender<Vec<u8>>,
) -> teepay_store::Result<()> {
    if let Some(bytes) = store.receipt(instance).await?
        && let Ok(receipt) = teepay_types::decode::<PaymentReceipt>(&bytes)
    {
        let _ = to.try_send(HubMessage::Receipt(receipt).to_bytes());
    }
    Ok(())
}

async fn run_executor<P: Platform>(
    mut exec: Executor<P>,
    store: Option<Store>,
    settings: HubSettings,
    mut rx: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
) {
    let mut peers = Peers { links: HashMap::new(), awaiting: HashMap::new(), latency: HashMap::new() };
    // The host's copy of the sealed log, for a platform that does not keep it itself.
    let mut host_copy = teepay_link::host::SealedLogFile::at(&settings.state_path);
    // Status rows are written by their own task, in order, so DB latency never holds up
    // the rounds.
    let (status_tx, mut status_rx) = mpsc::unbounded_channel::<StatusWrite>();
    if let Some(store) = store {
        exec.hold_until_recorded();
        let events = settings.events.clone();
        tokio::spawn(async move {
            while let Some(w) = status_rx.recv().await {
                let r = match w {
                    StatusWrite::Lookup { instance, request, to } => {
                        let status = match store.instance(instance).await {
                            Ok(Some(row)) => match row.status {
                                InstanceStatus::InFlight => WireStatus::InFlight,
                                InstanceStatus::Succeeded => WireStatus::Succeeded,
                                InstanceStatus::Refunded => WireStatus::Refunded(
                                    row.failure_reason.unwrap_or_else(|| "refunded".into()),
                                ),
                            },
                            _ => WireStatus::Unknown,
                        };
                        let succeeded = status == WireStatus::Succeeded;
                        let _ = to.try_send(HubMessage::Status { request, instance, status }.to_bytes());
                        if succeeded { send_receipt(&store, instance, &to).await } else { Ok(()) }
                    }
                    StatusWrite::Started(row) => retrying(|| store.insert_instance(&row)).await.map(|new| {
                        // A restarted hub records what it recovers again: one event per instance.
                        if new && let Some(log) = &events {
                            let data =
                                serde_json::json!({ "instance": row.id.to_string(), "kind": row.kind });
                            log.append("instance.started", data, row.created_at);
                        }
                    }),
                    StatusWrite::Receipt(r) => {
                        let bytes = teepay_types::encode(&r);
                        retrying(|| store.insert_receipt(r.instance, &r.invoice, &bytes, now_ms())).await
                    }
                    StatusWrite::ReceiptLookup { instance, to } => send_receipt(&store, instance, &to).await,
                    StatusWrite::Finished(f) => {
                        let (status, outcome, reason) = match &f.status {
                            Status::Succeeded => (InstanceStatus::Succeeded, Some("applied"), None),
                            Status::Refunded(why) => {
                                (InstanceStatus::Refunded, Some("reverted"), Some(why.as_str()))
                            }
                            Status::InFlight => continue,
                        };
                        // Balances first: a crash in between leaves the row in flight, and
                        // a restarted hub finishes it again (see `Executor::resume`).
                        // (A channel the DB does not know — a map fed by hand, as in tests —
                        // or one closed meanwhile has no balances to keep.)
                        for (chain, c) in &f.channels {
                            if let Err(e) = store.set_balances(*chain, c.id, c.balance_a, c.balance_b).await {
                                tracing::debug!(channel = ?c.id, error = %e, "balances not recorded");
                            }
                        }
                        let finished =
                            retrying(|| store.finish_instance(f.id, status, outcome, reason, f.finished_at))
                                .await;
                        if finished.is_ok() {
                            let _ = events_tx.send(Event::Recorded(f.id));
                        }
                        finished.map(|first| {
                            if first && let Some(log) = &events {
                                let (kind, reason) = match &f.status {
                                    Status::Succeeded => ("instance.succeeded", None),
                                    _ => ("instance.refunded", reason),
                                };
                                let data = serde_json::json!({ "instance": f.id.to_string(), "reason": reason,
                                    "latency_ms": f.finished_at.saturating_sub(f.created_at) });
                                log.append(kind, data, f.finished_at);
                            }
                        })
                    }
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "writing instance status to the channel DB failed");
                }
            }
        });
    } else {
        // No DB: writes (and lookups) fail at once instead of queueing forever.
        drop(status_rx);
    }
    // Replies that name an instance, held until the flush that seals its creation is durable.
    let mut after_flush: Vec<AfterFlush> = Vec::new();
    while let Some(first) = rx.recv().await {
        let now = now_ms();
        let mut event = Some(first);
        // Drain everything already queued before flushing once: the adaptive batch window.
        while let Some(ev) = event {
            handle(&mut exec, &mut peers, &mut after_flush, &settings.metrics, now, ev);
            event = rx.try_recv().ok();
        }
        // An optional fixed window on top: trade latency for larger batches.
        if !settings.batch_window.is_zero() {
            let deadline = tokio::time::Instant::now() + settings.batch_window;
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                handle(&mut exec, &mut peers, &mut after_flush, &settings.metrics, now, ev);
            }
        }
        // Flushing seals (and syncs) the hub enclave's state.
        let mut out = teepay_link::host::blocking(|| exec.flush(now));
        // (A platform that stores the blob with its counter has made it durable already.)
        if let Some(sealed) = &out.sealed
            && !exec.coordinator().platform().persists_sealed()
            && let Err(e) = host_copy.record(sealed)
        {
            // Sending without the state on disk could lose a decision nodes have seen.
            tracing::error!(path = %settings.state_path.display(), error = %e, "cannot persist the hub enclave's sealed state; stopping");
            return;
        }
        // A replicated hub's flush is durable once a majority of the group holds it.
        if let (Some(gate), Some(entry)) = (&settings.gate, out.replicated.take())
            && let Err(e) = gate.committed(entry).await
        {
            tracing::warn!(error = %e, "flush not committed (no longer the leader?): the executor stops");
            return;
        }
        // A group's enclave holds the flush until a majority's enclaves say they hold it.
        if exec.coordinator().held() > 0 {
            match release_held(&mut exec, settings.gate.as_deref()).await {
                Some(batches) => out.batches.extend(batches),
                None => {
                    tracing::warn!("no majority of the group's enclaves holds the flush: the executor stops");
                    return;
                }
            }
        }
        // The state that created every instance named below is durable now: a crash can no
        // longer give its id to another instance.
        for deferred in after_flush.drain(..) {
            match deferred {
                AfterFlush::Reply(node, msg) => peers.send(node, &msg),
                AfterFlush::Status(write) => {
                    // Without a DB the writer is gone: a lookup's status is unknown.
                    if let Err(mpsc::error::SendError(StatusWrite::Lookup { instance, request, to })) =
                        status_tx.send(write)
                    {
                        let status = WireStatus::Unknown;
                        let _ = to.try_send(HubMessage::Status { request, instance, status }.to_bytes());
                    }
                }
            }
        }
        let metrics = &settings.metrics;
        for batch in out.batches {
            let node = batch.batch.node;
            metrics.batch_size.observe(batch.batch.items.len() as f64);
            peers.awaiting.entry(node).or_insert_with(std::time::Instant::now);
            peers.send(node, &HubMessage::Batch(batch));
        }
        for f in out.finished {
            match &f.status {
                Status::Succeeded => metrics.succeeded.fetch_add(1, Relaxed),
                _ => metrics.refunded.fetch_add(1, Relaxed),
            };
            metrics.latency.observe(f.finished_at.saturating_sub(f.created_at) as f64 / 1e3);
            tracing::debug!(instance = %f.id, status = ?f.status, "instance finished");
            if let Some(tx) = &settings.finished {
                let _ = tx.send(f.clone());
            }
            let _ = status_tx.send(StatusWrite::Finished(f));
        }
    }
}

/// What leaves the service task only once the flush after it is durable (issue 14 item 6:
/// `Accepted{instance}` sent before the seal could name an id a crash then hands out again).
enum AfterFlush {
    Reply(Address, HubMessage),
    Status(StatusWrite),
}

fn handle<P: Platform>(
    exec: &mut Executor<P>,
    peers: &mut Peers,
    after_flush: &mut Vec<AfterFlush>,
    metrics: &Metrics,
    now: u64,
    ev: Event,
) {
    match ev {
        Event::Chain { chain, event } => {
            if let Err(e) = exec.on_chain_event(now, chain, &event) {
                tracing::warn!(chain = chain.0, ?event, error = %e, "contract event not applied to the network map");
            }
        }
        Event::ReloadNetwork(network) => exec.replace_network(network),
        Event::Status { instance, reply } => drop(reply.send(exec.status(instance).cloned())),
        Event::Network { reply } => {
            let map = exec.network().graphs().map(|(key, g)| (*key, g.channels().collect())).collect();
            let _ = reply.send(map);
        }
        Event::Admitted { node, reply } => drop(reply.send(exec.coordinator().is_registered(node))),
        Event::Membership { signed, reply } => {
            let hub = exec.coordinator_mut();
            let result = hub
                .update_membership(&signed)
                .map_err(|e| e.to_string())
                .map(|()| hub.inspect().membership.clone().expect("a membership was just accepted"));
            let _ = reply.send(result);
        }
        Event::SignLink { transcript, reply } => {
            let _ = reply.send(exec.coordinator().sign_link(&transcript, LinkRole::Responder));
        }
        Event::Connected { node, conn, tx } => {
            tracing::info!(%node, "node connected");
            peers.links.insert(node, (conn, tx));
            metrics.connected_nodes.store(peers.links.len() as u64, Relaxed);
        }
        Event::Disconnected { node, conn } => {
            if peers.links.get(&node).is_some_and(|(c, _)| *c == conn) {
                tracing::info!(%node, "node disconnected");
                peers.links.remove(&node);
                peers.awaiting.remove(&node);
                metrics.connected_nodes.store(peers.links.len() as u64, Relaxed);
            }
        }
        Event::Tick => exec.tick(now),
        Event::Recorded(id) => exec.recorded(id),
        Event::Message { node, msg, _permit } => {
            let registered = exec.coordinator().is_registered(node);
            match msg {
                NodeMessage::Register(quote) => {
                    if quote.report.enclave == node
                        && !registered
                        && let Err(e) = exec.coordinator_mut().register_node(&quote)
                    {
                        tracing::warn!(%node, error = %e, "node not admitted");
                    }
                }
                NodeMessage::Pay { request, .. }
                | NodeMessage::Swap { request, .. }
                | NodeMessage::Status { request, .. }
                    if !registered =>
                {
                    let reason =
                        "this node's enclave is not admitted: its quote was missing or refused".to_string();
                    peers.send(node, &HubMessage::Refused { request, reason });
                }
                _ if !registered => {
                    // Acks and refund requests of unadmitted peers are ignored.
                }
                NodeMessage::Ack(ack) => {
                    if ack.ack.node == node
                        && exec.on_ack(now, &ack).is_ok()
                        && let Some(us) = peers.measure(node)
                    {
                        exec.network_mut().set_latency(node, us);
                    }
                }
                NodeMessage::Refund(req) => {
                    let _ = exec.on_refund_request(now, &req);
                }
                NodeMessage::Pay { request, order } => {
                    let started = exec.submit_payment(now, order);
                    answer_start(exec, after_flush, metrics, node, request, started, now);
                }
                NodeMessage::Swap { request, intents } => {
                    let started = exec.submit_swap(now, intents);
                    answer_start(exec, after_flush, metrics, node, request, started, now);
                }
                NodeMessage::Receipt(receipt) => match exec.check_receipt(node, &receipt) {
                    Ok(payer) => {
                        peers.send(payer, &HubMessage::Receipt(receipt.clone()));
                        after_flush.push(AfterFlush::Status(StatusWrite::Receipt(receipt)));
                    }
                    Err(e) => tracing::debug!(%node, error = %e, "receipt dropped"),
                },
                NodeMessage::Status { request, instance } => match exec.status(instance) {
                    Some(s) => {
                        // A payer asking after its paid invoice gets the receipt again (it may
                        // have been offline when it came).
                        if *s == Status::Succeeded
                            && exec.pays_invoice(instance)
                            && let Some((_, to)) = peers.links.get(&node)
                        {
                            let lookup = StatusWrite::ReceiptLookup { instance, to: to.clone() };
                            after_flush.push(AfterFlush::Status(lookup));
                        }
                        // The instance may have been created in this very round.
                        let status = wire_status(Some(s));
                        after_flush
                            .push(AfterFlush::Reply(node, HubMessage::Status { request, instance, status }));
                    }
                    None => {
                        if let Some((_, to)) = peers.links.get(&node) {
                            let lookup = StatusWrite::Lookup { instance, request, to: to.clone() };
                            after_flush.push(AfterFlush::Status(lookup));
                        }
                    }
                },
            }
        }
    }
}

/// The status DB's row of an instance just started.
pub(crate) fn started_row(spec: &teepay_types::InstanceSpec, created_at: u64) -> InstanceRow {
    InstanceRow {
        id: spec.id,
        kind: match spec.kind {
            InstanceKind::MultiHop => "multi_hop".into(),
            InstanceKind::CrossChain => "cross_chain".into(),
        },
        spec: encode(spec),
        status: InstanceStatus::InFlight,
        created_at,
        updated_at: created_at,
        outcome: None,
        failure_reason: None,
    }
}

/// Answers a pay/swap request and records a started instance for the status DB.
#[allow(clippy::too_many_arguments)]
fn answer_start<P: Platform>(
    exec: &Executor<P>,
    after_flush: &mut Vec<AfterFlush>,
    metrics: &Metrics,
    node: Address,
    request: u64,
    started: Result<InstanceId, ExecError>,
    now: u64,
) {
    let reply = match started {
        Ok(id) => {
            let instance = exec.coordinator().instance(id).expect("a just-started instance exists");
            let kind = instance.spec.kind;
            let row = started_row(&instance.spec, now);
            after_flush.push(AfterFlush::Status(StatusWrite::Started(row)));
            metrics.started.fetch_add(1, Relaxed);
            tracing::debug!(instance = %id, ?kind, "instance started");
            HubMessage::Accepted { request, instance: id }
        }
        Err(e) => {
            metrics.refused.fetch_add(1, Relaxed);
            tracing::info!(%node, reason = %e, "request refused");
            HubMessage::Refused { request, reason: e.to_string() }
        }
    };
    after_flush.push(AfterFlush::Reply(node, reply));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_status_write_is_retried_with_back_off_then_given_up() {
        let calls = std::cell::Cell::new(0);
        let flaky = retrying(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(teepay_store::StoreError::Corrupt("down".into())) } else { Ok(n) } }
        });
        let started = tokio::time::Instant::now();
        assert_eq!(flaky.await.unwrap(), 3, "the third try lands");
        assert_eq!(started.elapsed(), Duration::from_millis(300), "after 100 + 200 ms");

        calls.set(0);
        let down = retrying(|| {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(teepay_store::StoreError::Corrupt("down".into())) }
        });
        assert!(down.await.is_err());
        assert_eq!(calls.get(), STATUS_WRITE_TRIES, "bounded");
    }

    #[test]
    fn response_times_are_measured_from_the_oldest_unanswered_batch_and_smoothed() {
        let mut peers = Peers { links: HashMap::new(), awaiting: HashMap::new(), latency: HashMap::new() };
        let node = Address([7; 20]);
        assert_eq!(peers.measure(node), None, "an ack without a batch in flight measures nothing");
        let sent = std::time::Instant::now() - Duration::from_millis(8);
        peers.awaiting.insert(node, sent);
        let first = peers.measure(node).unwrap();
        assert!((8_000..1_000_000).contains(&first), "{first}");
        peers.awaiting.insert(node, std::time::Instant::now());
        let second = peers.measure(node).unwrap();
        assert!(
            second < first && second >= first * 7 / 8 - 1,
            "EWMA moves 1/8 towards a fast sample: {first} → {second}"
        );
    }
}
