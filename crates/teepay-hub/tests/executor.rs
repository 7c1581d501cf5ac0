//! The executor with real node enclaves in-process (no sockets): routing and reservations,
//! statuses, refunds on timeout and on NACK, swaps assembled from matching intents.

use teepay_chain::contract::ContractEvent;
use teepay_coordinator::{Coordinator, HubConfig};
use teepay_enclave::{FundedChannel, NodeConfig, NodeEnclave, Request, Response};
use teepay_hub::executor::{ExecError, Executor, Status};
use teepay_routing::{ChannelInfo, Network, RouteError};
use teepay_types::{
    Address, Amount, Asset, ChainId, ChannelId, FeePolicy, InstanceId, SignedOrder, SigningKey, SimPlatform,
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
            swap_lock_time: teepay_coordinator::DAY_MS,
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

    /// Nodes 0 — 1 — 2, a channel of 100 on each side between neighbours, no fees.
    fn line_of_three() -> Self {
        let mut net = Net::new(3);
        net.channel(C1, 0, 1, (100, 100), (0, 0), (0, 0));
        net.channel(C1, 1, 2, (100, 100), (0, 0), (0, 0));
        net
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
        let id = self.enclave_channel(chain, Address::default(), a, b, deposits, fees);
        let info = ChannelInfo {
            id,
            a: self.addr(a),
            b: self.addr(b),
            balance_a: Amount(deposits.0),
            balance_b: Amount(deposits.1),
            fee_a: fee(advertised.0),
            fee_b: fee(advertised.1),
        };
        self.exec.network_mut().graph_mut(chain, teepay_types::Asset::Native).upsert_channel(&info).unwrap();
        id
    }

    /// A channel of `token` (zero: ether) in both enclaves, deposited by `a` only; the hub
    /// learns of it from the contract's events, as chain sync hands them over.
    fn synced_channel(
        &mut self,
        chain: ChainId,
        token: Address,
        a: usize,
        b: usize,
        deposit: u128,
    ) -> ChannelId {
        let id = self.enclave_channel(chain, token, a, b, (deposit, 0), (0, 0));
        let opened = ContractEvent::ChannelOpened {
            channel: id,
            a: self.addr(a),
            b: self.addr(b),
            deposit: Amount(deposit),
            nonce: 0,
            token,
        };
        self.exec.on_chain_event(self.now, chain, &opened).unwrap();
        id
    }

    fn enclave_channel(
        &mut self,
        chain: ChainId,
        token: Address,
        a: usize,
        b: usize,
        deposits: (u128, u128),
        fees: (u128, u128),
    ) -> ChannelId {
        let onchain = FundedChannel {
            chain,
            contract: CONTRACT,
            a: self.addr(a),
            b: self.addr(b),
            nonce: u64::from(self.next_channel),
            deposit_a: Amount(deposits.0),
            deposit_b: Amount(deposits.1),
            token,
        };
        let id = onchain.id();
        self.next_channel += 1;
        for (me, is_a, f) in [(a, true, fees.0), (b, false, fees.1)] {
            for request in onchain.requests(is_a, fee(f)) {
                self.nodes[me].handle(0, request).unwrap();
            }
        }
        id
    }

    fn payment(&mut self, payer: usize, payee: usize, amount: u128, max_fee: u128) -> SignedOrder {
        self.payment_of(Asset::Native, payer, payee, amount, max_fee)
    }

    fn payment_of(
        &mut self,
        asset: Asset,
        payer: usize,
        payee: usize,
        amount: u128,
        max_fee: u128,
    ) -> SignedOrder {
        let payee = self.addr(payee);
        let req = Request::CreatePayment {
            chain: C1,
            asset,
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

    /// Runs until every participant acknowledged the outcome too (the instance is complete):
    /// the final acks arrive in rounds after the decision.
    fn run_to_completion(&mut self) -> Vec<(InstanceId, Status)> {
        let mut finished = self.run();
        for _ in 0..3 {
            finished.extend(self.run());
        }
        finished
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
    let g = net.exec.network().graph(C1, teepay_types::Asset::Native).unwrap();
    assert_eq!(g.available(c01, net.addr(0)).unwrap(), Amount(87));
    let finished = net.run();
    assert_eq!(finished, vec![(id, Status::Succeeded)]);
    assert_eq!(net.exec.in_flight(), 0);
    // Node 1 forwards 12 and keeps its fee of 2 (it charges on c12); node 2 charges 1.
    assert_eq!((net.balance(0, c01), net.balance(1, c01)), (87, 113));
    assert_eq!((net.balance(1, c12), net.balance(2, c12)), (89, 111));
    assert_eq!((net.balance(2, c23), net.balance(3, c23)), (90, 110));
    let g = net.exec.network().graph(C1, teepay_types::Asset::Native).unwrap();
    assert_eq!(g.available(c01, net.addr(0)).unwrap(), Amount(87), "the map follows the applied transfer");
    assert_eq!(g.available(c01, net.addr(1)).unwrap(), Amount(113));
    assert_eq!(g.available(c23, net.addr(3)).unwrap(), Amount(110));
}

#[test]
fn complete_instances_leave_the_hub_enclave_after_their_deadline_but_keep_their_status() {
    let mut net = Net::line_of_three();
    let order = net.payment(0, 2, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    assert_eq!(net.run_to_completion(), vec![(id, Status::Succeeded)]);
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

/// Issue 14's flaky test: a hub killed after an instance ended, before its status DB heard
/// of it, restarts past the instance's deadline and resumes it (`executor_for`). If the first
/// event is a tick, pruning drops the complete instance from the hub enclave before any flush
/// reports it: its status stayed "in flight" forever, here and in the DB.
#[test]
fn a_resumed_instance_reports_its_outcome_even_when_a_tick_comes_first() {
    let mut net = Net::line_of_three();
    let order = net.payment(0, 2, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    assert_eq!(net.run_to_completion(), vec![(id, Status::Succeeded)]);
    assert!(net.exec.coordinator().instance(id).is_some_and(|i| i.is_complete()));
    // The restart: the DB still lists the instance in flight.
    net.exec.resume(id);
    assert_eq!(net.exec.status(id), Some(&Status::InFlight));
    let deadline = net.exec.coordinator().instance(id).unwrap().spec.deadline;
    net.exec.tick(deadline + 1);
    assert!(net.exec.coordinator().instance(id).is_none(), "pruned by the tick");
    let finished: Vec<_> =
        net.exec.flush(deadline + 1).finished.into_iter().map(|f| (f.id, f.status)).collect();
    assert_eq!(finished, vec![(id, Status::Succeeded)], "reported once, for the DB");
    assert_eq!(net.exec.status(id), Some(&Status::Succeeded));
}

/// The same crash a moment earlier: neither the started nor the ended row reached the DB.
/// The restarted hub records the instances its enclave holds that the DB lacks, and reports
/// their outcomes.
#[tokio::test]
async fn a_restart_records_instances_the_db_never_heard_of() {
    let mut net = Net::line_of_three();
    let order = net.payment(0, 2, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    net.run_to_completion();
    let dir = std::env::temp_dir().join(format!("teepay-unrecorded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store =
        teepay_store::Store::connect(&format!("sqlite://{}", dir.join("hub.db").display())).await.unwrap();
    let coordinator = net.exec.into_coordinator();
    let deadline = coordinator.instance(id).unwrap().spec.deadline;
    let mut exec = teepay_hub::runtime::executor_for(coordinator, &store).await.unwrap();
    let row = store.instance(id).await.unwrap().expect("recorded at start");
    assert_eq!(row.status, teepay_store::InstanceStatus::InFlight);
    exec.hold_until_recorded();
    exec.tick(deadline + 1);
    assert!(exec.coordinator().instance(id).is_some(), "kept until the DB has its outcome");
    let finished: Vec<_> = exec.flush(deadline + 1).finished.into_iter().map(|f| (f.id, f.status)).collect();
    assert_eq!(finished, vec![(id, Status::Succeeded)]);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hub with a status DB keeps each ended instance in its enclave until the DB recorded
/// its final status: a crash in between then finds it still there to report again.
#[test]
fn an_ended_instance_is_pruned_only_once_its_status_is_recorded() {
    let mut net = Net::line_of_three();
    net.exec.hold_until_recorded();
    let (one, two) = (net.payment(0, 2, 10, 0), net.payment(0, 2, 10, 0));
    let first = net.exec.submit_payment(net.now, one).unwrap();
    net.now += 5; // a later deadline (pruning goes by deadline)
    let second = net.exec.submit_payment(net.now, two).unwrap();
    net.run_to_completion();
    let deadline = |net: &Net, id| net.exec.coordinator().instance(id).unwrap().spec.deadline;
    let late = deadline(&net, first).max(deadline(&net, second)) + 1;
    net.exec.tick(late);
    assert!(net.exec.coordinator().instance(first).is_some(), "its status is not in the DB yet");
    assert!(net.exec.coordinator().instance(second).is_some());
    net.exec.recorded(first);
    net.exec.tick(late);
    assert!(net.exec.coordinator().instance(first).is_none(), "recorded, then pruned");
    assert!(net.exec.coordinator().instance(second).is_some(), "still unrecorded");
    net.exec.recorded(second);
    net.exec.recorded(second); // a repeat changes nothing
    net.exec.tick(late);
    assert!(net.exec.coordinator().instance(second).is_none());
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
        net.exec
            .network()
            .graph(C1, teepay_types::Asset::Native)
            .unwrap()
            .available(c01, net.addr(0))
            .unwrap(),
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
    assert_eq!(
        net.exec
            .network()
            .graph(C1, teepay_types::Asset::Native)
            .unwrap()
            .available(c01, net.addr(0))
            .unwrap(),
        Amount(100)
    );

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
        asset: teepay_types::Asset::Native,
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

/// An `InstanceResolved` log as the contract emits it (`instanceId` and `channelId` indexed).
fn resolved_log(
    instance: InstanceId,
    applied: bool,
    channel: ChannelId,
    block: u64,
) -> teepay_chain::LogEntry {
    let mut data = vec![0u8; 32];
    data[31] = u8::from(applied);
    teepay_chain::LogEntry {
        address: CONTRACT,
        topics: vec![
            teepay_types::keccak256(b"InstanceResolved(bytes32,bool,bytes32)"),
            instance.0,
            channel.0,
        ],
        data,
        block_number: block,
        tx_hash: [block as u8; 32],
        log_index: 0,
    }
}

/// Issue 14 item 8: an eject mined while the hub was down is applied to the DB by the
/// startup sync only; `replay_chain_outcomes` (run at every start) hands it to the hub
/// enclave, which RESOLVEs the instance. Replaying again changes (and seals) nothing.
#[tokio::test]
async fn outcomes_fixed_on_chain_while_the_hub_was_down_reach_its_enclave() {
    let mut net = Net::new(3);
    let c01 = net.channel(C1, 0, 1, (100, 100), (0, 0), (0, 0));
    net.channel(C1, 1, 2, (100, 100), (0, 0), (0, 0));
    net.silent = vec![0, 1, 2]; // nobody answers: the instance stays undecided
    let order = net.payment(0, 2, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    net.run();
    assert_eq!(net.exec.coordinator().instance(id).unwrap().phase, teepay_coordinator::HubPhase::None);

    let dir = std::env::temp_dir().join(format!("teepay-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store =
        teepay_store::Store::connect(&format!("sqlite://{}", dir.join("hub.db").display())).await.unwrap();
    store.init_cursor(C1, CONTRACT, 1).await.unwrap();
    store.apply_logs(C1, &[resolved_log(id, false, c01, 2)], 3, (2, [2; 32])).await.unwrap();

    let resolved = teepay_hub::runtime::replay_chain_outcomes(&mut net.exec, &store, net.now).await.unwrap();
    assert_eq!(resolved, 1);
    assert_eq!(
        net.exec.coordinator().instance(id).unwrap().phase,
        teepay_coordinator::HubPhase::Resolved(teepay_types::Outcome::Revert)
    );
    let out = net.exec.flush(net.now);
    assert!(out.sealed.is_some(), "the resolution is sealed before RESOLVE leaves");
    assert!(
        out.batches.iter().all(|b| b
            .batch
            .items
            .iter()
            .all(|i| matches!(i, teepay_types::HubItem::Resolve { .. })))
    );
    assert_eq!(out.batches.len(), 3, "RESOLVE goes to every participant");

    // A second start replays the same outcome: nothing changes, nothing is sealed.
    let again = teepay_hub::runtime::replay_chain_outcomes(&mut net.exec, &store, net.now).await.unwrap();
    assert_eq!(again, 0, "a decided instance is not replayed");
    net.exec.on_chain_outcome(net.now, id, teepay_types::Outcome::Revert).unwrap();
    assert!(net.exec.flush(net.now).sealed.is_none(), "a repeated outcome is not sealed");
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 14 item 11: a swap request's cost is bounded before any work: too many intents or
/// transfers are refused on their count, then every intent's signature and its party's
/// admission are checked before matching and routing; matching compares transfers as
/// multisets (one give cannot satisfy two receives).
#[test]
fn swap_requests_are_capped_and_checked_before_matching_or_routing() {
    let mut net = Net::new(2);
    net.channel(C1, 0, 1, (100, 0), (0, 0), (0, 0));
    net.channel(C2, 1, 0, (100, 0), (0, 0), (0, 0));
    let (a, b) = (net.addr(0), net.addr(1));
    let t = |chain, counterparty, amount| Transfer {
        chain,
        asset: teepay_types::Asset::Native,
        counterparty,
        amount: Amount(amount),
        max_fee: Amount(0),
    };
    let outsider = SigningKey::from_entropy([0x5e; 32]).unwrap();
    let forged_intent = |key: &SigningKey, gives: Vec<Transfer>, receives: Vec<Transfer>| {
        teepay_types::Order::Swap(teepay_types::SwapIntent {
            party: key.address(),
            gives,
            receives,
            nonce: 0,
            expires_at: 10_000,
        })
        .sign(key)
    };
    // 17 intents: refused on the count alone.
    let junk: Vec<SignedOrder> = (0..=teepay_types::MAX_SWAP_PARTIES)
        .map(|_| forged_intent(&outsider, vec![t(C1, a, 1)], vec![t(C2, a, 1)]))
        .collect();
    assert_eq!(
        net.exec.submit_swap(net.now, junk),
        Err(ExecError::TooManyIntents { got: 17, max: teepay_types::MAX_SWAP_PARTIES })
    );
    // Nine transfers in one intent.
    let wide = forged_intent(&outsider, vec![t(C1, a, 1); 5], vec![t(C2, a, 1); 4]);
    let ia = net.intent(0, vec![t(C1, b, 30)], vec![t(C2, b, 20)]);
    assert_eq!(
        net.exec.submit_swap(net.now, vec![ia.clone(), wide]),
        Err(ExecError::TooManyTransfers { max: teepay_types::MAX_TRANSFERS_PER_INTENT })
    );
    // A key the hub never admitted, and an admitted party's intent with a broken signature.
    let stranger = forged_intent(&outsider, vec![t(C2, a, 20)], vec![t(C1, a, 30)]);
    assert_eq!(
        net.exec.submit_swap(net.now, vec![ia.clone(), stranger]),
        Err(ExecError::BadIntent(outsider.address()))
    );
    let mut ib = net.intent(1, vec![t(C2, a, 20)], vec![t(C1, a, 30)]);
    let genuine = ib.clone();
    let teepay_types::Auth::Signature(sig) = &mut ib.auth else { panic!("intents are signed") };
    sig.0[7] ^= 1;
    assert_eq!(net.exec.submit_swap(net.now, vec![ia.clone(), ib]), Err(ExecError::BadIntent(b)));
    // One give cannot stand for two receives.
    let doubled = net.intent(1, vec![t(C2, a, 20)], vec![t(C1, a, 30), t(C1, a, 30)]);
    assert!(matches!(
        net.exec.submit_swap(net.now, vec![ia.clone(), doubled]),
        Err(ExecError::IntentsDoNotMatch(why)) if why.contains("does not give it")
    ));
    assert!(net.exec.coordinator().inspect().instances.is_empty(), "nothing refused was started");
    let id = net.exec.submit_swap(net.now, vec![ia, genuine]).unwrap();
    assert_eq!(net.run(), vec![(id, Status::Succeeded)]);
}

/// Encoded size of everything each enclave seals, and the executor's status count.
fn footprint(net: &Net) -> (usize, usize, usize) {
    let hub = teepay_types::encoding::encode(net.exec.coordinator().inspect()).len();
    let nodes = net.nodes.iter().map(|n| teepay_types::encoding::encode(n.inspect()).len()).max().unwrap();
    (hub, nodes, net.exec.tracked_len())
}

/// Issue 14 item 12: sealed state and memory follow the load in flight, not history. Rounds
/// of payments back and forth over three hops, the clock advancing 10 s per round, so every
/// retention (finished instance records, used orders, final statuses) is passed many times;
/// the largest hub and node sealed states and the executor's status count in the last
/// quarter of the run stay within 10% of those in the second quarter. CI runs 20,000
/// payments; `TEEPAY_SOAK_PAYMENTS=1000000` runs the long soak (README gives its figures).
#[test]
fn sealed_state_and_memory_stay_flat_over_many_payments() {
    let total: usize =
        std::env::var("TEEPAY_SOAK_PAYMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    const PER_ROUND: usize = 100;
    let mut net = Net::new(4);
    for i in 0..3 {
        net.channel(C1, i, i + 1, (1_000_000, 1_000_000), (0, 0), (0, 0));
    }
    let rounds = total.div_ceil(PER_ROUND);
    let mut quarters = vec![(0usize, 0usize, 0usize); 4];
    let mut succeeded = 0;
    for round in 0..rounds {
        let (payer, payee) = if round % 2 == 0 { (0, 3) } else { (3, 0) };
        for _ in 0..PER_ROUND {
            let req = Request::CreatePayment {
                chain: C1,
                asset: teepay_types::Asset::Native,
                payee: net.addr(payee),
                amount: Amount(1),
                max_fee: Amount(0),
                expires_at: net.now + 10_000,
            };
            let Response::Order(order) = net.nodes[payer].handle(net.now, req).unwrap().response else {
                panic!()
            };
            net.exec.submit_payment(net.now, order).unwrap();
        }
        succeeded += net.run().iter().filter(|(_, s)| *s == Status::Succeeded).count();
        net.now += 10_000;
        net.exec.tick(net.now);
        net.run();
        let q = &mut quarters[round * 4 / rounds];
        let (h, n, t) = footprint(&net);
        *q = (q.0.max(h), q.1.max(n), q.2.max(t));
        if total >= 100_000 && round % (rounds / 10).max(1) == 0 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let rss = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .unwrap_or("VmRSS: ?")
                .trim_start_matches("VmRSS:")
                .trim()
                .to_string();
            println!(
                "round {round}/{rounds}: hub sealed {h} B, largest node sealed {n} B, statuses in memory {t}, resident {rss}"
            );
        }
    }
    assert_eq!(succeeded, rounds * PER_ROUND, "every payment succeeded");
    let (second, last) = (quarters[1], quarters[3]);
    println!("{total} payments: largest footprints (hub B, node B, statuses) by quarter {quarters:?}");
    for (what, mid, end) in [
        ("hub sealed state", second.0, last.0),
        ("node sealed state", second.1, last.1),
        ("statuses in memory", second.2, last.2),
    ] {
        assert!(end <= mid + mid / 10, "{what} grew from {mid} to {end}");
    }
}

/// Issue 14 item 12: an ack or refund request that changes nothing (a duplicate, or for an
/// instance already refunded) is neither logged nor sealed: a peer cannot make the hub write.
#[test]
fn duplicate_acks_and_moot_refund_requests_are_not_sealed() {
    let mut net = Net::line_of_three();
    let order = net.payment(0, 2, 10, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    let out = net.exec.flush(net.now);
    let batch = out.batches.into_iter().find(|b| b.batch.node == net.addr(1)).unwrap();
    let Response::Batch(result) = net.nodes[1].handle(net.now, Request::HubBatch(batch)).unwrap().response
    else {
        panic!()
    };
    let ack = result.ack.unwrap();
    net.exec.on_ack(net.now, &ack).unwrap();
    assert!(net.exec.flush(net.now).sealed.is_some(), "the first PREPARED is sealed");
    for _ in 0..3 {
        net.exec.on_ack(net.now, &ack).unwrap();
        assert!(net.exec.flush(net.now).sealed.is_none(), "a duplicate ack is not");
    }
    // Refunded on timeout; the payer then asks for the refund it already has.
    net.silent = vec![0, 1, 2];
    net.now += TIMEOUT + 1;
    net.exec.tick(net.now);
    net.exec.flush(net.now);
    let Response::RefundRequest(req) =
        net.nodes[1].handle(net.now, Request::RequestRefund { instance: id }).unwrap().response
    else {
        panic!()
    };
    net.exec.on_refund_request(net.now, &req).unwrap();
    assert!(net.exec.flush(net.now).sealed.is_none(), "a moot refund request is not sealed");
}

/// Issue 16: a receipt a payee's node passes on reaches the payer only if it is the payee's
/// own, for exactly the applied instance's payment of that invoice. A lying node gets
/// `BadReceipt` whatever it alters.
#[test]
fn a_receipt_is_passed_on_only_from_its_payee_for_exactly_its_payment() {
    use teepay_types::PaymentReceipt;
    let mut net = Net::line_of_three();
    let create = Request::CreateInvoice {
        chain: C1,
        asset: teepay_types::Asset::Native,
        amount: Some(Amount(10)),
        memo_hash: [1; 32],
        expires_at: 5_000,
    };
    let Response::Invoice(invoice) = net.nodes[2].handle(net.now, create).unwrap().response else { panic!() };
    let pay = Request::PayInvoice {
        invoice: Box::new(invoice.clone()),
        amount: None,
        max_fee: Amount(0),
        expires_at: 5_000,
    };
    let Response::Order(order) = net.nodes[0].handle(net.now, pay).unwrap().response else { panic!() };
    let id = net.exec.submit_payment(net.now, order).unwrap();
    assert_eq!(net.run(), vec![(id, Status::Succeeded)]);
    let ask = Request::InvoiceReceipt { invoice: invoice.invoice.id() };
    let Response::Receipt(receipt) = net.nodes[2].handle(net.now, ask).unwrap().response else { panic!() };
    let (payer, payee, other) = (net.addr(0), net.addr(2), net.addr(1));
    assert_eq!(net.exec.check_receipt(payee, &receipt).unwrap(), payer);

    let refused = |r: Result<Address, teepay_hub::executor::ExecError>| {
        assert!(matches!(r, Err(teepay_hub::executor::ExecError::BadReceipt(_))), "{r:?}");
    };
    // From another node's link; altered amount or payer (the signature no longer holds).
    refused(net.exec.check_receipt(other, &receipt));
    refused(net.exec.check_receipt(payee, &PaymentReceipt { amount: Amount(1_000), ..receipt.clone() }));
    refused(net.exec.check_receipt(payee, &PaymentReceipt { payer: other, ..receipt.clone() }));
    // Signed by someone else in its own name, for this instance.
    let impostor = SigningKey::from_entropy([0x66; 32]).unwrap();
    let forged = PaymentReceipt::sign(&impostor, receipt.invoice, id, Amount(10), payer);
    refused(net.exec.check_receipt(impostor.address(), &forged));
    // Another invoice, or an instance that pays none (a keysend), or none at all.
    let (mut wrong_invoice, mut keysend) = (receipt.clone(), receipt.clone());
    wrong_invoice.invoice = [9; 32];
    refused(net.exec.check_receipt(payee, &wrong_invoice));
    let plain = net.payment(0, 2, 5, 0);
    let plain_id = net.exec.submit_payment(net.now, plain).unwrap();
    assert_eq!(net.run(), vec![(plain_id, Status::Succeeded)]);
    keysend.instance = plain_id;
    refused(net.exec.check_receipt(payee, &keysend));
    keysend.instance = InstanceId([7; 32]);
    refused(net.exec.check_receipt(payee, &keysend));
}

/// The hub keeps one map per (chain, asset), filled from chain events: a token payment
/// routes over the token's channels only, an ether payment over ether's, a deposit and a
/// close reach the map that holds the channel, and a swap of a token for ether routes
/// each leg in its own asset.
#[test]
fn routes_each_asset_over_its_own_channels() {
    let usdc = Address([0x55; 20]);
    let mut net = Net::new(3);
    let token_01 = net.synced_channel(C1, usdc, 0, 1, 1_000);
    let token_12 = net.synced_channel(C1, usdc, 1, 2, 1_000);
    let ether_01 = net.synced_channel(C1, Address::default(), 1, 0, 50);
    let ether_12 = net.synced_channel(C1, Address::default(), 1, 2, 50);
    let usdc_map = |net: &Net| net.exec.network().graph(C1, Asset::Erc20(usdc)).unwrap().channel_count();
    assert_eq!(usdc_map(&net), 2);
    assert_eq!(net.exec.network().graph(C1, Asset::Native).unwrap().channel_count(), 2);

    // 300 of the token: more than any ether channel holds, so only the token map can carry it.
    let order = net.payment_of(Asset::Erc20(usdc), 0, 2, 300, 0);
    let id = net.exec.submit_payment(net.now, order).unwrap();
    assert_eq!(net.run(), vec![(id, Status::Succeeded)]);
    assert_eq!((net.balance(0, token_01), net.balance(2, token_12)), (700, 300));
    assert_eq!((net.balance(1, ether_01), net.balance(1, ether_12)), (50, 50), "no ether moved");
    let order = net.payment(0, 2, 300, 0);
    assert!(
        matches!(net.exec.submit_payment(net.now, order), Err(ExecError::Route(RouteError::NoRoute))),
        "ether channels cannot carry 300"
    );
    let order = net.payment_of(Asset::Erc20(Address([0x66; 20])), 0, 2, 1, 0);
    assert!(matches!(
        net.exec.submit_payment(net.now, order),
        Err(ExecError::Route(RouteError::NoChannels(C1, Asset::Erc20(_))))
    ));

    // Token for ether: 0 gives 100 of the token to 1, 1 gives 20 wei to 0.
    let t = |asset, who: Address, amount| Transfer {
        chain: C1,
        asset,
        counterparty: who,
        amount: Amount(amount),
        max_fee: Amount(0),
    };
    let (a0, a1) = (net.addr(0), net.addr(1));
    let i0 = net.intent(0, vec![t(Asset::Erc20(usdc), a1, 100)], vec![t(Asset::Native, a1, 20)]);
    let i1 = net.intent(1, vec![t(Asset::Native, a0, 20)], vec![t(Asset::Erc20(usdc), a0, 100)]);
    let id = net.exec.submit_swap(net.now, vec![i0, i1]).unwrap();
    assert_eq!(net.run(), vec![(id, Status::Succeeded)]);
    assert_eq!((net.balance(0, token_01), net.balance(0, ether_01)), (600, 20));
    // Intents whose assets do not match are not a swap.
    let i0 = net.intent(0, vec![t(Asset::Erc20(usdc), a1, 100)], vec![t(Asset::Native, a1, 20)]);
    let i1 = net.intent(1, vec![t(Asset::Native, a0, 20)], vec![t(Asset::Native, a0, 100)]);
    assert!(matches!(
        net.exec.submit_swap(net.now, vec![i0, i1]),
        Err(ExecError::IntentsDoNotMatch(why)) if why.contains("of ether") || why.contains("of token")
    ));

    // A deposit and a close reach the token map, whichever map holds the channel.
    let funded = ContractEvent::ChannelFunded {
        channel: token_12,
        party: net.addr(2),
        amount: Amount(40),
        deposit_a: Amount(1_000),
        deposit_b: Amount(40),
    };
    net.exec.on_chain_event(net.now, C1, &funded).unwrap();
    let graph = net.exec.network().graph(C1, Asset::Erc20(usdc)).unwrap();
    assert_eq!(graph.available(token_12, net.addr(2)).unwrap(), Amount(340));
    let closed = ContractEvent::ChannelClosed {
        channel: token_12,
        version: 9,
        payout_a: Amount(700),
        payout_b: Amount(340),
        ejected: false,
    };
    net.exec.on_chain_event(net.now, C1, &closed).unwrap();
    let order = net.payment_of(Asset::Erc20(usdc), 0, 2, 1, 0);
    assert!(net.exec.submit_payment(net.now, order).is_err(), "the closed channel no longer routes");
}
