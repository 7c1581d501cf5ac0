//! `teepay`: the command-line interface.

mod check;
mod client;
mod config;
mod daemons;
mod devnet;
mod group;
mod invoice;
mod watch;

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
    Demo(teepay_demo::DemoArgs),
    /// Run the hub (service provider server): node links, chain sync, routing, gRPC API.
    Hub(daemons::HubArgs),
    /// A hub group's membership: make a governance key, show or admit the replicas' enclaves.
    Group(group::GroupArgs),
    /// Run a node daemon: hosts the node enclave, links to the hub, serves the local API.
    Node(daemons::NodeArgs),
    /// Deploy PaymentChannels on a chain (paid by a well-known dev account).
    Deploy(daemons::DeployArgs),
    /// Send wei from a well-known dev account (e.g. to fund an enclave's account).
    Faucet(daemons::FaucetArgs),
    /// An account's balance on a chain: ether, or with `--token` an ERC-20 token's.
    Balance(daemons::BalanceArgs),
    /// This node's enclave address, hub and chains.
    Info(client::NodeTarget),
    /// Pay an invoice (`teepay pay teepay1…`), or push a payment on one chain, over the
    /// shortest-time route.
    Pay(client::PayArgs),
    /// Invoices this node issues as payee: create (with a QR code), list, cancel, decode.
    Invoice(invoice::InvoiceArgs),
    /// Proof of payment: get a receipt from the node, or verify one offline.
    Receipt(invoice::ReceiptArgs),
    /// Live events: a node's `invoices` or `payments`, or the hub's `instances`; resumes
    /// from the last event after any interruption.
    Watch(watch::WatchArgs),
    /// Status of a payment or swap.
    Status(client::StatusArgs),
    /// Open, fund, close or eject channels; list them.
    Channel(client::ChannelArgs),
    /// Propose swap intents, list the hub's board, accept one.
    Swap(client::SwapArgs),
    /// The hub's payment network map.
    Network(client::HubTarget),
    /// Measure end-to-end throughput and latency beside the protocol's in-memory limit.
    Bench(teepay_bench::BenchArgs),
    /// Serve an embedded EVM chain over JSON-RPC on a loopback port (dev accounts funded).
    Devnet(devnet::DevnetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Structured logs on stderr; RUST_LOG picks the level (warnings only by default, so the
    // demo's narration stays readable; openraft logs every unreachable peer and stale vote,
    // routine while a replica is down: RUST_LOG=openraft=warn shows them).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Devnet(args) => devnet::run(&args),
        Command::Demo(args) => teepay_demo::run(&args),
        Command::Bench(args) => teepay_bench::run(&args),
        Command::Hub(args) => daemons::hub(&args),
        Command::Node(args) => daemons::node(&args),
        Command::Group(args) => group::run(&args),
        Command::Deploy(args) => daemons::deploy_cmd(&args),
        Command::Faucet(args) => daemons::faucet(&args),
        Command::Balance(args) => daemons::balance(&args),
        Command::Info(t) => client::info(&t),
        Command::Pay(args) => client::pay(&args),
        Command::Status(args) => client::status(&args),
        Command::Invoice(args) => invoice::invoice(&args),
        Command::Watch(args) => watch::run(&args),
        Command::Receipt(args) => invoice::receipt(&args),
        Command::Channel(args) => client::channel(&args),
        Command::Swap(args) => client::swap(&args),
        Command::Network(t) => client::network(&t),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
