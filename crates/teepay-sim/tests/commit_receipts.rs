//! Commit receipts at the enclave level (issue 15): in a hub group no enclave lets a flush's
//! batches out before a majority of the members' enclaves hold it, so neither a leader's host
//! that releases early nor any replica's host that forks its shadow and drives nodes outside
//! Raft gets a round message out on its own; and only the operators' governance key changes
//! who the members are.

use teepay_coordinator::{Coordinator, HubError, SignedMembership};
use teepay_enclave::FeePolicy;
use teepay_sim::World;
use teepay_sim::scenarios::CHAIN_1;
use teepay_sim::world::{RETRANSMIT_AFTER, governance};
use teepay_types::{Amount, SigningKey, SimPlatform};

/// payer → hop → payee, the hub a group of three (leader and two standbys, all members), a
/// payment's PREPAREs in flight.
fn group_mid_payment() -> World {
    let mut w = World::new(11);
    let [p, i, r] = ["payer", "hop", "payee"].map(|n| w.add_node(n));
    let fee = |base| FeePolicy { base: Amount(base), ppm: 0 };
    w.open_channel(CHAIN_1, p, i, 100, 100, fee(0), fee(1));
    w.open_channel(CHAIN_1, i, r, 100, 100, fee(1), fee(0));
    w.add_standbys(2);
    w.pay(CHAIN_1, &[p, i, r], 10, 5).expect("valid payment");
    assert!(!w.network.is_empty(), "the PREPAREs left: two standbys' receipts released them");
    w
}

/// A replica's host forks its shadow into a live enclave of its own and makes it re-send
/// the rounds in flight: the enclave makes the flush but holds its batches.
fn rogue_flush(w: &World, standby: usize) -> Coordinator<SimPlatform> {
    let (mut rogue, _) = w.standbys[standby].fork(SimPlatform::new([0x66; 32])).expect("a fork");
    rogue.set_replicating(false); // the host would rather not replicate: no matter
    rogue.tick(w.now + RETRANSMIT_AFTER + 1);
    let flush = rogue.flush();
    assert!(flush.batches.is_empty(), "no batch leaves a group's enclave with its flush");
    assert!(flush.replicated.is_some(), "a group's flush is always an entry");
    assert_eq!(rogue.held(), 1);
    rogue
}

#[test]
fn a_rogue_fork_gets_no_round_message_out_without_a_majority() {
    let w = group_mid_payment();
    let mut rogue = rogue_flush(&w, 0);
    // Its own shadow's receipt is the same member as itself; the other standby's receipt
    // is for the group's real entries, not the rogue one.
    let own = w.standbys[0].receipt().unwrap();
    let other = w.standbys[1].receipt().unwrap();
    assert!(rogue.release(&[]).is_empty());
    assert!(rogue.release(&[own.clone(), other.clone()]).is_empty(), "no member holds its entry");
    // A receipt forged for its entry by a key that is not a member counts for nothing, nor
    // does a member's receipt with another member's name on it.
    let mut forged = other.clone();
    forged.seq = rogue.replica_chain().seq;
    forged.head = rogue.replica_chain().head;
    assert!(rogue.release(&[forged]).is_empty(), "a receipt not signed for that entry");
    assert_eq!(rogue.held(), 1, "still held");
}

#[test]
fn a_flush_leaves_once_a_majority_of_members_holds_it() {
    let w = group_mid_payment();
    let mut rogue = rogue_flush(&w, 0);
    let entry = {
        // Re-make the rogue's entry for a second standby, as a second colluding host would.
        let (mut again, _) = w.standbys[0].fork(SimPlatform::new([0x66; 32])).unwrap();
        again.tick(w.now + RETRANSMIT_AFTER + 1);
        again.flush().replicated.unwrap()
    };
    let mut accomplice = w.standbys[1].clone();
    accomplice.apply_entry(&entry).expect("an authentic entry applies");
    let released = rogue.release(&[accomplice.receipt().unwrap()]);
    // Two of three members (the fork's own replica and the accomplice): a majority of hosts
    // colluding is what it takes, as with Raft itself.
    assert!(!released.is_empty(), "a majority's receipts release the flush");
    assert_eq!(rogue.held(), 0);
}

#[test]
fn only_the_governance_key_changes_the_members() {
    let mut w = group_mid_payment();
    let hub = &mut w.hub.coordinator;
    let before = hub.inspect().clone();
    let current = before.membership.clone().expect("a group");
    let stranger = SigningKey::from_entropy([0x77; 32]).unwrap();
    let sybil = SigningKey::from_entropy([0x78; 32]).unwrap().address();
    let mut stuffed = current.members.clone();
    stuffed.push(sybil);
    let forged = SignedMembership::sign(&stranger, hub.address(), current.version + 1, stuffed.clone());
    assert_eq!(hub.update_membership(&forged).unwrap_err(), HubError::BadMembership);
    let stale = SignedMembership::sign(&governance(), hub.address(), current.version, stuffed.clone());
    assert!(matches!(hub.update_membership(&stale), Err(HubError::StaleMembership { .. })));
    let empty = SignedMembership::sign(&governance(), hub.address(), current.version + 1, Vec::new());
    assert_eq!(hub.update_membership(&empty).unwrap_err(), HubError::BadMembership);
    assert_eq!(*hub.inspect(), before, "refused changes change nothing");
    assert_eq!(hub.found_group(governance().address(), [1; 32]).unwrap_err(), HubError::GroupFounded);
    // The governance key's own change takes effect, and reaches the standbys with the next
    // entry.
    let good = SignedMembership::sign(&governance(), hub.address(), current.version + 1, stuffed);
    hub.update_membership(&good).expect("signed by the governance key");
    w.flush_hub();
    let members = &w.standbys[0].inspect().membership.as_ref().unwrap().members;
    assert!(members.contains(&sybil), "the standby applied the change");
}

#[test]
fn the_member_key_is_sealed_with_the_state() {
    let w = group_mid_payment();
    let restored =
        Coordinator::restore(w.hub.coordinator.platform().clone(), &w.hub.sealed).expect("restore");
    assert_eq!(restored.member_address(), w.hub.coordinator.member_address());
    assert!(restored.member_address().is_some());
}
