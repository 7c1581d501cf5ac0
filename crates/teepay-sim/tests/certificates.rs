//! Decision certificates at the node enclave (DESIGN §10): every participant of a swap keeps
//! the hub's signed decision, and a node that never got the hub's CONFIRM ends its swap locks
//! with a certificate handed to it by anyone (its host read it from a contract, a peer passed
//! it on), never with a forged one.

use teepay_enclave::{EnclaveError, Request, Response};
use teepay_sim::scenarios::{CHAIN_1, swap_2chain_4party};
use teepay_sim::{Action, Envelope, World};
use teepay_types::{
    DecisionCertificate, GasParams, HubItem, InstanceId, InstanceKind, Outcome, SigningKey,
    record_decision_call,
};

/// Delivers every message except the CONFIRMs meant for `held`; returns the swap's id.
fn run_holding_confirm(w: &mut World, held: usize) -> InstanceId {
    let is_held = |e: &Envelope| {
        matches!(e, Envelope::ToNode { node, batch } if *node == held
            && batch.batch.items.iter().any(|i| matches!(i, HubItem::Confirm { .. })))
    };
    while let Some(i) = w.network.iter().position(|e| !is_held(e)) {
        w.apply(&Action::Deliver(i)).expect("no invariant breaks");
    }
    let (id, _) = w.hub.coordinator.inspect().instances.iter().next().expect("the swap exists");
    *id
}

fn certificate(
    w: &mut World,
    node: usize,
    instance: InstanceId,
) -> Result<DecisionCertificate, EnclaveError> {
    match w.nodes[node].enclave.handle(w.now, Request::Certificate { instance })?.response {
        Response::Certificate(cert) => Ok(cert),
        other => panic!("Certificate answers a certificate, got {other:?}"),
    }
}

#[test]
fn every_participant_keeps_the_hubs_certificate_and_can_post_it() {
    let mut w = swap_2chain_4party();
    let instance = run_holding_confirm(&mut w, usize::MAX);
    let hub = w.hub.coordinator.address();
    for node in 0..4 {
        let cert = certificate(&mut w, node, instance).expect("kept");
        assert!(cert.is_signed_by(hub));
        assert_eq!((cert.instance, cert.outcome), (instance, Outcome::Apply));
        let gas = GasParams { nonce: 0, gas_limit: 200_000, max_fee_per_gas: 1, max_priority_fee_per_gas: 1 };
        let out = w.nodes[node]
            .enclave
            .handle(w.now, Request::BuildRecordDecision { chain: CHAIN_1, instance, gas })
            .expect("builds recordDecision");
        assert!(out.sealed.is_none(), "posting a certificate changes nothing in the enclave");
        let Response::Transaction(tx) = out.response else { panic!("a transaction") };
        let input = record_decision_call(&cert);
        assert!(tx.raw.windows(input.len()).any(|w| w == input.as_slice()), "carries the certificate");
    }
    assert_eq!(
        certificate(&mut w, 0, InstanceId([9; 32])).unwrap_err(),
        EnclaveError::NoCertificate(InstanceId([9; 32]))
    );
}

#[test]
fn a_node_the_hubs_confirm_never_reached_settles_with_a_peers_certificate() {
    let mut w = swap_2chain_4party();
    let held = 3;
    let instance = run_holding_confirm(&mut w, held);
    let locked =
        |w: &World| w.nodes[held].enclave.inspect().channels.values().filter(|c| !c.locks.is_empty()).count();
    assert_eq!(locked(&w), 2, "dave's two swap locks wait for the decision");
    let hub = w.hub.coordinator.address();
    let before = w.nodes[held].enclave.inspect().clone();

    // A forged certificate (another key, naming the hub), one for an instance the node never
    // saw, and a multi-hop-style outcome for a key it does not follow: refused, nothing changes.
    let impostor = SigningKey::from_entropy([0x5a; 32]).unwrap();
    let mut forged = DecisionCertificate::sign(&impostor, instance, Outcome::Revert);
    forged.hub = hub;
    let refuse = |w: &mut World, cert: DecisionCertificate| {
        w.nodes[held].enclave.handle(w.now, Request::Decision(cert)).unwrap_err()
    };
    assert_eq!(refuse(&mut w, forged), EnclaveError::BadCertificate(instance));
    let own = DecisionCertificate::sign(&impostor, instance, Outcome::Revert);
    assert_eq!(refuse(&mut w, own), EnclaveError::BadCertificate(instance));
    let mut flipped = certificate(&mut w, 0, instance).unwrap();
    flipped.outcome = Outcome::Revert;
    assert_eq!(refuse(&mut w, flipped), EnclaveError::BadCertificate(instance));
    assert_eq!(*w.nodes[held].enclave.inspect(), before, "refusals change nothing");

    // The real certificate, passed on by alice: dave's locks apply, as on every other node.
    let cert = certificate(&mut w, 0, instance).unwrap();
    let out = w.nodes[held].enclave.handle(w.now, Request::Decision(cert.clone())).expect("accepted");
    assert!(
        out.sealed.is_some() || w.nodes[held].enclave.inspect() != &before,
        "the decision changed the state"
    );
    assert_eq!(locked(&w), 0, "every swap lock ended");
    assert_eq!(certificate(&mut w, held, instance).unwrap(), cert, "and dave keeps the certificate too");
    for (id, ch) in &w.nodes[held].enclave.inspect().channels {
        let peer = w.nodes.iter().position(|n| n.enclave.address() == ch.peer).unwrap();
        let theirs = &w.nodes[peer].enclave.inspect().channels[id];
        assert_eq!(
            (ch.balance_local, ch.balance_peer),
            (theirs.balance_peer, theirs.balance_local),
            "both views of the channel agree"
        );
    }
    // A repeat changes nothing; the hub's own CONFIRM, when it finally arrives, is answered.
    let out = w.nodes[held].enclave.handle(w.now, Request::Decision(cert)).expect("repeat");
    assert!(out.sealed.is_none());
    while !w.network.is_empty() {
        w.apply(&Action::Deliver(0)).expect("no invariant breaks");
    }
    assert!(w.hub.coordinator.inspect().instances[&instance].finished.len() == 4);
}

#[test]
fn a_swap_lock_is_signed_into_a_close_only_after_its_deadline() {
    let mut w = swap_2chain_4party();
    let held = 3;
    run_holding_confirm(&mut w, held);
    let (channel, deadline) = w.nodes[held]
        .enclave
        .inspect()
        .channels
        .iter()
        .find_map(|(id, c)| c.locks.first().map(|l| (*id, l.deadline)))
        .unwrap();
    let before = w.nodes[held].enclave.inspect().clone();
    let gas = GasParams { nonce: 0, gas_limit: 1_000_000, max_fee_per_gas: 1, max_priority_fee_per_gas: 1 };
    for request in [Request::SignClose { channel }, Request::BuildClaimRevert { channel, gas }] {
        assert_eq!(
            w.nodes[held].enclave.handle(deadline - 1, request).unwrap_err(),
            EnclaveError::SwapLocked { channel, until: deadline }
        );
    }
    assert_eq!(*w.nodes[held].enclave.inspect(), before);
    let out = w.nodes[held]
        .enclave
        .handle(deadline, Request::BuildClaimRevert { channel, gas })
        .expect("past the deadline the claim is built");
    assert!(matches!(out.response, Response::Transaction(_)));
    let Response::ChannelState(closing) =
        w.nodes[held].enclave.handle(deadline, Request::ClosingState { channel }).unwrap().response
    else {
        panic!("the closing state was signed with the claim")
    };
    assert_eq!(closing.state.locks[0].kind, InstanceKind::CrossChain);
    // A channel without a swap lock has nothing to claim.
    let free = *w.nodes[0].enclave.inspect().channels.keys().next().unwrap();
    assert_eq!(
        w.nodes[0].enclave.handle(deadline, Request::BuildClaimRevert { channel: free, gas }).unwrap_err(),
        EnclaveError::NoSwapLock(free)
    );
}

#[test]
fn the_hub_never_confirms_a_swap_after_its_deadline() {
    use teepay_types::NodeItem;
    let mut w = swap_2chain_4party();
    let committed = |e: &Envelope| matches!(e, Envelope::ToHub(ack) if ack.ack.items.iter().any(|i| matches!(i, NodeItem::Committed { .. })));
    while let Some(i) = w.network.iter().position(|e| !committed(e)) {
        w.apply(&Action::Deliver(i)).expect("no invariant breaks");
    }
    assert_eq!(w.network.len(), 4, "every participant's COMMITTED is in flight");
    let (&instance, record) = w.hub.coordinator.inspect().instances.iter().next().unwrap();
    // The acks arrive after the deadline: the hub refunds (nodes accept a swap's REFUND after
    // COMMIT), so no CONFIRM certificate is ever made close to the locks' deadline.
    w.now = record.spec.deadline + 1;
    while !w.network.is_empty() {
        w.apply(&Action::Deliver(0)).expect("no invariant breaks");
    }
    for node in 0..4 {
        let cert = certificate(&mut w, node, instance).expect("kept");
        assert_eq!(cert.outcome, Outcome::Revert);
        assert!(w.nodes[node].enclave.inspect().channels.values().all(|c| c.locks.is_empty()));
    }
}

#[test]
fn a_revert_claim_gets_the_gas_and_fee_limit_of_a_close_with_its_locks() {
    let mut w = swap_2chain_4party();
    let held = 3;
    run_holding_confirm(&mut w, held);
    let (channel, deadline) = w.nodes[held]
        .enclave
        .inspect()
        .channels
        .iter()
        .find_map(|(id, c)| c.locks.first().map(|l| (*id, l.deadline)))
        .unwrap();
    let locks = w.nodes[held].enclave.inspect().channels[&channel].locks.len();
    // A fee per gas at which a lock-free close spends the policy's whole limit: a claim
    // carrying locks needs more gas, and is allowed more fee, exactly as a close is.
    let limit = w.nodes[held].enclave.inspect().config.max_tx_fee.0;
    let fee = limit / u128::from(teepay_types::close_gas(0));
    let gas =
        |gas_limit| GasParams { nonce: 0, gas_limit, max_fee_per_gas: fee, max_priority_fee_per_gas: 1 };
    let too_little = gas(teepay_types::close_gas(0));
    assert!(matches!(
        w.nodes[held].enclave.handle(deadline, Request::BuildClaimRevert { channel, gas: too_little }),
        Err(EnclaveError::GasTooLow { .. })
    ));
    let enough = gas(teepay_types::close_gas(locks));
    assert!(u128::from(enough.gas_limit) * fee > limit, "above the limit of a lock-free transaction");
    w.nodes[held]
        .enclave
        .handle(deadline, Request::BuildClaimRevert { channel, gas: enough })
        .expect("a claim may spend what a close with the same locks may");
}
