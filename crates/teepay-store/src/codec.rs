//! Column encodings shared by both backends: 0x-hex TEXT for addresses, ids and hashes;
//! decimal TEXT for 128-bit amounts.

use crate::{Result, StoreError};
use teepay_types::{Address, Amount, Hash32};

pub(crate) fn hex(bytes: &[u8]) -> String {
    format!("0x{}", teepay_types::ids::to_hex(bytes))
}

pub(crate) fn addr(a: Address) -> String {
    hex(&a.0)
}

pub(crate) fn amount(a: Amount) -> String {
    a.0.to_string()
}

pub(crate) fn parse_addr(s: &str) -> Result<Address> {
    Address::from_hex(s).ok_or_else(|| StoreError::Corrupt(format!("address {s:?}")))
}

pub(crate) fn parse_hash(s: &str) -> Result<Hash32> {
    teepay_types::ids::from_hex::<32>(s).ok_or_else(|| StoreError::Corrupt(format!("hash {s:?}")))
}

pub(crate) fn parse_amount(s: &str) -> Result<Amount> {
    s.parse::<u128>().map(Amount).map_err(|_| StoreError::Corrupt(format!("amount {s:?}")))
}
