//! A group of three replicas on loopback TCP, each with its log in its own directory: commits
//! need a majority, every replica replays the same entries in the same order, a killed
//! leader is replaced and later catches up from its own files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use teepay_replica::log_store::FileLogStore;
use teepay_replica::network::{LinkSigner, TcpNetwork, serve};
use teepay_replica::openraft::BasicNode;
use teepay_replica::state_machine::Replayed;
use teepay_replica::{Apply, Delta, Raft, ReplicaId};
use teepay_types::{Address, Hash32, LinkRole, Signature, SigningKey, link_digest};

/// Signs replica links with a key: the hub identity every replica of a group holds.
struct KeySigner(SigningKey);

impl LinkSigner for KeySigner {
    fn sign(&self, transcript: Hash32, role: LinkRole) -> Signature {
        self.0.sign_digest(&link_digest(&transcript, role))
    }
    fn identity(&self) -> Address {
        self.0.address()
    }
}

fn group_key() -> std::sync::Arc<KeySigner> {
    std::sync::Arc::new(KeySigner(SigningKey::from_entropy([0x51; 32]).unwrap()))
}

/// Records what it is given: the application side of a replica in these tests.
#[derive(Debug, Default)]
struct Recorder(Vec<(u64, Vec<u8>)>);

impl Apply for Recorder {
    fn apply(&mut self, index: u64, delta: &[u8]) -> Result<(), String> {
        if self.0.last().is_some_and(|(last, _)| *last >= index) {
            return Err(format!("entry {index} applied out of order"));
        }
        self.0.push((index, delta.to_vec()));
        Ok(())
    }
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct Replica {
    raft: Raft,
    sm: Replayed<Recorder>,
    server: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(id: ReplicaId, dir: &Path, listener: tokio::net::TcpListener) -> Replica {
        let log = FileLogStore::open(dir).unwrap();
        let sm = Replayed::open(dir, Recorder::default()).unwrap();
        let config = std::sync::Arc::new(teepay_replica::config().validate().unwrap());
        let raft = Raft::new(id, config, TcpNetwork::new(group_key()), log, sm.clone()).await.unwrap();
        let server = tokio::spawn(serve(listener, raft.clone(), group_key()));
        Replica { raft, sm, server }
    }

    async fn stop(self) {
        self.server.abort();
        self.raft.shutdown().await.unwrap();
    }

    /// The payloads applied here, in order (blank and membership entries carry none).
    fn applied(&self) -> Vec<Vec<u8>> {
        self.sm.with_app(|r| r.0.iter().map(|(_, d)| d.clone()).collect())
    }
}

struct Group {
    dirs: Vec<PathBuf>,
    addrs: Vec<String>,
    replicas: BTreeMap<ReplicaId, Replica>,
}

impl Group {
    async fn start(tag: &str) -> Group {
        let mut group = Group { dirs: Vec::new(), addrs: Vec::new(), replicas: BTreeMap::new() };
        let mut listeners = Vec::new();
        for i in 0..3 {
            let dir = std::env::temp_dir().join(format!("teepay-replica-{tag}-{}-{i}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            group.addrs.push(listener.local_addr().unwrap().to_string());
            group.dirs.push(dir);
            listeners.push(listener);
        }
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as ReplicaId + 1;
            group.replicas.insert(id, Replica::start(id, &group.dirs[i], listener).await);
        }
        let members: BTreeMap<ReplicaId, BasicNode> =
            (0..3).map(|i| (i as ReplicaId + 1, BasicNode::new(&group.addrs[i]))).collect();
        group.replicas[&1].raft.initialize(members).await.unwrap();
        group
    }

    /// Restarts replica `id` from its directory, on its old address.
    async fn restart(&mut self, id: ReplicaId) {
        let i = (id - 1) as usize;
        let listener = tokio::net::TcpListener::bind(&self.addrs[i]).await.unwrap();
        self.replicas.insert(id, Replica::start(id, &self.dirs[i], listener).await);
    }

    /// Waits until the running replicas agree on a leader; returns it and how long it took.
    async fn leader(&self) -> (ReplicaId, Duration) {
        let start = Instant::now();
        loop {
            let views: Vec<Option<ReplicaId>> =
                self.replicas.values().map(|r| r.raft.metrics().borrow().current_leader).collect();
            if let Some(Some(l)) = views.first()
                && self.replicas.contains_key(l)
                && views.iter().all(|v| *v == Some(*l))
            {
                return (*l, start.elapsed());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no leader agreed on: {views:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn write(&self, leader: ReplicaId, payload: &[u8]) -> u64 {
        self.replicas[&leader].raft.client_write(Delta(payload.to_vec())).await.unwrap().data.0
    }

    /// Waits until every running replica has applied `want` payloads; returns them.
    async fn converged(&self, want: usize) -> Vec<Vec<u8>> {
        let start = Instant::now();
        loop {
            let all: Vec<Vec<Vec<u8>>> = self.replicas.values().map(Replica::applied).collect();
            if all.iter().all(|a| a.len() >= want) {
                for a in &all[1..] {
                    assert_eq!(a, &all[0], "replicas replayed different logs");
                }
                return all[0].clone();
            }
            let lens: Vec<usize> = all.iter().map(Vec::len).collect();
            assert!(start.elapsed() < Duration::from_secs(10), "not converged: {lens:?} of {want}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        for (_, r) in std::mem::take(&mut self.replicas) {
            r.stop().await;
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("delta {i}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_replays_the_committed_entries_in_order() {
    let group = Group::start("order").await;
    let (leader, _) = group.leader().await;
    let mut last = 0;
    for p in payloads(0..50) {
        let index = group.write(leader, &p).await;
        assert!(index > last, "indexes grow");
        last = index;
    }
    assert_eq!(group.converged(50).await, payloads(0..50));
    group.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_catches_up_from_its_own_files() {
    let mut group = Group::start("failover").await;
    let (old, _) = group.leader().await;
    for p in payloads(0..20) {
        group.write(old, &p).await;
    }
    group.converged(20).await;
    group.replicas.remove(&old).unwrap().stop().await;
    let (new, took) = group.leader().await;
    assert_ne!(new, old);
    eprintln!("new leader {new} agreed on {took:?} after leader {old} stopped");
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    for p in payloads(20..40) {
        group.write(new, &p).await;
    }
    group.converged(40).await;
    group.restart(old).await;
    assert_eq!(group.converged(40).await, payloads(0..40), "the old leader replayed its log and caught up");
    assert_ne!(group.leader().await.0, old, "it rejoined as a follower");
    group.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_commits_without_a_majority_and_the_write_completes_once_one_returns() {
    let mut group = Group::start("quorum").await;
    let (leader, _) = group.leader().await;
    group.write(leader, b"before").await;
    group.converged(1).await;
    let followers: Vec<ReplicaId> = group.replicas.keys().copied().filter(|id| *id != leader).collect();
    for f in &followers {
        group.replicas.remove(f).unwrap().stop().await;
    }
    let raft = group.replicas[&leader].raft.clone();
    let pending = tokio::spawn(async move { raft.client_write(Delta(b"during".to_vec())).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pending.is_finished(), "a write committed on a minority");
    assert_eq!(
        group.replicas[&leader].applied(),
        vec![b"before".to_vec()],
        "nothing applied without a majority"
    );
    group.restart(followers[0]).await;
    let committed = tokio::time::timeout(Duration::from_secs(10), pending).await;
    match committed {
        // The leader kept leading and committed it once a majority was back...
        Ok(Ok(Ok(_))) => {
            assert_eq!(group.converged(2).await, vec![b"before".to_vec(), b"during".to_vec()]);
        }
        // ...or, having stepped down, it was told so and the entry was never applied by
        // anyone: a client retries, nothing is decided twice.
        Ok(Ok(Err(e))) => {
            eprintln!("the write was refused after the leader stepped down: {e}");
            let applied = group.converged(1).await;
            assert!(applied.len() <= 2);
        }
        other => {
            for (id, r) in &group.replicas {
                let m = r.raft.metrics().borrow().clone();
                eprintln!(
                    "{id}: state {:?} term {} leader {:?} last_log {:?} applied {:?}",
                    m.state, m.current_term, m.current_leader, m.last_log_index, m.last_applied
                );
            }
            panic!("the pending write neither completed nor failed: {other:?}")
        }
    }
    group.stop().await;
}

/// A peer without the group's identity key cannot open a Raft link: its handshake is refused,
/// so it can neither vote nor append (nor read an entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_talk_raft_with_a_replica() {
    use teepay_replica::openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use teepay_replica::openraft::raft::VoteRequest;
    use teepay_replica::openraft::{LeaderId, Vote};
    let group = Group::start("stranger").await;
    let (leader, _) = group.leader().await;
    let addr = group.addrs[(leader - 1) as usize].clone();
    let stranger = std::sync::Arc::new(KeySigner(SigningKey::from_entropy([0x66; 32]).unwrap()));
    let mut net = TcpNetwork::new(stranger);
    let mut conn = net.new_client(leader, &BasicNode::new(&addr)).await;
    let vote =
        VoteRequest { vote: Vote { leader_id: LeaderId::new(99, 9), committed: false }, last_log_id: None };
    let refused = conn.vote(vote, RPCOption::new(Duration::from_secs(2))).await;
    assert!(refused.is_err(), "a stranger's vote request was answered: {refused:?}");
    let term = group.replicas[&leader].raft.metrics().borrow().current_term;
    assert!(term < 99, "the stranger's term reached the replica");
    group.stop().await;
}

/// A stranger cannot make a replica hold much before it knows who they are: a provisioning
/// request announcing a huge frame is cut before anything is allocated, a stalled one is cut
/// at its deadline, connections beyond the cap are closed at once, and the group goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_pin_a_replicas_memory_or_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let group = Group::start("exhaust").await;
    let (leader, _) = group.leader().await;
    let addr = group.addrs[(leader - 1) as usize].clone();
    // Whether the replica has closed `s` (within `wait`).
    async fn closed(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(wait, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }
    let mut huge = tokio::net::TcpStream::connect(&addr).await.unwrap();
    huge.write_all(b"P").await.unwrap();
    huge.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
    assert!(closed(&mut huge, Duration::from_secs(1)).await, "a 16 MiB provisioning frame was accepted");
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(b"P\0\0").await.unwrap(); // half a length, then nothing
    let started = std::time::Instant::now();
    assert!(closed(&mut stalled, Duration::from_secs(6)).await, "a stalled request was held");
    assert!(started.elapsed() < Duration::from_secs(5));

    let extra = 64;
    let mut idle = Vec::new();
    for _ in 0..teepay_replica::network::MAX_CONNECTIONS + extra {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut refused = 0;
    for s in idle.iter_mut().rev().take(extra) {
        if closed(s, Duration::from_millis(200)).await {
            refused += 1;
        }
    }
    assert!(refused >= extra / 2, "only {refused} of the {extra} connections beyond the cap were closed");
    drop(idle);
    group.replicas[&leader].raft.client_write(Delta(vec![7])).await.expect("the group goes on");
    group.stop().await;
}
