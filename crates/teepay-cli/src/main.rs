//! `teepay`: the command-line interface.

mod check;
mod demo;
mod devnet;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "teepay", version, about = "teepay: TEE-secured off-chain payments and cross-chain swaps")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explore protocol schedules and check the DESIGN §9 invariants after every step.
    Check(check::CheckArgs),
    /// Run the whole system on this machine and narrate it: two chains, a hub, six nodes,
    /// payments, swaps, a refund, an eject and closes, checked from on-chain data.
    Demo(demo::DemoArgs),
    /// Serve an embedded EVM chain over JSON-RPC on a loopback port (dev accounts funded).
    Devnet(devnet::DevnetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Structured logs on stderr; RUST_LOG picks the level (warnings only by default, so the
    // demo's narration stays readable).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Devnet(args) => devnet::run(&args),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
