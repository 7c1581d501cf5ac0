//! The executor with real node enclaves in-process (no sockets): routing and reservations,
//! statuses, refunds on timeout and on NACK, swaps assembled from matching intents.

use teepay_coordinator::{Coordinator, HubConfig};
use teepay_enclave::{NewChannel, NodeConfig, NodeEnclave, Request, Response};
use teepay_hub::executor::{ExecError, Executor, Status};
use teepay_routing::{ChannelInfo, Network, RouteError};
use teepay_types::{
    Address, Amount, ChainId, ChannelId, FeePolicy, InstanceId, SignedOrder, SigningKey, SimPlatform,
    Transfer,
};

const C1: ChainId = ChainId(1);
const C2: ChainId = ChainId(2);
const CONTRACT: Address = Address([0xcc; 20]);
const NODE_M: [u8; 32] = [1; 32];
const HUB_M: [u8; 32] = [2; 32];
const TIMEOUT: u64 = 100;

struct Net {
    exec: Executor<SimPlatform>,
    nodes: Vec<NodeEnclave<SimPlatform>>,
    /// Nodes that drop everything (crashed or unreachable).
    silent: Vec<usize>,
    now: u64,
    next_channel: u8,
}

fn fee(base: u128) -> FeePolicy {
    FeePolicy { base: Amount(base), ppm: 0 }
}

impl Net {
    fn new(n: usize) -> Self {
        let authority = SigningKey::from_entropy([0xaa; 32]).unwrap();
        let config = HubConfig {
            measurement: HUB_M,
            attestation_authority: authority.address(),
            allowed_node_measurements: vec![NODE_M],
            prepare_timeout: TIMEOUT,
            retransmit_after: 10,
            round_auth: teepay_types::RoundAuth::default(),
            peer_acks: false,
        };
        let mut hub = Coordinator::create(SimPlatform::new([1; 32]), config, [2; 32]).unwrap();
        let hub_quote = hub.report(ChainId(0)).attest(&authority);
        let mut nodes = Vec::new();
        for i in 0..n {
            let config = NodeConfig {
                measurement: NODE_M,
                attestation_authority: authority.address(),
                allowed_hub_measurements: vec![HUB_M],
                contracts: vec![(C1, CONTRACT), (C2, CONTRACT)],
                max_tx_fee: Amount(1),
                require_peer_acks: false,
            };
            let (mut node, _) =
                NodeEnclave::create(SimPlatform::new([i as u8 + 10; 32]), config, [i as u8 + 50; 32])
                    .unwrap();
            node.handle(0, Request::AttestHub { quote: hub_quote.clone() }).unwrap();
            let Response::Report(r) = node.handle(0, Request::Report { chain: ChainId(0) }).unwrap().response
            else {
                panic!()
            };
            hub.register_node(&r.attest(&authority)).unwrap();
            nodes.push(node);
        }
        Net { exec: Executor::new(hub, Network::new()), nodes, silent: Vec::new(), now: 1, next_channel: 1 }
    }

    fn addr(&self, i: usize) -> Address {
        self.nodes[i].address()
    }

    /// Opens a channel in both enclaves and in the hub's map (as sync would); `fees` are
    /// what each side's enclave charges, `advertised` what the hub's map believes.
    fn channel(
        &mut self,
        chain: ChainId,
        a: usize,
        b: usize,
        deposits: (u128, u128),
        fees: (u128, u128),
        advertised: (u128, u128),
    ) -> ChannelId {
        let id = ChannelId([self.next_channel; 32]);
        self.next_channel += 1;
        for (me, peer, is_a, mine, theirs, f) in
            [(a, b, true, deposits.0, deposits.1, fees.0), (b, a, false, deposits.1, deposits.0, fees.1)]
        {
            let peer = self.addr(peer);
            let new = NewChannel {
                chain,
                contract: CONTRACT,
                id,
                peer,
                local_is_a: is_a,
                deposit_local: Amount(mine),
                deposit_peer: Amount(theirs),
                fee: fee(f),
            };
            self.nodes[me].handle(0, Request::AddChannel(new)).unwrap();
        }
        let info = ChannelInfo {
            id,
            a: self.addr(a),
            b: self.addr(b),
            balance_a: Amount(deposits.0),
            balance_b: Amount(deposits.1),
            fee_a: fee(advertised.0),
            fee_b: fee(advertised.1),
        };
        self.exec.network_mut().chain_mut(chain).upsert_channel(&info).unwrap();
        id
    }

    fn payment(&mut self, payer: usize, payee: usize, amount: u128, max_fee: u128) -> SignedOrder {
        let payee = self.addr(payee);
        let req = Request::CreatePayment {
            chain: C1,
            payee,
            amount: Amount(amount),
            max_fee: Amount(max_fee),
            expires_at: 10_000,
        };
        match self.nodes[payer].handle(self.now, req).unwrap().response {
            Response::Order(o) => o,
            other => panic!("{other:?}"),
        }
    }

    fn intent(&mut self, party: usize, gives: Vec<Transfer>, receives: Vec<Transfer>) -> SignedOrder {
        let req = Request::CreateSwapIntent { gives, receives, expires_at: 10_000 };
        match self.nodes[party].handle(self.now, req).unwrap().response {
            Response::Order(o) => o,
            other => panic!("{other:?}"),
        }
    }

    /// Delivers batches and acks until nothing is left to send; returns finished instances.
    fn run(&mut self) -> Vec<(InstanceId, Status)> {
        let mut finished = Vec::new();
        for _ in 0..100 {
            let out = self.exec.flush(self.now);
            finished.extend(out.finished.into_iter().map(|f| (f.id, f.status)));
            if out.batches.is_empty() {
                return finished;
            }
            for batch in out.batches {
                let Some(i) = self.nodes.iter().position(|n| n.address() == batch.batch.node) else {
                    panic!()
                };
                if self.silent.contains(&i) {
                    continue;
                }
                let out = self.nodes[i].handle(self.now, Request::HubBatch(batch)).unwrap();
                let Response::Batch(result) = out.response else { panic!() };
                if let Some(ack) = result.ack {
                    self.exec.on_ack(self.now, &ack).unwrap();
                }
            }
            self.now += 1;
        }
        panic!("did not settle")
    }

    fn balance(&self, node: usize, channel: ChannelId) -> u128 {
        self.nodes[node].inspect().channels[&channel].balance_local.0
    }
}

#[test]
fn pays_over_the_shortest_route_and_updates_the_map() {
    let mut net = Net::new(4);
    let c01 = net.channel(C1, 0, 1, (100, 100), (0, 2), (0, 2));
    let c12 = net.channel(C1, 1, 2, (100, 100), (2, 0), (2, 0));
    let c23 = net.channel(C1, 2, 3, (100, 100), (1, 0), (1, 0));
    let order = net.payment(0, 3, 10, 5);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    assert_eq!(net.exec.status(id), Some(&Status::InFlight));
    // In flight: the route's capacity is reserved (10 + fees 3 on the first hop).
    let g = net.exec.network().chain(C1).unwrap();
    assert_eq!(g.available(c01, net.addr(0)).unwrap(), Amount(87));
    let finished = net.run();
    assert_eq!(finished, vec![(id, Status::Succeeded)]);
    assert_eq!(net.exec.in_flight(), 0);
    // Node 1 forwards 12 and keeps its fee of 2 (it charges on c12); node 2 charges 1.
    assert_eq!((net.balance(0, c01), net.balance(1, c01)), (87, 113));
    assert_eq!((net.balance(1, c12), net.balance(2, c12)), (89, 111));
    assert_eq!((net.balance(2, c23), net.balance(3, c23)), (90, 110));
    let g = net.exec.network().chain(C1).unwrap();
    assert_eq!(g.available(c01, net.addr(0)).unwrap(), Amount(87), "the map follows the applied transfer");
    assert_eq!(g.available(c01, net.addr(1)).unwrap(), Amount(113));
    assert_eq!(g.available(c23, net.addr(3)).unwrap(), Amount(110));
}

#[test]
fn complete_instances_leave_the_hub_enclave_after_their_deadline_but_keep_their_status() {
    let mut net = Net::new(3);
    net.channel(C1, 0, 1, (100, 100), (0, 0), (0, 0));
    net.channel(C1, 1, 2, (100, 100), (0, 0), (0, 0));
    let order = net.payment(0, 2, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    assert_eq!(net.run(), vec![(id, Status::Succeeded)]);
    // The final acks arrive in later rounds; run until nothing is left to send.
    for _ in 0..3 {
        net.run();
    }
    assert!(net.exec.coordinator().instance(id).is_some_and(|i| i.is_complete()));
    net.exec.tick(net.now);
    assert!(net.exec.coordinator().instance(id).is_some(), "kept until its deadline passes");
    let deadline = net.exec.coordinator().instance(id).unwrap().spec.deadline;
    net.exec.tick(deadline + 1);
    assert!(net.exec.coordinator().instance(id).is_none(), "pruned from the hub enclave's state");
    assert_eq!(net.exec.status(id), Some(&Status::Succeeded), "the status stays queryable");
    // An undecided instance is never pruned, whatever the clock says.
    let order = net.payment(2, 0, 5, 0);
    net.silent.push(0);
    let pending = net.exec.submit_payment(net.now, order).unwrap();
    net.exec.coordinator_mut().prune_complete(u64::MAX);
    assert!(net.exec.coordinator().instance(pending).is_some());
}

#[test]
fn refuses_what_cannot_be_routed_and_refunds_silent_or_refusing_nodes() {
    let mut net = Net::new(4);
    let c01 = net.channel(C1, 0, 1, (100, 0), (0, 0), (0, 0));
    net.channel(C1, 1, 2, (100, 0), (5, 0), (0, 0)); // node 1 charges 5 but advertises 0
    net.channel(C1, 1, 3, (100, 0), (0, 0), (0, 0));
    let order = net.payment(0, 2, 500, 0);
    assert_eq!(net.exec.submit_payment(net.now, order), Err(ExecError::Route(RouteError::NoRoute)));

    // The hub routes by the advertised fee; node 1's enclave refuses to forward at a loss.
    let order = net.payment(0, 2, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    let finished = net.run();
    assert!(
        matches!(&finished[..], [(i, Status::Refunded(why))] if *i == id && why.contains("refused")),
        "{finished:?}"
    );
    assert_eq!(
        net.exec.network().chain(C1).unwrap().available(c01, net.addr(0)).unwrap(),
        Amount(100),
        "released"
    );

    // A payee that never answers: refunded after the PREPARE timeout.
    net.silent.push(3);
    let order = net.payment(0, 3, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    assert!(net.run().is_empty(), "still waiting for node 3");
    assert_eq!(net.exec.status(id), Some(&Status::InFlight));
    net.now += TIMEOUT + 1;
    net.exec.tick(net.now);
    let finished = net.run();
    assert!(
        matches!(&finished[..], [(i, Status::Refunded(why))] if *i == id && why.contains("did not answer")),
        "{finished:?}"
    );
    assert_eq!(net.balance(0, c01), 100, "the payer's enclave reverted its lock");
    assert_eq!(net.exec.network().chain(C1).unwrap().available(c01, net.addr(0)).unwrap(), Amount(100));

    // Orders of the wrong kind or with a forged signature are refused (the forged one by the
    // hub enclave, its reservation undone).
    let mut forged = net.payment(0, 1, 1, 0);
    forged.auth.bytes_mut()[5] ^= 1;
    assert_eq!(net.exec.submit_payment(net.now, forged), Err(ExecError::BadOrderSignature));
}

#[test]
fn swaps_need_matching_intents() {
    let mut net = Net::new(2);
    let c1 = net.channel(C1, 0, 1, (100, 0), (0, 0), (0, 0));
    let c2 = net.channel(C2, 1, 0, (100, 0), (0, 0), (0, 0));
    let (a, b) = (net.addr(0), net.addr(1));
    let t = |chain, counterparty, amount| Transfer {
        chain,
        counterparty,
        amount: Amount(amount),
        max_fee: Amount(0),
    };
    let ia = net.intent(0, vec![t(C1, b, 30)], vec![t(C2, b, 20)]);
    let ib = net.intent(1, vec![t(C2, a, 20)], vec![t(C1, a, 30)]);
    assert_eq!(net.exec.submit_swap(net.now, vec![ia.clone()]), Err(ExecError::TooFewIntents));
    let greedy = net.intent(1, vec![t(C2, a, 19)], vec![t(C1, a, 30)]);
    assert!(matches!(
        net.exec.submit_swap(net.now, vec![ia.clone(), greedy]),
        Err(ExecError::IntentsDoNotMatch(_))
    ));
    let payment = net.payment(0, 1, 1, 0);
    assert_eq!(net.exec.submit_swap(net.now, vec![ia.clone(), payment]), Err(ExecError::NotASwap));

    let id = net.exec.submit_swap(net.now, vec![ia, ib]).unwrap();
    assert_eq!(net.run(), vec![(id, Status::Succeeded)]);
    assert_eq!((net.balance(0, c1), net.balance(1, c1)), (70, 30));
    assert_eq!((net.balance(1, c2), net.balance(0, c2)), (80, 20));
}
