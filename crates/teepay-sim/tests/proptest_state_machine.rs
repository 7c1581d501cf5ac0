//! Property-based state-machine tests: random networks and workloads, driven by a
//! proptest-generated sequence of scheduler choices (deliver / duplicate / drop / forge /
//! crash / eject / refund request / tick). After every step the per-step invariants of
//! DESIGN §9 must hold; at the end the world is drained and every final invariant must
//! hold (conservation, atomicity, no loss, consent, liveness). Proptest shrinks any failure
//! to a minimal schedule.

use proptest::prelude::*;
use teepay_sim::scenarios::random_network;
use teepay_sim::{Action, Budget};

fn run(seed: u64, nodes: usize, payments: usize, swaps: usize, choices: &[(u8, u16)]) -> Result<(), String> {
    let mut w = random_network(seed, nodes, payments, swaps);
    w.budget = Budget {
        duplicates: 4,
        drops: 4,
        tampers: 3,
        crashes: 4,
        ejects: 3,
        refunds: 4,
        ticks: 3,
        lies: 3,
        failovers: 2,
    };
    let mut trace = Vec::new();
    for &(kind, index) in choices {
        let actions = w.enabled_actions();
        if actions.is_empty() {
            break;
        }
        // `kind` picks a class of action so faults are as likely as deliveries.
        let class: Vec<&Action> = actions
            .iter()
            .filter(|a| match kind % 4 {
                0 | 1 => matches!(a, Action::Deliver(_)),
                2 => matches!(a, Action::Duplicate(_) | Action::Drop(_) | Action::Tamper(_) | Action::Tick),
                _ => matches!(a, Action::Crash(_) | Action::Eject { .. } | Action::RequestRefund { .. }),
            })
            .collect();
        let pool: Vec<&Action> = if class.is_empty() { actions.iter().collect() } else { class };
        let action = pool[index as usize % pool.len()].clone();
        trace.push(w.describe(&action));
        w.apply(&action).and_then(|()| w.check_step()).map_err(|v| format!("{v}\nafter: {trace:#?}"))?;
    }
    w.drain().and_then(|()| w.check_final()).map_err(|v| format!("{v}\nafter: {trace:#?}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_every_invariant(
        seed in 0u64..1_000_000,
        nodes in 4usize..10,
        payments in 1usize..8,
        swaps in 0usize..3,
        choices in prop::collection::vec((any::<u8>(), any::<u16>()), 0..160),
    ) {
        if let Err(e) = run(seed, nodes, payments, swaps, &choices) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn random_networks_of_twenty_nodes_keep_every_invariant() {
    for seed in 0..5 {
        let mut w = random_network(seed, 20, 16, 4);
        let mut rng = teepay_sim::rng::SplitMix64::new(seed);
        if let Err(c) = teepay_sim::random_schedule(&mut w, &mut rng, 50_000) {
            panic!("seed {seed}: {}\n{:#?}", c.violation, c.trace);
        }
    }
}

/// Half the random networks start with sessions in use, so the schedules above also cover
/// payment orders authenticated by MAC (and the other half signed ones).
#[test]
fn random_networks_cover_macd_and_signed_orders() {
    let macd = |seed: u64| {
        let w = random_network(seed, 6, 4, 0);
        let order_of = |id| w.hub.coordinator.instance(id).expect("created").spec.orders[0].clone();
        let workload = &w.instances[w.instances.len() - 4..];
        workload.iter().map(|id| matches!(order_of(*id).auth, teepay_types::Auth::Mac(_))).collect::<Vec<_>>()
    };
    assert_eq!(macd(10), vec![true; 4]);
    assert_eq!(macd(11), vec![false; 4]);
}
