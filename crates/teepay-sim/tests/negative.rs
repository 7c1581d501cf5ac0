//! Invariant 4: a forged, replayed, stale or malformed message changes nothing and gets a
//! clear, typed error. Each test asserts the exact error and that the enclave's state is
//! unchanged (and that no new sealed blob was produced).
//!
//! Round messages are crafted with an attested hub key that is not the coordinator (see
//! `support`): the node enclave must defend on its own.

mod support;

use teepay_coordinator::HubError;
use teepay_enclave::{EnclaveError, Request, Response};
use teepay_sim::World;
use teepay_sim::scenarios::CHAIN_1;
use teepay_types::{
    Amount, ChainId, HubBatch, HubItem, InstanceId, InstanceKind, NackReason, NodeItem, Order, Outcome,
    Report, SignedOrder, SigningKey,
};

use support::{HUB_MEASUREMENT, fixture};

#[test]
fn forged_hub_signature_is_refused() {
    let mut f = fixture();
    let order = f.order(10, 5);
    let spec = f.spec(1, f.leg(10), order);
    let node = f.nodes[1];
    let before = f.state(node);
    let mut batch =
        HubBatch { hub: f.hub.address(), node: f.w.address(node), items: vec![HubItem::Prepare(spec)] }
            .sign(&f.hub);
    batch.auth.bytes_mut()[10] ^= 1;
    let err = f.w.nodes[node].enclave.handle(0, Request::HubBatch(batch)).unwrap_err();
    assert_eq!(err, EnclaveError::BadHubSignature);
    assert_eq!(f.state(node), before);
}

#[test]
fn unattested_hub_key_is_refused() {
    let mut f = fixture();
    let node = f.nodes[1];
    // A key the node never attested, even one with a valid-looking signature.
    let rogue = SigningKey::from_entropy([0x99; 32]).unwrap();
    let before = f.state(node);
    let batch = HubBatch { hub: rogue.address(), node: f.w.address(node), items: vec![] }.sign(&rogue);
    assert_eq!(
        f.w.nodes[node].enclave.handle(0, Request::HubBatch(batch)).unwrap_err(),
        EnclaveError::BadHubSignature
    );
    // A quote not signed by the attestation authority, or for an unknown measurement.
    let fake = Report::of(&rogue, HUB_MEASUREMENT, ChainId(0)).attest(&rogue);
    let err = f.w.nodes[node].enclave.handle(0, Request::AttestHub { quote: fake }).unwrap_err();
    assert_eq!(err, EnclaveError::Quote(teepay_types::QuoteError::BadAuthoritySignature));
    let wrong = Report::of(&rogue, [0; 32], ChainId(0)).attest(&f.w.authority);
    let err = f.w.nodes[node].enclave.handle(0, Request::AttestHub { quote: wrong }).unwrap_err();
    assert_eq!(err, EnclaveError::Quote(teepay_types::QuoteError::UnknownMeasurement));
    assert_eq!(f.state(node), before);
    // A node that never attested any hub refuses every batch.
    let mut w = World::new(7);
    let n = w.add_node("fresh");
    let fresh = teepay_enclave::NodeEnclave::create(
        w.nodes[n].enclave.platform().clone(),
        w.nodes[n].enclave.inspect().config.clone(),
        [5; 32],
    )
    .unwrap()
    .0;
    let batch = HubBatch { hub: f.hub.address(), node: fresh.address(), items: vec![] }.sign(&f.hub);
    let mut fresh = fresh;
    assert_eq!(fresh.handle(0, Request::HubBatch(batch)).unwrap_err(), EnclaveError::HubNotAttested);
}

#[test]
fn batch_for_another_node_is_refused() {
    let mut f = fixture();
    let (a, b) = (f.nodes[1], f.nodes[2]);
    let batch = HubBatch { hub: f.hub.address(), node: f.w.address(a), items: vec![] }.sign(&f.hub);
    let before = f.state(b);
    assert_eq!(
        f.w.nodes[b].enclave.handle(0, Request::HubBatch(batch)).unwrap_err(),
        EnclaveError::WrongRecipient
    );
    assert_eq!(f.state(b), before);
}

#[test]
fn prepare_without_the_payers_request_is_refused() {
    let mut f = fixture();
    let payer = f.nodes[0];
    let leg = f.leg(10);
    // A request signed by somebody else (the payee) naming the payer does not count.
    let payee_key = SigningKey::from_entropy([0x55; 32]).unwrap();
    let Order::Payment(mut req) = f.order(10, 5).order else { panic!() };
    req.payer = payee_key.address();
    let foreign = Order::Payment(req).sign(&payee_key);
    let spec = f.spec(2, leg, foreign);
    f.refused(payer, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::MissingOrder));
}

#[test]
fn prepare_with_altered_terms_is_refused() {
    let mut f = fixture();
    let payer = f.nodes[0];
    let order = f.order(10, 5);
    // Amount: the route delivers 9 instead of the requested 10.
    let spec = f.spec(3, f.leg(9), order.clone());
    f.refused(payer, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::OrderTermsMismatch));
    // Receiver: the route ends at hop2 instead of the payee.
    let short = f.w.route(CHAIN_1, &f.nodes[..3], 10).unwrap();
    let spec = f.spec(4, short, order.clone());
    f.refused(payer, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::OrderTermsMismatch));
    // Chain: the same route claimed on another chain (channels do not match there).
    let mut other_chain = f.leg(10);
    other_chain.chain = ChainId(9);
    let spec = f.spec(5, other_chain, order.clone());
    f.refused(payer, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::UnknownChannel));
    // Fee above the payer's max_fee.
    let mut greedy = f.leg(10);
    greedy.hops[0].amount = Amount(16);
    greedy.hops[1].amount = Amount(15);
    let spec = f.spec(6, greedy, order.clone());
    f.refused(payer, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::OrderTermsMismatch));
    // The signed request itself altered (amount bumped): it is no longer the request this
    // enclave issued, whatever the signature says.
    let mut tampered = order;
    if let Order::Payment(r) = &mut tampered.order {
        r.amount = Amount(11);
    }
    let spec = f.spec(7, f.leg(11), tampered.clone());
    f.refused(payer, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::OrderTermsMismatch));
    // And the hub refuses to create an instance from it in the first place.
    let err = f.w.hub.coordinator.create_instance(0, InstanceKind::MultiHop, vec![f.leg(11)], vec![tampered]);
    assert_eq!(err, Err(HubError::Spec(teepay_types::SpecError::UnsignedOrder(f.w.address(payer)))));
}

#[test]
fn intermediary_fee_below_policy_is_refused() {
    let mut f = fixture();
    let order = f.order(10, 5);
    let mut cheap = f.leg(10);
    cheap.hops[0].amount = Amount(11); // hop1 would forward 11 for 11: fee 0 < its base fee 1
    let spec = f.spec(8, cheap, order);
    f.refused(f.nodes[1], HubItem::Prepare(spec), EnclaveError::Refused(NackReason::FeeBelowPolicy));
}

#[test]
fn amount_above_available_is_refused() {
    let mut f = fixture();
    let order = f.order(150, 5);
    let spec = f.spec(9, f.leg(150), order);
    f.refused(
        f.nodes[0],
        HubItem::Prepare(spec.clone()),
        EnclaveError::Refused(NackReason::InsufficientFunds),
    );
    // The receiving side also refuses what its peer cannot cover as it knows the channel.
    f.refused(f.nodes[3], HubItem::Prepare(spec), EnclaveError::Refused(NackReason::InsufficientFunds));
}

#[test]
fn wrong_path_membership_is_refused() {
    let mut f = fixture();
    let order = f.order(10, 5);
    let spec = f.spec(10, f.leg(10), order);
    // Sent to a node that is not on the route: a fifth node with no channel in it.
    let outsider = f.w.add_node("outsider");
    let quote = Report::of(&f.hub, HUB_MEASUREMENT, ChainId(0)).attest(&f.w.authority);
    f.w.node_request(outsider, Request::AttestHub { quote });
    f.refused(outsider, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::NotAParticipant));
    // A hop naming a channel the node has, but with the wrong peer.
    let mut wrong_peer = f.leg(10);
    wrong_peer.hops[1].channel = wrong_peer.hops[0].channel;
    let order = f.order(10, 5);
    let spec = f.spec(11, wrong_peer, order);
    f.refused(f.nodes[1], HubItem::Prepare(spec), EnclaveError::Refused(NackReason::MalformedInstance));
    let mut wrong_channel = f.leg(10);
    wrong_channel.hops[2].channel = wrong_channel.hops[0].channel;
    wrong_channel.hops[2].channel.0[0] ^= 1;
    let order = f.order(10, 5);
    let spec = f.spec(12, wrong_channel, order);
    f.refused(f.nodes[3], HubItem::Prepare(spec), EnclaveError::Refused(NackReason::UnknownChannel));
}

#[test]
fn replayed_instance_id_is_refused() {
    let mut f = fixture();
    let spec = f.run_to(13, true, true);
    for n in f.nodes {
        f.refused(n, HubItem::Prepare(spec.clone()), EnclaveError::InstanceReplayed(spec.id));
    }
    // The same id with different contents while in flight is a replay as well.
    let in_flight = f.run_to(14, false, false);
    let mut altered = in_flight.clone();
    altered.deadline += 1;
    f.refused(f.nodes[1], HubItem::Prepare(altered), EnclaveError::InstanceReplayed(in_flight.id));
    // An exact retransmission of an in-flight PREPARE is answered again, changing nothing.
    let before = f.state(f.nodes[1]);
    assert!(matches!(f.accepted(f.nodes[1], HubItem::Prepare(in_flight)), NodeItem::Prepared { .. }));
    assert_eq!(f.state(f.nodes[1]), before);
}

#[test]
fn a_paid_request_is_never_paid_again() {
    let mut f = fixture();
    let spec = f.run_to(15, true, true);
    let mut again = spec.clone();
    f.respec(&mut again, 16);
    f.refused(f.nodes[0], HubItem::Prepare(again), EnclaveError::Refused(NackReason::OrderAlreadyUsed));
}

#[test]
fn expired_request_and_deadline_are_refused() {
    let mut f = fixture();
    let order = f.order(10, 5);
    let mut spec = f.spec(17, f.leg(10), order);
    spec.deadline = 5_000;
    f.w.now = 2_000; // past the request's expires_at (1_000)
    f.refused(f.nodes[0], HubItem::Prepare(spec.clone()), EnclaveError::Refused(NackReason::OrderExpired));
    spec.deadline = 1_500;
    f.refused(f.nodes[1], HubItem::Prepare(spec), EnclaveError::Refused(NackReason::DeadlinePassed));
}

#[test]
fn confirm_after_refund_and_refund_after_confirm_are_refused() {
    let mut f = fixture();
    let spec = f.run_to(18, false, false);
    for n in f.nodes {
        f.accepted(n, HubItem::Refund { instance: spec.id, certificate: None });
        f.refused(
            n,
            HubItem::Confirm { instance: spec.id, certificate: None },
            EnclaveError::ConflictingOutcome(spec.id),
        );
        f.refused(
            n,
            HubItem::Resolve { instance: spec.id, outcome: Outcome::Apply },
            EnclaveError::ConflictingOutcome(spec.id),
        );
    }
    let spec = f.run_to(19, true, true);
    for n in f.nodes {
        f.refused(
            n,
            HubItem::Refund { instance: spec.id, certificate: None },
            EnclaveError::ConflictingOutcome(spec.id),
        );
    }
}

/// A RESOLVE ends a lock only with the outcome the node's own host read from the contract:
/// the hub enclave follows its host's chain report, which an honest node does not take on
/// trust. Before that report, RESOLVE is refused and changes nothing; after it, the
/// contract's outcome is answered and the other one refused.
#[test]
fn resolve_waits_for_the_nodes_own_view_of_the_chain() {
    let mut f = fixture();
    let prepared = f.run_to(21, false, false);
    let committed = f.run_to(22, true, false);
    for spec in [&prepared, &committed] {
        for n in f.nodes {
            for outcome in [Outcome::Apply, Outcome::Revert] {
                f.refused(
                    n,
                    HubItem::Resolve { instance: spec.id, outcome },
                    EnclaveError::OutcomeNotOnChain(spec.id),
                );
            }
        }
        for n in f.nodes {
            let before = f.state(n);
            f.w.node_request(n, Request::OutcomeOnChain { instance: spec.id, outcome: Outcome::Revert });
            assert_ne!(f.state(n), before, "the contract's outcome ended the instance");
            let again = f.state(n);
            f.w.node_request(n, Request::OutcomeOnChain { instance: spec.id, outcome: Outcome::Revert });
            assert_eq!(f.state(n), again, "a repeated report changes nothing");
            let err = f.w.nodes[n]
                .enclave
                .handle(f.w.now, Request::OutcomeOnChain { instance: spec.id, outcome: Outcome::Apply })
                .unwrap_err();
            assert_eq!(err, EnclaveError::ConflictingOutcome(spec.id));
            assert_eq!(f.state(n), again);
            assert_eq!(
                f.accepted(n, HubItem::Resolve { instance: spec.id, outcome: Outcome::Revert }),
                NodeItem::Finished { instance: spec.id, outcome: Outcome::Revert }
            );
            f.refused(
                n,
                HubItem::Resolve { instance: spec.id, outcome: Outcome::Apply },
                EnclaveError::ConflictingOutcome(spec.id),
            );
        }
    }
}

#[test]
fn multi_hop_refund_after_commit_is_refused_by_node_and_hub() {
    let mut f = fixture();
    let spec = f.run_to(20, true, false);
    for n in f.nodes {
        f.refused(
            n,
            HubItem::Refund { instance: spec.id, certificate: None },
            EnclaveError::RefundAfterCommit(spec.id),
        );
    }
    // The coordinator refuses to authorize it in the first place.
    let mut w = teepay_sim::scenarios::three_hop();
    let id = w.instances[0];
    // Deliver PREPAREs and PREPARED acks until the hub has sent COMMIT.
    while w.hub.coordinator.instance(id).unwrap().phase == teepay_coordinator::HubPhase::None {
        w.apply(&teepay_sim::Action::Deliver(0)).unwrap();
    }
    let Response::RefundRequest(req) = w.node_request(0, Request::RequestRefund { instance: id }) else {
        panic!()
    };
    let before = w.hub.coordinator.inspect().clone();
    assert_eq!(w.hub.coordinator.on_refund_request(w.now, &req), Err(HubError::RefundAfterCommit(id)));
    assert_eq!(*w.hub.coordinator.inspect(), before);
}

#[test]
fn round_messages_after_eject_are_refused() {
    let mut f = fixture();
    let spec = f.run_to(21, false, false);
    let hop1 = f.nodes[1];
    let channel = spec.legs[0].hops[1].channel;
    let Response::ChannelState(signed) = f.w.node_request(hop1, Request::SignClose { channel }) else {
        panic!()
    };
    assert_eq!(signed.state.locks.len(), 1, "an eject carries the lock");
    f.refused(
        hop1,
        HubItem::Commit { instance: spec.id, prepared_acks: [0; 32], peer_acks: vec![] },
        EnclaveError::InstanceEjected(spec.id),
    );
    // Nothing more is ever signed for that channel; the same state can be fetched again.
    let before = f.state(hop1);
    assert_eq!(
        f.w.nodes[hop1].enclave.handle(0, Request::SignClose { channel }).unwrap_err(),
        EnclaveError::ChannelClosed(channel)
    );
    let Response::ChannelState(again) = f.w.node_request(hop1, Request::ClosingState { channel }) else {
        panic!()
    };
    assert_eq!(again, signed);
    assert_eq!(f.state(hop1), before);
}

#[test]
fn swap_locked_channel_cannot_be_closed() {
    let mut w = teepay_sim::scenarios::swap_2chain_4party();
    while !w.network.is_empty() && w.nodes[0].enclave.inspect().channels.values().all(|c| c.locks.is_empty())
    {
        w.apply(&teepay_sim::Action::Deliver(0)).unwrap();
    }
    let channel = *w.nodes[0].enclave.inspect().channels.iter().find(|(_, c)| !c.locks.is_empty()).unwrap().0;
    let before = w.nodes[0].enclave.inspect().clone();
    let lock = before.channels[&channel].locks[0].clone();
    assert!(
        lock.deadline > teepay_coordinator::DAY_MS,
        "a swap lock's deadline lies a configured margin ahead"
    );
    assert_eq!(
        w.nodes[0].enclave.handle(lock.deadline - 1, Request::SignClose { channel }).unwrap_err(),
        EnclaveError::SwapLocked { channel, until: lock.deadline }
    );
    assert_eq!(*w.nodes[0].enclave.inspect(), before);

    // Past its deadline the lock goes into a closing state, naming the hub and the deadline
    // (in the contract's seconds): the contract settles it by certificate or REVERT claim.
    let Response::ChannelState(signed) =
        w.nodes[0].enclave.handle(lock.deadline, Request::SignClose { channel }).unwrap().response
    else {
        panic!("SignClose answers a state")
    };
    let swap_lock = &signed.state.locks[0];
    assert_eq!(swap_lock.kind, InstanceKind::CrossChain);
    assert_eq!(swap_lock.hub, w.hub.coordinator.address());
    assert_eq!(swap_lock.deadline, lock.deadline.div_ceil(1000));
}

#[test]
fn stale_tampered_and_rolled_back_blobs_are_refused() {
    use teepay_types::{SealError, SealedLog};
    let mut f = fixture();
    let node = f.nodes[1];
    let old_log = f.w.nodes[node].sealed.clone();
    f.run_to(22, false, false);
    let platform = f.w.nodes[node].enclave.platform().clone();
    let log = f.w.nodes[node].sealed.clone();
    assert!(log.delta_count() > 0, "the run sealed deltas");
    // Rolling back to an older log (before the PREPARED ack) is refused.
    let err = teepay_enclave::NodeEnclave::restore(platform.clone(), &old_log).unwrap_err();
    assert!(matches!(err, EnclaveError::Seal(SealError::Stale { .. })), "{err:?}");
    // So is the current log without its newest delta.
    let blobs: Vec<Vec<u8>> = log.blobs().map(<[u8]>::to_vec).collect();
    let truncated = SealedLog::from_blobs(blobs[..blobs.len() - 1].iter().cloned()).unwrap();
    let err = teepay_enclave::NodeEnclave::restore(platform.clone(), &truncated).unwrap_err();
    assert!(matches!(err, EnclaveError::Seal(SealError::Stale { .. })), "{err:?}");
    // A tampered delta is refused.
    let mut tampered = blobs.clone();
    let last = tampered.last_mut().unwrap();
    let mid = last.len() / 2;
    last[mid] ^= 1;
    let err =
        teepay_enclave::NodeEnclave::restore(platform.clone(), &SealedLog::from_blobs(tampered).unwrap())
            .unwrap_err();
    assert_eq!(err, EnclaveError::Seal(SealError::Tampered));
    // The latest log restores exactly the acknowledged state.
    let restored = teepay_enclave::NodeEnclave::restore(platform, &log).unwrap();
    assert_eq!(restored.inspect(), f.w.nodes[node].enclave.inspect());
}

#[test]
fn hub_refuses_forged_acks_and_unattested_participants() {
    let mut w = teepay_sim::scenarios::three_hop();
    w.apply(&teepay_sim::Action::Deliver(0)).unwrap();
    let teepay_sim::Envelope::ToHub(mut ack) = w.network.last().unwrap().clone() else { panic!() };
    ack.auth.bytes_mut()[5] ^= 1;
    let before = w.hub.coordinator.inspect().clone();
    assert_eq!(w.hub.coordinator.on_ack(w.now, &ack).unwrap_err(), HubError::BadSignature(ack.ack.node));
    assert_eq!(*w.hub.coordinator.inspect(), before);
    // A route through a node the hub never admitted.
    let stranger = SigningKey::from_entropy([0x31; 32]).unwrap();
    let mut leg = w.route(CHAIN_1, &[0, 1], 5).unwrap();
    leg.hops[0].to = stranger.address();
    let Response::Order(order) = w.node_request(
        0,
        Request::CreatePayment {
            chain: CHAIN_1,
            asset: teepay_types::Asset::Native,
            payee: stranger.address(),
            amount: Amount(5),
            max_fee: Amount(0),
            expires_at: 99,
        },
    ) else {
        panic!()
    };
    let err =
        w.hub.coordinator.create_instance(0, InstanceKind::MultiHop, vec![leg], vec![order]).unwrap_err();
    assert_eq!(err, HubError::UnattestedNode(stranger.address()));
    assert_eq!(*w.hub.coordinator.inspect(), before);
}

#[test]
fn hub_refuses_impossible_chain_outcomes() {
    let mut w = teepay_sim::scenarios::three_hop();
    let id = w.instances[0];
    let before = w.hub.coordinator.inspect().clone();
    // APPLY before any COMMIT was issued cannot have happened on-chain.
    assert_eq!(
        w.hub.coordinator.on_chain_outcome(w.now, id, Outcome::Apply),
        Err(HubError::InconsistentOutcome(id))
    );
    assert_eq!(*w.hub.coordinator.inspect(), before);
}

#[test]
fn malformed_wire_bytes_are_refused() {
    use teepay_types::{DecodeError, SignedHubBatch, decode, encode};
    let f = fixture();
    let batch = HubBatch {
        hub: f.hub.address(),
        node: f.w.address(0),
        items: vec![HubItem::Confirm { instance: InstanceId([1; 32]), certificate: None }],
    }
    .sign(&f.hub);
    let bytes = encode(&batch);
    assert_eq!(decode::<SignedHubBatch>(&bytes).unwrap(), batch);
    assert_eq!(decode::<SignedHubBatch>(&[]), Err(DecodeError::Empty));
    assert_eq!(decode::<SignedHubBatch>(&[9, 0]), Err(DecodeError::Version(9)));
    assert!(matches!(decode::<SignedHubBatch>(&bytes[..bytes.len() - 1]), Err(DecodeError::Malformed(_))));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(decode::<SignedHubBatch>(&trailing), Err(DecodeError::Malformed(_))));
    let mut bad_tag = bytes;
    let item_tag = 1 + 20 + 20 + 4; // version, hub, node, item count
    bad_tag[item_tag] = 200;
    assert!(matches!(decode::<SignedHubBatch>(&bad_tag), Err(DecodeError::Malformed(_))));
}

/// Session MACs (DESIGN §6 fast path): the session key is derived at attestation, from the
/// public key the hub's quote carries, and equals the hub's side; a MAC under another key is
/// refused without a state change; a MAC'd batch (even the first) is answered with a MAC, a
/// signed one with a signature; a quote whose key is not its address's is refused.
#[test]
fn sessions_are_derived_at_attestation_and_macs_need_the_right_key() {
    let mut f = fixture();
    let node = f.nodes[1];
    let me = f.w.address(node);
    let hub_addr = f.hub.address();
    let batch = |items| HubBatch { hub: hub_addr, node: me, items };
    let session = f.state(node).hub_session.expect("derived when the hub was attested");
    let Response::Report(report) = f.w.node_request(node, Request::Report { chain: ChainId(0) }) else {
        panic!()
    };
    let (peer, hub_side) = f.hub.session_with(&report.public_key).unwrap();
    assert_eq!((peer, hub_side), (me, session), "both ends derive the same key from the quotes");

    let before = f.state(node);
    let wrong_key =
        batch(vec![HubItem::Refund { instance: InstanceId([1; 32]), certificate: None }]).mac(&[9; 32]);
    let err = f.w.nodes[node].enclave.handle(0, Request::HubBatch(wrong_key)).unwrap_err();
    assert_eq!(err, EnclaveError::BadHubSignature);
    assert_eq!(f.state(node), before);

    // The very first batch may be MAC'd: it is accepted and answered with a MAC.
    let out = f.w.nodes[node].enclave.handle(0, Request::HubBatch(batch(vec![]).mac(&session))).unwrap();
    assert!(out.sealed.is_some(), "the hub's use of the session is sealed before anything leaves");
    let spec = f.run_to(3, false, false);
    let out = f.w.nodes[node]
        .enclave
        .handle(
            0,
            Request::HubBatch(
                batch(vec![HubItem::Refund { instance: spec.id, certificate: None }]).mac(&session),
            ),
        )
        .unwrap();
    let Response::Batch(result) = out.response else { panic!() };
    let ack = result.ack.expect("answered");
    assert_eq!(ack.auth, teepay_types::Auth::Mac(teepay_types::session_mac(&session, &ack.ack.digest())));
    // A signed batch is answered with a signature.
    let out = f.w.nodes[node]
        .enclave
        .handle(
            0,
            Request::HubBatch(
                batch(vec![HubItem::Refund { instance: spec.id, certificate: None }]).sign(&f.hub),
            ),
        )
        .unwrap();
    let Response::Batch(result) = out.response else { panic!() };
    assert!(result.ack.expect("answered").is_signed_by(me));

    // A quote whose public key belongs to another key than its address.
    let other = SigningKey::from_entropy([0x55; 32]).unwrap();
    let mut report = Report::of(&f.hub, HUB_MEASUREMENT, ChainId(0));
    report.public_key = other.public_key();
    let before = f.state(node);
    let err = f.w.nodes[node].enclave.handle(0, Request::AttestHub { quote: report.attest(&f.w.authority) });
    assert_eq!(err.unwrap_err(), EnclaveError::Quote(teepay_types::QuoteError::KeyMismatch));
    assert_eq!(f.state(node), before);
}

/// The hub's side: every node's session exists from its registration, so even round one is
/// MAC'd and answered with a MAC; a MAC under another key is refused unchanged; in signature
/// mode every batch is signed.
fn first_ack_then_refund_batch(
    mode: teepay_types::RoundAuth,
) -> (teepay_sim::World, teepay_types::SignedHubBatch) {
    let mut w = teepay_sim::scenarios::three_hop();
    let teepay_sim::Envelope::ToNode { batch: first, .. } = w.network[0].clone() else { panic!() };
    assert!(matches!(first.auth, teepay_types::Auth::Mac(_)), "round one is MAC'd");
    w.hub.coordinator.set_round_auth(mode);
    w.apply(&teepay_sim::Action::Deliver(0)).unwrap();
    let teepay_sim::Envelope::ToHub(ack) = w.network.last().unwrap().clone() else { panic!() };
    assert!(matches!(ack.auth, teepay_types::Auth::Mac(_)), "a MAC answers a MAC");
    let before = w.hub.coordinator.inspect().clone();
    let forged = ack.ack.clone().mac(&[5; 32]);
    assert_eq!(w.hub.coordinator.on_ack(w.now, &forged).unwrap_err(), HubError::BadSignature(ack.ack.node));
    assert_eq!(*w.hub.coordinator.inspect(), before);
    w.hub.coordinator.on_ack(w.now, &ack).unwrap();
    // Past the PREPARE timeout: a REFUND goes to every participant.
    let later = w.now + 1_000;
    w.hub.coordinator.tick(later);
    let flush = w.hub.coordinator.flush();
    let node = ack.ack.node;
    let next = flush.batches.into_iter().find(|b| b.batch.node == node).expect("a REFUND for the node");
    (w, next)
}

#[test]
fn hub_macs_from_registration_and_never_in_signature_mode() {
    let (w, next) = first_ack_then_refund_batch(teepay_types::RoundAuth::SessionMacs);
    assert!(w.hub.coordinator.inspect().sessions.contains_key(&next.batch.node));
    assert!(matches!(next.auth, teepay_types::Auth::Mac(_)));
    let (w, next) = first_ack_then_refund_batch(teepay_types::RoundAuth::Signatures);
    assert!(next.is_signed_by(w.hub.coordinator.address()));
}

/// The payer's next payment order in `w` (three_hop: node 0 pays node 3).
fn next_order(w: &mut World) -> SignedOrder {
    let request = Request::CreatePayment {
        chain: CHAIN_1,
        asset: teepay_types::Asset::Native,
        payee: w.address(3),
        amount: Amount(5),
        max_fee: Amount(5),
        expires_at: w.now + 1_000,
    };
    let Response::Order(order) = w.node_request(0, request) else { panic!() };
    order
}

/// Payment orders are signed until the hub has MAC'd a batch to the payer (proof it holds
/// the session durably), MAC'd after; the hub accepts a MAC only under its session with the
/// order's owner, and refuses a forged one without changing its state.
#[test]
fn payment_orders_are_macd_once_the_hub_uses_the_session() {
    let mut w = teepay_sim::scenarios::three_hop();
    let first = w.hub.coordinator.instance(w.instances[0]).unwrap().spec.orders[0].clone();
    assert!(first.is_signed(), "no session yet: the first order is signed");
    w.drain().unwrap();
    assert!(w.nodes[0].enclave.inspect().hub_uses_session);
    let order = next_order(&mut w);
    assert!(matches!(order.auth, teepay_types::Auth::Mac(_)), "{order:?}");

    let leg = w.route(CHAIN_1, &[0, 1, 2, 3], 5).unwrap();
    let payer = w.address(0);
    let before = w.hub.coordinator.inspect().clone();
    let mut forged = order.clone();
    forged.auth.bytes_mut()[0] ^= 1;
    let hop1_session = w.nodes[1].enclave.inspect().hub_session.expect("hop1 has a session");
    let foreign_session = order.order.clone().mac(&hop1_session);
    for bad in [forged, foreign_session] {
        let err =
            w.hub.coordinator.create_instance(w.now, InstanceKind::MultiHop, vec![leg.clone()], vec![bad]);
        assert_eq!(err, Err(HubError::Spec(teepay_types::SpecError::UnsignedOrder(payer))));
        assert_eq!(*w.hub.coordinator.inspect(), before, "a refused order changes nothing");
    }

    w.start(InstanceKind::MultiHop, vec![leg], vec![order]).unwrap();
    w.drain().unwrap();
    w.check_final().unwrap();
    assert_eq!(
        w.hub.coordinator.instance(*w.instances.last().unwrap()).unwrap().phase.outcome(),
        Some(Outcome::Apply)
    );
}

/// A hub that signs every round never shows the session in use: orders stay signed.
#[test]
fn payment_orders_stay_signed_with_a_signing_hub() {
    let mut w = World::new(3);
    w.hub.coordinator.set_round_auth(teepay_types::RoundAuth::Signatures);
    let mut w = teepay_sim::scenarios::three_hop_in(w);
    w.drain().unwrap();
    assert!(!w.nodes[0].enclave.inspect().hub_uses_session);
    assert!(next_order(&mut w).is_signed());
}

/// The hub forgets complete instances once their deadline has passed (never open ones),
/// and its index of open and complete instances survives a restart from the sealed log.
#[test]
fn hub_prunes_only_complete_instances_past_their_deadline() {
    let mut w = teepay_sim::scenarios::three_hop();
    w.drain().unwrap();
    let done = w.instances[0];
    let open = w.pay(CHAIN_1, &[0, 1, 2, 3], 5, 5).unwrap();
    let deadline = w.hub.coordinator.instance(done).unwrap().spec.deadline;
    assert_eq!(w.hub.coordinator.prune_complete(deadline), 0, "not yet past the deadline");
    let far = w.hub.coordinator.instance(open).unwrap().spec.deadline + 1;
    assert_eq!(w.hub.coordinator.prune_complete(far), 1);
    assert!(w.hub.coordinator.instance(done).is_none());
    assert!(w.hub.coordinator.instance(open).is_some(), "an open instance is never pruned");
    assert!(w.hub.coordinator.index_is_consistent());
    w.flush_hub();
    w.apply(&teepay_sim::Action::Crash(teepay_sim::Target::Hub)).unwrap();
    assert!(w.hub.coordinator.instance(done).is_none(), "the prune was sealed and replayed");
    assert!(w.hub.coordinator.index_is_consistent());
}

/// Issuing an order is sealed lazily (with the next durable change): a crash right after
/// loses the order's record, and the node then refuses the instance carrying it — the
/// payment is refunded, never paid — while everything acknowledged survives.
#[test]
fn an_order_lost_in_a_crash_is_refused_never_paid() {
    let mut w = teepay_sim::scenarios::three_hop();
    let id = w.instances[0];
    assert!(!w.nodes[0].enclave.deferred().is_empty(), "the order is not sealed yet");
    let orders_before = w.nodes[0].enclave.inspect().orders.len();
    w.apply(&teepay_sim::Action::Crash(teepay_sim::Target::Node(0))).unwrap();
    assert_eq!(w.nodes[0].enclave.inspect().orders.len(), orders_before - 1, "its record is gone");
    w.drain().unwrap();
    w.check_final().unwrap();
    let instance = w.hub.coordinator.instance(id).unwrap();
    assert_eq!(instance.phase.outcome(), Some(Outcome::Revert));
    // The next order (its nonce rolled back with the lost record) is paid normally.
    let again = w.pay(CHAIN_1, &[0, 1, 2, 3], 10, 5).unwrap();
    assert!(!w.nodes[0].enclave.deferred().is_empty());
    w.drain().unwrap();
    w.check_final().unwrap();
    assert_eq!(w.hub.coordinator.instance(again).unwrap().phase.outcome(), Some(Outcome::Apply));
    assert!(w.nodes[0].enclave.deferred().is_empty(), "sealed with the PREPARE that used it");
}

/// Issue 14 item 3: locks per channel are capped (a close carries every lock, and its gas
/// grows with them). A crafted hub fills a channel of the payee with PREPAREs it never
/// commits; the PREPARE one past the cap is NACKed with `TooManyLocks`, changing nothing.
#[test]
fn locks_per_channel_are_capped() {
    let mut f = fixture();
    let (payer, payee) = (f.nodes[0], f.nodes[1]);
    let channel = f.w.open_channel(
        CHAIN_1,
        payer,
        payee,
        10_000,
        0,
        teepay_enclave::FeePolicy::default(),
        teepay_enclave::FeePolicy::default(),
    );
    let order = f.order(1, 0);
    let hub = f.hub.address();
    let spec = |i: usize| {
        let seq = 1_000 + i as u64;
        let hop = teepay_types::Hop {
            channel,
            from: f.w.address(payer),
            to: f.w.address(payee),
            amount: Amount(1),
        };
        teepay_types::InstanceSpec {
            id: teepay_types::instance_id(hub, seq),
            seq,
            kind: InstanceKind::MultiHop,
            legs: vec![teepay_types::Leg {
                chain: CHAIN_1,
                asset: teepay_types::Asset::Native,
                hops: vec![hop],
            }],
            orders: vec![order.clone()],
            deadline: 100,
            lock_deadline: 0,
            peer_acks: false,
        }
    };
    let specs: Vec<_> = (0..=teepay_types::MAX_LOCKS_PER_CHANNEL).map(spec).collect();
    for chunk in specs[..teepay_types::MAX_LOCKS_PER_CHANNEL].chunks(100) {
        let items = chunk.iter().cloned().map(HubItem::Prepare).collect();
        let result = f.send(payee, items).unwrap();
        assert!(result.results.iter().all(|r| matches!(r, Ok(NodeItem::Prepared { .. }))));
    }
    let held = &f.state(payee).channels[&channel];
    assert_eq!(held.locks.len(), teepay_types::MAX_LOCKS_PER_CHANNEL);
    let last = specs[teepay_types::MAX_LOCKS_PER_CHANNEL].clone();
    f.refused(payee, HubItem::Prepare(last), EnclaveError::Refused(NackReason::TooManyLocks));
}

/// A close's gas limit must cover its locks (`close_gas`): a host that asks for less is
/// refused before anything is signed, so the channel stays open and usable.
#[test]
fn a_close_with_too_little_gas_for_its_locks_is_refused_unsigned() {
    let mut f = fixture();
    let spec = f.run_to(40, false, false); // hop1 holds a PREPARED lock on two channels
    let node = f.nodes[1];
    let channel = spec.legs[0].hops[0].channel;
    let before = f.state(node);
    let gas = teepay_types::GasParams {
        nonce: 0,
        gas_limit: teepay_types::close_gas(0),
        max_fee_per_gas: 1,
        max_priority_fee_per_gas: 1,
    };
    let err = f.w.nodes[node].enclave.handle(0, Request::BuildClose { channel, gas }).unwrap_err();
    assert_eq!(
        err,
        EnclaveError::GasTooLow { needed: teepay_types::close_gas(1), got: teepay_types::close_gas(0) }
    );
    assert_eq!(f.state(node), before);
    let enough = teepay_types::GasParams { gas_limit: teepay_types::close_gas(1), ..gas };
    assert!(f.w.nodes[node].enclave.handle(0, Request::BuildClose { channel, gas: enough }).is_ok());
}

/// Issue 14 item 5: a refunded order is never payable again. The payer's enclave marks it
/// refunded for good (a replayed PREPARE carrying it is NACKed), and the hub enclave refuses
/// to start a second instance with any order an instance already carried.
#[test]
fn a_refunded_order_is_never_paid_later() {
    let mut f = fixture();
    let spec = f.run_to(41, false, false);
    for n in f.nodes {
        f.accepted(n, HubItem::Refund { instance: spec.id, certificate: None });
    }
    let order_nonce = spec.orders[0].order.nonce();
    assert!(!f.state(f.nodes[0]).orders.contains_key(&order_nonce), "a refunded order's record is dropped");
    let mut replay = spec.clone();
    f.respec(&mut replay, 42);
    f.refused(f.nodes[0], HubItem::Prepare(replay), EnclaveError::Refused(NackReason::OrderAlreadyUsed));

    // The hub enclave: the same signed order again, after its instance was refunded.
    let mut w = teepay_sim::scenarios::three_hop();
    let first = w.instances[0];
    let spec = w.hub.coordinator.instance(first).unwrap().spec.clone();
    w.hub.coordinator.tick(spec.deadline + 1); // nobody PREPAREd in time: refunded
    assert_eq!(
        w.hub.coordinator.instance(first).unwrap().phase,
        teepay_coordinator::HubPhase::RefundAuthorized
    );
    w.flush_hub();
    let before = w.hub.coordinator.inspect().clone();
    let again = w.hub.coordinator.create_instance(
        w.now,
        InstanceKind::MultiHop,
        spec.legs.clone(),
        spec.orders.clone(),
    );
    assert_eq!(again, Err(HubError::OrderReused(spec.orders[0].order.digest())));
    assert_eq!(*w.hub.coordinator.inspect(), before, "a refused instance changes nothing");
    // An order whose owner set its expiry far away is refused: used orders stay bounded.
    let far = Request::CreatePayment {
        chain: CHAIN_1,
        asset: teepay_types::Asset::Native,
        payee: w.address(3),
        amount: Amount(1),
        max_fee: Amount(5),
        expires_at: w.now + teepay_coordinator::MAX_ORDER_LIFETIME + 1,
    };
    let Response::Order(far) = w.node_request(0, far) else { panic!() };
    let before = w.hub.coordinator.inspect().clone();
    let refused = w.hub.coordinator.create_instance(
        w.now,
        InstanceKind::MultiHop,
        spec.legs.clone(),
        vec![far.clone()],
    );
    assert_eq!(refused, Err(HubError::OrderLivesTooLong(far.order.digest())));
    assert_eq!(*w.hub.coordinator.inspect(), before);
    // Remembered until well after the order expired, then forgotten (bounded state).
    let expiry = spec.orders[0].order.expires_at();
    w.hub.coordinator.prune_complete(expiry + teepay_coordinator::ORDER_EXPIRY_MARGIN);
    assert_eq!(w.hub.coordinator.inspect().used_orders.len(), 1);
    w.hub.coordinator.prune_complete(expiry + teepay_coordinator::ORDER_EXPIRY_MARGIN + 1);
    assert!(w.hub.coordinator.inspect().used_orders.is_empty());
    assert!(w.hub.coordinator.index_is_consistent());
}

/// Issue 14 item 12: a finished instance's record is pruned once past its retention (on a
/// batch that changes the state anyway), the replay floor rises past it, and its replayed
/// PREPARE is still refused whatever time the host claims; a REFUND that overtook its
/// PREPARE is remembered only as long; an id that is not the hub's `seq`-th is malformed.
#[test]
fn finished_records_are_pruned_and_replays_of_them_still_refused() {
    let mut f = fixture();
    let hop1 = f.nodes[1];
    let spec = f.run_to(50, true, true);
    assert!(f.state(hop1).instances.contains_key(&spec.id));

    // A REFUND that overtook its PREPARE: recorded (so the PREPARE cannot lock later) and
    // pruned like any finished record; a replay of it changes nothing and seals nothing.
    let unseen = teepay_types::instance_id(f.hub.address(), 77);
    let r = f.send(hop1, vec![HubItem::Refund { instance: unseen, certificate: None }]).unwrap();
    assert_eq!(r.results, vec![Ok(NodeItem::Finished { instance: unseen, outcome: Outcome::Revert })]);
    let (before, blobs) = (f.state(hop1), f.w.nodes[hop1].sealed.blobs().count());
    f.send(hop1, vec![HubItem::Refund { instance: unseen, certificate: None }]).unwrap();
    assert_eq!(f.state(hop1), before, "a replayed REFUND changes nothing");
    assert_eq!(f.w.nodes[hop1].sealed.blobs().count(), blobs, "and seals nothing");

    // Past the retention, the next PREPARE this node takes prunes the old record.
    f.w.now += teepay_enclave::FINISHED_RETENTION + 1;
    let order = f.order(10, 5);
    let mut next = f.spec(51, f.leg(10), order);
    next.deadline = f.w.now + 100;
    assert!(matches!(f.accepted(hop1, HubItem::Prepare(next)), NodeItem::Prepared { .. }));
    let state = f.state(hop1);
    assert!(!state.instances.contains_key(&spec.id), "pruned");
    assert!(!state.instances.contains_key(&unseen), "pruned too");
    assert_eq!(state.replay_floor, 51, "an unseen instance's unknown seq does not raise the floor");
    // Its PREPARE replayed, at a time the host makes up: refused, nothing changes.
    f.w.now = 10;
    f.refused(hop1, HubItem::Prepare(spec.clone()), EnclaveError::InstanceReplayed(spec.id));
    // The same spec under an id the hub could not have given it.
    let mut forged = spec;
    forged.seq = 60;
    f.refused(hop1, HubItem::Prepare(forged), EnclaveError::Refused(NackReason::MalformedInstance));
}
