//! What a node reports to its event log (`teepay_events`): the streams of its API and its
//! webhooks. Everything is derived from what the enclave answered (only items that changed
//! its state: a retransmission answered again is not a new event) and from the batch the
//! host relayed; amounts come from the PREPARE's legs as the hub sent them.

use serde_json::{Value, json};
use std::collections::HashMap;
use teepay_enclave::{BatchResult, InvoiceStatus};
use teepay_types::{
    Address, HubItem, InstanceId, InstanceKind, NodeItem, Outcome, PaymentReceipt, SignedHubBatch,
};

/// A PREPARE as this node takes part in it: its role and what it receives and sends.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    kind: &'static str,
    role: &'static str,
    received: u128,
    sent: u128,
}

/// The parts this node plays in the batch's PREPAREs.
pub(crate) fn parts(me: Address, batch: &SignedHubBatch) -> HashMap<InstanceId, Part> {
    let mut parts = HashMap::new();
    for item in &batch.batch.items {
        let HubItem::Prepare(spec) = item else { continue };
        let (mut received, mut sent, mut role) = (0u128, 0u128, "forwarder");
        for leg in &spec.legs {
            for hop in &leg.hops {
                if hop.to == me {
                    received = received.saturating_add(hop.amount.0);
                }
                if hop.from == me {
                    sent = sent.saturating_add(hop.amount.0);
                }
            }
            if leg.source() == Some(me) {
                role = "payer";
            } else if leg.destination() == Some(me) && role != "payer" {
                role = "payee";
            }
        }
        let kind = match spec.kind {
            InstanceKind::MultiHop => "payment",
            InstanceKind::CrossChain => "swap",
        };
        parts.insert(spec.id, Part { kind, role, received, sent });
    }
    parts
}

fn hex(bytes: &[u8]) -> String {
    format!("0x{}", teepay_types::ids::to_hex(bytes))
}

/// The events of one batch's result, in order: `(kind, data)`.
pub(crate) fn batch_events(
    parts: &HashMap<InstanceId, Part>,
    result: &BatchResult,
) -> Vec<(&'static str, Value)> {
    let mut events = Vec::new();
    for (item, fresh) in result.results.iter().zip(&result.fresh) {
        let (Ok(item), true) = (item, fresh) else { continue };
        match item {
            NodeItem::Prepared { instance, .. } => {
                let mut data = json!({ "instance": instance.to_string() });
                if let Some(p) = parts.get(instance) {
                    data["kind"] = json!(p.kind);
                    data["role"] = json!(p.role);
                    data["received"] = json!(p.received.to_string());
                    data["sent"] = json!(p.sent.to_string());
                }
                events.push(("payment.locked", data));
            }
            NodeItem::Committed { instance } => {
                events.push(("payment.committed", json!({ "instance": instance.to_string() })));
            }
            NodeItem::Finished { instance, outcome } => {
                let kind = match outcome {
                    Outcome::Apply => "payment.succeeded",
                    Outcome::Revert => "payment.refunded",
                };
                events.push((kind, json!({ "instance": instance.to_string() })));
            }
            NodeItem::Nack { .. } => {}
        }
    }
    for (invoice, status) in &result.invoices {
        let id = hex(invoice);
        let event = match status {
            InvoiceStatus::Pending(instance) => {
                ("invoice.pending", json!({ "invoice": id, "instance": instance.to_string() }))
            }
            InvoiceStatus::Paid { instance, amount, payer } => {
                let receipt =
                    result.receipts.iter().find(|r| r.invoice == *invoice).map(PaymentReceipt::encode);
                let data = json!({ "invoice": id, "instance": instance.to_string(), "amount": amount.0.to_string(),
                    "payer": payer.to_string(), "receipt": receipt });
                ("invoice.paid", data)
            }
            InvoiceStatus::Open => ("invoice.open", json!({ "invoice": id })),
            InvoiceStatus::Cancelled => ("invoice.cancelled", json!({ "invoice": id })),
        };
        events.push(event);
    }
    events
}

/// A payee's receipt this node's enclave kept for an invoice it paid.
pub(crate) fn receipt_event(receipt: &PaymentReceipt) -> (&'static str, Value) {
    let data = json!({ "invoice": hex(&receipt.invoice), "instance": receipt.instance.to_string(),
        "amount": receipt.amount.0.to_string(), "payee": receipt.payee.to_string(), "receipt": receipt.encode() });
    ("receipt.received", data)
}
