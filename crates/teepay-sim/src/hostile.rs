//! Hostile hosts (issue 14): a node's host lying to its own enclave, and the hub's host
//! replaying orders. A lie the enclaves cannot detect makes its node dishonest — the final
//! invariants then hold for every *honest* node: none ends worse off than the instances that
//! applied explain. A lie they can detect must be refused and change nothing.

use crate::world::{Action, Envelope, Lie, Violation, World};
use teepay_coordinator::HubPhase;
use teepay_enclave::{EnclaveError, NodeEnclave, Request, Response};
use teepay_types::{Amount, InstanceId, InstanceKind, Outcome, SealedLog};

/// How many authentic batches are kept for replays.
const REPLAYABLE: usize = 4;

/// A deposit a lying host invents.
const INVENTED_DEPOSIT: u128 = 1_000;

impl World {
    /// The host lies (and hub replays) the budget and the state allow.
    pub(crate) fn hostile_actions(&self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.budget.lies == 0 {
            return actions;
        }
        for (n, node) in self.nodes.iter().enumerate() {
            for (id, channel) in &node.enclave.inspect().channels {
                if channel.is_open() {
                    actions.push(Action::HostLie { node: n, lie: Lie::InflateDeposit(*id) });
                    actions.push(Action::HostLie { node: n, lie: Lie::FalseSettled(*id) });
                }
            }
            if node.sealed.blobs().count() > 1 {
                actions.push(Action::HostLie { node: n, lie: Lie::RollBack });
            }
        }
        for (i, (node, _)) in self.delivered.iter().enumerate() {
            actions.push(Action::HostLie { node: *node, lie: Lie::ReplayBatch(i) });
        }
        actions.extend(self.instances.iter().take(2).map(|id| Action::ReplayOrder(*id)));
        for id in self.instances.iter().take(2) {
            let Some(instance) = self.hub.coordinator.instance(*id) else { continue };
            if instance.spec.kind != InstanceKind::MultiHop || instance.phase.outcome().is_some() {
                continue;
            }
            for outcome in [Outcome::Apply, Outcome::Revert] {
                // What the hub enclave accepts from its host (it refuses APPLY before PREPARED);
                // a report of what the contract did record is no lie.
                let allowed = outcome == Outcome::Revert || instance.phase == HubPhase::Prepared;
                if allowed && self.contract.outcomes.get(id) != Some(&outcome) {
                    actions.push(Action::FalseOutcome { instance: *id, outcome });
                }
            }
        }
        actions
    }

    /// Every node's host sees the contract fix an instance's outcome (its watcher reads
    /// `InstanceResolved` from the block the eject is in) and tells its enclave.
    pub(crate) fn outcome_seen_by_nodes(
        &mut self,
        instance: InstanceId,
        outcome: Outcome,
    ) -> Result<(), Violation> {
        for n in 0..self.nodes.len() {
            let out = self.nodes[n]
                .enclave
                .handle(self.now, Request::OutcomeOnChain { instance, outcome })
                .map_err(|e| {
                Violation(format!("{}: the contract's outcome was refused: {e}", self.nodes[n].name))
            })?;
            if let Some(blob) = out.sealed {
                self.nodes[n].sealed.record(blob).expect("the enclave seals well-formed blobs");
            }
        }
        Ok(())
    }

    /// The hub's host reports an outcome the contract never fixed. The hub enclave cannot
    /// tell (no light client in simulation mode); the honest nodes must not follow it.
    pub(crate) fn false_outcome(&mut self, instance: InstanceId, outcome: Outcome) -> Result<(), Violation> {
        self.hub_lied = true;
        match self.hub.coordinator.on_chain_outcome(self.now, instance, outcome) {
            Ok(()) | Err(teepay_coordinator::HubError::InconsistentOutcome(_)) => {}
            Err(e) => return Err(Violation(format!("a chain report was refused unexpectedly: {e}"))),
        }
        self.flush_hub();
        Ok(())
    }

    /// Remembers an authentic batch a node received (its host could replay it later).
    pub(crate) fn remember_delivered(&mut self, node: usize, batch: &teepay_types::SignedHubBatch) {
        if self.budget.lies == 0 {
            return;
        }
        if self.delivered.len() == REPLAYABLE {
            self.delivered.remove(0);
        }
        self.delivered.push((node, batch.clone()));
    }

    pub(crate) fn host_lie(&mut self, node: usize, lie: &Lie) -> Result<(), Violation> {
        match lie {
            Lie::InflateDeposit(channel) => {
                let ch = &self.nodes[node].enclave.inspect().channels[channel];
                let (mine, theirs) = (ch.deposit_local.0 + INVENTED_DEPOSIT, ch.deposit_peer.0);
                let (deposit_a, deposit_b) = if ch.local_is_a { (mine, theirs) } else { (theirs, mine) };
                let request = Request::Deposit {
                    channel: *channel,
                    deposit_a: Amount(deposit_a),
                    deposit_b: Amount(deposit_b),
                };
                let out = self.nodes[node]
                    .enclave
                    .handle(self.now, request)
                    .map_err(|e| Violation(format!("a deposit report was refused: {e}")))?;
                if let Some(blob) = out.sealed {
                    self.nodes[node].sealed.record(blob).expect("the enclave seals well-formed blobs");
                }
                self.liars.insert(node);
            }
            Lie::FalseSettled(channel) => {
                let out = self.nodes[node]
                    .enclave
                    .handle(self.now, Request::ChannelSettled { channel: *channel })
                    .map_err(|e| Violation(format!("a settlement report was refused: {e}")))?;
                if let Some(blob) = out.sealed {
                    self.nodes[node].sealed.record(blob).expect("the enclave seals well-formed blobs");
                }
                self.liars.insert(node);
            }
            Lie::RollBack => {
                let log = &self.nodes[node].sealed;
                let blobs: Vec<Vec<u8>> = log.blobs().map(<[u8]>::to_vec).collect();
                let Some(older) = SealedLog::from_blobs(blobs[..blobs.len() - 1].iter().cloned()).ok() else {
                    return Ok(()); // the log starts with the last snapshot: nothing older to offer
                };
                let platform = self.nodes[node].enclave.platform().clone();
                if NodeEnclave::restore(platform, &older).is_ok() {
                    return Err(Violation(format!("node {node} restored from a rolled-back sealed log")));
                }
            }
            Lie::ReplayBatch(i) => {
                let (target, batch) = self.delivered[*i].clone();
                debug_assert_eq!(target, node);
                let out = match self.nodes[node].enclave.handle(self.now, Request::HubBatch(batch)) {
                    Ok(out) => out,
                    Err(e) => {
                        return Err(Violation(format!("a replayed authentic batch failed as a whole: {e}")));
                    }
                };
                if let Some(blob) = out.sealed {
                    self.nodes[node].sealed.record(blob).expect("the enclave seals well-formed blobs");
                }
                let Response::Batch(result) = out.response else { unreachable!("batches answer Batch") };
                for r in &result.results {
                    match r {
                        Ok(_)
                        | Err(EnclaveError::InstanceReplayed(_))
                        | Err(EnclaveError::InstanceEjected(_))
                        | Err(EnclaveError::InstanceFinished(_))
                        | Err(EnclaveError::ConflictingOutcome(_))
                        | Err(EnclaveError::NotCommitted(_))
                        | Err(EnclaveError::RefundAfterCommit(_))
                        | Err(EnclaveError::UnknownInstance(_))
                        | Err(EnclaveError::OutcomeNotOnChain(_))
                        | Err(EnclaveError::Refused(_)) => {}
                        Err(e) => return Err(Violation(format!("replayed item: unexpected refusal {e}"))),
                    }
                }
                if let Some(ack) = result.ack {
                    self.network.push(Envelope::ToHub(ack));
                }
                // Whatever the replay did, it was this node's host acting: honest nodes must
                // not be affected, and this one is judged no more.
                self.liars.insert(node);
            }
        }
        Ok(())
    }

    /// An honest node's recourse when an instance it holds locks of cannot end (a lying peer
    /// stopped answering): it ejects the channel. Returns whether one did.
    pub(crate) fn honest_eject(&mut self) -> Result<bool, Violation> {
        let stuck =
            self.nodes.iter().enumerate().filter(|(n, _)| !self.liars.contains(n)).find_map(|(n, node)| {
                node.enclave.inspect().channels.iter().find_map(|(id, ch)| {
                    let multi_hop = ch.locks.iter().any(|l| l.kind == teepay_types::InstanceKind::MultiHop);
                    (ch.is_open() && multi_hop).then_some((n, *id))
                })
            });
        let Some((node, channel)) = stuck else { return Ok(false) };
        self.eject(node, channel)?;
        Ok(true)
    }

    /// The hub's host re-submits an existing instance's legs and orders: refused, unchanged.
    pub(crate) fn replay_order(&mut self, instance: teepay_types::InstanceId) -> Result<(), Violation> {
        let Some(existing) = self.hub.coordinator.instance(instance) else { return Ok(()) };
        let spec = existing.spec.clone();
        if spec.orders.is_empty() {
            return Ok(());
        }
        let before = self.hub.coordinator.inspect().clone();
        match self.hub.coordinator.create_instance(self.now, spec.kind, spec.legs, spec.orders) {
            Err(teepay_coordinator::HubError::OrderReused(_)) => {}
            other => return Err(Violation(format!("a replayed order started an instance: {other:?}"))),
        }
        if *self.hub.coordinator.inspect() != before {
            return Err(Violation("a refused replayed order changed the hub".into()));
        }
        Ok(())
    }
}
