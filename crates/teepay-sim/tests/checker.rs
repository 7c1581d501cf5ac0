//! The exhaustive checker on the named scenarios (what `teepay check` runs), and mutation
//! tests showing the checker finds violations when the protocol is broken.

use teepay_sim::scenarios::{swap_2chain_4party, three_hop, three_hop_with_peer_acks};
use teepay_sim::{Action, Budget, Envelope, explore};

fn assert_clean(name: &str, budget: Budget, min_schedules: u128) {
    let mut world = match name {
        "three-hop" => three_hop(),
        "three-hop-peer-acks" => three_hop_with_peer_acks(),
        _ => swap_2chain_4party(),
    };
    world.budget = budget;
    let report = explore(&world, None);
    if let Some(c) = &report.violation {
        panic!("{name} {budget:?}: {}\n{:#?}", c.violation, c.trace);
    }
    assert!(report.schedules >= min_schedules, "{name}: only {} schedules", report.schedules);
}

#[test]
fn three_hop_every_interleaving_without_faults() {
    assert_clean("three-hop", Budget::default(), 10_000);
}

#[test]
fn three_hop_with_a_duplicate_and_a_crash() {
    assert_clean("three-hop", Budget { duplicates: 1, crashes: 1, ..Budget::default() }, 10_000);
}

#[test]
fn three_hop_with_peer_acks_with_a_duplicate_and_a_crash() {
    assert_clean("three-hop-peer-acks", Budget { duplicates: 1, crashes: 1, ..Budget::default() }, 10_000);
}

#[test]
fn swap_every_interleaving_with_a_crash() {
    assert_clean("swap", Budget { crashes: 1, ..Budget::default() }, 10_000);
}

#[test]
fn checker_finds_split_outcomes_under_a_broken_settlement_rule() {
    // Two ejects of one instance's channels at different phases must not each follow their
    // own phase; with the rule broken, the checker has to find the split.
    let mut world = three_hop();
    world.contract.broken_settlement_rule = true;
    // Start mid-payment: every node PREPARED, COMMIT delivered to exactly one of them.
    let id = world.instances[0];
    while world.hub.coordinator.instance(id).unwrap().phase == teepay_coordinator::HubPhase::None {
        world.apply(&Action::Deliver(0)).unwrap();
    }
    world.apply(&Action::Deliver(0)).unwrap();
    world.budget = Budget { ejects: 2, ..Budget::default() };
    let report = explore(&world, Some(50_000));
    let c = report.violation.expect("the checker must find the atomicity violation");
    assert!(c.violation.0.contains("atomicity") || c.violation.0.contains("no-loss"), "{}", c.violation);
    assert!(!c.trace.is_empty());
}

/// Hostile hosts, one schedule spelled out: hop1's host tells its enclave that the channel to
/// hop2 was settled on-chain (it was not) once COMMIT is out. hop1's enclave then refuses the
/// instance's COMMIT, so it cannot end by itself; the honest nodes holding its locks eject,
/// the contract fixes the outcome, and every honest node ends with exactly what the applied
/// instances explain (the final invariants, checked for honest nodes).
#[test]
fn a_host_that_falsely_settles_a_channel_leaves_the_honest_nodes_whole() {
    use teepay_sim::scenarios::CHAIN_1;
    let mut w = three_hop();
    w.budget = Budget { lies: 1, ..Budget::default() };
    let id = w.instances[0];
    while w.hub.coordinator.instance(id).unwrap().phase == teepay_coordinator::HubPhase::None {
        w.apply(&Action::Deliver(0)).unwrap();
    }
    let channel = w.channel_between(CHAIN_1, 1, 2).unwrap();
    w.apply(&Action::HostLie { node: 1, lie: teepay_sim::Lie::FalseSettled(channel) }).unwrap();
    assert!(w.liars.contains(&1));
    w.drain().unwrap();
    w.check_final().unwrap();
    assert!(w.contract.channels.values().any(|c| !c.open), "an honest node ejected");
}

/// The exhaustive hostile-host scenario: one host lie per schedule, everything explored.
#[test]
fn three_hop_with_a_host_lie_in_every_schedule() {
    let w = teepay_sim::scenarios::three_hop_hostile_hosts();
    let report = explore(&w, Some(20_000));
    assert!(report.violation.is_none(), "{:?}", report.violation);
    assert!(report.states >= 20_000, "explored {} states", report.states);
}

/// Hostile hub host, one schedule spelled out: hop1 ejects its channel to hop2 while the
/// instance is PREPARED, the contract fixes an outcome, and before the hub's chain sync
/// reports it the hub's host reports the other one. The hub enclave cannot tell (no light
/// client) and RESOLVEs the lie; every honest node refuses that RESOLVE (each ends only with
/// the outcome its own host read from the contract), so all of them end with the contract's
/// outcome and whole.
#[test]
fn a_hub_host_that_invents_an_outcome_moves_no_honest_node_against_the_chain() {
    use teepay_sim::scenarios::CHAIN_1;
    use teepay_types::Outcome;
    let mut w = three_hop();
    w.budget = Budget { lies: 1, ejects: 1, ..Budget::default() };
    let id = w.instances[0];
    while w.hub.coordinator.instance(id).unwrap().phase == teepay_coordinator::HubPhase::None {
        w.apply(&Action::Deliver(0)).unwrap();
    }
    let channel = w.channel_between(CHAIN_1, 1, 2).unwrap();
    w.apply(&Action::Eject { node: 1, channel }).unwrap();
    let fixed = *w.contract.outcomes.get(&id).expect("the eject fixed the outcome");
    let lie = match fixed {
        Outcome::Apply => Outcome::Revert,
        Outcome::Revert => Outcome::Apply,
    };
    w.apply(&Action::FalseOutcome { instance: id, outcome: lie }).unwrap();
    assert_eq!(w.hub.coordinator.instance(id).unwrap().phase.outcome(), Some(lie), "the hub believed it");
    // The lie's RESOLVEs reach the nodes before their watchers see the eject's block.
    while let Some(i) = w.network.iter().position(|e| matches!(e, Envelope::ToNode { .. })) {
        w.apply(&Action::Deliver(i)).unwrap();
    }
    w.drain().unwrap();
    w.check_final().unwrap();
    for node in &w.nodes {
        let record = node.enclave.inspect().instances.get(&id);
        if let Some(r) = record {
            assert_eq!(r.status, teepay_enclave::InstanceStatus::Finished(fixed), "{}", node.name);
        }
    }
}

/// A hub group whose leader may be lost at any point of the payment (and a message
/// duplicated): a standby takes office on exactly the leader's state, and every invariant
/// holds in every schedule explored.
#[test]
fn three_hop_with_a_hub_leader_lost_at_any_point() {
    let w = teepay_sim::scenarios::three_hop_hub_group();
    let report = explore(&w, Some(20_000));
    assert!(report.violation.is_none(), "{:?}", report.violation);
    assert!(report.states >= 1_000, "explored {} states", report.states);
}
