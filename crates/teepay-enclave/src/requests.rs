//! What a host can ask of the node enclave ([`Request`]) and what it answers ([`Response`]).

use crate::{EnclaveError, FeePolicy, NewChannel};
use borsh::{BorshDeserialize, BorshSerialize};
use teepay_types::{
    Address, Amount, Asset, ChainId, ChannelId, GasParams, Hash32, InstanceId, NodeItem, Outcome,
    PaymentReceipt, Quote, Report, SignedChannelState, SignedHubBatch, SignedInvoice, SignedNodeAck,
    SignedOrder, SignedRefundRequest, SignedTx, Transfer,
};

/// Everything a host can ask of the node enclave. Encodable: a request that changed the
/// state is sealed as that change.
#[derive(Debug, Clone, BorshSerialize, BorshDeserialize)]
pub enum Request {
    /// Produce an attestation report for `chain` (the authority turns it into a quote).
    Report {
        chain: ChainId,
    },
    /// Accept `quote`'s enclave as the hub; round messages are refused until this succeeds.
    AttestHub {
        quote: Quote,
    },
    /// Channel open/funding seen on-chain. Simulation trusts the host here; a real
    /// deployment feeds a light-client proof of the `ChannelOpened` event instead.
    AddChannel(NewChannel),
    /// A `ChannelFunded` event: both sides' deposits after it. Deposits only grow; a report
    /// below what the enclave has seen is refused, the same totals again change nothing. A
    /// host that over-reports only makes its own closing state unacceptable to the contract.
    Deposit {
        channel: ChannelId,
        deposit_a: Amount,
        deposit_b: Amount,
    },
    SetFee {
        channel: ChannelId,
        fee: FeePolicy,
    },
    /// Build and sign a payment request as payer (DESIGN §6 step 0).
    CreatePayment {
        chain: ChainId,
        asset: Asset,
        payee: Address,
        amount: Amount,
        max_fee: Amount,
        expires_at: u64,
    },
    /// Build and sign a swap intent as a party.
    CreateSwapIntent {
        gives: Vec<Transfer>,
        receives: Vec<Transfer>,
        expires_at: u64,
    },
    /// A batch of round messages from the hub.
    HubBatch(SignedHubBatch),
    /// Sign and keep an invoice as payee, for `amount` (None: any amount) on `chain`
    /// (`invoices.rs`).
    CreateInvoice {
        chain: ChainId,
        asset: Asset,
        amount: Option<Amount>,
        memo_hash: Hash32,
        expires_at: u64,
    },
    /// An open invoice of this enclave can no longer be paid.
    CancelInvoice {
        invoice: Hash32,
    },
    /// Build and sign the payment of a payee's invoice (its signature checked); `amount` only
    /// for an any-amount invoice.
    PayInvoice {
        invoice: Box<SignedInvoice>,
        amount: Option<Amount>,
        max_fee: Amount,
        expires_at: u64,
    },
    /// The receipt of this enclave's paid invoice.
    InvoiceReceipt {
        invoice: Hash32,
    },
    /// The payee's receipt for an invoice this enclave paid: kept.
    KeepReceipt(PaymentReceipt),
    /// An invoice this enclave paid, with its receipt if it arrived.
    PaidInvoice {
        invoice: Hash32,
    },
    /// Every invoice this enclave issued and still keeps, with its status.
    Invoices,
    /// Ask the hub to refund an instance this node takes part in.
    RequestRefund {
        instance: InstanceId,
    },
    /// Sign the channel's final state: a close (no locks) or an eject (multi-hop locks).
    /// Afterwards the channel accepts nothing more.
    SignClose {
        channel: ChannelId,
    },
    /// Fetch the closing state signed earlier (after a host crash), never a new one.
    ClosingState {
        channel: ChannelId,
    },
    /// The channel was settled on-chain (e.g. by the peer); stop using it.
    ChannelSettled {
        channel: ChannelId,
    },
    /// The contract fixed an instance's outcome (`InstanceResolved`, confirmed): every lock
    /// of the instance this node holds ends with it. The only way a multi-hop lock ends
    /// by the chain's word (RESOLVE from the hub is accepted only once this arrived).
    OutcomeOnChain {
        instance: InstanceId,
        outcome: Outcome,
    },
    /// Build and sign `openChannel(peer)` on `chain`'s configured contract, funded with
    /// `deposit`, sent from this enclave's address. The host supplies nonce and fees only.
    BuildOpenChannel {
        chain: ChainId,
        peer: Address,
        /// The channel's asset: zero for ether (sent as the value), else an ERC-20 token the
        /// contract pulls (approved first: [`Request::BuildApprove`]).
        token: Address,
        deposit: Amount,
        gas: GasParams,
    },
    /// Build and sign `approve(contract, amount)` on `token`: lets `chain`'s configured
    /// contract (and no one else) pull this much of the token for an open or a deposit.
    BuildApprove {
        chain: ChainId,
        token: Address,
        amount: Amount,
        gas: GasParams,
    },
    /// Build and sign `withdraw(token)` on `chain`'s contract: the token payouts a close could
    /// not transfer to this enclave (the token refused), kept there for it.
    BuildWithdrawOwed {
        chain: ChainId,
        token: Address,
        gas: GasParams,
    },
    /// Build and sign `deposit(channel, amount)` adding `amount` of the channel's asset to
    /// this enclave's side (a token channel's: approved first).
    BuildDeposit {
        channel: ChannelId,
        amount: Amount,
        gas: GasParams,
    },
    /// Build and sign `closeChannel(state, sig)` with the channel's closing state, signing
    /// that state first if it has not been (as `SignClose` does: a close without locks, an
    /// eject with multi-hop locks; the channel then accepts nothing more).
    BuildClose {
        channel: ChannelId,
        gas: GasParams,
    },
    /// Sign a node↔hub link handshake transcript (the host dials; the enclave's key
    /// authenticates the link). Signs only under the link tag, so it cannot be turned into
    /// any other signature.
    SignLink {
        transcript: teepay_types::Hash32,
        role: teepay_types::LinkRole,
    },
    /// Build and sign `registerEnclave` for this enclave's own `quote` on `chain`'s configured
    /// contract, sent from this enclave's address (which pays its gas).
    BuildRegister {
        chain: ChainId,
        quote: Quote,
        gas: GasParams,
    },
    /// Build and sign a plain transfer out of this enclave's account (withdrawing payouts).
    BuildTransfer {
        chain: ChainId,
        to: Address,
        amount: Amount,
        gas: GasParams,
    },
    /// A swap's decision certificate from anywhere (a contract's `DecisionRecorded`, a peer,
    /// a file): if the attested hub signed it, this node's locks of the swap end with it.
    Decision(teepay_types::DecisionCertificate),
    /// The kept decision certificate of a swap this node took part in.
    Certificate {
        instance: InstanceId,
    },
    /// Build and sign `recordDecision` on `chain`'s contract with the kept certificate of
    /// `instance`, settling its swap locks there without the hub (DESIGN §10).
    BuildRecordDecision {
        chain: ChainId,
        instance: InstanceId,
        gas: GasParams,
    },
    /// Build and sign `claimRevert` with the channel's closing state: the last resort for a
    /// swap lock past its deadline when no decision reached anyone (DESIGN §10).
    BuildClaimRevert {
        channel: ChannelId,
        gas: GasParams,
    },
}

impl Request {
    /// Issuing an order changes the state (the order's record and the next nonce) but need
    /// not be durable before the order leaves: it is sealed with the next change that must
    /// be, at the latest with the PREPARE that uses it. Losing it in a crash is safe: the
    /// enclave then holds no record of the order and refuses any instance that carries it
    /// (a later order may reuse its nonce, but then differs in digest, or is the same order
    /// and is still paid at most once). This saves a durable write per payment.
    pub fn defers_sealing(&self) -> bool {
        matches!(
            self,
            Request::CreatePayment { .. } | Request::CreateSwapIntent { .. } | Request::PayInvoice { .. }
        )
    }
}

/// The per-item results of a batch and the single signed ack covering the answered ones.
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub ack: Option<SignedNodeAck>,
    /// One entry per batch item, in order: the answer, or why the item was refused
    /// (a refused PREPARE is also answered with a signed NACK in `ack`).
    pub results: Vec<Result<NodeItem, EnclaveError>>,
    /// Per item: whether it changed the state (false for a retransmission answered again,
    /// or a refusal): what the host reports as an event.
    pub fresh: Vec<bool>,
    /// Receipts of this enclave's invoices paid by the batch's CONFIRMs: the host hands them
    /// on towards the payers (self-authenticating: nobody can forge or alter one).
    pub receipts: Vec<PaymentReceipt>,
    /// This enclave's invoices whose status the batch changed, with the status after it.
    pub invoices: Vec<(Hash32, crate::InvoiceStatus)>,
}

#[derive(Debug, Clone)]
pub enum Response {
    Report(Report),
    Done,
    Order(SignedOrder),
    Batch(BatchResult),
    RefundRequest(SignedRefundRequest),
    ChannelState(SignedChannelState),
    /// A signed transaction for the host to submit.
    Transaction(SignedTx),
    Signature(teepay_types::Signature),
    Certificate(teepay_types::DecisionCertificate),
    Invoice(SignedInvoice),
    Receipt(PaymentReceipt),
    Invoices(Vec<crate::IssuedInvoice>),
    PaidInvoice(crate::PaidInvoice),
}

/// A response plus, when the state changed (and the change must be durable), the new
/// sealed blob to persist first.
#[derive(Debug, Clone)]
pub struct Output {
    pub response: Response,
    pub sealed: Option<Vec<u8>>,
}
