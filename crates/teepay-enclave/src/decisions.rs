//! Decision certificates at a node (DESIGN §10): a swap's CONFIRM or REFUND signed by the hub
//! identity. The node keeps every one it receives, accepts one from anywhere (its host read it
//! from a contract, a peer passed it on) because the hub's signature is the proof, and builds
//! the transactions that take it, or a REVERT claim past a lock's deadline, to a contract.

use crate::error::EnclaveError;
use crate::state::{CERTIFICATE_RETENTION, InstanceStatus, NodeState};
use crate::{NodeEnclave, Output, Response};
use teepay_types::{
    Amount, ChainId, ChannelId, DecisionCertificate, GasParams, InstanceId, InstanceKind, Outcome, Platform,
    Signature,
};

impl NodeState {
    /// The certificate a swap's CONFIRM/REFUND must carry, checked against the hub; `None`
    /// for a multi-hop instance (its rounds need none). A swap decision without a valid
    /// certificate is refused: a node must never end a swap lock without the proof that
    /// lets it settle the other chains.
    pub(crate) fn round_certificate(
        &self,
        hub: teepay_types::Address,
        instance: InstanceId,
        outcome: Outcome,
        signature: Option<Signature>,
    ) -> Result<Option<DecisionCertificate>, EnclaveError> {
        match self.instances.get(&instance) {
            Some(record) if record.kind == InstanceKind::CrossChain => {
                let signature = signature.ok_or(EnclaveError::MissingCertificate(instance))?;
                let cert = DecisionCertificate { hub, instance, outcome, signature };
                if !cert.is_signed_by(hub) {
                    return Err(EnclaveError::BadCertificate(instance));
                }
                Ok(Some(cert))
            }
            _ => Ok(None),
        }
    }

    /// Keeps `cert` until [`CERTIFICATE_RETENTION`] after its swap's lock deadline. True if
    /// it was new.
    pub(crate) fn keep_certificate(&mut self, cert: DecisionCertificate) -> bool {
        if self.certificates.contains_key(&cert.instance) {
            return false;
        }
        let lock_deadline = self.instances.get(&cert.instance).map_or(0, |r| r.lock_deadline);
        self.certificate_expiry.insert((lock_deadline.saturating_add(CERTIFICATE_RETENTION), cert.instance));
        self.certificates.insert(cert.instance, cert);
        true
    }

    /// A certificate from anywhere: if the hub signed it, it ends this node's locks of the
    /// swap with its outcome (whatever phase this node reached: the contract settles any lock
    /// of the swap with this outcome, so the off-chain state must agree) and is kept. One for
    /// an instance this node holds no record of is refused: nothing of it is locked here, and
    /// keeping it would let anyone who posts certificates grow the sealed state.
    pub(crate) fn on_decision(
        &mut self,
        hub: teepay_types::Address,
        cert: DecisionCertificate,
        now: u64,
    ) -> Result<bool, EnclaveError> {
        if !cert.is_signed_by(hub) {
            return Err(EnclaveError::BadCertificate(cert.instance));
        }
        let record =
            self.instances.get(&cert.instance).ok_or(EnclaveError::UnknownInstance(cert.instance))?;
        if record.kind != InstanceKind::CrossChain {
            return Err(EnclaveError::NotASwap(cert.instance));
        }
        let changed = match record.status {
            InstanceStatus::Finished(done) if done == cert.outcome => false,
            InstanceStatus::Finished(_) => return Err(EnclaveError::ConflictingOutcome(cert.instance)),
            InstanceStatus::Prepared | InstanceStatus::Committed => {
                self.finish(cert.instance, cert.outcome, now)?;
                true
            }
        };
        Ok(self.keep_certificate(cert) || changed)
    }
}

impl<P: Platform> NodeEnclave<P> {
    pub(crate) fn certificate(&self, instance: InstanceId) -> Result<Output, EnclaveError> {
        let cert = self.state.certificates.get(&instance).ok_or(EnclaveError::NoCertificate(instance))?;
        Ok(Output { response: Response::Certificate(cert.clone()), sealed: None })
    }

    /// `recordDecision` on `chain`'s contract with the kept certificate of `instance`.
    pub(crate) fn build_record_decision(
        &self,
        chain: ChainId,
        instance: InstanceId,
        gas: GasParams,
    ) -> Result<Output, EnclaveError> {
        let contract = self.state.config.contract(chain).ok_or(EnclaveError::UnknownChain(chain))?;
        let cert = self.state.certificates.get(&instance).ok_or(EnclaveError::NoCertificate(instance))?;
        let input = teepay_types::record_decision_call(cert);
        self.build_tx(chain, contract, Amount(0), input, gas)
    }

    /// `claimRevert` with the channel's closing state (signed now if it was not: only once
    /// every swap lock on it is past its deadline, see `sign_close`).
    pub(crate) fn build_claim_revert(
        &mut self,
        channel: ChannelId,
        gas: GasParams,
        now: u64,
    ) -> Result<Output, EnclaveError> {
        let ch = self.state.channels.get(&channel).ok_or(EnclaveError::UnknownChannel(channel))?;
        let swap = InstanceKind::CrossChain;
        let (claimable, locks) = match &ch.status {
            crate::state::ChannelStatus::Closing(signed) => {
                (signed.state.locks.iter().any(|l| l.kind == swap), signed.state.locks.len())
            }
            crate::state::ChannelStatus::Open => (ch.locks.iter().any(|l| l.kind == swap), ch.locks.len()),
            crate::state::ChannelStatus::Settled => return Err(EnclaveError::ChannelClosed(channel)),
        };
        if !claimable {
            return Err(EnclaveError::NoSwapLock(channel));
        }
        // The claim carries the whole closing state, as the close does: the same gas rule.
        self.check_close_fee(&gas, locks)?;
        // Signing the closing state (if it was not yet) marks the state dirty: it is sealed
        // before this transaction leaves.
        let closing = self.closing_state(channel, now)?;
        let input = teepay_types::claim_revert_call(&closing);
        let (chain, contract) = (closing.state.chain, closing.state.contract);
        let tx = teepay_types::Eip1559Tx { chain, gas, to: Some(contract), value: Amount(0), input }
            .sign(&self.key);
        Ok(Output { response: Response::Transaction(tx), sealed: None })
    }
}
