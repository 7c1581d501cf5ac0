//! Invoices and proof of payment in the node enclave (DESIGN §11).
//!
//! As payee, the enclave signs invoices and keeps them ([`InvoiceBook::issued`]): it locks an
//! incoming payment that names an invoice only for its own open, unexpired invoice on that
//! chain and asset, paying at least its amount, and only for one instance at a time (the
//! invoice is *pending* while it runs); at CONFIRM the invoice is paid, once, and the
//! enclave signs the receipt (deterministically, so it can sign it again for anyone who
//! asks). As payer, it builds the payment request from an invoice only if the payee's
//! signature holds, and keeps the receipt of every invoice it paid ([`InvoiceBook::paid`]).
//! A payment without an invoice (keysend) is still accepted as before.
//!
//! Everything a host can make the enclave keep here is bounded: [`MAX_INVOICES`] each side,
//! forgotten [`INVOICE_RETENTION`] after expiry (paid ones too: by then the payer holds its
//! receipt).

use crate::state::{NodeState, OrderRecord, OrderStatus};
use crate::{EnclaveError, NodeEnclave, Output, Response};
use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::{BTreeMap, BTreeSet};
use teepay_types::{
    Address, Amount, Asset, ChainId, Hash32, InstanceId, InstanceKind, InstanceSpec, Invoice, NackReason,
    NodeItem, Order, Outcome, PaymentReceipt, PaymentRequest, Platform, SignedInvoice,
};

/// Most invoices kept on each side (issued; paid with their receipts).
pub const MAX_INVOICES: usize = 10_000;
/// Latest expiry an invoice may have, from its creation (ms).
pub const MAX_INVOICE_LIFETIME: u64 = 30 * 86_400_000;
/// How long past its expiry an invoice (and a paid invoice's receipt) is remembered (ms):
/// until then a late payment is told why it is refused, and a receipt can be asked again.
pub const INVOICE_RETENTION: u64 = 30 * 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum InvoiceStatus {
    Open,
    /// An instance paying it is under way: no other may lock for it until that one ends.
    Pending(InstanceId),
    Paid {
        instance: InstanceId,
        amount: Amount,
        payer: Address,
    },
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct IssuedInvoice {
    pub signed: SignedInvoice,
    pub status: InvoiceStatus,
}

/// An invoice this enclave paid, and the payee's receipt once it reached this node.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct PaidInvoice {
    pub invoice: Hash32,
    pub instance: InstanceId,
    pub payee: Address,
    pub amount: Amount,
    pub receipt: Option<PaymentReceipt>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct InvoiceBook {
    pub issued: BTreeMap<Hash32, IssuedInvoice>,
    /// Issued invoices by (forget at, id): what pruning walks, oldest first.
    pub issued_expiry: BTreeSet<(u64, Hash32)>,
    pub next_nonce: u64,
    pub paid: BTreeMap<Hash32, PaidInvoice>,
    pub paid_expiry: BTreeSet<(u64, Hash32)>,
}

/// How an instance involves one of this enclave's invoices (kept in its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum InvoiceRole {
    /// It pays this enclave's invoice: `amount` from `payer`.
    Payee { invoice: Hash32, amount: Amount, payer: Address },
    /// It carries this enclave's order paying `payee`'s invoice; the paid invoice is
    /// remembered until `forget_at`.
    Payer { invoice: Hash32, payee: Address, amount: Amount, forget_at: u64 },
}

/// The payment request of a multi-hop instance.
fn request(spec: &InstanceSpec) -> Option<&PaymentRequest> {
    if spec.kind != InstanceKind::MultiHop {
        return None;
    }
    spec.orders.iter().find_map(|o| match &o.order {
        Order::Payment(r) => Some(r),
        Order::Swap(_) => None,
    })
}

impl NodeState {
    /// PREPARE policy for a payment to this node that names an invoice: it must be this
    /// enclave's own, open (or already pending for this very instance: a retransmission),
    /// unexpired, on the leg's chain and asset, and the leg must deliver at least its amount.
    /// What the instance is to this node's invoices, if anything.
    pub(crate) fn check_invoice(
        &self,
        me: Address,
        spec: &InstanceSpec,
        now: u64,
    ) -> Result<Option<InvoiceRole>, NackReason> {
        let Some(r) = request(spec) else { return Ok(None) };
        let Some(id) = r.invoice else { return Ok(None) };
        if r.payer == me {
            let forget_at = r.expires_at.saturating_add(INVOICE_RETENTION);
            return Ok(Some(InvoiceRole::Payer { invoice: id, payee: r.payee, amount: r.amount, forget_at }));
        }
        if r.payee != me {
            return Ok(None); // an intermediary: the invoice is not its business
        }
        let leg =
            spec.legs.iter().find(|l| l.destination() == Some(me)).ok_or(NackReason::MalformedInstance)?;
        let issued = self.invoices.issued.get(&id).ok_or(NackReason::InvoiceUnknown)?;
        match issued.status {
            InvoiceStatus::Open => {}
            InvoiceStatus::Pending(other) if other == spec.id => {}
            _ => return Err(NackReason::InvoiceNotOpen),
        }
        let invoice = &issued.signed.invoice;
        if now > invoice.expires_at {
            return Err(NackReason::InvoiceExpired);
        }
        let delivered = leg.delivered();
        if invoice.chain != leg.chain
            || invoice.asset != leg.asset
            || invoice.amount.is_some_and(|asked| delivered < asked)
        {
            return Err(NackReason::InvoiceMismatch);
        }
        Ok(Some(InvoiceRole::Payee { invoice: id, amount: delivered, payer: r.payer }))
    }

    /// The instance holding an invoice has locked here.
    pub(crate) fn invoice_prepared(&mut self, role: InvoiceRole, instance: InstanceId) {
        if let InvoiceRole::Payee { invoice, .. } = role
            && let Some(issued) = self.invoices.issued.get_mut(&invoice)
        {
            issued.status = InvoiceStatus::Pending(instance);
        }
    }

    /// The instance holding an invoice ended here with `outcome`: as payee, the invoice is
    /// paid (APPLY) or open again (REVERT); as payer, the paid invoice is remembered.
    pub(crate) fn invoice_finished(&mut self, role: InvoiceRole, instance: InstanceId, outcome: Outcome) {
        match role {
            InvoiceRole::Payee { invoice, amount, payer } => {
                let Some(issued) = self.invoices.issued.get_mut(&invoice) else { return };
                if issued.status != InvoiceStatus::Pending(instance) {
                    return;
                }
                issued.status = match outcome {
                    Outcome::Apply => InvoiceStatus::Paid { instance, amount, payer },
                    Outcome::Revert => InvoiceStatus::Open,
                };
            }
            InvoiceRole::Payer { invoice, payee, amount, forget_at } => {
                if outcome == Outcome::Revert {
                    return;
                }
                let book = &mut self.invoices;
                // Full: the receipt kept longest goes (its invoice is the oldest).
                if book.paid.len() >= MAX_INVOICES
                    && let Some((_, oldest)) = book.paid_expiry.pop_first()
                {
                    book.paid.remove(&oldest);
                }
                book.paid_expiry.insert((forget_at, invoice));
                book.paid.insert(invoice, PaidInvoice { invoice, instance, payee, amount, receipt: None });
            }
        }
    }

    /// Forgets invoices [`INVOICE_RETENTION`] past their expiry (never one being paid), at
    /// most `batch` of each side. True if anything was dropped.
    pub(crate) fn prune_invoices(&mut self, now: u64, batch: usize) -> bool {
        let book = &mut self.invoices;
        let mut pruned = false;
        for _ in 0..batch {
            let Some(&(at, id)) = book.issued_expiry.first() else { break };
            let pending = book.issued.get(&id).is_some_and(|i| matches!(i.status, InvoiceStatus::Pending(_)));
            if now < at || pending {
                break;
            }
            book.issued_expiry.pop_first();
            book.issued.remove(&id);
            pruned = true;
        }
        for _ in 0..batch {
            let Some(&(at, id)) = book.paid_expiry.first() else { break };
            if now < at {
                break;
            }
            book.paid_expiry.pop_first();
            book.paid.remove(&id);
            pruned = true;
        }
        pruned
    }
}

impl<P: Platform> NodeEnclave<P> {
    /// Signs and keeps a new invoice for `amount` (None: any amount) on `chain`.
    pub(crate) fn create_invoice(
        &mut self,
        chain: ChainId,
        asset: Asset,
        amount: Option<Amount>,
        memo_hash: Hash32,
        expires_at: u64,
        now: u64,
    ) -> Result<Output, EnclaveError> {
        self.state.config.contract(chain).ok_or(EnclaveError::UnknownChain(chain))?;
        if !asset.is_well_formed() {
            return Err(EnclaveError::InvalidInvoice("a token at the zero address (ether is `Native`)"));
        }
        if amount.is_some_and(|a| a.is_zero()) {
            return Err(EnclaveError::ZeroAmount);
        }
        if expires_at <= now {
            return Err(EnclaveError::InvalidInvoice("it expires before it is issued"));
        }
        if expires_at > now.saturating_add(MAX_INVOICE_LIFETIME) {
            return Err(EnclaveError::InvalidInvoice("it may expire at most 30 days from now"));
        }
        self.state.prune_invoices(now, crate::PRUNE_BATCH);
        if self.state.invoices.issued.len() >= MAX_INVOICES {
            return Err(EnclaveError::TooManyInvoices(MAX_INVOICES));
        }
        let book = &mut self.state.invoices;
        let nonce = book.next_nonce;
        book.next_nonce += 1;
        let invoice =
            Invoice { payee: self.key.address(), chain, asset, amount, memo_hash, expires_at, nonce };
        let signed = invoice.sign(&self.key);
        let id = signed.invoice.id();
        book.issued_expiry.insert((expires_at.saturating_add(INVOICE_RETENTION), id));
        book.issued.insert(id, IssuedInvoice { signed: signed.clone(), status: InvoiceStatus::Open });
        Ok(self.changed(Response::Invoice(signed)))
    }

    /// An open invoice can no longer be paid; one being paid cannot be cancelled.
    pub(crate) fn cancel_invoice(&mut self, id: Hash32) -> Result<Output, EnclaveError> {
        let issued = self.state.invoices.issued.get_mut(&id).ok_or(EnclaveError::UnknownInvoice(id))?;
        match issued.status {
            InvoiceStatus::Open => issued.status = InvoiceStatus::Cancelled,
            InvoiceStatus::Cancelled => return Ok(Output { response: Response::Done, sealed: None }),
            InvoiceStatus::Pending(instance) => return Err(EnclaveError::InvoicePending(id, instance)),
            InvoiceStatus::Paid { .. } => return Err(EnclaveError::InvoicePaid(id)),
        }
        Ok(self.changed(Response::Done))
    }

    /// The payment request for a payee's invoice, once its signature holds: the payee, chain
    /// and amount are the invoice's (an any-amount invoice takes `amount`). Refused for an
    /// invoice this enclave has paid or is paying.
    pub(crate) fn pay_invoice(
        &mut self,
        signed: SignedInvoice,
        amount: Option<Amount>,
        max_fee: Amount,
        expires_at: u64,
        now: u64,
    ) -> Result<Output, EnclaveError> {
        signed.verify()?;
        let id = signed.invoice.id();
        let invoice = signed.invoice;
        if now > invoice.expires_at {
            return Err(EnclaveError::InvoiceExpired(id));
        }
        if !invoice.asset.is_well_formed() {
            return Err(EnclaveError::InvalidInvoice("a token at the zero address (ether is `Native`)"));
        }
        self.state.config.contract(invoice.chain).ok_or(EnclaveError::UnknownChain(invoice.chain))?;
        if invoice.payee == self.address() {
            return Err(EnclaveError::InvalidOrder("payee is the payer"));
        }
        let amount = match (invoice.amount, amount) {
            (Some(asked), None) => asked,
            (Some(asked), Some(offered)) if offered == asked => asked,
            (Some(_), Some(_)) => return Err(EnclaveError::InvalidInvoice("the invoice fixes the amount")),
            (None, Some(offered)) => offered,
            (None, None) => {
                return Err(EnclaveError::InvalidInvoice("an any-amount invoice needs an amount"));
            }
        };
        if amount.is_zero() {
            return Err(EnclaveError::ZeroAmount);
        }
        if self.state.invoices.paid.contains_key(&id) {
            return Err(EnclaveError::InvoicePaid(id));
        }
        // An order of ours for it still payable or in flight (its record goes when it ends;
        // an open one past its expiry can no longer be paid, even before it is pruned).
        let live = |o: &OrderRecord| o.status != OrderStatus::Open || now <= o.expires_at;
        if self.state.orders.values().any(|o| o.invoice == Some(id) && live(o)) {
            return Err(EnclaveError::InvoiceInFlight(id));
        }
        let nonce = self.state.next_nonce;
        let order = Order::Payment(PaymentRequest {
            chain: invoice.chain,
            asset: invoice.asset,
            payer: self.address(),
            payee: invoice.payee,
            amount,
            max_fee,
            nonce,
            expires_at: expires_at.min(invoice.expires_at),
            invoice: Some(id),
        });
        Ok(self.issue_order(order))
    }

    /// The receipt of this enclave's paid invoice (signed again on demand: the same bytes).
    pub(crate) fn invoice_receipt(&self, id: Hash32) -> Result<PaymentReceipt, EnclaveError> {
        let issued = self.state.invoices.issued.get(&id).ok_or(EnclaveError::UnknownInvoice(id))?;
        match issued.status {
            InvoiceStatus::Paid { instance, amount, payer } => {
                Ok(PaymentReceipt::sign(&self.key, id, instance, amount, payer))
            }
            InvoiceStatus::Pending(instance) => Err(EnclaveError::InvoicePending(id, instance)),
            InvoiceStatus::Open | InvoiceStatus::Cancelled => Err(EnclaveError::InvoiceNotPaid(id)),
        }
    }

    /// The receipts this batch's CONFIRMs earned this enclave's invoices.
    pub(crate) fn receipts_for(&self, results: &[Result<NodeItem, EnclaveError>]) -> Vec<PaymentReceipt> {
        results
            .iter()
            .filter_map(|r| match r {
                Ok(NodeItem::Finished { instance, outcome: Outcome::Apply }) => {
                    match self.state.instances.get(instance)?.invoice? {
                        InvoiceRole::Payee { invoice, .. } => self.invoice_receipt(invoice).ok(),
                        InvoiceRole::Payer { .. } => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    /// The invoices (as payee) whose status this batch's fresh items changed.
    pub(crate) fn invoice_updates(
        &self,
        results: &[Result<NodeItem, EnclaveError>],
        fresh: &[bool],
    ) -> Vec<(Hash32, InvoiceStatus)> {
        results
            .iter()
            .zip(fresh)
            .filter_map(|(r, fresh)| {
                let instance = match r {
                    Ok(NodeItem::Prepared { instance, .. } | NodeItem::Finished { instance, .. })
                        if *fresh =>
                    {
                        instance
                    }
                    _ => return None,
                };
                match self.state.instances.get(instance)?.invoice? {
                    InvoiceRole::Payee { invoice, .. } => {
                        Some((invoice, self.state.invoices.issued.get(&invoice)?.status))
                    }
                    InvoiceRole::Payer { .. } => None,
                }
            })
            .collect()
    }

    /// Keeps the payee's receipt for an invoice this enclave paid: it must be the payee's
    /// signature over exactly that payment.
    pub(crate) fn keep_receipt(&mut self, receipt: PaymentReceipt) -> Result<Output, EnclaveError> {
        receipt.verify()?;
        let me = self.address();
        let paid = self.state.invoices.paid.get_mut(&receipt.invoice).ok_or(EnclaveError::ReceiptMismatch)?;
        if paid.receipt.as_ref() == Some(&receipt) {
            return Ok(Output { response: Response::Done, sealed: None });
        }
        if receipt.payer != me
            || receipt.payee != paid.payee
            || receipt.instance != paid.instance
            || receipt.amount != paid.amount
        {
            return Err(EnclaveError::ReceiptMismatch);
        }
        paid.receipt = Some(receipt);
        Ok(self.changed(Response::Done))
    }

    /// A paid invoice's record on the payer's side, with the receipt if it arrived.
    pub(crate) fn paid_invoice(&self, id: Hash32) -> Result<PaidInvoice, EnclaveError> {
        self.state.invoices.paid.get(&id).cloned().ok_or(EnclaveError::UnknownInvoice(id))
    }
}
