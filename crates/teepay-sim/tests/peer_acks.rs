//! Peer acks (`--verify-peer-acks`): a node commits an instance that asks for them only on
//! every other participant's own signed PREPARED ack, forwarded with COMMIT and covered by
//! its digest. A hub that lies about who locked (modelled by a crafted, attested hub key, as
//! in the negative tests) gets a typed error and changes nothing; the real hub refuses a
//! PREPARED ack it could not forward.

mod support;

use std::collections::BTreeMap;
use support::{fixture, fixture_requiring_peer_acks};
use teepay_coordinator::{HubError, HubPhase};
use teepay_enclave::EnclaveError;
use teepay_sim::world::{CONTRACT, NODE_MEASUREMENT};
use teepay_sim::{Action, Envelope, World};
use teepay_types::{
    Address, Amount, ChainId, ChannelId, ChannelState, Hop, HubItem, InstanceKind, Leg, LockState,
    NackReason, NodeAck, NodeItem, Order, PaymentRequest, PeerAck, Phase, Report, SigningKey, leaf_hash,
    prepared_acks_digest, prepared_digest,
};

/// The PREPARED answer of every node of `spec`, as peer acks, in participant order.
fn collect_acks(f: &mut support::Fixture, spec: &teepay_types::InstanceSpec) -> Vec<PeerAck> {
    let mut by_node = BTreeMap::new();
    for n in f.nodes {
        let NodeItem::Prepared { states, signature, .. } = f.accepted(n, HubItem::Prepare(spec.clone()))
        else {
            panic!("PREPARE accepted")
        };
        let node = f.w.address(n);
        let signature = signature.expect("an instance with peer acks gets a signed PREPARED ack");
        by_node.insert(node, PeerAck { node, states, signature });
    }
    spec.participants().iter().map(|p| by_node[p].clone()).collect()
}

fn digest_of(acks: &[PeerAck], spec: &teepay_types::InstanceSpec) -> [u8; 32] {
    let leaves: Vec<[u8; 32]> = acks.iter().map(|a| leaf_hash(&a.item(spec.id))).collect();
    prepared_acks_digest(&leaves)
}

#[test]
fn commit_needs_every_participants_own_signed_prepared_ack() {
    let mut f = fixture();
    let order = f.order(10, 5);
    let mut spec = f.spec(1, f.leg(10), order);
    spec.peer_acks = true;
    let acks = collect_acks(&mut f, &spec);
    let spec_hash = leaf_hash(&HubItem::Prepare(spec.clone()));
    for ack in &acks {
        assert!(ack.is_valid(f.hub.address(), spec.id, &spec_hash), "each node signs its own PREPARED ack");
    }
    let digest = digest_of(&acks, &spec);
    let hop1 = f.nodes[1];
    let me = f.w.address(hop1);
    let other = acks.iter().position(|a| a.node != me).unwrap();
    let commit = |peer_acks: Vec<PeerAck>, prepared_acks| HubItem::Commit {
        instance: spec.id,
        prepared_acks,
        peer_acks,
    };

    // No acks at all: the first participant's is missing.
    f.refused(hop1, commit(vec![], digest), EnclaveError::MissingPeerAck(spec.id, acks[0].node));
    // One participant left out.
    let mut short = acks.clone();
    let dropped = short.remove(other);
    let expected = EnclaveError::MissingPeerAck(spec.id, dropped.node);
    f.refused(hop1, commit(short, digest), expected);
    // Out of order.
    let mut swapped = acks.clone();
    swapped.swap(0, 1);
    f.refused(hop1, commit(swapped, digest), EnclaveError::MissingPeerAck(spec.id, acks[0].node));
    // A signature the participant never made.
    let mut forged = acks.clone();
    forged[other].signature.0[5] ^= 1;
    f.refused(hop1, commit(forged, digest), EnclaveError::ForgedPeerAck(spec.id, acks[other].node));
    // The participant's signature over other states (the hub "improving" what it locked).
    let mut altered = acks.clone();
    altered[other].states[0].balance_a = Amount(altered[other].states[0].balance_a.0 + 1);
    f.refused(hop1, commit(altered, digest), EnclaveError::ForgedPeerAck(spec.id, acks[other].node));
    // A genuine ack of another node passed off as this participant's.
    let mut impostor = acks.clone();
    let third = acks.iter().position(|a| a.node != me && a.node != acks[other].node).unwrap();
    impostor[other] = PeerAck { node: acks[other].node, ..acks[third].clone() };
    f.refused(hop1, commit(impostor, digest), EnclaveError::ForgedPeerAck(spec.id, acks[other].node));
    // Genuine acks of the same nodes, id and states, signed for another spec under this id
    // (a twin world where the same enclaves PREPAREd a spec with another deadline).
    let mut twin = fixture();
    let order = twin.order(10, 5);
    let mut other_spec = twin.spec(1, twin.leg(10), order);
    other_spec.peer_acks = true;
    other_spec.deadline += 1;
    let other_acks = collect_acks(&mut twin, &other_spec);
    assert_eq!(other_acks[other].states, acks[other].states, "only the spec differs");
    let mut respecced = acks.clone();
    respecced[other] = other_acks[other].clone();
    f.refused(hop1, commit(respecced, digest), EnclaveError::ForgedPeerAck(spec.id, acks[other].node));
    // Genuine acks the COMMIT's digest does not cover, or one ack too many.
    f.refused(hop1, commit(acks.clone(), [7; 32]), EnclaveError::PeerAcksMismatch(spec.id));
    let mut extra = acks.clone();
    extra.push(acks[other].clone());
    f.refused(hop1, commit(extra, digest), EnclaveError::PeerAcksMismatch(spec.id));

    // The genuine set commits, and a retransmission gets the same answer.
    assert_eq!(f.accepted(hop1, commit(acks.clone(), digest)), NodeItem::Committed { instance: spec.id });
    assert_eq!(f.accepted(hop1, commit(acks, digest)), NodeItem::Committed { instance: spec.id });
}

#[test]
fn without_peer_acks_nothing_is_signed_and_a_node_that_requires_them_nacks() {
    let mut f = fixture();
    let order = f.order(10, 5);
    let spec = f.spec(1, f.leg(10), order);
    let NodeItem::Prepared { signature, .. } = f.accepted(f.nodes[1], HubItem::Prepare(spec)) else {
        panic!()
    };
    assert_eq!(signature, None, "no per-ack signature when the instance does not ask for one");

    let mut f = fixture_requiring_peer_acks();
    let order = f.order(10, 5);
    let mut spec = f.spec(2, f.leg(10), order);
    for n in f.nodes {
        f.refused(n, HubItem::Prepare(spec.clone()), EnclaveError::Refused(NackReason::PeerAcksRequired));
    }
    spec.peer_acks = true;
    let acks = collect_acks(&mut f, &spec);
    assert_eq!(acks.len(), 4);
}

/// A node the test holds the key of, attested and registered with the world's hub.
fn test_node(w: &mut World, seed: u8) -> SigningKey {
    let key = SigningKey::from_entropy([seed; 32]).unwrap();
    let quote = Report::of(&key, NODE_MEASUREMENT, ChainId(0)).attest(&w.authority);
    w.hub.coordinator.register_node(&quote).unwrap();
    key
}

fn locked_state(instance: teepay_types::InstanceId, phase: Phase) -> ChannelState {
    ChannelState {
        chain: ChainId(1),
        contract: CONTRACT,
        channel: ChannelId([3; 32]),
        token: teepay_types::Address::default(),
        version: 1,
        deposit_a: Amount(100),
        deposit_b: Amount(100),
        balance_a: Amount(100),
        balance_b: Amount(100),
        locks: vec![LockState {
            instance,
            amount: Amount(10),
            a_to_b: true,
            phase,
            kind: InstanceKind::MultiHop,
            hub: Address([0; 20]),
            deadline: 0,
        }],
    }
}

#[test]
fn hub_counts_and_forwards_only_valid_peer_acks() {
    let mut w = World::with_peer_acks(5);
    let (a, b) = (test_node(&mut w, 0xa1), test_node(&mut w, 0xb2));
    let request = PaymentRequest {
        chain: ChainId(1),
        asset: teepay_types::Asset::Native,
        payer: a.address(),
        payee: b.address(),
        amount: Amount(10),
        max_fee: Amount(0),
        nonce: 1,
        expires_at: 1_000,
        invoice: None,
    };
    let hop = Hop { channel: ChannelId([3; 32]), from: a.address(), to: b.address(), amount: Amount(10) };
    let leg = Leg { chain: ChainId(1), asset: teepay_types::Asset::Native, hops: vec![hop] };
    let hub = w.hub.coordinator.address();
    let id = w
        .hub
        .coordinator
        .create_instance(0, InstanceKind::MultiHop, vec![leg], vec![Order::Payment(request).sign(&a)])
        .unwrap();
    assert!(w.hub.coordinator.instance(id).unwrap().spec.peer_acks, "the hub asks for peer acks");
    let prepared = |key: &SigningKey, states: Vec<ChannelState>, signature| {
        let item = NodeItem::Prepared { instance: id, states, signature };
        NodeAck { node: key.address(), hub, items: vec![item] }.sign(key)
    };
    let spec_hash = w.hub.coordinator.instance(id).unwrap().prepare_hash;
    let sign_for = |key: &SigningKey, hub: Address, instance, spec: &[u8; 32], states: &[ChannelState]| {
        Some(key.sign_digest(&prepared_digest(hub, key.address(), instance, spec, states)))
    };
    let sign = |key: &SigningKey, hub: Address, instance, states: &[ChannelState]| {
        sign_for(key, hub, instance, &spec_hash, states)
    };
    let good = vec![locked_state(id, Phase::Prepared)];
    let refused = |w: &mut World, ack| {
        let before = w.hub.coordinator.inspect().instances[&id].clone();
        let result = w.hub.coordinator.on_ack(0, &ack).expect("the ack itself is authentic");
        assert_eq!(result.results, vec![Err(HubError::BadPeerAck(a.address()))]);
        assert_eq!(w.hub.coordinator.inspect().instances[&id], before, "a refused answer changes nothing");
    };
    refused(&mut w, prepared(&a, good.clone(), None));
    refused(&mut w, prepared(&a, good.clone(), sign(&b, hub, id, &good)));
    refused(&mut w, prepared(&a, good.clone(), sign(&a, Address([9; 20]), id, &good)));
    let unlocked = vec![locked_state(id, Phase::Committed)];
    refused(&mut w, prepared(&a, unlocked.clone(), sign(&a, hub, id, &unlocked)));
    refused(&mut w, prepared(&a, vec![], sign(&a, hub, id, &[])));
    // Signed by the right node for the right id and states, but for another spec.
    refused(&mut w, prepared(&a, good.clone(), sign_for(&a, hub, id, &[0xab; 32], &good)));

    for key in [&a, &b] {
        let result =
            w.hub.coordinator.on_ack(0, &prepared(key, good.clone(), sign(key, hub, id, &good))).unwrap();
        assert_eq!(result.results, vec![Ok(())]);
    }
    let instance = w.hub.coordinator.instance(id).unwrap().clone();
    assert_eq!(instance.phase, HubPhase::Prepared);
    let flush = w.hub.coordinator.flush();
    // (The PREPAREs queued at creation go out in the same flush.)
    let commits: Vec<&HubItem> = flush
        .batches
        .iter()
        .flat_map(|b| &b.batch.items)
        .filter(|i| matches!(i, HubItem::Commit { .. }))
        .collect();
    assert_eq!(commits.len(), 2, "one COMMIT per participant");
    for item in commits {
        let HubItem::Commit { prepared_acks, peer_acks, .. } = item else { panic!("{item:?}") };
        let nodes: Vec<Address> = peer_acks.iter().map(|p| p.node).collect();
        assert_eq!(nodes, instance.participants, "every participant's ack, in participant order");
        assert!(peer_acks.iter().all(|p| p.is_valid(hub, id, &spec_hash)));
        let leaves: Vec<[u8; 32]> = peer_acks.iter().map(|p| leaf_hash(&p.item(id))).collect();
        assert_eq!(*prepared_acks, prepared_acks_digest(&leaves));
    }
}

#[test]
fn a_three_hop_payment_with_peer_acks_commits_on_forwarded_acks_and_conserves() {
    let mut w = teepay_sim::scenarios::three_hop_with_peer_acks();
    let mut commits = 0;
    // Deliver in order until the network is empty, looking at every COMMIT on its way.
    while !w.network.is_empty() {
        if let Envelope::ToNode { batch, .. } = &w.network[0] {
            for item in &batch.batch.items {
                if let HubItem::Commit { peer_acks, .. } = item {
                    assert_eq!(peer_acks.len(), 4, "all four participants' acks");
                    commits += 1;
                }
            }
        }
        w.apply(&Action::Deliver(0)).unwrap();
        w.check_step().unwrap();
    }
    assert_eq!(commits, 4, "a COMMIT reached every participant");
    w.check_completion().unwrap();
    w.check_final().unwrap();
    let id = w.instances[0];
    assert_eq!(w.hub.coordinator.instance(id).unwrap().phase, HubPhase::Committed);
}
