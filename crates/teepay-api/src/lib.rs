//! teepay's client API over gRPC (`proto/teepay.proto`, compiled with `protox`, so no
//! `protoc` is needed): the `Node` service each node daemon serves to its owner and the
//! `Hub` service. Also the strict argument parsing both servers share, so a malformed
//! amount or address gets the same INVALID_ARGUMENT message everywhere.

#[allow(clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("teepay.v1");
}

use teepay_types::{
    Address, Amount, Asset, ChainId, ChannelId, InstanceId, Order, SignedOrder, Transfer, decode, encode,
};
use tonic::Status;

/// A positive amount of wei: a whole number of wei, or a decimal with a unit (`0.1eth`,
/// `25gwei`; `teepay_types::units`). Anything else, a decimal without a unit included, is
/// refused with the forms it accepts.
pub fn parse_amount(field: &str, s: &str) -> Result<Amount, Status> {
    let amount = teepay_types::units::parse_amount(s, &teepay_types::units::ether_units())
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    if amount.is_zero() {
        return Err(Status::invalid_argument(format!("{field}: must be positive, got {}", s.trim())));
    }
    Ok(amount)
}

/// Like [`parse_amount`], but an empty string is zero and zero is allowed (fee limits).
pub fn parse_fee(field: &str, s: &str) -> Result<Amount, Status> {
    if s.trim().is_empty() {
        return Ok(Amount::ZERO);
    }
    teepay_types::units::parse_amount(s, &teepay_types::units::ether_units())
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

pub fn parse_address(field: &str, s: &str) -> Result<Address, Status> {
    Address::from_hex(s.trim())
        .ok_or_else(|| Status::invalid_argument(format!("{field}: not a 20-byte hex address: {s:?}")))
}

pub fn parse_channel(field: &str, s: &str) -> Result<ChannelId, Status> {
    ChannelId::from_hex(s.trim())
        .ok_or_else(|| Status::invalid_argument(format!("{field}: not a 32-byte hex id: {s:?}")))
}

pub fn parse_instance(field: &str, s: &str) -> Result<InstanceId, Status> {
    InstanceId::from_hex(s.trim())
        .ok_or_else(|| Status::invalid_argument(format!("{field}: not a 32-byte hex id: {s:?}")))
}

/// A transfer of ether, or of a token given by its address with amounts in base units (a
/// node's API reads token units and configured symbols first: `teepay-node`'s `assets`).
pub fn parse_transfer(field: &str, t: &pb::Transfer) -> Result<Transfer, Status> {
    let asset = parse_asset_address(&format!("{field}.asset"), &t.asset)?;
    let amount = |name: &str, s: &str, zero_ok: bool| -> Result<Amount, Status> {
        let name = format!("{field}.{name}");
        match asset {
            Asset::Native if zero_ok => parse_fee(&name, s),
            Asset::Native => parse_amount(&name, s),
            Asset::Erc20(_) => parse_base_units(&name, s, zero_ok),
        }
    };
    Ok(Transfer {
        chain: ChainId(t.chain),
        asset,
        counterparty: parse_address(&format!("{field}.counterparty"), &t.counterparty)?,
        amount: amount("amount", &t.amount, false)?,
        max_fee: amount("max_fee", &t.max_fee, true)?,
    })
}

/// Ether for an empty string or `eth`/`ether`, else an ERC-20 token by its address.
pub fn parse_asset_address(field: &str, s: &str) -> Result<Asset, Status> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("eth") || s.eq_ignore_ascii_case("ether") {
        return Ok(Asset::Native);
    }
    let token = Address::from_hex(s).ok_or_else(|| {
        Status::invalid_argument(format!("{field}: not \"eth\" nor a token's 20-byte hex address: {s:?}"))
    })?;
    Ok(Asset::from_token(token))
}

/// An amount in base units only (a plain whole number); empty is zero where `zero_ok`.
pub fn parse_base_units(field: &str, s: &str, zero_ok: bool) -> Result<Amount, Status> {
    if zero_ok && s.trim().is_empty() {
        return Ok(Amount::ZERO);
    }
    let amount = teepay_types::units::parse_amount(s, &[])
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    if amount.is_zero() && !zero_ok {
        return Err(Status::invalid_argument(format!("{field}: must be positive, got {}", s.trim())));
    }
    Ok(amount)
}

/// An asset as the API prints it: empty for ether, else the token's address.
pub fn asset_pb(asset: Asset) -> String {
    match asset {
        Asset::Native => String::new(),
        Asset::Erc20(token) => token.to_string(),
    }
}

pub fn transfer_pb(t: &Transfer) -> pb::Transfer {
    pb::Transfer {
        chain: t.chain.0,
        counterparty: t.counterparty.to_string(),
        amount: t.amount.0.to_string(),
        max_fee: t.max_fee.0.to_string(),
        asset: asset_pb(t.asset),
    }
}

/// A signed swap intent for the wire: canonical encoding in hex plus a readable summary.
pub fn intent_pb(order: &SignedOrder) -> Option<pb::Intent> {
    let Order::Swap(i) = &order.order else { return None };
    Some(pb::Intent {
        encoded: teepay_types::ids::to_hex(&encode(order)),
        party: i.party.to_string(),
        gives: i.gives.iter().map(transfer_pb).collect(),
        receives: i.receives.iter().map(transfer_pb).collect(),
        expires_at_ms: i.expires_at,
    })
}

/// Decodes a hex-encoded signed swap intent and checks its enclave signature.
pub fn parse_intent(field: &str, hex: &str) -> Result<SignedOrder, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("{field}: {why}"));
    // Far above any intent within the caps (~1 KiB encoded): checked before decoding.
    if hex.len() > MAX_INTENT_HEX {
        return Err(bad(&format!("longer than {MAX_INTENT_HEX} hex characters")));
    }
    let bytes = hex_bytes(hex.trim()).ok_or_else(|| bad("not hex"))?;
    let order: SignedOrder = decode(&bytes).map_err(|e| bad(&format!("not a signed order: {e}")))?;
    let Order::Swap(intent) = &order.order else {
        return Err(bad("not a swap intent"));
    };
    if !intent.within_caps() {
        return Err(bad(&format!(
            "an intent lists at most {} transfers",
            teepay_types::MAX_TRANSFERS_PER_INTENT
        )));
    }
    if !order.is_signed() {
        return Err(bad("not signed by its party's enclave"));
    }
    Ok(order)
}

/// Longest encoded intent the APIs accept (hex characters).
pub const MAX_INTENT_HEX: usize = 8_192;

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// An invoice id from either its hex id (`0x…`) or the printable invoice (`teepay1…`).
pub fn parse_invoice_ref(field: &str, s: &str) -> Result<teepay_types::Hash32, Status> {
    let s = s.trim();
    if let Some(id) = teepay_types::ids::from_hex::<32>(s) {
        return Ok(id);
    }
    parse_invoice(field, s).map(|i| i.invoice.id())
}

/// A printable invoice whose payee's signature holds.
pub fn parse_invoice(field: &str, s: &str) -> Result<teepay_types::SignedInvoice, Status> {
    teepay_types::SignedInvoice::decode(s).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A printable receipt whose payee's signature holds.
pub fn parse_receipt(field: &str, s: &str) -> Result<teepay_types::PaymentReceipt, Status> {
    teepay_types::PaymentReceipt::decode(s).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

pub fn receipt_pb(r: &teepay_types::PaymentReceipt) -> pb::ReceiptInfo {
    pb::ReceiptInfo {
        encoded: r.encode(),
        invoice: format!("0x{}", teepay_types::ids::to_hex(&r.invoice)),
        instance: r.instance.to_string(),
        amount: r.amount.0.to_string(),
        payer: r.payer.to_string(),
        payee: r.payee.to_string(),
    }
}

/// A server stream of events (`SubscribeInvoices`, `SubscribePayments`, `SubscribeInstances`).
pub type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

/// The events of `log` after cursor `after` whose kind `wanted` accepts, as a server stream.
/// A cursor the log no longer covers is refused with OUT_OF_RANGE, saying where to resume.
pub fn event_stream(
    log: &std::sync::Arc<teepay_events::EventLog>,
    after: u64,
    wanted: impl Fn(&str) -> bool + Send + 'static,
) -> Result<EventStream, Status> {
    use tokio_stream::StreamExt;
    let refuse = |e: teepay_events::EventError| match e {
        teepay_events::EventError::Closed => Status::unavailable(e.to_string()),
        _ => Status::out_of_range(e.to_string()),
    };
    let sub = log.subscribe(after).map_err(refuse)?;
    let events = tokio_stream::wrappers::ReceiverStream::new(teepay_events::forward(sub, wanted));
    Ok(Box::pin(events.map(move |e| {
        e.map(|e| pb::Event { seq: e.seq, at_ms: e.at_ms, kind: e.kind, data: e.data.to_string() })
            .map_err(refuse)
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_strict() {
        assert_eq!(parse_amount("amount", "1000").unwrap(), Amount(1000));
        for bad in ["0", "-5", "", "1.5", "1e18", "0x10", "340282366920938463463374607431768211456"] {
            let e = parse_amount("amount", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().starts_with("amount: "), "{}", e.message());
        }
        assert!(parse_amount("a", "340282366920938463463374607431768211455").is_ok(), "2^128-1 fits");
        assert_eq!(parse_fee("max_fee", "").unwrap(), Amount::ZERO);
        // Units: what people write, exact; a decimal without one is refused as ambiguous.
        assert_eq!(parse_amount("amount", "0.1eth").unwrap(), Amount(100_000_000_000_000_000));
        assert_eq!(parse_amount("amount", "25 gwei").unwrap(), Amount(25_000_000_000));
        assert_eq!(parse_fee("max_fee", "1gwei").unwrap(), Amount(1_000_000_000));
        assert_eq!(parse_fee("max_fee", "0").unwrap(), Amount::ZERO);
        let e = parse_amount("amount", "1.5").unwrap_err();
        assert!(e.message().contains("ambiguous") && e.message().contains("Accepted"), "{}", e.message());
        let e = parse_amount("amount", "0eth").unwrap_err();
        assert!(e.message().contains("must be positive"), "{}", e.message());
    }

    #[test]
    fn addresses_and_intents_are_strict() {
        assert!(parse_address("payee", "0x0000000000000000000000000000000000000001").is_ok());
        for bad in [
            "",
            "0x12",
            "zz00000000000000000000000000000000000001",
            "0x00000000000000000000000000000000000000011",
        ] {
            assert!(parse_address("payee", bad).is_err(), "{bad}");
        }
        assert!(parse_intent("intent", "0xzz").is_err());
        assert!(parse_intent("intent", "0x0102").is_err());
        assert!(parse_instance("instance", "0x01").is_err());
    }
}
