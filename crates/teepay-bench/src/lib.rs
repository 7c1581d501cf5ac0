//! `teepay bench`: end-to-end throughput and latency of the running system on this machine,
//! beside the protocol's own limit measured in the same run, in both round-authentication
//! modes (session MACs and ECDSA signatures).
//!
//! Scenarios (`scenario.rs`): `two-hubs`, `scale-free-N`, `ln` (the 2020 Lightning graph),
//! `swap` (2 chains, 2 or 4 parties); `scale-1m` (`scale.rs`) measures a hub with a million
//! channels instead. Channels start from pre-funded state (no chain setup: the output says
//! so).
//!
//! - *sockets* (`sockets.rs`): the hub service and every node daemon in this process, over
//!   real loopback TCP with the encrypted links, sealed state written durably (fsync) before
//!   every ack and every batch — exactly the production path.
//! - *in-memory limit* (`memory.rs`): the same jobs through the same executor and enclaves
//!   with no sockets and no disk (sealing still runs): what the protocol itself costs.

mod memory;
mod processes;
mod scale;
mod scenario;
mod sockets;

use anyhow::{Result, bail};
use scenario::{Routes, Scenario};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use teepay_coordinator::HubConfig;
use teepay_enclave::{FundedChannel, NodeConfig, NodeEnclave, Request};
use teepay_hub::executor::Status;
use teepay_hub::metrics::BATCH_BOUNDS;
use teepay_routing::{ChannelInfo, Network};
use teepay_types::{Address, Amount, ChannelId, Platform, RoundAuth, SealLimits, Transfer};

const CONTRACT: Address = Address([0xcc; 20]);

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// two-hubs | scale-free-100 | scale-free-1000 | scale-free-10000 (any N) | ln | swap | scale-1m
    #[arg(long, default_value = "two-hubs")]
    scenario: String,
    /// Payments between nodes exactly three hops apart, or between random nodes
    /// (scale-free and ln).
    #[arg(long, value_enum, default_value = "three-hop")]
    routes: Routes,
    /// Leaf nodes on each side (two-hubs) or swap parties in all (swap).
    #[arg(long, default_value_t = 50)]
    leaves: usize,
    /// Parties per swap: 2 or 4.
    #[arg(long, default_value_t = 2)]
    parties: usize,
    /// Payments (or swaps) per mode.
    #[arg(long, default_value_t = 20_000)]
    payments: usize,
    /// Jobs in flight at once (closed loop: a new one starts when one finishes). A channel
    /// carries at most 483 instances in flight (`MAX_LOCKS_PER_CHANNEL`); jobs beyond that on
    /// one channel are refused by the router ("no route"), so the default stays below it.
    #[arg(long, default_value_t = 400)]
    concurrency: usize,
    /// Offer jobs at this rate per second instead of as fast as they finish (still capped
    /// by --concurrency).
    #[arg(long)]
    rate: Option<f64>,
    /// The hub's fixed batch window in µs on top of adaptive batching (sockets runs): fewer,
    /// larger batches, so fewer seals and fsyncs per payment (2 ms measured 2.4x faster
    /// than none on two-hubs at 300 in flight, before incremental sealing).
    #[arg(long, default_value_t = 2_000)]
    batch_window_us: u64,
    /// Round authentication: `mac` (session MACs), `signatures` (ECDSA on every round
    /// message, what a third party could verify), or `both`.
    #[arg(long, default_value = "both")]
    auth: String,
    /// Sealing: `incremental` (a delta per change, a snapshot once the deltas outgrow the
    /// state), `full` (the whole state at every change, as before incremental sealing), or
    /// `both` (side by side in one run).
    #[arg(long, default_value = "incremental")]
    seal: String,
    /// Peer acks: every node signs its PREPARED ack on its own, the hub forwards all of them
    /// with COMMIT and every node checks them before it commits (nodes require it).
    #[arg(long)]
    verify_peer_acks: bool,
    /// Also run the sockets mode with a replicated hub of this many replicas (odd, ≥ 3), side
    /// by side with the single hub in the same run (DESIGN §10: one round trip to a
    /// majority per flush).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Skip the sockets run (profiling the protocol alone).
    #[arg(long)]
    in_memory_only: bool,
    /// Measure from each node's first contact with the hub: no untimed warm-up jobs (a
    /// node's first payment orders are signed).
    #[arg(long)]
    cold: bool,
    /// Run every node daemon in its own OS process (driven through its gRPC API) instead
    /// of all in this process.
    #[arg(long)]
    processes: bool,
    /// Internal: run as the node process of a `--processes` run, from this directory.
    #[arg(long, hide = true, requires = "hub_addr")]
    node_dir: Option<PathBuf>,
    /// Internal: the hub a `--node-dir` node process links to.
    #[arg(long, hide = true)]
    hub_addr: Option<std::net::SocketAddr>,
    /// The Lightning graph's directory (scenario ln).
    #[arg(long, default_value = "../shared/data/ln-graph-2020")]
    ln_graph: PathBuf,
    /// Channels for scale-1m.
    #[arg(long, default_value_t = 1_000_000)]
    channels: usize,
    /// Internal: load this DB and route in a fresh process (scale-1m's measurement phase).
    #[arg(long, hide = true)]
    scale_db: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// One measured configuration: how round messages are authenticated and how state is sealed.
#[derive(Debug, Clone)]
pub(crate) struct Mode {
    pub auth: RoundAuth,
    pub seal: SealLimits,
    /// Instances ask for peer acks and nodes require them (`--verify-peer-acks`).
    pub peer_acks: bool,
    pub name: String,
}

/// How jobs are offered: how many, how many in flight, at what rate.
#[derive(Clone, Copy)]
pub(crate) struct Drive {
    pub batch_window: Duration,
    pub jobs: usize,
    pub concurrency: usize,
    pub rate: Option<f64>,
    /// Run the scenario's warm-up jobs, unmeasured, before the measured ones.
    pub warm_up: bool,
    /// Hub replicas (sockets runs): 1 is a single hub; more is a group whose leader commits
    /// every flush on a majority before releasing it.
    pub replicas: usize,
}

impl Drive {
    /// Whether job `k` may start yet (always, unless an offered rate holds it back).
    pub fn may_start(&self, k: usize, start: Instant) -> bool {
        self.rate.is_none_or(|r| k as f64 <= start.elapsed().as_secs_f64() * r)
    }

    /// The untimed warm-up jobs for `scn` and how to offer them (closed loop, no rate).
    pub fn warm_up(&self, scn: &scenario::Scenario) -> (Vec<scenario::Job>, Drive) {
        let jobs = if self.warm_up { scn.warm_up(self.jobs) } else { Vec::new() };
        let drive = Drive { jobs: jobs.len(), rate: None, warm_up: false, ..*self };
        (jobs, drive)
    }
}

/// A progress line on stderr, redrawn at most every 200 ms (silent with --json).
pub(crate) struct Progress {
    label: String,
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(label: String, enabled: bool) -> Self {
        Progress { label, enabled, last: None }
    }
    pub fn show(&mut self, done: usize, total: usize) {
        if !self.enabled
            || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) && done < total
        {
            return;
        }
        self.last = Some(Instant::now());
        eprint!("\r  {}: {done}/{total}  ", self.label);
        if done >= total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

/// Latency samples and counts of one mode.
#[derive(Default)]
pub(crate) struct Run {
    elapsed: Duration,
    latencies_us: Vec<u64>,
    succeeded: usize,
    refunded: usize,
    /// Jobs the hub refused to start (no route, bad order): never in flight.
    refused: usize,
    first_refusal: Option<String>,
    cpu_seconds: f64,
    wire_bytes: u64,
    /// Synced writes of sealed state (every enclave of the run).
    durable_writes: u64,
    /// Batches per size bucket (upper bound, count) and the items they carried.
    batches: Vec<(f64, u64)>,
    batch_items: u64,
    conservation: Option<bool>,
}

impl Run {
    fn new(jobs: usize) -> Self {
        Run {
            latencies_us: Vec::with_capacity(jobs),
            batches: BATCH_BOUNDS.iter().copied().chain([f64::INFINITY]).map(|b| (b, 0)).collect(),
            ..Run::default()
        }
    }

    /// One finished job: its latency when known, and its outcome.
    fn record(&mut self, latency: Option<Duration>, status: &Status) {
        if let Some(l) = latency {
            self.latencies_us.push(l.as_micros() as u64);
        }
        match status {
            Status::Succeeded => self.succeeded += 1,
            _ => self.refunded += 1,
        }
    }

    fn refuse(&mut self, why: &str) {
        self.refused += 1;
        self.first_refusal.get_or_insert_with(|| why.to_string());
    }

    fn batch(&mut self, items: usize) {
        let i = self.batches.iter().position(|(b, _)| items as f64 <= *b).unwrap_or(self.batches.len() - 1);
        self.batches[i].1 += 1;
        self.batch_items += items as u64;
    }

    fn done(&self) -> usize {
        self.succeeded + self.refunded + self.refused
    }

    fn rate(&self) -> f64 {
        self.succeeded as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1e3
    }
    fn summary(&mut self) -> serde_json::Value {
        let n = self.done().max(1) as f64;
        let batches: u64 = self.batches.iter().map(|b| b.1).sum();
        json!({
            "per_s": self.rate(),
            "succeeded": self.succeeded, "refunded": self.refunded, "refused": self.refused,
            "first_refusal": self.first_refusal,
            "p50_ms": self.pct(0.5), "p95_ms": self.pct(0.95), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0),
            "cpu_s_per_job": self.cpu_seconds / n,
            "wire_bytes_per_job": self.wire_bytes as f64 / n,
            "durable_writes_per_job": self.durable_writes as f64 / n,
            "batches": batches,
            "mean_batch_items": self.batch_items as f64 / batches.max(1) as f64,
            "batch_size_histogram": self.batches.iter().filter(|b| b.1 > 0)
                .map(|(b, c)| (if b.is_finite() { format!("<={b}") } else { "more".into() }, json!(*c)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "seconds": self.elapsed.as_secs_f64(),
            "conservation": self.conservation,
        })
    }
}

/// User + system CPU time of this process (from /proc, 10 ms resolution).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn node_config(scn: &Scenario, mode: &Mode) -> NodeConfig {
    NodeConfig {
        measurement: teepay_demo::dev::NODE_MEASUREMENT,
        attestation_authority: teepay_demo::dev::attestation_key().address(),
        allowed_hub_measurements: vec![teepay_demo::dev::HUB_MEASUREMENT],
        contracts: scn.chains.iter().map(|c| (*c, CONTRACT)).collect(),
        max_tx_fee: Amount(0),
        require_peer_acks: mode.peer_acks,
    }
}

fn hub_config(mode: &Mode) -> HubConfig {
    HubConfig {
        measurement: teepay_demo::dev::HUB_MEASUREMENT,
        attestation_authority: teepay_demo::dev::attestation_key().address(),
        allowed_node_measurements: vec![teepay_demo::dev::NODE_MEASUREMENT],
        prepare_timeout: 30_000,
        retransmit_after: 5_000,
        round_auth: mode.auth,
        peer_acks: mode.peer_acks,
        swap_lock_time: teepay_coordinator::DAY_MS,
    }
}

/// Pre-funded channels in every enclave and in the hub's map (no chain). Returns the map and
/// each scenario channel's id (the contract's derivation, which the enclaves check).
fn fund<P: Platform>(enclaves: &mut [NodeEnclave<P>], scn: &Scenario) -> Result<(Network, Vec<ChannelId>)> {
    let mut network = Network::new();
    let mut ids = Vec::with_capacity(scn.channels.len());
    for (nonce, c) in scn.channels.iter().enumerate() {
        let (a, b) = (enclaves[c.x].address(), enclaves[c.y].address());
        let (bal_x, bal_y) = (Amount(c.balance_x), Amount(c.balance_y));
        let onchain = FundedChannel {
            chain: c.chain,
            contract: CONTRACT,
            a,
            b,
            nonce: nonce as u64,
            deposit_a: bal_x,
            deposit_b: bal_y,
            token: Address::default(),
        };
        let id = onchain.id();
        ids.push(id);
        for (k, is_a, fee) in [(c.x, true, c.fee_x), (c.y, false, c.fee_y)] {
            for request in onchain.requests(is_a, fee) {
                enclaves[k].handle(0, request)?;
            }
        }
        network.graph_mut(c.chain, teepay_types::Asset::Native).upsert_channel(&ChannelInfo {
            id,
            a,
            b,
            balance_a: bal_x,
            balance_b: bal_y,
            fee_a: c.fee_x,
            fee_b: c.fee_y,
        })?;
    }
    Ok((network, ids))
}

/// Each swap party's intent request: what it gives and what it receives.
fn swap_intent_request(
    gives: &[(usize, teepay_types::ChainId, usize, u128)],
    address: impl Fn(usize) -> Address,
    expires_at: u64,
) -> Vec<(usize, Request)> {
    let mut parties: Vec<usize> = gives.iter().map(|g| g.0).collect();
    parties.dedup();
    let t = |chain, who, amount| Transfer {
        chain,
        asset: teepay_types::Asset::Native,
        counterparty: address(who),
        amount: Amount(amount),
        max_fee: Amount(0),
    };
    parties
        .into_iter()
        .map(|p| {
            let g = gives.iter().filter(|x| x.0 == p).map(|x| t(x.1, x.2, x.3)).collect();
            let r = gives.iter().filter(|x| x.2 == p).map(|x| t(x.1, x.0, x.3)).collect();
            (p, Request::CreateSwapIntent { gives: g, receives: r, expires_at })
        })
        .collect()
}

fn scenario_of(args: &BenchArgs) -> Result<Scenario> {
    Ok(match args.scenario.as_str() {
        "two-hubs" => scenario::two_hubs(args.leaves),
        "ln" => scenario::lightning(&args.ln_graph, args.routes)?,
        "swap" => scenario::swap(args.leaves, args.parties)?,
        s if s.starts_with("scale-free-") => {
            let n: usize =
                s["scale-free-".len()..].parse().map_err(|_| anyhow::anyhow!("bad node count in {s:?}"))?;
            scenario::scale_free(n, args.routes)?
        }
        s => bail!("unknown scenario {s:?} (two-hubs, scale-free-N, ln, swap, scale-1m)"),
    })
}

fn line(name: &str, r: &serde_json::Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    format!(
        "{name:24} {:>8.0}/s  p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  cpu {:.0} µs/job  {:.0} B/job  {:.2} syncs/job  batch {:.1} items  ok {} refunded {} refused {}  conservation {}",
        f("per_s"),
        f("p50_ms"),
        f("p95_ms"),
        f("p99_ms"),
        f("max_ms"),
        f("cpu_s_per_job") * 1e6,
        f("wire_bytes_per_job"),
        f("durable_writes_per_job"),
        f("mean_batch_items"),
        r["succeeded"],
        r["refunded"],
        r["refused"],
        match r["conservation"].as_bool() {
            Some(true) => "holds",
            Some(false) => "VIOLATED",
            None => "-",
        }
    )
}

pub fn run(args: &BenchArgs) -> Result<std::process::ExitCode> {
    if args.scenario == "scale-1m" {
        return match &args.scale_db {
            Some(db) => scale::measure(db, args.channels),
            None => scale::run(args.channels, args.json),
        };
    }
    let seal_of = |s: &str| match s {
        "incremental" => Ok(SealLimits::DEFAULT),
        "full" => Ok(SealLimits::FULL),
        other => bail!("--seal must be incremental, full or both, not {other:?}"),
    };
    if let (Some(dir), Some(hub)) = (&args.node_dir, args.hub_addr) {
        return processes::child(dir, hub, seal_of(&args.seal)?);
    }
    if args.leaves == 0 || args.payments == 0 || args.concurrency == 0 || args.rate.is_some_and(|r| r <= 0.0)
    {
        bail!("--leaves, --payments, --concurrency and --rate must be positive");
    }
    let auths: Vec<(RoundAuth, &str)> = match args.auth.as_str() {
        "mac" => vec![(RoundAuth::SessionMacs, "mac")],
        "signatures" => vec![(RoundAuth::Signatures, "signatures")],
        "both" => vec![(RoundAuth::SessionMacs, "mac"), (RoundAuth::Signatures, "signatures")],
        other => bail!("--auth must be mac, signatures or both, not {other:?}"),
    };
    let seals: Vec<(SealLimits, &str)> = match args.seal.as_str() {
        "both" => vec![(SealLimits::DEFAULT, "incremental"), (SealLimits::FULL, "full")],
        s => vec![(seal_of(s)?, s)],
    };
    let hosting = if args.processes { "processes" } else { "sockets" };
    let peer_acks = args.verify_peer_acks;
    let modes: Vec<(Mode, &str, &str)> = seals
        .iter()
        .flat_map(|&(seal, seal_name)| {
            auths.iter().map(move |&(auth, auth_name)| {
                let mut name = auth_name.to_string();
                if seal_name != "incremental" {
                    name += &format!(", {seal_name} seals");
                }
                if peer_acks {
                    name += ", peer acks";
                }
                (Mode { auth, seal, peer_acks, name }, auth_name, seal_name)
            })
        })
        .collect();
    let scn = scenario_of(args)?;
    let drive = Drive {
        batch_window: Duration::from_micros(args.batch_window_us),
        jobs: args.payments,
        concurrency: args.concurrency,
        rate: args.rate,
        warm_up: !args.cold,
        replicas: 1,
    };
    if args.replicas != 1 && (args.replicas < 3 || args.replicas.is_multiple_of(2)) {
        bail!("--replicas must be 1 or an odd number of at least 3 (2f+1), not {}", args.replicas);
    }
    if args.replicas > 1 && (args.processes || args.in_memory_only) {
        bail!(
            "--replicas runs with the in-process sockets driver (not with --processes or --in-memory-only)"
        );
    }
    if !args.in_memory_only {
        sockets::check_descriptors(scn.nodes)?;
    }
    let unit = if scn.is_swap() { "swaps" } else { "payments" };
    if !args.json {
        println!("{}: {}; channels pre-funded (no chain setup)", scn.name, scn.description);
        match drive.warm_up(&scn).0.len() {
            0 => println!("cold: measured from each node's first contact with the hub"),
            n => {
                println!("{n} untimed warm-up {unit} first (every node's hub session in use; --cold to skip)")
            }
        }
        println!(
            "{} {unit} per mode, {} in flight{}",
            drive.jobs,
            drive.concurrency,
            drive.rate.map(|r| format!(", offered at {r}/s")).unwrap_or_default()
        );
    }
    let dir = std::env::temp_dir().join(format!("teepay-bench-{}", std::process::id()));
    let mut results = Vec::new();
    let mut ok = true;
    for (mode, auth_name, seal_name) in modes {
        let name = &mode.name;
        let mut progress = Progress::new(format!("in-memory, {name}"), !args.json);
        let mut mem = memory::run(&scn, &drive, &mode, &mut progress)?;
        let mem = mem.summary();
        let mut entry =
            json!({"auth": auth_name, "seal": seal_name, "peer_acks": mode.peer_acks, "in_memory": mem});
        if !args.in_memory_only {
            let mut progress = Progress::new(format!("{hosting}, {name}"), !args.json);
            // A runtime per mode: shutting it down stops that run's hub and node daemons.
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let net = if args.processes {
                rt.block_on(processes::run(&scn, &drive, &mode, &dir, &mut progress))
            } else {
                rt.block_on(sockets::run(&scn, &drive, &mode, &dir, &mut progress))
            };
            rt.shutdown_timeout(Duration::from_secs(2));
            let _ = std::fs::remove_dir_all(&dir);
            let mut net = net?;
            let net = net.summary();
            entry["sockets_over_in_memory"] =
                json!(net["per_s"].as_f64().unwrap_or(0.0) / mem["per_s"].as_f64().unwrap_or(1.0));
            if args.replicas > 1 {
                let replicated = Drive { replicas: args.replicas, ..drive };
                let mut progress =
                    Progress::new(format!("sockets, {} replicas, {name}", args.replicas), !args.json);
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                let r = rt.block_on(sockets::run(&scn, &replicated, &mode, &dir, &mut progress));
                rt.shutdown_timeout(Duration::from_secs(2));
                let _ = std::fs::remove_dir_all(&dir);
                let r = r?.summary();
                entry["replicated_over_single"] =
                    json!(r["per_s"].as_f64().unwrap_or(0.0) / net["per_s"].as_f64().unwrap_or(1.0));
                entry["replicas"] = json!(args.replicas);
                ok &= r["conservation"].as_bool() != Some(false);
                entry["replicated"] = r;
            }
            entry["sockets"] = net;
            entry["nodes_hosted"] =
                json!(if args.processes { "one OS process per node" } else { "all in the bench process" });
        }
        for k in ["in_memory", "sockets"] {
            ok &= entry[k]["conservation"].as_bool() != Some(false);
        }
        // A driver that completes nothing the protocol could do is broken, not slow.
        let succeeded = |k: &str| entry[k]["succeeded"].as_u64().unwrap_or(0);
        if !args.in_memory_only && succeeded("in_memory") > 0 && succeeded("sockets") == 0 {
            eprintln!(
                "{hosting}, {name}: no job succeeded (the in-memory run completed {})",
                succeeded("in_memory")
            );
            ok = false;
        }
        if !args.json {
            println!("{}", line(&format!("in-memory limit, {name}"), &entry["in_memory"]));
            if !args.in_memory_only {
                println!("{}", line(&format!("{hosting}, {name}"), &entry["sockets"]));
                println!(
                    "{:24} end-to-end = {:.1}% of the in-memory limit",
                    "",
                    entry["sockets_over_in_memory"].as_f64().unwrap_or(0.0) * 100.0
                );
                if args.replicas > 1 {
                    println!(
                        "{}",
                        line(&format!("{} replicas, {name}", args.replicas), &entry["replicated"])
                    );
                    println!(
                        "{:24} replicated = {:.1}% of the single hub's throughput",
                        "",
                        entry["replicated_over_single"].as_f64().unwrap_or(0.0) * 100.0
                    );
                }
            }
            for k in ["in_memory", "sockets"] {
                if let Some(why) = entry[k]["first_refusal"].as_str() {
                    println!("{:24} first refusal ({}): {why}", "", k.replace('_', "-"));
                }
            }
        }
        results.push(entry);
    }
    if args.json {
        println!(
            "{}",
            json!({
                "scenario": scn.name, "description": scn.description, "nodes": scn.nodes,
                "channels": scn.channels.len(), "hops": scn.hops, "unit": unit,
                "chain_setup": "skipped (pre-funded channel state)",
                "jobs": drive.jobs, "concurrency": drive.concurrency, "offered_rate": drive.rate,
                "warm_up_jobs": drive.warm_up(&scn).0.len(),
                "modes": results,
            })
        );
    }
    Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
