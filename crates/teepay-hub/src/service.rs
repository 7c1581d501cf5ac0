//! The hub service: the async shell around [`Executor`]. One task owns the executor (and so
//! the hub enclave); connection tasks only move frames. Round messages are batched
//! adaptively: the executor task drains every event that is queued, then flushes once — one
//! signed batch per node — so batches grow with load and cost nothing when idle.
//!
//! Before any batch leaves, the hub enclave's sealed state is written durably (temp file,
//! fsync, rename, fsync of the directory): a crash can never lose a decision that a node
//! has already seen.

use crate::executor::{ExecError, Executor, Finished, Status};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
pub use teepay_link::host::{now_ms, persist_atomic};
use teepay_link::wire::{HubMessage, NodeMessage, WireStatus};
use teepay_link::{Link, LinkError, handshake, os_entropy};
use teepay_store::{InstanceRow, InstanceStatus, Store};
use teepay_types::{Address, Hash32, InstanceId, InstanceKind, LinkRole, Platform, Quote, Signature, encode};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub listen: SocketAddr,
    /// Where the hub enclave's sealed state lives.
    pub state_path: PathBuf,
    /// The hub enclave's quote, sent to every node so its enclave can attest the hub.
    pub quote: Quote,
    /// How often timeouts and retransmissions are checked.
    pub tick: Duration,
}

enum Event {
    SignLink { transcript: Hash32, reply: oneshot::Sender<Signature> },
    Connected { node: Address, conn: u64, tx: mpsc::UnboundedSender<Vec<u8>> },
    Message { node: Address, msg: NodeMessage },
    Disconnected { node: Address, conn: u64 },
    Tick,
}

/// A running hub: its bound address and a way to stop it.
#[derive(Debug)]
pub struct HubHandle {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HubHandle {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Binds, and serves until stopped. `store` receives every instance's status.
pub async fn serve<P: Platform + Send + 'static>(
    executor: Executor<P>,
    store: Option<Store>,
    settings: HubSettings,
) -> std::io::Result<HubHandle> {
    let listener = TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let (events, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(run_executor(executor, store, settings.clone(), rx)));
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
    tasks.push(tokio::spawn(accept_loop(listener, events, settings.quote)));
    Ok(HubHandle { addr, tasks })
}

async fn accept_loop(listener: TcpListener, events: mpsc::UnboundedSender<Event>, quote: Quote) {
    let mut next_conn = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        next_conn += 1;
        tokio::spawn(connection(stream, next_conn, events.clone(), quote.clone()));
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    conn: u64,
    events: mpsc::UnboundedSender<Event>,
    quote: Quote,
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
    // Any attested peer may complete the handshake; until its quote is admitted by the
    // hub enclave (Register), everything it sends except Register is refused.
    let Ok(Link { mut reader, mut writer, peer: node }) =
        handshake(r, w, LinkRole::Responder, entropy, sign, |_| true).await
    else {
        return;
    };
    let (tx, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    if events.send(Event::Connected { node, conn, tx: tx.clone() }).is_err() {
        return;
    }
    let _ = tx.send(HubMessage::Welcome(quote).to_bytes());
    let writer = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if writer.send(&bytes).await.is_err() {
                return;
            }
        }
    });
    loop {
        let Ok(bytes) = reader.recv().await else { break };
        match NodeMessage::from_bytes(&bytes) {
            Ok(msg) => {
                if events.send(Event::Message { node, msg }).is_err() {
                    break;
                }
            }
            // A malformed message ends the connection: the peer is broken or hostile.
            Err(_) => break,
        }
    }
    writer.abort();
    let _ = events.send(Event::Disconnected { node, conn });
}

struct Peers {
    links: HashMap<Address, (u64, mpsc::UnboundedSender<Vec<u8>>)>,
}

impl Peers {
    fn send(&self, node: Address, msg: &HubMessage) {
        if let Some((_, tx)) = self.links.get(&node) {
            let _ = tx.send(msg.to_bytes());
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
}

async fn run_executor<P: Platform>(
    mut exec: Executor<P>,
    store: Option<Store>,
    settings: HubSettings,
    mut rx: mpsc::UnboundedReceiver<Event>,
) {
    let mut peers = Peers { links: HashMap::new() };
    // Status rows are written by their own task, in order, so DB latency never holds up
    // the rounds.
    let (status_tx, mut status_rx) = mpsc::unbounded_channel::<StatusWrite>();
    if let Some(store) = store {
        tokio::spawn(async move {
            while let Some(w) = status_rx.recv().await {
                let r = match w {
                    StatusWrite::Started(row) => store.insert_instance(&row).await,
                    StatusWrite::Finished(f) => {
                        let (status, outcome, reason) = match &f.status {
                            Status::Succeeded => (InstanceStatus::Succeeded, Some("applied"), None),
                            Status::Refunded(why) => {
                                (InstanceStatus::Refunded, Some("reverted"), Some(why.as_str()))
                            }
                            Status::InFlight => continue,
                        };
                        store.finish_instance(f.id, status, outcome, reason, f.finished_at).await.map(|_| ())
                    }
                };
                if let Err(e) = r {
                    eprintln!("hub: writing instance status failed: {e}");
                }
            }
        });
    }
    while let Some(first) = rx.recv().await {
        let now = now_ms();
        let mut event = Some(first);
        // Drain everything already queued before flushing once: the adaptive batch window.
        while let Some(ev) = event {
            handle(&mut exec, &mut peers, &status_tx, now, ev);
            event = rx.try_recv().ok();
        }
        let out = exec.flush(now);
        if let Some(sealed) = &out.sealed
            && let Err(e) = persist_atomic(&settings.state_path, sealed)
        {
            // Sending without the state on disk could lose a decision nodes have seen.
            eprintln!("hub: cannot persist sealed state to {}: {e}; stopping", settings.state_path.display());
            return;
        }
        for batch in out.batches {
            let node = batch.batch.node;
            peers.send(node, &HubMessage::Batch(batch));
        }
        for f in out.finished {
            let _ = status_tx.send(StatusWrite::Finished(f));
        }
    }
}

fn handle<P: Platform>(
    exec: &mut Executor<P>,
    peers: &mut Peers,
    status_tx: &mpsc::UnboundedSender<StatusWrite>,
    now: u64,
    ev: Event,
) {
    match ev {
        Event::SignLink { transcript, reply } => {
            let _ = reply.send(exec.coordinator().sign_link(&transcript, LinkRole::Responder));
        }
        Event::Connected { node, conn, tx } => {
            peers.links.insert(node, (conn, tx));
        }
        Event::Disconnected { node, conn } => {
            if peers.links.get(&node).is_some_and(|(c, _)| *c == conn) {
                peers.links.remove(&node);
            }
        }
        Event::Tick => exec.tick(now),
        Event::Message { node, msg } => {
            let registered = exec.coordinator().is_registered(node);
            match msg {
                NodeMessage::Register(quote) => {
                    if quote.report.enclave == node
                        && !registered
                        && let Err(e) = exec.coordinator_mut().register_node(&quote)
                    {
                        eprintln!("hub: refusing node {node}: {e}");
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
                    if ack.ack.node == node {
                        let _ = exec.on_ack(now, &ack);
                    }
                }
                NodeMessage::Refund(req) => {
                    let _ = exec.on_refund_request(now, &req);
                }
                NodeMessage::Pay { request, order } => {
                    let started = exec.submit_payment(now, order);
                    answer_start(exec, peers, status_tx, node, request, started, InstanceKind::MultiHop, now);
                }
                NodeMessage::Swap { request, intents } => {
                    let started = exec.submit_swap(now, intents);
                    answer_start(
                        exec,
                        peers,
                        status_tx,
                        node,
                        request,
                        started,
                        InstanceKind::CrossChain,
                        now,
                    );
                }
                NodeMessage::Status { request, instance } => {
                    let status = wire_status(exec.status(instance));
                    peers.send(node, &HubMessage::Status { request, instance, status });
                }
            }
        }
    }
}

/// Answers a pay/swap request and records a started instance for the status DB.
#[allow(clippy::too_many_arguments)]
fn answer_start<P: Platform>(
    exec: &Executor<P>,
    peers: &Peers,
    status_tx: &mpsc::UnboundedSender<StatusWrite>,
    node: Address,
    request: u64,
    started: Result<InstanceId, ExecError>,
    kind: InstanceKind,
    now: u64,
) {
    let reply = match started {
        Ok(id) => {
            let spec = exec.coordinator().instance(id).map(|i| encode(&i.spec)).unwrap_or_default();
            let row = InstanceRow {
                id,
                kind: match kind {
                    InstanceKind::MultiHop => "multi_hop".into(),
                    InstanceKind::CrossChain => "cross_chain".into(),
                },
                spec,
                status: InstanceStatus::InFlight,
                created_at: now,
                updated_at: now,
                outcome: None,
                failure_reason: None,
            };
            let _ = status_tx.send(StatusWrite::Started(row));
            HubMessage::Accepted { request, instance: id }
        }
        Err(e) => HubMessage::Refused { request, reason: e.to_string() },
    };
    peers.send(node, &reply);
}
