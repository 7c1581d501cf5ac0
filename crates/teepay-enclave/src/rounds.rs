//! Handling of each round message (DESIGN §6). Each handler validates first and mutates
//! only when every check passed, so a refused item leaves the state untouched.
//! Handlers are idempotent for exact duplicates: a retransmitted item gets the same answer.

use crate::consent::plan_prepare;
use crate::error::EnclaveError;
use crate::state::{Channel, InstanceRecord, InstanceStatus, NodeState, OrderStatus, UNSEEN_SEQ};
use teepay_types::{
    Address, ChannelId, Hash32, InstanceId, InstanceKind, InstanceSpec, NodeItem, Outcome, Phase, Signature,
};

/// The answer to one item and whether the state changed (and so must be sealed).
pub(crate) type ItemResult = Result<(NodeItem, bool), EnclaveError>;

impl NodeState {
    /// `prepare_hash` is the PREPARE item's leaf hash (computed for the batch digest anyway),
    /// which identifies the spec.
    pub(crate) fn on_prepare(
        &mut self,
        me: Address,
        hub: Address,
        spec: &InstanceSpec,
        prepare_hash: Hash32,
        now: u64,
    ) -> ItemResult {
        if let Some(record) = self.instances.get(&spec.id) {
            // A retransmitted PREPARE we already acked gets the same ack; anything else
            // with a known id is a replay.
            if record.prepare_hash == prepare_hash
                && record.status == InstanceStatus::Prepared
                && !record.ejected
            {
                return Ok((self.prepared_item(spec.id, &record.channels), false));
            }
            return Err(EnclaveError::InstanceReplayed(spec.id));
        }
        // No record: new, or finished and pruned. Ids follow the hub's sequence, so anything
        // below the replay floor is refused whatever the host says the time is.
        if spec.seq < self.replay_floor && spec.id == teepay_types::instance_id(hub, spec.seq) {
            return Err(EnclaveError::InstanceReplayed(spec.id));
        }
        let plan = plan_prepare(self, me, hub, spec, now).map_err(EnclaveError::Refused)?;
        let mut channels: Vec<ChannelId> = Vec::with_capacity(plan.locks.len());
        for (channel_id, lock) in plan.locks {
            let channel =
                self.channels.get_mut(&channel_id).expect("plan_prepare checked the channel exists");
            channel.locks.push(lock);
            channel.version += 1;
            channels.push(channel_id);
        }
        if let Some(nonce) = plan.order_nonce {
            self.orders.get_mut(&nonce).expect("plan_prepare checked the order").status =
                OrderStatus::InFlight(spec.id);
        }
        if let Some(role) = plan.invoice {
            self.invoice_prepared(role, spec.id);
        }
        let record = InstanceRecord {
            seq: spec.seq,
            finished_at: 0,
            prepare_hash,
            kind: spec.kind,
            status: InstanceStatus::Prepared,
            channels,
            order_nonce: plan.order_nonce,
            ejected: false,
            peers: if spec.peer_acks { spec.participants().into_iter().collect() } else { Vec::new() },
            lock_deadline: spec.lock_deadline,
            invoice: plan.invoice,
        };
        let item = self.prepared_item(spec.id, &record.channels);
        self.instances.insert(spec.id, record);
        Ok((item, true))
    }

    fn prepared_item(&self, instance: InstanceId, channels: &[ChannelId]) -> NodeItem {
        let states = channels.iter().map(|c| self.channels[c].state_for(instance)).collect();
        NodeItem::Prepared { instance, states, signature: None }
    }

    /// `check` vets the COMMIT against the record of a PREPARED instance before anything
    /// changes (the peer acks it forwards); a retransmitted COMMIT gets the same answer.
    pub(crate) fn on_commit(
        &mut self,
        instance: InstanceId,
        check: impl FnOnce(&InstanceRecord) -> Result<(), EnclaveError>,
    ) -> ItemResult {
        let record = self.instances.get_mut(&instance).ok_or(EnclaveError::UnknownInstance(instance))?;
        if record.ejected {
            return Err(EnclaveError::InstanceEjected(instance));
        }
        match record.status {
            InstanceStatus::Committed => return Ok((NodeItem::Committed { instance }, false)),
            InstanceStatus::Finished(_) => return Err(EnclaveError::InstanceFinished(instance)),
            InstanceStatus::Prepared => {}
        }
        check(record)?;
        for id in &record.channels {
            let channel = self.channels.get_mut(id).expect("instance channels exist");
            if let Some(i) = channel.lock_index(instance) {
                channel.locks[i].phase = Phase::Committed;
                channel.version += 1;
            }
        }
        record.status = InstanceStatus::Committed;
        // The peer list served only to check COMMIT's acks: not kept in the sealed state.
        record.peers = Vec::new();
        Ok((NodeItem::Committed { instance }, true))
    }

    /// CONFIRM; a swap's must carry the hub's decision certificate, which is kept.
    pub(crate) fn on_confirm(
        &mut self,
        hub: Address,
        instance: InstanceId,
        certificate: Option<Signature>,
        now: u64,
    ) -> ItemResult {
        self.decided(hub, instance, Outcome::Apply, certificate, |state| {
            let record = state.instances.get(&instance).ok_or(EnclaveError::UnknownInstance(instance))?;
            match record.status {
                InstanceStatus::Committed => state.finish(instance, Outcome::Apply, now),
                InstanceStatus::Prepared => Err(EnclaveError::NotCommitted(instance)),
                InstanceStatus::Finished(outcome) => state.repeat_finished(instance, outcome, Outcome::Apply),
            }
        })
    }

    /// REFUND; a swap's must carry the hub's decision certificate, which is kept.
    pub(crate) fn on_refund(
        &mut self,
        hub: Address,
        instance: InstanceId,
        certificate: Option<Signature>,
        now: u64,
    ) -> ItemResult {
        self.decided(hub, instance, Outcome::Revert, certificate, |state| state.refund(instance, now))
    }

    /// Checks a decision's certificate (a swap's must carry a valid one), then `apply`s the
    /// decision; the certificate is kept only if that succeeded.
    fn decided(
        &mut self,
        hub: Address,
        instance: InstanceId,
        outcome: Outcome,
        certificate: Option<Signature>,
        apply: impl FnOnce(&mut Self) -> ItemResult,
    ) -> ItemResult {
        let cert = self.round_certificate(hub, instance, outcome, certificate)?;
        let (answer, changed) = apply(self)?;
        Ok((answer, cert.is_some_and(|c| self.keep_certificate(c)) || changed))
    }

    fn refund(&mut self, instance: InstanceId, now: u64) -> ItemResult {
        let Some(record) = self.instances.get(&instance) else {
            // Refunded before its PREPARE reached us (reordering, or we NACKed it): remember
            // the outcome, so that a late PREPARE can never lock funds for an instance the hub
            // may already have completed. Pruned like any finished record; by then the
            // PREPARE is long past its deadline.
            self.record_unseen(instance, Outcome::Revert, now);
            return Ok((NodeItem::Finished { instance, outcome: Outcome::Revert }, true));
        };
        match (record.status, record.kind) {
            (InstanceStatus::Finished(outcome), _) => {
                self.repeat_finished(instance, outcome, Outcome::Revert)
            }
            (InstanceStatus::Committed, InstanceKind::MultiHop) => {
                Err(EnclaveError::RefundAfterCommit(instance))
            }
            _ => self.finish(instance, Outcome::Revert, now),
        }
    }

    /// RESOLVE: the hub enclave follows an outcome its host reported from the chain. The hub
    /// host is not trusted with that report (it could invent an outcome the protocol allows,
    /// e.g. REVERT of a PREPARED instance, while the contract fixed the other one), so a lock
    /// this node holds ends only with the outcome its *own* host reported from the contract
    /// ([`NodeState::on_chain_outcome`]); until then RESOLVE is refused and the hub retransmits
    /// it. An honest node thus never settles a channel against the chain, whatever the hub
    /// host says. With no record (the PREPARE never arrived) nothing is locked: the outcome
    /// is kept as a marker so that a late PREPARE cannot lock funds.
    pub(crate) fn on_resolve(&mut self, instance: InstanceId, outcome: Outcome, now: u64) -> ItemResult {
        let Some(record) = self.instances.get(&instance) else {
            self.record_unseen(instance, outcome, now);
            return Ok((NodeItem::Finished { instance, outcome }, true));
        };
        if record.kind == InstanceKind::CrossChain {
            return Err(EnclaveError::ResolveOnSwap(instance));
        }
        match record.status {
            InstanceStatus::Finished(done) => self.repeat_finished(instance, done, outcome),
            InstanceStatus::Prepared | InstanceStatus::Committed => {
                Err(EnclaveError::OutcomeNotOnChain(instance))
            }
        }
    }

    /// This node's host saw the contract fix `outcome` for `instance` (`InstanceResolved`, at
    /// confirmation depth): every lock of the instance this node holds ends with it. A lying
    /// host only hurts its own node, as with every chain report. Returns whether the state
    /// changed (a repeat changes nothing).
    pub(crate) fn on_chain_outcome(
        &mut self,
        instance: InstanceId,
        outcome: Outcome,
        now: u64,
    ) -> Result<bool, EnclaveError> {
        let Some(record) = self.instances.get_mut(&instance) else {
            self.record_unseen(instance, outcome, now);
            return Ok(true);
        };
        if record.kind == InstanceKind::CrossChain {
            return Err(EnclaveError::ResolveOnSwap(instance));
        }
        match record.status {
            InstanceStatus::Finished(done) if done == outcome => Ok(false),
            // A marker left by a RESOLVE for an instance this node never took holds no value:
            // the contract's outcome replaces what a misinformed hub said.
            InstanceStatus::Finished(_) if record.seq == UNSEEN_SEQ => {
                record.status = InstanceStatus::Finished(outcome);
                Ok(true)
            }
            InstanceStatus::Finished(_) => Err(EnclaveError::ConflictingOutcome(instance)),
            InstanceStatus::Prepared | InstanceStatus::Committed => {
                self.finish(instance, outcome, now)?;
                Ok(true)
            }
        }
    }

    fn repeat_finished(&self, instance: InstanceId, done: Outcome, asked: Outcome) -> ItemResult {
        if done == asked {
            Ok((NodeItem::Finished { instance, outcome: done }, false))
        } else {
            Err(EnclaveError::ConflictingOutcome(instance))
        }
    }

    /// A finished record for an instance whose PREPARE this node never took (its `seq` is not
    /// known: [`UNSEEN_SEQ`], which pruning does not count towards the replay floor).
    fn record_unseen(&mut self, instance: InstanceId, outcome: Outcome, now: u64) {
        self.instances.insert(
            instance,
            InstanceRecord {
                seq: UNSEEN_SEQ,
                finished_at: now,
                prepare_hash: [0; 32],
                kind: InstanceKind::MultiHop,
                status: InstanceStatus::Finished(outcome),
                channels: Vec::new(),
                order_nonce: None,
                ejected: false,
                peers: Vec::new(),
                lock_deadline: 0,
                invoice: None,
            },
        );
        self.finished.insert((now, UNSEEN_SEQ, instance));
    }

    /// Ends an instance here: every lock it holds on a still-open channel applies or
    /// reverts (locks on channels settled on-chain were resolved by the contract).
    pub(crate) fn finish(&mut self, instance: InstanceId, outcome: Outcome, now: u64) -> ItemResult {
        let record = &self.instances[&instance];
        // Compute every new channel first, so an (impossible) arithmetic failure leaves
        // nothing half-applied.
        let mut updated: Vec<Channel> = Vec::with_capacity(record.channels.len());
        for id in &record.channels {
            let channel = &self.channels[id];
            if !channel.is_open() {
                continue;
            }
            if let Some(i) = channel.lock_index(instance) {
                updated.push(settle_lock(channel, i, outcome)?);
            }
        }
        let (order_nonce, invoice) = (record.order_nonce, record.invoice);
        for channel in updated {
            self.channels.insert(channel.id, channel);
        }
        if let Some(nonce) = order_nonce {
            // An order is carried by one instance only: paid or refunded, it is never usable
            // again (a refunded order made payable again could be replayed after the user,
            // told "refunded", paid anew). Its record goes: with none, a nonce below
            // `next_nonce` counts as used.
            self.orders.remove(&nonce);
        }
        if let Some(role) = invoice {
            self.invoice_finished(role, instance, outcome);
        }
        let record = self.instances.get_mut(&instance).expect("checked by caller");
        record.status = InstanceStatus::Finished(outcome);
        record.finished_at = now;
        let seq = record.seq;
        self.finished.insert((now, seq, instance));
        Ok((NodeItem::Finished { instance, outcome }, true))
    }
}

/// The channel after lock `index` is resolved with `outcome`.
fn settle_lock(channel: &Channel, index: usize, outcome: Outcome) -> Result<Channel, EnclaveError> {
    let mut next = channel.clone();
    let lock = next.locks.remove(index);
    if outcome == Outcome::Apply {
        let (from, to) = if lock.outgoing {
            (&mut next.balance_local, &mut next.balance_peer)
        } else {
            (&mut next.balance_peer, &mut next.balance_local)
        };
        *from = from.checked_sub(lock.amount).ok_or(EnclaveError::Overflow)?;
        *to = to.checked_add(lock.amount).ok_or(EnclaveError::Overflow)?;
    }
    next.version += 1;
    Ok(next)
}
