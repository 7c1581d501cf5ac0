//! `teepay devnet`: the embedded chain served over Ethereum JSON-RPC on a loopback port, so
//! separate hub and node processes (and tools like `cast`) share one chain with nothing
//! installed. Dev accounts are anvil's, funded with 10,000 ether each.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use teepay_chain::dev::{DEV_ACCOUNT_BALANCE, DEV_PRIVATE_KEYS, dev_key};
use teepay_chain::{Chain, EmbeddedChain};
use teepay_types::ChainId;

#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// Address to listen on; port 0 picks a free port (printed as "Listening on …").
    #[arg(long, default_value = "127.0.0.1:8545")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 31337)]
    chain_id: u64,
    /// Journal file: the chain is replayed from it at start and every block is appended
    /// (fsynced) before its submitter hears back. Without it the chain lives in memory.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Do not print the dev accounts' private keys.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: &DevnetArgs) -> Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "devnet serves unauthenticated dev accounts; listen on a loopback address, not {}",
            args.listen
        );
    }
    if args.chain_id == 0 {
        bail!("chain id must be positive");
    }
    let chain_id = ChainId(args.chain_id);
    let chain = match &args.state {
        Some(path) => {
            EmbeddedChain::open(path, chain_id).with_context(|| format!("opening {}", path.display()))?
        }
        None => EmbeddedChain::new(chain_id),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let height = chain.block_number().await?;
        let devnet = teepay_chain::devnet::serve(chain, args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        if !args.quiet {
            println!("teepay devnet: chain id {}, block {height}", args.chain_id);
            println!("Dev accounts ({} ether each):", DEV_ACCOUNT_BALANCE / 10u128.pow(18));
            for (i, hex) in DEV_PRIVATE_KEYS.iter().enumerate() {
                println!("  ({i}) {}  key 0x{hex}", dev_key(i).address());
            }
        }
        // The same line anvil prints, so scripts parse the port of `--listen 127.0.0.1:0` alike.
        println!("Listening on {}", devnet.addr);
        tokio::select! {
            r = devnet.task => match r {
                Ok(Ok(())) => Ok(ExitCode::SUCCESS),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            },
            _ = tokio::signal::ctrl_c() => {
                println!("stopping devnet");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
