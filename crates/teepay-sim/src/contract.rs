//! A model of the `PaymentChannels` contract's settlement rule (DESIGN §3), per chain:
//! close/eject with a state signed by a party's enclave; the first eject of an instance
//! fixes its outcome (PREPARED → REVERT, COMMITTED → APPLY) and every later settlement of
//! a channel locked by the same instance follows it. Swap-locked states are rejected. A state
//! may lag the deposits (never exceed them): what it has not seen is paid to its depositor.

use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::BTreeMap;
use teepay_types::{
    Address, Amount, Asset, ChainId, ChannelId, InstanceId, InstanceKind, MAX_LOCKS_PER_CHANNEL, Outcome,
    SignedChannelState,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("unknown channel")]
    UnknownChannel,
    #[error("channel already closed")]
    Closed,
    #[error("state not signed by a party of the channel")]
    NotAParty,
    #[error("state balances do not add up to the deposits it carries")]
    BadTotal,
    #[error("state names another asset than the channel holds")]
    BadToken,
    #[error("state carries a deposit above the channel's real deposit on that side")]
    BadDeposit,
    #[error("state carries more locks than a channel may hold")]
    TooManyLocks,
    #[error("state carries a cross-chain swap lock")]
    SwapLocked,
    #[error("arithmetic overflow")]
    Overflow,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct OnchainChannel {
    pub chain: ChainId,
    /// What the channel holds; a signed state must name it (the contract's `BadToken`).
    pub asset: Asset,
    pub a: Address,
    pub b: Address,
    pub deposit_a: Amount,
    pub deposit_b: Amount,
    pub open: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ContractModel {
    /// Deliberately wrong rule for mutation tests: each settlement resolves its locks by
    /// its own phase instead of the instance's first recorded outcome.
    pub broken_settlement_rule: bool,
    pub channels: BTreeMap<ChannelId, OnchainChannel>,
    pub outcomes: BTreeMap<InstanceId, Outcome>,
    pub payouts: BTreeMap<(ChainId, Asset, Address), Amount>,
}

/// What one settlement did: newly fixed instance outcomes and what each party received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub channel: ChannelId,
    pub fixed: Vec<(InstanceId, Outcome)>,
    pub paid_a: Amount,
    pub paid_b: Amount,
}

impl ContractModel {
    pub fn open(&mut self, id: ChannelId, channel: OnchainChannel) {
        self.channels.insert(id, channel);
    }

    pub fn close(&mut self, signed: &SignedChannelState) -> Result<Settlement, ContractError> {
        let state = &signed.state;
        let ch = self.channels.get(&state.channel).ok_or(ContractError::UnknownChannel)?;
        if !ch.open {
            return Err(ContractError::Closed);
        }
        let signer = signed.signer().map_err(|_| ContractError::NotAParty)?;
        if signer != ch.a && signer != ch.b {
            return Err(ContractError::NotAParty);
        }
        if state.token != ch.asset.token() {
            return Err(ContractError::BadToken);
        }
        if state.deposit_a > ch.deposit_a || state.deposit_b > ch.deposit_b {
            return Err(ContractError::BadDeposit);
        }
        let deposits = state.deposit_a.checked_add(state.deposit_b).ok_or(ContractError::Overflow)?;
        if state.total() != Some(deposits) {
            return Err(ContractError::BadTotal);
        }
        if state.locks.len() > MAX_LOCKS_PER_CHANNEL {
            return Err(ContractError::TooManyLocks);
        }
        if state.locks.iter().any(|l| l.kind == InstanceKind::CrossChain) {
            return Err(ContractError::SwapLocked);
        }
        let (mut bal_a, mut bal_b) = (state.balance_a, state.balance_b);
        let mut fixed = Vec::new();
        let mut outcomes = self.outcomes.clone();
        for lock in &state.locks {
            let mut outcome = *outcomes.entry(lock.instance).or_insert_with(|| {
                fixed.push((lock.instance, lock.phase.eject_outcome()));
                lock.phase.eject_outcome()
            });
            if self.broken_settlement_rule {
                outcome = lock.phase.eject_outcome();
            }
            if outcome == Outcome::Apply {
                let (from, to) =
                    if lock.a_to_b { (&mut bal_a, &mut bal_b) } else { (&mut bal_b, &mut bal_a) };
                *from = from.checked_sub(lock.amount).ok_or(ContractError::Overflow)?;
                *to = to.checked_add(lock.amount).ok_or(ContractError::Overflow)?;
            }
        }
        // Deposits the signer had not seen go back to whoever made them.
        let unseen_a = ch.deposit_a.checked_sub(state.deposit_a).ok_or(ContractError::Overflow)?;
        let unseen_b = ch.deposit_b.checked_sub(state.deposit_b).ok_or(ContractError::Overflow)?;
        let bal_a = bal_a.checked_add(unseen_a).ok_or(ContractError::Overflow)?;
        let bal_b = bal_b.checked_add(unseen_b).ok_or(ContractError::Overflow)?;
        let (chain, asset, a, b) = (ch.chain, ch.asset, ch.a, ch.b);
        self.outcomes = outcomes;
        self.channels.get_mut(&state.channel).expect("checked").open = false;
        for (who, amount) in [(a, bal_a), (b, bal_b)] {
            let paid = self.payouts.entry((chain, asset, who)).or_default();
            *paid = paid.checked_add(amount).ok_or(ContractError::Overflow)?;
        }
        Ok(Settlement { channel: state.channel, fixed, paid_a: bal_a, paid_b: bal_b })
    }
}
