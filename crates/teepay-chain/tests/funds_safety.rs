//! Attacks on deposits, run on the embedded chain with real node enclaves and the real
//! contract (issue 14, items 1–4): a host lying to its enclave about who deposited what, a
//! deposit mined under a signed close, the same channel id on two deployments, and a
//! channel full of locks. Each attack fails with a typed error (enclave or contract), the
//! refused request changes nothing, and every honest party is paid exactly.

mod support;

use support::*;
use teepay_chain::contract::{ContractEvent, ContractView, Deployment, opened_channel, receipt_events};
use teepay_chain::dev::dev_key;
use teepay_chain::{Chain, EmbeddedChain, Receipt};
use teepay_enclave::{EnclaveError, NewChannel, Request, Response};
use teepay_types::{
    Address, Amount, ChainId, ChannelId, ChannelState, FeePolicy, GasParams, InstanceId, InstanceKind,
    LockState, MAX_LOCKS_PER_CHANNEL, Phase, Report, SignedChannelState, SigningKey, close_channel_call,
    close_gas, deposit_call, derive_channel_id, open_channel_call, register_enclave_call,
};

async fn funded_node<C: Chain>(l: &mut Ledger<'_, C>, d: &Deployment, seed: u8) -> Node {
    let mut node = Node::new(seed, l.chain_id, d.address);
    l.track(node.address()).await;
    l.send("transfer", &dev_key(1), Some(node.address()), ETHER, Vec::new()).await.expect("fund");
    let quote = node.quote(l.chain_id);
    l.send("registerEnclave", &dev_key(2), Some(d.address), 0, register_enclave_call(&quote))
        .await
        .expect("register");
    node
}

/// `a` opens with `dep_a` from its enclave's account; `b` funds `dep_b` (if any, after its
/// host reported the open honestly). Otherwise no enclave is told anything: each test decides
/// what each host reports.
async fn open<C: Chain>(
    l: &mut Ledger<'_, C>,
    a: &mut Node,
    b: &mut Node,
    dep_a: u128,
    dep_b: u128,
) -> (Receipt, Option<Receipt>) {
    let (chain, peer) = (l.chain_id, b.address());
    let opened = l
        .enclave_tx("openChannel", a, Some(300_000), None, |gas| Request::BuildOpenChannel {
            chain,
            peer,
            token: Address::default(),
            deposit: Amount(dep_a),
            gas,
        })
        .await
        .expect("open");
    let id = opened_channel(&opened).expect("ChannelOpened");
    let funded = if dep_b > 0 {
        b.observe((chain, opened.logs[0].address), &events(&opened));
        Some(
            l.enclave_tx("deposit", b, Some(100_000), None, |gas| Request::BuildDeposit {
                channel: id,
                amount: Amount(dep_b),
                gas,
            })
            .await
            .expect("deposit"),
        )
    } else {
        None
    };
    (opened, funded)
}

fn events(r: &Receipt) -> Vec<ContractEvent> {
    receipt_events(r).expect("decodable")
}

fn close_gas_params(locks: usize) -> GasParams {
    GasParams {
        nonce: 0,
        gas_limit: close_gas(locks),
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1,
    }
}

async fn submit_close<C: Chain>(
    l: &mut Ledger<'_, C>,
    signed: &SignedChannelState,
) -> Result<Receipt, String> {
    let d = signed.state.contract;
    l.send("closeChannel", &dev_key(3), Some(d), 0, close_channel_call(signed)).await
}

fn closing_state(node: &mut Node, channel: ChannelId) -> SignedChannelState {
    match node.request(Request::SignClose { channel }).expect("sign close") {
        Response::ChannelState(s) => s,
        other => panic!("expected a state, got {other:?}"),
    }
}

/// Item 1: B's host lies to B's enclave to get B paid A's deposit. Swapping the sides or the
/// id is caught by the enclave (the id is recomputed); inventing a deposit of B's own is
/// caught by the contract (a state may not show more than was deposited on a side); and A,
/// whose host is honest, closes and is paid every wei it put in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_host_cannot_move_its_peers_deposit() {
    let chain = EmbeddedChain::new(ChainId(31337));
    let mut l = Ledger::new(&chain).await;
    let d = l.deploy().await;
    let (mut a, mut b) = (funded_node(&mut l, &d, 1).await, funded_node(&mut l, &d, 2).await);
    let dep_a = ETHER / 2;
    let (opened, _) = open(&mut l, &mut a, &mut b, dep_a, 0).await;
    let id = opened_channel(&opened).unwrap();
    a.observe((l.chain_id, d.address), &events(&opened));
    let ContractEvent::ChannelOpened { nonce, .. } = events(&opened)[0] else { panic!("an open") };

    let before = b.enclave.inspect().clone();
    let honest = NewChannel {
        chain: l.chain_id,
        contract: d.address,
        id,
        peer: a.address(),
        local_is_a: false,
        nonce,
        deposit: Amount(dep_a),
        fee: FeePolicy::default(),
        token: Address::default(),
    };
    // "I opened it, so the deposit is mine": the id no longer derives.
    let swapped = NewChannel { local_is_a: true, ..honest.clone() };
    assert!(matches!(
        b.request(Request::AddChannel(swapped)).unwrap_err(),
        EnclaveError::ChannelIdMismatch { reported, .. } if reported == id
    ));
    // Another chain's or deployment's channel passed off under this id.
    for lie in [
        NewChannel { nonce: nonce + 1, ..honest.clone() },
        NewChannel { chain: ChainId(l.chain_id.0 + 1), ..honest.clone() },
        NewChannel { id: ChannelId([7; 32]), ..honest.clone() },
    ] {
        assert!(matches!(
            b.request(Request::AddChannel(lie)).unwrap_err(),
            EnclaveError::ChannelIdMismatch { .. } | EnclaveError::UnknownChain(_)
        ));
    }
    assert_eq!(b.enclave.inspect(), &before, "refused reports change nothing");

    b.request(Request::AddChannel(honest)).expect("the honest report");
    // A deposit report below what the enclave saw (A's deposit "withdrawn").
    let after_add = b.enclave.inspect().clone();
    assert_eq!(
        b.request(Request::Deposit { channel: id, deposit_a: Amount(0), deposit_b: Amount(dep_a) })
            .unwrap_err(),
        EnclaveError::DepositDecreased
    );
    assert_eq!(b.enclave.inspect(), &after_add);
    // Same totals again: idempotent, nothing sealed.
    let out = b
        .enclave
        .handle(0, Request::Deposit { channel: id, deposit_a: Amount(dep_a), deposit_b: Amount(0) })
        .unwrap();
    assert!(out.sealed.is_none(), "a report that changes nothing is not sealed");

    // The lie the enclave cannot catch: "B deposited as much as A". B's enclave now signs
    // a close paying B half of A's money — and the contract refuses it.
    b.request(Request::Deposit { channel: id, deposit_a: Amount(dep_a), deposit_b: Amount(dep_a) }).unwrap();
    let lying = closing_state(&mut b, id);
    assert_eq!(lying.state.balance_b, Amount(dep_a), "B's enclave believes the lie");
    assert_eq!(submit_close(&mut l, &lying).await.unwrap_err(), "BadDeposit");
    let view = ContractView { chain: &chain, address: d.address };
    assert_eq!(view.channel(id).await.unwrap().status, 1, "still open");

    // A's honest enclave closes: A gets all of its deposit, B nothing.
    let a_before = l.balance(a.address()).await;
    let gas = close_gas_params(0);
    let r = l
        .enclave_tx("closeChannel", &mut a, Some(gas.gas_limit), None, |g| Request::BuildClose {
            channel: id,
            gas: g,
        })
        .await
        .expect("A's close");
    assert!(matches!(
        events(&r)[..],
        [ContractEvent::ChannelClosed { payout_a, payout_b, .. }] if payout_a == Amount(dep_a) && payout_b == Amount(0)
    ));
    assert_eq!(l.balance(a.address()).await, a_before + dep_a - r.fee().0);
    assert_eq!(l.balance(d.address).await, 0);
    l.assert_conserved().await;
}

/// Item 2: A signs its close; before it is mined, B deposits 1 wei (front-running, or a
/// deposit A's watcher had not seen). The close still settles, and B's wei goes back to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_mined_under_a_signed_close_is_paid_back_not_a_freeze() {
    let chain = EmbeddedChain::new(ChainId(31337));
    let mut l = Ledger::new(&chain).await;
    let d = l.deploy().await;
    let (mut a, mut b) = (funded_node(&mut l, &d, 3).await, funded_node(&mut l, &d, 4).await);
    let (dep_a, dep_b) = (ETHER / 4, ETHER / 5);
    let (opened, funded) = open(&mut l, &mut a, &mut b, dep_a, dep_b).await;
    let id = opened_channel(&opened).unwrap();
    a.observe((l.chain_id, d.address), &events(&opened));
    for n in [&mut a, &mut b] {
        n.observe((l.chain_id, d.address), &events(funded.as_ref().unwrap()));
    }
    let signed = closing_state(&mut a, id);
    assert_eq!((signed.state.deposit_a, signed.state.deposit_b), (Amount(dep_a), Amount(dep_b)));

    // B's front-running deposit, from a key B's host holds (any registered party may).
    let r = l
        .enclave_tx("deposit", &mut b, Some(100_000), None, |gas| Request::BuildDeposit {
            channel: id,
            amount: Amount(1),
            gas,
        })
        .await
        .expect("B deposits under A's close");
    // A's watcher sees it too late; its enclave refuses anything new on a closing channel.
    assert_eq!(
        a.request(Request::Deposit { channel: id, deposit_a: Amount(dep_a), deposit_b: Amount(dep_b + 1) })
            .unwrap_err(),
        EnclaveError::ChannelClosed(id)
    );
    let (a0, b0) = (l.balance(a.address()).await, l.balance(b.address()).await);
    let closed = l
        .enclave_tx("closeChannel", &mut a, Some(close_gas(0)), None, |gas| Request::BuildClose {
            channel: id,
            gas,
        })
        .await
        .expect("the stale-by-one-deposit close still settles");
    assert!(events(&r).len() == 1);
    assert_eq!(l.balance(a.address()).await, a0 + dep_a - closed.fee().0);
    assert_eq!(l.balance(b.address()).await, b0 + dep_b + 1, "B's late wei is paid back to B");
    assert_eq!(l.balance(d.address).await, 0);
    l.assert_conserved().await;
}

/// Item 4: channel ids bind the chain and the deployment. The same parties opening their
/// first channel on two deployments get two ids, each the Rust derivation of its own
/// (chain, contract); an enclave refuses the other deployment's channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_ids_bind_chain_and_contract() {
    let chain = EmbeddedChain::new(ChainId(31337));
    let mut l = Ledger::new(&chain).await;
    let (d1, d2) = (l.deploy().await, l.deploy().await);
    let mut ids = Vec::new();
    for d in [&d1, &d2] {
        let a = SigningKey::from_entropy([5; 32]).unwrap();
        let b = SigningKey::from_entropy([6; 32]).unwrap();
        for k in [&a, &b] {
            l.track(k.address()).await;
            if l.balance(k.address()).await == 0 {
                l.send("transfer", &dev_key(1), Some(k.address()), ETHER / 10, Vec::new()).await.unwrap();
            }
            let quote = Report::of(k, NODE_MEASUREMENT, l.chain_id).attest(&authority());
            l.send("registerEnclave", &dev_key(2), Some(d.address), 0, register_enclave_call(&quote))
                .await
                .unwrap();
        }
        let r = l
            .send(
                "openChannel",
                &a,
                Some(d.address),
                1000,
                open_channel_call(b.address(), Address::default(), Amount(1000)),
            )
            .await
            .unwrap();
        let id = opened_channel(&r).unwrap();
        assert_eq!(
            id,
            derive_channel_id(l.chain_id, d.address, a.address(), b.address(), 0, Address::default())
        );
        assert_ne!(
            id,
            derive_channel_id(
                ChainId(l.chain_id.0 + 1),
                d.address,
                a.address(),
                b.address(),
                0,
                Address::default()
            ),
            "another chain id gives another id"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "the same parties and nonce on two deployments: two channels");

    // A node configured for d1 is told of d2's channel: refused whatever the host claims.
    let mut node = Node::new(7, l.chain_id, d1.address);
    let peer = Address([9; 20]);
    let foreign = NewChannel {
        chain: l.chain_id,
        contract: d2.address,
        id: ids[1],
        peer,
        local_is_a: true,
        nonce: 0,
        deposit: Amount(1000),
        fee: FeePolicy::default(),
        token: Address::default(),
    };
    assert!(matches!(
        node.request(Request::AddChannel(foreign.clone())).unwrap_err(),
        EnclaveError::WrongContract { .. }
    ));
    let relabelled = NewChannel { contract: d1.address, ..foreign };
    assert!(matches!(
        node.request(Request::AddChannel(relabelled)).unwrap_err(),
        EnclaveError::ChannelIdMismatch { .. }
    ));
    assert!(node.enclave.inspect().channels.is_empty());
    let _ = deposit_call(ids[0], Amount(1)); // the deposit calldata takes the bound id as is
}

fn cap_state(chain: ChainId, d: Address, id: ChannelId, dep: u128, locks: usize) -> ChannelState {
    ChannelState {
        chain,
        contract: d,
        channel: id,
        token: Address::default(),
        version: 1,
        deposit_a: Amount(dep),
        deposit_b: Amount(0),
        balance_a: Amount(dep),
        balance_b: Amount(0),
        locks: (0..locks)
            .map(|i| {
                let mut instance = [0u8; 32];
                instance[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                LockState {
                    instance: InstanceId(instance),
                    amount: Amount(1),
                    a_to_b: true,
                    // Half apply: every lock resolves for the first time (the costliest close).
                    phase: if i % 2 == 0 { Phase::Committed } else { Phase::Prepared },
                    kind: InstanceKind::MultiHop,
                    hub: teepay_types::Address([0; 20]),
                    deadline: 0,
                }
            })
            .collect(),
    }
}

/// Item 3: a channel at the lock cap, every lock resolved for the first time, closes in one
/// transaction inside the gas the enclave sizes for it (and far inside a 30M block); one
/// lock more is refused by the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_at_the_lock_cap_closes_within_its_gas() {
    let chain = EmbeddedChain::new(ChainId(31337));
    let mut l = Ledger::new(&chain).await;
    let d = l.deploy().await;
    let a = SigningKey::from_entropy([11; 32]).unwrap();
    let b = SigningKey::from_entropy([12; 32]).unwrap();
    for k in [&a, &b] {
        l.track(k.address()).await;
        l.send("transfer", &dev_key(1), Some(k.address()), ETHER, Vec::new()).await.unwrap();
        let quote = Report::of(k, NODE_MEASUREMENT, l.chain_id).attest(&authority());
        l.send("registerEnclave", &dev_key(2), Some(d.address), 0, register_enclave_call(&quote))
            .await
            .unwrap();
    }
    let dep = ETHER / 10;
    let open_one = async |l: &mut Ledger<'_, EmbeddedChain>| {
        let r = l
            .send(
                "openChannel",
                &a,
                Some(d.address),
                dep,
                open_channel_call(b.address(), Address::default(), Amount(dep)),
            )
            .await
            .unwrap();
        opened_channel(&r).unwrap()
    };
    let over = open_one(&mut l).await;
    let full = open_one(&mut l).await;
    let empty = open_one(&mut l).await;

    let too_many = cap_state(l.chain_id, d.address, over, dep, MAX_LOCKS_PER_CHANNEL + 1).sign(&a);
    assert_eq!(submit_close(&mut l, &too_many).await.unwrap_err(), "TooManyLocks");

    let mut gas_used = Vec::new();
    for (id, locks) in [(empty, 0), (full, MAX_LOCKS_PER_CHANNEL)] {
        let signed = cap_state(l.chain_id, d.address, id, dep, locks).sign(&a);
        let r = submit_close(&mut l, &signed).await.expect("a close at the cap settles");
        assert!(r.success);
        let resolved =
            events(&r).iter().filter(|e| matches!(e, ContractEvent::InstanceResolved { .. })).count();
        assert_eq!(resolved, locks, "every lock resolved for the first time");
        assert!(
            r.gas_used <= close_gas(locks),
            "{locks} locks used {} gas, above the {} the enclave sizes a close to",
            r.gas_used,
            close_gas(locks)
        );
        gas_used.push(r.gas_used);
    }
    assert!(close_gas(MAX_LOCKS_PER_CHANNEL) < 30_000_000, "a close at the cap fits a block");
    println!(
        "close gas: {} with no lock, {} with {} first-time locks ({} per lock); limit sized {}",
        gas_used[0],
        gas_used[1],
        MAX_LOCKS_PER_CHANNEL,
        (gas_used[1] - gas_used[0]) / MAX_LOCKS_PER_CHANNEL as u64,
        close_gas(MAX_LOCKS_PER_CHANNEL)
    );
    assert_eq!(l.balance(d.address).await, dep, "only the refused channel's deposit is left");
}
