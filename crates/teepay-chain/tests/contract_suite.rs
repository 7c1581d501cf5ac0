//! The `PaymentChannels` suite, one body run against every backend: the embedded revm chain,
//! `teepay devnet` (the embedded chain behind JSON-RPC, reached with the RPC client) and a
//! live anvil. Every scenario checks exact payouts, and each backend run ends by checking
//! that every wei that entered a tracked account or the contract left it again or paid gas.

mod support;
mod swap_settlement;

use alloy_primitives::{B256, Bytes, U256};
use alloy_sol_types::SolCall;
use support::*;
use teepay_chain::contract::{ContractEvent, ContractView, Deployment, opened_channel, receipt_events};
use teepay_chain::dev::dev_key;
use teepay_chain::{CallRequest, Chain, EmbeddedChain, PaymentChannels, Receipt, RpcChain};
use teepay_enclave::{EnclaveError, FeePolicy, FundedChannel, Request, Response};
use teepay_types::{
    Address, Amount, ChainId, ChannelId, ChannelState, InstanceId, InstanceKind, LockState, Phase, Report,
    SigningKey, close_channel_call, deposit_call, open_channel_call, register_enclave_call,
};

fn events_of(r: &Receipt) -> Vec<ContractEvent> {
    receipt_events(r).expect("decodable")
}

async fn fund<C: Chain>(l: &mut Ledger<'_, C>, to: Address, amount: u128) {
    l.track(to).await;
    l.send("transfer", &dev_key(1), Some(to), amount, Vec::new()).await.expect("fund");
}

async fn register<C: Chain>(
    l: &mut Ledger<'_, C>,
    d: &Deployment,
    quote: &teepay_types::Quote,
) -> Result<Receipt, String> {
    l.send("registerEnclave", &dev_key(2), Some(d.address), 0, register_enclave_call(quote)).await
}

/// A registered key standing in for an enclave whose rounds the contract never sees: the
/// contract only checks that a registered party signed, so lock states are signed directly.
async fn raw_party<C: Chain>(l: &mut Ledger<'_, C>, d: &Deployment, seed: u8) -> SigningKey {
    let key = SigningKey::from_entropy([seed; 32]).expect("key");
    fund(l, key.address(), ETHER / 10).await;
    let quote = Report::of(&key, NODE_MEASUREMENT, l.chain_id).attest(&authority());
    register(l, d, &quote).await.expect("register raw party");
    key
}

async fn open_raw<C: Chain>(
    l: &mut Ledger<'_, C>,
    d: &Deployment,
    a: &SigningKey,
    b: &SigningKey,
    dep_a: u128,
    dep_b: u128,
) -> ChannelId {
    let r = l
        .send(
            "openChannel",
            a,
            Some(d.address),
            dep_a,
            open_channel_call(b.address(), Address::default(), Amount(dep_a)),
        )
        .await
        .expect("open");
    let id = opened_channel(&r).expect("ChannelOpened event");
    if dep_b > 0 {
        l.send("deposit", b, Some(d.address), dep_b, deposit_call(id, Amount(dep_b))).await.expect("deposit");
    }
    id
}

async fn close_with<C: Chain>(
    l: &mut Ledger<'_, C>,
    d: &Deployment,
    signed: &teepay_types::SignedChannelState,
) -> Result<Receipt, String> {
    let function = if signed.state.locks.is_empty() { "closeChannel" } else { "closeChannel (eject)" };
    l.send(function, &dev_key(3), Some(d.address), 0, close_channel_call(signed)).await
}

/// A state of channel `id` as an enclave that has seen `deposits` (A, B) would sign it.
#[allow(clippy::too_many_arguments)]
fn state(
    l_chain: ChainId,
    d: &Deployment,
    id: ChannelId,
    version: u64,
    deposits: (u128, u128),
    a: u128,
    b: u128,
    locks: Vec<LockState>,
) -> ChannelState {
    ChannelState {
        chain: l_chain,
        contract: d.address,
        channel: id,
        token: Address::default(),
        version,
        deposit_a: Amount(deposits.0),
        deposit_b: Amount(deposits.1),
        balance_a: Amount(a),
        balance_b: Amount(b),
        locks,
    }
}

fn lock(instance: InstanceId, amount: u128, phase: Phase) -> LockState {
    LockState {
        instance,
        amount: Amount(amount),
        a_to_b: true,
        phase,
        kind: InstanceKind::MultiHop,
        hub: Address([0; 20]),
        deadline: 0,
    }
}

// ------------------------------------------------------------------ scenarios

async fn registration<C: Chain>(l: &mut Ledger<'_, C>) {
    let d = l.deploy().await;
    let view = ContractView { chain: l.chain, address: d.address };
    let mut node = Node::new(1, l.chain_id, d.address);
    let quote = node.quote(l.chain_id);
    let r = register(l, &d, &quote).await.expect("valid quote registers");
    assert_eq!(
        events_of(&r),
        vec![ContractEvent::EnclaveRegistered { enclave: node.address(), measurement: NODE_MEASUREMENT }]
    );
    assert_eq!(view.enclave_measurement(node.address()).await.unwrap(), Some(NODE_MEASUREMENT));
    assert_eq!(register(l, &d, &quote).await.unwrap_err(), "AlreadyRegistered");

    let impostor = SigningKey::from_entropy([0x66; 32]).unwrap();
    let other_key = SigningKey::from_entropy([0x67; 32]).unwrap();
    let other = other_key.address();
    let forged = Report::of(&other_key, NODE_MEASUREMENT, l.chain_id).attest(&impostor);
    assert_eq!(register(l, &d, &forged).await.unwrap_err(), "BadQuote", "quote by a non-authority");
    let wrong_chain = Report::of(&other_key, NODE_MEASUREMENT, ChainId(999)).attest(&authority());
    assert_eq!(register(l, &d, &wrong_chain).await.unwrap_err(), "BadQuote", "quote for another chain");
    let mut mismatched = Report::of(&other_key, NODE_MEASUREMENT, l.chain_id).attest(&authority());
    mismatched.report.enclave = impostor.address();
    assert_eq!(register(l, &d, &mismatched).await.unwrap_err(), "BadQuote", "quote for another key");
    let unknown = Report::of(&other_key, [0x33; 32], l.chain_id).attest(&authority());
    assert_eq!(register(l, &d, &unknown).await.unwrap_err(), "MeasurementNotAllowed");
    assert_eq!(view.enclave_measurement(other).await.unwrap(), None, "nothing registered by a refused quote");
}

/// Enclave-built transactions end to end: open, fund from both sides, cooperative close.
async fn cooperative<C: Chain>(l: &mut Ledger<'_, C>) {
    let d = l.deploy().await;
    let chain = l.chain_id;
    let (mut a, mut b) = (Node::new(2, chain, d.address), Node::new(3, chain, d.address));
    for n in [&mut a, &mut b] {
        fund(l, n.address(), ETHER).await;
        let q = n.quote(chain);
        register(l, &d, &q).await.expect("register");
    }
    let (dep_a, dep_b) = (3 * ETHER / 10, 2 * ETHER / 10);

    let est = CallRequest {
        from: Some(a.address()),
        to: Some(d.address),
        value: Amount(dep_a),
        data: open_channel_call(b.address(), Address::default(), Amount(dep_a)),
    };
    let peer = b.address();
    let r = l
        .enclave_tx("openChannel", &mut a, None, Some(est), |gas| Request::BuildOpenChannel {
            chain,
            peer,
            token: Address::default(),
            deposit: Amount(dep_a),
            gas,
        })
        .await
        .expect("open");
    let id = opened_channel(&r).expect("ChannelOpened event");
    assert_eq!(r.from, a.address(), "sent by the enclave's own address");
    for n in [&mut a, &mut b] {
        n.observe((chain, d.address), &events_of(&r));
    }

    let est = CallRequest {
        from: Some(b.address()),
        to: Some(d.address),
        value: Amount(dep_b),
        data: deposit_call(id, Amount(dep_b)),
    };
    let r = l
        .enclave_tx("deposit", &mut b, None, Some(est), |gas| Request::BuildDeposit {
            channel: id,
            amount: Amount(dep_b),
            gas,
        })
        .await
        .expect("deposit");
    assert_eq!(
        events_of(&r),
        vec![ContractEvent::ChannelFunded {
            channel: id,
            party: b.address(),
            amount: Amount(dep_b),
            deposit_a: Amount(dep_a),
            deposit_b: Amount(dep_b)
        }]
    );
    for n in [&mut a, &mut b] {
        n.observe((chain, d.address), &events_of(&r));
    }

    let (a_before, b_before) = (l.balance(a.address()).await, l.balance(b.address()).await);
    let r = l
        .enclave_tx("closeChannel", &mut a, Some(200_000), None, |gas| Request::BuildClose {
            channel: id,
            gas,
        })
        .await
        .expect("cooperative close");
    let Response::ChannelState(signed) = a.request(Request::ClosingState { channel: id }).unwrap() else {
        panic!()
    };
    assert!(signed.state.locks.is_empty());
    assert_eq!(
        events_of(&r),
        vec![ContractEvent::ChannelClosed {
            channel: id,
            version: signed.state.version,
            payout_a: Amount(dep_a),
            payout_b: Amount(dep_b),
            ejected: false
        }]
    );
    assert_eq!(l.balance(a.address()).await, a_before - r.fee().0 + dep_a, "A gets exactly its balance");
    assert_eq!(l.balance(b.address()).await, b_before + dep_b, "B gets exactly its balance");
    assert_eq!(l.balance(d.address).await, 0, "the contract keeps nothing");

    // Replays: the same closing state submitted again, and the enclaves afterwards.
    assert_eq!(close_with(l, &d, &signed).await.unwrap_err(), "ChannelNotOpen", "a replayed close");
    b.request(Request::ChannelSettled { channel: id }).unwrap();
    let gas = teepay_types::GasParams {
        nonce: 0,
        gas_limit: 100_000,
        max_fee_per_gas: 1,
        max_priority_fee_per_gas: 1,
    };
    assert_eq!(
        b.request(Request::BuildClose { channel: id, gas }).unwrap_err(),
        EnclaveError::ChannelClosed(id)
    );
    assert_eq!(
        a.request(Request::BuildDeposit { channel: id, amount: Amount(1), gas }).unwrap_err(),
        EnclaveError::ChannelClosed(id)
    );
}

/// Three channels locked by one multi-hop instance. The first eject fixes the outcome
/// from its phase; every later settlement follows it whatever phase its state shows.
async fn eject<C: Chain>(l: &mut Ledger<'_, C>, first_phase: Phase) {
    let d = l.deploy().await;
    let view = ContractView { chain: l.chain, address: d.address };
    let seed = if first_phase == Phase::Prepared { 10 } else { 20 };
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(raw_party(l, &d, seed + i).await);
    }
    let (dep, amt) = (ETHER / 100, ETHER / 1000);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(open_raw(l, &d, &keys[i], &keys[i + 1], dep, dep / 2).await);
    }
    let x = InstanceId([seed; 32]);
    let y = InstanceId([seed + 1; 32]);
    let other_phase = if first_phase == Phase::Prepared { Phase::Committed } else { Phase::Prepared };
    let applies = first_phase == Phase::Committed;
    let expected = |locked: u128| if applies { (dep - locked, dep / 2 + locked) } else { (dep, dep / 2) };

    // First eject: channel 1, signed by its party B.
    let s1 = state(l.chain_id, &d, ids[1], 5, (dep, dep / 2), dep, dep / 2, vec![lock(x, amt, first_phase)])
        .sign(&keys[2]);
    assert_eq!(
        view.state_digest(&s1.state).await.unwrap(),
        s1.state.eip712_digest(),
        "Solidity and Rust compute the same EIP-712 digest"
    );
    let r = close_with(l, &d, &s1).await.expect("first eject");
    let (pa, pb) = expected(amt);
    assert_eq!(
        events_of(&r),
        vec![
            ContractEvent::InstanceResolved { instance: x, applied: applies, channel: ids[1] },
            ContractEvent::ChannelClosed {
                channel: ids[1],
                version: 5,
                payout_a: Amount(pa),
                payout_b: Amount(pb),
                ejected: true
            },
        ]
    );
    assert_eq!(view.instance_outcome(x).await.unwrap(), Some(applies));

    // A later eject showing the other phase follows the recorded outcome.
    let s0 = state(l.chain_id, &d, ids[0], 7, (dep, dep / 2), dep, dep / 2, vec![lock(x, amt, other_phase)])
        .sign(&keys[0]);
    let before = (l.balance(keys[0].address()).await, l.balance(keys[1].address()).await);
    let r = close_with(l, &d, &s0).await.expect("second eject follows the first");
    assert_eq!(
        events_of(&r),
        vec![ContractEvent::ChannelClosed {
            channel: ids[0],
            version: 7,
            payout_a: Amount(pa),
            payout_b: Amount(pb),
            ejected: true
        }],
        "no second InstanceResolved: the outcome was fixed by the first eject"
    );
    assert_eq!(l.balance(keys[0].address()).await, before.0 + pa);
    assert_eq!(l.balance(keys[1].address()).await, before.1 + pb);

    // A third channel carrying the instance plus a fresh one: x follows, y is fixed here.
    let s2 = state(
        l.chain_id,
        &d,
        ids[2],
        9,
        (dep, dep / 2),
        dep,
        dep / 2,
        vec![lock(x, amt, other_phase), lock(y, amt / 2, Phase::Committed)],
    )
    .sign(&keys[3]);
    let r = close_with(l, &d, &s2).await.expect("third settlement");
    let (pa2, pb2) = expected(amt);
    let (pa2, pb2) = (pa2 - amt / 2, pb2 + amt / 2); // y applies (COMMITTED, first eject of y)
    assert_eq!(
        events_of(&r),
        vec![
            ContractEvent::InstanceResolved { instance: y, applied: true, channel: ids[2] },
            ContractEvent::ChannelClosed {
                channel: ids[2],
                version: 9,
                payout_a: Amount(pa2),
                payout_b: Amount(pb2),
                ejected: true
            },
        ]
    );
    assert_eq!(view.instance_outcome(x).await.unwrap(), Some(applies), "outcome never changes");
    assert_eq!(l.balance(d.address).await, 0, "every channel settled, nothing left in the contract");
}

async fn rejections<C: Chain>(l: &mut Ledger<'_, C>) {
    let d = l.deploy().await;
    let view = ContractView { chain: l.chain, address: d.address };
    let (a, b, c) = (raw_party(l, &d, 40).await, raw_party(l, &d, 41).await, raw_party(l, &d, 42).await);
    let unregistered = SigningKey::from_entropy([43; 32]).unwrap();
    fund(l, unregistered.address(), ETHER / 100).await;
    let dep = ETHER / 100;
    let id = open_raw(l, &d, &a, &b, dep, 0).await;
    let good = state(l.chain_id, &d, id, 1, (dep, 0), dep - 5, 5, Vec::new());

    assert_eq!(
        l.send(
            "openChannel",
            &a,
            Some(d.address),
            1,
            open_channel_call(unregistered.address(), Address::default(), Amount(1))
        )
        .await
        .unwrap_err(),
        "NotRegistered"
    );
    assert_eq!(
        l.send(
            "openChannel",
            &unregistered,
            Some(d.address),
            1,
            open_channel_call(a.address(), Address::default(), Amount(1))
        )
        .await
        .unwrap_err(),
        "NotRegistered"
    );
    assert_eq!(
        l.send(
            "openChannel",
            &a,
            Some(d.address),
            1,
            open_channel_call(a.address(), Address::default(), Amount(1))
        )
        .await
        .unwrap_err(),
        "BadPeer"
    );
    assert_eq!(
        l.send("deposit", &c, Some(d.address), 1, deposit_call(id, Amount(1))).await.unwrap_err(),
        "NotAParty"
    );
    assert_eq!(
        l.send("deposit", &a, Some(d.address), 0, deposit_call(id, Amount(0))).await.unwrap_err(),
        "ZeroAmount"
    );
    assert_eq!(
        l.send("deposit", &a, Some(d.address), 1, deposit_call(ChannelId([9; 32]), Amount(1)))
            .await
            .unwrap_err(),
        "UnknownChannel"
    );

    let swap =
        LockState { kind: InstanceKind::CrossChain, ..lock(InstanceId([44; 32]), 1, Phase::Committed) };
    let swap_locked = state(l.chain_id, &d, id, 2, (dep, 0), dep - 5, 5, vec![swap]).sign(&a);
    assert_eq!(close_with(l, &d, &swap_locked).await.unwrap_err(), "SwapLocked");
    assert_eq!(
        close_with(l, &d, &good.clone().sign(&c)).await.unwrap_err(),
        "NotAParty",
        "registered non-party"
    );
    assert_eq!(
        close_with(l, &d, &good.clone().sign(&unregistered)).await.unwrap_err(),
        "NotAParty",
        "unregistered key"
    );
    let bad_total = state(l.chain_id, &d, id, 1, (dep, 0), dep, 5, Vec::new()).sign(&a);
    assert_eq!(close_with(l, &d, &bad_total).await.unwrap_err(), "BadTotal");
    let other_contract = ChannelState { contract: Address([0xcc; 20]), ..good.clone() }.sign(&a);
    assert_eq!(
        close_with(l, &d, &other_contract).await.unwrap_err(),
        "NotAParty",
        "signed for another deployment"
    );
    let unknown = ChannelState { channel: ChannelId([7; 32]), ..good.clone() }.sign(&a);
    assert_eq!(close_with(l, &d, &unknown).await.unwrap_err(), "UnknownChannel");
    let overdrawn = state(
        l.chain_id,
        &d,
        id,
        3,
        (dep, 0),
        dep,
        0,
        vec![lock(InstanceId([45; 32]), dep + 1, Phase::Committed)],
    )
    .sign(&a);
    assert_eq!(
        close_with(l, &d, &overdrawn).await.unwrap_err(),
        "BadLock",
        "lock larger than its sender's balance"
    );

    // Malformed signatures: wrong length, bad v, high s (the malleable twin of a valid one).
    let signed = good.clone().sign(&a);
    let raw_close = |sig: Vec<u8>| {
        PaymentChannels::closeChannelCall {
            state: teepay_types::abi_channel_state(&good),
            sig: Bytes::from(sig),
        }
        .abi_encode()
    };
    let mut short = signed.signature.0.to_vec();
    short.pop();
    let mut bad_v = signed.signature.0.to_vec();
    bad_v[64] = 29;
    let n =
        U256::from_str_radix("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141", 16).unwrap();
    let s = U256::from_be_slice(&signed.signature.0[32..64]);
    let mut high_s = signed.signature.0.to_vec();
    high_s[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    high_s[64] ^= 1; // 27 <-> 28: the same signer with the negated s
    for (what, sig) in [("64 bytes", short), ("v = 29", bad_v), ("high s", high_s)] {
        let err = l.send("closeChannel", &dev_key(3), Some(d.address), 0, raw_close(sig)).await.unwrap_err();
        assert_eq!(err, "BadSignature", "{what}");
    }

    // Owner-only administration; a withdrawn measurement stops new channels, not closes.
    let allow = |m: [u8; 32], ok: bool| {
        PaymentChannels::setMeasurementAllowedCall { measurement: B256::from(m), allowed: ok }.abi_encode()
    };
    assert_eq!(
        l.send("setMeasurementAllowed", &a, Some(d.address), 0, allow(NODE_MEASUREMENT, false))
            .await
            .unwrap_err(),
        "NotOwner"
    );
    l.send("setMeasurementAllowed", &dev_key(0), Some(d.address), 0, allow(NODE_MEASUREMENT, false))
        .await
        .expect("owner");
    assert_eq!(
        l.send(
            "openChannel",
            &a,
            Some(d.address),
            1,
            open_channel_call(b.address(), Address::default(), Amount(1))
        )
        .await
        .unwrap_err(),
        "MeasurementNotAllowed"
    );
    assert_eq!(view.channel(id).await.unwrap().status, 1, "refused closes left the channel open");

    let (a0, b0) = (l.balance(a.address()).await, l.balance(b.address()).await);
    close_with(l, &d, &signed).await.expect("a valid close still works");
    assert_eq!((l.balance(a.address()).await, l.balance(b.address()).await), (a0 + dep - 5, b0 + 5));
    assert_eq!(close_with(l, &d, &signed).await.unwrap_err(), "ChannelNotOpen", "replayed close");
    assert_eq!(l.balance(d.address).await, 0);
}

/// The enclave's own refusals for transactions: unknown chain, fee above its limit, a
/// swap-locked channel; none of them changes its state.
fn enclave_refusals(chain: ChainId) {
    let contract = Address([0xdd; 20]);
    let mut node = Node::new(50, chain, contract);
    let gas = teepay_types::GasParams {
        nonce: 0,
        gas_limit: 100_000,
        max_fee_per_gas: 1_000_000_000,
        max_priority_fee_per_gas: 1,
    };
    let before = node.enclave.inspect().clone();
    let peer = Address([1; 20]);
    assert_eq!(
        node.request(Request::BuildOpenChannel {
            chain: ChainId(chain.0 + 1),
            peer,
            token: Address::default(),
            deposit: Amount(1),
            gas
        })
        .unwrap_err(),
        EnclaveError::UnknownChain(ChainId(chain.0 + 1))
    );
    let greedy = teepay_types::GasParams { gas_limit: 10_000_000, max_fee_per_gas: 10u128.pow(12), ..gas };
    assert!(matches!(
        node.request(Request::BuildOpenChannel {
            chain,
            peer,
            token: Address::default(),
            deposit: Amount(1),
            gas: greedy
        }),
        Err(EnclaveError::FeeTooHigh { .. })
    ));
    let opened = FundedChannel {
        chain,
        contract,
        a: node.address(),
        b: peer,
        nonce: 0,
        deposit_a: Amount(10),
        deposit_b: Amount(0),
        token: Address::default(),
    };
    for request in opened.requests(true, FeePolicy::default()) {
        node.request(request).unwrap();
    }
    let after_add = node.enclave.inspect().clone();
    assert!(matches!(
        node.request(Request::BuildClose { channel: opened.id(), gas: greedy }),
        Err(EnclaveError::FeeTooHigh { .. })
    ));
    assert_eq!(node.enclave.inspect(), &after_add, "a refused close signs nothing");
    assert_ne!(&before, &after_add);
    let wrong = teepay_enclave::NewChannel {
        chain,
        contract: Address([0xee; 20]),
        id: ChannelId([4; 32]),
        peer,
        local_is_a: true,
        nonce: 1,
        deposit: Amount(1),
        fee: FeePolicy::default(),
        token: Address::default(),
    };
    assert!(matches!(node.request(Request::AddChannel(wrong)), Err(EnclaveError::WrongContract { .. })));
}

async fn suite<C: Chain>(chain: &C, backend: &str) {
    let mut l = Ledger::new(chain).await;
    let head = chain.block_number().await.unwrap();
    assert!(chain.block_hash(head).await.unwrap().is_some(), "the head block has a hash");
    assert_eq!(chain.block_hash(head + 1000).await.unwrap(), None, "no hash above the head");
    registration(&mut l).await;
    cooperative(&mut l).await;
    eject(&mut l, Phase::Prepared).await;
    eject(&mut l, Phase::Committed).await;
    rejections(&mut l).await;
    swap_settlement::scenario(&mut l).await;
    enclave_refusals(l.chain_id);
    l.assert_conserved().await;
    println!(
        "contract suite passed on {backend} (chain id {}), {} accounts conserved",
        l.chain_id.0,
        l.tracked.len()
    );
    println!("gas per function on {backend}:");
    for (function, uses) in &l.gas {
        let (min, max) = (uses.iter().min().unwrap(), uses.iter().max().unwrap());
        println!("  {function:<24} {min:>9} .. {max:>9}  ({} calls)", uses.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_embedded_chain() {
    suite(&EmbeddedChain::new(ChainId(31337)), "embedded chain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_devnet_over_json_rpc() {
    // CI points this at a running `teepay devnet` process; otherwise serve one in-process.
    if let Ok(url) = std::env::var("TEEPAY_DEVNET_URL") {
        let chain = RpcChain::connect(&url).unwrap();
        return suite(&chain, &format!("`teepay devnet` process at {url}")).await;
    }
    let devnet =
        teepay_chain::devnet::serve(EmbeddedChain::new(ChainId(31338)), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("devnet listens");
    let chain = RpcChain::connect(&devnet.url()).unwrap();
    suite(&chain, &format!("teepay devnet at {}", devnet.url())).await;
    devnet.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_anvil() {
    let (_guard, url) = anvil();
    let chain = RpcChain::connect(&url).unwrap();
    suite(&chain, &format!("anvil at {url}")).await;
}
