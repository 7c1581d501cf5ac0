//! The messages a node and the hub exchange over a link (canonical encoding: version byte +
//! borsh, strict decoding). Round messages keep their own enclave signatures; the link only
//! carries them.

use borsh::{BorshDeserialize, BorshSerialize};
use teepay_types::{
    InstanceId, PaymentReceipt, Quote, SignedHubBatch, SignedNodeAck, SignedOrder, SignedRefundRequest,
    decode, encode,
};

/// Node → hub.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum NodeMessage {
    /// The node enclave's attestation quote, so the hub enclave can admit it.
    Register(Quote),
    /// The node enclave's signed answer to one batch.
    Ack(SignedNodeAck),
    /// The node enclave asks to refund an instance it takes part in.
    Refund(SignedRefundRequest),
    /// A payment request signed by this node's enclave (the payer).
    Pay {
        request: u64,
        order: SignedOrder,
    },
    /// A swap: every party's signed intent (collected by this node or an exchange).
    Swap {
        request: u64,
        intents: Vec<SignedOrder>,
    },
    Status {
        request: u64,
        instance: InstanceId,
    },
    /// A payee's receipt for an invoice its enclave saw paid (signed by that enclave): the
    /// hub checks it against the instance and passes it on to the payer.
    Receipt(PaymentReceipt),
}

/// What happened to an instance, as the hub reports it.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum WireStatus {
    Unknown,
    InFlight,
    Succeeded,
    Refunded(String),
}

/// Hub → node.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum HubMessage {
    /// The hub enclave's quote (the node enclave attests it before accepting rounds).
    Welcome(Quote),
    /// Round messages for this node, signed by the hub enclave.
    Batch(SignedHubBatch),
    /// A payment or swap request was routed and started.
    Accepted {
        request: u64,
        instance: InstanceId,
    },
    /// A request was refused before starting (no route, bad order, mismatched intents…).
    Refused {
        request: u64,
        reason: String,
    },
    Status {
        request: u64,
        instance: InstanceId,
        status: WireStatus,
    },
    /// The payee's receipt for an invoice this node paid (self-authenticating: the node's
    /// enclave keeps it only if it is the payee's signature over exactly its payment).
    Receipt(PaymentReceipt),
}

impl NodeMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, teepay_types::DecodeError> {
        decode(bytes)
    }
}

impl HubMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, teepay_types::DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_bytes() {
        let m = HubMessage::Refused { request: 7, reason: "no route".into() };
        assert_eq!(HubMessage::from_bytes(&m.to_bytes()), Ok(m.clone()));
        let s = NodeMessage::Status { request: 1, instance: InstanceId([3; 32]) };
        assert_eq!(NodeMessage::from_bytes(&s.to_bytes()), Ok(s.clone()));
        let mut bytes = s.to_bytes();
        bytes.push(0);
        assert!(NodeMessage::from_bytes(&bytes).is_err(), "trailing bytes");
        assert!(NodeMessage::from_bytes(&[]).is_err(), "empty");
        assert!(NodeMessage::from_bytes(&[teepay_types::WIRE_VERSION, 200]).is_err(), "unknown variant");
        let mut wrong = s.to_bytes();
        wrong[0] ^= 0xff;
        assert!(NodeMessage::from_bytes(&wrong).is_err(), "unknown version");
    }
}
