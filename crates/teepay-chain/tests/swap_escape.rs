//! The whole hub group lost mid-swap (DESIGN §10), with real node enclaves and the real
//! contract on two embedded chains: the hub is a crafted key attested to both nodes that
//! stops after COMMIT (or after handing its CONFIRM to one node only).
//! - A node holding the CONFIRM certificate settles both chains with it: it posts it to each
//!   contract, its peer's enclave takes it from the `DecisionRecorded` event and both close.
//! - With no certificate anywhere, the lock's deadline path reverts: a party claims REVERT,
//!   waits out the challenge window and closes.
//! - A CONFIRM certificate posted within the window wins over the claim.
//!
//! Every wei is accounted for on each chain, and each channel pays exactly the outcome.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;
use teepay_chain::contract::{ContractEvent, Deployment, opened_channel, receipt_events};
use teepay_chain::dev::dev_key;
use teepay_chain::{CallRequest, EmbeddedChain, Receipt};
use teepay_enclave::{EnclaveError, Request, Response};
use teepay_types::{
    Address, Amount, ChainId, ChannelId, DecisionCertificate, Hop, HubBatch, HubItem, InstanceId,
    InstanceKind, InstanceSpec, Leg, NodeItem, Outcome, Report, SignedOrder, SigningKey, Transfer,
    instance_id, record_decision_call, register_enclave_call,
};

const WINDOW_SECS: u64 = 4;
const DEP: u128 = ETHER / 100;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Side<'a> {
    l: Ledger<'a, EmbeddedChain>,
    d: Deployment,
}

struct Net<'a> {
    sides: [Side<'a>; 2],
    a: Node,
    b: Node,
    hub: SigningKey,
    /// Channel on chain 1 opened by `a` (a → b gives), channel on chain 2 opened by `b`.
    ch: [ChannelId; 2],
    seq: u64,
}

async fn setup<'a>(c1: &'a EmbeddedChain, c2: &'a EmbeddedChain) -> Net<'a> {
    let mut sides = Vec::new();
    for chain in [c1, c2] {
        let mut l = Ledger::new(chain).await;
        let d = l.deploy_with_window(WINDOW_SECS).await;
        sides.push(Side { l, d });
    }
    let contracts: Vec<(ChainId, Address)> = sides.iter().map(|s| (s.l.chain_id, s.d.address)).collect();
    let (mut a, mut b) = (Node::on_chains(1, contracts.clone()), Node::on_chains(2, contracts));
    let hub = SigningKey::from_entropy([0x48; 32]).unwrap();
    let hub_quote = Report::of(&hub, HUB_MEASUREMENT, ChainId(0)).attest(&authority());
    for node in [&mut a, &mut b] {
        node.request(Request::AttestHub { quote: hub_quote.clone() }).expect("hub attested");
        for side in &mut sides {
            side.l.track(node.address()).await;
            side.l
                .send("transfer", &dev_key(1), Some(node.address()), ETHER, Vec::new())
                .await
                .expect("fund");
            let quote = node.quote(side.l.chain_id);
            side.l
                .send("registerEnclave", &dev_key(2), Some(side.d.address), 0, register_enclave_call(&quote))
                .await
                .expect("register");
        }
    }
    let mut ch = Vec::new();
    for (i, side) in sides.iter_mut().enumerate() {
        let (opener, peer) = if i == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
        let (chain, to) = (side.l.chain_id, peer.address());
        let r = side
            .l
            .enclave_tx("openChannel", opener, Some(300_000), None, |gas| Request::BuildOpenChannel {
                chain,
                peer: to,
                token: Address::default(),
                deposit: Amount(DEP),
                gas,
            })
            .await
            .expect("open");
        let events = receipt_events(&r).unwrap();
        opener.observe((chain, side.d.address), &events);
        peer.observe((chain, side.d.address), &events);
        ch.push(opened_channel(&r).unwrap());
    }
    let sides: [Side<'a>; 2] = sides.try_into().ok().unwrap();
    Net { sides, a, b, hub, ch: [ch[0], ch[1]], seq: 0 }
}

impl Net<'_> {
    fn chain(&self, i: usize) -> ChainId {
        self.sides[i].l.chain_id
    }

    fn intent(node: &mut Node, gives: Transfer, receives: Transfer) -> SignedOrder {
        let request = Request::CreateSwapIntent {
            gives: vec![gives],
            receives: vec![receives],
            expires_at: u64::MAX / 4,
        };
        match node.request(request).expect("intent") {
            Response::Order(o) => o,
            other => panic!("an order, got {other:?}"),
        }
    }

    /// Runs a swap (a gives 10 on chain 1, b gives 20 on chain 2) through PREPARE and COMMIT
    /// at both nodes; the hub is lost right after. Returns its id.
    fn swap_to_commit(&mut self, lock_deadline: u64) -> InstanceId {
        let (a, b) = (self.a.address(), self.b.address());
        let (c1, c2) = (self.chain(0), self.chain(1));
        let t = |chain, counterparty, amount| Transfer {
            chain,
            asset: teepay_types::Asset::Native,
            counterparty,
            amount: Amount(amount),
            max_fee: Amount(0),
        };
        let oa = Self::intent(&mut self.a, t(c1, b, 10), t(c2, b, 20));
        let ob = Self::intent(&mut self.b, t(c2, a, 20), t(c1, a, 10));
        self.seq += 1;
        let id = instance_id(self.hub.address(), self.seq);
        let hop = |channel, from, to, amount| Hop { channel, from, to, amount: Amount(amount) };
        let spec = InstanceSpec {
            id,
            seq: self.seq,
            kind: InstanceKind::CrossChain,
            legs: vec![
                Leg { chain: c1, asset: teepay_types::Asset::Native, hops: vec![hop(self.ch[0], a, b, 10)] },
                Leg { chain: c2, asset: teepay_types::Asset::Native, hops: vec![hop(self.ch[1], b, a, 20)] },
            ],
            orders: vec![oa, ob],
            deadline: (self.a.now + 60_000).min(lock_deadline - 1),
            lock_deadline,
            peer_acks: false,
        };
        let prepare = HubItem::Prepare(spec);
        let commit = HubItem::Commit { instance: id, prepared_acks: [0; 32], peer_acks: vec![] };
        for item in [prepare, commit] {
            for node in ["a", "b"] {
                let answers = self.send(node, item.clone());
                assert!(
                    matches!(answers[0], Ok(NodeItem::Prepared { .. } | NodeItem::Committed { .. })),
                    "{node}: {answers:?}"
                );
            }
        }
        id
    }

    fn send(&mut self, node: &str, item: HubItem) -> Vec<Result<NodeItem, EnclaveError>> {
        let node = if node == "a" { &mut self.a } else { &mut self.b };
        let batch =
            HubBatch { hub: self.hub.address(), node: node.address(), items: vec![item] }.sign(&self.hub);
        match node.request(Request::HubBatch(batch)).expect("authentic batch") {
            Response::Batch(r) => r.results,
            other => panic!("a batch result, got {other:?}"),
        }
    }

    /// The hub's last act before it is lost: CONFIRM with its certificate, to `a` only.
    fn confirm_to_a(&mut self, instance: InstanceId) {
        let cert = DecisionCertificate::sign(&self.hub, instance, Outcome::Apply);
        let answers = self.send("a", HubItem::Confirm { instance, certificate: Some(cert.signature) });
        assert!(matches!(answers[0], Ok(NodeItem::Finished { outcome: Outcome::Apply, .. })));
    }

    async fn post_certificate(&mut self, side: usize, instance: InstanceId) -> Receipt {
        let Response::Certificate(cert) = self.a.request(Request::Certificate { instance }).unwrap() else {
            panic!("a keeps the certificate")
        };
        let chain = self.chain(side);
        let s = &mut self.sides[side];
        let est = CallRequest {
            from: Some(self.a.address()),
            to: Some(s.d.address),
            value: Amount(0),
            data: record_decision_call(&cert),
        };
        s.l.enclave_tx("recordDecision", &mut self.a, None, Some(est), |gas| Request::BuildRecordDecision {
            chain,
            instance,
            gas,
        })
        .await
        .expect("recordDecision")
    }

    /// `who` closes its channel on chain `side` (claiming REVERT first if asked), retrying
    /// while the contract still waits for the swap lock's outcome.
    async fn close(&mut self, side: usize, who: &str) -> Receipt {
        let channel = self.ch[side];
        let node = if who == "a" { &mut self.a } else { &mut self.b };
        let s = &mut self.sides[side];
        let started = Instant::now();
        loop {
            let locks = node.enclave.inspect().channels[&channel].locks.len().max(1);
            match s
                .l
                .enclave_tx("closeChannel", node, Some(teepay_types::close_gas(locks)), None, |gas| {
                    Request::BuildClose { channel, gas }
                })
                .await
            {
                Ok(r) => return r,
                Err(e)
                    if e == "mined but reverted"
                        && started.elapsed() < Duration::from_secs(WINDOW_SECS * 5) =>
                {
                    // Chain time moves with blocks: wait, mine one, try again.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let key = dev_key(3);
                    s.l.send("empty block", &key, Some(key.address()), 0, Vec::new()).await.unwrap();
                }
                Err(e) => panic!("close on chain {side}: {e}"),
            }
        }
    }

    /// The payouts of a `ChannelClosed` in `r`, as (opener, peer).
    fn payouts(r: &Receipt) -> (u128, u128) {
        receipt_events(r)
            .unwrap()
            .into_iter()
            .find_map(|e| match e {
                ContractEvent::ChannelClosed { payout_a, payout_b, .. } => Some((payout_a.0, payout_b.0)),
                _ => None,
            })
            .expect("ChannelClosed")
    }

    async fn assert_conserved(&self) {
        for side in &self.sides {
            side.l.assert_conserved().await;
            assert_eq!(side.l.balance(side.d.address).await, 0, "every channel settled");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_held_by_one_node_settles_both_chains_without_the_hub() {
    let (c1, c2) = (EmbeddedChain::new(ChainId(31501)), EmbeddedChain::new(ChainId(31502)));
    let mut net = setup(&c1, &c2).await;
    net.a.now = now_ms();
    net.b.now = net.a.now;
    let instance = net.swap_to_commit(net.a.now + 3_600_000);
    net.confirm_to_a(instance);
    // b never heard the decision: its swap locks stand, and its enclave will not sign them
    // into a close before their deadline.
    let channel = net.ch[1];
    assert!(matches!(net.b.request(Request::SignClose { channel }), Err(EnclaveError::SwapLocked { .. })));

    // a posts the certificate to both contracts; b's host reads it from the event.
    for side in 0..2 {
        let r = net.post_certificate(side, instance).await;
        let events = receipt_events(&r).unwrap();
        let [ContractEvent::DecisionRecorded { certificate }] = &events[..] else { panic!("{events:?}") };
        if side == 0 {
            net.b.request(Request::Decision(certificate.clone())).expect("b takes the certificate");
        }
    }
    assert!(net.b.enclave.inspect().channels.values().all(|c| c.locks.is_empty()), "b's locks ended");

    // Both channels close with the swap applied: 10 moved to b on chain 1, 20 to a on chain 2.
    let r1 = net.close(0, "b").await;
    assert_eq!(Net::payouts(&r1), (DEP - 10, 10));
    let r2 = net.close(1, "a").await;
    assert_eq!(Net::payouts(&r2), (DEP - 20, 20));
    net.assert_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_certificate_the_deadline_path_reverts_and_a_confirm_in_the_window_wins() {
    let (c1, c2) = (EmbeddedChain::new(ChainId(31503)), EmbeddedChain::new(ChainId(31504)));
    let mut net = setup(&c1, &c2).await;
    let start = now_ms();
    net.a.now = start;
    net.b.now = start;
    let deadline = start + 2_000;
    let instance = net.swap_to_commit(deadline);
    net.confirm_to_a(instance);
    // The CONFIRM reached a only. Past the deadline b, still holding the 20 it gives on
    // chain 2 under a swap lock, claims REVERT there; a, holding the certificate, challenges.
    while now_ms() < deadline + 1_000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    net.b.now = now_ms();
    let channel = net.ch[1];
    let s = &mut net.sides[1];
    let r =
        s.l.enclave_tx("claimRevert", &mut net.b, Some(teepay_types::close_gas(1)), None, |gas| {
            Request::BuildClaimRevert { channel, gas }
        })
        .await
        .expect("b claims REVERT for the 20 it gave on chain 2");
    let events = receipt_events(&r).unwrap();
    assert!(matches!(events[..], [ContractEvent::RevertClaimed { instance: i, .. }] if i == instance));
    // a's watcher sees the claim and posts its certificate within the window: APPLY wins.
    net.post_certificate(1, instance).await;
    let r2 = net.close(1, "b").await;
    assert_eq!(Net::payouts(&r2), (DEP - 20, 20), "the certificate overrode the claim");
    let r1 = net.close(0, "a").await;
    assert_eq!(Net::payouts(&r1), (DEP - 10, 10), "a applied the CONFIRM off-chain");
    net.assert_conserved().await;

    // A second swap on fresh channels that no decision ever reached: after the deadline, a
    // claims REVERT on chain 1, nobody challenges, and both channels revert.
    let (c3, c4) = (EmbeddedChain::new(ChainId(31505)), EmbeddedChain::new(ChainId(31506)));
    let mut net = setup(&c3, &c4).await;
    let start = now_ms();
    net.a.now = start;
    net.b.now = start;
    let deadline = start + 2_000;
    let instance = net.swap_to_commit(deadline);
    while now_ms() < deadline + 1_000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    net.a.now = now_ms();
    net.b.now = net.a.now;
    for (side, who) in [(0, "a"), (1, "b")] {
        let channel = net.ch[side];
        let node = if who == "a" { &mut net.a } else { &mut net.b };
        let r = net.sides[side]
            .l
            .enclave_tx("claimRevert", node, Some(teepay_types::close_gas(1)), None, |gas| {
                Request::BuildClaimRevert { channel, gas }
            })
            .await
            .expect("claim");
        assert!(
            matches!(receipt_events(&r).unwrap()[..], [ContractEvent::RevertClaimed { instance: i, .. }] if i == instance)
        );
    }
    let r1 = net.close(0, "a").await;
    assert_eq!(Net::payouts(&r1), (DEP, 0), "reverted: a keeps its 10");
    let r2 = net.close(1, "b").await;
    assert_eq!(Net::payouts(&r2), (DEP, 0), "reverted: b keeps its 20");
    net.assert_conserved().await;
}
