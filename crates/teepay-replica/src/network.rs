//! RPCs between replicas: one TCP connection per peer, each call a length-prefixed JSON
//! frame answered by one frame. The length is checked against [`MAX_FRAME`] before anything
//! is allocated; a malformed frame ends the connection.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest frame accepted: an append of up to openraft's batch of entries, or a
/// snapshot chunk (1 MiB, [`crate::config`]), with room for JSON's hex encoding.
pub const MAX_FRAME: usize = 16 << 20;

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize)]
enum Call {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<ReplicaId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A joining replica's quote, asking for what it needs to join ([`Provisioner`]).
    Provision(#[serde(with = "hex::serde")] Vec<u8>),
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Append(Result<AppendEntriesResponse<ReplicaId>, RaftError<ReplicaId>>),
    Vote(Result<VoteResponse<ReplicaId>, RaftError<ReplicaId>>),
    Snapshot(Result<InstallSnapshotResponse<ReplicaId>, RaftError<ReplicaId, InstallSnapshotError>>),
    Provision(Result<Hex, String>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Hex(#[serde(with = "hex::serde")] Vec<u8>);

/// Answers a joining replica's request (its quote) with what it needs to join, or why not.
/// The application decides (the hub: its enclave checks the quote and encrypts the identity
/// for that enclave only); this crate only carries the bytes.
pub type Provisioner = std::sync::Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

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
    let io = |e| ReplicaError::Io { path: "replica link".into(), source: e };
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ReplicaError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(io)?;
    serde_json::from_slice(&buf).map_err(|e| ReplicaError::Malformed(e.to_string()))
}

/// Serves this replica's Raft RPCs on `listener` until the future is dropped, which also
/// ends every connection it accepted (they belong to this replica's Raft).
pub async fn serve(listener: TcpListener, raft: Raft) {
    serve_with(listener, raft, None).await
}

/// [`serve`], also answering provisioning requests with `provisioner`.
pub async fn serve_with(listener: TcpListener, raft: Raft, provisioner: Option<Provisioner>) {
    let mut connections = tokio::task::JoinSet::new();
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
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(stream, raft.clone(), provisioner.clone()));
    }
}

async fn serve_connection(mut stream: TcpStream, raft: Raft, provisioner: Option<Provisioner>) {
    loop {
        let call: Call = match read_frame(&mut stream).await {
            Ok(c) => c,
            Err(_) => return, // closed, or malformed: either way this connection is done
        };
        let answer = match call {
            Call::Append(rpc) => Answer::Append(raft.append_entries(rpc).await),
            Call::Vote(rpc) => Answer::Vote(raft.vote(rpc).await),
            Call::Snapshot(rpc) => Answer::Snapshot(raft.install_snapshot(rpc).await),
            Call::Provision(quote) => Answer::Provision(match &provisioner {
                Some(p) => p(&quote).map(Hex),
                None => Err("this replica does not provision".into()),
            }),
        };
        if write_frame(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

/// Opens connections to peers: at the address this replica's own configuration gives for
/// them, else at the one in the group's membership (`BasicNode`, as the bootstrap replica
/// configured it).
#[derive(Debug, Clone, Default)]
pub struct TcpNetwork {
    addrs: std::collections::BTreeMap<ReplicaId, String>,
}

impl TcpNetwork {
    pub fn with_addresses(addrs: std::collections::BTreeMap<ReplicaId, String>) -> Self {
        Self { addrs }
    }
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: ReplicaId, node: &BasicNode) -> Self::Network {
        let addr = self.addrs.get(&target).cloned().unwrap_or_else(|| node.addr.clone());
        PeerConnection { target, addr, stream: None }
    }
}

/// The connection to one peer, re-established on the next call after any failure.
#[derive(Debug)]
pub struct PeerConnection {
    target: ReplicaId,
    addr: String,
    stream: Option<TcpStream>,
}

type Failure<E> = RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, E>>;

impl PeerConnection {
    async fn call<E: std::error::Error>(&mut self, call: &Call, ttl: Duration) -> Result<Answer, Failure<E>> {
        if self.stream.is_none() {
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await;
            let stream = match connect {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            };
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let exchange = async {
            write_frame(stream, call).await?;
            read_frame::<Answer>(stream).await
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.stream = None;
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Err(e) => {
                // A late answer would be read as the next call's: the connection goes.
                self.stream = None;
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
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    write_frame(&mut stream, &Call::Provision(quote.to_vec())).await?;
    match read_frame::<Answer>(&mut stream).await? {
        Answer::Provision(r) => Ok(r.map(|h| h.0)),
        _ => Err(ReplicaError::Malformed("answer of another kind".into())),
    }
}
