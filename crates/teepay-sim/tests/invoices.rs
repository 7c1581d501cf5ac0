//! Invoices and proof of payment at the node enclaves (DESIGN §11, issue 16): a payee's
//! invoice is paid at most once, only on its own terms, and the payee's receipt proves that
//! payment to anyone. The world's hub is the real hub enclave; where a check defends against
//! a hub that misbehaves, the crafted-hub fixture sends what an honest hub never would.

mod support;

use support::fixture;
use teepay_enclave::{EnclaveError, InvoiceStatus, Request, Response};
use teepay_sim::scenarios::{CHAIN_1, CHAIN_2};
use teepay_sim::{Action, World};
use teepay_types::{
    Amount, Asset, FeePolicy, HubItem, InstanceId, InstanceKind, Invoice, InvoiceError, NackReason, Order,
    Outcome, PaymentReceipt, SignedInvoice, SignedOrder, SigningKey, keccak256,
};

/// payer → hop1 → hop2 → payee, and a second payer beside the first (channel to hop1).
fn world() -> (World, [usize; 5]) {
    let mut w = World::new(16);
    let nodes = ["payer", "hop1", "hop2", "payee", "other"].map(|n| w.add_node(n));
    let [p, i1, i2, r, o] = nodes;
    let fee = FeePolicy { base: Amount(1), ppm: 0 };
    w.open_channel(CHAIN_1, p, i1, 100, 100, FeePolicy::default(), fee);
    w.open_channel(CHAIN_1, i1, i2, 100, 100, fee, fee);
    w.open_channel(CHAIN_1, i2, r, 100, 100, fee, FeePolicy::default());
    w.open_channel(CHAIN_1, o, i1, 100, 100, FeePolicy::default(), fee);
    (w, nodes)
}

fn create_invoice(w: &mut World, payee: usize, amount: Option<u128>, ttl: u64) -> SignedInvoice {
    let request = Request::CreateInvoice {
        chain: CHAIN_1,
        asset: teepay_types::Asset::Native,
        amount: amount.map(Amount),
        memo_hash: keccak256(b"order #42"),
        expires_at: w.now + ttl,
    };
    match w.node_request(payee, request) {
        Response::Invoice(invoice) => invoice,
        other => panic!("an invoice, got {other:?}"),
    }
}

fn pay_order(w: &mut World, payer: usize, invoice: &SignedInvoice) -> Result<SignedOrder, EnclaveError> {
    let request = Request::PayInvoice {
        invoice: Box::new(invoice.clone()),
        amount: None,
        max_fee: Amount(5),
        expires_at: w.now + 1_000,
    };
    match w.nodes[payer].enclave.handle(w.now, request)?.response {
        Response::Order(order) => Ok(order),
        other => panic!("an order, got {other:?}"),
    }
}

/// Starts the order at the hub along `path` and delivers everything: the outcome.
fn run(w: &mut World, path: &[usize], order: SignedOrder, amount: u128) -> (InstanceId, Outcome) {
    let leg = w.route(CHAIN_1, path, amount).expect("a route");
    let id = w.start(InstanceKind::MultiHop, vec![leg], vec![order]).expect("the hub starts it");
    for _ in 0..10 {
        while !w.network.is_empty() {
            w.apply(&Action::Deliver(0)).expect("no invariant breaks");
        }
        if let Some(outcome) = w.hub.coordinator.instance(id).and_then(|i| i.phase.outcome()) {
            return (id, outcome);
        }
        w.apply(&Action::Tick).expect("no invariant breaks");
    }
    panic!("the instance never ended")
}

fn status(w: &World, payee: usize, invoice: &SignedInvoice) -> InvoiceStatus {
    w.nodes[payee].enclave.inspect().invoices.issued[&invoice.invoice.id()].status
}

fn balance(w: &World, node: usize) -> u128 {
    w.nodes[node].enclave.inspect().channels.values().map(|c| c.balance_local.0).sum()
}

#[test]
fn an_invoice_is_paid_once_and_its_receipt_proves_it() {
    let (mut w, [p, i1, i2, r, o]) = world();
    let invoice = create_invoice(&mut w, r, Some(10), 60_000);
    let printed = invoice.encode();
    assert_eq!(SignedInvoice::decode(&printed).unwrap(), invoice, "the printed invoice reads back");
    let before = balance(&w, r);
    let order = pay_order(&mut w, p, &invoice).expect("a valid invoice");
    assert!(
        matches!(pay_order(&mut w, p, &invoice), Err(EnclaveError::InvoiceInFlight(_))),
        "one live order per invoice"
    );
    let (instance, outcome) = run(&mut w, &[p, i1, i2, r], order, 10);
    assert_eq!(outcome, Outcome::Apply);
    assert_eq!(balance(&w, r), before + 10);
    let payer = w.address(p);
    assert_eq!(status(&w, r, &invoice), InvoiceStatus::Paid { instance, amount: Amount(10), payer });

    // The payee's receipt proves the payment to anyone; the payer keeps it.
    let Response::Receipt(receipt) =
        w.node_request(r, Request::InvoiceReceipt { invoice: invoice.invoice.id() })
    else {
        panic!("a receipt")
    };
    assert!(receipt.proves_payment_of(&invoice));
    assert_eq!((receipt.instance, receipt.payer, receipt.amount), (instance, payer, Amount(10)));
    assert_eq!(PaymentReceipt::decode(&receipt.encode()).unwrap(), receipt);
    w.node_request(p, Request::KeepReceipt(receipt.clone()));
    let Response::PaidInvoice(paid) =
        w.node_request(p, Request::PaidInvoice { invoice: invoice.invoice.id() })
    else {
        panic!("the paid invoice")
    };
    assert_eq!(paid.receipt.as_ref(), Some(&receipt));

    // A receipt altered or signed by anyone else is refused, and changes nothing.
    let kept = w.nodes[p].enclave.inspect().clone();
    let mut inflated = receipt.clone();
    inflated.amount = Amount(1_000);
    let impostor = SigningKey::from_entropy([0x66; 32]).unwrap();
    let forged = PaymentReceipt::sign(&impostor, receipt.invoice, instance, Amount(10), payer);
    let foreign = PaymentReceipt::sign(&impostor, keccak256(b"another invoice"), instance, Amount(10), payer);
    for bad in [inflated, forged, foreign] {
        let err = w.nodes[p].enclave.handle(w.now, Request::KeepReceipt(bad)).unwrap_err();
        assert!(
            matches!(err, EnclaveError::Invoice(InvoiceError::BadSignature) | EnclaveError::ReceiptMismatch),
            "{err:?}"
        );
    }
    assert_eq!(*w.nodes[p].enclave.inspect(), kept);

    // Paying it again: the payer's enclave refuses; another payer's payment is refused by
    // the payee's enclave and refunded: value moves once.
    assert_eq!(pay_order(&mut w, p, &invoice).unwrap_err(), EnclaveError::InvoicePaid(invoice.invoice.id()));
    let (o_before, r_before) = (balance(&w, o), balance(&w, r));
    let second = pay_order(&mut w, o, &invoice).expect("another payer has not paid it");
    let (_, outcome) = run(&mut w, &[o, i1, i2, r], second, 10);
    assert_eq!(outcome, Outcome::Revert, "the payee refused a second payment");
    assert_eq!((balance(&w, o), balance(&w, r)), (o_before, r_before));
    assert!(matches!(status(&w, r, &invoice), InvoiceStatus::Paid { .. }));
}

#[test]
fn the_payers_enclave_builds_a_payment_only_from_a_genuine_open_invoice() {
    let (mut w, [p, _, _, r, _]) = world();
    let invoice = create_invoice(&mut w, r, Some(10), 60_000);
    // Altered terms, or signed by someone else in the payee's name.
    let mut cheaper = invoice.clone();
    cheaper.invoice.amount = Some(Amount(1));
    let impostor = SigningKey::from_entropy([0x67; 32]).unwrap();
    let forged = invoice.invoice.clone().sign(&impostor);
    for bad in [cheaper, forged] {
        assert_eq!(
            pay_order(&mut w, p, &bad).unwrap_err(),
            EnclaveError::Invoice(InvoiceError::BadSignature)
        );
    }
    // A fixed amount is the invoice's; any-amount invoices need one.
    let request = |invoice: &SignedInvoice, amount| Request::PayInvoice {
        invoice: Box::new(invoice.clone()),
        amount: Some(Amount(amount)),
        max_fee: Amount(5),
        expires_at: 1_000,
    };
    let err = w.nodes[p].enclave.handle(w.now, request(&invoice, 9)).unwrap_err();
    assert_eq!(err, EnclaveError::InvalidInvoice("the invoice fixes the amount"));
    let open = create_invoice(&mut w, r, None, 60_000);
    let before_open = w.nodes[p].enclave.inspect().clone();
    assert!(matches!(pay_order(&mut w, p, &open), Err(EnclaveError::InvalidInvoice(_))));
    assert_eq!(*w.nodes[p].enclave.inspect(), before_open);
    assert!(matches!(
        w.nodes[p].enclave.handle(w.now, request(&open, 7)).unwrap().response,
        Response::Order(_)
    ));
    // Expired, or in a token this node's channels cannot hold.
    let soon = create_invoice(&mut w, r, Some(10), 10);
    w.now += 11;
    assert_eq!(pay_order(&mut w, p, &soon).unwrap_err(), EnclaveError::InvoiceExpired(soon.invoice.id()));
    // A token invoice (its payee's genuine signature): the order moves that token, so only
    // a route of that token's channels can carry it.
    let usdc = Asset::Erc20(teepay_types::Address([0x70; 20]));
    let token = Invoice { payee: impostor.address(), asset: usdc, ..invoice.invoice.clone() }.sign(&impostor);
    let Order::Payment(req) = pay_order(&mut w, p, &token).unwrap().order else { panic!("a payment") };
    assert_eq!((req.asset, req.invoice), (usdc, Some(token.invoice.id())));
    // The payee's own limits: an expiry too far out, a zero amount, a chain without contract.
    let far = Request::CreateInvoice {
        chain: CHAIN_1,
        asset: teepay_types::Asset::Native,
        amount: Some(Amount(1)),
        memo_hash: [0; 32],
        expires_at: w.now + teepay_enclave::MAX_INVOICE_LIFETIME + 1,
    };
    assert!(matches!(w.nodes[r].enclave.handle(w.now, far), Err(EnclaveError::InvalidInvoice(_))));
    let zero = Request::CreateInvoice {
        chain: CHAIN_1,
        asset: teepay_types::Asset::Native,
        amount: Some(Amount(0)),
        memo_hash: [0; 32],
        expires_at: w.now + 5,
    };
    assert_eq!(w.nodes[r].enclave.handle(w.now, zero).unwrap_err(), EnclaveError::ZeroAmount);
    let nowhere = Request::CreateInvoice {
        chain: teepay_types::ChainId(9),
        asset: teepay_types::Asset::Native,
        amount: None,
        memo_hash: [0; 32],
        expires_at: w.now + 5,
    };
    assert!(matches!(w.nodes[r].enclave.handle(w.now, nowhere), Err(EnclaveError::UnknownChain(_))));
}

/// What an honest hub never sends, the payee's enclave refuses on its own: a payment for an
/// invoice that is cancelled, expired, already being paid, on another chain, or short.
#[test]
fn the_payees_enclave_locks_only_for_its_own_open_invoice_on_its_terms() {
    let mut f = fixture();
    let [p, _, _, r] = f.nodes;
    let invoice = |f: &mut support::Fixture, chain, amount: u128, ttl: u64| {
        let request = Request::CreateInvoice {
            chain,
            asset: teepay_types::Asset::Native,
            amount: Some(Amount(amount)),
            memo_hash: [1; 32],
            expires_at: f.w.now + ttl,
        };
        let Response::Invoice(i) = f.w.node_request(r, request) else { panic!("an invoice") };
        i
    };
    let order = |f: &mut support::Fixture, invoice: &SignedInvoice| {
        let request = Request::PayInvoice {
            invoice: Box::new(invoice.clone()),
            amount: None,
            max_fee: Amount(5),
            expires_at: 1_000,
        };
        let Response::Order(o) = f.w.node_request(p, request) else { panic!("an order") };
        o
    };
    // Short: the leg delivers 9 of the 10 asked.
    let asked = invoice(&mut f, CHAIN_1, 10, 500);
    let spec = {
        let o = order(&mut f, &asked);
        f.spec(1, f.leg(9), o)
    };
    f.refused(r, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::InvoiceMismatch));
    // On another chain than the invoice's.
    let elsewhere = invoice(&mut f, CHAIN_2, 10, 500);
    let spec = {
        let o = order(&mut f, &elsewhere);
        f.spec(2, f.leg(10), o)
    };
    f.refused(r, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::InvoiceMismatch));
    // Cancelled.
    let cancelled = invoice(&mut f, CHAIN_1, 10, 500);
    let spec = {
        let o = order(&mut f, &cancelled);
        f.spec(3, f.leg(10), o)
    };
    f.w.node_request(r, Request::CancelInvoice { invoice: cancelled.invoice.id() });
    f.refused(r, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::InvoiceNotOpen));
    // Expired by the time the PREPARE comes.
    let brief = invoice(&mut f, CHAIN_1, 10, 50);
    let mut spec = {
        let o = order(&mut f, &brief);
        f.spec(4, f.leg(10), o)
    };
    f.w.now += 51;
    spec.deadline = f.w.now + 100;
    f.refused(r, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::InvoiceExpired));
    // Being paid by one instance: a second one is refused until the first ends; a
    // retransmitted PREPARE of the first still gets its ack; a REFUND opens it again.
    let once = invoice(&mut f, CHAIN_1, 10, 5_000);
    let first_order = order(&mut f, &once);
    let mut first = f.spec(5, f.leg(10), first_order.clone());
    first.deadline = f.w.now + 100;
    f.accepted(r, HubItem::Prepare(first.clone()));
    assert_eq!(
        f.w.nodes[r].enclave.inspect().invoices.issued[&once.invoice.id()].status,
        InvoiceStatus::Pending(first.id)
    );
    let mut second = f.spec(6, f.leg(10), first_order.clone());
    second.deadline = f.w.now + 100;
    f.refused(r, HubItem::Prepare(second.clone()), EnclaveError::Refused(NackReason::InvoiceNotOpen));
    f.accepted(r, HubItem::Prepare(first.clone()));
    let err = f.w.nodes[r].enclave.handle(f.w.now, Request::CancelInvoice { invoice: once.invoice.id() });
    assert_eq!(err.unwrap_err(), EnclaveError::InvoicePending(once.invoice.id(), first.id));
    f.accepted(r, HubItem::Refund { instance: first.id, certificate: None });
    assert_eq!(
        f.w.nodes[r].enclave.inspect().invoices.issued[&once.invoice.id()].status,
        InvoiceStatus::Open
    );
    // Confirmed (the payer's order carried again: the payee checks the invoice, the payer the
    // order): paid, and the batch's result carries the receipt for the host to pass on.
    let mut third = f.spec(7, f.leg(10), first_order);
    third.deadline = f.w.now + 100;
    f.accepted(r, HubItem::Prepare(third.clone()));
    f.accepted(r, HubItem::Commit { instance: third.id, prepared_acks: [0; 32], peer_acks: vec![] });
    let result = f.send(r, vec![HubItem::Confirm { instance: third.id, certificate: None }]).unwrap();
    let [receipt] = result.receipts.as_slice() else { panic!("one receipt: {:?}", result.receipts) };
    assert!(receipt.proves_payment_of(&once));
    assert_eq!(receipt.instance, third.id);
}

#[test]
fn invoices_a_host_asks_for_are_bounded_and_forgotten_after_their_retention() {
    let (mut w, [_, _, _, r, _]) = world();
    let first = create_invoice(&mut w, r, Some(1), 1_000);
    assert!(w.nodes[r].enclave.inspect().invoices.issued.contains_key(&first.invoice.id()));
    w.now += 1_000 + teepay_enclave::INVOICE_RETENTION + 1;
    create_invoice(&mut w, r, Some(1), 1_000);
    let book = &w.nodes[r].enclave.inspect().invoices;
    assert!(!book.issued.contains_key(&first.invoice.id()), "forgotten after its retention");
    assert_eq!(book.issued.len(), 1);
    // Full: one more is refused, and the refusal changes nothing.
    for _ in 1..teepay_enclave::MAX_INVOICES {
        create_invoice(&mut w, r, None, 60_000);
    }
    let before = w.nodes[r].enclave.inspect().clone();
    let one_more = Request::CreateInvoice {
        chain: CHAIN_1,
        asset: teepay_types::Asset::Native,
        amount: None,
        memo_hash: [0; 32],
        expires_at: w.now + 5,
    };
    let err = w.nodes[r].enclave.handle(w.now, one_more).unwrap_err();
    assert_eq!(err, EnclaveError::TooManyInvoices(teepay_enclave::MAX_INVOICES));
    assert_eq!(*w.nodes[r].enclave.inspect(), before);
}

/// A token channel never carries an ether payment: an instance whose ether leg runs through
/// it (what only a faulty hub would send) is refused by the node with `WrongAsset`
/// (`tokens.rs` covers the other mixes).
#[test]
fn a_token_channel_carries_no_ether_payment() {
    let mut f = fixture();
    let [p, i1, _, _] = f.nodes;
    let token = teepay_types::Address([0x70; 20]);
    let onchain = teepay_enclave::FundedChannel {
        chain: CHAIN_1,
        contract: teepay_sim::world::CONTRACT,
        a: f.w.address(p),
        b: f.w.address(i1),
        nonce: 99,
        deposit_a: Amount(100),
        deposit_b: Amount(100),
        token,
    };
    for (node, is_a) in [(p, true), (i1, false)] {
        for request in onchain.requests(is_a, FeePolicy::default()) {
            f.w.node_request(node, request);
        }
    }
    let order = f.order(10, 5);
    let mut spec = f.spec(1, f.leg(10), order);
    spec.legs[0].hops[0].channel = onchain.id();
    f.refused(p, HubItem::Prepare(spec), EnclaveError::Refused(NackReason::WrongAsset));
}
