//! `teepay-fuzz`: runs the fuzz targets (README, "Fuzzing").
//!
//! ```sh
//! cargo run --release -p teepay-fuzz -- --execs 10000000           # all targets, split evenly
//! cargo run --release -p teepay-fuzz -- --target hub-ack --execs 1000000 --seed 7
//! cargo run --release -p teepay-fuzz -- --replay target/fuzz-crashes/hub-ack-0.bin
//! ```

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use teepay_fuzz::{Corpus, TARGETS, run};

fn main() -> Result<std::process::ExitCode> {
    let mut execs: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut only: Option<String> = None;
    let mut replay: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--execs" => execs = value()?.replace('_', "").parse().context("--execs: a number")?,
            "--seed" => seed = value()?.parse().context("--seed: a number")?,
            "--target" => only = Some(value()?),
            "--replay" => replay = Some(PathBuf::from(value()?)),
            "--list" => {
                for t in TARGETS {
                    println!("{}", t.name);
                }
                return Ok(std::process::ExitCode::SUCCESS);
            }
            other => {
                bail!("unknown argument {other} (--execs N, --seed S, --target NAME, --replay FILE, --list)")
            }
        }
    }
    let corpus = Corpus::build();
    if let Some(path) = replay {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let target = TARGETS
            .iter()
            .find(|t| name.starts_with(&format!("{}-", t.name)))
            .with_context(|| format!("{name}: not named after a target"))?;
        let input = std::fs::read(&path)?;
        let mut state = (target.setup)(&corpus);
        (target.exec)(&mut state, &input);
        println!("{}: no panic", target.name);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let targets: Vec<_> = TARGETS.iter().filter(|t| only.as_deref().is_none_or(|n| n == t.name)).collect();
    if targets.is_empty() {
        bail!("no target named {only:?} (--list shows them)");
    }
    let per = execs.div_ceil(targets.len() as u64);
    let crash_dir = PathBuf::from("target/fuzz-crashes");
    let (mut total, mut panics, mut seconds) = (0, 0, 0.0);
    for t in targets {
        let r = run(t, &corpus, per, seed, &crash_dir);
        println!(
            "{:<22} {:>11} execs {:>8.1} s {:>9.0}/s  past decoding {:>5.1}%  panics {}",
            r.target,
            r.execs,
            r.seconds,
            r.execs as f64 / r.seconds.max(1e-9),
            100.0 * r.reached as f64 / r.execs.max(1) as f64,
            r.panics.len()
        );
        for p in &r.panics {
            println!("  panicking input saved to {}", p.display());
        }
        total += r.execs;
        panics += r.panics.len();
        seconds += r.seconds;
    }
    println!("total: {total} executions in {seconds:.1} s, {panics} panics (seed {seed})");
    Ok(if panics == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
