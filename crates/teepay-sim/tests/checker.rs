//! The exhaustive checker on the named scenarios (what `teepay check` runs), and mutation
//! tests showing the checker finds violations when the protocol is broken.

use teepay_sim::scenarios::{swap_2chain_4party, three_hop, three_hop_with_peer_acks};
use teepay_sim::{Action, Budget, explore};

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
