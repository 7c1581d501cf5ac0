//! Instances (payments and swaps), the orders that authorize them, and the structural
//! rules every enclave checks before looking at its own part.

use crate::asset::Asset;
use crate::channel::InstanceKind;
use crate::crypto::{SigningKey, keccak256_parts, macs_equal, recover_signer, session_mac};
use crate::encoding::body_bytes;
use crate::ids::{Address, Amount, ChainId, ChannelId, Hash32, InstanceId};
use crate::messages::Auth;
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
    /// What every hop moves: each node refuses a leg over a channel holding anything else,
    /// so an intermediary is never paid in one asset to forward another.
    pub asset: Asset,
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
    /// What the payee receives and the route moves.
    pub asset: Asset,
    pub payer: Address,
    pub payee: Address,
    /// What the payee receives.
    pub amount: Amount,
    /// The most the payer accepts to pay intermediaries on top of `amount`.
    pub max_fee: Amount,
    /// Unique per payer; the payer's enclave pays each request at most once.
    pub nonce: u64,
    pub expires_at: u64,
    /// The id of the payee's invoice this pays (`crate::invoice`), checked by the payer's
    /// enclave against the payee's signature; the payee's enclave then locks only for its
    /// own open invoice. `None`: a push payment the payee did not ask for (keysend).
    pub invoice: Option<Hash32>,
}

/// One side of a swap intent: value moving on one chain to or from a counterparty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Transfer {
    pub chain: ChainId,
    /// A swap's legs may each move a different asset (a token on one chain for ether on
    /// another).
    pub asset: Asset,
    pub counterparty: Address,
    pub amount: Amount,
    /// For gives: the most paid to intermediaries on top of `amount` (ignored for receives).
    pub max_fee: Amount,
}

/// Most parties (intents) one swap may have: the hub checks each intent's signature and
/// routes each give, so a request's cost must be bounded whoever sends it.
pub const MAX_SWAP_PARTIES: usize = 16;
/// Most transfers (gives plus receives) one intent may list.
pub const MAX_TRANSFERS_PER_INTENT: usize = 8;

/// A swap party's intent: it gives these transfers only if it receives those, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct SwapIntent {
    pub party: Address,
    pub gives: Vec<Transfer>,
    pub receives: Vec<Transfer>,
    pub nonce: u64,
    pub expires_at: u64,
}

impl SwapIntent {
    /// True when the intent lists no more transfers than [`MAX_TRANSFERS_PER_INTENT`].
    pub fn within_caps(&self) -> bool {
        self.gives.len().saturating_add(self.receives.len()) <= MAX_TRANSFERS_PER_INTENT
    }
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
        SignedOrder { order: self, auth: Auth::Signature(signature) }
    }
    /// Authenticates a payment request for the hub alone, under the payer↔hub session key
    /// (the fast path: only the hub enclave checks a payment order, and the payer's enclave
    /// compares the order in PREPARE with the one it issued, never with its authenticator).
    pub fn mac(self, session: &Hash32) -> SignedOrder {
        let tag = session_mac(session, &self.digest());
        SignedOrder { order: self, auth: Auth::Mac(tag) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct SignedOrder {
    pub order: Order,
    pub auth: Auth,
}

impl SignedOrder {
    /// True iff the order is signed by its own owner's enclave, or is a payment request
    /// MAC'd under `session`, the key the verifier shares with the owner (`None`: no
    /// session, so only a signature counts). A swap intent must be signed: other parties
    /// read it on the board and cannot check a MAC.
    pub fn is_authentic(&self, session: Option<&Hash32>) -> bool {
        match (&self.auth, &self.order, session) {
            (Auth::Signature(s), _, _) => {
                matches!(recover_signer(&self.order.digest(), s), Ok(a) if a == self.order.owner())
            }
            (Auth::Mac(tag), Order::Payment(_), Some(key)) => {
                macs_equal(tag, &session_mac(key, &self.order.digest()))
            }
            (Auth::Mac(_), _, _) => false,
        }
    }
    /// True iff the order carries a valid signature by its owner (a MAC never counts).
    pub fn is_signed(&self) -> bool {
        self.is_authentic(None)
    }
}

/// The id of the hub's `seq`-th instance: unique per hub, and checkable by every node.
pub fn instance_id(hub: Address, seq: u64) -> InstanceId {
    InstanceId(crate::crypto::keccak256_parts(&[b"teepay/instance-id/v1", &hub.0, &seq.to_le_bytes()]))
}

/// Everything the hub enclave sends in PREPARE: the instance's routes and the signed orders
/// that authorize them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct InstanceSpec {
    /// `instance_id(hub, seq)`: nodes recompute it, so the id's place in the hub's sequence
    /// is known and finished records can be pruned below a replay floor.
    pub id: InstanceId,
    /// The hub enclave's instance counter when it created the instance.
    pub seq: u64,
    pub kind: InstanceKind,
    pub legs: Vec<Leg>,
    pub orders: Vec<SignedOrder>,
    /// Hub-clock time after which nodes refuse to PREPARE and the hub may refund. The hub
    /// never CONFIRMs a swap after it.
    pub deadline: u64,
    /// A swap's locks' last-resort deadline (hub clock, ms; 0 for a multi-hop payment): after
    /// it a party may claim REVERT on-chain, which the hub's CONFIRM certificate overrides
    /// within the contract's challenge window (DESIGN §10). Later than `deadline` by the
    /// hub's configured margin, so that no CONFIRM is ever made close to it.
    pub lock_deadline: u64,
    /// Every participant signs its PREPARED ack on its own and COMMIT carries all of them,
    /// so a node commits only on evidence that every other participant locked, not on the
    /// hub enclave's word alone (`--verify-peer-acks`; costs one ECDSA signature per
    /// participant, and one recovery per participant at the hub and per other participant at
    /// each node).
    pub peer_acks: bool,
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
    #[error("leg {0} names a token at the zero address (ether under another name)")]
    MalformedAsset(usize),
    #[error("a multi-hop payment has exactly one leg and one payment request")]
    MultiHopShape,
    #[error("a cross-chain swap needs at least two legs and only swap intents")]
    SwapShape,
    #[error("a swap's lock deadline must come after its deadline; a payment has none")]
    LockDeadline,
    #[error("two orders of one owner in one instance")]
    DuplicateOrder,
    #[error("order of {0:?} is not authenticated by its owner (bad signature, or a MAC without a session)")]
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
            if !leg.asset.is_well_formed() {
                return Err(SpecError::MalformedAsset(li));
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
                if self.lock_deadline != 0 {
                    return Err(SpecError::LockDeadline);
                }
            }
            InstanceKind::CrossChain => {
                let all_swaps = self.orders.iter().all(|o| matches!(o.order, Order::Swap(_)));
                if self.legs.len() < 2 || self.orders.is_empty() || !all_swaps {
                    return Err(SpecError::SwapShape);
                }
                if self.lock_deadline <= self.deadline {
                    return Err(SpecError::LockDeadline);
                }
            }
        }
        Ok(())
    }

    /// Checks every order's authenticator: one ECDSA recovery per signed order, one keccak
    /// per MAC'd payment order (`session` gives the verifier's session key with an owner).
    /// The hub runs this when it creates an instance. Node enclaves need not: an order's
    /// owner compares it with the order it issued itself, and an intermediary's consent does
    /// not depend on orders.
    pub fn verify_orders<'a>(
        &self,
        session: impl Fn(&Address) -> Option<&'a Hash32>,
    ) -> Result<(), SpecError> {
        match self.orders.iter().find(|o| !o.is_authentic(session(&o.order.owner()))) {
            Some(o) => Err(SpecError::UnsignedOrder(o.order.owner())),
            None => Ok(()),
        }
    }

    /// Every (chain, node) that holds a hop endpoint, i.e. every node PREPARE goes to.
    pub fn participants(&self) -> BTreeSet<Address> {
        self.legs.iter().flat_map(|l| l.hops.iter().flat_map(|h| [h.from, h.to])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(payer: Address) -> Order {
        Order::Payment(PaymentRequest {
            chain: ChainId(1),
            asset: Asset::Native,
            payer,
            payee: Address([9; 20]),
            amount: Amount(10),
            max_fee: Amount(1),
            nonce: 3,
            expires_at: 100,
            invoice: None,
        })
    }

    #[test]
    fn a_mac_counts_only_for_a_payment_under_the_owners_session() {
        let key = SigningKey::from_entropy([4; 32]).unwrap();
        let session = [7u8; 32];
        let macd = payment(key.address()).mac(&session);
        assert!(macd.is_authentic(Some(&session)));
        assert!(!macd.is_authentic(Some(&[8; 32])), "another session's key");
        assert!(!macd.is_authentic(None), "no session");
        assert!(!macd.is_signed());
        let mut tampered = macd.clone();
        if let Order::Payment(r) = &mut tampered.order {
            r.amount = Amount(11);
        }
        assert!(!tampered.is_authentic(Some(&session)));
        let mut other_asset = macd.clone();
        if let Order::Payment(r) = &mut other_asset.order {
            r.asset = Asset::Erc20(Address([5; 20]));
        }
        assert!(!other_asset.is_authentic(Some(&session)), "the asset is part of what the payer authorized");
        let mut bad_tag = macd;
        bad_tag.auth.bytes_mut()[31] ^= 1;
        assert!(!bad_tag.is_authentic(Some(&session)));

        // A swap intent goes on a public board: only a signature counts, never a MAC.
        let intent = Order::Swap(SwapIntent {
            party: key.address(),
            gives: Vec::new(),
            receives: Vec::new(),
            nonce: 1,
            expires_at: 100,
        });
        assert!(!intent.clone().mac(&session).is_authentic(Some(&session)));
        assert!(intent.sign(&key).is_authentic(Some(&session)));

        // A signature is checked against the owner, whatever session is offered.
        assert!(payment(key.address()).sign(&key).is_signed());
        assert!(!payment(Address([1; 20])).sign(&key).is_authentic(Some(&session)));
    }
}
