//! teepay-types: the vocabulary shared by every teepay crate — ids, amounts, channel
//! states and their EIP-712 digests, instances and the orders that authorize them, round
//! messages, canonical encoding, signatures, batch digests and sealing.
//!
//! Pure: no I/O, no clock, no randomness (time and entropy are always passed in).

pub mod asset;
pub mod channel;
pub mod crypto;
pub mod decision;
pub mod encoding;
pub mod ids;
pub mod instance;
pub mod invoice;
pub mod messages;
pub mod rng;
pub mod seal;
pub mod tx;
pub mod units;

pub use asset::Asset;
pub use channel::{
    ChannelState, FeePolicy, InstanceKind, LockState, MAX_LOCKS_PER_CHANNEL, Outcome, Phase,
    SignedChannelState, derive_channel_id, eip712_domain,
};
pub use crypto::{
    CryptoError, LinkRole, PublicKeyBytes, Signature, SigningKey, keccak256, keccak256_parts, link_digest,
    macs_equal, recover_signer, session_mac, verify_signer,
};
pub use decision::{DecisionCertificate, decision_digest};
pub use encoding::{DecodeError, WIRE_VERSION, decode, encode};
pub use ids::{Address, Amount, ChainId, ChannelId, Hash32, InstanceId};
pub use instance::{
    Hop, InstanceSpec, Leg, MAX_SWAP_PARTIES, MAX_TRANSFERS_PER_INTENT, Order, PaymentRequest, SignedOrder,
    SpecError, SwapIntent, Transfer, instance_id,
};
pub use invoice::{Invoice, InvoiceError, PaymentReceipt, SignedInvoice};
pub use messages::{
    Auth, HubBatch, HubItem, NackReason, NodeAck, NodeItem, PeerAck, Quote, QuoteError, RefundRequest,
    Report, RoundAuth, SignedHubBatch, SignedNodeAck, SignedRefundRequest, leaf_hash, prepared_acks_digest,
    prepared_digest,
};
pub use seal::{
    LogBudget, OpenedLog, Platform, SealError, SealKind, SealLimits, SealedLog, SimPlatform, blob_header,
    seal, seal_delta, seal_value, unseal, unseal_log, unseal_value,
};
pub use tx::{
    CLOSE_BASE_GAS, CLOSE_GAS_PER_LOCK, Eip1559Tx, GasParams, RECORD_DECISION_GAS, SignedTx,
    abi_channel_state, approve_call, bindings, claim_revert_call, close_channel_call, close_gas,
    deposit_call, open_channel_call, record_decision_call, register_enclave_call, withdraw_owed_call,
};
