//! `teepay hub`, `teepay node`, `teepay deploy` and `teepay faucet`: the long-running
//! services and the chain setup a person runs by hand (see README).

use crate::config::{self, ChainConfig};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use teepay_chain::contract::send_from_key;
use teepay_chain::{AnyChain, Chain};
use teepay_demo::dev as sim;
use teepay_enclave::{NodeConfig as EnclaveConfig, NodeEnclave, Request, Response};
use teepay_hub::runtime::{HubChain, HubRuntimeConfig};
use teepay_hub::sync::SyncConfig;
use teepay_link::host::{FilePlatform, SealedLogFile};
use teepay_node::api::NodeApi;
use teepay_node::onchain::{ChainLink, register, spawn_watcher};
use teepay_node::{NodeSettings, spawn};
use teepay_types::Platform as _;
use teepay_types::{Address, Amount, ChainId};

#[derive(clap::Args, Debug)]
pub struct HubArgs {
    /// TOML config (see README); flags below override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://…
    #[arg(long)]
    db: Option<String>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    api: Option<std::net::SocketAddr>,
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Forward every participant's own signed PREPARED ack with COMMIT, so nodes need not
    /// trust the hub enclave alone that everyone locked (slower: ECDSA per participant).
    #[arg(long)]
    verify_peer_acks: bool,
    /// This process's id among the config's [[replicas]] (a hub group).
    #[arg(long)]
    replica: Option<u64>,
    /// Create the hub identity and the group if this replica has no state yet.
    #[arg(long)]
    bootstrap: bool,
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    api: Option<std::net::SocketAddr>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// JSON-RPC URL of the chain.
    #[arg(long)]
    rpc: String,
    /// Which well-known dev account pays (anvil's accounts 0–9).
    #[arg(long, default_value_t = 0)]
    dev_account: usize,
    /// Seconds a REVERT claim on a swap lock waits for the hub's CONFIRM certificate
    /// before it is final (DESIGN §10).
    #[arg(long, default_value_t = teepay_chain::contract::DEFAULT_CHALLENGE_WINDOW)]
    challenge_window: u64,
    /// Deploy a plain ERC-20 test token instead (local chains: anyone may mint it), as
    /// SYMBOL or SYMBOL:DECIMALS (default 18 decimals).
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct FaucetArgs {
    #[arg(long)]
    rpc: String,
    #[arg(long)]
    to: String,
    /// `5eth`, `25gwei`, or a whole number of wei (with `--token`: `1000usdc` in the token's
    /// unit, or its base units).
    #[arg(long)]
    amount: String,
    /// Mint a test token (`teepay deploy --token`) instead of sending ether.
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value_t = 9)]
    dev_account: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct BalanceArgs {
    #[arg(long)]
    rpc: String,
    /// Whose balance (an enclave's address from `teepay info`, or any account).
    #[arg(long)]
    of: String,
    /// An ERC-20 token's address: its balance in the token's unit (its symbol() and decimals()).
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    json: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The configured confirmation depth, else the chain's finality depth (logged, since it
/// decides how long every open, deposit and eject takes to be seen).
fn confirmations(c: &ChainConfig, id: ChainId) -> u64 {
    let depth = c.confirmations.unwrap_or_else(|| teepay_chain::finality::default_confirmations(id));
    tracing::info!(
        chain = id.0,
        confirmations = depth,
        configured = c.confirmations.is_some(),
        "events used once this deep"
    );
    depth
}

/// The token symbols configured for chain `id`, checked: each a plain word that is not one
/// of ether's units, naming a 20-byte address.
fn token_symbols(c: &ChainConfig, id: ChainId) -> Result<Vec<teepay_node::assets::TokenSymbol>> {
    let ether = teepay_types::units::ether_units();
    c.tokens
        .iter()
        .map(|(symbol, token)| {
            let symbol = symbol.to_ascii_lowercase();
            if symbol.is_empty() || !symbol.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                bail!("chain {}: token symbol {symbol:?} must be letters and digits", id.0);
            }
            if ether.iter().any(|u| u.symbol == symbol) || symbol.chars().all(|ch| ch.is_ascii_digit()) {
                bail!("chain {}: {symbol:?} cannot name a token (it reads as ether or a number)", id.0);
            }
            let token = Address::from_hex(token).with_context(|| {
                format!("chain {}: token {symbol}: {token:?} is not a 20-byte hex address", id.0)
            })?;
            Ok(teepay_node::assets::TokenSymbol { chain: id, symbol, token })
        })
        .collect()
}

async fn connect(c: &ChainConfig) -> Result<(AnyChain, ChainId, Address)> {
    let chain = AnyChain::from_spec(&c.rpc, ChainId(0))?;
    let id = chain.chain_id().await.with_context(|| format!("chain at {}", c.rpc))?;
    let contract = Address::from_hex(&c.contract)
        .with_context(|| format!("contract {:?} is not a 20-byte hex address", c.contract))?;
    Ok((chain, id, contract))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

pub fn hub(args: &HubArgs) -> Result<ExitCode> {
    teepay_link::host::exit_on_panic();
    let mut cfg: config::HubConfig = match &args.config {
        Some(p) => config::load(p)?,
        None => toml::from_str("")?,
    };
    if let Some(v) = &args.db {
        cfg.db = Some(v.clone());
    }
    cfg.listen = args.listen.unwrap_or(cfg.listen);
    cfg.api = args.api.unwrap_or(cfg.api);
    cfg.metrics = args.metrics.or(cfg.metrics);
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    cfg.verify_peer_acks |= args.verify_peer_acks;
    cfg.replica = args.replica.or(cfg.replica);
    cfg.bootstrap |= args.bootstrap;
    if let [only] = cfg.replicas.as_slice() {
        // A one-replica group is exactly a single hub.
        cfg.listen = only.link;
        cfg.api = only.api.unwrap_or(cfg.api);
    }
    if cfg.replicas.len() > 1 && cfg.replica.is_none_or(|id| !cfg.replicas.iter().any(|r| r.id == id)) {
        bail!("a hub group config needs `replica = <id>` (or --replica) naming one of its [[replicas]]");
    }
    if cfg.chains.is_empty() {
        bail!("no chains configured: add [[chains]] entries (rpc, contract, from_block) to the config");
    }
    runtime()?.block_on(async {
        let mut chains = Vec::new();
        for c in &cfg.chains {
            let (chain, id, contract) = connect(c).await?;
            chains.push(HubChain {
                chain,
                sync: SyncConfig {
                    confirmations: confirmations(c, id),
                    ..SyncConfig::new(id, contract, c.from_block)
                },
            });
        }
        let key = sim::attestation_key_from(
            cfg.attestation_key.as_deref().unwrap_or(sim::DEFAULT_ATTESTATION_KEY),
        )?;
        let db =
            cfg.db.clone().unwrap_or_else(|| format!("sqlite://{}", cfg.state_dir.join("hub.db").display()));
        let runtime_config = HubRuntimeConfig {
            listen: cfg.listen,
            state_dir: cfg.state_dir.clone(),
            db_url: db,
            chains,
            attestation_key: key,
            measurement: sim::HUB_MEASUREMENT,
            allowed_node_measurements: vec![sim::NODE_MEASUREMENT],
            prepare_timeout: Duration::from_millis(cfg.prepare_timeout_ms),
            swap_lock_time: Duration::from_millis(cfg.swap_lock_time_ms),
            retransmit_after: Duration::from_millis(200),
            round_auth: Default::default(),
            peer_acks: cfg.verify_peer_acks,
            tick: Duration::from_millis(20),
            batch_window: Duration::from_micros(cfg.batch_window_us),
            sync_poll: Duration::from_millis(100),
            metrics_listen: cfg.metrics,
            api_listen: Some(cfg.api),
        };
        if cfg.replicas.len() > 1 {
            return hub_replica(&cfg, runtime_config).await;
        }
        let mut running = teepay_hub::runtime::start(runtime_config).await?;
        println!(
            "hub {} listening for nodes on {}, API on {}{}",
            running.enclave,
            running.handle.addr,
            running.api_addr.map(|a| a.to_string()).unwrap_or_default(),
            running.metrics_addr.map(|a| format!(", metrics on http://{a}/metrics")).unwrap_or_default()
        );
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = running.handle.executor_ended() => {
                eprintln!("error: the hub's executor stopped (the log says why); exiting, to be restarted from the sealed state");
                running.stop();
                return Ok(ExitCode::FAILURE);
            }
        }
        println!("hub stopping");
        running.stop();
        Ok(ExitCode::SUCCESS)
    })
}

/// One replica of a hub group: follows the group, and drives nodes while it leads.
async fn hub_replica(cfg: &config::HubConfig, hub: HubRuntimeConfig) -> Result<ExitCode> {
    use teepay_hub::replicated::{ReplicaSpec, ReplicatedConfig, start};
    let replicas = cfg
        .replicas
        .iter()
        .map(|r| ReplicaSpec { id: r.id, link: r.link, raft: r.raft, api: r.api })
        .collect();
    let me = cfg.replica.expect("checked above");
    let governance = match cfg.governance.as_deref() {
        Some(g) => Some(
            Address::from_hex(g.trim())
                .ok_or_else(|| anyhow::anyhow!("governance: not a 20-byte hex address: {g:?}"))?,
        ),
        None => bail!(
            "a hub group needs `governance = \"0x…\"`: the address of the operators' key that admits \
             replicas (`teepay group admit`; a new key: `teepay group key FILE`)"
        ),
    };
    let running = start(ReplicatedConfig { hub, me, replicas, bootstrap: cfg.bootstrap, governance }).await?;
    println!(
        "hub {} replica {} of {}{}",
        running.enclave,
        me,
        cfg.replicas.len(),
        running.metrics_addr.map(|a| format!(", metrics on http://{a}/metrics")).unwrap_or_default()
    );
    shutdown_signal().await;
    println!("hub replica stopping");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

pub fn node(args: &NodeArgs) -> Result<ExitCode> {
    teepay_link::host::exit_on_panic();
    let mut cfg: config::NodeConfig = config::load(&args.config)?;
    cfg.api = args.api.unwrap_or(cfg.api);
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    runtime()?.block_on(async {
        let key = sim::attestation_key_from(
            cfg.attestation_key.as_deref().unwrap_or(sim::DEFAULT_ATTESTATION_KEY),
        )?;
        let mut links = Vec::new();
        let mut tokens = Vec::new();
        for c in &cfg.chains {
            let (chain, id, contract) = connect(c).await?;
            tokens.extend(token_symbols(c, id)?);
            links.push(ChainLink {
                chain,
                id,
                contract,
                from_block: c.from_block,
                confirmations: confirmations(c, id),
            });
        }
        std::fs::create_dir_all(&cfg.state_dir)?;
        let platform = FilePlatform::open(&cfg.state_dir)?;
        let sealed = cfg.state_dir.join("sealed");
        let restorable =
            platform.restorable(&sealed).with_context(|| format!("reading {}", sealed.display()))?;
        let mut enclave = match restorable {
            Some(log) => {
                let e = NodeEnclave::restore(platform, &log).context("restoring the node enclave")?;
                if e.inspect().config.require_peer_acks != cfg.require_peer_acks {
                    eprintln!(
                        "warning: require_peer_acks = {} in the config, but this node's enclave was created with {} and keeps it (it is sealed configuration)",
                        cfg.require_peer_acks,
                        e.inspect().config.require_peer_acks
                    );
                }
                e
            }
            None => {
                let config = EnclaveConfig {
                    measurement: sim::NODE_MEASUREMENT,
                    attestation_authority: key.address(),
                    allowed_hub_measurements: vec![sim::HUB_MEASUREMENT],
                    contracts: links.iter().map(|l| (l.id, l.contract)).collect(),
                    max_tx_fee: Amount(10u128.pow(16)),
                    require_peer_acks: cfg.require_peer_acks,
                };
                let (e, blob) = NodeEnclave::create(platform, config, teepay_link::os_entropy()?)?;
                if !e.platform().persists_sealed() {
                    SealedLogFile::at(&sealed).record(&blob)?;
                }
                e
            }
        };
        let mut report = |chain| match enclave.handle(0, Request::Report { chain }) {
            Ok(out) => match out.response {
                Response::Report(r) => Ok(r.attest(&key)),
                _ => bail!("unexpected enclave response"),
            },
            Err(e) => Err(e.into()),
        };
        let hub_quote = report(ChainId(0))?;
        let quotes = links.iter().map(|l| Ok((l.id, report(l.id)?))).collect::<Result<Vec<_>>>()?;
        let events_path = cfg.state_dir.join("events.jsonl");
        let events = teepay_events::EventLog::open(&events_path, NODE_EVENTS_KEPT)
            .with_context(|| format!("event log {}", events_path.display()))?;
        let settings = NodeSettings {
            hub: cfg.hub,
            standby_hubs: cfg.standby_hubs.clone(),
            state_path: sealed,
            quote: hub_quote,
            reconnect_after: Duration::from_millis(500),
            order_ttl: Duration::from_secs(60),
            events: Some(events.clone()),
        };
        let (handle, daemon) = spawn(enclave, settings);
        for hook in &cfg.webhooks {
            let config = teepay_events::webhook::WebhookConfig {
                url: hook.url.clone(),
                secret: hook.secret.clone(),
                kinds: hook.events.clone(),
                ca_file: hook.ca_file.clone(),
            };
            // One cursor per URL, so reordering the config never mixes two webhooks' cursors.
            let tag = teepay_types::ids::to_hex(&teepay_types::keccak256(hook.url.as_bytes())[..8]);
            let cursor = cfg.state_dir.join(format!("webhook-{tag}.cursor"));
            teepay_events::webhook::spawn(events.clone(), config, handle.address.to_string(), cursor)
                .with_context(|| format!("webhook {}", hook.url))?;
        }
        for l in &links {
            spawn_watcher(handle.clone(), l.clone(), Duration::from_millis(100));
            // Registration needs gas from the enclave's own account: retried in the
            // background until the account is funded (`teepay info` shows the state).
            let quote = quotes.iter().find(|(c, _)| *c == l.id).expect("one per link").1.clone();
            let (handle, l) = (handle.clone(), l.clone());
            tokio::spawn(async move {
                loop {
                    let funded = l.chain.balance(handle.address).await.map(|b| b.0 > 0).unwrap_or(false);
                    if funded {
                        match register(&handle, &l, &quote).await {
                            Ok(Some(_)) => {
                                tracing::info!(chain = l.id.0, "enclave registered on-chain");
                                return;
                            }
                            Ok(None) => return,
                            Err(e) => tracing::warn!(chain = l.id.0, error = %e, "registering the enclave"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
        let chains = links.iter().map(|l| l.id).collect();
        let api = NodeApi { node: handle.clone(), links, chains, hub: cfg.hub.to_string(), quotes, tokens, units: Default::default() };
        let (bound, api_task) = api.serve(cfg.api).await.with_context(|| format!("API on {}", cfg.api))?;
        println!("node {} connected to hub {}, API on {bound}", handle.address, cfg.hub);
        // A node whose enclave task or API ended must not linger: its peers' payments would
        // wait on it with nobody told to restart it.
        let stopped = tokio::select! {
            _ = shutdown_signal() => None,
            _ = daemon => Some("the node's enclave task"),
            _ = api_task => Some("the node's API server"),
        };
        if let Some(what) = stopped {
            eprintln!("error: {what} stopped (the log says why); exiting, to be restarted from the sealed state");
            return Ok(ExitCode::FAILURE);
        }
        println!("node stopping");
        Ok(ExitCode::SUCCESS)
    })
}

/// How many events a node keeps for subscribers and webhooks that resume.
const NODE_EVENTS_KEPT: usize = 100_000;

pub fn deploy_cmd(args: &DeployArgs) -> Result<ExitCode> {
    if let Some(token) = &args.token {
        return deploy_token_cmd(args, token);
    }
    runtime()?.block_on(async {
        let chain = AnyChain::from_spec(&args.rpc, ChainId(0))?;
        let d = teepay_chain::contract::deploy_with_window(
            &chain,
            &teepay_chain::dev::dev_key(args.dev_account),
            sim::attestation_key().address(),
            &[sim::NODE_MEASUREMENT],
            args.challenge_window,
        )
        .await
        .with_context(|| format!("deploying to {}", args.rpc))?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"chain_id": d.chain.0, "contract": d.address.to_string(), "block": d.block, "gas_used": d.gas_used})
            );
        } else {
            println!("PaymentChannels deployed on chain {} at {} (block {}, gas {})", d.chain.0, d.address, d.block, d.gas_used);
            println!("config:\n[[chains]]\nrpc = \"{}\"\ncontract = \"{}\"\nfrom_block = {}", args.rpc, d.address, d.block);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn deploy_token_cmd(args: &DeployArgs, spec: &str) -> Result<ExitCode> {
    let (symbol, decimals) = match spec.split_once(':') {
        Some((s, d)) => (s, d.parse::<u8>().with_context(|| format!("--token {spec:?}: decimals 0–255"))?),
        None => (spec, 18),
    };
    if symbol.is_empty() || symbol.len() > 11 || !symbol.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("--token {spec:?}: a symbol of 1–11 letters or digits, optionally :DECIMALS (USDC:6)");
    }
    runtime()?.block_on(async {
        let chain = AnyChain::from_spec(&args.rpc, ChainId(0))?;
        let key = teepay_chain::dev::dev_key(args.dev_account);
        let name = format!("{symbol} (teepay test token)");
        let address = teepay_chain::contract::deploy_token(&chain, &key, &name, symbol, decimals, 0)
            .await
            .with_context(|| format!("deploying a token to {}", args.rpc))?;
        if args.json {
            println!("{}", serde_json::json!({"token": address.to_string(), "symbol": symbol, "decimals": decimals}));
        } else {
            println!("test token {symbol} ({decimals} decimals) deployed at {address}; mint with `teepay faucet --token {address}`");
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn balance(args: &BalanceArgs) -> Result<ExitCode> {
    let of = Address::from_hex(&args.of)
        .with_context(|| format!("--of {:?} is not a 20-byte hex address", args.of))?;
    let token = match &args.token {
        Some(t) => Some(
            Address::from_hex(t).with_context(|| format!("--token {t:?} is not a 20-byte hex address"))?,
        ),
        None => None,
    };
    runtime()?.block_on(async {
        let chain = AnyChain::from_spec(&args.rpc, ChainId(0))?;
        let (amount, shown) = match token {
            Some(token) => {
                let amount = teepay_chain::contract::token_balance(&chain, token, of).await?;
                let unit = teepay_chain::contract::token_unit(&chain, token).await?;
                (amount, teepay_types::units::format_token_with_base(amount, &unit))
            }
            None => {
                let amount = chain.balance(of).await?;
                (amount, teepay_types::units::format_ether_with_base(amount))
            }
        };
        if args.json {
            let token = token.map(|t| t.to_string()).unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({"of": of.to_string(), "token": token, "balance": amount.0.to_string()})
            );
        } else {
            println!("{of}: {shown}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn faucet(args: &FaucetArgs) -> Result<ExitCode> {
    let to = Address::from_hex(&args.to)
        .with_context(|| format!("--to {:?} is not a 20-byte hex address", args.to))?;
    if let Some(token) = &args.token {
        let token = Address::from_hex(token)
            .with_context(|| format!("--token {token:?} is not a 20-byte hex address"))?;
        return runtime()?.block_on(async {
            let chain = AnyChain::from_spec(&args.rpc, ChainId(0))?;
            // Base units, or the token's own unit as its contract names it (`1000usdc`).
            let unit = teepay_chain::contract::token_unit(&chain, token).await?;
            let amount = teepay_types::units::parse_amount(&args.amount, std::slice::from_ref(&unit))
                .map_err(|e| anyhow::anyhow!("--amount: {e}"))?
                .0;
            let key = teepay_chain::dev::dev_key(args.dev_account);
            teepay_chain::contract::mint_token(&chain, &key, token, to, Amount(amount)).await?;
            if args.json {
                println!("{}", serde_json::json!({"to": to.to_string(), "token": token.to_string(), "amount": amount.to_string()}));
            } else {
                let shown = teepay_types::units::format_token_with_base(Amount(amount), &unit);
                println!("minted {shown} of token {token} to {to}");
            }
            Ok(ExitCode::SUCCESS)
        });
    }
    let amount = teepay_types::units::parse_amount(&args.amount, &teepay_types::units::ether_units())
        .map_err(|e| anyhow::anyhow!("--amount: {e}"))?
        .0;
    runtime()?.block_on(async {
        let chain = AnyChain::from_spec(&args.rpc, ChainId(0))?;
        let r = send_from_key(&chain, &teepay_chain::dev::dev_key(args.dev_account), Some(to), Amount(amount), vec![])
            .await?;
        if args.json {
            println!("{}", serde_json::json!({"to": to.to_string(), "amount": amount.to_string(), "block": r.block_number}));
        } else {
            let shown = teepay_types::units::format_ether_with_base(Amount(amount));
            println!("sent {shown} to {to} in block {}", r.block_number);
        }
        Ok(ExitCode::SUCCESS)
    })
}
