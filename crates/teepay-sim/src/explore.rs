//! Schedule exploration: exhaustive (stateful DFS over every interleaving of deliveries and
//! the budgeted faults) and random sampling. Invariants are checked after every step, and
//! from every quiescent state the world is driven to completion and checked again.

use crate::rng::SplitMix64;
use crate::world::{Action, Envelope, Target, Violation, World};
use borsh::BorshSerialize;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

#[derive(Debug, Clone, Default)]
pub struct ExploreReport {
    /// Distinct complete schedules (root-to-end paths) covered; schedules that reach an
    /// already-checked state share its verdict instead of being re-run.
    pub schedules: u128,
    pub states: usize,
    pub transitions: u64,
    pub violation: Option<Counterexample>,
}

#[derive(Debug, Clone)]
pub struct Counterexample {
    pub trace: Vec<String>,
    pub violation: Violation,
}

impl World {
    /// Delivers everything, ticking the clock when only timeouts can make progress, until
    /// every instance has ended everywhere (or it is clear nothing more happens).
    pub fn drain(&mut self) -> Result<(), Violation> {
        for _ in 0..64 {
            while !self.network.is_empty() {
                self.apply(&Action::Deliver(0))?;
                self.check_step()?;
            }
            let complete = self
                .instances
                .iter()
                .all(|id| self.hub.coordinator.instance(*id).is_some_and(|i| i.is_complete()));
            if complete {
                return Ok(());
            }
            self.tick();
        }
        // A lying host can leave instances that never end by themselves; the honest nodes
        // holding their locks then eject (their recourse in DESIGN §3), one channel at a time.
        if !self.liars.is_empty() || self.hub_lied {
            for _ in 0..64 {
                if !self.honest_eject()? {
                    break;
                }
                while !self.network.is_empty() {
                    self.apply(&Action::Deliver(0))?;
                    self.check_step()?;
                }
                self.tick();
                while !self.network.is_empty() {
                    self.apply(&Action::Deliver(0))?;
                    self.check_step()?;
                }
            }
        }
        Ok(())
    }

    /// Drives a copy of the world to completion with no further faults and checks the
    /// final invariants.
    pub fn check_completion(&self) -> Result<(), Violation> {
        let mut w = self.clone();
        w.drain()?;
        w.check_final()
    }

    /// A fingerprint of everything that determines future behaviour. The network is a
    /// multiset, so its encoding is sorted.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        let mut buf = Vec::with_capacity(4096);
        for node in &self.nodes {
            node.enclave.inspect().serialize(&mut buf).expect("vec write");
            buf.extend_from_slice(&node.enclave.platform().counter.to_le_bytes());
        }
        self.hub.coordinator.inspect().serialize(&mut buf).expect("vec write");
        self.contract.serialize(&mut buf).expect("vec write");
        h.write(&buf);
        let mut net: Vec<Vec<u8>> = self.network.iter().map(envelope_bytes).collect();
        net.sort_unstable();
        for e in net {
            h.write(&e);
        }
        let b = self.budget;
        h.write(&[
            b.duplicates,
            b.drops,
            b.tampers,
            b.crashes,
            b.ejects,
            b.refunds,
            b.ticks,
            b.lies,
            b.failovers,
        ]);
        h.write_usize(self.standbys.len());
        for liar in &self.liars {
            h.write_usize(*liar);
        }
        h.write_u8(self.hub_lied as u8);
        for (node, batch) in &self.delivered {
            h.write(&envelope_bytes(&Envelope::ToNode { node: *node, batch: batch.clone() }));
        }
        h.write_u64(self.now);
        h.finish()
    }

    pub fn describe(&self, action: &Action) -> String {
        let name = |n: usize| self.nodes[n].name.clone();
        let env = |i: usize| match &self.network[i] {
            Envelope::ToNode { node, batch } => format!(
                "hub→{} {:?}",
                name(*node),
                batch.batch.items.iter().map(item_name).collect::<Vec<_>>()
            ),
            Envelope::ToHub(ack) => {
                let from = self.node_index(ack.ack.node).map_or("?".into(), name);
                format!("{from}→hub {:?}", ack.ack.items.iter().map(node_item_name).collect::<Vec<_>>())
            }
            Envelope::RefundRequest(r) => format!("refund request {:?}", r.request.instance),
            Envelope::OutcomeOnChain(i, o) => format!("chain→hub outcome {i:?}={o:?}"),
            Envelope::OutcomeToNodes(i, o) => format!("chain→nodes outcome {i:?}={o:?}"),
            Envelope::SettledOnChain { node, channel } => {
                format!("chain→{} settled {channel:?}", name(*node))
            }
        };
        match action {
            Action::Deliver(i) => format!("deliver {}", env(*i)),
            Action::Duplicate(i) => format!("duplicate {}", env(*i)),
            Action::Drop(i) => format!("drop {}", env(*i)),
            Action::Tamper(i) => format!("forge a copy of {}", env(*i)),
            Action::Crash(Target::Node(n)) => format!("crash+restart {}", name(*n)),
            Action::Crash(Target::Hub) => "crash+restart hub".into(),
            Action::Eject { node, channel } => format!("{} ejects {channel:?}", name(*node)),
            Action::RequestRefund { node, instance } => {
                format!("{} requests refund of {instance:?}", name(*node))
            }
            Action::Tick => "clock passes every deadline".into(),
            Action::HostLie { node, lie } => format!("{}'s host lies: {lie:?}", name(*node)),
            Action::ReplayOrder(id) => format!("hub host replays the orders of {id:?}"),
            Action::Failover => "hub leader lost: a standby replica takes office".into(),
            Action::FalseOutcome { instance, outcome } => {
                format!("hub host reports a false on-chain outcome {instance:?}={outcome:?}")
            }
        }
    }
}

fn item_name(i: &teepay_types::HubItem) -> String {
    use teepay_types::HubItem::*;
    match i {
        Prepare(_) => "PREPARE".into(),
        Commit { .. } => "COMMIT".into(),
        Confirm { .. } => "CONFIRM".into(),
        Refund { .. } => "REFUND".into(),
        Resolve { outcome, .. } => format!("RESOLVE({outcome:?})"),
    }
}

fn node_item_name(i: &teepay_types::NodeItem) -> String {
    use teepay_types::NodeItem::*;
    match i {
        Prepared { .. } => "PREPARED".into(),
        Nack { reason, .. } => format!("NACK({reason:?})"),
        Committed { .. } => "COMMITTED".into(),
        Finished { outcome, .. } => format!("FINISHED({outcome:?})"),
    }
}

fn envelope_bytes(e: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    match e {
        Envelope::ToNode { node, batch } => (0u8, *node as u64, batch).serialize(&mut out),
        Envelope::ToHub(ack) => (1u8, ack).serialize(&mut out),
        Envelope::RefundRequest(r) => (2u8, r).serialize(&mut out),
        Envelope::OutcomeOnChain(i, o) => (3u8, i, o).serialize(&mut out),
        Envelope::SettledOnChain { node, channel } => (4u8, *node as u64, channel).serialize(&mut out),
        Envelope::OutcomeToNodes(i, o) => (5u8, i, o).serialize(&mut out),
    }
    .expect("vec write");
    out
}

/// Exhaustive exploration. `max_states` bounds the work (None: explore everything).
pub fn explore(world: &World, max_states: Option<usize>) -> ExploreReport {
    let mut ex =
        Explorer { memo: HashMap::new(), report: ExploreReport::default(), trace: Vec::new(), max_states };
    if let Err(v) = world.check_step() {
        ex.report.violation = Some(Counterexample { trace: Vec::new(), violation: v });
        return ex.report;
    }
    ex.report.schedules = ex.dfs(world);
    ex.report.states = ex.memo.len();
    ex.report
}

struct Explorer {
    /// Fingerprint → number of complete schedules from that state.
    memo: HashMap<u64, u128>,
    report: ExploreReport,
    trace: Vec<String>,
    max_states: Option<usize>,
}

impl Explorer {
    fn fail(&mut self, violation: Violation) {
        if self.report.violation.is_none() {
            self.report.violation = Some(Counterexample { trace: self.trace.clone(), violation });
        }
    }

    fn dfs(&mut self, world: &World) -> u128 {
        let fp = world.fingerprint();
        if let Some(&count) = self.memo.get(&fp) {
            return count;
        }
        // Placeholder: a state reached again on the current path ends that path.
        self.memo.insert(fp, 1);
        if let Err(v) = world.check_forgeries() {
            self.fail(v);
            return 0;
        }
        if world.network.is_empty()
            && let Err(v) = world.check_completion()
        {
            self.fail(v);
            return 0;
        }
        let actions = world.enabled_actions();
        if actions.is_empty() {
            return 1;
        }
        let mut count: u128 = 0;
        for action in actions {
            if self.report.violation.is_some() || self.max_states.is_some_and(|m| self.memo.len() >= m) {
                break;
            }
            let mut next = world.clone();
            self.trace.push(world.describe(&action));
            self.report.transitions += 1;
            match next.apply(&action).and_then(|()| next.check_step()) {
                Ok(()) => count = count.saturating_add(self.dfs(&next)),
                Err(v) => self.fail(v),
            }
            self.trace.pop();
        }
        self.memo.insert(fp, count.max(1));
        count.max(1)
    }
}

/// One random schedule: random deliveries and faults until quiescent, then completion.
pub fn random_schedule(
    world: &mut World,
    rng: &mut SplitMix64,
    max_steps: usize,
) -> Result<usize, Counterexample> {
    let mut trace = Vec::new();
    let mut steps = 0;
    while steps < max_steps {
        let actions = world.enabled_actions();
        let deliveries: Vec<&Action> = actions.iter().filter(|a| matches!(a, Action::Deliver(_))).collect();
        if deliveries.is_empty() {
            break;
        }
        // Mostly deliveries (in random order); a fault now and then.
        let action = if rng.below(10) == 0 {
            &actions[rng.below(actions.len() as u64) as usize]
        } else {
            deliveries[rng.below(deliveries.len() as u64) as usize]
        };
        trace.push(world.describe(action));
        if let Err(violation) = world.apply(action).and_then(|()| world.check_step()) {
            return Err(Counterexample { trace, violation });
        }
        steps += 1;
    }
    trace.push("drain: deliver everything, tick until done".into());
    world
        .drain()
        .and_then(|()| world.check_final())
        .map_err(|violation| Counterexample { trace, violation })?;
    Ok(steps)
}
