//! Client commands: talk to a node's (or the hub's) gRPC API and print readable output or,
//! with `--json`, one JSON object.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use teepay_api::pb;
use teepay_api::pb::hub_client::HubClient;
use teepay_api::pb::node_client::NodeClient;
use tonic::transport::Channel;

#[derive(clap::Args, Debug, Clone)]
pub struct NodeTarget {
    /// The node's API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9710", env = "TEEPAY_NODE")]
    pub(crate) node: String,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct HubTarget {
    /// The hub's API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9701", env = "TEEPAY_HUB")]
    hub: String,
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct PayArgs {
    #[command(flatten)]
    t: NodeTarget,
    /// A payee's invoice (`teepay1…`): pays it on its terms and prints the payee's receipt.
    /// Without one, `--chain`, `--to` and `--amount` push a payment nobody asked for.
    #[arg(conflicts_with_all = ["chain", "to"])]
    invoice: Option<String>,
    #[arg(long, required_unless_present = "invoice")]
    chain: Option<u64>,
    /// The payee's enclave address.
    #[arg(long, required_unless_present = "invoice")]
    to: Option<String>,
    /// What the payee receives: `0.1eth`, `25gwei`, a whole number of base units, or a
    /// token amount in its unit (`12.5usdc`; checked by the node, a decimal needs a unit).
    /// With an invoice, only for an any-amount one.
    #[arg(long, allow_hyphen_values = true, required_unless_present = "invoice")]
    amount: Option<String>,
    /// Most paid to intermediaries, in the same forms and asset.
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    max_fee: String,
    /// What the payment moves: `eth` (the default), an ERC-20 token's address, or a symbol
    /// configured for the chain in the node's config. A token unit in `--amount` names it too.
    #[arg(long, default_value = "", conflicts_with = "invoice")]
    asset: String,
    /// Return once started instead of waiting for the final status.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    t: NodeTarget,
    instance: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum ChannelCmd {
    /// Open a channel to PEER funded with DEPOSIT (`0.5eth`, or wei) from this node's
    /// enclave account.
    Open {
        #[arg(long)]
        chain: u64,
        #[arg(long)]
        peer: String,
        /// `0.5eth` or wei; with `--token`, in the token's unit (`300usdc`: its contract's
        /// symbol and decimals) or its base units.
        #[arg(long, allow_hyphen_values = true)]
        deposit: String,
        /// An ERC-20 token's address: a token channel (payments still move ether only).
        #[arg(long)]
        token: Option<String>,
    },
    /// Add AMOUNT to this node's side: `0.5eth` or wei, or for a token channel `12.5usdc`
    /// (the token's own unit) or base units.
    Fund {
        #[arg(long)]
        channel: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
    },
    /// Close cooperatively (no pending locks) or eject (pending multi-hop locks). A channel
    /// holding swap locks the hub never decided for this node (the hub group lost) closes
    /// past the locks' deadline: REVERT is claimed, and running close again completes it
    /// once the challenge window ended or someone recorded the hub's certificate.
    Close {
        #[arg(long)]
        channel: String,
    },
    /// Eject: the same transaction as close; the contract settles pending locks by their
    /// instance's outcome.
    Eject {
        #[arg(long)]
        channel: String,
    },
    /// This node's channels.
    List,
}

#[derive(clap::Args, Debug)]
pub struct ChannelArgs {
    #[command(flatten)]
    t: NodeTarget,
    #[command(subcommand)]
    cmd: ChannelCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum SwapCmd {
    /// Sign an intent (GIVE/RECEIVE as CHAIN:AMOUNT:COUNTERPARTY[:ASSET]) and post it to the
    /// hub's board.
    Propose {
        #[arg(long, required = true)]
        give: Vec<String>,
        #[arg(long, required = true)]
        receive: Vec<String>,
        #[arg(long, default_value = "http://127.0.0.1:9701", env = "TEEPAY_HUB")]
        hub: String,
    },
    /// Intents on the hub's board.
    List {
        #[arg(long, default_value = "http://127.0.0.1:9701", env = "TEEPAY_HUB")]
        hub: String,
    },
    /// Accept board intent ID: sign the mirror intent and submit both as one swap.
    Accept {
        id: u64,
        #[arg(long, default_value = "http://127.0.0.1:9701", env = "TEEPAY_HUB")]
        hub: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct SwapArgs {
    #[command(flatten)]
    t: NodeTarget,
    #[command(subcommand)]
    cmd: SwapCmd,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub(crate) async fn node(url: &str) -> Result<NodeClient<Channel>> {
    NodeClient::connect(url.to_string()).await.with_context(|| format!("cannot reach the node API at {url}"))
}

pub(crate) async fn hub(url: &str) -> Result<HubClient<Channel>> {
    HubClient::connect(url.to_string()).await.with_context(|| format!("cannot reach the hub API at {url}"))
}

/// gRPC errors as the server worded them (no transport noise).
pub(crate) fn call<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(|r| r.into_inner()).map_err(|s| anyhow::anyhow!("{}", s.message()))
}

pub(crate) fn out(json: bool, value: Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn status_json(s: &pb::InstanceStatus) -> Value {
    json!({"instance": s.instance, "status": s.status, "reason": s.reason})
}

fn status_text(s: &pb::InstanceStatus) -> String {
    match s.status.as_str() {
        "refunded" => format!("{}: refunded — {}", s.instance, s.reason),
        other => format!("{}: {}", s.instance, other.replace('_', " ")),
    }
}

async fn wait_final(c: &mut NodeClient<Channel>, instance: &str) -> Result<pb::InstanceStatus> {
    let start = Instant::now();
    loop {
        let s = call(c.status(pb::StatusRequest { instance: instance.into() }).await)?;
        if s.status != "in_flight" {
            return Ok(s);
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn info(t: &NodeTarget) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let i = call(node(&t.node).await?.info(pb::InfoRequest {}).await)?;
        let chains: Vec<Value> = i
            .chains
            .iter()
            .map(|c| {
                let tokens: Vec<Value> = c
                    .tokens
                    .iter()
                    .map(|t| json!({"token": t.token, "symbol": t.symbol, "decimals": t.decimals}))
                    .collect();
                json!({"chain_id": c.chain_id, "contract": c.contract, "rpc": c.rpc, "balance": c.balance,
                    "registered": c.registered, "tokens": tokens})
            })
            .collect();
        out(t.json, json!({"address": i.address, "hub": i.hub, "chains": chains}), || {
            let mut s = format!("node {}\nhub  {}", i.address, i.hub);
            for c in &i.chains {
                s += &format!(
                    "\nchain {}: contract {} via {}; account {}; {}",
                    c.chain_id,
                    c.contract,
                    c.rpc,
                    human(&c.balance),
                    if c.registered { "registered" } else { "not registered yet" }
                );
                for t in &c.tokens {
                    let unit = if t.symbol.is_empty() {
                        "its contract names no unit".to_string()
                    } else {
                        format!("{} ({} decimals)", t.symbol.to_uppercase(), t.decimals)
                    };
                    s += &format!("\n  token {}: {unit}", t.token);
                }
            }
            s
        });
        Ok(ExitCode::SUCCESS)
    })
}

pub fn pay(a: &PayArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut c = node(&a.t.node).await?;
        let started = Instant::now();
        let amount = a.amount.clone().unwrap_or_default();
        let id = match &a.invoice {
            Some(invoice) => {
                let req =
                    pb::PayInvoiceRequest { invoice: invoice.clone(), amount, max_fee: a.max_fee.clone() };
                call(c.pay_invoice(req).await)?.instance
            }
            None => {
                let req = pb::PayRequest {
                    chain: a.chain.unwrap_or_default(),
                    payee: a.to.clone().unwrap_or_default(),
                    amount,
                    max_fee: a.max_fee.clone(),
                    asset: a.asset.clone(),
                };
                call(c.pay(req).await)?.instance
            }
        };
        if a.no_wait {
            out(a.t.json, json!({"instance": id, "status": "in_flight"}), || format!("{id}: started"));
            return Ok(ExitCode::SUCCESS);
        }
        let s = wait_final(&mut c, &id).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let mut v = status_json(&s);
        v["elapsed_ms"] = json!(ms);
        // Proof of payment: the payee's receipt, as it reaches this node.
        let receipt = match (&a.invoice, s.status.as_str()) {
            (Some(invoice), "succeeded") => Some(crate::invoice::await_receipt(&mut c, invoice).await?),
            _ => None,
        };
        if let Some(r) = &receipt {
            v["receipt"] = json!(r.encoded);
        }
        out(a.t.json, v, || match &receipt {
            Some(r) => format!("{} ({ms:.1} ms)\nreceipt {}", status_text(&s), r.encoded),
            None => format!("{} ({ms:.1} ms)", status_text(&s)),
        });
        Ok(if s.status == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

pub fn status(a: &StatusArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let s =
            call(node(&a.t.node).await?.status(pb::StatusRequest { instance: a.instance.clone() }).await)?;
        out(a.t.json, status_json(&s), || status_text(&s));
        Ok(ExitCode::SUCCESS)
    })
}

pub fn channel(a: &ChannelArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut c = node(&a.t.node).await?;
        match &a.cmd {
            ChannelCmd::Open { chain, peer, deposit, token } => {
                let req = pb::OpenChannelRequest {
                    chain: *chain,
                    peer: peer.clone(),
                    deposit: deposit.clone(),
                    token: token.clone().unwrap_or_default(),
                };
                let r = call(c.open_channel(req).await)?;
                out(a.t.json, json!({"channel": r.channel, "tx": r.tx, "block": r.block}), || {
                    format!("channel {} opened (tx {}, block {})", r.channel, r.tx, r.block)
                });
            }
            ChannelCmd::Fund { channel, amount } => {
                let r = call(c.fund(pb::FundRequest { channel: channel.clone(), amount: amount.clone() }).await)?;
                out(a.t.json, json!({"tx": r.tx, "block": r.block, "gas_used": r.gas_used}), || {
                    format!("funded (tx {}, block {})", r.tx, r.block)
                });
            }
            ChannelCmd::Close { channel } | ChannelCmd::Eject { channel } => {
                let r = call(c.close(pb::CloseRequest { channel: channel.clone() }).await)?;
                out(a.t.json, json!({"tx": r.tx, "block": r.block, "gas_used": r.gas_used}), || {
                    format!("closed (tx {}, block {}, gas {})", r.tx, r.block, r.gas_used)
                });
            }
            ChannelCmd::List => {
                let list = call(c.channels(pb::ChannelsRequest {}).await)?.channels;
                let units = if a.t.json { TokenUnits::default() } else { TokenUnits::of(&mut c).await };
                let v: Vec<Value> = list
                    .iter()
                    .map(|ch| json!({"chain": ch.chain, "id": ch.id, "peer": ch.peer, "local": ch.local, "remote": ch.remote, "locks": ch.locks, "open": ch.open, "token": ch.token}))
                    .collect();
                out(a.t.json, json!({"channels": v}), || {
                    if list.is_empty() {
                        return "no channels".into();
                    }
                    list.iter()
                        .map(|ch| {
                            let amount = |v: &str| units.show(v, &ch.token);
                            format!(
                                "chain {} {} peer {}: local {} remote {}{}{}",
                                ch.chain,
                                ch.id,
                                ch.peer,
                                amount(&ch.local),
                                amount(&ch.remote),
                                if ch.locks > 0 { format!(", {} locks", ch.locks) } else { String::new() },
                                if ch.open { "" } else { " (closed)" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// An amount of wei from the API (a decimal string) as people read it, with the exact
/// figure: `0.1 ETH (100000000000000000 wei)`; anything unparsable as it came.
pub(crate) fn human(wei: &str) -> String {
    match wei.parse::<u128>() {
        Ok(v) => teepay_types::units::format_ether_with_base(teepay_types::Amount(v)),
        Err(_) => wei.to_string(),
    }
}

/// An amount of `asset` as the API returns it (base units) for people, without knowing
/// token units: ether with its unit and the exact figure, a token's base units with its address.
pub(crate) fn human_asset(amount: &str, asset: &str) -> String {
    TokenUnits::default().show(amount, asset)
}

/// The units of the tokens a node knows (from its `Info`), so token amounts print as people
/// read them: `12.5 USDC (12500000 base units)`.
#[derive(Debug, Default)]
pub(crate) struct TokenUnits(std::collections::HashMap<String, teepay_types::units::Unit>);

impl TokenUnits {
    /// What `node` knows; nothing if it cannot say (amounts then show base units).
    pub(crate) async fn of(node: &mut NodeClient<Channel>) -> Self {
        let Ok(info) = node.info(pb::InfoRequest {}).await else { return Self::default() };
        let units = info.into_inner().chains.into_iter().flat_map(|c| c.tokens).filter_map(|t| {
            let decimals = u8::try_from(t.decimals).ok()?;
            (!t.symbol.is_empty())
                .then(|| (t.token.to_lowercase(), teepay_types::units::Unit::new(&t.symbol, decimals)))
        });
        TokenUnits(units.collect())
    }

    pub(crate) fn show(&self, amount: &str, asset: &str) -> String {
        if asset.is_empty() {
            return human(amount);
        }
        match (amount.parse::<u128>(), self.0.get(&asset.to_lowercase())) {
            (Ok(v), Some(unit)) => teepay_types::units::format_token_with_base(teepay_types::Amount(v), unit),
            _ => format!("{amount} base units of token {asset}"),
        }
    }
}

/// `CHAIN:AMOUNT:COUNTERPARTY[:ASSET]`: ASSET is `eth` (the default), a token's address or a
/// symbol configured for the chain; a token unit in AMOUNT (`12.5usdc`) names it too.
fn transfer(s: &str) -> Result<pb::Transfer> {
    let parts: Vec<&str> = s.split(':').collect();
    let (chain, amount, counterparty, asset) = match parts[..] {
        [chain, amount, counterparty] => (chain, amount, counterparty, ""),
        [chain, amount, counterparty, asset] => (chain, amount, counterparty, asset),
        _ => bail!(
            "{s:?}: expected CHAIN:AMOUNT:COUNTERPARTY[:ASSET], e.g. 31337:0.05eth:0xabc… or 31337:12.5usdc:0xabc…"
        ),
    };
    let chain = chain.parse().with_context(|| format!("{s:?}: chain id {chain:?} is not a number"))?;
    Ok(pb::Transfer {
        chain,
        counterparty: counterparty.into(),
        amount: amount.into(),
        max_fee: "0".into(),
        asset: asset.into(),
    })
}

fn intent_text(id: u64, i: &pb::Intent, units: &TokenUnits) -> String {
    let fmt = |t: &pb::Transfer| {
        format!("{} on chain {} ↔ {}", units.show(&t.amount, &t.asset), t.chain, t.counterparty)
    };
    format!(
        "#{id} from {}: gives {}; receives {}",
        i.party,
        i.gives.iter().map(fmt).collect::<Vec<_>>().join(", "),
        i.receives.iter().map(fmt).collect::<Vec<_>>().join(", ")
    )
}

pub fn swap(a: &SwapArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        match &a.cmd {
            SwapCmd::Propose { give, receive, hub: h } => {
                let gives = give.iter().map(|s| transfer(s)).collect::<Result<Vec<_>>>()?;
                let receives = receive.iter().map(|s| transfer(s)).collect::<Result<Vec<_>>>()?;
                let mut c = node(&a.t.node).await?;
                let intent =
                    call(c.create_intent(pb::CreateIntentRequest { gives, receives, ttl_seconds: 0 }).await)?;
                let id = call(hub(h).await?.post_intent(intent.clone()).await)?.id;
                let units = if a.t.json { TokenUnits::default() } else { TokenUnits::of(&mut c).await };
                out(a.t.json, json!({"id": id, "intent": intent.encoded}), || {
                    format!("posted {}", intent_text(id, &intent, &units))
                });
                Ok(ExitCode::SUCCESS)
            }
            SwapCmd::List { hub: h } => {
                let entries = call(hub(h).await?.list_intents(pb::ListIntentsRequest {}).await)?.entries;
                let v: Vec<Value> = entries
                    .iter()
                    .map(|e| json!({"id": e.id, "party": e.intent.as_ref().map(|i| i.party.clone())}))
                    .collect();
                // Token amounts in their units, as far as this node knows the tokens (the
                // board itself is the hub's: without a node, base units).
                let units = match (a.t.json, node(&a.t.node).await) {
                    (false, Ok(mut c)) => TokenUnits::of(&mut c).await,
                    _ => TokenUnits::default(),
                };
                out(a.t.json, json!({"intents": v}), || {
                    if entries.is_empty() {
                        return "the board is empty".into();
                    }
                    entries
                        .iter()
                        .filter_map(|e| e.intent.as_ref().map(|i| intent_text(e.id, i, &units)))
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                Ok(ExitCode::SUCCESS)
            }
            SwapCmd::Accept { id, hub: h } => {
                let entries = call(hub(h).await?.list_intents(pb::ListIntentsRequest {}).await)?.entries;
                let theirs = entries
                    .into_iter()
                    .find(|e| e.id == *id)
                    .and_then(|e| e.intent)
                    .with_context(|| format!("no intent #{id} on the board (expired or never posted)"))?;
                let mut c = node(&a.t.node).await?;
                let me = call(c.info(pb::InfoRequest {}).await)?.address;
                // The mirror: I give what they receive from me, and receive what they give me.
                let mirror = |list: &[pb::Transfer]| -> Vec<pb::Transfer> {
                    list.iter()
                        .filter(|t| t.counterparty.eq_ignore_ascii_case(&me))
                        .map(|t| pb::Transfer { counterparty: theirs.party.clone(), ..t.clone() })
                        .collect()
                };
                let (gives, receives) = (mirror(&theirs.receives), mirror(&theirs.gives));
                if gives.is_empty() && receives.is_empty() {
                    bail!("intent #{id} does not name this node ({me}) as a counterparty");
                }
                let mine =
                    call(c.create_intent(pb::CreateIntentRequest { gives, receives, ttl_seconds: 0 }).await)?;
                let started = Instant::now();
                let instance = call(
                    c.submit_swap(pb::SubmitSwapRequest { intents: vec![theirs.encoded, mine.encoded] })
                        .await,
                )?
                .instance;
                let s = wait_final(&mut c, &instance).await?;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                out(a.t.json, status_json(&s), || format!("swap {} ({ms:.1} ms)", status_text(&s)));
                Ok(if s.status == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
        }
    })
}

pub fn network(t: &HubTarget) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let map = call(hub(&t.hub).await?.network(pb::NetworkRequest {}).await)?.channels;
        let v: Vec<Value> = map
            .iter()
            .map(|c| json!({"chain": c.chain, "id": c.id, "a": c.a, "b": c.b, "balance_a": c.balance_a, "balance_b": c.balance_b, "reserved_a": c.reserved_a, "reserved_b": c.reserved_b, "open": c.open, "asset": c.asset}))
            .collect();
        out(t.json, json!({"channels": v}), || {
            if map.is_empty() {
                return "no channels yet".into();
            }
            map.iter()
                .map(|c| {
                    format!(
                        "chain {} {}: {} ({}) ⇄ {} ({}){}",
                        c.chain,
                        c.id,
                        c.a,
                        human_asset(&c.balance_a, &c.asset),
                        c.b,
                        human_asset(&c.balance_b, &c.asset),
                        if c.open { "" } else { " closed" }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        });
        Ok(ExitCode::SUCCESS)
    })
}
