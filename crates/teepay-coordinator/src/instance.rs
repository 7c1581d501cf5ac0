//! One instance's state machine in the hub enclave (DESIGN §5):
//! NONE → PREPARED → COMMITTED, or → REFUND_AUTHORIZED, or → RESOLVED(outcome) from chain.

use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::{BTreeMap, BTreeSet};
use teepay_types::{Address, Hash32, HubItem, InstanceSpec, NackReason, Outcome, PeerAck, Signature};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub enum HubPhase {
    /// PREPARE sent; collecting PREPARED acks. Refund is allowed for both kinds.
    None,
    /// Every node PREPARED; COMMIT sent. A multi-hop instance can no longer be refunded.
    Prepared,
    /// Every node COMMITTED; CONFIRM sent. The outcome is APPLY.
    Committed,
    /// REFUND sent. The outcome is REVERT.
    RefundAuthorized,
    /// An on-chain eject fixed the outcome; RESOLVE sent.
    Resolved(Outcome),
}

impl HubPhase {
    /// The outcome once decided; `None` while the instance can still go either way.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            HubPhase::Committed => Some(Outcome::Apply),
            HubPhase::RefundAuthorized => Some(Outcome::Revert),
            HubPhase::Resolved(o) => Some(o),
            HubPhase::None | HubPhase::Prepared => None,
        }
    }
}

/// Why an instance was refunded, for the status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub enum RefundReason {
    Nack(Address, NackReason),
    Timeout,
    Requested(Address),
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct HubInstance {
    pub spec: InstanceSpec,
    /// Leaf hash of the PREPARE item (the spec's identity, which peer acks bind).
    pub prepare_hash: Hash32,
    pub phase: HubPhase,
    pub participants: Vec<Address>,
    /// Leaf hash of each participant's PREPARED ack (what COMMIT's digest covers).
    pub prepared: BTreeMap<Address, Hash32>,
    /// Each participant's own signed PREPARED ack, when the spec asks for peer acks: what
    /// COMMIT forwards.
    pub peer_acks: BTreeMap<Address, PeerAck>,
    pub committed: BTreeSet<Address>,
    /// Participants that acknowledged the final outcome.
    pub finished: BTreeSet<Address>,
    pub refund_reason: Option<RefundReason>,
    /// A swap's decision certificate (the hub identity's signature over its outcome), made
    /// once when it is decided and sent with every CONFIRM/REFUND of it (DESIGN §10).
    pub certificate: Option<Signature>,
    pub created_at: u64,
    pub last_sent: u64,
}

impl HubInstance {
    /// True once every participant acknowledged the final outcome: nothing left to send.
    pub fn is_complete(&self) -> bool {
        self.phase.outcome().is_some() && self.finished.len() == self.participants.len()
    }

    /// The digest COMMIT carries: all PREPARED acks in participant order.
    pub fn prepared_acks_digest(&self) -> Hash32 {
        teepay_types::prepared_acks_digest(self.participants.iter().map(|p| &self.prepared[p]))
    }

    /// The message of the current phase, and the participants that still owe its answer.
    pub fn pending(&self) -> (HubItem, Vec<Address>) {
        let id = self.spec.id;
        let (item, done): (HubItem, &dyn Fn(&Address) -> bool) = match self.phase {
            HubPhase::None => (HubItem::Prepare(self.spec.clone()), &|a| self.prepared.contains_key(a)),
            HubPhase::Prepared => {
                let peer_acks =
                    self.participants.iter().filter_map(|p| self.peer_acks.get(p).cloned()).collect();
                let commit =
                    HubItem::Commit { instance: id, prepared_acks: self.prepared_acks_digest(), peer_acks };
                (commit, &|a| self.committed.contains(a))
            }
            HubPhase::Committed => (HubItem::Confirm { instance: id, certificate: self.certificate }, &|a| {
                self.finished.contains(a)
            }),
            HubPhase::RefundAuthorized => {
                (HubItem::Refund { instance: id, certificate: self.certificate }, &|a| {
                    self.finished.contains(a)
                })
            }
            HubPhase::Resolved(outcome) => {
                (HubItem::Resolve { instance: id, outcome }, &|a| self.finished.contains(a))
            }
        };
        let missing = self.participants.iter().filter(|a| !done(a)).copied().collect();
        (item, missing)
    }
}
