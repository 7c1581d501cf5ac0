use teepay_types::{Address, InstanceId, QuoteError, SealError, SpecError};

/// Every way the hub enclave refuses an input. A refused input changes no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("attestation quote rejected: {0}")]
    Quote(#[from] QuoteError),
    #[error("node {0:?} is not an attested enclave")]
    UnattestedNode(Address),
    #[error("malformed instance: {0}")]
    Spec(#[from] SpecError),
    #[error("the source of a multi-hop payment must be the payer of its request")]
    OrderNotFromSource,
    #[error(
        "order {0:02x?} expires more than a day from now (the hub remembers used orders until they expire)"
    )]
    OrderLivesTooLong(teepay_types::Hash32),
    #[error("order {0:02x?} was already carried by an instance: an order starts at most one")]
    OrderReused(teepay_types::Hash32),
    #[error("ack is not authenticated by node {0:?}")]
    BadSignature(Address),
    #[error(
        "PREPARED ack of node {0:?} lacks a valid signature of its own, or shows no lock of the instance (the instance forwards every PREPARED ack to the other participants)"
    )]
    BadPeerAck(Address),
    #[error("ack from node {0:?} carries a session MAC, but the hub has no session with it")]
    NoSession(Address),
    #[error("message is addressed to another hub")]
    WrongHub,
    #[error("unknown instance {0:?}")]
    UnknownInstance(InstanceId),
    #[error("node {0:?} is not a participant of the instance")]
    NotParticipant(Address),
    #[error("REFUND of multi-hop instance {0:?} after COMMIT is forbidden (DESIGN §7)")]
    RefundAfterCommit(InstanceId),
    #[error("instance {0:?} is already decided")]
    AlreadyDecided(InstanceId),
    #[error(
        "reported outcome contradicts what instance {0:?} allows (an APPLY needs a COMMIT; after all COMMITTED acks only APPLY is possible)"
    )]
    InconsistentOutcome(InstanceId),
    #[error("cross-chain instance {0:?} cannot be resolved on-chain")]
    ResolveOnSwap(InstanceId),
    #[error("node reported outcome {1:?} for instance {0:?}, contradicting the hub's decision")]
    ConflictingFinish(InstanceId, teepay_types::Outcome),
    #[error("sealed state: {0}")]
    Seal(#[from] SealError),
    #[error("sealed log delta {index} does not replay on the state before it (not this enclave's history)")]
    ReplayDiverged { index: usize },
    #[error("replicated-log data does not decode")]
    MalformedReplicaData,
    #[error(
        "replicated-log data is not from a replica of this group (fails the group key) or does not match what it claims"
    )]
    ForgedReplicaData,
    #[error("replicated-log entry {got} out of order: the next one here is {expected}")]
    EntryOutOfOrder { expected: u64, got: u64 },
    #[error("replicated-log entry {0} does not follow the entry this state ends with")]
    EntryNotChained(u64),
    #[error("a follower's enclave took inputs of its own; it cannot apply the leader's entries")]
    FollowerHasOwnInputs,
    #[error("the state has inputs not yet flushed into an entry: no group snapshot now")]
    NotAtEntryBoundary,
    #[error("key: {0}")]
    Crypto(#[from] teepay_types::CryptoError),
    #[error("this hub enclave already founded or joined a group")]
    GroupFounded,
    #[error("this hub enclave is not in a group")]
    NotAGroup,
    #[error("membership version {got} is not above the current {current}")]
    StaleMembership { current: u64, got: u64 },
    #[error("membership change not signed by the group's governance key, or empty")]
    BadMembership,
}
