//! Sealing: authenticated encryption of an enclave's state under a platform sealing key,
//! bound to a monotonic counter so that a host cannot roll the enclave back (DESIGN §4, §7).

use borsh::{BorshDeserialize, BorshSerialize};
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Services a TEE platform provides to an enclave. In simulation mode an in-memory struct
/// stands in for the hardware; on SGX these map to `EGETKEY` and a monotonic counter service.
pub trait Platform {
    /// A key only this enclave (this measurement on this machine) can derive.
    fn sealing_key(&self) -> [u8; 32];
    /// Current value of the enclave's monotonic counter (survives crashes).
    fn counter(&self) -> u64;
    /// Increments the counter and returns the new value.
    fn increment_counter(&mut self) -> u64;
    /// Called with the blob sealed under the counter just incremented. A platform that keeps
    /// the counter in storage writes both together, so a crash can never leave a counter
    /// without the blob that matches it (which would brick the enclave: every older blob is
    /// stale by design).
    fn record_sealed(&mut self, _blob: &[u8]) {}
    /// True when `record_sealed` already stores each blob durably, so the host need not
    /// write its own copy before releasing the outputs.
    fn persists_sealed(&self) -> bool {
        false
    }
}

/// The simulated platform: a sealing key plus a counter that the harness keeps across
/// enclave "crashes", as hardware would.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SimPlatform {
    pub sealing_key: [u8; 32],
    pub counter: u64,
}

impl SimPlatform {
    pub fn new(sealing_key: [u8; 32]) -> Self {
        Self { sealing_key, counter: 0 }
    }
}

impl Platform for SimPlatform {
    fn sealing_key(&self) -> [u8; 32] {
        self.sealing_key
    }
    fn counter(&self) -> u64 {
        self.counter
    }
    fn increment_counter(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed blob is malformed")]
    Malformed,
    #[error("sealed blob failed authentication (tampered, or sealed by another enclave)")]
    Tampered,
    #[error("sealed blob is stale: counter {blob} but the platform counter is {platform} (rollback refused)")]
    Stale { blob: u64, platform: u64 },
    #[error("sealed state authenticates but does not decode")]
    Undecodable,
}

#[derive(BorshSerialize, BorshDeserialize)]
struct Envelope {
    counter: u64,
    ciphertext: Vec<u8>,
}

fn aad(domain: &[u8], counter: u64) -> Vec<u8> {
    let mut aad = domain.to_vec();
    aad.extend_from_slice(&counter.to_le_bytes());
    aad
}

fn nonce(counter: u64) -> Nonce {
    // The counter never repeats for a given sealing key, so neither does the nonce.
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    *Nonce::from_slice(&n)
}

/// Seals `plaintext`: increments the platform counter and binds the blob to its new value.
/// The previous blob becomes stale at once, so the host must persist this one before it
/// releases anything the enclave produced alongside it.
pub fn seal<P: Platform>(platform: &mut P, domain: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(ENVELOPE_HEADER + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(&[0; ENVELOPE_HEADER]);
    blob.extend_from_slice(plaintext);
    seal_buffer(platform, domain, blob)
}

/// Bytes before the ciphertext in a blob: the borsh encoding of [`Envelope`]'s counter (u64)
/// and the ciphertext's length (u32), both little-endian.
const ENVELOPE_HEADER: usize = 12;
const TAG_LEN: usize = 16;

/// Seals `blob[ENVELOPE_HEADER..]` in place and fills in the header: the blob is exactly
/// `borsh(Envelope { counter, ciphertext })`, built without copying the (large) state twice.
fn seal_buffer<P: Platform>(platform: &mut P, domain: &[u8], mut blob: Vec<u8>) -> Vec<u8> {
    let counter = platform.increment_counter();
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&platform.sealing_key()));
    let tag = cipher
        .encrypt_in_place_detached(&nonce(counter), &aad(domain, counter), &mut blob[ENVELOPE_HEADER..])
        .expect("ChaCha20Poly1305 encryption of an in-memory buffer cannot fail");
    blob.extend_from_slice(&tag);
    let len = u32::try_from(blob.len() - ENVELOPE_HEADER).expect("sealed state below 4 GiB");
    blob[..8].copy_from_slice(&counter.to_le_bytes());
    blob[8..12].copy_from_slice(&len.to_le_bytes());
    platform.record_sealed(&blob);
    blob
}

/// Opens a blob, refusing anything but the latest one sealed on this platform.
pub fn unseal<P: Platform>(platform: &P, domain: &[u8], blob: &[u8]) -> Result<Vec<u8>, SealError> {
    let env: Envelope = borsh::from_slice(blob).map_err(|_| SealError::Malformed)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&platform.sealing_key()));
    let plaintext = cipher
        .decrypt(&nonce(env.counter), Payload { msg: &env.ciphertext, aad: &aad(domain, env.counter) })
        .map_err(|_| SealError::Tampered)?;
    if env.counter != platform.counter() {
        return Err(SealError::Stale { blob: env.counter, platform: platform.counter() });
    }
    Ok(plaintext)
}

/// Seals a whole value (its canonical encoding): what both enclaves persist.
pub fn seal_value<P: Platform, T: BorshSerialize>(platform: &mut P, domain: &[u8], value: &T) -> Vec<u8> {
    let mut blob = vec![0; ENVELOPE_HEADER];
    value.serialize(&mut blob).expect("writing to a Vec never fails");
    seal_buffer(platform, domain, blob)
}

/// Opens a blob sealed by [`seal_value`], with the same rollback protection as [`unseal`].
pub fn unseal_value<P: Platform, T: BorshDeserialize>(
    platform: &P,
    domain: &[u8],
    blob: &[u8],
) -> Result<T, SealError> {
    let plaintext = unseal(platform, domain, blob)?;
    borsh::from_slice(&plaintext).map_err(|_| SealError::Undecodable)
}

#[cfg(test)]
mod envelope_tests {
    use super::*;

    /// The in-place sealer writes exactly what borsh would for the envelope.
    #[test]
    fn in_place_blob_is_the_borsh_envelope() {
        let mut p = SimPlatform::new([3; 32]);
        let blob = seal(&mut p, b"d", b"hello");
        let env: Envelope = borsh::from_slice(&blob).unwrap();
        assert_eq!(env.counter, p.counter());
        assert_eq!(env.ciphertext.len(), 5 + TAG_LEN);
        assert_eq!(unseal(&p, b"d", &blob).unwrap(), b"hello");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_unseal_round_trip() {
        let mut p = SimPlatform::new([5; 32]);
        let blob = seal(&mut p, b"d", b"state");
        assert_eq!(unseal(&p, b"d", &blob).unwrap(), b"state");
    }

    #[test]
    fn stale_tampered_and_foreign_blobs_are_refused() {
        let mut p = SimPlatform::new([5; 32]);
        let old = seal(&mut p, b"d", b"old");
        let new = seal(&mut p, b"d", b"new");
        assert_eq!(unseal(&p, b"d", &old), Err(SealError::Stale { blob: 1, platform: 2 }));
        let mut bad = new.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(unseal(&p, b"d", &bad), Err(SealError::Tampered));
        assert_eq!(unseal(&p, b"other", &new), Err(SealError::Tampered));
        let other = SimPlatform { sealing_key: [6; 32], counter: 2 };
        assert_eq!(unseal(&other, b"d", &new), Err(SealError::Tampered));
        assert_eq!(unseal(&p, b"d", &[1, 2]), Err(SealError::Malformed));
    }
}
