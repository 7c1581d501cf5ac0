//! teepay-node: the node daemon. It hosts the node enclave (in-process in simulation mode,
//! behind the same request/response interface a real TEE would use), keeps a persistent,
//! reconnecting link to the hub, and answers the hub's batches.
//!
//! Durability rule (DESIGN §7): every sealed blob the enclave returns (a delta appended to
//! its sealed log, or a snapshot replacing it) is written durably *before* the response that
//! caused it leaves the process — an ack must never outlive the state that produced it.

pub mod api;
pub mod assets;
mod events;
mod invoice_api;
pub mod onchain;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use teepay_enclave::{EnclaveError, NodeEnclave, Request, Response};
use teepay_link::host::{SealedLogFile, blocking, now_ms};
use teepay_link::wire::{HubMessage, NodeMessage, WireStatus};
use teepay_link::{Link, LinkError, handshake, os_entropy};
use teepay_types::{Address, Amount, Asset, ChainId, InstanceId, LinkRole, Platform, Quote, SignedOrder};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("enclave refused: {0}")]
    Enclave(#[from] EnclaveError),
    #[error("hub refused: {0}")]
    Refused(String),
    #[error("not connected to the hub")]
    Disconnected,
    #[error("node stopped")]
    Stopped,
    #[error("the hub did not answer within {} s", .0.as_secs())]
    HubSilent(Duration),
    #[error("cannot persist sealed state: {0}")]
    Storage(String),
}

#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub hub: SocketAddr,
    /// The other replicas of a hub group: tried in turn when the one in use cannot be
    /// reached (only the leader accepts nodes; all share the hub identity, so the link's
    /// authentication is the same whichever answers).
    pub standby_hubs: Vec<SocketAddr>,
    /// Where the enclave's sealed state is kept (replayed at start by the caller).
    pub state_path: PathBuf,
    /// This enclave's quote from the attestation authority (sent to the hub to be admitted).
    pub quote: Quote,
    pub reconnect_after: Duration,
    /// Lifetime of the payment requests this node signs.
    pub order_ttl: Duration,
    /// Where this node's events go (its API's streams, its webhooks); None: not recorded.
    pub events: Option<std::sync::Arc<teepay_events::EventLog>>,
}

enum Command {
    Pay { what: Payment, reply: oneshot::Sender<Result<InstanceId, NodeError>> },
    Swap { intents: Vec<SignedOrder>, reply: oneshot::Sender<Result<InstanceId, NodeError>> },
    Status { instance: InstanceId, reply: oneshot::Sender<Result<WireStatus, NodeError>> },
    Enclave { request: Request, reply: oneshot::Sender<Result<Response, NodeError>> },
    Channels { reply: oneshot::Sender<Result<Vec<ChannelView>, NodeError>> },
}

/// What a payment pays: a push to an address, or a payee's invoice.
enum Payment {
    Push { chain: ChainId, asset: Asset, payee: Address, amount: Amount, max_fee: Amount },
    Invoice { invoice: Box<teepay_types::SignedInvoice>, amount: Option<Amount>, max_fee: Amount },
}

/// A channel as its node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelView {
    pub chain: ChainId,
    pub id: teepay_types::ChannelId,
    /// Zero for an ether channel, else its ERC-20 token.
    pub token: Address,
    pub peer: Address,
    pub local: Amount,
    pub remote: Amount,
    /// Total deposits (what the closing state must pay out).
    pub capacity: Amount,
    pub locks: usize,
    /// Of `locks`, those of cross-chain swaps (they end by the hub's decision, DESIGN §10).
    pub swap_locks: usize,
    pub open: bool,
}

/// Control of a running node daemon.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    commands: mpsc::UnboundedSender<Command>,
    pub address: Address,
    /// This node's event log, if it keeps one.
    pub events: Option<std::sync::Arc<teepay_events::EventLog>>,
}

impl NodeHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Command,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// Has the enclave sign a payment request and submits it; returns the instance id once
    /// the hub routed and started it.
    pub async fn pay(
        &self,
        chain: ChainId,
        payee: Address,
        amount: Amount,
        max_fee: Amount,
    ) -> Result<InstanceId, NodeError> {
        self.pay_asset(chain, Asset::Native, payee, amount, max_fee).await
    }

    /// Pays `amount` of `asset` (fees in it too) to `payee` over channels of that asset.
    pub async fn pay_asset(
        &self,
        chain: ChainId,
        asset: Asset,
        payee: Address,
        amount: Amount,
        max_fee: Amount,
    ) -> Result<InstanceId, NodeError> {
        let what = Payment::Push { chain, asset, payee, amount, max_fee };
        self.ask(|reply| Command::Pay { what, reply }).await
    }

    /// Pays a payee's invoice (its signature is checked by this node's enclave); `amount`
    /// only for an any-amount invoice.
    pub async fn pay_invoice(
        &self,
        invoice: teepay_types::SignedInvoice,
        amount: Option<Amount>,
        max_fee: Amount,
    ) -> Result<InstanceId, NodeError> {
        let what = Payment::Invoice { invoice: Box::new(invoice), amount, max_fee };
        self.ask(|reply| Command::Pay { what, reply }).await
    }

    /// Submits a set of signed swap intents (this node's and its counterparties').
    pub async fn swap(&self, intents: Vec<SignedOrder>) -> Result<InstanceId, NodeError> {
        self.ask(|reply| Command::Swap { intents, reply }).await
    }

    /// An instance's status as the hub knows it. Bounded in time: a reply lost on the way
    /// (or a hub that stopped answering while its link stays up) gets an error to retry on,
    /// never a caller waiting forever.
    pub async fn status(&self, instance: InstanceId) -> Result<WireStatus, NodeError> {
        tokio::time::timeout(STATUS_DEADLINE, self.ask(|reply| Command::Status { instance, reply }))
            .await
            .map_err(|_| NodeError::HubSilent(STATUS_DEADLINE))?
    }

    /// This node's channels with their current balances.
    pub async fn channels(&self) -> Result<Vec<ChannelView>, NodeError> {
        self.ask(|reply| Command::Channels { reply }).await
    }

    /// Any enclave request (channels, intents, closes…); its sealed state is persisted first.
    pub async fn enclave(&self, request: Request) -> Result<Response, NodeError> {
        self.ask(|reply| Command::Enclave { request, reply }).await
    }
}

struct Node<P: Platform> {
    enclave: NodeEnclave<P>,
    settings: NodeSettings,
    /// The host's copy of the sealed log, for a platform that does not keep it itself.
    host_copy: SealedLogFile,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    /// Which of `hub` (0) and `standby_hubs` (1..) the next connection tries.
    hub_index: usize,
}

enum Pending {
    Start(oneshot::Sender<Result<InstanceId, NodeError>>),
    Status(oneshot::Sender<Result<WireStatus, NodeError>>),
}

impl<P: Platform> Node<P> {
    /// Runs an enclave request and persists its sealed state before returning.
    fn call(&mut self, request: Request) -> Result<Response, NodeError> {
        self.call_sealed(request).map(|(response, _)| response)
    }

    /// [`Node::call`], also saying whether the request changed the enclave's durable state.
    fn call_sealed(&mut self, request: Request) -> Result<(Response, bool), NodeError> {
        let out = blocking(|| self.enclave.handle(now_ms(), request))?;
        let sealed = out.sealed.is_some();
        // A platform that stores the blob with its counter has made it durable already.
        if let Some(blob) = out.sealed
            && !self.enclave.platform().persists_sealed()
        {
            self.host_copy.record(&blob).map_err(|e| NodeError::Storage(e.to_string()))?;
        }
        Ok((out.response, sealed))
    }

    /// Records an event, if this node keeps a log.
    fn event(&self, kind: &str, data: serde_json::Value) {
        if let Some(log) = &self.settings.events {
            log.append(kind, data, now_ms());
        }
    }

    fn channels(&self) -> Vec<ChannelView> {
        self.enclave
            .inspect()
            .channels
            .values()
            .map(|c| ChannelView {
                chain: c.chain,
                id: c.id,
                token: c.token,
                peer: c.peer,
                local: c.balance_local,
                remote: c.balance_peer,
                capacity: c.capacity(),
                locks: c.locks.len(),
                swap_locks: c
                    .locks
                    .iter()
                    .filter(|l| l.kind == teepay_types::InstanceKind::CrossChain)
                    .count(),
                open: c.status == teepay_enclave::ChannelStatus::Open,
            })
            .collect()
    }

    fn fail_pending(&mut self) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Start(r) => drop(r.send(Err(NodeError::Disconnected))),
                Pending::Status(r) => drop(r.send(Err(NodeError::Disconnected))),
            }
        }
    }
}

impl<P: Platform> Node<P> {
    /// Where `addr` is among the configured hub replicas (0: `hub`, then `standby_hubs`).
    fn hub_position(&self, addr: &str) -> Option<usize> {
        let addr: SocketAddr = addr.parse().ok()?;
        std::iter::once(&self.settings.hub).chain(&self.settings.standby_hubs).position(|a| *a == addr)
    }
}

/// Starts the daemon for `enclave` (already created or restored from `state_path`).
pub fn spawn<P: Platform + Send + 'static>(
    enclave: NodeEnclave<P>,
    settings: NodeSettings,
) -> (NodeHandle, tokio::task::JoinHandle<()>) {
    let (commands, rx) = mpsc::unbounded_channel();
    let address = enclave.address();
    let host_copy = SealedLogFile::at(&settings.state_path);
    let node = Node { enclave, settings, host_copy, pending: HashMap::new(), next_request: 1, hub_index: 0 };
    let events = node.settings.events.clone();
    let task = tokio::spawn(run(node, rx));
    (NodeHandle { commands, address, events }, task)
}

async fn run<P: Platform>(mut node: Node<P>, mut commands: mpsc::UnboundedReceiver<Command>) {
    // A follower's hint is followed at once, but not twice in a row: two followers with
    // stale views could otherwise send a node back and forth without pause.
    let mut followed_hint = false;
    loop {
        match session(&mut node, &mut commands).await {
            Ok(()) => return, // every handle dropped
            Err(e) => {
                node.fail_pending();
                if let LinkError::Follower(Some(hint)) = &e
                    && !followed_hint
                    && let Some(i) = node.hub_position(hint)
                {
                    // Only ever one of the configured replicas: a hint cannot send a node
                    // anywhere else.
                    node.hub_index = i;
                    followed_hint = true;
                    continue;
                }
                followed_hint = false;
                // Commands that arrive while disconnected get a clear answer, not a hang.
                let deadline = tokio::time::sleep(node.settings.reconnect_after);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        cmd = commands.recv() => match cmd {
                            None => return,
                            Some(cmd) => offline(&mut node, cmd),
                        },
                    }
                }
            }
        }
    }
}

fn offline<P: Platform>(node: &mut Node<P>, cmd: Command) {
    match cmd {
        Command::Enclave { request, reply } => drop(reply.send(node.call(request))),
        Command::Channels { reply } => drop(reply.send(Ok(node.channels()))),
        Command::Pay { reply, .. } | Command::Swap { reply, .. } => {
            drop(reply.send(Err(NodeError::Disconnected)))
        }
        Command::Status { reply, .. } => drop(reply.send(Err(NodeError::Disconnected))),
    }
}

/// One connection to the hub: handshake, admission, then serve until the link breaks.
async fn session<P: Platform>(
    node: &mut Node<P>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<(), LinkError> {
    let hubs = 1 + node.settings.standby_hubs.len();
    let addr = match node.hub_index % hubs {
        0 => node.settings.hub,
        i => node.settings.standby_hubs[i - 1],
    };
    // Until the session is up, a failure moves on to the next replica (only the leader
    // accepts nodes); once it is up, a broken link is first redialed at the same address.
    node.hub_index = (node.hub_index + 1) % hubs;
    let stream = teepay_link::tcp::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let known_hub = node.enclave.inspect().hub;
    // The quote goes with the handshake: the hub admits only attested enclaves to a link.
    let credentials = teepay_types::encoding::encode(&node.settings.quote);
    let sign = |transcript| {
        let signed = match node.call(Request::SignLink { transcript, role: LinkRole::Initiator }) {
            Ok(Response::Signature(s)) => Ok(s),
            Ok(_) => Err(LinkError::Signer("unexpected enclave response".into())),
            Err(e) => Err(LinkError::Signer(e.to_string())),
        };
        std::future::ready(signed)
    };
    // Before the enclave has attested a hub, any peer may answer; the Welcome quote is then
    // checked by the enclave and must name the same key the link authenticated.
    let accept = |peer, _: &[u8]| known_hub.is_none_or(|h| h == peer);
    let handshake = handshake(r, w, LinkRole::Initiator, os_entropy()?, &credentials, sign, accept);
    let Link { mut reader, mut writer, peer } =
        tokio::time::timeout(HANDSHAKE_DEADLINE, handshake)
            .await
            .map_err(|_| LinkError::Handshake("the hub did not complete the handshake in time"))??;
    writer.send(&NodeMessage::Register(node.settings.quote.clone()).to_bytes()).await?;
    node.hub_index = (node.hub_index + hubs - 1) % hubs;

    // A dedicated reader task: frame reads are not cancel-safe inside `select!`. Bounded:
    // a hub that sends faster than this node handles is read no faster (TCP backpressure).
    let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
    let reader_task = tokio::spawn(async move {
        loop {
            let r = reader.recv().await;
            let stop = r.is_err();
            if frames_tx.send(r).await.is_err() || stop {
                return;
            }
        }
    });
    let result = async {
        // Messages to the hub are queued while everything already received is handled, then
        // sent with one write (`send_all`).
        let mut outbox: Vec<Vec<u8>> = Vec::new();
        loop {
            tokio::select! {
                frame = frames.recv() => on_frame(node, &mut outbox, peer, frame)?,
                cmd = commands.recv() => match cmd {
                    None => return Ok(()),
                    Some(cmd) => on_command(node, &mut outbox, cmd),
                },
            }
            for _ in 0..MAX_BURST {
                if let Ok(frame) = frames.try_recv() {
                    on_frame(node, &mut outbox, peer, Some(frame))?;
                } else if let Ok(cmd) = commands.try_recv() {
                    on_command(node, &mut outbox, cmd);
                } else {
                    break;
                }
            }
            writer.send_all(outbox.iter().map(Vec::as_slice)).await?;
            outbox.clear();
        }
    }
    .await;
    reader_task.abort();
    result
}

/// How long a status query waits for the hub's answer.
const STATUS_DEADLINE: Duration = Duration::from_secs(10);
/// Most received messages handled before what they produced is sent.
const MAX_BURST: usize = 256;
/// Frames read from the hub and not yet handled, at most.
const FRAME_QUEUE: usize = 1024;
/// A hub that has not completed the handshake by then is dropped (and redialed).
const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

fn on_frame<P: Platform>(
    node: &mut Node<P>,
    outbox: &mut Vec<Vec<u8>>,
    peer: Address,
    frame: Option<Result<Vec<u8>, LinkError>>,
) -> Result<(), LinkError> {
    let bytes = frame.ok_or(LinkError::Handshake("reader stopped"))??;
    let msg = HubMessage::from_bytes(&bytes).map_err(|_| LinkError::Handshake("malformed hub message"))?;
    on_hub_message(node, outbox, peer, msg)
}

fn on_hub_message<P: Platform>(
    node: &mut Node<P>,
    outbox: &mut Vec<Vec<u8>>,
    peer: Address,
    msg: HubMessage,
) -> Result<(), LinkError> {
    match msg {
        HubMessage::Welcome(quote) => {
            if node.enclave.inspect().hub.is_none() {
                if quote.report.enclave != peer {
                    return Err(LinkError::Rejected(quote.report.enclave));
                }
                node.call(Request::AttestHub { quote }).map_err(|e| LinkError::Signer(e.to_string()))?;
            }
        }
        HubMessage::Batch(batch) => {
            let parts = node.settings.events.is_some().then(|| events::parts(node.enclave.address(), &batch));
            // A refused batch (forged, misaddressed) changes nothing and is not answered.
            if let Ok(Response::Batch(result)) = node.call(Request::HubBatch(batch)) {
                if let Some(parts) = parts {
                    for (kind, data) in events::batch_events(&parts, &result) {
                        node.event(kind, data);
                    }
                }
                if let Some(ack) = result.ack {
                    outbox.push(NodeMessage::Ack(ack).to_bytes());
                }
                // Receipts of this node's invoices the batch's CONFIRMs paid: on to the payers.
                for receipt in result.receipts {
                    outbox.push(NodeMessage::Receipt(receipt).to_bytes());
                }
            }
        }
        HubMessage::Receipt(receipt) => {
            // Kept only if it is the payee's receipt for a payment of this enclave.
            match node.call_sealed(Request::KeepReceipt(receipt.clone())) {
                Ok((_, true)) => {
                    let (kind, data) = events::receipt_event(&receipt);
                    node.event(kind, data);
                }
                Ok((_, false)) => {} // kept already
                Err(e) => tracing::debug!(error = %e, "receipt from the hub not kept"),
            }
        }
        HubMessage::Accepted { request, instance } => {
            if let Some(Pending::Start(reply)) = node.pending.remove(&request) {
                node.event("payment.started", serde_json::json!({ "instance": instance.to_string() }));
                let _ = reply.send(Ok(instance));
            }
        }
        HubMessage::Refused { request, reason } => match node.pending.remove(&request) {
            Some(Pending::Start(reply)) => drop(reply.send(Err(NodeError::Refused(reason)))),
            Some(Pending::Status(reply)) => drop(reply.send(Err(NodeError::Refused(reason)))),
            None => {}
        },
        HubMessage::Status { request, status, .. } => {
            if let Some(Pending::Status(reply)) = node.pending.remove(&request) {
                let _ = reply.send(Ok(status));
            }
        }
    }
    Ok(())
}

fn on_command<P: Platform>(node: &mut Node<P>, outbox: &mut Vec<Vec<u8>>, cmd: Command) {
    let request = node.next_request;
    node.next_request += 1;
    match cmd {
        Command::Enclave { request, reply } => {
            let _ = reply.send(node.call(request));
        }
        Command::Channels { reply } => {
            let _ = reply.send(Ok(node.channels()));
        }
        Command::Pay { what, reply } => {
            let expires_at = now_ms() + node.settings.order_ttl.as_millis() as u64;
            let build = match what {
                Payment::Push { chain, asset, payee, amount, max_fee } => {
                    Request::CreatePayment { chain, asset, payee, amount, max_fee, expires_at }
                }
                Payment::Invoice { invoice, amount, max_fee } => {
                    Request::PayInvoice { invoice, amount, max_fee, expires_at }
                }
            };
            match node.call(build) {
                Ok(Response::Order(order)) => {
                    node.pending.insert(request, Pending::Start(reply));
                    outbox.push(NodeMessage::Pay { request, order }.to_bytes());
                }
                Ok(_) => drop(reply.send(Err(NodeError::Refused("unexpected enclave response".into())))),
                Err(e) => drop(reply.send(Err(e))),
            }
        }
        Command::Swap { intents, reply } => {
            node.pending.insert(request, Pending::Start(reply));
            outbox.push(NodeMessage::Swap { request, intents }.to_bytes());
        }
        Command::Status { instance, reply } => {
            node.pending.insert(request, Pending::Status(reply));
            outbox.push(NodeMessage::Status { request, instance }.to_bytes());
        }
    }
}
