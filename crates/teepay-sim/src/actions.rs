//! Applying scheduler actions to the world. Each action is one atomic step of some host:
//! the enclave call and the persisting of its sealed blob happen together, before anything
//! it produced is put on the network (the hosts' durability rule, DESIGN §7).

use crate::contract::ContractError;
use crate::world::{Action, Envelope, Target, Violation, World};
use teepay_coordinator::{Coordinator, HubError};
use teepay_enclave::{EnclaveError, NodeEnclave, Request, Response};
use teepay_types::{InstanceKind, NodeItem, SimPlatform, keccak256};

impl World {
    /// Every action the budget and the current state allow, in a deterministic order.
    pub fn enabled_actions(&self) -> Vec<Action> {
        // Faults first: exhaustive runs do the same total work in any order, and a DFS
        // that tries faults early reaches fault-induced violations sooner.
        let mut actions: Vec<Action> = Vec::new();
        let b = self.budget;
        for i in 0..self.network.len() {
            let is_message = matches!(self.network[i], Envelope::ToNode { .. } | Envelope::ToHub(_));
            if b.duplicates > 0 && is_message {
                actions.push(Action::Duplicate(i));
            }
            if b.drops > 0 && is_message {
                actions.push(Action::Drop(i));
            }
            if b.tampers > 0 && is_message {
                actions.push(Action::Tamper(i));
            }
        }
        if b.crashes > 0 {
            actions.extend((0..self.nodes.len()).map(|n| Action::Crash(Target::Node(n))));
            actions.push(Action::Crash(Target::Hub));
        }
        for (n, node) in self.nodes.iter().enumerate() {
            for (id, channel) in &node.enclave.inspect().channels {
                if channel.is_open() && !channel.locks.is_empty() {
                    // A lying host's closing state may carry its lie (the contract refuses
                    // it); its node is not judged, and its honest peers can still eject.
                    if b.ejects > 0 && !self.liars.contains(&n) {
                        actions.push(Action::Eject { node: n, channel: *id });
                    }
                    if b.refunds > 0 {
                        for lock in &channel.locks {
                            let action = Action::RequestRefund { node: n, instance: lock.instance };
                            if !actions.contains(&action) {
                                actions.push(action);
                            }
                        }
                    }
                }
            }
        }
        if b.failovers > 0 && !self.standbys.is_empty() {
            actions.push(Action::Failover);
        }
        if b.ticks > 0 {
            actions.push(Action::Tick);
        }
        actions.extend(self.hostile_actions());
        actions.extend((0..self.network.len()).map(Action::Deliver));
        actions
    }

    /// Applies one action. Errors that the protocol expects (a duplicate refused, a refund
    /// the rules forbid) are fine; anything that contradicts an invariant is a [`Violation`].
    pub fn apply(&mut self, action: &Action) -> Result<(), Violation> {
        match action {
            Action::Deliver(i) => {
                let envelope = self.network.remove(*i);
                self.deliver(envelope)
            }
            Action::Duplicate(i) => {
                self.budget.duplicates -= 1;
                let copy = self.network[*i].clone();
                self.network.push(copy);
                Ok(())
            }
            Action::Drop(i) => {
                self.budget.drops -= 1;
                self.network.remove(*i);
                Ok(())
            }
            Action::Tamper(i) => {
                self.budget.tampers -= 1;
                let forged = self.network[*i].clone();
                self.deliver_forged(forged)
            }
            Action::Crash(target) => {
                self.budget.crashes -= 1;
                self.crash(*target)
            }
            Action::Eject { node, channel } => {
                self.budget.ejects -= 1;
                self.eject(*node, *channel)
            }
            Action::RequestRefund { node, instance } => {
                self.budget.refunds -= 1;
                match self.nodes[*node]
                    .enclave
                    .handle(self.now, Request::RequestRefund { instance: *instance })
                {
                    Ok(out) => {
                        let Response::RefundRequest(r) = out.response else { unreachable!() };
                        self.network.push(Envelope::RefundRequest(r));
                    }
                    Err(EnclaveError::InstanceFinished(_)) => {}
                    Err(e) => return Err(Violation(format!("refund request refused unexpectedly: {e}"))),
                }
                Ok(())
            }
            Action::Tick => {
                self.budget.ticks -= 1;
                self.tick();
                Ok(())
            }
            Action::HostLie { node, lie } => {
                self.budget.lies -= 1;
                self.host_lie(*node, lie)
            }
            Action::ReplayOrder(instance) => {
                self.budget.lies -= 1;
                self.replay_order(*instance)
            }
            Action::FalseOutcome { instance, outcome } => {
                self.budget.lies -= 1;
                self.false_outcome(*instance, *outcome)
            }
            Action::Failover => {
                self.budget.failovers -= 1;
                self.failover()
            }
        }
    }

    pub fn tick(&mut self) {
        self.now += teepay_coordinator_timeout_step();
        self.hub.coordinator.tick(self.now);
        self.flush_hub();
    }

    fn deliver(&mut self, envelope: Envelope) -> Result<(), Violation> {
        match envelope {
            Envelope::ToNode { node, batch } => {
                self.remember_delivered(node, &batch);
                let out = self.nodes[node]
                    .enclave
                    .handle(self.now, Request::HubBatch(batch))
                    .map_err(|e| Violation(format!("authentic hub batch refused by node {node}: {e}")))?;
                if let Some(blob) = out.sealed {
                    self.nodes[node].sealed.record(blob).expect("the enclave seals well-formed blobs");
                }
                let Response::Batch(result) = out.response else { unreachable!("batches answer Batch") };
                for r in &result.results {
                    if let Err(e) = r {
                        expected_item_refusal(e, self.hub_lied)
                            .map_err(|v| Violation(format!("node {node}: {v}")))?;
                    }
                }
                if let Some(ack) = result.ack {
                    self.network.push(Envelope::ToHub(ack));
                }
            }
            Envelope::ToHub(ack) => {
                let result = self
                    .hub
                    .coordinator
                    .on_ack(self.now, &ack)
                    .map_err(|e| Violation(format!("authentic ack refused by hub: {e}")))?;
                for r in result.results {
                    if let Err(e @ HubError::ConflictingFinish(..)) = r {
                        return Err(Violation(format!("atomicity: {e}")));
                    }
                }
                self.flush_hub();
            }
            Envelope::RefundRequest(request) => {
                match self.hub.coordinator.on_refund_request(self.now, &request) {
                    Ok(())
                    | Err(HubError::RefundAfterCommit(_))
                    | Err(HubError::AlreadyDecided(_))
                    | Err(HubError::UnknownInstance(_)) => {}
                    Err(e) => return Err(Violation(format!("refund request: {e}"))),
                }
                self.flush_hub();
            }
            Envelope::OutcomeOnChain(instance, outcome) => {
                match self.hub.coordinator.on_chain_outcome(self.now, instance, outcome) {
                    Ok(()) => {}
                    // Misinformed by its host, the hub may have resolved the other way; the
                    // honest nodes followed the contract, not the hub.
                    Err(HubError::InconsistentOutcome(_)) if self.hub_lied => {}
                    Err(e) => {
                        return Err(Violation(format!(
                            "atomicity: on-chain outcome {outcome:?} rejected by hub: {e}"
                        )));
                    }
                }
                self.flush_hub();
            }
            Envelope::OutcomeToNodes(instance, outcome) => self.outcome_seen_by_nodes(instance, outcome)?,
            Envelope::SettledOnChain { node, channel } => {
                let out = self.nodes[node]
                    .enclave
                    .handle(self.now, Request::ChannelSettled { channel })
                    .map_err(|e| Violation(format!("settlement notice refused: {e}")))?;
                if let Some(blob) = out.sealed {
                    self.nodes[node].sealed.record(blob).expect("the enclave seals well-formed blobs");
                }
            }
        }
        Ok(())
    }

    /// Delivers a forged copy of every in-flight message (to a scratch copy of the world):
    /// each must be refused and change nothing. The exhaustive checker runs this at every
    /// state instead of branching on forgeries, which would only double the state space.
    pub fn check_forgeries(&self) -> Result<(), Violation> {
        let mut scratch = self.clone();
        for envelope in &self.network {
            scratch.deliver_forged(envelope.clone())?;
        }
        Ok(())
    }

    /// A forged message must be refused with an error and change nothing (invariant 4).
    fn deliver_forged(&mut self, envelope: Envelope) -> Result<(), Violation> {
        match envelope {
            Envelope::ToNode { node, mut batch } => {
                batch.auth.bytes_mut()[3] ^= 0x40;
                let before = self.nodes[node].enclave.inspect().clone();
                match self.nodes[node].enclave.handle(self.now, Request::HubBatch(batch)) {
                    Err(EnclaveError::BadHubSignature) => {}
                    other => return Err(Violation(format!("forged batch not refused: {other:?}"))),
                }
                if *self.nodes[node].enclave.inspect() != before {
                    return Err(Violation("forged batch changed node state".into()));
                }
            }
            Envelope::ToHub(mut ack) => {
                if let Some(NodeItem::Finished { outcome, .. }) = ack.ack.items.first_mut() {
                    *outcome = match outcome {
                        teepay_types::Outcome::Apply => teepay_types::Outcome::Revert,
                        teepay_types::Outcome::Revert => teepay_types::Outcome::Apply,
                    };
                } else {
                    ack.auth.bytes_mut()[3] ^= 0x40;
                }
                let before = self.hub.coordinator.inspect().clone();
                match self.hub.coordinator.on_ack(self.now, &ack) {
                    Err(HubError::BadSignature(_)) => {}
                    other => return Err(Violation(format!("forged ack not refused: {other:?}"))),
                }
                if *self.hub.coordinator.inspect() != before {
                    return Err(Violation("forged ack changed hub state".into()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A crash loses in-memory state and in-flight connections; the restart must come back
    /// from the persisted blob to exactly the state that was acknowledged (invariant 5), less
    /// only the orders issued since (their sealing is deferred; the node then refuses them).
    fn crash(&mut self, target: Target) -> Result<(), Violation> {
        match target {
            Target::Node(n) => {
                let node = &mut self.nodes[n];
                let mut restored = NodeEnclave::restore(node.enclave.platform().clone(), &node.sealed)
                    .map_err(|e| Violation(format!("node {n} cannot restart from its sealed log: {e}")))?;
                // Only deferred changes (issued orders) may be lost: the restored state plus
                // them must be exactly the state before the crash.
                let mut with_deferred = restored.clone();
                let deferred = with_deferred.replay_deferred(node.enclave.deferred());
                if deferred.is_err() || with_deferred.inspect() != node.enclave.inspect() {
                    return Err(Violation(format!(
                        "node {n} lost state across a crash (not sealed before ack)"
                    )));
                }
                restored.set_seal_limits(node.enclave.seal_limits());
                node.enclave = restored;
                self.network.retain(|e| !matches!(e, Envelope::ToNode { node, .. } if *node == n));
            }
            Target::Hub => {
                let mut restored =
                    Coordinator::restore(self.hub.coordinator.platform().clone(), &self.hub.sealed)
                        .map_err(|e| Violation(format!("hub cannot restart from its sealed log: {e}")))?;
                if restored.inspect() != self.hub.coordinator.inspect() {
                    return Err(Violation("hub lost state across a crash (not sealed before send)".into()));
                }
                restored.set_seal_limits(self.hub.coordinator.seal_limits());
                // A host setting, like the seal limits: a group's leader keeps replicating.
                restored.set_replicating(!self.standbys.is_empty());
                self.hub.coordinator = restored;
                self.network.retain(|e| !matches!(e, Envelope::ToHub(_) | Envelope::RefundRequest(_)));
            }
        }
        Ok(())
    }

    /// The hub's leader is lost. The first standby takes office on a fork of its state, which
    /// must be exactly the leader's: every flush was applied to it before anything of that
    /// flush was sent. Messages in flight to the lost leader are lost; the new leader
    /// re-sends its current rounds on its clock, and a new standby joins.
    fn failover(&mut self) -> Result<(), Violation> {
        let standby = self.standbys.remove(0);
        if standby.inspect() != self.hub.coordinator.inspect() {
            return Err(Violation("a standby replica misses state the leader released".into()));
        }
        let platform = SimPlatform::new(keccak256(&self.hub.coordinator.platform().sealing_key));
        let (mut leader, seal) =
            standby.fork(platform).map_err(|e| Violation(format!("a standby cannot take office: {e}")))?;
        leader.set_seal_limits(self.hub.coordinator.seal_limits());
        self.hub.coordinator = leader;
        self.hub.sealed = teepay_types::SealedLog::from_blobs([seal]).expect("one snapshot");
        self.network.retain(|e| !matches!(e, Envelope::ToHub(_) | Envelope::RefundRequest(_)));
        let joined = self.join_standby();
        self.standbys.push(joined);
        // The operators replace the lost replica by the new one.
        self.admit_members();
        Ok(())
    }

    /// A node signs its channel's closing state and submits it to the contract. Enclaves
    /// refuse swap-locked channels, which is fine; a signed state the contract rejects is not.
    pub(crate) fn eject(&mut self, node: usize, channel: teepay_types::ChannelId) -> Result<(), Violation> {
        let out = match self.nodes[node].enclave.handle(self.now, Request::SignClose { channel }) {
            Ok(out) => out,
            Err(EnclaveError::SwapLocked { .. }) => return Ok(()),
            Err(e) => return Err(Violation(format!("eject refused unexpectedly: {e}"))),
        };
        if let Some(blob) = out.sealed {
            self.nodes[node].sealed.record(blob).expect("the enclave seals well-formed blobs");
        }
        let Response::ChannelState(signed) = out.response else { unreachable!("SignClose answers a state") };
        if signed.state.locks.iter().any(|l| l.kind == InstanceKind::CrossChain) {
            return Err(Violation("enclave signed a swap-locked state".into()));
        }
        let settlement = match self.contract.close(&signed) {
            Ok(s) => s,
            // The peer settled first and this node's watcher has not seen it yet: the
            // contract's settlement stands and the notice is already in flight.
            Err(ContractError::Closed) => return Ok(()),
            Err(e) => return Err(Violation(format!("contract rejected eject: {e}"))),
        };
        for (instance, outcome) in settlement.fixed {
            self.network.push(Envelope::OutcomeOnChain(instance, outcome));
            self.network.push(Envelope::OutcomeToNodes(instance, outcome));
        }
        let peer = self.nodes[node].enclave.inspect().channels[&channel].peer;
        let peer = self.node_index(peer).expect("peer is a node");
        self.network.push(Envelope::SettledOnChain { node: peer, channel });
        Ok(())
    }
}

/// How far a Tick moves the clock: past the PREPARE deadline and a retransmission period.
fn teepay_coordinator_timeout_step() -> u64 {
    crate::world::PREPARE_TIMEOUT + 1
}

/// Item-level refusals that honest retransmission, duplication and reordering can cause
/// (and, once the hub's host lied about the chain, a RESOLVE against the contract's outcome).
fn expected_item_refusal(e: &EnclaveError, hub_lied: bool) -> Result<(), String> {
    match e {
        EnclaveError::InstanceReplayed(_)
        | EnclaveError::InstanceEjected(_)
        | EnclaveError::InstanceFinished(_)
        | EnclaveError::OutcomeNotOnChain(_)
        | EnclaveError::Refused(_) => Ok(()),
        EnclaveError::ConflictingOutcome(_) if hub_lied => Ok(()),
        other => Err(format!("unexpected refusal of an authentic item: {other}")),
    }
}
