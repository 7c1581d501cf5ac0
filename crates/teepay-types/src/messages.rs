//! Round messages between the hub enclave and node enclaves, batched: the hub sends each
//! node one batch of items (many instances) under one authenticator over their digest, and
//! the node answers with one batch of items under one authenticator (DESIGN §6 "Batching").

use crate::channel::{ChannelState, Outcome};
use crate::crypto::{
    PublicKeyBytes, Signature, SigningKey, keccak256, keccak256_parts, recover_signer, session_mac,
};
use crate::encoding::body_bytes;
use crate::ids::{Address, ChainId, Hash32, InstanceId};
use crate::instance::InstanceSpec;
use borsh::{BorshDeserialize, BorshSerialize};

/// A hub → node round message for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub enum HubItem {
    /// Round 1: lock funds. Carries the whole instance and its signed orders.
    Prepare(InstanceSpec),
    /// Round 2: every node is PREPARED; `prepared_acks` is the digest of all their acks.
    /// `peer_acks` carries those acks themselves, each signed by its node, when the
    /// instance asks for them ([`InstanceSpec::peer_acks`]); empty otherwise.
    Commit { instance: InstanceId, prepared_acks: Hash32, peer_acks: Vec<PeerAck> },
    /// Round 3: every node is COMMITTED; apply the transfer. For a swap, `certificate` is
    /// the hub identity's signature of the decision ([`crate::DecisionCertificate`]), which
    /// nodes keep so that any of them can settle every chain without the hub (DESIGN §10).
    Confirm { instance: InstanceId, certificate: Option<Signature> },
    /// The instance is cancelled before it could apply; release reservations. A swap's
    /// carries its decision certificate, as CONFIRM does.
    Refund { instance: InstanceId, certificate: Option<Signature> },
    /// An on-chain eject fixed the instance's outcome; follow it on every other channel.
    Resolve { instance: InstanceId, outcome: Outcome },
}

impl HubItem {
    pub fn instance(&self) -> InstanceId {
        match self {
            HubItem::Prepare(spec) => spec.id,
            HubItem::Commit { instance, .. }
            | HubItem::Confirm { instance, .. }
            | HubItem::Refund { instance, .. }
            | HubItem::Resolve { instance, .. } => *instance,
        }
    }
}

/// Why a node refused an authentic PREPARE. Signed (inside the node's batch), so the hub
/// can refund at once instead of waiting for a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub enum NackReason {
    InsufficientFunds,
    FeeBelowPolicy,
    MissingOrder,
    OrderTermsMismatch,
    OrderExpired,
    OrderAlreadyUsed,
    UnknownChannel,
    ChannelClosed,
    DeadlinePassed,
    NotAParticipant,
    MalformedInstance,
    Overflow,
    /// This node's policy asks every instance to carry peer acks, and this one does not.
    PeerAcksRequired,
    /// A channel of this node already carries [`crate::MAX_LOCKS_PER_CHANNEL`] locks: one
    /// more would make its close too large for a block.
    TooManyLocks,
    /// The payment names an invoice this payee's enclave never issued.
    InvoiceUnknown,
    /// The invoice is already paid, being paid by another instance, or cancelled.
    InvoiceNotOpen,
    InvoiceExpired,
    /// The payment is on another chain or asset than the invoice, or pays less than it asks.
    InvoiceMismatch,
    /// A channel of the route holds another asset than the payment moves.
    WrongAsset,
}

/// A node → hub answer for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub enum NodeItem {
    /// Locked; carries this node's state of every channel it holds in the instance, each
    /// with only this instance's lock.
    Prepared {
        instance: InstanceId,
        states: Vec<ChannelState>,
        /// The node's own ECDSA signature over [`prepared_digest`], present iff the
        /// instance asks for peer acks: the hub forwards it with COMMIT, so every other
        /// participant can check that this node really locked (the batch authenticator
        /// cannot serve: a MAC convinces only the hub, a batch signature needs the batch).
        signature: Option<Signature>,
    },
    Nack {
        instance: InstanceId,
        reason: NackReason,
    },
    Committed {
        instance: InstanceId,
    },
    /// The instance ended at this node with `outcome` (answer to CONFIRM/REFUND/RESOLVE).
    Finished {
        instance: InstanceId,
        outcome: Outcome,
    },
}

impl NodeItem {
    pub fn instance(&self) -> InstanceId {
        match self {
            NodeItem::Prepared { instance, .. }
            | NodeItem::Nack { instance, .. }
            | NodeItem::Committed { instance }
            | NodeItem::Finished { instance, .. } => *instance,
        }
    }
}

/// What a node signs when it PREPAREs an instance that asks for peer acks: its state of
/// every channel it holds in the instance, bound to the hub, the node, the instance and the
/// instance's spec (the leaf hash of its PREPARE item, which every participant computes).
pub fn prepared_digest(
    hub: Address,
    node: Address,
    instance: InstanceId,
    spec: &Hash32,
    states: &[ChannelState],
) -> Hash32 {
    keccak256_parts(&[b"teepay/prepared/v2", &hub.0, &node.0, &instance.0, spec, &body_bytes(&states)])
}

/// The digest COMMIT carries: the leaf hash of every participant's PREPARED answer, in
/// participant order (ascending address, as [`InstanceSpec::participants`] lists them).
pub fn prepared_acks_digest<'a>(leaves: impl IntoIterator<Item = &'a Hash32>) -> Hash32 {
    let mut hasher = alloy_primitives::Keccak256::new();
    for leaf in leaves {
        hasher.update(leaf);
    }
    hasher.finalize().0
}

/// One participant's PREPARED ack as forwarded with COMMIT (`--verify-peer-acks`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct PeerAck {
    pub node: Address,
    pub states: Vec<ChannelState>,
    pub signature: Signature,
}

impl PeerAck {
    /// The node's answer this ack was taken from (its leaf hash is what COMMIT's
    /// `prepared_acks` digest covers).
    pub fn item(&self, instance: InstanceId) -> NodeItem {
        NodeItem::Prepared { instance, states: self.states.clone(), signature: Some(self.signature) }
    }
    /// True iff every state carries `instance`'s lock in PREPARED (what an honest enclave
    /// reports after locking) and `node` signed them for `instance` under `hub`. The hub
    /// checks this before it counts the ack, the other participants before they commit.
    /// `spec` is the leaf hash of the instance's PREPARE item: an ack binds the very spec
    /// its signer locked for, so an ack for another spec under the same id counts for nothing.
    pub fn is_valid(&self, hub: Address, instance: InstanceId, spec: &Hash32) -> bool {
        let locked = !self.states.is_empty()
            && self.states.iter().all(|s| {
                s.locks.iter().any(|l| l.instance == instance && l.phase == crate::channel::Phase::Prepared)
            });
        let digest = prepared_digest(hub, self.node, instance, spec, &self.states);
        locked && matches!(recover_signer(&digest, &self.signature), Ok(a) if a == self.node)
    }
}

/// Leaf hash of one batch item; tagged so a leaf can never be confused with an inner node.
pub fn leaf_hash<T: BorshSerialize>(item: &T) -> Hash32 {
    keccak256_parts(&[b"teepay/leaf/v1", &body_bytes(item)])
}

/// One batch of round messages from the hub to one node.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct HubBatch {
    pub hub: Address,
    /// The recipient: a batch signed for one node is worthless to any other.
    pub node: Address,
    pub items: Vec<HubItem>,
}

/// How a batch (or a payment order) is authenticated: an ECDSA signature anyone can verify,
/// or a MAC under the session key its two enclaves share (DESIGN §6 fast path: ~100x
/// cheaper, but only the two ends can check it). The session key is derived at attestation
/// (ECDH between the keys the two quotes carry), so even the first exchange can be MAC'd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub enum Auth {
    Signature(Signature),
    Mac(Hash32),
}

impl Auth {
    /// The raw authenticator bytes (tests corrupt them to check rejection).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Auth::Signature(s) => &mut s.0,
            Auth::Mac(m) => m,
        }
    }
}

/// Whether the hub authenticates round messages with session MACs once a session exists
/// (the fast path) or signs every one (every round message verifiable by a third party).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, BorshSerialize, BorshDeserialize)]
pub enum RoundAuth {
    #[default]
    SessionMacs,
    Signatures,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedHubBatch {
    pub batch: HubBatch,
    pub auth: Auth,
}

/// A batch's digest: its direction tag, both ends, and every item's leaf hash in order, in
/// one flat hash (leaves are fixed-size, so the concatenation is unambiguous). One
/// authenticator over it covers every item. A flat hash, not a Merkle root: no single item
/// is ever proven on its own, and a root cost one more hash per item at both ends.
fn batch_digest(
    tag: &[u8],
    sender: Address,
    recipient: Address,
    leaves: impl Iterator<Item = Hash32>,
) -> Hash32 {
    let mut hasher = alloy_primitives::Keccak256::new();
    hasher.update(tag);
    hasher.update(sender.0);
    hasher.update(recipient.0);
    for leaf in leaves {
        hasher.update(leaf);
    }
    hasher.finalize().0
}

impl HubBatch {
    pub fn digest(&self) -> Hash32 {
        self.digest_with(leaf_hash)
    }
    /// The digest with each item's leaf hash from `leaf`, which must return
    /// `leaf_hash(item)`: the hub reuses one PREPARE's hash for all its participants, and a
    /// node keeps each hash as the identity of what it acked.
    pub fn digest_with(&self, leaf: impl FnMut(&HubItem) -> Hash32) -> Hash32 {
        batch_digest(b"teepay/hub-batch/v2", self.hub, self.node, self.items.iter().map(leaf))
    }
    pub fn sign(self, key: &SigningKey) -> SignedHubBatch {
        let digest = self.digest();
        self.sign_digest(key, &digest)
    }
    pub fn mac(self, session: &Hash32) -> SignedHubBatch {
        let digest = self.digest();
        self.mac_digest(session, &digest)
    }
    /// Signs with `digest`, which must be this batch's digest (computed by `digest_with`).
    pub fn sign_digest(self, key: &SigningKey, digest: &Hash32) -> SignedHubBatch {
        SignedHubBatch { batch: self, auth: Auth::Signature(key.sign_digest(digest)) }
    }
    /// MACs `digest`, which must be this batch's digest (computed by `digest_with`).
    pub fn mac_digest(self, session: &Hash32, digest: &Hash32) -> SignedHubBatch {
        SignedHubBatch { batch: self, auth: Auth::Mac(session_mac(session, digest)) }
    }
}

impl SignedHubBatch {
    /// True iff the batch carries a valid ECDSA signature by `hub` (a MAC never counts).
    pub fn is_signed_by(&self, hub: Address) -> bool {
        self.batch.hub == hub
            && matches!(self.auth, Auth::Signature(s) if matches!(recover_signer(&self.batch.digest(), &s), Ok(a) if a == hub))
    }
}

/// One batch of answers from a node to the hub.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct NodeAck {
    pub node: Address,
    pub hub: Address,
    pub items: Vec<NodeItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedNodeAck {
    pub ack: NodeAck,
    pub auth: Auth,
}

impl NodeAck {
    pub fn digest(&self) -> Hash32 {
        self.digest_with(leaf_hash)
    }
    /// The digest with each item's leaf hash from `leaf`, which must return
    /// `leaf_hash(item)`: the hub keeps a PREPARED answer's hash for COMMIT.
    pub fn digest_with(&self, leaf: impl FnMut(&NodeItem) -> Hash32) -> Hash32 {
        batch_digest(b"teepay/node-ack/v2", self.node, self.hub, self.items.iter().map(leaf))
    }
    pub fn sign(self, key: &SigningKey) -> SignedNodeAck {
        let signature = key.sign_digest(&self.digest());
        SignedNodeAck { ack: self, auth: Auth::Signature(signature) }
    }
    pub fn mac(self, session: &Hash32) -> SignedNodeAck {
        let tag = session_mac(session, &self.digest());
        SignedNodeAck { ack: self, auth: Auth::Mac(tag) }
    }
}

impl SignedNodeAck {
    /// True iff the ack carries a valid ECDSA signature by `node` (a MAC never counts).
    pub fn is_signed_by(&self, node: Address) -> bool {
        self.ack.node == node
            && matches!(self.auth, Auth::Signature(s) if matches!(recover_signer(&self.ack.digest(), &s), Ok(a) if a == node))
    }
}

/// A participant's signed request that the hub refund an instance (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct RefundRequest {
    pub node: Address,
    pub instance: InstanceId,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedRefundRequest {
    pub request: RefundRequest,
    pub signature: Signature,
}

impl RefundRequest {
    pub fn digest(&self) -> Hash32 {
        keccak256_parts(&[b"teepay/refund-request/v1", &body_bytes(self)])
    }
    pub fn sign(self, key: &SigningKey) -> SignedRefundRequest {
        let signature = key.sign_digest(&self.digest());
        SignedRefundRequest { request: self, signature }
    }
}

impl SignedRefundRequest {
    pub fn is_authentic(&self) -> bool {
        matches!(recover_signer(&self.request.digest(), &self.signature), Ok(a) if a == self.request.node)
    }
}

/// What an enclave reports about itself for attestation: its code measurement and key.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Report {
    pub measurement: Hash32,
    pub enclave: Address,
    pub chain: ChainId,
    /// The enclave's public key, whose address must be `enclave` (so the authority's
    /// signature over the address covers it too): the enclaves a hub's and a node's quotes
    /// introduce derive their session key from it at attestation, before any message. The
    /// contract ignores it.
    pub public_key: PublicKeyBytes,
}

/// A report signed by the attestation authority (a dev key in simulation mode).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Quote {
    pub report: Report,
    pub signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("quote is not signed by the attestation authority")]
    BadAuthoritySignature,
    #[error("enclave measurement is not allowed")]
    UnknownMeasurement,
    #[error("the report's public key is not the key of its enclave address")]
    KeyMismatch,
}

impl Report {
    /// The report of the enclave holding `key`.
    pub fn of(key: &SigningKey, measurement: Hash32, chain: ChainId) -> Self {
        Report { measurement, enclave: key.address(), chain, public_key: key.public_key() }
    }
    /// `keccak256(abi.encode(keccak256("teepay/quote/v1"), measurement, enclave, chainId))`:
    /// the digest `PaymentChannels.registerEnclave` recovers the authority from.
    pub fn digest(&self) -> Hash32 {
        let mut buf = [0u8; 128];
        buf[..32].copy_from_slice(&keccak256(b"teepay/quote/v1"));
        buf[32..64].copy_from_slice(&self.measurement);
        buf[76..96].copy_from_slice(&self.enclave.0);
        buf[120..128].copy_from_slice(&self.chain.0.to_be_bytes());
        keccak256(&buf)
    }
    /// What the attestation authority does (simulation: a dev key).
    pub fn attest(self, authority: &SigningKey) -> Quote {
        let signature = authority.sign_digest(&self.digest());
        Quote { report: self, signature }
    }
}

impl Quote {
    pub fn verify(&self, authority: Address, allowed_measurements: &[Hash32]) -> Result<(), QuoteError> {
        match recover_signer(&self.report.digest(), &self.signature) {
            Ok(a) if a == authority => {}
            _ => return Err(QuoteError::BadAuthoritySignature),
        }
        if !allowed_measurements.contains(&self.report.measurement) {
            return Err(QuoteError::UnknownMeasurement);
        }
        if self.report.public_key.address() != Ok(self.report.enclave) {
            return Err(QuoteError::KeyMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_digest_depends_on_every_item_its_order_and_both_ends() {
        let item = |i: u8| HubItem::Confirm { instance: InstanceId([i; 32]), certificate: None };
        let batch =
            HubBatch { hub: Address([1; 20]), node: Address([2; 20]), items: (0..5).map(item).collect() };
        let digest = batch.digest();
        for i in 0..batch.items.len() {
            let mut changed = batch.clone();
            changed.items[i] = item(100 + i as u8);
            assert_ne!(changed.digest(), digest);
        }
        let mut swapped = batch.clone();
        swapped.items.swap(0, 1);
        assert_ne!(swapped.digest(), digest);
        let mut shorter = batch.clone();
        shorter.items.pop();
        assert_ne!(shorter.digest(), digest);
        let mut readdressed = batch.clone();
        readdressed.node = Address([3; 20]);
        assert_ne!(readdressed.digest(), digest);
        // An ack with the same ends and no items never collides with a batch: tags differ.
        let empty_ack = NodeAck { node: Address([1; 20]), hub: Address([2; 20]), items: vec![] };
        let empty_batch = HubBatch { hub: Address([1; 20]), node: Address([2; 20]), items: vec![] };
        assert_ne!(empty_ack.digest(), empty_batch.digest());
    }

    #[test]
    fn batch_signature_binds_recipient() {
        let hub = SigningKey::from_entropy([1; 32]).unwrap();
        let batch = HubBatch {
            hub: hub.address(),
            node: Address([2; 20]),
            items: vec![HubItem::Confirm { instance: InstanceId([3; 32]), certificate: None }],
        };
        let mut signed = batch.sign(&hub);
        assert!(signed.is_signed_by(hub.address()));
        signed.batch.node = Address([4; 20]);
        assert!(!signed.is_signed_by(hub.address()));
    }
}
