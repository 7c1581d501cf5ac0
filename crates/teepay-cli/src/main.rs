//! `teepay`: the command-line interface.

mod check;
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
    /// Serve an embedded EVM chain over JSON-RPC on a loopback port (dev accounts funded).
    Devnet(devnet::DevnetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Devnet(args) => devnet::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
