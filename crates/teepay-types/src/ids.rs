//! Identifiers and amounts. Fixed-size newtypes so that a channel id can never be passed
//! where an instance id is expected, and amounts never silently overflow.

use borsh::{BorshDeserialize, BorshSerialize};
use std::fmt;

/// Writes bytes as lower-case hex (no dependency needed for something this small).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Parses hex with an optional `0x` prefix into exactly `N` bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

macro_rules! bytes_id {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub fn from_hex(s: &str) -> Option<Self> {
                from_hex::<$len>(s).map(Self)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "0x{}", to_hex(&self.0))
            }
        }
        impl fmt::Debug for $name {
            // Short form keeps traces readable; Display gives the full value.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}:{}", stringify!($name), &to_hex(&self.0)[..8])
            }
        }
    };
}

bytes_id!(
    /// An Ethereum address: an enclave's public identity (keccak of its public key).
    Address,
    20
);
bytes_id!(
    /// A payment channel, as derived by the contract from its parties and a nonce.
    ChannelId,
    32
);
bytes_id!(
    /// A payment or swap instance, chosen uniquely by the hub enclave.
    InstanceId,
    32
);

/// An EVM chain id (EIP-155).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize)]
pub struct ChainId(pub u64);

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain {}", self.0)
    }
}
impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain{}", self.0)
    }
}

/// An amount of the chain's native asset in wei. u128 covers every realistic balance
/// (3.4e38 wei) and keeps arithmetic cheap; there are no floats anywhere.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize)]
pub struct Amount(pub u128);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 32-byte hash (keccak-256 everywhere).
pub type Hash32 = [u8; 32];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let a = Address([0xab; 20]);
        assert_eq!(Address::from_hex(&a.to_string()), Some(a));
        assert_eq!(Address::from_hex("0x12"), None);
        assert_eq!(Address::from_hex(&"zz".repeat(20)), None);
    }

    #[test]
    fn amounts_never_wrap() {
        assert_eq!(Amount(u128::MAX).checked_add(Amount(1)), None);
        assert_eq!(Amount(0).checked_sub(Amount(1)), None);
    }
}
