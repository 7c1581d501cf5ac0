//! The invoice calls of the node's gRPC API (DESIGN §11): issue, list, cancel and pay
//! invoices, and fetch receipts. Arguments are parsed strictly before the enclave sees them;
//! the enclave decides everything else.

use crate::NodeError;
use crate::api::{NodeApi, node_status};
use teepay_api::pb;
use teepay_api::{parse_invoice, parse_invoice_ref, receipt_pb};
use teepay_enclave::{EnclaveError, InvoiceStatus, IssuedInvoice, Request, Response};
use teepay_link::host::now_ms;
use teepay_types::{Amount, ChainId, Hash32};
use tonic::Status;

/// An invoice lives an hour unless asked otherwise.
const DEFAULT_INVOICE_TTL_S: u64 = 3_600;

fn hex_id(id: &Hash32) -> String {
    format!("0x{}", teepay_types::ids::to_hex(id))
}

fn invoice_pb(issued: &IssuedInvoice, now: u64) -> pb::InvoiceInfo {
    let invoice = &issued.signed.invoice;
    let mut info = pb::InvoiceInfo {
        id: hex_id(&invoice.id()),
        encoded: issued.signed.encode(),
        payee: invoice.payee.to_string(),
        chain: invoice.chain.0,
        amount: invoice.amount.map(|a| a.0.to_string()).unwrap_or_default(),
        memo_hash: hex_id(&invoice.memo_hash),
        expires_at_ms: invoice.expires_at,
        asset: teepay_api::asset_pb(invoice.asset),
        ..Default::default()
    };
    info.status = match issued.status {
        InvoiceStatus::Open if now > invoice.expires_at => "expired".into(),
        InvoiceStatus::Open => "open".into(),
        InvoiceStatus::Pending(instance) => {
            info.instance = instance.to_string();
            "pending".into()
        }
        InvoiceStatus::Paid { instance, amount, payer } => {
            info.instance = instance.to_string();
            info.paid_amount = amount.0.to_string();
            info.payer = payer.to_string();
            "paid".into()
        }
        InvoiceStatus::Cancelled => "cancelled".into(),
    };
    info
}

fn invoice_status(e: NodeError) -> Status {
    match e {
        NodeError::Enclave(e @ (EnclaveError::InvalidInvoice(_) | EnclaveError::Invoice(_))) => {
            Status::invalid_argument(e.to_string())
        }
        NodeError::Enclave(e @ EnclaveError::UnknownInvoice(_)) => Status::not_found(e.to_string()),
        e => node_status(e),
    }
}

impl NodeApi {
    fn event(&self, kind: &str, data: serde_json::Value) {
        if let Some(log) = &self.node.events {
            log.append(kind, data, now_ms());
        }
    }

    async fn issued(&self, id: Hash32) -> Result<pb::InvoiceInfo, Status> {
        let Response::Invoices(list) = self.node.enclave(Request::Invoices).await.map_err(invoice_status)?
        else {
            return Err(Status::internal("unexpected enclave response"));
        };
        let issued = list.iter().find(|i| i.signed.invoice.id() == id);
        issued.map(|i| invoice_pb(i, now_ms())).ok_or_else(|| {
            Status::not_found(format!(
                "no invoice {} was issued by this node (or it was forgotten)",
                hex_id(&id)
            ))
        })
    }

    pub(crate) async fn create_invoice_call(
        &self,
        r: pb::CreateInvoiceRequest,
    ) -> Result<pb::InvoiceInfo, Status> {
        let chain = ChainId(r.chain);
        if !self.chains.contains(&chain) {
            return Err(Status::invalid_argument(format!(
                "chain: this node has no contract on chain {}",
                r.chain
            )));
        }
        let asset = self.asset_of(chain, "asset", &r.asset, &r.amount)?;
        let amount = if r.amount.trim().is_empty() {
            None
        } else {
            Some(self.amount_of(chain, asset, "amount", &r.amount, false).await?)
        };
        let ttl_s = if r.expires_in_s == 0 { DEFAULT_INVOICE_TTL_S } else { r.expires_in_s };
        let expires_at = now_ms().saturating_add(ttl_s.saturating_mul(1_000));
        let memo_hash = teepay_types::keccak256(r.memo.as_bytes());
        let request = Request::CreateInvoice { chain, asset, amount, memo_hash, expires_at };
        match self.node.enclave(request).await.map_err(invoice_status)? {
            Response::Invoice(signed) => {
                let issued = IssuedInvoice { signed, status: InvoiceStatus::Open };
                let info = invoice_pb(&issued, now_ms());
                self.event(
                    "invoice.created",
                    serde_json::json!({ "invoice": info.id, "encoded": info.encoded,
                    "chain": info.chain, "asset": info.asset, "amount": info.amount,
                    "expires_at_ms": info.expires_at_ms }),
                );
                Ok(info)
            }
            _ => Err(Status::internal("unexpected enclave response")),
        }
    }

    pub(crate) async fn list_invoices_call(&self) -> Result<pb::InvoiceList, Status> {
        let Response::Invoices(list) = self.node.enclave(Request::Invoices).await.map_err(invoice_status)?
        else {
            return Err(Status::internal("unexpected enclave response"));
        };
        let now = now_ms();
        let mut invoices: Vec<pb::InvoiceInfo> = list.iter().map(|i| invoice_pb(i, now)).collect();
        invoices.sort_by_key(|i| std::cmp::Reverse(i.expires_at_ms));
        Ok(pb::InvoiceList { invoices })
    }

    pub(crate) async fn cancel_invoice_call(&self, r: pb::InvoiceRef) -> Result<pb::InvoiceInfo, Status> {
        let invoice = parse_invoice_ref("invoice", &r.invoice)?;
        let mut info = self.issued(invoice).await?;
        self.node.enclave(Request::CancelInvoice { invoice }).await.map_err(invoice_status)?;
        // Cancelling an open invoice is the only change the enclave accepts.
        if info.status != "cancelled" {
            self.event("invoice.cancelled", serde_json::json!({ "invoice": info.id }));
            info.status = "cancelled".into();
        }
        Ok(info)
    }

    pub(crate) async fn pay_invoice_call(&self, r: pb::PayInvoiceRequest) -> Result<pb::Started, Status> {
        let invoice = parse_invoice("invoice", &r.invoice)?;
        let chain = self.off_chain(invoice.invoice.chain)?;
        let asset = invoice.invoice.asset;
        let amount = if r.amount.trim().is_empty() {
            None
        } else {
            Some(self.amount_of(chain, asset, "amount", &r.amount, false).await?)
        };
        let max_fee: Amount = self.amount_of(chain, asset, "max_fee", &r.max_fee, true).await?;
        let id = self.node.pay_invoice(invoice, amount, max_fee).await.map_err(invoice_status)?;
        Ok(pb::Started { instance: id.to_string() })
    }

    /// This node's own paid invoice's receipt (its enclave signs it), else the receipt of an
    /// invoice it paid as it reached this node.
    pub(crate) async fn receipt_call(&self, r: pb::InvoiceRef) -> Result<pb::ReceiptInfo, Status> {
        let invoice = parse_invoice_ref("invoice", &r.invoice)?;
        match self.node.enclave(Request::InvoiceReceipt { invoice }).await {
            Ok(Response::Receipt(receipt)) => return Ok(receipt_pb(&receipt)),
            Ok(_) => return Err(Status::internal("unexpected enclave response")),
            Err(NodeError::Enclave(EnclaveError::UnknownInvoice(_))) => {}
            Err(e) => return Err(invoice_status(e)),
        }
        match self.node.enclave(Request::PaidInvoice { invoice }).await.map_err(invoice_status)? {
            Response::PaidInvoice(paid) => match paid.receipt {
                Some(receipt) => Ok(receipt_pb(&receipt)),
                None => Err(Status::unavailable(format!(
                    "invoice {} was paid by instance {}, but the payee's receipt has not reached this node yet",
                    hex_id(&invoice),
                    paid.instance
                ))),
            },
            _ => Err(Status::internal("unexpected enclave response")),
        }
    }
}
