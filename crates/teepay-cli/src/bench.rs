//! `teepay bench`: end-to-end throughput and latency of the running system on this machine,
//! beside the protocol's own limit measured in the same run.
//!
//! Scenario `two-hubs`: two intermediaries with a channel between them and `--leaves` leaf
//! nodes on each side; every payment goes from a leaf on one side to a leaf on the other
//! (three hops). Channels start from pre-funded state (no chain setup: the output says so).
//!
//! - *sockets*: the hub service and every node daemon in this process, over real loopback
//!   TCP with the encrypted links, sealed state written durably (fsync) before every ack and
//!   every batch — exactly the production path.
//! - *in-memory limit*: the same payments through the same executor and enclaves with no
//!   sockets and no disk (sealing still runs): what the protocol itself costs.

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use teepay_coordinator::{Coordinator, HubConfig};
use teepay_enclave::{NewChannel, NodeConfig, NodeEnclave, Request, Response};
use teepay_hub::executor::{Executor, Finished, Status};
use teepay_hub::service::{HubSettings, serve};
use teepay_link::host::FilePlatform;
use teepay_node::{NodeHandle, NodeSettings, spawn};
use teepay_routing::{ChannelInfo, Network};
use teepay_types::{Address, Amount, ChainId, ChannelId, FeePolicy, InstanceId, Platform, SimPlatform};
use tokio::sync::{Semaphore, mpsc};

const CHAIN: ChainId = ChainId(1);
const CONTRACT: Address = Address([0xcc; 20]);
const DEPOSIT: u128 = 1 << 100;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only `two-hubs` so far.
    #[arg(long, default_value = "two-hubs")]
    scenario: String,
    /// Leaf nodes on each side.
    #[arg(long, default_value_t = 50)]
    leaves: usize,
    /// Payments per mode.
    #[arg(long, default_value_t = 20_000)]
    payments: usize,
    /// Payments in flight at once (a closed loop: a new one starts when one finishes).
    #[arg(long, default_value_t = 2_000)]
    concurrency: usize,
    /// Skip the sockets run (profiling the protocol alone).
    #[arg(long)]
    in_memory_only: bool,
    #[arg(long)]
    json: bool,
}

/// Latency samples and counts of one mode.
#[derive(Default)]
struct Run {
    elapsed: Duration,
    latencies_us: Vec<u64>,
    succeeded: usize,
    refunded: usize,
    cpu_seconds: f64,
    wire_bytes: u64,
}

impl Run {
    fn new(payments: usize) -> Self {
        Run { latencies_us: Vec::with_capacity(payments), ..Run::default() }
    }

    /// One finished payment: its latency when known, and its outcome.
    fn record(&mut self, latency: Option<Duration>, status: &Status) {
        if let Some(l) = latency {
            self.latencies_us.push(l.as_micros() as u64);
        }
        match status {
            Status::Succeeded => self.succeeded += 1,
            _ => self.refunded += 1,
        }
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
        let n = (self.succeeded + self.refunded).max(1) as f64;
        json!({
            "payments_per_s": self.rate(),
            "succeeded": self.succeeded, "refunded": self.refunded,
            "p50_ms": self.pct(0.5), "p95_ms": self.pct(0.95), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0),
            "cpu_s_per_payment": self.cpu_seconds / n,
            "wire_bytes_per_payment": self.wire_bytes as f64 / n,
            "seconds": self.elapsed.as_secs_f64(),
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

struct Topology {
    /// Node entropy seeds; index 0 and 1 are the two hubs' intermediaries.
    count: usize,
    channels: Vec<(usize, usize, ChannelId)>,
    left: Vec<usize>,
    right: Vec<usize>,
}

fn two_hubs(leaves: usize) -> Topology {
    let mut channels = vec![(0, 1, ChannelId([0xff; 32]))];
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for i in 0..leaves * 2 {
        let node = 2 + i;
        let side = i % 2;
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(node as u64).to_le_bytes());
        channels.push((side, node, ChannelId(id)));
        if side == 0 { left.push(node) } else { right.push(node) }
    }
    Topology { count: 2 + leaves * 2, channels, left, right }
}

fn node_config() -> NodeConfig {
    NodeConfig {
        measurement: crate::sim::NODE_MEASUREMENT,
        attestation_authority: crate::sim::attestation_key().address(),
        allowed_hub_measurements: vec![crate::sim::HUB_MEASUREMENT],
        contracts: vec![(CHAIN, CONTRACT)],
        max_tx_fee: Amount(0),
    }
}

fn hub_config() -> HubConfig {
    HubConfig {
        measurement: crate::sim::HUB_MEASUREMENT,
        attestation_authority: crate::sim::attestation_key().address(),
        allowed_node_measurements: vec![crate::sim::NODE_MEASUREMENT],
        prepare_timeout: 30_000,
        retransmit_after: 5_000,
        round_auth: teepay_types::RoundAuth::default(),
    }
}

/// Pre-funded channels in every enclave and in the hub's map (no chain).
fn fund<P: Platform>(enclaves: &mut [NodeEnclave<P>], topo: &Topology) -> Result<Network> {
    let mut network = Network::new();
    for &(x, y, id) in &topo.channels {
        let (a, b) = (enclaves[x].address(), enclaves[y].address());
        for (k, peer, is_a) in [(x, b, true), (y, a, false)] {
            let new = NewChannel {
                chain: CHAIN,
                contract: CONTRACT,
                id,
                peer,
                local_is_a: is_a,
                deposit_local: Amount(DEPOSIT),
                deposit_peer: Amount(DEPOSIT),
                fee: FeePolicy::default(),
            };
            enclaves[k].handle(0, Request::AddChannel(new))?;
        }
        network.chain_mut(CHAIN).upsert_channel(&ChannelInfo {
            id,
            a,
            b,
            balance_a: Amount(DEPOSIT),
            balance_b: Amount(DEPOSIT),
            fee_a: FeePolicy::default(),
            fee_b: FeePolicy::default(),
        })?;
    }
    Ok(network)
}

/// The k-th payment's (payer, payee): alternating sides so balances stay level.
fn pair(topo: &Topology, k: usize) -> (usize, usize) {
    let i = k % topo.left.len();
    let j = (k / topo.left.len() + k) % topo.right.len();
    if k.is_multiple_of(2) { (topo.left[i], topo.right[j]) } else { (topo.right[j], topo.left[i]) }
}

/// The protocol's own limit: executor + enclaves, no sockets, no disk.
fn in_memory(topo: &Topology, payments: usize, concurrency: usize) -> Result<Run> {
    let mut enclaves: Vec<NodeEnclave<SimPlatform>> = (0..topo.count)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            NodeEnclave::create(SimPlatform::new(seed), node_config(), seed).map(|e| e.0)
        })
        .collect::<Result<_, _>>()?;
    let network = fund(&mut enclaves, topo)?;
    let mut hub = Coordinator::create(SimPlatform::new([9; 32]), hub_config(), [8; 32])?;
    let hub_quote = hub.report(ChainId(0)).attest(&crate::sim::attestation_key());
    let index: HashMap<Address, usize> = enclaves.iter().enumerate().map(|(i, e)| (e.address(), i)).collect();
    for e in enclaves.iter_mut() {
        let Response::Report(r) = e.handle(0, Request::Report { chain: ChainId(0) })?.response else {
            bail!("report")
        };
        hub.register_node(&r.attest(&crate::sim::attestation_key()))?;
        e.handle(0, Request::AttestHub { quote: hub_quote.clone() })?;
    }
    let mut exec = Executor::new(hub, network);
    let (cpu0, start) = (cpu_seconds(), Instant::now());
    let mut started_at: HashMap<InstanceId, Instant> = HashMap::new();
    let (mut next, mut run) = (0usize, Run::new(payments));
    let now = teepay_link::host::now_ms();
    while run.succeeded + run.refunded < payments {
        while next < payments && started_at.len() < concurrency {
            let (x, y) = pair(topo, next);
            let payee = enclaves[y].address();
            let req = Request::CreatePayment {
                chain: CHAIN,
                payee,
                amount: Amount(1),
                max_fee: Amount(0),
                expires_at: now + 600_000,
            };
            let Response::Order(order) = enclaves[x].handle(now, req)?.response else { bail!("order") };
            let id = exec.submit_payment(now, order)?;
            started_at.insert(id, Instant::now());
            next += 1;
        }
        let out = exec.flush(now);
        for f in out.finished {
            run.record(started_at.remove(&f.id).map(|t| t.elapsed()), &f.status);
        }
        for batch in out.batches {
            let node = index[&batch.batch.node];
            if let Response::Batch(r) = enclaves[node].handle(now, Request::HubBatch(batch))?.response
                && let Some(ack) = r.ack
            {
                exec.on_ack(now, &ack)?;
            }
        }
    }
    run.elapsed = start.elapsed();
    run.cpu_seconds = cpu_seconds() - cpu0;
    Ok(run)
}

/// The production path: hub service + node daemons over loopback TCP, fsync'd state.
async fn sockets(topo: &Topology, payments: usize, concurrency: usize) -> Result<(Run, Vec<NodeHandle>)> {
    let dir = std::env::temp_dir().join(format!("teepay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut enclaves: Vec<NodeEnclave<FilePlatform>> = (0..topo.count)
        .map(|i| -> Result<_> {
            let platform = FilePlatform::open(&dir.join(format!("n{i}")))?;
            Ok(NodeEnclave::create(platform, node_config(), teepay_link::os_entropy()?)?.0)
        })
        .collect::<Result<_>>()?;
    let network = fund(&mut enclaves, topo)?;
    let hub =
        Coordinator::create(FilePlatform::open(&dir.join("hub"))?, hub_config(), teepay_link::os_entropy()?)?;
    let hub_quote = hub.report(ChainId(0)).attest(&crate::sim::attestation_key());
    let (fin_tx, mut fin_rx) = mpsc::unbounded_channel();
    let settings = HubSettings {
        listen: "127.0.0.1:0".parse()?,
        state_path: dir.join("hub.sealed"),
        quote: hub_quote,
        tick: Duration::from_millis(50),
        batch_window: Duration::ZERO,
        metrics: Arc::new(teepay_hub::metrics::Metrics::new(&[CHAIN.0])),
        finished: Some(fin_tx),
    };
    let handle = serve(Executor::new(hub, network), None, settings).await?;
    let mut nodes = Vec::new();
    for (i, mut e) in enclaves.into_iter().enumerate() {
        let Response::Report(r) = e.handle(0, Request::Report { chain: ChainId(0) })?.response else {
            bail!("report")
        };
        let (h, _) = spawn(
            e,
            NodeSettings {
                hub: handle.addr,
                state_path: dir.join(format!("n{i}/sealed")),
                quote: r.attest(&crate::sim::attestation_key()),
                reconnect_after: Duration::from_millis(50),
                order_ttl: Duration::from_secs(600),
            },
        );
        nodes.push(h);
    }
    for n in &nodes {
        crate::demo::wait_ready(n).await?;
    }

    // Completion: the hub's finished events; a closed loop of `concurrency` payments.
    #[derive(Default)]
    struct Shared {
        started: HashMap<InstanceId, Instant>,
        early: HashMap<InstanceId, Finished>,
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    let permits = Arc::new(Semaphore::new(concurrency));
    let run = Arc::new(Mutex::new(Run::new(payments)));
    let (bytes0, cpu0, start) =
        (teepay_link::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed), cpu_seconds(), Instant::now());
    let collector = {
        let (shared, run, permits) = (shared.clone(), run.clone(), permits.clone());
        tokio::spawn(async move {
            let mut done = 0;
            while let Some(f) = fin_rx.recv().await {
                let mut s = shared.lock().expect("lock");
                match s.started.remove(&f.id) {
                    Some(t) => {
                        run.lock().expect("lock").record(Some(t.elapsed()), &f.status);
                        permits.add_permits(1);
                        done += 1;
                    }
                    None => drop(s.early.insert(f.id, f)),
                }
                if done == payments {
                    return;
                }
            }
        })
    };
    for k in 0..payments {
        permits.acquire().await?.forget();
        let (x, y) = pair(topo, k);
        let (payer, payee) = (nodes[x].clone(), nodes[y].address);
        let (shared, run, permits) = (shared.clone(), run.clone(), permits.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            match payer.pay(CHAIN, payee, Amount(1), Amount(0)).await {
                Ok(id) => {
                    let mut s = shared.lock().expect("lock");
                    if let Some(f) = s.early.remove(&id) {
                        run.lock().expect("lock").record(Some(t.elapsed()), &f.status);
                        permits.add_permits(1);
                    } else {
                        s.started.insert(id, t);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "payment not started");
                    run.lock().expect("lock").refunded += 1;
                    permits.add_permits(1);
                }
            }
        });
    }
    let deadline = Duration::from_secs(120);
    tokio::time::timeout(deadline, async {
        loop {
            let finished = {
                let r = run.lock().expect("lock");
                r.succeeded + r.refunded
            };
            if finished >= payments {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .context("payments did not all finish within 120 s")?;
    collector.abort();
    let mut r = std::mem::take(&mut *run.lock().expect("lock"));
    r.elapsed = start.elapsed();
    r.cpu_seconds = cpu_seconds() - cpu0;
    r.wire_bytes = teepay_link::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed) - bytes0;
    Ok((r, nodes))
}

/// Once the last CONFIRMs are applied (no locks anywhere; the hub reports a payment final
/// when it is decided, a round earlier): every channel's two parties agree and hold exactly
/// what was deposited.
async fn conserved(nodes: &[NodeHandle]) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views: HashMap<ChannelId, Vec<(u128, u128, usize)>> = HashMap::new();
        for n in nodes {
            for c in n.channels().await? {
                views.entry(c.id).or_default().push((c.local.0, c.remote.0, c.locks));
            }
        }
        let settled = views.values().all(|v| v.iter().all(|x| x.2 == 0));
        if settled || Instant::now() > deadline {
            return Ok(settled
                && views.values().all(|v| {
                    v.len() == 2 && v[0].0 == v[1].1 && v[0].1 == v[1].0 && v[0].0 + v[0].1 == 2 * DEPOSIT
                }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn run(args: &BenchArgs) -> Result<std::process::ExitCode> {
    if args.scenario != "two-hubs" {
        bail!("unknown scenario {:?} (available: two-hubs)", args.scenario);
    }
    if args.leaves == 0 || args.payments == 0 || args.concurrency == 0 {
        bail!("--leaves, --payments and --concurrency must be positive");
    }
    let topo = two_hubs(args.leaves);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if !args.json {
        println!(
            "two-hubs: {} nodes, {} channels, 3-hop payments of 1 wei; channels pre-funded (no chain setup)",
            topo.count,
            topo.channels.len()
        );
        println!("in-memory limit: {} payments, {} in flight…", args.payments, args.concurrency);
    }
    let mut mem = in_memory(&topo, args.payments, args.concurrency)?;
    if args.in_memory_only {
        println!("{}", json!({"scenario": "two-hubs", "in_memory": mem.summary()}));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if !args.json {
        println!(
            "sockets (hub + {} node daemons, loopback TCP, fsync): {} payments…",
            topo.count, args.payments
        );
    }
    let (mut net, nodes) = rt.block_on(sockets(&topo, args.payments, args.concurrency))?;
    let ok = rt.block_on(conserved(&nodes))?;
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ =
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("teepay-bench-{}", std::process::id())));
    let ratio = net.rate() / mem.rate();
    let report = json!({
        "scenario": "two-hubs", "nodes": topo.count, "channels": topo.channels.len(), "hops": 3,
        "chain_setup": "skipped (pre-funded channel state)",
        "payments": args.payments, "concurrency": args.concurrency,
        "in_memory": mem.summary(), "sockets": net.summary(),
        "sockets_over_in_memory": ratio, "conservation": ok,
    });
    if args.json {
        println!("{report}");
    } else {
        for (name, r) in [("in-memory limit", &report["in_memory"]), ("sockets", &report["sockets"])] {
            println!(
                "{name:16} {:>9.0} payments/s  p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  cpu {:.0} µs/payment  {:.0} B/payment  ok {} refunded {}",
                r["payments_per_s"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p95_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0),
                r["cpu_s_per_payment"].as_f64().unwrap_or(0.0) * 1e6,
                r["wire_bytes_per_payment"].as_f64().unwrap_or(0.0),
                r["succeeded"],
                r["refunded"],
            );
        }
        println!(
            "end-to-end = {:.1}% of the in-memory limit; conservation {}",
            ratio * 100.0,
            if ok { "holds" } else { "VIOLATED" }
        );
    }
    Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
