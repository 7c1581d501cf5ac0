//! RPCs between replicas: one connection per peer, each call a JSON frame answered by one
//! frame. A connection opens with one byte saying what it is for:
//! - `R`, Raft: the teepay-link handshake, in which each side's *enclave* signs the transcript
//!   with the hub identity ([`LinkSigner`]), so only provisioned replicas talk Raft with each
//!   other, over ChaCha20-Poly1305 with sequence-number nonces (no stranger can inject a vote
//!   or an entry, or read one);
//! - `P`, provisioning: one plain request from a replica that has no identity yet (its quote),
//!   answered with what only that enclave can open.
//!
//! The Raft link also carries the hub's *commit receipts* (DESIGN §10): the leader asks a
//! follower for its enclave's receipt of the entries it has applied ([`ReceiptSource`],
//! [`ReceiptClient`]); the bytes are opaque here and proven by the enclaves.
//!
//! Lengths are checked against a cap before anything is allocated; a malformed frame ends the
//! connection.

use crate::{Raft, ReplicaError, ReplicaId, TypeConfig};
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::time::Duration;
use teepay_types::{Address, Hash32, LinkRole, Signature};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest frame accepted: an append of up to openraft's batch of entries, or a
/// snapshot chunk (1 MiB, [`crate::config`]), with room for JSON's hex encoding.
pub const MAX_FRAME: usize = 16 << 20;

/// How long a connection attempt to a peer, handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);

/// What anyone may make a replica hold before it knows who they are: connections at once
/// (beyond, new ones are closed at accept), the size of a provisioning request (a quote),
/// and how long one may take to arrive and be answered.
pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_PROVISION_REQUEST: usize = 64 << 10;
const PROVISION_DEADLINE: Duration = Duration::from_secs(3);

const MODE_RAFT: u8 = b'R';
const MODE_PROVISION: u8 = b'P';

/// A replica's enclave as the replica links need it: it signs link transcripts with the hub
/// identity, which every provisioned replica holds and nobody else does.
pub trait LinkSigner: Send + Sync + 'static {
    fn sign(&self, transcript: Hash32, role: LinkRole) -> Signature;
    /// The hub identity: the only peer a replica link accepts.
    fn identity(&self) -> Address;
}

type Signer = std::sync::Arc<dyn LinkSigner>;
type RaftLink = teepay_link::Link<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;

/// The handshake of a replica link on `stream` (after its mode byte).
async fn authenticate(stream: TcpStream, role: LinkRole, signer: &Signer) -> Result<RaftLink, ReplicaError> {
    let (r, w) = stream.into_split();
    let entropy =
        teepay_link::os_entropy().map_err(|e| ReplicaError::Io { path: "OS entropy".into(), source: e })?;
    let identity = signer.identity();
    let sign = |transcript| std::future::ready(Ok(signer.sign(transcript, role)));
    let handshake = teepay_link::handshake(r, w, role, entropy, &[], sign, |peer, _| peer == identity);
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(Ok(link)) => Ok(link),
        Ok(Err(e)) => Err(ReplicaError::Malformed(format!("replica link handshake: {e}"))),
        Err(_) => Err(ReplicaError::Malformed("replica link handshake timed out".into())),
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Call {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<ReplicaId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A joining replica's quote, asking for what it needs to join ([`Provisioner`]).
    Provision(#[serde(with = "hex::serde")] Vec<u8>),
    /// The follower's receipt once it has applied the group's entries up to this sequence.
    Receipt(u64),
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Append(Result<AppendEntriesResponse<ReplicaId>, RaftError<ReplicaId>>),
    Vote(Result<VoteResponse<ReplicaId>, RaftError<ReplicaId>>),
    Snapshot(Result<InstallSnapshotResponse<ReplicaId>, RaftError<ReplicaId, InstallSnapshotError>>),
    Provision(Result<Hex, String>),
    Receipt(Result<Hex, String>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Hex(#[serde(with = "hex::serde")] Vec<u8>);

/// Answers a joining replica's request (its quote) with what it needs to join, or why not.
/// The application decides (the hub: its enclave checks the quote and encrypts the identity
/// for that enclave only); this crate only carries the bytes.
pub type Provisioner = std::sync::Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Answers the leader's request for a receipt of the entries up to a sequence number: the
/// application's (the hub: its shadow enclave signs one once it has applied that far, or
/// says why not within a short wait). Only asked over an authenticated Raft link.
pub type ReceiptSource = std::sync::Arc<
    dyn Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send>>
        + Send
        + Sync,
>;

/// What a replica serves besides Raft.
#[derive(Clone, Default)]
pub struct Services {
    pub provisioner: Option<Provisioner>,
    pub receipts: Option<ReceiptSource>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("provisioner", &self.provisioner.is_some())
            .field("receipts", &self.receipts.is_some())
            .finish()
    }
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> Result<(), ReplicaError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ReplicaError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(ReplicaError::FrameTooLarge(bytes.len()));
    }
    let io = |e| ReplicaError::Io { path: "replica link".into(), source: e };
    stream.write_all(&(bytes.len() as u32).to_be_bytes()).await.map_err(io)?;
    stream.write_all(&bytes).await.map_err(io)
}

async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> Result<T, ReplicaError> {
    read_frame_capped(stream, MAX_FRAME).await
}

/// A frame of at most `max` bytes: the announced length is checked before allocating.
async fn read_frame_capped<T: DeserializeOwned>(
    stream: &mut TcpStream,
    max: usize,
) -> Result<T, ReplicaError> {
    let io = |e| ReplicaError::Io { path: "replica link".into(), source: e };
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ReplicaError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(io)?;
    serde_json::from_slice(&buf).map_err(|e| ReplicaError::Malformed(e.to_string()))
}

/// Serves this replica's Raft RPCs on `listener` until the future is dropped, which also
/// ends every connection it accepted (they belong to this replica's Raft).
pub async fn serve(listener: TcpListener, raft: Raft, signer: Signer) {
    serve_with(listener, raft, signer, Services::default()).await
}

/// [`serve`], also answering provisioning and receipt requests with `services`.
pub async fn serve_with(listener: TcpListener, raft: Raft, signer: Signer, services: Services) {
    let mut connections = tokio::task::JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Reap finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "replica listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("replica connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (raft, signer, services) = (raft.clone(), signer.clone(), services.clone());
        connections.spawn(async move {
            serve_connection(stream, raft, signer, services).await;
            drop(slot);
        });
    }
}

async fn serve_connection(mut stream: TcpStream, raft: Raft, signer: Signer, services: Services) {
    let mut mode = [0u8; 1];
    let read_mode = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_exact(&mut mode)).await;
    if !matches!(read_mode, Ok(Ok(_))) {
        return;
    }
    match mode[0] {
        MODE_PROVISION => {
            // Plain and from anyone: small, and over within a deadline.
            let exchange = async {
                let Ok(Call::Provision(quote)) =
                    read_frame_capped::<Call>(&mut stream, MAX_PROVISION_REQUEST).await
                else {
                    return;
                };
                let answer = Answer::Provision(match &services.provisioner {
                    Some(p) => p(&quote).map(Hex),
                    None => Err("this replica does not provision".into()),
                });
                let _ = write_frame(&mut stream, &answer).await;
            };
            let _ = tokio::time::timeout(PROVISION_DEADLINE, exchange).await;
        }
        MODE_RAFT => {
            let Ok(mut link) = authenticate(stream, LinkRole::Responder, &signer).await else { return };
            loop {
                let Ok(bytes) = link.reader.recv().await else { return };
                let Ok(call) = serde_json::from_slice::<Call>(&bytes) else { return };
                let answer = match call {
                    Call::Append(rpc) => Answer::Append(raft.append_entries(rpc).await),
                    Call::Vote(rpc) => Answer::Vote(raft.vote(rpc).await),
                    Call::Snapshot(rpc) => Answer::Snapshot(raft.install_snapshot(rpc).await),
                    Call::Receipt(seq) => Answer::Receipt(match &services.receipts {
                        Some(source) => source(seq).await.map(Hex),
                        None => Err("this replica gives no receipts".into()),
                    }),
                    Call::Provision(_) => return, // provisioning has a mode of its own
                };
                let Ok(bytes) = serde_json::to_vec(&answer) else { return };
                if link.writer.send(&bytes).await.is_err() {
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Opens connections to peers: at the address this replica's own configuration gives for
/// them, else at the one in the group's membership (`BasicNode`, as the bootstrap replica
/// configured it).
#[derive(Clone)]
pub struct TcpNetwork {
    addrs: std::collections::BTreeMap<ReplicaId, String>,
    signer: Signer,
}

impl std::fmt::Debug for TcpNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpNetwork").field("addrs", &self.addrs).finish_non_exhaustive()
    }
}

impl TcpNetwork {
    /// Peers at the membership's addresses, links authenticated by `signer`'s enclave.
    pub fn new(signer: Signer) -> Self {
        Self { addrs: Default::default(), signer }
    }

    /// Peers at these addresses where given (this replica's own configuration).
    pub fn with_addresses(mut self, addrs: std::collections::BTreeMap<ReplicaId, String>) -> Self {
        self.addrs = addrs;
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: ReplicaId, node: &BasicNode) -> Self::Network {
        let addr = self.addrs.get(&target).cloned().unwrap_or_else(|| node.addr.clone());
        PeerConnection { target, addr, signer: self.signer.clone(), link: None }
    }
}

/// The connection to one peer, re-established (and re-authenticated) on the next call after
/// any failure.
pub struct PeerConnection {
    target: ReplicaId,
    addr: String,
    signer: Signer,
    link: Option<RaftLink>,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection").field("target", &self.target).field("addr", &self.addr).finish()
    }
}

type Failure<E> = RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, E>>;

impl PeerConnection {
    async fn call<E: std::error::Error>(&mut self, call: &Call, ttl: Duration) -> Result<Answer, Failure<E>> {
        if self.link.is_none() {
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, teepay_link::tcp::connect(&self.addr)).await;
            let mut stream = match connect {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            };
            let _ = stream.set_nodelay(true);
            if let Err(e) = stream.write_all(&[MODE_RAFT]).await {
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            match authenticate(stream, LinkRole::Initiator, &self.signer).await {
                Ok(link) => self.link = Some(link),
                Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            }
        }
        let link = self.link.as_mut().expect("connected above");
        let exchange = async {
            let bytes = serde_json::to_vec(call).map_err(|e| ReplicaError::Malformed(e.to_string()))?;
            link.writer.send(&bytes).await.map_err(|e| ReplicaError::Malformed(e.to_string()))?;
            let answer = link.reader.recv().await.map_err(|e| ReplicaError::Malformed(e.to_string()))?;
            serde_json::from_slice::<Answer>(&answer).map_err(|e| ReplicaError::Malformed(e.to_string()))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.link = None;
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Err(e) => {
                // A late answer would be read as the next call's: the connection goes.
                self.link = None;
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }

    fn remote<T, E: std::error::Error>(
        &self,
        r: Result<T, RaftError<ReplicaId, E>>,
    ) -> Result<T, Failure<E>> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn mismatch<E: std::error::Error>() -> Failure<E> {
    RPCError::Network(NetworkError::new(&ReplicaError::Malformed("answer of another kind".into())))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, Failure<openraft::error::Infallible>> {
        match self.call(&Call::Append(rpc), option.hard_ttl()).await? {
            Answer::Append(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<ReplicaId>, Failure<InstallSnapshotError>> {
        match self.call(&Call::Snapshot(rpc), option.hard_ttl()).await? {
            Answer::Snapshot(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, Failure<openraft::error::Infallible>> {
        match self.call(&Call::Vote(rpc), option.hard_ttl()).await? {
            Answer::Vote(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }
}

/// Asks the replica at `addr` to provision a joining replica with `quote`: its answer, or
/// why it refused. Connection and framing errors are [`ReplicaError`]s (try another peer).
pub async fn request_provision(addr: &str, quote: &[u8]) -> Result<Result<Vec<u8>, String>, ReplicaError> {
    let io = |e| ReplicaError::Io { path: format!("replica {addr}"), source: e };
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, teepay_link::tcp::connect(addr))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    stream.write_all(&[MODE_PROVISION]).await.map_err(io)?;
    write_frame(&mut stream, &Call::Provision(quote.to_vec())).await?;
    match read_frame::<Answer>(&mut stream).await? {
        Answer::Provision(r) => Ok(r.map(|h| h.0)),
        _ => Err(ReplicaError::Malformed("answer of another kind".into())),
    }
}

/// The leader's side of commit receipts: one authenticated connection per follower, kept
/// between calls and re-established after a failure.
pub struct ReceiptClient {
    peers: Vec<std::sync::Arc<tokio::sync::Mutex<PeerConnection>>>,
}

impl std::fmt::Debug for ReceiptClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptClient").field("peers", &self.peers.len()).finish()
    }
}

impl ReceiptClient {
    /// Asks the replicas at `peers` (every one but this), links authenticated by `signer`.
    pub fn new(peers: impl IntoIterator<Item = (ReplicaId, String)>, signer: Signer) -> Self {
        let peers = peers
            .into_iter()
            .map(|(target, addr)| {
                let peer = PeerConnection { target, addr, signer: signer.clone(), link: None };
                std::sync::Arc::new(tokio::sync::Mutex::new(peer))
            })
            .collect();
        Self { peers }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Asks every peer at once for its receipt of the entries up to `seq`, each within
    /// `ttl`; resolves with the receipts as soon as `enough` arrived, or once every peer
    /// answered or failed. A peer's refusal or silence only means fewer receipts. The asks
    /// still running then finish on their own (within `ttl`): a call cut short would leave
    /// its answer on the link, to be read as the next call's.
    pub async fn gather(&self, seq: u64, enough: usize, ttl: Duration) -> Vec<Vec<u8>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.peers.len().max(1));
        for peer in &self.peers {
            let (peer, tx) = (peer.clone(), tx.clone());
            tokio::spawn(async move {
                let mut peer = peer.lock().await;
                let answer = match peer.call::<openraft::error::Infallible>(&Call::Receipt(seq), ttl).await {
                    Ok(Answer::Receipt(Ok(bytes))) => Some(bytes.0),
                    Ok(Answer::Receipt(Err(why))) => {
                        tracing::debug!(peer = peer.target, %why, "no receipt");
                        None
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(peer = peer.target, error = %e, "receipt request failed");
                        None
                    }
                };
                let _ = tx.send(answer).await;
            });
        }
        drop(tx);
        let mut receipts = Vec::new();
        while let Some(answer) = rx.recv().await {
            receipts.extend(answer);
            if receipts.len() >= enough {
                break;
            }
        }
        receipts
    }
}
