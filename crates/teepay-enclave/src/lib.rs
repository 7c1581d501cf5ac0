//! teepay-enclave: the node enclave (DESIGN §4).
//!
//! Holds the node's key and channel table; the host can only pass [`Request`]s in and relay
//! what comes out. One entry point, [`NodeEnclave::handle`]: deterministic given the
//! enclave's state, the request and the time passed in. Every state change returns a new
//! sealed blob that the host must persist *before* it releases the response (DESIGN §7:
//! an ack that leaves before its state is durable could be rolled back) — except issuing an
//! order, whose loss only makes the enclave refuse that order ([`Request::defers_sealing`]);
//! it is sealed with the next change that must be durable.
//!
//! Sealing is incremental: because `handle` is deterministic, a state change is sealed as
//! the request that caused it (with its time), and [`NodeEnclave::restore`] replays those
//! deltas on the last snapshot. A snapshot of the whole state is sealed only once the deltas
//! outgrow it ([`LogBudget`]), so a batch costs what the batch weighs, not what the state
//! weighs.
//!
//! Pure: no I/O, clock or RNG; entropy, time and platform services are inputs.

mod consent;
mod decisions;
mod error;
mod invoices;
mod peer_acks;
mod requests;
mod rounds;
mod state;

pub use error::EnclaveError;
pub use invoices::{
    INVOICE_RETENTION, InvoiceBook, InvoiceRole, InvoiceStatus, IssuedInvoice, MAX_INVOICE_LIFETIME,
    MAX_INVOICES, PaidInvoice,
};
pub use requests::{BatchResult, Output, Request, Response};
pub use state::{
    Channel, ChannelStatus, FINISHED_RETENTION, FeePolicy, InstanceRecord, InstanceStatus, Lock, NodeConfig,
    NodeState, OrderRecord, OrderStatus, PRUNE_BATCH,
};

use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::BTreeMap;
use teepay_types::{
    Address, Amount, Auth, ChainId, ChannelId, Eip1559Tx, GasParams, HubItem, InstanceId, InstanceKind,
    InstanceSpec, NodeAck, NodeItem, Order, PaymentRequest, Platform, RefundRequest, Report,
    SignedChannelState, SignedHubBatch, SigningKey, SwapIntent, leaf_hash, macs_equal, prepared_digest,
    seal_delta, seal_value, session_mac, unseal_log, verify_signer,
};
pub use teepay_types::{LogBudget, SealLimits, SealedLog};

const SEAL_DOMAIN: &[u8] = b"teepay/node-seal/v1";

/// A channel the host reports as opened (and funded) on-chain: the `ChannelOpened` event.
/// The enclave recomputes `id` from (chain, contract, opener, peer, nonce), so a host cannot
/// swap the parties' sides or pass off one chain's channel as another's; the deposit is the
/// opener's (A's) only, as `openChannel` records it.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct NewChannel {
    pub chain: ChainId,
    pub contract: Address,
    pub id: ChannelId,
    pub peer: Address,
    pub local_is_a: bool,
    /// The contract's channel counter at the open (part of the id).
    pub nonce: u64,
    /// What the opener (party A) deposited with the open.
    pub deposit: Amount,
    pub fee: FeePolicy,
    /// The channel's asset (zero: ether); part of the id, so a host cannot misreport it.
    pub token: Address,
}

/// Refuses gas parameters that could spend more than `limit`.
fn check_fee_within(gas: &GasParams, limit: Amount) -> Result<(), EnclaveError> {
    let requested = Amount(u128::from(gas.gas_limit).saturating_mul(gas.max_fee_per_gas));
    if requested > limit {
        return Err(EnclaveError::FeeTooHigh { requested, limit });
    }
    Ok(())
}

/// Refuses a close transaction whose gas limit cannot cover its locks ([`teepay_types::close_gas`]).
fn check_close_gas(gas: &GasParams, locks: usize) -> Result<(), EnclaveError> {
    let needed = teepay_types::close_gas(locks);
    if gas.gas_limit < needed {
        return Err(EnclaveError::GasTooLow { needed, got: gas.gas_limit });
    }
    Ok(())
}

/// A channel as the contract records it: opened by `a` with `deposit_a`, then funded by `b`
/// with `deposit_b`. What an honest host tells either party's enclave of it is
/// [`FundedChannel::requests`]; tests, benchmarks and the simulation set channels up with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FundedChannel {
    pub chain: ChainId,
    pub contract: Address,
    pub a: Address,
    pub b: Address,
    pub nonce: u64,
    pub deposit_a: Amount,
    pub deposit_b: Amount,
    /// Zero for ether, else the ERC-20 token the channel holds.
    pub token: Address,
}

impl FundedChannel {
    /// The id the contract gives this channel.
    pub fn id(&self) -> ChannelId {
        teepay_types::derive_channel_id(self.chain, self.contract, self.a, self.b, self.nonce, self.token)
    }

    /// `AddChannel` (the open), then `Deposit` when B funded its side, for the enclave of
    /// `a` (`local_is_a`) or of `b`.
    pub fn requests(&self, local_is_a: bool, fee: FeePolicy) -> Vec<Request> {
        let new = NewChannel {
            chain: self.chain,
            contract: self.contract,
            id: self.id(),
            peer: if local_is_a { self.b } else { self.a },
            local_is_a,
            nonce: self.nonce,
            deposit: self.deposit_a,
            fee,
            token: self.token,
        };
        let mut requests = vec![Request::AddChannel(new)];
        if !self.deposit_b.is_zero() {
            requests.push(Request::Deposit {
                channel: self.id(),
                deposit_a: self.deposit_a,
                deposit_b: self.deposit_b,
            });
        }
        requests
    }
}

#[derive(BorshSerialize, BorshDeserialize)]
struct SealedContents {
    secret: [u8; 32],
    state: NodeState,
}

/// What is sealed: the same encoding as [`SealedContents`], borrowing the state instead of
/// cloning it (the state is the bulk of every seal).
#[derive(BorshSerialize)]
struct SealedContentsRef<'a> {
    secret: [u8; 32],
    state: &'a NodeState,
}

#[derive(Debug, Clone)]
pub struct NodeEnclave<P: Platform> {
    platform: P,
    key: SigningKey,
    state: NodeState,
    /// Set by every state change while a request is handled; sealing clears it.
    dirty: bool,
    /// When the next seal is a snapshot rather than a delta (enclave memory, not sealed).
    budget: LogBudget,
    /// Logged requests that changed the state but need not be durable before their
    /// response leaves (issuing an order, see [`Request::defers_sealing`]): sealed with the
    /// next change that must be.
    pending: Vec<u8>,
}

/// A sealed delta: one or more requests that changed the state, each with the time it was
/// handled at.
#[derive(BorshSerialize)]
struct LoggedRequestRef<'a> {
    now: u64,
    request: &'a Request,
}

#[derive(BorshDeserialize)]
struct LoggedRequest {
    now: u64,
    request: Request,
}

impl<P: Platform> NodeEnclave<P> {
    /// Creates an enclave with a fresh key derived from injected entropy. Returns the
    /// enclave and its first sealed blob.
    pub fn create(
        platform: P,
        config: NodeConfig,
        entropy: [u8; 32],
    ) -> Result<(Self, Vec<u8>), EnclaveError> {
        let key = SigningKey::from_entropy(entropy)?;
        let state = NodeState {
            config,
            hub: None,
            hub_session: None,
            hub_uses_session: false,
            channels: BTreeMap::new(),
            instances: BTreeMap::new(),
            finished: std::collections::BTreeSet::new(),
            replay_floor: 0,
            orders: BTreeMap::new(),
            next_nonce: 0,
            certificates: BTreeMap::new(),
            certificate_expiry: std::collections::BTreeSet::new(),
            invoices: Default::default(),
        };
        let mut enclave =
            Self { platform, key, state, dirty: false, budget: LogBudget::default(), pending: Vec::new() };
        let blob = enclave.seal_snapshot();
        Ok((enclave, blob))
    }

    /// Restarts from the sealed log (the last snapshot and the deltas after it), replaying
    /// each delta. Stale (rolled-back or truncated), gapped, tampered or foreign logs are
    /// refused.
    pub fn restore(platform: P, log: &SealedLog) -> Result<Self, EnclaveError> {
        let opened = unseal_log(&platform, SEAL_DOMAIN, log)?;
        let contents: SealedContents =
            borsh::from_slice(&opened.snapshot).map_err(|_| teepay_types::SealError::Undecodable)?;
        let key = SigningKey::from_entropy(contents.secret)?;
        let budget = LogBudget::after_restore(&opened);
        let mut enclave =
            Self { platform, key, state: contents.state, dirty: false, budget, pending: Vec::new() };
        for (index, delta) in opened.deltas.iter().enumerate() {
            let mut rest = delta.as_slice();
            while !rest.is_empty() {
                let logged = LoggedRequest::deserialize(&mut rest)
                    .map_err(|_| teepay_types::SealError::Undecodable)?;
                // Deterministic: the same state, request and time change the state the same
                // way (signatures are RFC 6979), so a request that now fails or changes
                // nothing means the log is not this enclave's history.
                let replayed = enclave.apply(logged.now, logged.request);
                if replayed.is_err() || !std::mem::take(&mut enclave.dirty) {
                    return Err(EnclaveError::ReplayDiverged { index });
                }
            }
        }
        Ok(enclave)
    }

    /// The changes made since the last seal whose sealing was deferred (encoded requests),
    /// lost if the enclave stops now. For the simulation's crash check.
    pub fn deferred(&self) -> &[u8] {
        &self.pending
    }

    /// Re-applies `deferred` (another instance's [`Self::deferred`]) as replay would; refuses
    /// anything but deferrable requests. With it, the simulation checks that a restart lost
    /// exactly the deferred changes and nothing that had to be durable.
    pub fn replay_deferred(&mut self, deferred: &[u8]) -> Result<(), EnclaveError> {
        let mut rest = deferred;
        while !rest.is_empty() {
            let logged =
                LoggedRequest::deserialize(&mut rest).map_err(|_| teepay_types::SealError::Undecodable)?;
            if !logged.request.defers_sealing() {
                return Err(EnclaveError::ReplayDiverged { index: 0 });
            }
            self.apply(logged.now, logged.request)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// When seals are snapshots rather than deltas ([`SealLimits::FULL`]: always, as before
    /// incremental sealing; for benchmarks). Not sealed: a host choice, set after restore.
    pub fn set_seal_limits(&mut self, limits: SealLimits) {
        self.budget.set_limits(limits);
    }

    pub fn seal_limits(&self) -> SealLimits {
        self.budget.limits()
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// Read-only view of the state, for the simulation harness and tests (a real host
    /// cannot read enclave memory; it sees only responses).
    pub fn inspect(&self) -> &NodeState {
        &self.state
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    fn seal_snapshot(&mut self) -> Vec<u8> {
        let contents = SealedContentsRef { secret: self.key.secret_bytes(), state: &self.state };
        let blob = seal_value(&mut self.platform, SEAL_DOMAIN, &contents);
        self.budget.snapshot_sealed(blob.len());
        // The snapshot holds every deferred change too.
        self.pending.clear();
        blob
    }

    /// Marks the state changed; `handle` seals it before the response leaves.
    pub(crate) fn changed(&mut self, response: Response) -> Output {
        self.dirty = true;
        Output { response, sealed: None }
    }

    /// The single entry point. `now` is the host's clock, used only for expiries.
    pub fn handle(&mut self, now: u64, request: Request) -> Result<Output, EnclaveError> {
        // Encoded before it is consumed: if it changes the state, this is the delta sealed.
        let delta = borsh::to_vec(&LoggedRequestRef { now, request: &request })
            .expect("writing to a Vec never fails");
        let defers = request.defers_sealing();
        let result = self.apply(now, request);
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = match result {
            Ok(out) => out,
            Err(e) => {
                // A refused request changes no state; should one ever have, the next seal
                // is a snapshot, so the sealed history never depends on a delta not logged.
                debug_assert!(!dirty, "a refused request changed the state: {e}");
                if dirty {
                    self.budget.set_snapshot_due();
                }
                return Err(e);
            }
        };
        if !dirty {
            return Ok(out);
        }
        self.pending.extend_from_slice(&delta);
        if defers {
            return Ok(out);
        }
        out.sealed = Some(if self.budget.snapshot_due() {
            self.seal_snapshot()
        } else {
            let blob = seal_delta(&mut self.platform, SEAL_DOMAIN, &self.pending);
            self.budget.delta_sealed(blob.len());
            blob
        });
        self.pending.clear();
        Ok(out)
    }

    /// Applies a request to the state without sealing (shared by `handle` and replay).
    fn apply(&mut self, now: u64, request: Request) -> Result<Output, EnclaveError> {
        match request {
            Request::Report { chain } => Ok(Output {
                response: Response::Report(Report::of(&self.key, self.state.config.measurement, chain)),
                sealed: None,
            }),
            Request::AttestHub { quote } => {
                quote.verify(
                    self.state.config.attestation_authority,
                    &self.state.config.allowed_hub_measurements,
                )?;
                // The session key with the hub is derived here, at attestation (ECDH with the
                // key the quote carries), so round messages can be MAC'd from the first one.
                let (_, session) = self.key.session_with(&quote.report.public_key)?;
                if self.state.hub != Some(quote.report.enclave) {
                    self.state.hub = Some(quote.report.enclave);
                    self.state.hub_uses_session = false;
                }
                self.state.hub_session = Some(session);
                Ok(self.changed(Response::Done))
            }
            Request::AddChannel(new) => self.add_channel(new),
            Request::Deposit { channel, deposit_a, deposit_b } => self.deposit(channel, deposit_a, deposit_b),
            Request::SetFee { channel, fee } => {
                self.open_channel_mut(channel)?.fee = fee;
                Ok(self.changed(Response::Done))
            }
            Request::CreatePayment { chain, asset, payee, amount, max_fee, expires_at } => {
                if amount.is_zero() {
                    return Err(EnclaveError::ZeroAmount);
                }
                if !asset.is_well_formed() {
                    return Err(EnclaveError::InvalidOrder(
                        "a token at the zero address (ether is `Native`)",
                    ));
                }
                if payee == self.address() {
                    return Err(EnclaveError::InvalidOrder("payee is the payer"));
                }
                let nonce = self.state.next_nonce;
                let order = Order::Payment(PaymentRequest {
                    chain,
                    asset,
                    payer: self.address(),
                    payee,
                    amount,
                    max_fee,
                    nonce,
                    expires_at,
                    invoice: None,
                });
                Ok(self.issue_order(order))
            }
            Request::CreateSwapIntent { gives, receives, expires_at } => {
                if gives.is_empty() || receives.is_empty() {
                    return Err(EnclaveError::InvalidOrder("a swap intent gives and receives something"));
                }
                if gives.len() + receives.len() > teepay_types::MAX_TRANSFERS_PER_INTENT {
                    // The hub refuses it anyway: issuing it would only use up a nonce.
                    const _: () = assert!(teepay_types::MAX_TRANSFERS_PER_INTENT == 8, "message below");
                    return Err(EnclaveError::InvalidOrder("a swap intent lists at most 8 transfers"));
                }
                if gives.iter().chain(&receives).any(|t| t.amount.is_zero()) {
                    return Err(EnclaveError::ZeroAmount);
                }
                if gives.iter().chain(&receives).any(|t| !t.asset.is_well_formed()) {
                    return Err(EnclaveError::InvalidOrder(
                        "a token at the zero address (ether is `Native`)",
                    ));
                }
                let me = self.address();
                if gives.iter().chain(&receives).any(|t| t.counterparty == me) {
                    return Err(EnclaveError::InvalidOrder("counterparty is the party itself"));
                }
                let nonce = self.state.next_nonce;
                let order = Order::Swap(SwapIntent { party: me, gives, receives, nonce, expires_at });
                Ok(self.issue_order(order))
            }
            Request::HubBatch(batch) => self.handle_batch(now, batch),
            Request::CreateInvoice { chain, asset, amount, memo_hash, expires_at } => {
                self.create_invoice(chain, asset, amount, memo_hash, expires_at, now)
            }
            Request::CancelInvoice { invoice } => self.cancel_invoice(invoice),
            Request::PayInvoice { invoice, amount, max_fee, expires_at } => {
                self.pay_invoice(*invoice, amount, max_fee, expires_at, now)
            }
            Request::InvoiceReceipt { invoice } => {
                Ok(Output { response: Response::Receipt(self.invoice_receipt(invoice)?), sealed: None })
            }
            Request::KeepReceipt(receipt) => self.keep_receipt(receipt),
            Request::PaidInvoice { invoice } => {
                Ok(Output { response: Response::PaidInvoice(self.paid_invoice(invoice)?), sealed: None })
            }
            Request::Invoices => {
                let list = self.state.invoices.issued.values().cloned().collect();
                Ok(Output { response: Response::Invoices(list), sealed: None })
            }
            Request::RequestRefund { instance } => {
                match self.state.instances.get(&instance) {
                    None => return Err(EnclaveError::UnknownInstance(instance)),
                    Some(r) if matches!(r.status, InstanceStatus::Finished(_)) => {
                        return Err(EnclaveError::InstanceFinished(instance));
                    }
                    Some(_) => {}
                }
                let request = RefundRequest { node: self.address(), instance }.sign(&self.key);
                Ok(Output { response: Response::RefundRequest(request), sealed: None })
            }
            Request::SignClose { channel } => self.sign_close(channel, now),
            Request::ClosingState { channel } => {
                let ch = self.state.channels.get(&channel).ok_or(EnclaveError::UnknownChannel(channel))?;
                match &ch.status {
                    ChannelStatus::Closing(signed) => {
                        Ok(Output { response: Response::ChannelState((**signed).clone()), sealed: None })
                    }
                    _ => Err(EnclaveError::InvalidOrder("no closing state was signed for this channel")),
                }
            }
            Request::ChannelSettled { channel } => {
                let ch =
                    self.state.channels.get_mut(&channel).ok_or(EnclaveError::UnknownChannel(channel))?;
                if ch.status == ChannelStatus::Settled {
                    return Ok(Output { response: Response::Done, sealed: None });
                }
                ch.status = ChannelStatus::Settled;
                let instances: Vec<InstanceId> = ch.locks.drain(..).map(|l| l.instance).collect();
                self.mark_ejected(&instances);
                Ok(self.changed(Response::Done))
            }
            Request::OutcomeOnChain { instance, outcome } => {
                if self.state.on_chain_outcome(instance, outcome, now)? {
                    Ok(self.changed(Response::Done))
                } else {
                    Ok(Output { response: Response::Done, sealed: None })
                }
            }
            Request::BuildOpenChannel { chain, peer, token, deposit, gas } => {
                if peer == self.address() {
                    return Err(EnclaveError::InvalidOrder("a channel needs two distinct parties"));
                }
                let contract = self.state.config.contract(chain).ok_or(EnclaveError::UnknownChain(chain))?;
                let input = teepay_types::open_channel_call(peer, token, deposit);
                let value = if token == Address::default() { deposit } else { Amount::ZERO };
                self.build_tx(chain, contract, value, input, gas)
            }
            Request::BuildApprove { chain, token, amount, gas } => {
                if token == Address::default() {
                    return Err(EnclaveError::InvalidOrder("ether needs no approval"));
                }
                let contract = self.state.config.contract(chain).ok_or(EnclaveError::UnknownChain(chain))?;
                let input = teepay_types::approve_call(contract, amount);
                self.build_tx(chain, token, Amount::ZERO, input, gas)
            }
            Request::BuildWithdrawOwed { chain, token, gas } => {
                let contract = self.state.config.contract(chain).ok_or(EnclaveError::UnknownChain(chain))?;
                self.build_tx(chain, contract, Amount::ZERO, teepay_types::withdraw_owed_call(token), gas)
            }
            Request::BuildDeposit { channel, amount, gas } => {
                if amount.is_zero() {
                    return Err(EnclaveError::ZeroAmount);
                }
                let ch = self.open_channel_mut(channel)?;
                let (chain, contract) = (ch.chain, ch.contract);
                let value = if ch.token == Address::default() { amount } else { Amount::ZERO };
                self.build_tx(chain, contract, value, teepay_types::deposit_call(channel, amount), gas)
            }
            Request::BuildClose { channel, gas } => self.build_close(channel, gas, now),
            Request::Decision(cert) => {
                let hub = self.state.hub.ok_or(EnclaveError::HubNotAttested)?;
                if self.state.on_decision(hub, cert, now)? {
                    Ok(self.changed(Response::Done))
                } else {
                    Ok(Output { response: Response::Done, sealed: None })
                }
            }
            Request::Certificate { instance } => self.certificate(instance),
            Request::BuildRecordDecision { chain, instance, gas } => {
                self.build_record_decision(chain, instance, gas)
            }
            Request::BuildClaimRevert { channel, gas } => self.build_claim_revert(channel, gas, now),
            Request::SignLink { transcript, role } => Ok(Output {
                response: Response::Signature(
                    self.key.sign_digest(&teepay_types::link_digest(&transcript, role)),
                ),
                sealed: None,
            }),
            Request::BuildRegister { chain, quote, gas } => {
                if quote.report.enclave != self.address() || quote.report.chain != chain {
                    return Err(EnclaveError::InvalidOrder("the quote is not this enclave's for that chain"));
                }
                let contract = self.state.config.contract(chain).ok_or(EnclaveError::UnknownChain(chain))?;
                self.build_tx(chain, contract, Amount::ZERO, teepay_types::register_enclave_call(&quote), gas)
            }
            Request::BuildTransfer { chain, to, amount, gas } => {
                if amount.is_zero() {
                    return Err(EnclaveError::ZeroAmount);
                }
                self.state.config.contract(chain).ok_or(EnclaveError::UnknownChain(chain))?;
                self.build_tx(chain, to, amount, Vec::new(), gas)
            }
        }
    }

    /// Signs a transaction from this enclave's address; refuses fees above the policy limit.
    fn build_tx(
        &self,
        chain: ChainId,
        to: Address,
        value: Amount,
        input: Vec<u8>,
        gas: GasParams,
    ) -> Result<Output, EnclaveError> {
        self.check_fee(&gas)?;
        let tx = Eip1559Tx { chain, gas, to: Some(to), value, input }.sign(&self.key);
        Ok(Output { response: Response::Transaction(tx), sealed: None })
    }

    /// Refuses gas parameters that could spend more than the policy allows.
    fn check_fee(&self, gas: &GasParams) -> Result<(), EnclaveError> {
        check_fee_within(gas, self.state.config.max_tx_fee)
    }

    /// The gas of a transaction carrying a closing state with `locks` locks (a close or a
    /// REVERT claim): enough for its locks, and a fee limit that grows with them (by whole
    /// multiples of the policy's limit for a lock-free close), so a channel full of locks can
    /// always be closed.
    fn check_close_fee(&self, gas: &GasParams, locks: usize) -> Result<(), EnclaveError> {
        check_close_gas(gas, locks)?;
        let multiple = teepay_types::close_gas(locks).div_ceil(teepay_types::close_gas(0));
        check_fee_within(gas, Amount(self.state.config.max_tx_fee.0.saturating_mul(u128::from(multiple))))
    }

    fn build_close(&mut self, channel: ChannelId, gas: GasParams, now: u64) -> Result<Output, EnclaveError> {
        let ch = self.state.channels.get(&channel).ok_or(EnclaveError::UnknownChannel(channel))?;
        let locks = match &ch.status {
            ChannelStatus::Closing(signed) => signed.state.locks.len(),
            ChannelStatus::Settled => return Err(EnclaveError::ChannelClosed(channel)),
            ChannelStatus::Open => ch.locks.len(),
        };
        // Checked before the closing state is signed: a refused request changes no state, and
        // a close signed into a transaction that runs out of gas would fail on-chain. A close
        // happens once per channel and its gas grows with its locks, so its fee limit grows
        // with them too (by whole multiples of the policy's limit for a lock-free close).
        self.check_close_fee(&gas, locks)?;
        let signed = self.closing_state(channel, now)?;
        let input = teepay_types::close_channel_call(&signed);
        let (chain, contract) = (signed.state.chain, signed.state.contract);
        let tx = Eip1559Tx { chain, gas, to: Some(contract), value: Amount(0), input }.sign(&self.key);
        Ok(Output { response: Response::Transaction(tx), sealed: None })
    }

    pub(crate) fn issue_order(&mut self, order: Order) -> Output {
        let nonce = order.nonce();
        self.state.next_nonce += 1;
        let record = OrderRecord {
            digest: order.digest(),
            status: OrderStatus::Open,
            expires_at: order.expires_at(),
            invoice: match &order {
                Order::Payment(r) => r.invoice,
                Order::Swap(_) => None,
            },
        };
        self.state.orders.insert(nonce, record);
        // A payment order only the hub checks: MAC'd once the hub has shown it holds the
        // session (one keccak instead of an ECDSA signature here and a recovery at the hub).
        let signed = match (&order, self.state.hub_session) {
            (Order::Payment(_), Some(session)) if self.state.hub_uses_session => order.mac(&session),
            _ => order.sign(&self.key),
        };
        self.changed(Response::Order(signed))
    }

    fn add_channel(&mut self, new: NewChannel) -> Result<Output, EnclaveError> {
        if self.state.channels.contains_key(&new.id) {
            return Err(EnclaveError::ChannelExists(new.id));
        }
        if new.peer == self.address() {
            return Err(EnclaveError::InvalidOrder("a channel needs two distinct parties"));
        }
        let expected = self.state.config.contract(new.chain).ok_or(EnclaveError::UnknownChain(new.chain))?;
        if new.contract != expected {
            return Err(EnclaveError::WrongContract { expected, got: new.contract });
        }
        let me = self.address();
        let (a, b) = if new.local_is_a { (me, new.peer) } else { (new.peer, me) };
        let derived = teepay_types::derive_channel_id(new.chain, new.contract, a, b, new.nonce, new.token);
        if derived != new.id {
            return Err(EnclaveError::ChannelIdMismatch { reported: new.id, derived });
        }
        let (deposit_local, deposit_peer) =
            if new.local_is_a { (new.deposit, Amount::ZERO) } else { (Amount::ZERO, new.deposit) };
        let channel = Channel {
            chain: new.chain,
            contract: new.contract,
            id: new.id,
            token: new.token,
            peer: new.peer,
            local_is_a: new.local_is_a,
            deposit_local,
            deposit_peer,
            balance_local: deposit_local,
            balance_peer: deposit_peer,
            version: 0,
            locks: Vec::new(),
            fee: new.fee,
            status: ChannelStatus::Open,
        };
        self.state.channels.insert(new.id, channel);
        Ok(self.changed(Response::Done))
    }

    fn deposit(
        &mut self,
        channel: ChannelId,
        deposit_a: Amount,
        deposit_b: Amount,
    ) -> Result<Output, EnclaveError> {
        let ch = self.open_channel_mut(channel)?;
        let (new_local, new_peer) =
            if ch.local_is_a { (deposit_a, deposit_b) } else { (deposit_b, deposit_a) };
        let added_local = new_local.checked_sub(ch.deposit_local).ok_or(EnclaveError::DepositDecreased)?;
        let added_peer = new_peer.checked_sub(ch.deposit_peer).ok_or(EnclaveError::DepositDecreased)?;
        if added_local.is_zero() && added_peer.is_zero() {
            return Ok(Output { response: Response::Done, sealed: None });
        }
        // The contract keeps both deposits within 128 bits together; so does the enclave.
        new_local.checked_add(new_peer).ok_or(EnclaveError::Overflow)?;
        let balance_local = ch.balance_local.checked_add(added_local).ok_or(EnclaveError::Overflow)?;
        let balance_peer = ch.balance_peer.checked_add(added_peer).ok_or(EnclaveError::Overflow)?;
        ch.deposit_local = new_local;
        ch.deposit_peer = new_peer;
        ch.balance_local = balance_local;
        ch.balance_peer = balance_peer;
        ch.version += 1;
        Ok(self.changed(Response::Done))
    }

    fn open_channel_mut(&mut self, channel: ChannelId) -> Result<&mut Channel, EnclaveError> {
        let ch = self.state.channels.get_mut(&channel).ok_or(EnclaveError::UnknownChannel(channel))?;
        if !ch.is_open() {
            return Err(EnclaveError::ChannelClosed(channel));
        }
        Ok(ch)
    }

    fn mark_ejected(&mut self, instances: &[InstanceId]) {
        for id in instances {
            if let Some(record) = self.state.instances.get_mut(id) {
                record.ejected = true;
            }
        }
    }

    /// The closing state signed earlier, or one signed now (see `sign_close`).
    fn closing_state(&mut self, channel: ChannelId, now: u64) -> Result<SignedChannelState, EnclaveError> {
        let ch = self.state.channels.get(&channel).ok_or(EnclaveError::UnknownChannel(channel))?;
        if let ChannelStatus::Closing(signed) = &ch.status {
            return Ok((**signed).clone());
        }
        match self.sign_close(channel, now)?.response {
            Response::ChannelState(signed) => Ok(signed),
            _ => unreachable!("sign_close answers a state"),
        }
    }

    /// Signs the closing state of a channel: with no locks a cooperative close, with
    /// multi-hop locks an eject. A swap lock ends by its hub's decision (DESIGN §3), so a
    /// state carrying one is signed only once its last-resort deadline has passed (DESIGN
    /// §10): the contract then settles it by a recorded certificate or a REVERT claim. Never
    /// twice.
    fn sign_close(&mut self, channel: ChannelId, now: u64) -> Result<Output, EnclaveError> {
        let key = self.key.clone();
        let ch = self.open_channel_mut(channel)?;
        if let Some(lock) = ch.locks.iter().find(|l| l.kind == InstanceKind::CrossChain && now < l.deadline) {
            return Err(EnclaveError::SwapLocked { channel, until: lock.deadline });
        }
        let signed = ch.to_state().sign(&key);
        ch.status = ChannelStatus::Closing(Box::new(signed.clone()));
        let instances: Vec<InstanceId> = ch.locks.iter().map(|l| l.instance).collect();
        self.mark_ejected(&instances);
        Ok(self.changed(Response::ChannelState(signed)))
    }

    /// A PREPARED answer to an instance that asks for peer acks carries this enclave's own
    /// signature over its states, for the hub to forward to the other participants.
    /// `leaf` is the PREPARE item's leaf hash: the spec the signature binds.
    fn sign_for_peers(
        &self,
        hub: Address,
        spec: &InstanceSpec,
        leaf: &teepay_types::Hash32,
        answer: NodeItem,
    ) -> NodeItem {
        match answer {
            NodeItem::Prepared { instance, states, .. } if spec.peer_acks => {
                let digest = prepared_digest(hub, self.address(), instance, leaf, &states);
                NodeItem::Prepared { instance, states, signature: Some(self.key.sign_digest(&digest)) }
            }
            other => other,
        }
    }

    fn handle_batch(&mut self, now: u64, signed: SignedHubBatch) -> Result<Output, EnclaveError> {
        let hub = self.state.hub.ok_or(EnclaveError::HubNotAttested)?;
        let me = self.address();
        if signed.batch.node != me {
            return Err(EnclaveError::WrongRecipient);
        }
        // Each item's leaf hash is kept: a PREPARE's identifies the spec this node acks.
        let mut leaves = Vec::with_capacity(signed.batch.items.len());
        let digest = signed.batch.digest_with(|item| {
            let leaf = leaf_hash(item);
            leaves.push(leaf);
            leaf
        });
        let mut dirty = false;
        let answer_with_mac = match signed.auth {
            Auth::Signature(signature) => {
                if signed.batch.hub != hub || !verify_signer(&digest, &signature, hub) {
                    return Err(EnclaveError::BadHubSignature);
                }
                false
            }
            Auth::Mac(tag) => {
                let session = self.state.hub_session.ok_or(EnclaveError::NoHubSession)?;
                if signed.batch.hub != hub || !macs_equal(&tag, &session_mac(&session, &digest)) {
                    return Err(EnclaveError::BadHubSignature);
                }
                if !self.state.hub_uses_session {
                    self.state.hub_uses_session = true;
                    dirty = true;
                }
                true
            }
        };
        let mut answers = Vec::with_capacity(signed.batch.items.len());
        let mut results = Vec::with_capacity(signed.batch.items.len());
        let mut fresh = Vec::with_capacity(signed.batch.items.len());
        for (item, leaf) in signed.batch.items.iter().zip(&leaves) {
            let result = match item {
                HubItem::Prepare(spec) => self
                    .state
                    .on_prepare(me, hub, spec, *leaf, now)
                    .map(|(answer, changed)| (self.sign_for_peers(hub, spec, leaf, answer), changed)),
                HubItem::Commit { instance, prepared_acks, peer_acks } => {
                    self.state.on_commit(*instance, |r| {
                        peer_acks::check(r, me, hub, *instance, prepared_acks, peer_acks)
                    })
                }
                HubItem::Confirm { instance, certificate } => {
                    self.state.on_confirm(hub, *instance, *certificate, now)
                }
                HubItem::Refund { instance, certificate } => {
                    self.state.on_refund(hub, *instance, *certificate, now)
                }
                HubItem::Resolve { instance, outcome } => self.state.on_resolve(*instance, *outcome, now),
            };
            match result {
                Ok((answer, changed)) => {
                    dirty |= changed;
                    answers.push(answer.clone());
                    results.push(Ok(answer));
                    fresh.push(changed);
                }
                Err(error) => {
                    if let EnclaveError::Refused(reason) = error {
                        answers.push(NodeItem::Nack { instance: item.instance(), reason });
                    }
                    results.push(Err(error));
                    fresh.push(false);
                }
            }
        }
        // One authenticator for the whole batch (over the digest of all the answers), of the
        // kind the hub used: a MAC answers a MAC, a signature a signature.
        let ack = (!answers.is_empty()).then(|| {
            let ack = NodeAck { node: me, hub, items: answers };
            match (answer_with_mac, self.state.hub_session) {
                (true, Some(session)) => ack.mac(&session),
                _ => ack.sign(&self.key),
            }
        });
        // Pruning rides on a batch that changed the state anyway (so it costs no extra seal
        // and replays identically from the logged batch and time).
        if dirty {
            self.state.prune(now);
        }
        let receipts = self.receipts_for(&results);
        let invoices = self.invoice_updates(&results, &fresh);
        let response = Response::Batch(BatchResult { ack, results, fresh, receipts, invoices });
        Ok(if dirty { self.changed(response) } else { Output { response, sealed: None } })
    }
}
