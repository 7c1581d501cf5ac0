use teepay_types::{
    Address, Amount, ChainId, ChannelId, CryptoError, InstanceId, NackReason, QuoteError, SealError,
};

/// Every way the node enclave refuses a request. A refused request changes no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnclaveError {
    #[error("no attested hub is configured; round messages are refused")]
    HubNotAttested,
    #[error("batch is not authenticated by the attested hub")]
    BadHubSignature,
    #[error("batch carries a session MAC, but this enclave has no session with the hub (no hub attested)")]
    NoHubSession,
    #[error("batch is addressed to another node")]
    WrongRecipient,
    #[error("attestation quote rejected: {0}")]
    Quote(#[from] QuoteError),
    #[error("unknown channel {0:?}")]
    UnknownChannel(ChannelId),
    #[error("channel {0:?} already exists")]
    ChannelExists(ChannelId),
    #[error(
        "channel id {reported:?} is not the contract's derivation {derived:?} of the reported chain, contract, parties and nonce"
    )]
    ChannelIdMismatch { reported: ChannelId, derived: ChannelId },
    #[error("reported deposits are below what this enclave has already seen (deposits never decrease)")]
    DepositDecreased,
    #[error("channel {0:?} is closed: a closing or eject state was signed, or it settled on-chain")]
    ChannelClosed(ChannelId),
    #[error(
        "channel {channel:?} carries a swap lock: it closes once the swap's decision (or its certificate) reaches this node, or after the lock's deadline {until} (ms)"
    )]
    SwapLocked { channel: ChannelId, until: u64 },
    #[error("channel {0:?} carries no swap lock to claim REVERT for")]
    NoSwapLock(ChannelId),
    #[error("the hub's decision on swap {0:?} carries no certificate")]
    MissingCertificate(InstanceId),
    #[error("the decision certificate of {0:?} is not signed by the attested hub")]
    BadCertificate(InstanceId),
    #[error("no decision certificate of {0:?} is kept here")]
    NoCertificate(InstanceId),
    #[error("instance {0:?} is not a swap: only swaps are decided by certificate")]
    NotASwap(InstanceId),
    #[error("unknown instance {0:?}")]
    UnknownInstance(InstanceId),
    #[error("instance {0:?} was already seen with different contents (replay)")]
    InstanceReplayed(InstanceId),
    #[error("instance {0:?} was ejected on-chain by this enclave; its rounds are refused")]
    InstanceEjected(InstanceId),
    #[error("instance {0:?} has already ended")]
    InstanceFinished(InstanceId),
    #[error(
        "RESOLVE of instance {0:?} before this node's host reported the contract's outcome for it (retransmitted until it has)"
    )]
    OutcomeNotOnChain(InstanceId),
    #[error("instance {0:?} already ended with the other outcome")]
    ConflictingOutcome(InstanceId),
    #[error("COMMIT of instance {0:?} lacks the signed PREPARED ack of participant {1:?}")]
    MissingPeerAck(InstanceId, Address),
    #[error(
        "COMMIT of instance {0:?} forwards a PREPARED ack of participant {1:?} that it did not sign, or that shows no lock of the instance"
    )]
    ForgedPeerAck(InstanceId, Address),
    #[error("COMMIT of instance {0:?} forwards acks that its digest of PREPARED acks does not cover")]
    PeerAcksMismatch(InstanceId),
    #[error("CONFIRM for instance {0:?}, which this enclave never committed")]
    NotCommitted(InstanceId),
    #[error("REFUND of multi-hop instance {0:?} after COMMIT is forbidden (DESIGN §7)")]
    RefundAfterCommit(InstanceId),
    #[error("RESOLVE of cross-chain instance {0:?}: swaps never settle on-chain while locked")]
    ResolveOnSwap(InstanceId),
    #[error("PREPARE refused: {0:?}")]
    Refused(NackReason),
    #[error("invalid order: {0}")]
    InvalidOrder(&'static str),
    #[error("no PaymentChannels contract is configured for chain {0:?}")]
    UnknownChain(ChainId),
    #[error("channel belongs to contract {got:?}, not the configured {expected:?}")]
    WrongContract { expected: Address, got: Address },
    #[error("transaction may spend up to {requested:?} on gas, above the enclave's limit {limit:?}")]
    FeeTooHigh { requested: Amount, limit: Amount },
    #[error("a close with this channel's locks needs a gas limit of at least {needed}, got {got}")]
    GasTooLow { needed: u64, got: u64 },
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("invoice: {0}")]
    Invoice(#[from] teepay_types::InvoiceError),
    #[error("invalid invoice request: {0}")]
    InvalidInvoice(&'static str),
    #[error("no invoice {} is kept here", hex(.0))]
    UnknownInvoice(teepay_types::Hash32),
    #[error("invoice {} has expired", hex(.0))]
    InvoiceExpired(teepay_types::Hash32),
    #[error("invoice {} is already paid", hex(.0))]
    InvoicePaid(teepay_types::Hash32),
    #[error("invoice {} is not paid", hex(.0))]
    InvoiceNotPaid(teepay_types::Hash32),
    #[error("invoice {} is being paid by instance {}", hex(.0), .1)]
    InvoicePending(teepay_types::Hash32, InstanceId),
    #[error("a payment of invoice {} by this node is already under way", hex(.0))]
    InvoiceInFlight(teepay_types::Hash32),
    #[error("{0} invoices are kept already: cancel some or wait until they expire")]
    TooManyInvoices(usize),
    #[error("the receipt is not the payee's for a payment of this enclave")]
    ReceiptMismatch,
    #[error("arithmetic overflow")]
    Overflow,
    #[error("sealed state: {0}")]
    Seal(#[from] SealError),
    #[error("sealed log delta {index} does not replay on the state before it (not this enclave's history)")]
    ReplayDiverged { index: usize },
    #[error("key: {0}")]
    Crypto(#[from] CryptoError),
}

/// An invoice id as people read it (`0x…`).
fn hex(id: &teepay_types::Hash32) -> String {
    format!("0x{}", teepay_types::ids::to_hex(id))
}
