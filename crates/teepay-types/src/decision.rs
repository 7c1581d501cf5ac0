//! Decision certificates (DESIGN §10): a swap instance's CONFIRM or REFUND, signed by the hub
//! identity, so that any participant holding one can settle every chain without the hub.
//!
//! The digest must match `recordDecision` in `contracts/PaymentChannels.sol`:
//! `keccak256(abi.encode(keccak256("teepay/decision/v1"), hub, instanceId, applied))`. It names
//! no chain and no contract: one certificate is valid on every chain the swap touches.

use crate::channel::Outcome;
use crate::crypto::{Signature, SigningKey, keccak256, verify_signer};
use crate::ids::{Address, Hash32, InstanceId};
use borsh::{BorshDeserialize, BorshSerialize};

/// The hub's word on how a swap instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct DecisionCertificate {
    pub hub: Address,
    pub instance: InstanceId,
    pub outcome: Outcome,
    pub signature: Signature,
}

/// What the hub identity signs for a decision (an ABI encoding of four 32-byte words).
pub fn decision_digest(hub: Address, instance: InstanceId, outcome: Outcome) -> Hash32 {
    let mut buf = [0u8; 128];
    buf[0..32].copy_from_slice(&keccak256(b"teepay/decision/v1"));
    buf[44..64].copy_from_slice(&hub.0);
    buf[64..96].copy_from_slice(&instance.0);
    buf[127] = u8::from(outcome == Outcome::Apply);
    keccak256(&buf)
}

impl DecisionCertificate {
    /// Signs `outcome` for `instance` with the hub identity `key`.
    pub fn sign(key: &SigningKey, instance: InstanceId, outcome: Outcome) -> Self {
        let hub = key.address();
        let signature = key.sign_digest(&decision_digest(hub, instance, outcome));
        DecisionCertificate { hub, instance, outcome, signature }
    }

    /// True iff signed by `hub` (the one hub identity the verifier follows).
    pub fn is_signed_by(&self, hub: Address) -> bool {
        self.hub == hub
            && verify_signer(&decision_digest(self.hub, self.instance, self.outcome), &self.signature, hub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_binds_hub_instance_and_outcome() {
        let key = SigningKey::from_entropy([3; 32]).unwrap();
        let cert = DecisionCertificate::sign(&key, InstanceId([7; 32]), Outcome::Apply);
        assert!(cert.is_signed_by(key.address()));
        let other = SigningKey::from_entropy([4; 32]).unwrap().address();
        assert!(!cert.is_signed_by(other), "another hub's locks");
        let mut flipped = cert.clone();
        flipped.outcome = Outcome::Revert;
        assert!(!flipped.is_signed_by(key.address()), "the outcome is bound");
        let mut moved = cert.clone();
        moved.instance = InstanceId([8; 32]);
        assert!(!moved.is_signed_by(key.address()), "the instance is bound");
        let mut claimed = cert;
        claimed.hub = other;
        assert!(!claimed.is_signed_by(other), "naming another hub does not make its signature");
    }
}
