//! Instances (payments and swaps), the orders that authorize them, and the structural
//! rules every enclave checks before looking at its own part.

use crate::channel::InstanceKind;
use crate::crypto::{Signature, SigningKey, keccak256_parts, recover_signer};
use crate::encoding::body_bytes;
use crate::ids::{Address, Amount, ChainId, ChannelId, Hash32, InstanceId};
use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::BTreeSet;

/// One transfer over one channel of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Hop {
    pub channel: ChannelId,
    pub from: Address,
    pub to: Address,
    pub amount: Amount,
}

/// A route on one chain: hops from a source to a destination; each intermediary forwards
/// slightly less than it receives (its fee).
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Leg {
    pub chain: ChainId,
    pub hops: Vec<Hop>,
}

impl Leg {
    pub fn source(&self) -> Option<Address> {
        self.hops.first().map(|h| h.from)
    }
    pub fn destination(&self) -> Option<Address> {
        self.hops.last().map(|h| h.to)
    }
    /// What the source pays (first hop) and what the destination receives (last hop).
    pub fn sent(&self) -> Amount {
        self.hops.first().map_or(Amount::ZERO, |h| h.amount)
    }
    pub fn delivered(&self) -> Amount {
        self.hops.last().map_or(Amount::ZERO, |h| h.amount)
    }
}

/// A payer's request for a multi-hop payment, built and signed by the payer's enclave
/// (DESIGN §6 step 0). The payer's enclave later locks funds only for an instance that
/// carries this exact request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct PaymentRequest {
    pub chain: ChainId,
    pub payer: Address,
    pub payee: Address,
    /// What the payee receives.
    pub amount: Amount,
    /// The most the payer accepts to pay intermediaries on top of `amount`.
    pub max_fee: Amount,
    /// Unique per payer; the payer's enclave pays each request at most once.
    pub nonce: u64,
    pub expires_at: u64,
}

/// One side of a swap intent: value moving on one chain to or from a counterparty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Transfer {
    pub chain: ChainId,
    pub counterparty: Address,
    pub amount: Amount,
    /// For gives: the most paid to intermediaries on top of `amount` (ignored for receives).
    pub max_fee: Amount,
}

/// A swap party's intent: it gives these transfers only if it receives those, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct SwapIntent {
    pub party: Address,
    pub gives: Vec<Transfer>,
    pub receives: Vec<Transfer>,
    pub nonce: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub enum Order {
    Payment(PaymentRequest),
    Swap(SwapIntent),
}

impl Order {
    /// The enclave address whose signature this order needs.
    pub fn owner(&self) -> Address {
        match self {
            Order::Payment(r) => r.payer,
            Order::Swap(i) => i.party,
        }
    }
    pub fn nonce(&self) -> u64 {
        match self {
            Order::Payment(r) => r.nonce,
            Order::Swap(i) => i.nonce,
        }
    }
    pub fn expires_at(&self) -> u64 {
        match self {
            Order::Payment(r) => r.expires_at,
            Order::Swap(i) => i.expires_at,
        }
    }
    pub fn digest(&self) -> Hash32 {
        keccak256_parts(&[b"teepay/order/v1", &body_bytes(self)])
    }
    pub fn sign(self, key: &SigningKey) -> SignedOrder {
        let signature = key.sign_digest(&self.digest());
        SignedOrder { order: self, signature }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct SignedOrder {
    pub order: Order,
    pub signature: Signature,
}

impl SignedOrder {
    /// True iff the order is signed by its own owner's enclave.
    pub fn is_authentic(&self) -> bool {
        matches!(recover_signer(&self.order.digest(), &self.signature), Ok(a) if a == self.order.owner())
    }
}

/// Everything the hub enclave sends in PREPARE: the instance's routes and the signed orders
/// that authorize them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct InstanceSpec {
    pub id: InstanceId,
    pub kind: InstanceKind,
    pub legs: Vec<Leg>,
    pub orders: Vec<SignedOrder>,
    /// Hub-clock time after which nodes refuse to PREPARE and the hub may refund.
    pub deadline: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("instance has no legs")]
    NoLegs,
    #[error("leg {0} has no hops")]
    EmptyLeg(usize),
    #[error("leg {0} hop {1} has a zero amount")]
    ZeroAmount(usize, usize),
    #[error("leg {0} hop {1} does not start where the previous hop ended")]
    Discontiguous(usize, usize),
    #[error("leg {0} hop {1} sends to itself")]
    SelfHop(usize, usize),
    #[error("leg {0} visits a node twice")]
    Cycle(usize),
    #[error("leg {0} hop {1} forwards more than it received")]
    IncreasingAmount(usize, usize),
    #[error("channel used twice in one instance")]
    DuplicateChannel,
    #[error("a multi-hop payment has exactly one leg and one payment request")]
    MultiHopShape,
    #[error("a cross-chain swap needs at least two legs and only swap intents")]
    SwapShape,
    #[error("two orders of one owner in one instance")]
    DuplicateOrder,
    #[error("order of {0:?} is not signed by its owner")]
    UnsignedOrder(Address),
}

impl InstanceSpec {
    /// Shape rules independent of who checks them (no signatures). Every enclave runs this
    /// before anything else, so a malformed route can never reach balance or consent logic.
    pub fn validate_structure(&self) -> Result<(), SpecError> {
        if self.legs.is_empty() {
            return Err(SpecError::NoLegs);
        }
        let mut channels = BTreeSet::new();
        for (li, leg) in self.legs.iter().enumerate() {
            if leg.hops.is_empty() {
                return Err(SpecError::EmptyLeg(li));
            }
            let mut visited = BTreeSet::new();
            for (hi, hop) in leg.hops.iter().enumerate() {
                if hop.amount.is_zero() {
                    return Err(SpecError::ZeroAmount(li, hi));
                }
                if hop.from == hop.to {
                    return Err(SpecError::SelfHop(li, hi));
                }
                if hi > 0 {
                    let prev = &leg.hops[hi - 1];
                    if prev.to != hop.from {
                        return Err(SpecError::Discontiguous(li, hi));
                    }
                    if hop.amount > prev.amount {
                        return Err(SpecError::IncreasingAmount(li, hi));
                    }
                }
                if !visited.insert(hop.from) {
                    return Err(SpecError::Cycle(li));
                }
                if !channels.insert((leg.chain, hop.channel)) {
                    return Err(SpecError::DuplicateChannel);
                }
            }
            if !visited.insert(leg.hops[leg.hops.len() - 1].to) {
                return Err(SpecError::Cycle(li));
            }
        }
        let mut owners = BTreeSet::new();
        for o in &self.orders {
            if !owners.insert(o.order.owner()) {
                return Err(SpecError::DuplicateOrder);
            }
        }
        match self.kind {
            InstanceKind::MultiHop => {
                let one_payment =
                    matches!(self.orders.as_slice(), [o] if matches!(o.order, Order::Payment(_)));
                if self.legs.len() != 1 || !one_payment {
                    return Err(SpecError::MultiHopShape);
                }
            }
            InstanceKind::CrossChain => {
                let all_swaps = self.orders.iter().all(|o| matches!(o.order, Order::Swap(_)));
                if self.legs.len() < 2 || self.orders.is_empty() || !all_swaps {
                    return Err(SpecError::SwapShape);
                }
            }
        }
        Ok(())
    }

    /// Checks every order's signature (one ECDSA recovery each). The hub runs this when it
    /// creates an instance. Node enclaves need not: an order's owner compares it with the
    /// order it issued itself, and an intermediary's consent does not depend on orders.
    pub fn verify_order_signatures(&self) -> Result<(), SpecError> {
        match self.orders.iter().find(|o| !o.is_authentic()) {
            Some(o) => Err(SpecError::UnsignedOrder(o.order.owner())),
            None => Ok(()),
        }
    }

    /// Every (chain, node) that holds a hop endpoint, i.e. every node PREPARE goes to.
    pub fn participants(&self) -> BTreeSet<Address> {
        self.legs.iter().flat_map(|l| l.hops.iter().flat_map(|h| [h.from, h.to])).collect()
    }

    pub fn digest(&self) -> Hash32 {
        keccak256_parts(&[b"teepay/instance/v1", &body_bytes(self)])
    }
}
