//! The PREPARE policy (DESIGN §4, §6 step 1; invariant 6, consent): value leaves this node
//! only for an instance that carries this node's own signed order with unchanged terms, or
//! that pays it, as an intermediary, at least what it forwards plus its fee. Pure checks:
//! the result is a plan that `rounds` applies only if every check passed.

use crate::state::{Lock, NodeState, OrderStatus};
use std::collections::BTreeMap;
use teepay_types::{
    Address, Amount, ChannelId, InstanceKind, InstanceSpec, Leg, MAX_LOCKS_PER_CHANNEL, NackReason, Order,
    Phase, SwapIntent,
};

/// The locks a PREPARE will add, once every check has passed.
#[derive(Debug)]
pub(crate) struct PreparePlan {
    pub locks: Vec<(ChannelId, Lock)>,
    pub order_nonce: Option<u64>,
    pub invoice: Option<crate::invoices::InvoiceRole>,
}

pub(crate) fn plan_prepare(
    state: &NodeState,
    me: Address,
    hub: Address,
    spec: &InstanceSpec,
    now: u64,
) -> Result<PreparePlan, NackReason> {
    spec.validate_structure().map_err(|_| NackReason::MalformedInstance)?;
    // The id must be the hub's `seq`-th: the replay floor relies on it.
    if spec.id != teepay_types::instance_id(hub, spec.seq) {
        return Err(NackReason::MalformedInstance);
    }
    if state.config.require_peer_acks && !spec.peer_acks {
        return Err(NackReason::PeerAcksRequired);
    }
    if now > spec.deadline {
        return Err(NackReason::DeadlinePassed);
    }
    let locks = plan_locks(state, me, hub, spec)?;
    if locks.is_empty() {
        return Err(NackReason::NotAParticipant);
    }
    check_forwarding_fees(state, me, spec)?;
    let order_nonce = check_own_order(state, me, spec, now)?;
    let invoice = state.check_invoice(me, spec, now)?;
    check_balances(state, &locks)?;
    Ok(PreparePlan { locks, order_nonce, invoice })
}

/// One lock per channel this node holds in the instance, checked against the channel table.
fn plan_locks(
    state: &NodeState,
    me: Address,
    hub: Address,
    spec: &InstanceSpec,
) -> Result<Vec<(ChannelId, Lock)>, NackReason> {
    let mut locks = Vec::new();
    for leg in &spec.legs {
        for hop in &leg.hops {
            let (outgoing, peer) = if hop.from == me {
                (true, hop.to)
            } else if hop.to == me {
                (false, hop.from)
            } else {
                continue;
            };
            let channel = state.channels.get(&hop.channel).ok_or(NackReason::UnknownChannel)?;
            if channel.chain != leg.chain || channel.peer != peer {
                return Err(NackReason::UnknownChannel);
            }
            if !channel.is_open() {
                return Err(NackReason::ChannelClosed);
            }
            // The channel must hold what the leg moves: otherwise an intermediary could be
            // paid in a worthless token to forward ether (its units are not the same either).
            if channel.token != leg.asset.token() {
                return Err(NackReason::WrongAsset);
            }
            // Each channel appears once per instance (`validate_structure`), so this bounds
            // the locks of every channel, and with them the gas of its close or eject.
            if channel.locks.len() >= MAX_LOCKS_PER_CHANNEL {
                return Err(NackReason::TooManyLocks);
            }
            let lock = Lock {
                instance: spec.id,
                amount: hop.amount,
                outgoing,
                phase: Phase::Prepared,
                kind: spec.kind,
                hub,
                deadline: spec.lock_deadline,
            };
            locks.push((hop.channel, lock));
        }
    }
    Ok(locks)
}

/// Where this node forwards (receives on hop i-1, sends on hop i), it must be paid at least
/// what it forwards plus the fee it set for the outgoing channel.
fn check_forwarding_fees(state: &NodeState, me: Address, spec: &InstanceSpec) -> Result<(), NackReason> {
    for leg in &spec.legs {
        for pair in leg.hops.windows(2) {
            let (incoming, outgoing) = (&pair[0], &pair[1]);
            if outgoing.from != me {
                continue;
            }
            let policy = state.channels.get(&outgoing.channel).ok_or(NackReason::UnknownChannel)?.fee;
            let fee = policy.fee(outgoing.amount).ok_or(NackReason::Overflow)?;
            let required = outgoing.amount.checked_add(fee).ok_or(NackReason::Overflow)?;
            if incoming.amount < required {
                return Err(NackReason::FeeBelowPolicy);
            }
        }
    }
    Ok(())
}

/// If this node is the source of any leg, the instance must carry this node's own order,
/// issued by this enclave, still open, unexpired, and matching the legs exactly.
fn check_own_order(
    state: &NodeState,
    me: Address,
    spec: &InstanceSpec,
    now: u64,
) -> Result<Option<u64>, NackReason> {
    let sourced: Vec<&Leg> = spec.legs.iter().filter(|l| l.source() == Some(me)).collect();
    let own = spec.orders.iter().find(|o| o.order.owner() == me);
    let Some(own) = own else {
        return if sourced.is_empty() { Ok(None) } else { Err(NackReason::MissingOrder) };
    };
    let nonce = own.order.nonce();
    let Some(record) = state.orders.get(&nonce) else {
        // Issued (the nonce is below the next one) but no longer recorded: paid, refunded or
        // expired. Otherwise never issued by this enclave (or lost in a crash before sealing).
        return Err(if nonce < state.next_nonce {
            NackReason::OrderAlreadyUsed
        } else {
            NackReason::MissingOrder
        });
    };
    if record.digest != own.order.digest() {
        // Signed by this key but not an order this enclave issued under this nonce.
        return Err(NackReason::OrderTermsMismatch);
    }
    if record.status != OrderStatus::Open {
        return Err(NackReason::OrderAlreadyUsed);
    }
    if now > own.order.expires_at() {
        return Err(NackReason::OrderExpired);
    }
    match (&own.order, spec.kind) {
        (Order::Payment(req), InstanceKind::MultiHop) => {
            let [leg] = sourced.as_slice() else { return Err(NackReason::OrderTermsMismatch) };
            let fee_ok = leg.sent().checked_sub(req.amount).is_some_and(|fee| fee <= req.max_fee);
            if leg.chain != req.chain
                || leg.asset != req.asset
                || leg.destination() != Some(req.payee)
                || leg.delivered() != req.amount
                || !fee_ok
            {
                return Err(NackReason::OrderTermsMismatch);
            }
        }
        (Order::Swap(intent), InstanceKind::CrossChain) => check_swap_terms(intent, me, spec, &sourced)?,
        _ => return Err(NackReason::OrderTermsMismatch),
    }
    Ok(Some(own.order.nonce()))
}

/// Swap: every leg this party sources matches one `gives` entry and vice versa, and every
/// `receives` entry is met by a distinct leg delivering at least that amount to it.
fn check_swap_terms(
    intent: &SwapIntent,
    me: Address,
    spec: &InstanceSpec,
    sourced: &[&Leg],
) -> Result<(), NackReason> {
    if sourced.len() != intent.gives.len() {
        return Err(NackReason::OrderTermsMismatch);
    }
    let mut used = vec![false; sourced.len()];
    for give in &intent.gives {
        let found = sourced.iter().enumerate().position(|(i, leg)| {
            !used[i]
                && leg.chain == give.chain
                && leg.asset == give.asset
                && leg.destination() == Some(give.counterparty)
                && leg.delivered() == give.amount
                && leg.sent().checked_sub(give.amount).is_some_and(|fee| fee <= give.max_fee)
        });
        match found {
            Some(i) => used[i] = true,
            None => return Err(NackReason::OrderTermsMismatch),
        }
    }
    let incoming: Vec<&Leg> = spec.legs.iter().filter(|l| l.destination() == Some(me)).collect();
    let mut used = vec![false; incoming.len()];
    for want in &intent.receives {
        let found = incoming.iter().enumerate().position(|(i, leg)| {
            !used[i]
                && leg.chain == want.chain
                && leg.asset == want.asset
                && leg.source() == Some(want.counterparty)
                && leg.delivered() >= want.amount
        });
        match found {
            Some(i) => used[i] = true,
            None => return Err(NackReason::OrderTermsMismatch),
        }
    }
    Ok(())
}

/// Outgoing locks must fit what this node can send; incoming locks must fit what the peer
/// can send as this enclave knows the channel (so a peer's host cannot conjure funds).
fn check_balances(state: &NodeState, locks: &[(ChannelId, Lock)]) -> Result<(), NackReason> {
    let mut demand: BTreeMap<(ChannelId, bool), Amount> = BTreeMap::new();
    for (channel, lock) in locks {
        let entry = demand.entry((*channel, lock.outgoing)).or_default();
        *entry = entry.checked_add(lock.amount).ok_or(NackReason::Overflow)?;
    }
    for ((channel, outgoing), amount) in demand {
        let ch = &state.channels[&channel];
        let available = if outgoing { ch.available_out() } else { ch.available_in() };
        if amount > available {
            return Err(NackReason::InsufficientFunds);
        }
    }
    Ok(())
}
