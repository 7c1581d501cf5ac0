//! The invariants of DESIGN §9, checked against the whole world. `check_step` runs after
//! every action of every schedule; `check_final` runs once the world is quiescent.

use crate::world::{Violation, World};
use std::collections::{BTreeMap, BTreeSet};
use teepay_enclave::{InstanceStatus, NodeState};
use teepay_types::{
    Address, Amount, Asset, ChainId, Hash32, InstanceId, InstanceKind, InstanceSpec, Order, Outcome,
};

fn fail<T>(msg: String) -> Result<T, Violation> {
    Err(Violation(msg))
}

impl World {
    /// Invariants that must hold in every reachable state.
    pub fn check_step(&self) -> Result<(), Violation> {
        for node in &self.nodes {
            check_node_views(&node.name, node.enclave.inspect())?;
        }
        if !self.hub.coordinator.index_is_consistent() {
            return fail("hub: its index of open and complete instances diverged from the instances".into());
        }
        self.check_atomicity()
    }

    /// Invariant 2: every place an instance's outcome is known agrees.
    pub fn check_atomicity(&self) -> Result<(), Violation> {
        for id in &self.instances {
            let mut seen: Vec<(String, Outcome)> = Vec::new();
            if let Some(o) = self.contract.outcomes.get(id) {
                seen.push(("contract".into(), *o));
            }
            // A hub misinformed by its host may decide against the contract; what must agree
            // is the contract and every node.
            if !self.hub_lied
                && let Some(o) = self.hub.coordinator.instance(*id).and_then(|i| i.phase.outcome())
            {
                seen.push(("hub".into(), o));
            }
            for node in &self.nodes {
                if let Some(r) = node.enclave.inspect().instances.get(id)
                    && let InstanceStatus::Finished(o) = r.status
                {
                    seen.push((node.name.clone(), o));
                }
            }
            if let Some((first_at, first)) = seen.first()
                && let Some((at, o)) = seen.iter().find(|(_, o)| o != first)
            {
                return fail(format!(
                    "atomicity: instance {id:?} is {first:?} at {first_at} but {o:?} at {at}"
                ));
            }
        }
        Ok(())
    }

    /// Invariants that hold once every message is delivered and every instance has ended:
    /// all decided, both views of every channel agree, conservation, no loss, consent.
    pub fn check_final(&self) -> Result<(), Violation> {
        self.check_step()?;
        let outcomes = self.final_outcomes()?;
        self.check_channels_agree()?;
        self.check_conservation()?;
        self.check_accounting(&outcomes)
    }

    fn final_outcomes(&self) -> Result<BTreeMap<InstanceId, Outcome>, Violation> {
        let mut outcomes = BTreeMap::new();
        let outcome_of_record = |id: &InstanceId| {
            let by_node = self.nodes.iter().find_map(|n| match n.enclave.inspect().instances.get(id) {
                Some(r) => match r.status {
                    InstanceStatus::Finished(o) => Some(o),
                    _ => None,
                },
                None => None,
            });
            let hub = self.hub.coordinator.instance(*id).and_then(|i| i.phase.outcome());
            self.contract.outcomes.get(id).copied().or(by_node).or(hub)
        };
        if self.hub_lied {
            // The hub may be stuck on a decision the nodes refused: the outcome of record is
            // the contract's, or else the one every node that ended the instance agrees on
            // (`check_atomicity`). Liveness is judged on the honest nodes' locks below.
            for id in &self.instances {
                if let Some(o) = outcome_of_record(id) {
                    outcomes.insert(*id, o);
                }
            }
        }
        for id in self.instances.iter().filter(|_| !self.hub_lied) {
            let instance = self.hub.coordinator.instance(*id).expect("created instances exist");
            // A participant whose host lied may never answer again: if only liars still hold
            // its locks, nobody honest has a reason to eject, and the instance may stay open
            // at the hub for good. Liveness is then judged on the honest nodes' locks (below).
            let has_liar = instance
                .spec
                .participants()
                .iter()
                .any(|a| self.node_index(*a).is_some_and(|n| self.liars.contains(&n)));
            if has_liar && !instance.is_complete() {
                if let Some(o) = outcome_of_record(id) {
                    outcomes.insert(*id, o);
                }
                continue;
            }
            let Some(outcome) = instance.phase.outcome() else {
                return fail(format!("liveness: instance {id:?} still undecided ({:?})", instance.phase));
            };
            if !instance.is_complete() {
                return fail(format!("liveness: instance {id:?} decided but not acknowledged by every node"));
            }
            outcomes.insert(*id, outcome);
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if self.liars.contains(&n) {
                continue; // a lying host may strand its own node's locks
            }
            for (id, channel) in &node.enclave.inspect().channels {
                if channel.is_open() && !channel.locks.is_empty() {
                    return fail(format!("liveness: {} still holds locks on {id:?}", node.name));
                }
            }
        }
        Ok(outcomes)
    }

    fn check_channels_agree(&self) -> Result<(), Violation> {
        for (id, onchain) in &self.contract.channels {
            if !onchain.open {
                continue;
            }
            let view = |addr: Address| {
                let n = self.node_index(addr).expect("parties are nodes");
                let ch = &self.nodes[n].enclave.inspect().channels[id];
                if ch.local_is_a {
                    (ch.balance_local, ch.balance_peer)
                } else {
                    (ch.balance_peer, ch.balance_local)
                }
            };
            let liar = |addr: Address| self.node_index(addr).is_some_and(|n| self.liars.contains(&n));
            if liar(onchain.a) || liar(onchain.b) {
                continue; // a lying host's view is its own; its honest peer's is checked below
            }
            let (a, b) = (view(onchain.a), view(onchain.b));
            if a != b {
                return fail(format!("channel {id:?}: party A sees {a:?}, party B sees {b:?}"));
            }
        }
        Ok(())
    }

    /// Invariant 1: per chain and asset, open channel balances + paid out = deposits.
    fn check_conservation(&self) -> Result<(), Violation> {
        let mut held: BTreeMap<(ChainId, Asset), u128> = BTreeMap::new();
        let mut deposited: BTreeMap<(ChainId, Asset), u128> = BTreeMap::new();
        for ((chain, asset, _), amount) in &self.deposits {
            *deposited.entry((*chain, *asset)).or_default() += amount.0;
        }
        for ((chain, asset, _), amount) in &self.contract.payouts {
            *held.entry((*chain, *asset)).or_default() += amount.0;
        }
        for (id, onchain) in &self.contract.channels {
            if onchain.open {
                // An honest party's view (a lying host may have inflated its own).
                let a = self.node_index(onchain.a).expect("parties are nodes");
                let b = self.node_index(onchain.b).expect("parties are nodes");
                let n = if self.liars.contains(&a) { b } else { a };
                let total = if self.liars.contains(&n) {
                    onchain.deposit_a.0 + onchain.deposit_b.0 // both lied: what the contract holds
                } else {
                    let ch = &self.nodes[n].enclave.inspect().channels[id];
                    ch.balance_local.0 + ch.balance_peer.0
                };
                *held.entry((onchain.chain, onchain.asset)).or_default() += total;
            }
        }
        if held != deposited {
            return fail(format!("conservation: held {held:?} != deposited {deposited:?}"));
        }
        Ok(())
    }

    /// What `addr` holds of `asset` on `chain`: its side of every open channel of that asset
    /// plus on-chain payouts.
    fn holdings(&self, chain: ChainId, asset: Asset, addr: Address) -> i128 {
        let node = self.node_index(addr).expect("known node");
        let in_channels: u128 = self.nodes[node]
            .enclave
            .inspect()
            .channels
            .values()
            .filter(|c| c.chain == chain && c.token == asset.token() && c.is_open())
            .map(|c| c.balance_local.0)
            .sum();
        let paid = self.contract.payouts.get(&(chain, asset, addr)).map_or(0, |a| a.0);
        (in_channels + paid) as i128
    }

    /// Invariants 3 and 6: each node's holdings moved by exactly the applied instances'
    /// flows; within each applied instance an intermediary nets ≥ 0, and a node that
    /// loses value does so only within the bounds of its own authenticated order.
    fn check_accounting(&self, outcomes: &BTreeMap<InstanceId, Outcome>) -> Result<(), Violation> {
        let mut expected: BTreeMap<(ChainId, Asset, Address), i128> = BTreeMap::new();
        for (id, outcome) in outcomes {
            if *outcome != Outcome::Apply {
                continue;
            }
            let spec = &self.hub.coordinator.instance(*id).expect("exists").spec;
            let flows = flows(spec);
            // An order counts if its owner authenticated it: signed, or MAC'd under the
            // session the owner shares with the hub.
            let session = |owner: &Address| {
                self.node_index(*owner).and_then(|i| self.nodes[i].enclave.inspect().hub_session)
            };
            check_consent(spec, &flows, session)?;
            for (key, flow) in flows {
                *expected.entry(key).or_default() += flow;
            }
        }
        // The honest-party invariant: every node whose host did not lie holds exactly what it
        // deposited plus its flows in the instances that applied — never less.
        let keys: BTreeSet<(ChainId, Asset, Address)> = self
            .deposits
            .keys()
            .copied()
            .filter(|(_, _, addr)| self.node_index(*addr).is_none_or(|n| !self.liars.contains(&n)))
            .collect();
        for (chain, asset, addr) in keys {
            let start = self.deposits[&(chain, asset, addr)].0 as i128;
            let delta = self.holdings(chain, asset, addr) - start;
            let want = expected.get(&(chain, asset, addr)).copied().unwrap_or(0);
            if delta != want {
                let name = &self.nodes[self.node_index(addr).expect("node")].name;
                return fail(format!(
                    "no-loss: {name}'s {asset} on {chain} changed by {delta}, applied instances explain {want}"
                ));
            }
        }
        Ok(())
    }
}

/// Net value of each asset each (chain, node) gains from an instance that applies.
pub fn flows(spec: &InstanceSpec) -> BTreeMap<(ChainId, Asset, Address), i128> {
    let mut flows = BTreeMap::new();
    for leg in &spec.legs {
        for hop in &leg.hops {
            *flows.entry((leg.chain, leg.asset, hop.from)).or_default() -= hop.amount.0 as i128;
            *flows.entry((leg.chain, leg.asset, hop.to)).or_default() += hop.amount.0 as i128;
        }
    }
    flows
}

fn check_consent(
    spec: &InstanceSpec,
    flows: &BTreeMap<(ChainId, Asset, Address), i128>,
    session: impl Fn(&Address) -> Option<Hash32>,
) -> Result<(), Violation> {
    for ((chain, asset, addr), flow) in flows {
        let order =
            spec.orders.iter().find(|o| o.order.owner() == *addr && o.is_authentic(session(addr).as_ref()));
        let allowed: i128 = match order.map(|o| &o.order) {
            None => 0,
            Some(Order::Payment(r)) if r.chain == *chain && r.asset == *asset => {
                (r.amount.0 + r.max_fee.0) as i128
            }
            Some(Order::Payment(_)) => 0,
            Some(Order::Swap(i)) => {
                let here = |t: &&teepay_types::Transfer| t.chain == *chain && t.asset == *asset;
                let gives: u128 = i.gives.iter().filter(here).map(|t| t.amount.0 + t.max_fee.0).sum();
                let wants: u128 = i.receives.iter().filter(here).map(|t| t.amount.0).sum();
                gives as i128 - wants as i128
            }
        };
        if -flow > allowed {
            return fail(format!(
                "consent: {addr:?} loses {} of {asset} on {chain} in {:?} but its own order allows {allowed}",
                -flow, spec.id
            ));
        }
    }
    if spec.kind == InstanceKind::CrossChain {
        for o in &spec.orders {
            if let Order::Swap(i) = &o.order {
                for want in &i.receives {
                    let got: i128 = spec
                        .legs
                        .iter()
                        .filter(|l| {
                            l.chain == want.chain && l.asset == want.asset && l.destination() == Some(i.party)
                        })
                        .map(|l| l.delivered().0 as i128)
                        .sum();
                    if got < want.amount.0 as i128 {
                        return fail(format!(
                            "consent: swap party {:?} receives {got} < {}",
                            i.party, want.amount
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Each enclave's own view of every channel conserves its capacity and never reserves more
/// than a side holds.
fn check_node_views(name: &str, state: &NodeState) -> Result<(), Violation> {
    for (id, ch) in &state.channels {
        if ch.balance_local.checked_add(ch.balance_peer) != Some(ch.capacity()) {
            return fail(format!("conservation: {name}'s view of {id:?} does not add up to its capacity"));
        }
        let out: u128 = ch.locks.iter().filter(|l| l.outgoing).map(|l| l.amount.0).sum();
        let inc: u128 = ch.locks.iter().filter(|l| !l.outgoing).map(|l| l.amount.0).sum();
        if Amount(out) > ch.balance_local || Amount(inc) > ch.balance_peer {
            return fail(format!("conservation: {name} reserves more than a side of {id:?} holds"));
        }
    }
    Ok(())
}
