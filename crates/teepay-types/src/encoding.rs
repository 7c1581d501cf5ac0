//! Canonical binary encoding: one version byte followed by the borsh encoding of the value.
//!
//! Borsh is canonical by construction (fixed-width little-endian integers, length-prefixed
//! sequences, no maps or floats in our types), so equal values always encode to equal bytes,
//! which is what signatures and batch leaf hashes need. Decoding is strict: wrong version,
//! truncation, trailing bytes, invalid enum tags and non-0/1 booleans are all errors.

use borsh::{BorshDeserialize, BorshSerialize};

/// The wire format version. Bump on any incompatible change to a wire type.
pub const WIRE_VERSION: u8 = 1;

/// Upper bound for any decoded message, so a malformed length prefix cannot make a
/// receiver allocate unbounded memory.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input")]
    Empty,
    #[error("unsupported wire version {0} (expected {WIRE_VERSION})")]
    Version(u8),
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes `value` canonically, prefixed with the wire version.
pub fn encode<T: BorshSerialize>(value: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Writing into a Vec cannot fail.
    value.serialize(&mut out).expect("writing to a Vec never fails");
    out
}

/// The canonical encoding without the version byte: what hashes and signatures cover
/// (the version is bound separately through each signature's domain tag).
pub fn body_bytes<T: BorshSerialize>(value: &T) -> Vec<u8> {
    borsh::to_vec(value).expect("writing to a Vec never fails")
}

pub fn decode<T: BorshDeserialize>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::Version(version));
    }
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    borsh::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}
