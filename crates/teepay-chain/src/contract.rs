//! `PaymentChannels` on a [`Chain`]: deployment, host-key transactions (deployer, faucet),
//! typed events and readable revert reasons.

use crate::chain::{CallRequest, Chain, ChainError, LogEntry, Receipt};
use alloy_primitives::{Address as EvmAddress, B256};
use alloy_sol_types::{SolCall, SolConstructor, SolEventInterface, SolInterface};
use std::time::Duration;
use teepay_types::bindings::PaymentChannels::{self, PaymentChannelsErrors, PaymentChannelsEvents};
use teepay_types::{
    Address, Amount, ChainId, ChannelId, DecisionCertificate, Eip1559Tx, GasParams, Hash32, InstanceId,
    Outcome, SigningKey,
};

/// How long a submitter waits for its transaction to be mined before giving up.
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A deployed `PaymentChannels` contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub chain: ChainId,
    pub address: Address,
    /// The block it was deployed in: event sync starts here.
    pub block: u64,
    pub gas_used: u64,
    /// What the deployer paid for gas.
    pub fee: Amount,
}

/// Every state change the contract reports (DESIGN §3); the hub's channel DB is built only
/// from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContractEvent {
    MeasurementAllowed {
        measurement: Hash32,
        allowed: bool,
    },
    EnclaveRegistered {
        enclave: Address,
        measurement: Hash32,
    },
    ChannelOpened {
        channel: ChannelId,
        a: Address,
        b: Address,
        deposit: Amount,
        nonce: u64,
        /// Zero for an ether channel, else its ERC-20 token.
        token: Address,
    },
    ChannelFunded {
        channel: ChannelId,
        party: Address,
        amount: Amount,
        deposit_a: Amount,
        deposit_b: Amount,
    },
    InstanceResolved {
        instance: InstanceId,
        applied: bool,
        channel: ChannelId,
    },
    ChannelClosed {
        channel: ChannelId,
        version: u64,
        payout_a: Amount,
        payout_b: Amount,
        ejected: bool,
    },
    /// A token refused a close's payout: kept for `party` to withdraw.
    PayoutDeferred {
        party: Address,
        token: Address,
        amount: Amount,
    },
    Withdrawn {
        party: Address,
        token: Address,
        amount: Amount,
    },
    /// A hub's decision certificate was recorded: every watcher can hand it to its enclave.
    DecisionRecorded {
        certificate: DecisionCertificate,
    },
    /// A REVERT claim on a swap lock, final at `final_at` (chain time, seconds) unless the
    /// hub's CONFIRM certificate is recorded first.
    RevertClaimed {
        hub: Address,
        instance: InstanceId,
        final_at: u64,
        channel: ChannelId,
    },
}

/// An event with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub event: ContractEvent,
    pub block_number: u64,
    pub tx_hash: Hash32,
    pub log_index: u64,
}

fn ours(a: EvmAddress) -> Address {
    Address(a.0.0)
}

/// Deposits are capped at 2^128−1 by the contract, so this conversion cannot fail for its
/// events; anything larger is reported as malformed rather than truncated.
fn amount(v: alloy_primitives::U256) -> Result<Amount, ChainError> {
    u128::try_from(v).map(Amount).map_err(|_| ChainError::Overflow(v.to_string()))
}

impl ContractEvent {
    /// Decodes one log of the contract; `Ok(None)` for a log that is not one of its events.
    pub fn decode(log: &LogEntry) -> Result<Option<Self>, ChainError> {
        let topics: Vec<B256> = log.topics.iter().map(|t| B256::from(*t)).collect();
        let Ok(event) = PaymentChannelsEvents::decode_raw_log(&topics, &log.data) else {
            return Ok(None);
        };
        use PaymentChannelsEvents as E;
        Ok(Some(match event {
            E::MeasurementAllowed(e) => {
                ContractEvent::MeasurementAllowed { measurement: e.measurement.0, allowed: e.allowed }
            }
            E::EnclaveRegistered(e) => {
                ContractEvent::EnclaveRegistered { enclave: ours(e.enclave), measurement: e.measurement.0 }
            }
            E::ChannelOpened(e) => ContractEvent::ChannelOpened {
                channel: ChannelId(e.channelId.0),
                a: ours(e.a),
                b: ours(e.b),
                deposit: amount(e.deposit)?,
                nonce: e.nonce,
                token: ours(e.token),
            },
            E::ChannelFunded(e) => ContractEvent::ChannelFunded {
                channel: ChannelId(e.channelId.0),
                party: ours(e.party),
                amount: amount(e.amount)?,
                deposit_a: amount(e.depositA)?,
                deposit_b: amount(e.depositB)?,
            },
            E::InstanceResolved(e) => ContractEvent::InstanceResolved {
                instance: InstanceId(e.instanceId.0),
                applied: e.applied,
                channel: ChannelId(e.channelId.0),
            },
            E::DecisionRecorded(e) => {
                let Ok(signature) = <[u8; 65]>::try_from(e.signature.as_ref()) else {
                    return Err(ChainError::Malformed("DecisionRecorded: signature is not 65 bytes".into()));
                };
                ContractEvent::DecisionRecorded {
                    certificate: DecisionCertificate {
                        hub: ours(e.hub),
                        instance: InstanceId(e.instanceId.0),
                        outcome: if e.applied { Outcome::Apply } else { Outcome::Revert },
                        signature: teepay_types::Signature(signature),
                    },
                }
            }
            E::RevertClaimed(e) => ContractEvent::RevertClaimed {
                hub: ours(e.hub),
                instance: InstanceId(e.instanceId.0),
                final_at: e.finalAt,
                channel: ChannelId(e.channelId.0),
            },
            E::ChannelClosed(e) => ContractEvent::ChannelClosed {
                channel: ChannelId(e.channelId.0),
                version: e.version,
                payout_a: amount(e.payoutA)?,
                payout_b: amount(e.payoutB)?,
                ejected: e.ejected,
            },
            E::PayoutDeferred(e) => ContractEvent::PayoutDeferred {
                party: ours(e.party),
                token: ours(e.token),
                amount: amount(e.amount)?,
            },
            E::Withdrawn(e) => ContractEvent::Withdrawn {
                party: ours(e.party),
                token: ours(e.token),
                amount: amount(e.amount)?,
            },
        }))
    }
}

/// The contract events a mined transaction emitted, in order.
pub fn receipt_events(receipt: &Receipt) -> Result<Vec<ContractEvent>, ChainError> {
    let mut out = Vec::new();
    for log in &receipt.logs {
        out.extend(ContractEvent::decode(log)?);
    }
    Ok(out)
}

/// The id of the channel an `openChannel` transaction opened.
pub fn opened_channel(receipt: &Receipt) -> Option<ChannelId> {
    receipt_events(receipt).ok()?.into_iter().find_map(|e| match e {
        ContractEvent::ChannelOpened { channel, .. } => Some(channel),
        _ => None,
    })
}

/// The contract's events in blocks `from..=to`, in chain order.
pub async fn events<C: Chain>(
    chain: &C,
    contract: Address,
    from: u64,
    to: u64,
) -> Result<Vec<LoggedEvent>, ChainError> {
    let mut out = Vec::new();
    for log in chain.logs(contract, from, to).await? {
        if let Some(event) = ContractEvent::decode(&log)? {
            out.push(LoggedEvent {
                event,
                block_number: log.block_number,
                tx_hash: log.tx_hash,
                log_index: log.log_index,
            });
        }
    }
    Ok(out)
}

/// The contract's custom error name for a revert payload (e.g. `"BadTotal"`), or the raw
/// payload in hex when it is not one of them.
pub fn revert_reason(data: &[u8]) -> String {
    match PaymentChannelsErrors::abi_decode(data) {
        Ok(e) => format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string(),
        Err(_) => format!("0x{}", teepay_types::ids::to_hex(data)),
    }
}

/// Gas parameters for a transaction from `from`: the chain's nonce and fee, and a gas limit
/// from an estimate with a margin (or `gas_limit` when given).
pub async fn gas_params<C: Chain>(
    chain: &C,
    from: Address,
    req: Option<&CallRequest>,
) -> Result<GasParams, ChainError> {
    let nonce = chain.nonce(from).await?;
    let price = chain.gas_price().await?;
    let gas_limit = match req {
        Some(req) => {
            let estimate = chain.estimate_gas(req).await?;
            estimate + estimate / 5 + 10_000
        }
        None => 21_000,
    };
    Ok(GasParams {
        nonce,
        gas_limit,
        // Twice the current price absorbs base-fee growth between estimate and inclusion.
        max_fee_per_gas: price.saturating_mul(2),
        max_priority_fee_per_gas: price.min(1_000_000_000),
    })
}

/// Signs with a host-held key (deployer, dev faucet), submits and waits for the receipt.
pub async fn send_from_key<C: Chain>(
    chain: &C,
    key: &SigningKey,
    to: Option<Address>,
    value: Amount,
    input: Vec<u8>,
) -> Result<Receipt, ChainError> {
    let chain_id = chain.chain_id().await?;
    let req = CallRequest { from: Some(key.address()), to, value, data: input.clone() };
    let needs_estimate = to.is_none() || !input.is_empty();
    let gas = gas_params(chain, key.address(), needs_estimate.then_some(&req)).await?;
    let signed = Eip1559Tx { chain: chain_id, gas, to, value, input }.sign(key);
    let hash = chain.send_raw_transaction(&signed.raw).await?;
    chain.wait_for_receipt(hash, RECEIPT_TIMEOUT).await
}

/// The default challenge window of a REVERT claim on a swap lock (seconds): a day for a
/// participant holding the hub's CONFIRM certificate to post it (DESIGN §10).
pub const DEFAULT_CHALLENGE_WINDOW: u64 = 86_400;

/// Deploys `PaymentChannels` with the given attestation authority and allowed measurements,
/// and the default challenge window.
pub async fn deploy<C: Chain>(
    chain: &C,
    deployer: &SigningKey,
    authority: Address,
    measurements: &[Hash32],
) -> Result<Deployment, ChainError> {
    deploy_with_window(chain, deployer, authority, measurements, DEFAULT_CHALLENGE_WINDOW).await
}

/// Deploys a plain ERC-20 test token (`contracts/TestToken.sol`; anyone may mint it on a
/// local chain). `mode` makes it misbehave for tests: 0 standard, 1 no return values, 2 a 1%
/// fee on transfer, 3 answers `false` while `setRefusing(true)`.
pub async fn deploy_token<C: Chain>(
    chain: &C,
    deployer: &SigningKey,
    name: &str,
    symbol: &str,
    decimals: u8,
    mode: u8,
) -> Result<Address, ChainError> {
    use teepay_types::bindings::TestToken;
    let mut init = TestToken::BYTECODE.to_vec();
    init.extend(
        TestToken::constructorCall {
            name_: name.to_string(),
            symbol_: symbol.to_string(),
            decimals_: decimals,
            mode_: mode,
        }
        .abi_encode(),
    );
    let receipt = send_from_key(chain, deployer, None, Amount(0), init).await?;
    match (receipt.success, receipt.contract_address) {
        (true, Some(a)) => Ok(a),
        _ => Err(ChainError::Rejected("TestToken deployment reverted".into())),
    }
}

/// Mints `amount` of a test token to `to` (sent by `from`).
pub async fn mint_token<C: Chain>(
    chain: &C,
    from: &SigningKey,
    token: Address,
    to: Address,
    amount: Amount,
) -> Result<(), ChainError> {
    use teepay_types::bindings::TestToken;
    let call =
        TestToken::mintCall { to: EvmAddress::from(to.0), amount: alloy_primitives::U256::from(amount.0) };
    let receipt = send_from_key(chain, from, Some(token), Amount(0), call.abi_encode()).await?;
    if !receipt.success {
        return Err(ChainError::Rejected("mint reverted".into()));
    }
    Ok(())
}

/// An ERC-20 balance (`balanceOf(holder)`).
pub async fn token_balance<C: Chain>(
    chain: &C,
    token: Address,
    holder: Address,
) -> Result<Amount, ChainError> {
    use teepay_types::bindings::TestToken;
    let call = TestToken::balanceOfCall(EvmAddress::from(holder.0));
    let req = CallRequest { to: Some(token), data: call.abi_encode(), ..CallRequest::default() };
    let out = chain.call(&req).await?;
    let value = alloy_primitives::U256::try_from_be_slice(&out)
        .ok_or_else(|| ChainError::Rejected("balanceOf answered no number".into()))?;
    amount(value)
}

/// An ERC-20 token's unit as it names itself: `symbol()` and `decimals()` read from the
/// token contract (so `12.5usdc` means what the token says a USDC is).
pub async fn token_unit<C: Chain>(
    chain: &C,
    token: Address,
) -> Result<teepay_types::units::Unit, ChainError> {
    use teepay_types::bindings::TestToken;
    let ask = |data: Vec<u8>| CallRequest { to: Some(token), data, ..CallRequest::default() };
    let out = chain.call(&ask(TestToken::symbolCall {}.abi_encode())).await?;
    let symbol = TestToken::symbolCall::abi_decode_returns(&out)
        .map_err(|_| ChainError::Rejected(format!("{token} answers no ERC-20 symbol()")))?;
    let out = chain.call(&ask(TestToken::decimalsCall {}.abi_encode())).await?;
    let decimals = TestToken::decimalsCall::abi_decode_returns(&out)
        .map_err(|_| ChainError::Rejected(format!("{token} answers no ERC-20 decimals()")))?;
    if symbol.is_empty() || symbol.len() > 32 || !symbol.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ChainError::Rejected(format!("{token}'s symbol {symbol:?} cannot be a unit")));
    }
    Ok(teepay_types::units::Unit::new(&symbol.to_lowercase(), decimals))
}

/// [`deploy`] with a REVERT claim's challenge window of `challenge_window` seconds.
pub async fn deploy_with_window<C: Chain>(
    chain: &C,
    deployer: &SigningKey,
    authority: Address,
    measurements: &[Hash32],
    challenge_window: u64,
) -> Result<Deployment, ChainError> {
    let mut init = PaymentChannels::BYTECODE.to_vec();
    init.extend(
        PaymentChannels::constructorCall {
            authority_: EvmAddress::from(authority.0),
            measurements: measurements.iter().map(|m| B256::from(*m)).collect(),
            challengeWindow_: challenge_window,
        }
        .abi_encode(),
    );
    let receipt = send_from_key(chain, deployer, None, Amount(0), init).await?;
    let address = match (receipt.success, receipt.contract_address) {
        (true, Some(a)) => a,
        _ => return Err(ChainError::Rejected("PaymentChannels deployment reverted".into())),
    };
    Ok(Deployment {
        chain: chain.chain_id().await?,
        address,
        block: receipt.block_number,
        gas_used: receipt.gas_used,
        fee: receipt.fee(),
    })
}

/// Read-only view of a deployed contract.
#[derive(Debug, Clone, Copy)]
pub struct ContractView<'a, C> {
    pub chain: &'a C,
    pub address: Address,
}

impl<C: Chain> ContractView<'_, C> {
    async fn view<T: SolCall>(&self, call: T) -> Result<T::Return, ChainError> {
        let req = CallRequest { to: Some(self.address), data: call.abi_encode(), ..CallRequest::default() };
        let out = self.chain.call(&req).await?;
        T::abi_decode_returns(&out).map_err(|e| ChainError::Malformed(format!("{}: {e}", T::SIGNATURE)))
    }

    pub async fn channel(&self, id: ChannelId) -> Result<PaymentChannels::channelsReturn, ChainError> {
        self.view(PaymentChannels::channelsCall(B256::from(id.0))).await
    }

    /// `None` until the instance's first eject fixed it; then whether it applied.
    pub async fn instance_outcome(&self, id: InstanceId) -> Result<Option<bool>, ChainError> {
        Ok(match self.view(PaymentChannels::instanceOutcomeCall(B256::from(id.0))).await? {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        })
    }

    /// A swap's decision as recorded for locks naming `hub`: `None` until a certificate was
    /// recorded, then whether it applied. (A REVERT claim still in its window, or final but
    /// not yet used by a close, shows as `None`.)
    pub async fn recorded_decision(&self, hub: Address, id: InstanceId) -> Result<Option<bool>, ChainError> {
        let d = self
            .view(PaymentChannels::swapDecisionsCall { _0: EvmAddress::from(hub.0), _1: B256::from(id.0) })
            .await?;
        Ok(match d.outcome {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        })
    }

    pub async fn enclave_measurement(&self, enclave: Address) -> Result<Option<Hash32>, ChainError> {
        let m = self.view(PaymentChannels::enclaveMeasurementCall(EvmAddress::from(enclave.0))).await?;
        Ok((m != B256::ZERO).then_some(m.0))
    }

    pub async fn state_digest(&self, state: &teepay_types::ChannelState) -> Result<Hash32, ChainError> {
        let call = PaymentChannels::stateDigestCall { state: teepay_types::abi_channel_state(state) };
        Ok(self.view(call).await?.0)
    }
}
