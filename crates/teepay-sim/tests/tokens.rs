//! ERC-20 channels carry payments, swaps and invoices (DESIGN §11, issue 16): a leg moves
//! one asset over channels of that asset only. The world's hub is the real hub enclave fed
//! by a host that chooses the legs; where the host lies about them (a leg over another
//! asset's channels, a leg that says one asset and names another's channel), every node on
//! it refuses on its own, and the per-asset accounting of `check_final` holds either way.

use teepay_coordinator::RefundReason;
use teepay_enclave::{EnclaveError, InvoiceStatus, Request, Response};
use teepay_sim::scenarios::{CHAIN_1, CHAIN_2, TOKEN_1, TOKEN_2};
use teepay_sim::{Action, World};
use teepay_types::{
    Amount, Asset, FeePolicy, Hop, InstanceId, InstanceKind, Leg, NackReason, Order, Outcome, SignedOrder,
    Transfer,
};

/// payer → hop1 → hop2 → payee twice over on chain 1: a TOKEN_1 path (fee 2 per hop, in the
/// token) and an ether path beside it (fee 1).
fn world() -> (World, [usize; 4]) {
    let mut w = World::new(21);
    let nodes = ["payer", "hop1", "hop2", "payee"].map(|n| w.add_node(n));
    let [p, i1, i2, r] = nodes;
    let fee = |base| FeePolicy { base: Amount(base), ppm: 0 };
    for (asset, f) in [(TOKEN_1, 2), (Asset::Native, 1)] {
        w.open_channel_of(CHAIN_1, asset, p, i1, 1_000, 1_000, fee(0), fee(f));
        w.open_channel_of(CHAIN_1, asset, i1, i2, 1_000, 1_000, fee(f), fee(f));
        w.open_channel_of(CHAIN_1, asset, i2, r, 1_000, 1_000, fee(f), fee(0));
    }
    (w, nodes)
}

/// Delivers everything until `id` is decided and every message is through.
fn settle(w: &mut World, id: InstanceId) -> Outcome {
    for _ in 0..10 {
        while !w.network.is_empty() {
            w.apply(&Action::Deliver(0)).expect("no invariant breaks");
        }
        if let Some(outcome) = w.hub.coordinator.instance(id).and_then(|i| i.phase.outcome()) {
            while !w.network.is_empty() {
                w.apply(&Action::Deliver(0)).expect("no invariant breaks");
            }
            return outcome;
        }
        w.apply(&Action::Tick).expect("no invariant breaks");
    }
    panic!("the instance never ended")
}

/// What `node` holds of `asset` on `chain` in its open channels.
fn holds(w: &World, node: usize, chain: teepay_types::ChainId, asset: Asset) -> u128 {
    let state = w.nodes[node].enclave.inspect();
    state
        .channels
        .values()
        .filter(|c| c.chain == chain && c.token == asset.token())
        .map(|c| c.balance_local.0)
        .sum()
}

fn refund_reason(w: &World, id: InstanceId) -> Option<RefundReason> {
    w.hub.coordinator.instance(id).and_then(|i| i.refund_reason)
}

fn payment_order(w: &mut World, payer: usize, payee: usize, asset: Asset, amount: u128) -> SignedOrder {
    let request = Request::CreatePayment {
        chain: CHAIN_1,
        asset,
        payee: w.address(payee),
        amount: Amount(amount),
        max_fee: Amount(10),
        expires_at: w.now + 1_000,
    };
    let Response::Order(order) = w.node_request(payer, request) else { panic!("an order") };
    order
}

#[test]
fn a_token_payment_moves_the_token_and_leaves_ether_alone() {
    let (mut w, [p, i1, i2, r]) = world();
    let before: Vec<(u128, u128)> = [p, i1, i2, r]
        .iter()
        .map(|n| (holds(&w, *n, CHAIN_1, TOKEN_1), holds(&w, *n, CHAIN_1, Asset::Native)))
        .collect();
    let id = w.pay_of(CHAIN_1, TOKEN_1, &[p, i1, i2, r], 100, 10).expect("the hub starts it");
    assert_eq!(settle(&mut w, id), Outcome::Apply);
    let after: Vec<(u128, u128)> = [p, i1, i2, r]
        .iter()
        .map(|n| (holds(&w, *n, CHAIN_1, TOKEN_1), holds(&w, *n, CHAIN_1, Asset::Native)))
        .collect();
    // Two intermediaries at 2 each, paid in the token: 104 leaves the payer, 100 arrives.
    let moved: Vec<i128> = before.iter().zip(&after).map(|(b, a)| a.0 as i128 - b.0 as i128).collect();
    assert_eq!(moved, [-104, 2, 2, 100]);
    assert!(before.iter().zip(&after).all(|(b, a)| a.1 == b.1), "no ether moved: {before:?} → {after:?}");
    w.check_final().expect("per-asset conservation, no loss and consent hold");
}

/// The hub host routes the leg, so it could pay an intermediary in one asset and make it
/// forward another: every node checks each channel it holds in the leg against the leg's
/// asset, and the intermediary refuses.
#[test]
fn no_node_is_paid_in_one_asset_to_forward_another() {
    let (mut w, [p, i1, i2, r]) = world();
    let order = payment_order(&mut w, p, r, TOKEN_1, 100);
    // TOKEN_1 in (payer → hop1), ether out (hop1 → hop2 → payee).
    let token_leg = w.route_of(CHAIN_1, TOKEN_1, &[p, i1, i2, r], 100).unwrap();
    let ether_leg = w.route_of(CHAIN_1, Asset::Native, &[p, i1, i2, r], 100).unwrap();
    let mixed: Vec<Hop> = token_leg.hops[..1].iter().chain(&ether_leg.hops[1..]).cloned().collect();
    let leg = Leg { chain: CHAIN_1, asset: TOKEN_1, hops: mixed };
    let before = w.nodes.iter().map(|n| n.enclave.inspect().channels.clone()).collect::<Vec<_>>();
    let id = w.start(InstanceKind::MultiHop, vec![leg], vec![order]).expect("structurally valid");
    assert_eq!(settle(&mut w, id), Outcome::Revert);
    let Some(RefundReason::Nack(who, NackReason::WrongAsset)) = refund_reason(&w, id) else {
        panic!("refused for its asset: {:?}", refund_reason(&w, id))
    };
    assert!(
        [w.address(i1), w.address(i2), w.address(r)].contains(&who),
        "a node holding an ether hop refused"
    );
    let balances = |w: &World| {
        w.nodes
            .iter()
            .map(|n| n.enclave.inspect().channels.values().map(|c| c.balance_local).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let before_balances: Vec<Vec<Amount>> =
        before.iter().map(|chs| chs.values().map(|c| c.balance_local).collect()).collect();
    assert_eq!(balances(&w), before_balances, "nothing moved");
    w.check_final().expect("invariants hold");
}

/// A leg that says ether but runs over the token's channels (or the reverse) is refused by
/// every node on it; a leg of the right channels whose asset differs from the payer's order
/// is refused by the payer (its order's terms).
#[test]
fn a_leg_is_refused_unless_its_asset_its_channels_and_the_order_agree() {
    let (mut w, [p, i1, i2, r]) = world();
    // Claims ether, runs over TOKEN_1 channels; the order is in ether.
    let order = payment_order(&mut w, p, r, Asset::Native, 100);
    let mut leg = w.route_of(CHAIN_1, TOKEN_1, &[p, i1, i2, r], 100).unwrap();
    leg.asset = Asset::Native;
    let id = w.start(InstanceKind::MultiHop, vec![leg], vec![order]).unwrap();
    assert_eq!(settle(&mut w, id), Outcome::Revert);
    assert!(matches!(refund_reason(&w, id), Some(RefundReason::Nack(_, NackReason::WrongAsset))));

    // The right channels for the leg's asset, but the payer ordered the other asset.
    let order = payment_order(&mut w, p, r, TOKEN_1, 100);
    let leg = w.route_of(CHAIN_1, Asset::Native, &[p, i1, i2, r], 100).unwrap();
    let id = w.start(InstanceKind::MultiHop, vec![leg], vec![order]).unwrap();
    assert_eq!(settle(&mut w, id), Outcome::Revert);
    assert_eq!(refund_reason(&w, id), Some(RefundReason::Nack(w.address(p), NackReason::OrderTermsMismatch)));
    w.check_final().expect("invariants hold");
}

/// Each party's enclave signs its intent again (same terms, a new nonce): orders are used once.
fn reissue(w: &mut World, orders: &[SignedOrder]) -> Vec<SignedOrder> {
    orders
        .iter()
        .map(|o| {
            let Order::Swap(i) = &o.order else { panic!("swap intents") };
            let party = w.node_index(i.party).unwrap();
            let request = Request::CreateSwapIntent {
                gives: i.gives.clone(),
                receives: i.receives.clone(),
                expires_at: w.now + 1_000,
            };
            let Response::Order(order) = w.node_request(party, request) else { panic!("an order") };
            order
        })
        .collect()
}

/// A token-for-ether swap across two chains applies atomically; a hub host that swaps in a
/// worthless token for the ether a party asked for gets the swap refused by that party.
#[test]
fn a_token_for_ether_swap_applies_and_a_substituted_asset_is_refused() {
    let mut w = World::new(22);
    let [a, b] = ["alice", "bob"].map(|n| w.add_node(n));
    let zero = FeePolicy::default();
    w.open_channel_of(CHAIN_1, TOKEN_1, a, b, 500, 500, zero, zero);
    w.open_channel(CHAIN_2, a, b, 500, 500, zero, zero);
    w.open_channel_of(CHAIN_2, TOKEN_2, a, b, 500, 500, zero, zero);
    // Alice gives 100 TOKEN_1 on chain 1 for Bob's 30 ether on chain 2.
    let id =
        w.swap_of(&[(CHAIN_1, TOKEN_1, vec![a, b], 100), (CHAIN_2, Asset::Native, vec![b, a], 30)]).unwrap();
    assert_eq!(settle(&mut w, id), Outcome::Apply);
    assert_eq!(holds(&w, a, CHAIN_1, TOKEN_1), 400);
    assert_eq!(holds(&w, a, CHAIN_2, Asset::Native), 530);
    assert_eq!(holds(&w, a, CHAIN_2, TOKEN_2), 500, "the other token stays put");

    // Same intents again, but the host routes Bob's give over the TOKEN_2 channel and labels
    // the leg TOKEN_2: Bob's own intent says ether, and so does Alice's receive.
    let orders = w.hub.coordinator.instance(id).unwrap().spec.orders.clone();
    let fresh = reissue(&mut w, &orders);
    let mut legs = vec![
        w.route_of(CHAIN_1, TOKEN_1, &[a, b], 100).unwrap(),
        w.route_of(CHAIN_2, TOKEN_2, &[b, a], 30).unwrap(),
    ];
    let id = w.start(InstanceKind::CrossChain, legs.clone(), fresh.clone()).unwrap();
    assert_eq!(settle(&mut w, id), Outcome::Revert);
    assert!(matches!(refund_reason(&w, id), Some(RefundReason::Nack(_, NackReason::OrderTermsMismatch))));
    // The honest legs with those very intents still apply (nothing was used up but their nonces
    // at the hub: fresh intents again).
    let again = reissue(&mut w, &fresh);
    legs[1] = w.route_of(CHAIN_2, Asset::Native, &[b, a], 30).unwrap();
    let id = w.start(InstanceKind::CrossChain, legs, again).unwrap();
    assert_eq!(settle(&mut w, id), Outcome::Apply);
    assert_eq!(holds(&w, a, CHAIN_2, Asset::Native), 560);
    w.check_final().expect("per-asset invariants hold");
}

/// A token invoice is paid in its token, once, with a receipt; a route in ether for it is
/// refused.
#[test]
fn a_token_invoice_is_paid_in_its_token() {
    let (mut w, [p, i1, i2, r]) = world();
    let request = Request::CreateInvoice {
        chain: CHAIN_1,
        asset: TOKEN_1,
        amount: Some(Amount(250)),
        memo_hash: [3; 32],
        expires_at: w.now + 60_000,
    };
    let Response::Invoice(invoice) = w.node_request(r, request) else { panic!("an invoice") };
    let pay = |w: &mut World| {
        let request = Request::PayInvoice {
            invoice: Box::new(invoice.clone()),
            amount: None,
            max_fee: Amount(10),
            expires_at: w.now + 1_000,
        };
        let Response::Order(order) = w.node_request(p, request) else { panic!("an order") };
        order
    };
    // Routed over ether channels: the payer's order is in the token, so the payer refuses,
    // and so does the payee (its invoice asks for the token): whichever answers first.
    let order = pay(&mut w);
    let leg = w.route_of(CHAIN_1, Asset::Native, &[p, i1, i2, r], 250).unwrap();
    let id = w.start(InstanceKind::MultiHop, vec![leg], vec![order]).unwrap();
    assert_eq!(settle(&mut w, id), Outcome::Revert);
    let reason = refund_reason(&w, id);
    assert!(
        reason == Some(RefundReason::Nack(w.address(p), NackReason::OrderTermsMismatch))
            || reason == Some(RefundReason::Nack(w.address(r), NackReason::InvoiceMismatch)),
        "{reason:?}"
    );
    assert_eq!(
        w.nodes[r].enclave.inspect().invoices.issued[&invoice.invoice.id()].status,
        InvoiceStatus::Open
    );

    // The refused order stays payable by the hub until it expires (issue 14 item 5); a new
    // one for the same invoice only after that.
    w.now += 1_001;
    let before = holds(&w, r, CHAIN_1, TOKEN_1);
    let order = pay(&mut w);
    let leg = w.route_of(CHAIN_1, TOKEN_1, &[p, i1, i2, r], 250).unwrap();
    let id = w.start(InstanceKind::MultiHop, vec![leg], vec![order]).unwrap();
    assert_eq!(settle(&mut w, id), Outcome::Apply);
    assert_eq!(holds(&w, r, CHAIN_1, TOKEN_1), before + 250);
    let payer = w.address(p);
    assert_eq!(
        w.nodes[r].enclave.inspect().invoices.issued[&invoice.invoice.id()].status,
        InvoiceStatus::Paid { instance: id, amount: Amount(250), payer }
    );
    let Response::Receipt(receipt) =
        w.node_request(r, Request::InvoiceReceipt { invoice: invoice.invoice.id() })
    else {
        panic!("a receipt")
    };
    assert!(receipt.proves_payment_of(&invoice));
    w.check_final().expect("invariants hold");
}

/// A token at the zero address would be ether under a second name: no order, intent, invoice
/// or leg may name one, whoever built it.
#[test]
fn a_token_at_the_zero_address_is_refused_everywhere() {
    let (mut w, [p, i1, i2, r]) = world();
    let zero = Asset::Erc20(teepay_types::Address::default());
    let payment = Request::CreatePayment {
        chain: CHAIN_1,
        asset: zero,
        payee: w.address(r),
        amount: Amount(1),
        max_fee: Amount(0),
        expires_at: w.now + 1_000,
    };
    assert!(matches!(w.nodes[p].enclave.handle(w.now, payment), Err(EnclaveError::InvalidOrder(_))));
    let t = Transfer {
        chain: CHAIN_1,
        asset: zero,
        counterparty: w.address(r),
        amount: Amount(1),
        max_fee: Amount(0),
    };
    let intent =
        Request::CreateSwapIntent { gives: vec![t.clone()], receives: vec![t], expires_at: w.now + 1_000 };
    assert!(matches!(w.nodes[p].enclave.handle(w.now, intent), Err(EnclaveError::InvalidOrder(_))));
    let invoice = Request::CreateInvoice {
        chain: CHAIN_1,
        asset: zero,
        amount: Some(Amount(1)),
        memo_hash: [0; 32],
        expires_at: w.now + 1_000,
    };
    assert!(matches!(w.nodes[r].enclave.handle(w.now, invoice), Err(EnclaveError::InvalidInvoice(_))));
    // An invoice another enclave signed that way is not paid either.
    let payee = teepay_types::SigningKey::from_entropy([0x42; 32]).unwrap();
    let signed = teepay_types::Invoice {
        payee: payee.address(),
        chain: CHAIN_1,
        asset: zero,
        amount: Some(Amount(1)),
        memo_hash: [0; 32],
        expires_at: w.now + 1_000,
        nonce: 0,
    }
    .sign(&payee);
    let pay = Request::PayInvoice {
        invoice: Box::new(signed),
        amount: None,
        max_fee: Amount(0),
        expires_at: w.now + 1_000,
    };
    assert!(matches!(w.nodes[p].enclave.handle(w.now, pay), Err(EnclaveError::InvalidInvoice(_))));
    // A leg so named is malformed for the hub enclave (and for every node).
    let order = payment_order(&mut w, p, r, Asset::Native, 10);
    let mut leg = w.route_of(CHAIN_1, Asset::Native, &[p, i1, i2, r], 10).unwrap();
    leg.asset = zero;
    let refused = w.hub.coordinator.create_instance(w.now, InstanceKind::MultiHop, vec![leg], vec![order]);
    assert!(
        matches!(
            refused,
            Err(teepay_coordinator::HubError::Spec(teepay_types::SpecError::MalformedAsset(0)))
        ),
        "{refused:?}"
    );
}
