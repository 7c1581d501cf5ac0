//! `teepay invoice` and `teepay receipt`: a payee's invoices and the proof of payment
//! (DESIGN §11). Invoices are printable strings (bech32m, `teepay1…`) and, with `--qr`, a QR
//! code in the terminal; a receipt (`teepayrcpt1…`) is checked offline by anyone.

use crate::client::{NodeTarget, TokenUnits, call, human_asset, node, out, runtime};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use teepay_api::pb;
use teepay_api::pb::node_client::NodeClient;
use teepay_types::{PaymentReceipt, SignedInvoice};
use tonic::transport::Channel;

#[derive(clap::Args, Debug)]
pub struct InvoiceArgs {
    #[command(flatten)]
    t: NodeTarget,
    #[command(subcommand)]
    cmd: InvoiceCmd,
}

#[derive(clap::Subcommand, Debug)]
enum InvoiceCmd {
    /// Have this node's enclave sign an invoice (it is paid at most once, on its terms).
    Create {
        #[arg(long)]
        chain: u64,
        /// What the payer pays: `0.1eth`, `25gwei`, base units, or a token amount in its unit
        /// (`12.5usdc`). Omitted: any amount.
        #[arg(long, allow_hyphen_values = true)]
        amount: Option<String>,
        /// What it is paid in: `eth` (the default), a token's address or a configured symbol.
        /// A token unit in `--amount` names it too.
        #[arg(long, default_value = "")]
        asset: String,
        /// What it is for (only its hash goes into the invoice).
        #[arg(long, default_value = "")]
        memo: String,
        /// Seconds until it expires (at most 30 days).
        #[arg(long, default_value_t = 3_600)]
        expires_in: u64,
        /// Also print it as a QR code.
        #[arg(long)]
        qr: bool,
    },
    /// This node's invoices with their status (open, pending, paid, cancelled, expired).
    List,
    /// An open invoice of this node can no longer be paid.
    Cancel { invoice: String },
    /// What an invoice string says, once its payee's signature is checked (offline).
    Decode { invoice: String },
}

#[derive(clap::Args, Debug)]
pub struct ReceiptArgs {
    #[command(flatten)]
    t: NodeTarget,
    #[command(subcommand)]
    cmd: ReceiptCmd,
}

#[derive(clap::Subcommand, Debug)]
enum ReceiptCmd {
    /// The receipt of an invoice (by id or string): this node's own paid invoice, or one it
    /// paid.
    Get { invoice: String },
    /// Checks a receipt offline: its payee signed it, and (given the invoice) it proves
    /// payment of that invoice. Exits non-zero if not.
    Verify {
        receipt: String,
        #[arg(long)]
        invoice: Option<String>,
    },
}

fn invoice_json(i: &pb::InvoiceInfo) -> Value {
    json!({"id": i.id, "invoice": i.encoded, "payee": i.payee, "chain": i.chain, "asset": i.asset, "amount": i.amount,
        "memo_hash": i.memo_hash, "expires_at_ms": i.expires_at_ms, "status": i.status,
        "instance": i.instance, "paid_amount": i.paid_amount, "payer": i.payer})
}

fn invoice_text(i: &pb::InvoiceInfo, units: &TokenUnits) -> String {
    let amount = if i.amount.is_empty() { "any amount".to_string() } else { units.show(&i.amount, &i.asset) };
    let mut s = format!("{} {} on chain {}: {}", i.id, i.status, i.chain, amount);
    if !i.payer.is_empty() {
        s += &format!(
            ", paid {} by {} (instance {})",
            units.show(&i.paid_amount, &i.asset),
            i.payer,
            i.instance
        );
    }
    s
}

/// The invoice as a QR code of half-block characters (upper case: bech32m's compact QR
/// alphabet; the invoice reads back in either case).
fn qr(encoded: &str) -> Result<String> {
    let code = qrcode::QrCode::new(encoded.to_uppercase().as_bytes())?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

pub fn invoice(a: &InvoiceArgs) -> Result<ExitCode> {
    if let InvoiceCmd::Decode { invoice } = &a.cmd {
        let signed = SignedInvoice::decode(invoice)?;
        let i = &signed.invoice;
        let v = json!({"id": format!("0x{}", teepay_types::ids::to_hex(&i.id())), "payee": i.payee.to_string(),
            "chain": i.chain.0, "asset": teepay_api::asset_pb(i.asset), "amount": i.amount.map(|a| a.0.to_string()),
            "expires_at_ms": i.expires_at,
            "memo_hash": format!("0x{}", teepay_types::ids::to_hex(&i.memo_hash))});
        out(a.t.json, v, || {
            let asset = teepay_api::asset_pb(i.asset);
            let amount = i.amount.map_or("any amount".into(), |a| human_asset(&a.0.to_string(), &asset));
            format!("invoice of {} on chain {}: {amount}, expires at {} ms", i.payee, i.chain.0, i.expires_at)
        });
        return Ok(ExitCode::SUCCESS);
    }
    runtime()?.block_on(async {
        let mut c = node(&a.t.node).await?;
        let units = if a.t.json { TokenUnits::default() } else { TokenUnits::of(&mut c).await };
        match &a.cmd {
            InvoiceCmd::Create { chain, amount, asset, memo, expires_in, qr: show_qr } => {
                let req = pb::CreateInvoiceRequest {
                    chain: *chain,
                    asset: asset.clone(),
                    amount: amount.clone().unwrap_or_default(),
                    memo: memo.clone(),
                    expires_in_s: *expires_in,
                };
                let i = call(c.create_invoice(req).await)?;
                let code = if *show_qr { Some(qr(&i.encoded)?) } else { None };
                out(a.t.json, invoice_json(&i), || {
                    let mut s = format!("{}\n{}", invoice_text(&i, &units), i.encoded);
                    if let Some(code) = &code {
                        s = format!("{code}\n{s}");
                    }
                    s
                });
            }
            InvoiceCmd::List => {
                let list = call(c.list_invoices(pb::ListInvoicesRequest {}).await)?.invoices;
                out(a.t.json, json!({"invoices": list.iter().map(invoice_json).collect::<Vec<_>>()}), || {
                    if list.is_empty() {
                        return "no invoices".into();
                    }
                    list.iter().map(|i| invoice_text(i, &units)).collect::<Vec<_>>().join("\n")
                });
            }
            InvoiceCmd::Cancel { invoice } => {
                let i = call(c.cancel_invoice(pb::InvoiceRef { invoice: invoice.clone() }).await)?;
                out(a.t.json, invoice_json(&i), || invoice_text(&i, &units));
            }
            InvoiceCmd::Decode { .. } => unreachable!("answered above"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn receipt_json(r: &pb::ReceiptInfo) -> Value {
    json!({"receipt": r.encoded, "invoice": r.invoice, "instance": r.instance, "amount": r.amount,
        "payer": r.payer, "payee": r.payee})
}

pub fn receipt(a: &ReceiptArgs) -> Result<ExitCode> {
    match &a.cmd {
        ReceiptCmd::Verify { receipt, invoice } => {
            let r = PaymentReceipt::decode(receipt)?;
            let invoice = invoice.as_deref().map(SignedInvoice::decode).transpose()?;
            let proves = invoice.as_ref().map(|i| r.proves_payment_of(i));
            let v = json!({"valid": proves.unwrap_or(true), "payee": r.payee.to_string(),
                "payer": r.payer.to_string(), "amount": r.amount.0.to_string(), "instance": r.instance.to_string(),
                "invoice": format!("0x{}", teepay_types::ids::to_hex(&r.invoice))});
            let ok = proves != Some(false);
            // A receipt names its invoice, not the asset: the invoice says what was paid in.
            let paid = match &invoice {
                Some(i) => human_asset(&r.amount.0.to_string(), &teepay_api::asset_pb(i.invoice.asset)),
                None => format!("{} base units of the invoice's asset", r.amount.0),
            };
            out(a.t.json, v, || match proves {
                Some(true) => format!(
                    "valid: {} paid {} the invoice's {paid} (instance {})",
                    r.payer, r.payee, r.instance
                ),
                Some(false) => "INVALID: this receipt does not prove payment of that invoice".into(),
                None => format!(
                    "signed by payee {}: {} paid {paid} (instance {}); give --invoice to check it against the invoice",
                    r.payee, r.payer, r.instance
                ),
            });
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        ReceiptCmd::Get { invoice } => runtime()?.block_on(async {
            let mut c = node(&a.t.node).await?;
            let r = call(c.receipt(pb::InvoiceRef { invoice: invoice.clone() }).await)?;
            out(a.t.json, receipt_json(&r), || r.encoded.clone());
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// The payee's receipt for an invoice this node just paid, once it reached the node (the
/// hub passes it on; asking the status again fetches it from the hub if it was missed).
pub(crate) async fn await_receipt(c: &mut NodeClient<Channel>, invoice: &str) -> Result<pb::ReceiptInfo> {
    let started = Instant::now();
    loop {
        match c.receipt(pb::InvoiceRef { invoice: invoice.to_string() }).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => bail!("paid, but no receipt: {}", s.message()),
        }
    }
}
