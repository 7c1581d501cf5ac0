//! Three hub replicas in one process, each with its own state directory and a Raft group on
//! loopback TCP: the leader's flushes are committed and reach every replica's shadow (the
//! committed state); a new leader forks its shadow and goes on; a killed replica restarts
//! from its own files and catches up.

use std::time::{Duration, Instant};
use teepay_coordinator::{Coordinator, HubConfig};
use teepay_hub::replication::LocalGroup;
use teepay_link::host::FilePlatform;
use teepay_replica::{Delta, Raft};
use teepay_types::{ChainId, Report, RoundAuth, SigningKey};

const HUB_MEASUREMENT: [u8; 32] = [0x22; 32];
const NODE_MEASUREMENT: [u8; 32] = [0x11; 32];

fn authority() -> SigningKey {
    SigningKey::from_entropy([0xa7; 32]).unwrap()
}

/// The operators' key that names the group's members.
fn governance() -> SigningKey {
    SigningKey::from_entropy([0x90; 32]).unwrap()
}

fn config() -> HubConfig {
    HubConfig {
        measurement: HUB_MEASUREMENT,
        attestation_authority: authority().address(),
        allowed_node_measurements: vec![NODE_MEASUREMENT],
        prepare_timeout: 1_000,
        retransmit_after: 200,
        round_auth: RoundAuth::SessionMacs,
        peer_acks: false,
        swap_lock_time: teepay_coordinator::DAY_MS,
    }
}

/// Waits until every running replica's shadow is `live`'s state.
async fn converged(group: &LocalGroup, live: &Coordinator<FilePlatform>) {
    let start = Instant::now();
    loop {
        let same = group.replicas.values().all(|r| r.sm.with_app(|a| a.shadow().inspect() == live.inspect()));
        if same {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "shadows did not converge on the leader's state");
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    let dir = std::env::temp_dir().join(format!("teepay-hub-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut group = LocalGroup::start(&dir, 3, config(), &authority(), &governance()).await.unwrap();
    let first = group.leader().await.unwrap();
    let (mut live, _) = group.take_office(first).await.unwrap();
    for seed in 1..=5 {
        admit_and_commit(&group.replicas[&first].raft, &mut live, seed).await;
    }
    converged(&group, &live).await;
    assert_eq!(live.inspect().nodes.len(), 5);

    // The leader is lost: the next one forks its shadow, which holds every committed flush.
    group.stop(first).await;
    let second = group.leader().await.unwrap();
    assert_ne!(second, first);
    let (mut live2, _) = group.take_office(second).await.unwrap();
    assert_eq!(live2.inspect(), live.inspect(), "nothing committed was lost");
    for seed in 6..=8 {
        admit_and_commit(&group.replicas[&second].raft, &mut live2, seed).await;
    }
    converged(&group, &live2).await;

    // The old leader restarts from its own files (its shadow's sealed log, its Raft log) and
    // catches up as a follower; the fork it ran is never used again.
    group.restart(first).await.unwrap();
    converged(&group, &live2).await;
    assert_eq!(group.leader().await.unwrap(), second, "it rejoined as a follower");
    group.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replica that was down while the group snapshotted and purged its log catches up from
/// the leader's snapshot (the group's state under the group key, installed by its enclave)
/// and then follows entry by entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_purged_log_catches_up_from_a_snapshot() {
    let dir = std::env::temp_dir().join(format!("teepay-hub-group-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let raft = teepay_replica::openraft::Config {
        snapshot_policy: teepay_replica::openraft::SnapshotPolicy::LogsSinceLast(5),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..teepay_replica::config()
    };
    let mut group =
        LocalGroup::start_with(&dir, 3, config(), &authority(), &governance(), raft).await.unwrap();
    let leader = group.leader().await.unwrap();
    let (mut live, _) = group.take_office(leader).await.unwrap();
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    group.stop(behind).await;
    for seed in 1..=30 {
        admit_and_commit(&group.replicas[&leader].raft, &mut live, seed).await;
    }
    let start = Instant::now();
    while group.replicas[&leader].raft.metrics().borrow().purged.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    group.restart(behind).await.unwrap();
    converged(&group, &live).await;
    let installed = group.replicas[&behind].raft.metrics().borrow().snapshot;
    assert!(installed.is_some(), "the lagging replica caught up through a snapshot");
    for seed in 31..=33 {
        admit_and_commit(&group.replicas[&leader].raft, &mut live, seed).await;
    }
    converged(&group, &live).await;
    group.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A follower's host restores an older copy of its Raft log (forgetting entries it
/// acknowledged): the replica refuses to start with it rather than vote or lead on it, and
/// with its real log it rejoins and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_log_was_rolled_back_does_not_rejoin_with_it() {
    let dir = std::env::temp_dir().join(format!("teepay-hub-group-rollback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut group = LocalGroup::start(&dir, 3, config(), &authority(), &governance()).await.unwrap();
    let leader = group.leader().await.unwrap();
    let (mut live, _) = group.take_office(leader).await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    for seed in 1..=3 {
        admit_and_commit(&group.replicas[&leader].raft, &mut live, seed).await;
    }
    converged(&group, &live).await;
    let log = dir.join(format!("r{follower}/raft/raft-log.jsonl"));
    let old = std::fs::read(&log).unwrap();
    for seed in 4..=6 {
        admit_and_commit(&group.replicas[&leader].raft, &mut live, seed).await;
    }
    converged(&group, &live).await;
    group.stop(follower).await;
    let acknowledged = std::fs::read(&log).unwrap();
    std::fs::write(&log, &old).unwrap();
    let refused = group.restart(follower).await.expect_err("a rolled-back log must not be used");
    assert!(refused.to_string().contains("rolled back"), "{refused}");
    std::fs::write(&log, &acknowledged).unwrap();
    group.restart(follower).await.expect("its own log opens");
    for seed in 7..=8 {
        admit_and_commit(&group.replicas[&leader].raft, &mut live, seed).await;
    }
    converged(&group, &live).await;
    group.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replica's Raft vote survives a restart sealed on its own platform, and a vote file
/// altered by its host is refused rather than believed.
#[test]
fn the_raft_vote_is_sealed_and_a_tampered_one_is_refused() {
    use teepay_hub::replication::SealedVotes;
    use teepay_replica::log_store::VoteStore;
    let dir = std::env::temp_dir().join(format!("teepay-vote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let votes = SealedVotes::open(&dir).unwrap();
    assert_eq!(votes.load().unwrap(), None);
    votes.save(b"term 3, voted for 2").unwrap();
    votes.save(b"term 4, voted for 1").unwrap();
    drop(votes);
    assert_eq!(
        SealedVotes::open(&dir).unwrap().load().unwrap().as_deref(),
        Some(&b"term 4, voted for 1"[..])
    );
    // Saves are appended (and a snapshot taken now and then): the last one is what opens.
    let votes = SealedVotes::open(&dir).unwrap();
    for i in 0..1_500 {
        votes.save(format!("save {i}").as_bytes()).unwrap();
    }
    drop(votes);
    assert_eq!(SealedVotes::open(&dir).unwrap().load().unwrap().as_deref(), Some(&b"save 1499"[..]));
    let seals = dir.join("platform.seals");
    let mut bytes = std::fs::read(&seals).unwrap();
    let last = bytes.len() - 1;
    bytes[last - 20] ^= 1;
    std::fs::write(&seals, bytes).unwrap();
    let reopened = SealedVotes::open(&dir);
    assert!(reopened.is_err() || reopened.unwrap().load().is_err(), "an altered vote was believed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Commit receipts over the replica links: once an entry is committed, the leader's gate
/// gets a receipt for it from a follower's enclave, signed by a member the governance key
/// admitted, for that very entry; with both followers gone it gets none, so a group's
/// enclave would hold the flush (`teepay_coordinator::group`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_enclaves_sign_receipts_for_what_they_hold() {
    let dir = std::env::temp_dir().join(format!("teepay-hub-group-receipts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut group = LocalGroup::start(&dir, 3, config(), &authority(), &governance()).await.unwrap();
    let leader = group.leader().await.unwrap();
    let (mut live, gate) = group.take_office(leader).await.unwrap();
    let membership = live.inspect().membership.clone().expect("a governed group");
    assert_eq!(membership.governance, governance().address());
    assert_eq!(membership.members.len(), 3, "every replica was admitted");
    assert!(membership.members.contains(&live.member_address().unwrap()));
    admit_and_commit(&group.replicas[&leader].raft, &mut live, 1).await;
    let seq = live.replica_chain().seq;
    let receipts = gate.receipts(seq).await;
    assert!(!receipts.is_empty(), "a follower holds the committed entry");
    for r in &receipts {
        assert!(membership.members.contains(&r.member) && r.member != live.member_address().unwrap());
        assert_eq!((r.seq, r.head), (seq, live.replica_chain().head), "a receipt for the leader's entry");
    }
    // An entry the followers never saw gets no receipt (they wait, then say so).
    assert!(gate.receipts(seq + 1).await.is_empty());
    for follower in (1..=3).filter(|id| *id != leader) {
        group.stop(follower).await;
    }
    let started = Instant::now();
    assert!(gate.receipts(seq).await.is_empty(), "nobody is left to sign");
    assert!(started.elapsed() < Duration::from_secs(3), "an unreachable follower is given up on");
    group.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
