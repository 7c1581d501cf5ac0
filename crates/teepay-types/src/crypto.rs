//! Hashing, keys and Ethereum-style recoverable signatures (libsecp256k1).
//!
//! Every signed object in teepay signs `keccak256(tag || canonical body)`, where the tag is a
//! per-type domain separator, so a signature over one kind of message can never be replayed
//! as another kind.

use crate::ids::{Address, Hash32};
use borsh::{BorshDeserialize, BorshSerialize};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, SecretKey};
use std::fmt;

pub fn keccak256(data: &[u8]) -> Hash32 {
    alloy_primitives::keccak256(data).0
}

/// keccak256 over several slices without concatenating them first.
pub fn keccak256_parts(parts: &[&[u8]]) -> Hash32 {
    let mut hasher = alloy_primitives::Keccak256::new();
    for p in parts {
        hasher.update(p);
    }
    hasher.finalize().0
}

/// A 65-byte Ethereum signature `r || s || v` with `v` in {27, 28}, as `ecrecover` expects.
#[derive(Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Signature(pub [u8; 65]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig:{}", &crate::ids::to_hex(&self.0)[..8])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("entropy does not form a valid secp256k1 secret key")]
    InvalidSecretKey,
    #[error("malformed signature (bad r/s/v encoding)")]
    MalformedSignature,
    #[error("signature does not recover to a public key")]
    Unrecoverable,
    #[error("malformed public key (not a compressed secp256k1 point)")]
    MalformedPublicKey,
}

/// A secp256k1 signing key. Only ever constructed inside an enclave; deliberately not
/// serializable except through sealing, and its Debug output hides the secret.
#[derive(Clone)]
pub struct SigningKey {
    secret: SecretKey,
    address: Address,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?})", self.address)
    }
}

impl SigningKey {
    /// Derives a key from 32 bytes of injected entropy (the enclave has no RNG of its own).
    pub fn from_entropy(entropy: [u8; 32]) -> Result<Self, CryptoError> {
        let secret = SecretKey::from_secret_bytes(entropy).map_err(|_| CryptoError::InvalidSecretKey)?;
        let public = PublicKey::from_secret_key(&secret);
        Ok(Self { secret, address: address_of(&public) })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_secret_bytes()
    }

    pub fn sign_digest(&self, digest: &Hash32) -> Signature {
        let sig = RecoverableSignature::sign_ecdsa_recoverable(Message::from_digest(*digest), &self.secret);
        let (recid, compact) = sig.serialize_compact();
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&compact);
        out[64] = 27 + u8::from(recid);
        Signature(out)
    }
}

impl SigningKey {
    /// This key's public half, compressed: what an attestation report carries.
    pub fn public_key(&self) -> PublicKeyBytes {
        PublicKeyBytes(PublicKey::from_secret_key(&self.secret).serialize())
    }

    /// The session key shared with the holder of `peer`: ECDH between the two static keys
    /// (so both enclaves derive the same key whenever they meet, at attestation, and nothing
    /// about it needs sealing beyond a cache). Returns the peer's address with the key; the
    /// caller checks that the address is the enclave it attested.
    pub fn session_with(&self, peer: &PublicKeyBytes) -> Result<(Address, Hash32), CryptoError> {
        let public = peer.parse()?;
        let shared = secp256k1::ecdh::SharedSecret::new(&public, &self.secret);
        let mut ends = [self.address, address_of(&public)];
        ends.sort();
        let key = keccak256_parts(&[b"teepay/session/v1", shared.as_secret_bytes(), &ends[0].0, &ends[1].0]);
        Ok((address_of(&public), key))
    }
}

/// A compressed secp256k1 public key (33 bytes). An attestation report carries its enclave's,
/// so the two enclaves a pair of quotes introduces derive their session key at attestation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct PublicKeyBytes(pub [u8; 33]);

impl fmt::Debug for PublicKeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey:{}", &crate::ids::to_hex(&self.0)[..10])
    }
}

impl PublicKeyBytes {
    fn parse(&self) -> Result<PublicKey, CryptoError> {
        PublicKey::from_slice(&self.0).map_err(|_| CryptoError::MalformedPublicKey)
    }

    /// The Ethereum address of this key.
    pub fn address(&self) -> Result<Address, CryptoError> {
        self.parse().map(|p| address_of(&p))
    }
}

/// A message authentication code under a session key (keccak256 with the key as prefix:
/// keccak has no length-extension weakness, so this is a sound MAC, as KMAC is).
pub fn session_mac(key: &Hash32, digest: &Hash32) -> Hash32 {
    keccak256_parts(&[b"teepay/mac/v1", key, digest])
}

/// Compares two MACs in time independent of where they differ.
pub fn macs_equal(a: &Hash32, b: &Hash32) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Ethereum address of a public key: the last 20 bytes of keccak(uncompressed[1..]).
pub fn address_of(public: &PublicKey) -> Address {
    let uncompressed = public.serialize_uncompressed();
    let hash = keccak256(&uncompressed[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    Address(out)
}

/// Recovers the signer's address, as the contract's `ecrecover` would.
pub fn recover_signer(digest: &Hash32, signature: &Signature) -> Result<Address, CryptoError> {
    recover_public(digest, signature).map(|p| address_of(&p))
}

fn recover_public(digest: &Hash32, signature: &Signature) -> Result<PublicKey, CryptoError> {
    let v = signature.0[64];
    let recid = match v {
        27 | 28 => RecoveryId::try_from(i32::from(v - 27)).map_err(|_| CryptoError::MalformedSignature)?,
        _ => return Err(CryptoError::MalformedSignature),
    };
    let sig = RecoverableSignature::from_compact(&signature.0[..64], recid)
        .map_err(|_| CryptoError::MalformedSignature)?;
    // Reject high-s signatures: they are malleable and the contract rejects them too.
    let standard = sig.to_standard();
    let mut normalized = standard;
    normalized.normalize_s();
    if normalized != standard {
        return Err(CryptoError::MalformedSignature);
    }
    sig.recover_ecdsa(Message::from_digest(*digest)).map_err(|_| CryptoError::Unrecoverable)
}

/// True iff `signature` over `digest` recovers to `expected`.
pub fn verify_signer(digest: &Hash32, signature: &Signature, expected: Address) -> bool {
    matches!(recover_signer(digest, signature), Ok(a) if a == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dev_key_has_known_address() {
        // anvil/hardhat dev account #0.
        let sk =
            crate::ids::from_hex::<32>("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
                .unwrap();
        let key = SigningKey::from_entropy(sk).unwrap();
        assert_eq!(key.address().to_string(), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
    }

    #[test]
    fn sign_recover_round_trip_and_tamper() {
        let key = SigningKey::from_entropy([7; 32]).unwrap();
        let digest = keccak256(b"hello");
        let sig = key.sign_digest(&digest);
        assert_eq!(recover_signer(&digest, &sig), Ok(key.address()));
        let other = keccak256(b"hellp");
        assert!(!verify_signer(&other, &sig, key.address()));
        let mut bad = sig;
        bad.0[64] = 29;
        assert_eq!(recover_signer(&digest, &bad), Err(CryptoError::MalformedSignature));
    }

    #[test]
    fn both_ends_derive_the_same_session_key_and_no_one_else_does() {
        let (a, b, c) = (
            SigningKey::from_entropy([1; 32]).unwrap(),
            SigningKey::from_entropy([2; 32]).unwrap(),
            SigningKey::from_entropy([3; 32]).unwrap(),
        );
        let d = keccak256(b"x");
        let (from_b, at_a) = a.session_with(&b.public_key()).unwrap();
        let (from_a, at_b) = b.session_with(&a.public_key()).unwrap();
        assert_eq!((from_b, from_a), (b.address(), a.address()));
        assert_eq!(b.public_key().address(), Ok(b.address()));
        assert_eq!(at_a, at_b);
        let (_, a_with_c) = a.session_with(&c.public_key()).unwrap();
        assert_ne!(a_with_c, at_a);
        let tag = session_mac(&at_a, &d);
        assert!(macs_equal(&tag, &session_mac(&at_b, &d)));
        assert!(!macs_equal(&tag, &session_mac(&a_with_c, &d)));
        assert!(!macs_equal(&tag, &session_mac(&at_a, &keccak256(b"y"))));
        let mut bad = b.public_key();
        bad.0[0] = 5;
        assert_eq!(a.session_with(&bad), Err(CryptoError::MalformedPublicKey));
    }

    #[test]
    fn zero_entropy_is_refused() {
        assert_eq!(SigningKey::from_entropy([0; 32]).unwrap_err(), CryptoError::InvalidSecretKey);
    }
}

/// Which end of a node↔hub link signs (the node dials, the hub answers): part of the signed
/// digest so one side's handshake signature can never be reflected back as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, borsh::BorshSerialize, borsh::BorshDeserialize)]
pub enum LinkRole {
    Initiator,
    Responder,
}

/// What an enclave signs to authenticate a link handshake: its transcript (both ephemeral
/// keys) and its role, under a tag no other teepay signature uses.
pub fn link_digest(transcript: &Hash32, role: LinkRole) -> Hash32 {
    let role = [match role {
        LinkRole::Initiator => 1u8,
        LinkRole::Responder => 2u8,
    }];
    keccak256_parts(&[b"teepay/link/v1", transcript, &role])
}
