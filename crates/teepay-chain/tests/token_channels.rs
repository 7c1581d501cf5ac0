//! ERC-20 channels (issue 16, DESIGN §11) with real node enclaves and the real contract, on
//! the embedded chain and on anvil. The enclaves build every transaction (approve, open,
//! deposit, close, withdraw). Token balances are checked exactly: what went in comes out. Each
//! way a real token misbehaves is handled or refused explicitly:
//! - a fee on transfer is refused at the open (`TokenAmountMismatch`);
//! - `false` from `transferFrom` is refused (`TokenTransferFailed`);
//! - `false` from `transfer` at a close defers the payout (`PayoutDeferred`, then `withdraw`)
//!   rather than freezing the channel;
//! - a token that returns nothing (USDT-style) works.
//!
//! A host that reports a token channel to its enclave as an ether one is caught (the id binds
//! the token).

mod support;

use support::*;
use teepay_chain::contract::{ContractEvent, Deployment, opened_channel, receipt_events, token_balance};
use teepay_chain::dev::dev_key;
use teepay_chain::{Chain, EmbeddedChain, RpcChain};
use teepay_enclave::{EnclaveError, NewChannel, Request};
use teepay_types::{Address, Amount, ChannelId, FeePolicy, register_enclave_call};

const UNIT: u128 = 1_000_000; // a 6-decimal token

/// Deploys a test token through the ledger (its gas counted like every other fee).
async fn new_token<C: Chain>(l: &mut Ledger<'_, C>, symbol: &str, decimals: u8, mode: u8) -> Address {
    use alloy_sol_types::SolConstructor;
    use teepay_types::bindings::TestToken;
    let mut init = TestToken::BYTECODE.to_vec();
    let args = TestToken::constructorCall {
        name_: format!("{symbol} (test)"),
        symbol_: symbol.into(),
        decimals_: decimals,
        mode_: mode,
    };
    init.extend(args.abi_encode());
    let r = l.send("deployToken", &dev_key(2), None, 0, init).await.expect("deploy the token");
    r.contract_address.expect("a contract")
}

async fn mint<C: Chain>(l: &mut Ledger<'_, C>, token: Address, to: Address, amount: u128) {
    use alloy_sol_types::SolCall;
    let call = teepay_types::bindings::TestToken::mintCall {
        to: alloy_primitives::Address::from(to.0),
        amount: alloy_primitives::U256::from(amount),
    };
    l.send("mint", &dev_key(2), Some(token), 0, call.abi_encode()).await.expect("mint");
}

async fn funded_node<C: Chain>(l: &mut Ledger<'_, C>, d: &Deployment, seed: u8, token: Address) -> Node {
    let mut node = Node::new(seed, l.chain_id, d.address);
    l.track(node.address()).await;
    l.send("transfer", &dev_key(1), Some(node.address()), ETHER, Vec::new()).await.expect("fund gas");
    let quote = node.quote(l.chain_id);
    l.send("registerEnclave", &dev_key(2), Some(d.address), 0, register_enclave_call(&quote))
        .await
        .expect("register");
    mint(l, token, node.address(), 1_000 * UNIT).await;
    node
}

async fn tokens<C: Chain>(l: &Ledger<'_, C>, token: Address, who: Address) -> u128 {
    token_balance(l.chain, token, who).await.expect("balanceOf").0
}

/// `node`'s enclave lets the contract pull `amount` of `token`.
async fn approve<C: Chain>(
    l: &mut Ledger<'_, C>,
    node: &mut Node,
    token: Address,
    amount: Amount,
) -> Result<(), String> {
    let chain = l.chain_id;
    let approve = |gas| Request::BuildApprove { chain, token, amount, gas };
    l.enclave_tx("approve", node, Some(100_000), None, approve).await.map(drop)
}

/// `node` approves the contract for `amount` and opens a channel of `token` to `peer`.
async fn open<C: Chain>(
    l: &mut Ledger<'_, C>,
    d: &Deployment,
    node: &mut Node,
    peer: Address,
    token: Address,
    amount: u128,
) -> Result<(ChannelId, Vec<ContractEvent>), String> {
    let chain = l.chain_id;
    let amount = Amount(amount);
    approve(l, node, token, amount).await?;
    // Estimated: a refusal comes back with the contract's reason.
    let est = teepay_chain::CallRequest {
        from: Some(node.address()),
        to: Some(d.address),
        value: Amount::ZERO,
        data: teepay_types::open_channel_call(peer, token, amount),
    };
    let r = l
        .enclave_tx("openChannel", node, None, Some(est), |gas| Request::BuildOpenChannel {
            chain,
            peer,
            token,
            deposit: amount,
            gas,
        })
        .await?;
    Ok((opened_channel(&r).expect("ChannelOpened"), receipt_events(&r).expect("decodable")))
}

async fn deposit<C: Chain>(
    l: &mut Ledger<'_, C>,
    node: &mut Node,
    channel: ChannelId,
    token: Address,
    amount: u128,
) -> Vec<ContractEvent> {
    let amount = Amount(amount);
    approve(l, node, token, amount).await.expect("approve");
    let r = l
        .enclave_tx("deposit", node, Some(150_000), None, |gas| Request::BuildDeposit {
            channel,
            amount,
            gas,
        })
        .await
        .expect("deposit");
    receipt_events(&r).expect("decodable")
}

async fn close<C: Chain>(l: &mut Ledger<'_, C>, node: &mut Node, channel: ChannelId) -> Vec<ContractEvent> {
    let r = l
        .enclave_tx("closeChannel", node, Some(200_000), None, |gas| Request::BuildClose { channel, gas })
        .await
        .expect("close");
    receipt_events(&r).expect("decodable")
}

/// Feeds both enclaves a receipt's events, as their watchers would.
fn observe(d: &Deployment, chain: teepay_types::ChainId, events: &[ContractEvent], nodes: &mut [&mut Node]) {
    for n in nodes.iter_mut() {
        n.observe((chain, d.address), events);
    }
}

async fn scenario<C: Chain>(chain: &C) {
    let mut l = Ledger::new(chain).await;
    let d = l.deploy().await;
    let usdc = new_token(&mut l, "USDC", 6, 0).await;
    let (mut a, mut b) = (funded_node(&mut l, &d, 1, usdc).await, funded_node(&mut l, &d, 2, usdc).await);
    let (pa, pb) = (a.address(), b.address());

    // a opens with 300, b adds 200; both enclaves learn the channel and its token.
    let (id, opened) = open(&mut l, &d, &mut a, pb, usdc, 300 * UNIT).await.expect("open");
    observe(&d, l.chain_id, &opened, &mut [&mut a, &mut b]);
    let funded = deposit(&mut l, &mut b, id, usdc, 200 * UNIT).await;
    observe(&d, l.chain_id, &funded, &mut [&mut a, &mut b]);
    assert_eq!(a.enclave.inspect().channels[&id].token, usdc);
    assert_eq!(tokens(&l, usdc, d.address).await, 500 * UNIT, "the contract holds both deposits");
    assert_eq!((tokens(&l, usdc, pa).await, tokens(&l, usdc, pb).await), (700 * UNIT, 800 * UNIT));

    // A host that tells its enclave the channel holds ether: the id does not derive.
    let mut c = funded_node(&mut l, &d, 3, usdc).await;
    let lie = NewChannel {
        chain: l.chain_id,
        contract: d.address,
        id,
        peer: pa,
        local_is_a: false,
        nonce: 0,
        deposit: Amount(300 * UNIT),
        fee: FeePolicy::default(),
        token: Address::default(),
    };
    let before = c.enclave.inspect().clone();
    assert!(matches!(c.request(Request::AddChannel(lie)), Err(EnclaveError::ChannelIdMismatch { .. })));
    assert_eq!(*c.enclave.inspect(), before);

    // The close pays each side its token balance, exactly, and the contract ends empty.
    let events = close(&mut l, &mut a, id).await;
    assert!(events.iter().any(|e| matches!(e, ContractEvent::ChannelClosed { .. })));
    assert_eq!((tokens(&l, usdc, pa).await, tokens(&l, usdc, pb).await), (1_000 * UNIT, 1_000 * UNIT));
    assert_eq!(tokens(&l, usdc, d.address).await, 0);

    // A fee-on-transfer token is refused at the open; nothing moves.
    let fee_token = new_token(&mut l, "FEE", 18, 2).await;
    mint(&mut l, fee_token, pa, 1_000).await;
    let refused = open(&mut l, &d, &mut a, pb, fee_token, 1_000).await.unwrap_err();
    assert!(refused.contains("TokenAmountMismatch"), "{refused}");
    assert_eq!(tokens(&l, fee_token, pa).await, 1_000);

    // A token that answers `false`: refused on the way in; on the way out its payout waits
    // in the contract for the party to withdraw, and the channel still closes.
    let stubborn = new_token(&mut l, "NO", 18, 3).await;
    mint(&mut l, stubborn, pa, 1_000).await;
    let set_refusing = |on: bool| teepay_types::bindings::TestToken::setRefusingCall { refusing_: on };
    use alloy_sol_types::SolCall;
    l.send("setRefusing", &dev_key(2), Some(stubborn), 0, set_refusing(true).abi_encode()).await.unwrap();
    let refused = open(&mut l, &d, &mut a, pb, stubborn, 400).await.unwrap_err();
    assert!(refused.contains("TokenTransferFailed"), "{refused}");
    l.send("setRefusing", &dev_key(2), Some(stubborn), 0, set_refusing(false).abi_encode()).await.unwrap();
    let (id, opened) = open(&mut l, &d, &mut a, pb, stubborn, 400).await.expect("open while it transfers");
    observe(&d, l.chain_id, &opened, &mut [&mut a, &mut b]);
    l.send("setRefusing", &dev_key(2), Some(stubborn), 0, set_refusing(true).abi_encode()).await.unwrap();
    let events = close(&mut l, &mut a, id).await;
    assert!(events.iter().any(|e| matches!(e, ContractEvent::PayoutDeferred { party, amount, .. }
        if *party == pa && *amount == Amount(400))));
    assert_eq!(tokens(&l, stubborn, pa).await, 600, "not paid yet");
    l.send("setRefusing", &dev_key(2), Some(stubborn), 0, set_refusing(false).abi_encode()).await.unwrap();
    let chain_id = l.chain_id;
    l.enclave_tx("withdraw", &mut a, Some(100_000), None, |gas| Request::BuildWithdrawOwed {
        chain: chain_id,
        token: stubborn,
        gas,
    })
    .await
    .expect("withdraw");
    assert_eq!(tokens(&l, stubborn, pa).await, 1_000, "paid once the token transfers again");

    // A token that returns nothing (USDT-style) works both ways.
    let quiet = new_token(&mut l, "QT", 6, 1).await;
    mint(&mut l, quiet, pa, 1_000).await;
    let (id, opened) = open(&mut l, &d, &mut a, pb, quiet, 250).await.expect("open with a no-return token");
    observe(&d, l.chain_id, &opened, &mut [&mut a, &mut b]);
    assert_eq!(tokens(&l, quiet, d.address).await, 250);
    close(&mut l, &mut b, id).await;
    assert_eq!((tokens(&l, quiet, pa).await, tokens(&l, quiet, d.address).await), (1_000, 0));

    // Ether sent with a token open is refused (a raw key registered as an enclave, since an
    // enclave itself never sends value with a token open).
    let raw_key = dev_key(5);
    let quote = teepay_types::Report::of(&raw_key, NODE_MEASUREMENT, l.chain_id).attest(&authority());
    l.send("registerEnclave", &dev_key(2), Some(d.address), 0, register_enclave_call(&quote)).await.unwrap();
    let raw = teepay_types::open_channel_call(pb, usdc, Amount(1));
    let sent = l.send("openChannel", &raw_key, Some(d.address), 1, raw).await.unwrap_err();
    assert!(sent.contains("BadValue"), "{sent}");
    l.assert_conserved().await;
    // Gas of token channels (README, "The chain"), over every call above.
    for (function, used) in &l.gas {
        let (min, max) = (used.iter().min().unwrap(), used.iter().max().unwrap());
        println!("  token {function:<16} {min:>9} .. {max:>9}  ({} calls)", used.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_channels_on_the_embedded_chain() {
    let chain = EmbeddedChain::new(teepay_types::ChainId(31337));
    scenario(&chain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_channels_on_anvil() {
    let (_anvil, url) = anvil();
    let chain = RpcChain::connect(&url).expect("anvil");
    scenario(&chain).await;
}
