//! The node's on-chain side (DESIGN §3): transactions the enclave builds and signs from its
//! own address (the host supplies nonce and fees, submits, and waits), and the watcher that
//! feeds this node's channel events from the contract into the enclave.
//!
//! The watcher replays from the contract's deployment block at every start instead of
//! persisting a cursor: each event is applied idempotently (an opened channel the enclave
//! already has is skipped; a deposit is applied only while the enclave's capacity is exactly
//! the on-chain total before it), so a crash between the enclave's seal and any cursor
//! write could never count a deposit twice.

use crate::{NodeError, NodeHandle};
use std::time::Duration;
use teepay_chain::contract::{
    ContractEvent, ContractView, RECEIPT_TIMEOUT, events, gas_params, revert_reason,
};
use teepay_chain::{CallRequest, Chain, ChainError, Receipt};
use teepay_enclave::{EnclaveError, NewChannel, Request, Response};
use teepay_types::{Address, Amount, ChainId, ChannelId, FeePolicy, GasParams, InstanceId, Outcome, Quote};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum OnchainError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    #[error("{what} reverted: {reason}")]
    Reverted { what: &'static str, reason: String },
    #[error("{0}: the transaction did not report the expected event")]
    MissingEvent(&'static str),
    #[error("unexpected enclave response")]
    Unexpected,
    #[error(
        "channel {0:?} waits for its swap locks' outcome on-chain: REVERT is claimed, and the close goes through once the challenge window ends or the hub's certificate is recorded; try again later"
    )]
    AwaitingDecision(ChannelId),
}

/// One chain as a node uses it: where its contract is and how deep events must be buried.
#[derive(Debug, Clone)]
pub struct ChainLink<C> {
    pub chain: C,
    pub id: ChainId,
    pub contract: Address,
    /// The contract's deployment block: where the watcher starts.
    pub from_block: u64,
    pub confirmations: u64,
}

/// How a transaction's gas limit is set: estimated by the chain from the call, or fixed
/// (a close, which cannot be estimated before the enclave signs, and signing is final).
enum GasLimit {
    Estimate(CallRequest),
    Fixed(u64),
}

async fn send<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    what: &'static str,
    limit: GasLimit,
    build: impl FnOnce(GasParams) -> Request,
) -> Result<Receipt, OnchainError> {
    let estimate = match &limit {
        GasLimit::Estimate(call) => Some(call),
        GasLimit::Fixed(_) => None,
    };
    let mut gas = gas_params(&link.chain, node.address, estimate).await.map_err(|e| match e {
        ChainError::Reverted { data } => OnchainError::Reverted { what, reason: revert_reason(&data) },
        other => other.into(),
    })?;
    if let GasLimit::Fixed(fixed) = limit {
        gas.gas_limit = fixed;
    }
    let Response::Transaction(tx) = node.enclave(build(gas)).await? else {
        return Err(OnchainError::Unexpected);
    };
    let hash = link.chain.send_raw_transaction(&tx.raw).await?;
    let receipt = link.chain.wait_for_receipt(hash, RECEIPT_TIMEOUT).await?;
    if !receipt.success {
        return Err(OnchainError::Reverted { what, reason: "mined but reverted".into() });
    }
    Ok(receipt)
}

/// Registers this node's enclave with the contract; `None` when it already was.
pub async fn register<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    quote: &Quote,
) -> Result<Option<Receipt>, OnchainError> {
    let view = ContractView { chain: &link.chain, address: link.contract };
    if view.enclave_measurement(node.address).await?.is_some() {
        return Ok(None);
    }
    let est = CallRequest {
        from: Some(node.address),
        to: Some(link.contract),
        value: Amount::ZERO,
        data: teepay_types::register_enclave_call(quote),
    };
    let (chain, quote) = (link.id, quote.clone());
    send(node, link, "registerEnclave", GasLimit::Estimate(est), |gas| Request::BuildRegister {
        chain,
        quote,
        gas,
    })
    .await
    .map(Some)
}

/// Opens an ether channel to `peer` funded with `deposit` from this enclave's account.
pub async fn open_channel<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    peer: Address,
    deposit: Amount,
) -> Result<(ChannelId, Receipt), OnchainError> {
    open_channel_of(node, link, peer, Address::default(), deposit).await.map(|(id, r, _)| (id, r))
}

/// Opens a channel of `token` (zero: ether) to `peer` funded with `deposit` from this
/// enclave's account; a token is approved for the contract first. Returns the channel, the
/// open's receipt and the approval's (for whoever accounts for gas).
pub async fn open_channel_of<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    peer: Address,
    token: Address,
    deposit: Amount,
) -> Result<(ChannelId, Receipt, Option<Receipt>), OnchainError> {
    let approval = approve(node, link, token, deposit).await?;
    let value = if token == Address::default() { deposit } else { Amount::ZERO };
    let est = CallRequest {
        from: Some(node.address),
        to: Some(link.contract),
        value,
        data: teepay_types::open_channel_call(peer, token, deposit),
    };
    let chain = link.id;
    let r = send(node, link, "openChannel", GasLimit::Estimate(est), |gas| Request::BuildOpenChannel {
        chain,
        peer,
        token,
        deposit,
        gas,
    })
    .await?;
    let id = teepay_chain::contract::opened_channel(&r).ok_or(OnchainError::MissingEvent("openChannel"))?;
    Ok((id, r, approval))
}

/// Lets the contract pull `amount` of `token` from this enclave's account (nothing for ether).
async fn approve<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    token: Address,
    amount: Amount,
) -> Result<Option<Receipt>, OnchainError> {
    if token == Address::default() {
        return Ok(None);
    }
    let est = CallRequest {
        from: Some(node.address),
        to: Some(token),
        value: Amount::ZERO,
        data: teepay_types::approve_call(link.contract, amount),
    };
    let chain = link.id;
    send(node, link, "approve", GasLimit::Estimate(est), |gas| Request::BuildApprove {
        chain,
        token,
        amount,
        gas,
    })
    .await
    .map(Some)
}

/// Adds `amount` of the channel's asset to this node's side of `channel`.
pub async fn fund<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    channel: ChannelId,
    amount: Amount,
) -> Result<Receipt, OnchainError> {
    fund_of(node, link, channel, amount).await.map(|(r, _)| r)
}

/// [`fund`], also returning a token approval's receipt.
pub async fn fund_of<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    channel: ChannelId,
    amount: Amount,
) -> Result<(Receipt, Option<Receipt>), OnchainError> {
    let token =
        node.channels().await?.iter().find(|c| c.id == channel).map_or(Address::default(), |c| c.token);
    let approval = approve(node, link, token, amount).await?;
    let value = if token == Address::default() { amount } else { Amount::ZERO };
    let est = CallRequest {
        from: Some(node.address),
        to: Some(link.contract),
        value,
        data: teepay_types::deposit_call(channel, amount),
    };
    let r = send(node, link, "deposit", GasLimit::Estimate(est), |gas| Request::BuildDeposit {
        channel,
        amount,
        gas,
    })
    .await?;
    Ok((r, approval))
}

/// Closes `channel` with the enclave's closing state: a cooperative close without locks, an
/// eject when multi-hop locks are pending (the contract fixes their instances' outcome).
/// A channel still holding swap locks (the hub group lost, no decision reached this node)
/// closes only past the locks' deadline (the enclave refuses before): REVERT is claimed for
/// them first, and the close goes through once the contract has an outcome for each, from a
/// certificate someone recorded or a claim whose challenge window ended (DESIGN §10); until
/// then [`OnchainError::AwaitingDecision`] says when to try again.
pub async fn close<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    channel: ChannelId,
) -> Result<Receipt, OnchainError> {
    // Sized to the channel's locks (the enclave refuses less); a lock added between this
    // read and the signature makes the enclave refuse, and the caller retries.
    let view = node.channels().await?.into_iter().find(|c| c.id == channel);
    let (locks, swap_locks) = view.map_or((0, 0), |c| (c.locks, c.swap_locks));
    if swap_locks > 0 {
        return close_swap_locked(node, link, channel, locks).await;
    }
    let limit = GasLimit::Fixed(teepay_types::close_gas(locks));
    send(node, link, "closeChannel", limit, |gas| Request::BuildClose { channel, gas }).await
}

/// [`close`] of a channel with swap locks: claim REVERT where nothing is decided yet, then
/// close only once a dry run shows the contract settles every lock (a close that would revert
/// is never sent: it would only burn gas).
async fn close_swap_locked<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    channel: ChannelId,
    locks: usize,
) -> Result<Receipt, OnchainError> {
    let limit = teepay_types::close_gas(locks);
    let dry_run = |data: Vec<u8>| CallRequest {
        from: Some(node.address),
        to: Some(link.contract),
        value: Amount::ZERO,
        data,
    };
    // The closing state signed earlier, or signed now: past every swap lock's deadline only
    // (before, the enclave refuses with the time it becomes possible).
    let signed = match node.enclave(Request::ClosingState { channel }).await {
        Ok(Response::ChannelState(signed)) => signed,
        _ => match node.enclave(Request::SignClose { channel }).await? {
            Response::ChannelState(signed) => signed,
            _ => return Err(OnchainError::Unexpected),
        },
    };
    // Claim only what the contract would take (a swap lock past its deadline with no
    // decision or claim yet): a dry run first, so a repeat costs nothing.
    match link.chain.call(&dry_run(teepay_types::claim_revert_call(&signed))).await {
        Ok(_) => {
            send(node, link, "claimRevert", GasLimit::Fixed(limit), |gas| Request::BuildClaimRevert {
                channel,
                gas,
            })
            .await?;
        }
        Err(ChainError::Reverted { data }) if revert_reason(&data) == "NothingToClaim" => {}
        Err(e) => return Err(e.into()),
    }
    match link.chain.call(&dry_run(teepay_types::close_channel_call(&signed))).await {
        Ok(_) => {}
        Err(ChainError::Reverted { data }) if revert_reason(&data) == "SwapLocked" => {
            return Err(OnchainError::AwaitingDecision(channel));
        }
        Err(ChainError::Reverted { data }) => {
            return Err(OnchainError::Reverted { what: "closeChannel", reason: revert_reason(&data) });
        }
        Err(e) => return Err(e.into()),
    }
    send(node, link, "closeChannel", GasLimit::Fixed(limit), |gas| Request::BuildClose { channel, gas }).await
}

/// Posts this node's certificate of `instance` to the contract (`recordDecision`), settling
/// its swap locks there without the hub; `None` when the contract already has that outcome.
pub async fn post_certificate<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    instance: InstanceId,
) -> Result<Option<Receipt>, OnchainError> {
    let Response::Certificate(cert) = node.enclave(Request::Certificate { instance }).await? else {
        return Err(OnchainError::Unexpected);
    };
    // The watcher replays old claims at every start: a decision already recorded costs no
    // transaction.
    let view = ContractView { chain: &link.chain, address: link.contract };
    if view.recorded_decision(cert.hub, instance).await?.is_some() {
        return Ok(None);
    }
    let est = CallRequest {
        from: Some(node.address),
        to: Some(link.contract),
        value: Amount::ZERO,
        data: teepay_types::record_decision_call(&cert),
    };
    let receipt = send(node, link, "recordDecision", GasLimit::Estimate(est), |gas| {
        Request::BuildRecordDecision { chain: link.id, instance, gas }
    })
    .await?;
    // A repeat of a recorded outcome succeeds without an event.
    let recorded = teepay_chain::contract::receipt_events(&receipt)
        .map_err(OnchainError::Chain)?
        .iter()
        .any(|e| matches!(e, ContractEvent::DecisionRecorded { .. }));
    Ok(recorded.then_some(receipt))
}

/// Moves `amount` out of the enclave's account (e.g. payouts after a close).
pub async fn withdraw<C: Chain>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    to: Address,
    amount: Amount,
) -> Result<Receipt, OnchainError> {
    let chain = link.id;
    let est = CallRequest { from: Some(node.address), to: Some(to), value: amount, data: Vec::new() };
    send(node, link, "transfer", GasLimit::Estimate(est), |gas| Request::BuildTransfer {
        chain,
        to,
        amount,
        gas,
    })
    .await
}

/// Applies this node's confirmed channel events in `from..` to the enclave; returns the
/// next block to read.
pub async fn watch_once<C: Chain + Clone + 'static>(
    node: &NodeHandle,
    link: &ChainLink<C>,
    from: u64,
) -> Result<u64, OnchainError> {
    let head = link.chain.block_number().await?;
    let safe = head.saturating_sub(link.confirmations);
    if from > safe {
        return Ok(from);
    }
    let me = node.address;
    for logged in events(&link.chain, link.contract, from, safe).await? {
        match logged.event {
            ContractEvent::ChannelOpened { channel, a, b, deposit, nonce, token } if a == me || b == me => {
                let new = NewChannel {
                    chain: link.id,
                    contract: link.contract,
                    id: channel,
                    peer: if a == me { b } else { a },
                    local_is_a: a == me,
                    nonce,
                    deposit,
                    fee: FeePolicy::default(),
                    token,
                };
                match node.enclave(Request::AddChannel(new)).await {
                    Ok(_) | Err(NodeError::Enclave(EnclaveError::ChannelExists(_))) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            ContractEvent::ChannelFunded { channel, deposit_a, deposit_b, .. } => {
                let Some(view) = node.channels().await?.into_iter().find(|c| c.id == channel) else {
                    continue;
                };
                // The event carries both totals after it: the enclave takes what it has not
                // seen yet, so a replay from the deployment block changes nothing.
                if view.open {
                    match node.enclave(Request::Deposit { channel, deposit_a, deposit_b }).await {
                        Ok(_) | Err(NodeError::Enclave(EnclaveError::DepositDecreased)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            // Every node reads every instance outcome: its enclave ends a lock only with the
            // contract's word, never with the hub's alone (the hub host could invent one).
            // Refusals are logged, not retried: the next block must still be read.
            ContractEvent::InstanceResolved { instance, applied, .. } => {
                let outcome = if applied { Outcome::Apply } else { Outcome::Revert };
                if let Err(e) = node.enclave(Request::OutcomeOnChain { instance, outcome }).await {
                    if matches!(e, NodeError::Stopped) {
                        return Err(e.into());
                    }
                    tracing::warn!(?instance, ?outcome, error = %e, "on-chain outcome refused by the enclave");
                }
            }
            // Anyone's certificate ends this node's locks of the swap (its enclave checks the
            // hub's signature); certificates of swaps it never took part in are refused.
            ContractEvent::DecisionRecorded { certificate } => {
                let instance = certificate.instance;
                match node.enclave(Request::Decision(certificate)).await {
                    Ok(_) => {}
                    Err(NodeError::Stopped) => return Err(NodeError::Stopped.into()),
                    Err(e) => tracing::debug!(?instance, error = %e, "recorded decision not for this node"),
                }
            }
            // Someone claims REVERT for a swap: if this node holds the hub's certificate, it
            // posts it within the challenge window (in the background: the watcher reads on).
            ContractEvent::RevertClaimed { hub, instance, final_at, .. } => {
                let held = node.enclave(Request::Certificate { instance }).await;
                tracing::info!(
                    ?instance,
                    final_at,
                    holds_certificate = held.is_ok(),
                    "REVERT claimed for a swap"
                );
                if let Ok(Response::Certificate(cert)) = held
                    && cert.hub == hub
                {
                    let (node, link) = (node.clone(), link.clone());
                    tokio::spawn(async move {
                        match post_certificate(&node, &link, instance).await {
                            Ok(_) => tracing::info!(
                                ?instance,
                                "posted the hub's certificate against a REVERT claim"
                            ),
                            Err(e) => tracing::warn!(?instance, error = %e, "posting a certificate"),
                        }
                    });
                }
            }
            ContractEvent::ChannelClosed { channel, .. }
                if node.channels().await?.iter().any(|c| c.id == channel) =>
            {
                node.enclave(Request::ChannelSettled { channel }).await?;
            }
            _ => {}
        }
    }
    Ok(safe + 1)
}

/// Runs [`watch_once`] every `poll` until the node stops; the receiver reports the next
/// block to read (so callers can wait until the node has seen a given block).
pub fn spawn_watcher<C: Chain + Clone + 'static>(
    node: NodeHandle,
    link: ChainLink<C>,
    poll: Duration,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<u64>) {
    let (tx, rx) = watch::channel(link.from_block);
    let task = tokio::spawn(async move {
        let mut next = link.from_block;
        loop {
            match watch_once(&node, &link, next).await {
                Ok(n) => {
                    next = n;
                    let _ = tx.send(next);
                }
                Err(OnchainError::Node(NodeError::Stopped)) => return,
                Err(e) => tracing::warn!(chain = link.id.0, error = %e, "channel watcher"),
            }
            tokio::time::sleep(poll).await;
        }
    });
    (task, rx)
}
