//! Simulation-mode constants shared by `teepay deploy`, `hub`, `node` and `demo`. Without
//! TEE hardware, an attestation service is simulated by a well-known key, and the enclave
//! measurements are fixed values; a deployment for real hardware replaces all three.

use teepay_types::{Hash32, SigningKey};

pub const NODE_MEASUREMENT: Hash32 = [0x4e; 32];
pub const HUB_MEASUREMENT: Hash32 = [0x48; 32];
/// The simulated attestation service's key, in hex (configurable: `attestation_key`).
pub const DEFAULT_ATTESTATION_KEY: &str = "a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7";

pub fn attestation_key_from(hex: &str) -> anyhow::Result<SigningKey> {
    let bytes: [u8; 32] = teepay_types::ids::from_hex(hex)
        .ok_or_else(|| anyhow::anyhow!("attestation_key: expected 32 bytes of hex"))?;
    Ok(SigningKey::from_entropy(bytes)?)
}

pub fn attestation_key() -> SigningKey {
    attestation_key_from(DEFAULT_ATTESTATION_KEY).expect("valid default key")
}
