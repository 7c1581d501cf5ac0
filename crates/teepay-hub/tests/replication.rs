//! Three hub replicas in one process, each with its own state directory and a Raft group on
//! loopback TCP: the leader's flushes are committed and reach every replica's shadow (the
//! committed state); a new leader forks its shadow and goes on; a killed replica restarts
//! from its own files and catches up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use teepay_coordinator::{Candidate, Coordinator, HubConfig};
use teepay_hub::replication::HubApply;
use teepay_link::host::FilePlatform;
use teepay_replica::log_store::FileLogStore;
use teepay_replica::network::{TcpNetwork, serve};
use teepay_replica::openraft::BasicNode;
use teepay_replica::state_machine::Replayed;
use teepay_replica::{Delta, Raft, ReplicaId};
use teepay_types::{ChainId, Report, RoundAuth, SigningKey};

const HUB_MEASUREMENT: [u8; 32] = [0x22; 32];
const NODE_MEASUREMENT: [u8; 32] = [0x11; 32];

fn authority() -> SigningKey {
    SigningKey::from_entropy([0xa7; 32]).unwrap()
}

struct Replica {
    raft: Raft,
    sm: Replayed<HubApply>,
    server: tokio::task::JoinHandle<()>,
}

async fn start(
    id: ReplicaId,
    dir: &Path,
    shadow: Coordinator<FilePlatform>,
    listener: tokio::net::TcpListener,
) -> Replica {
    let log = FileLogStore::open(&dir.join("raft")).unwrap();
    let sm = Replayed::open(&dir.join("raft"), HubApply::new(shadow)).unwrap();
    let config = std::sync::Arc::new(teepay_replica::config().validate().unwrap());
    let raft = Raft::new(id, config, TcpNetwork::default(), log, sm.clone()).await.unwrap();
    let server = tokio::spawn(serve(listener, raft.clone()));
    Replica { raft, sm, server }
}

/// A replica's shadow as its files hold it.
fn restore_shadow(dir: &Path) -> Coordinator<FilePlatform> {
    let platform = FilePlatform::open(&dir.join("shadow")).unwrap();
    let log = platform.restorable(&dir.join("unused")).unwrap().expect("a sealed shadow");
    Coordinator::restore(platform, &log).unwrap()
}

struct Group {
    dirs: Vec<PathBuf>,
    addrs: Vec<String>,
    replicas: BTreeMap<ReplicaId, Replica>,
}

impl Group {
    async fn start(tag: &str) -> Group {
        let dirs: Vec<PathBuf> = (1..=3)
            .map(|i| std::env::temp_dir().join(format!("teepay-hub-group-{tag}-{}-{i}", std::process::id())))
            .collect();
        for d in &dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        // The founder creates the hub identity; the others are provisioned by it.
        let config = HubConfig {
            measurement: HUB_MEASUREMENT,
            attestation_authority: authority().address(),
            allowed_node_measurements: vec![NODE_MEASUREMENT],
            prepare_timeout: 1_000,
            retransmit_after: 200,
            round_auth: RoundAuth::SessionMacs,
            peer_acks: false,
        };
        let mut founder =
            Coordinator::create(FilePlatform::open(&dirs[0].join("shadow")).unwrap(), config, [9; 32])
                .unwrap();
        founder.flush();
        let snapshot = founder.group_snapshot().unwrap();
        let mut shadows = vec![founder];
        for (i, dir) in dirs.iter().enumerate().skip(1) {
            let candidate = Candidate::new(
                FilePlatform::open(&dir.join("shadow")).unwrap(),
                HUB_MEASUREMENT,
                [i as u8; 32],
            )
            .unwrap();
            let quote = candidate.report(ChainId(0)).attest(&authority());
            let gift = shadows[0].provision(&quote).unwrap();
            shadows.push(candidate.join(&gift, &snapshot).unwrap().0);
        }
        let mut group = Group { dirs, addrs: Vec::new(), replicas: BTreeMap::new() };
        let mut listeners = Vec::new();
        for _ in 0..3 {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            group.addrs.push(l.local_addr().unwrap().to_string());
            listeners.push(l);
        }
        for (i, (shadow, listener)) in shadows.into_iter().zip(listeners).enumerate() {
            let id = i as ReplicaId + 1;
            group.replicas.insert(id, start(id, &group.dirs[i], shadow, listener).await);
        }
        let members: BTreeMap<ReplicaId, BasicNode> =
            (0..3).map(|i| (i as ReplicaId + 1, BasicNode::new(&group.addrs[i]))).collect();
        group.replicas[&1].raft.initialize(members).await.unwrap();
        group
    }

    async fn leader(&self) -> ReplicaId {
        let start = Instant::now();
        loop {
            let views: Vec<Option<ReplicaId>> =
                self.replicas.values().map(|r| r.raft.metrics().borrow().current_leader).collect();
            if let Some(Some(l)) = views.first()
                && self.replicas.contains_key(l)
                && views.iter().all(|v| *v == Some(*l))
            {
                return *l;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no leader agreed on: {views:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The leader takes office: its live coordinator is a fork of its shadow.
    fn fork(&self, id: ReplicaId) -> Coordinator<FilePlatform> {
        let platform = FilePlatform::open(&self.dirs[(id - 1) as usize].join("leader")).unwrap();
        self.replicas[&id].sm.with_app(|a| a.shadow().fork(platform)).unwrap().0
    }

    /// Waits until every running replica's shadow is `live`'s state.
    async fn converged(&self, live: &Coordinator<FilePlatform>) {
        let start = Instant::now();
        loop {
            let same =
                self.replicas.values().all(|r| r.sm.with_app(|a| a.shadow().inspect() == live.inspect()));
            if same {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "shadows did not converge on the leader's state"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(&mut self, id: ReplicaId) {
        let r = self.replicas.remove(&id).unwrap();
        r.server.abort();
        r.raft.shutdown().await.unwrap();
    }
}

/// Admits a node to the live coordinator and flushes; the entry is committed before the
/// flush's batches could leave (here: before this returns).
async fn admit_and_commit(raft: &Raft, live: &mut Coordinator<FilePlatform>, seed: u8) {
    let node = SigningKey::from_entropy([seed; 32]).unwrap();
    live.register_node(&Report::of(&node, NODE_MEASUREMENT, ChainId(0)).attest(&authority())).unwrap();
    let entry = live.flush().replicated.expect("a replicating flush yields an entry");
    raft.client_write(Delta(entry)).await.expect("committed on a majority");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_follows_its_leader_and_survives_losing_it() {
    let mut group = Group::start("failover").await;
    let first = group.leader().await;
    let mut live = group.fork(first);
    for seed in 1..=5 {
        admit_and_commit(&group.replicas[&first].raft, &mut live, seed).await;
    }
    group.converged(&live).await;
    assert_eq!(live.inspect().nodes.len(), 5);

    // The leader is lost: the next one forks its shadow, which holds every committed flush.
    group.stop(first).await;
    let second = group.leader().await;
    assert_ne!(second, first);
    let mut live2 = group.fork(second);
    assert_eq!(live2.inspect(), live.inspect(), "nothing committed was lost");
    for seed in 6..=8 {
        admit_and_commit(&group.replicas[&second].raft, &mut live2, seed).await;
    }
    group.converged(&live2).await;

    // The old leader restarts from its own files (its shadow's sealed log, its Raft log) and
    // catches up as a follower; the fork it ran is never used again.
    let i = (first - 1) as usize;
    let listener = tokio::net::TcpListener::bind(&group.addrs[i]).await.unwrap();
    let shadow = restore_shadow(&group.dirs[i]);
    let replica = start(first, &group.dirs[i], shadow, listener).await;
    group.replicas.insert(first, replica);
    group.converged(&live2).await;
    assert_eq!(group.leader().await, second, "it rejoined as a follower");
    for id in [1, 2, 3] {
        if group.replicas.contains_key(&id) {
            group.stop(id).await;
        }
    }
    for d in &group.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
