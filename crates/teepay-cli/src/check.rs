//! `teepay check`: the exhaustive and random schedule checkers.

use anyhow::{Context, bail};
use clap::Args;
use std::process::ExitCode;
use std::time::Instant;
use teepay_sim::rng::SplitMix64;
use teepay_sim::scenarios::{SCENARIOS, by_name, random_network};
use teepay_sim::{Budget, Counterexample, explore, random_schedule};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Scenario to explore exhaustively: three-hop, swap-2chain-4party or three-hop-peer-acks.
    #[arg(long, required_unless_present = "random")]
    scenario: Option<String>,
    /// Sample random schedules on random networks instead of exhaustive exploration.
    #[arg(long, conflicts_with = "scenario")]
    random: bool,
    /// Number of random runs.
    #[arg(long, default_value_t = 100)]
    runs: u64,
    /// Seed of the first random run (run i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes per random network (at least 20).
    #[arg(long, default_value_t = 24)]
    nodes: usize,
    /// Concurrent payments per random network.
    #[arg(long, default_value_t = 12)]
    payments: usize,
    /// Concurrent two-party swaps per random network.
    #[arg(long, default_value_t = 3)]
    swaps: usize,
    /// Stop exhaustive exploration after this many distinct states (default: no limit).
    #[arg(long)]
    max_states: Option<usize>,
    /// Fault budget per schedule, overriding the scenario's default, e.g.
    /// `--faults duplicates=1,drops=0,tampers=1,crashes=1,ejects=1,refunds=1,ticks=1,lies=1,failovers=1`
    /// (`lies`: a node host lying to its enclave, or the hub host replaying an order;
    /// `failovers`: the hub's leader lost, in a scenario with a hub group).
    #[arg(long, value_parser = parse_faults)]
    faults: Option<Budget>,
}

fn parse_faults(s: &str) -> Result<Budget, String> {
    let mut b = Budget::default();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| format!("expected key=value, got {part:?}"))?;
        let n: u8 = value.parse().map_err(|_| format!("{key}: {value:?} is not a number 0-255"))?;
        match key {
            "duplicates" => b.duplicates = n,
            "drops" => b.drops = n,
            "tampers" => b.tampers = n,
            "crashes" => b.crashes = n,
            "ejects" => b.ejects = n,
            "refunds" => b.refunds = n,
            "ticks" => b.ticks = n,
            "lies" => b.lies = n,
            "failovers" => b.failovers = n,
            _ => {
                return Err(format!(
                    "unknown fault {key:?} (duplicates, drops, tampers, crashes, ejects, refunds, ticks, lies, failovers)"
                ));
            }
        }
    }
    Ok(b)
}

fn print_counterexample(c: &Counterexample) {
    println!("first violation: {}", c.violation);
    println!("schedule:");
    for (i, step) in c.trace.iter().enumerate() {
        println!("  {:>3}. {step}", i + 1);
    }
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if args.random {
        if args.nodes < 20 {
            bail!("--nodes must be at least 20 (got {})", args.nodes);
        }
        let mut steps = 0;
        for i in 0..args.runs {
            let seed = args.seed.checked_add(i).context("seed overflow")?;
            let mut world = random_network(seed, args.nodes, args.payments, args.swaps);
            let mut rng = SplitMix64::new(seed ^ 0x5eed);
            match random_schedule(&mut world, &mut rng, 100_000) {
                Ok(n) => steps += n,
                Err(c) => {
                    println!("explored {} schedules, 1 violations (seed {seed})", i + 1);
                    print_counterexample(&c);
                    return Ok(ExitCode::FAILURE);
                }
            }
            if (i + 1) % 10 == 0 || i + 1 == args.runs {
                eprintln!("  {}/{} runs, {steps} steps, {:.1?}", i + 1, args.runs, started.elapsed());
            }
        }
        println!(
            "explored {} schedules, 0 violations ({} nodes, {} payments + {} swaps each, {steps} steps, {:.1?})",
            args.runs,
            args.nodes,
            args.payments,
            args.swaps,
            started.elapsed()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let name = args.scenario.as_deref().expect("clap requires --scenario without --random");
    let mut world = by_name(name)
        .with_context(|| format!("unknown scenario {name:?}; known: {}", SCENARIOS.join(", ")))?;
    if let Some(budget) = args.faults {
        world.budget = budget;
    }
    let b = world.budget;
    eprintln!(
        "exploring {name}: faults per schedule: {} duplicate, {} drop, {} forgery, {} crash, {} eject, {} refund request, {} clock jump, {} host lie, {} leader loss",
        b.duplicates, b.drops, b.tampers, b.crashes, b.ejects, b.refunds, b.ticks, b.lies, b.failovers
    );
    let report = explore(&world, args.max_states);
    let violations = u32::from(report.violation.is_some());
    println!(
        "explored {} schedules, {violations} violations ({} distinct states, {} transitions, {:.1?})",
        report.schedules,
        report.states,
        report.transitions,
        started.elapsed()
    );
    match &report.violation {
        Some(c) => {
            print_counterexample(c);
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}
