//! Hub replication at the enclave level (issue 15): replicas provisioned over attestation
//! follow the leader's replicated-log entries to exactly its state, a follower takes over
//! mid-payment and finishes it, and every malformed, forged, reordered or foreign piece of
//! replication data is refused with a typed error and no state change.

use teepay_coordinator::{Candidate, Coordinator, HubError, ReplicaEntry};
use teepay_enclave::FeePolicy;
use teepay_sim::scenarios::CHAIN_1;
use teepay_sim::world::{HUB_MEASUREMENT, NODE_MEASUREMENT};
use teepay_sim::{Action, World};
use teepay_types::{Amount, ChainId, SealedLog, SimPlatform};

fn fee(base: u128) -> FeePolicy {
    FeePolicy { base: Amount(base), ppm: 0 }
}

/// A replica's enclave and its local sealed log.
struct Follower {
    hub: Coordinator<SimPlatform>,
    sealed: SealedLog,
    platform_key: [u8; 32],
}

/// payer → hop1 → hop2 → payee, the hub replicating, with two followers provisioned before
/// the payment starts.
fn group() -> (World, Vec<Follower>) {
    let mut w = World::new(7);
    let [p, i1, i2, r] = ["payer", "hop1", "hop2", "payee"].map(|n| w.add_node(n));
    w.open_channel(CHAIN_1, p, i1, 100, 100, fee(0), fee(1));
    w.open_channel(CHAIN_1, i1, i2, 100, 100, fee(1), fee(1));
    w.open_channel(CHAIN_1, i2, r, 100, 100, fee(1), fee(0));
    w.flush_hub();
    w.hub.coordinator.set_replicating(true);
    let snapshot = w.hub.coordinator.group_snapshot().unwrap();
    let followers = (1..=2u8)
        .map(|i| {
            let platform_key = [0x40 + i; 32];
            let candidate =
                Candidate::new(SimPlatform::new(platform_key), HUB_MEASUREMENT, [0x50 + i; 32]).unwrap();
            let quote = candidate.report(ChainId(0)).attest(&w.authority);
            let gift = w.hub.coordinator.provision(&quote).unwrap();
            let (hub, seal) = candidate.join(&gift, &snapshot).unwrap();
            assert_eq!(
                hub.inspect(),
                w.hub.coordinator.inspect(),
                "a joined replica starts at the leader's state"
            );
            assert_eq!(hub.address(), w.hub.coordinator.address(), "nodes see one hub identity");
            Follower { hub, sealed: SealedLog::from_blobs([seal]).unwrap(), platform_key }
        })
        .collect();
    w.pay(CHAIN_1, &[p, i1, i2, r], 10, 5).expect("valid payment");
    (w, followers)
}

/// Applies every entry the leader produced since `from` to each follower.
fn replicate(w: &World, followers: &mut [Follower], from: usize) -> usize {
    for entry in &w.replicated[from..] {
        for f in followers.iter_mut() {
            let seal = f.hub.apply_entry(entry).expect("a committed entry applies");
            f.sealed.record(seal).unwrap();
        }
    }
    w.replicated.len()
}

#[test]
fn followers_replay_the_leaders_entries_to_its_exact_state() {
    let (mut w, mut followers) = group();
    let mut applied = replicate(&w, &mut followers, 0);
    assert!(applied > 0, "the payment's creation was replicated");
    while !w.network.is_empty() {
        w.apply(&Action::Deliver(0)).unwrap();
        applied = replicate(&w, &mut followers, applied);
        for f in &followers {
            assert_eq!(f.hub.inspect(), w.hub.coordinator.inspect(), "after entry {applied}");
        }
    }
    w.check_final().unwrap();
    // A follower's local sealed log restores it exactly (its own platform, its own seals).
    for f in &followers {
        let mut platform = SimPlatform::new(f.platform_key);
        platform.counter = f.hub.platform().counter;
        let restored = Coordinator::restore(platform, &f.sealed).unwrap();
        assert_eq!(restored.inspect(), f.hub.inspect());
    }
}

#[test]
fn a_follower_takes_over_mid_payment_and_finishes_it() {
    let (mut w, mut followers) = group();
    let mut applied = replicate(&w, &mut followers, 0);
    let id = w.instances[0];
    // Until the hub has every PREPARED ack and has sent COMMIT: then the leader is lost.
    while w.hub.coordinator.instance(id).unwrap().phase == teepay_coordinator::HubPhase::None {
        w.apply(&Action::Deliver(0)).unwrap();
        applied = replicate(&w, &mut followers, applied);
    }
    let next = followers.remove(0);
    let mut leader = next.hub;
    leader.set_replicating(true);
    w.hub.coordinator = leader;
    w.hub.sealed = next.sealed;
    // Acks in flight to the old leader reach the new one (nodes follow the leader).
    w.tick();
    w.drain().unwrap();
    w.check_final().unwrap();
    replicate(&w, &mut followers, applied);
    assert_eq!(
        followers[0].hub.inspect(),
        w.hub.coordinator.inspect(),
        "the remaining follower follows the new leader"
    );
}

#[test]
fn forged_reordered_replayed_and_foreign_entries_change_nothing() {
    let (mut w, mut followers) = group();
    let f = &mut followers[0].hub;
    let before = f.inspect().clone();
    let first = w.replicated[0].clone();

    let mut tampered = ReplicaEntry::decode(&first).unwrap();
    tampered.ciphertext[0] ^= 1;
    assert_eq!(f.apply_entry(&tampered.encode()), Err(HubError::ForgedReplicaData));
    let mut renumbered = ReplicaEntry::decode(&first).unwrap();
    renumbered.seq += 1;
    assert!(matches!(f.apply_entry(&renumbered.encode()), Err(HubError::EntryOutOfOrder { .. })));
    let mut rechained = ReplicaEntry::decode(&first).unwrap();
    rechained.prev[0] ^= 1;
    assert_eq!(f.apply_entry(&rechained.encode()), Err(HubError::EntryNotChained(1)));
    assert_eq!(f.apply_entry(&first[..first.len() - 1]), Err(HubError::MalformedReplicaData));
    assert_eq!(f.inspect(), &before, "refused entries changed nothing");

    f.apply_entry(&first).unwrap();
    let after = f.inspect().clone();
    assert!(
        matches!(f.apply_entry(&first), Err(HubError::EntryOutOfOrder { expected: 2, got: 1 })),
        "a replay"
    );
    assert_eq!(f.inspect(), &after);

    // An entry of another group (another hub identity) does not open here.
    let (mut other, _) = group_with_seed(8);
    while other.replicated.len() < 2 {
        other.apply(&Action::Deliver(0)).unwrap();
    }
    let mut foreign = ReplicaEntry::decode(&other.replicated[1]).unwrap();
    foreign.prev = after.replica.head;
    foreign.seq = after.replica.seq + 1;
    assert_eq!(f.apply_entry(&foreign.encode()), Err(HubError::ForgedReplicaData));
    assert_eq!(f.inspect(), &after);
    w.flush_hub();
}

fn group_with_seed(seed: u64) -> (World, ()) {
    let mut w = World::new(seed);
    let [p, i1, r] = ["payer", "hop1", "payee"].map(|n| w.add_node(n));
    w.open_channel(CHAIN_1, p, i1, 100, 100, fee(0), fee(1));
    w.open_channel(CHAIN_1, i1, r, 100, 100, fee(1), fee(0));
    w.flush_hub();
    w.hub.coordinator.set_replicating(true);
    w.pay(CHAIN_1, &[p, i1, r], 10, 5).expect("valid payment");
    (w, ())
}

#[test]
fn only_an_enclave_with_the_hub_measurement_is_provisioned_and_only_it_opens_its_gift() {
    let (w, _) = group();
    let snapshot = w.hub.coordinator.group_snapshot();
    // Inputs are pending only between a change and its flush; the group is flushed here.
    let snapshot = snapshot.unwrap();
    let node_like = Candidate::new(SimPlatform::new([1; 32]), NODE_MEASUREMENT, [2; 32]).unwrap();
    let quote = node_like.report(ChainId(0)).attest(&w.authority);
    assert!(matches!(w.hub.coordinator.provision(&quote), Err(HubError::Quote(_))), "another measurement");
    let impostor = teepay_types::SigningKey::from_entropy([3; 32]).unwrap();
    let candidate = Candidate::new(SimPlatform::new([4; 32]), HUB_MEASUREMENT, [5; 32]).unwrap();
    let self_signed = candidate.report(ChainId(0)).attest(&impostor);
    assert!(
        matches!(w.hub.coordinator.provision(&self_signed), Err(HubError::Quote(_))),
        "not the authority"
    );

    let quote = candidate.report(ChainId(0)).attest(&w.authority);
    let gift = w.hub.coordinator.provision(&quote).unwrap();
    let thief = Candidate::new(SimPlatform::new([6; 32]), HUB_MEASUREMENT, [7; 32]).unwrap();
    assert_eq!(
        thief.join(&gift, &snapshot).err(),
        Some(HubError::ForgedReplicaData),
        "a gift opens only for its enclave"
    );
    let mut forged = teepay_coordinator::GroupSnapshot::decode(&snapshot).unwrap();
    forged.ciphertext[3] ^= 1;
    assert_eq!(candidate.join(&gift, &forged.encode()).err(), Some(HubError::ForgedReplicaData));
}

#[test]
fn a_deposed_leader_is_refused_the_new_leaders_entries_until_it_installs_a_group_snapshot() {
    let (mut w, mut followers) = group();
    let applied = replicate(&w, &mut followers, 0);
    // The leader flushes once more, but the entry never reaches a majority (not applied).
    w.apply(&Action::Deliver(0)).unwrap();
    while w.replicated.len() == applied {
        w.apply(&Action::Deliver(0)).unwrap();
    }
    let mut deposed = w.hub.coordinator.clone();
    // Follower 0 leads now and makes progress of its own.
    let mut leader = followers.remove(0).hub;
    leader.set_replicating(true);
    leader.tick(10_000_000);
    let entry = leader.flush().replicated.expect("the new leader's flush is replicated");
    let before = deposed.inspect().clone();
    assert!(deposed.apply_entry(&entry).is_err(), "its own unreplicated flush sits where the new entry goes");
    assert_eq!(deposed.inspect(), &before);
    let snapshot = leader.group_snapshot().unwrap();
    deposed.install_group_snapshot(&snapshot).unwrap();
    assert_eq!(deposed.inspect(), leader.inspect());
}
