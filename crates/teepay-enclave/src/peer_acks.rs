//! `--verify-peer-acks`: a COMMIT for an instance that asks for peer acks must carry every
//! participant's own signed PREPARED ack, so this enclave commits on evidence that each of
//! them locked, not on the hub enclave's word alone (defence in depth against a hub whose
//! enclave is compromised).

use crate::error::EnclaveError;
use crate::state::InstanceRecord;
use teepay_types::{Address, Hash32, InstanceId, PeerAck, leaf_hash, prepared_acks_digest};

/// Checks the acks a COMMIT forwards for the PREPARED instance `record`. Nothing to check
/// for an instance that did not ask for them.
pub(crate) fn check(
    record: &InstanceRecord,
    me: Address,
    hub: Address,
    instance: InstanceId,
    prepared_acks: &Hash32,
    acks: &[PeerAck],
) -> Result<(), EnclaveError> {
    if record.peers.is_empty() {
        return Ok(());
    }
    for (i, peer) in record.peers.iter().enumerate() {
        let ack =
            acks.get(i).filter(|a| a.node == *peer).ok_or(EnclaveError::MissingPeerAck(instance, *peer))?;
        // Our own ack needs no check: only we could have signed it, and it proves
        // nothing to us. Every other one must show this instance's lock, signed for the
        // very spec we locked for (another spec under the same id proves nothing).
        if *peer == me {
            continue;
        }
        if !ack.is_valid(hub, instance, &record.prepare_hash) {
            return Err(EnclaveError::ForgedPeerAck(instance, *peer));
        }
    }
    // The acks must be the very ones COMMIT's digest covers (and no others).
    let leaves: Vec<Hash32> = acks.iter().map(|a| leaf_hash(&a.item(instance))).collect();
    if acks.len() != record.peers.len() || prepared_acks_digest(&leaves) != *prepared_acks {
        return Err(EnclaveError::PeerAcksMismatch(instance));
    }
    Ok(())
}
