//! The production path: the hub service and every node daemon in this process, over real
//! loopback TCP with the encrypted links, sealed state written durably (fsync) before every
//! ack and every batch.

use super::scenario::{Job, Scenario};
use super::{Drive, Mode, Progress, Run, cpu_seconds, fund, hub_config, node_config, swap_intent_request};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use teepay_coordinator::Coordinator;
use teepay_enclave::{NodeEnclave, Request, Response};
use teepay_hub::executor::{Executor, Finished};
use teepay_hub::metrics::Metrics;
use teepay_hub::replication::LocalGroup;
use teepay_hub::service::{HubSettings, serve};
use teepay_link::host::FilePlatform;
use teepay_node::{NodeHandle, NodeSettings, spawn};
use teepay_types::{Amount, ChainId, ChannelId, InstanceId};
use tokio::sync::{Semaphore, mpsc};

/// The node daemons a run drives, however they are hosted (this process or child
/// processes): start a job at its first node, list each node's channels.
pub trait Nodes: Send + Sync + 'static {
    fn start(&self, job: &Job) -> impl Future<Output = Result<InstanceId>> + Send;
    /// Every node's channels as (channel, local, remote, locks).
    fn channel_views(&self) -> impl Future<Output = Result<Vec<(ChannelId, u128, u128, usize)>>> + Send;
}

/// The hub service of a run, serving on loopback.
pub struct Hub {
    pub addr: std::net::SocketAddr,
    finished: mpsc::UnboundedReceiver<Finished>,
    metrics: Arc<Metrics>,
    /// Each scenario channel's id, in order.
    channels: Vec<ChannelId>,
    /// A replicated hub's group (`--replicas`): kept running for the whole run.
    group: Option<LocalGroup>,
}

/// Node enclaves for every scenario node (durable platform files under `dir/n{i}`), with
/// their channels pre-funded, and the hub service that knows those channels.
pub async fn setup(
    scn: &Scenario,
    drive: &Drive,
    mode: &Mode,
    dir: &Path,
) -> Result<(Vec<NodeEnclave<FilePlatform>>, Hub)> {
    let _ = std::fs::remove_dir_all(dir);
    let mut enclaves: Vec<NodeEnclave<FilePlatform>> = (0..scn.nodes)
        .map(|i| -> Result<_> {
            let platform = FilePlatform::open(&dir.join(format!("n{i}")))?;
            let mut e = NodeEnclave::create(platform, node_config(scn, mode), teepay_link::os_entropy()?)?.0;
            e.set_seal_limits(mode.seal);
            Ok(e)
        })
        .collect::<Result<_>>()?;
    let (network, channels) = fund(&mut enclaves, scn)?;
    // A replicated hub: the leader's live enclave, each flush committed on a majority of
    // the group (every replica in this process, each with its own files and Raft on
    // loopback) before it is released.
    let (mut hub, gate, group) = if drive.replicas > 1 {
        let authority = teepay_demo::dev::attestation_key();
        // The operators' key, here only to admit every replica as a member.
        let governance = teepay_types::SigningKey::from_entropy(teepay_link::os_entropy()?)?;
        let group =
            LocalGroup::start(&dir.join("group"), drive.replicas, hub_config(mode), &authority, &governance)
                .await?;
        let leader = group.leader().await?;
        let (live, gate) = group.take_office(leader).await?;
        (live, Some(gate), Some(group))
    } else {
        let hub = Coordinator::create(
            FilePlatform::open(&dir.join("hub"))?,
            hub_config(mode),
            teepay_link::os_entropy()?,
        )?;
        (hub, None, None)
    };
    hub.set_seal_limits(mode.seal);
    let hub_quote = hub.report(ChainId(0)).attest(&teepay_demo::dev::attestation_key());
    let (fin_tx, finished) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::new(&scn.chains.iter().map(|c| c.0).collect::<Vec<_>>()));
    let settings = HubSettings {
        listen: "127.0.0.1:0".parse()?,
        state_path: dir.join("hub.sealed"),
        quote: hub_quote,
        tick: Duration::from_millis(50),
        batch_window: drive.batch_window,
        metrics: metrics.clone(),
        finished: Some(fin_tx),
        gate,
        events: None, // no DB here: instance events are written with the status rows
    };
    let handle = serve(Executor::new(hub, network), None, settings).await?;
    Ok((enclaves, Hub { addr: handle.addr, finished, metrics, channels, group }))
}

/// Refuses up front a run that would hit the open-file limit halfway through: every node
/// holds its link (both ends live in this process) and its sealed log open.
pub fn check_descriptors(nodes: usize) -> Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    let needed = 3 * nodes + 256;
    if let Some(limit) = soft.filter(|&limit| needed > limit) {
        bail!(
            "{nodes} node daemons need about {needed} open files but the limit is {limit}: \
             raise it (ulimit -n) or run --in-memory-only"
        );
    }
    Ok(())
}

/// What a node daemon needs besides its enclave.
pub fn node_settings(hub: std::net::SocketAddr, dir: &Path, quote: teepay_types::Quote) -> NodeSettings {
    NodeSettings {
        hub,
        standby_hubs: Vec::new(),
        state_path: dir.join("sealed"),
        quote,
        reconnect_after: Duration::from_millis(50),
        order_ttl: Duration::from_secs(600),
        // As a daemon runs (its log in memory here: the file write is left out).
        events: Some(teepay_events::EventLog::in_memory(10_000)),
    }
}

/// The enclave's quote for the hub chain, attested by the simulation authority.
pub fn quote<P: teepay_types::Platform>(e: &mut NodeEnclave<P>) -> Result<teepay_types::Quote> {
    let Response::Report(r) = e.handle(0, Request::Report { chain: ChainId(0) })?.response else {
        bail!("report")
    };
    Ok(r.attest(&teepay_demo::dev::attestation_key()))
}

/// Every node daemon in this process, over real loopback TCP to the hub.
pub struct InProcess(Vec<NodeHandle>);

impl Nodes for InProcess {
    fn start(&self, job: &Job) -> impl Future<Output = Result<InstanceId>> + Send {
        start_job(&self.0, job)
    }
    async fn channel_views(&self) -> Result<Vec<(ChannelId, u128, u128, usize)>> {
        let mut views = Vec::new();
        for n in &self.0 {
            views.extend(n.channels().await?.into_iter().map(|c| (c.id, c.local.0, c.remote.0, c.locks)));
        }
        Ok(views)
    }
}

pub async fn run(
    scn: &Scenario,
    drive: &Drive,
    mode: &Mode,
    dir: &Path,
    progress: &mut Progress,
) -> Result<Run> {
    let (enclaves, hub) = setup(scn, drive, mode, dir).await?;
    let mut nodes = Vec::new();
    for (i, mut e) in enclaves.into_iter().enumerate() {
        let quote = quote(&mut e)?;
        let (h, _) = spawn(e, node_settings(hub.addr, &dir.join(format!("n{i}")), quote));
        nodes.push(h);
    }
    for n in &nodes {
        teepay_demo::wait_ready(n).await?;
    }
    drive_jobs(scn, drive, hub, Arc::new(InProcess(nodes)), progress).await
}

/// Completion comes from the hub's finished events, which may arrive before the job's
/// start call returns; the run being measured.
#[derive(Default)]
struct Shared {
    started: HashMap<InstanceId, Instant>,
    early: HashMap<InstanceId, Finished>,
    run: Run,
}

/// Offers the scenario's jobs to `nodes` (closed loop, `drive.concurrency` in flight, at
/// `drive.rate` if set) and measures them: latency from start to the hub's final event,
/// this process's CPU and link bytes, batch sizes, and conservation at the end. The
/// scenario's warm-up jobs run first, unmeasured.
pub async fn drive_jobs<N: Nodes>(
    scn: &Scenario,
    drive: &Drive,
    hub: Hub,
    nodes: Arc<N>,
    progress: &mut Progress,
) -> Result<Run> {
    // The group (if any) lives until the run's end: dropping it would stop the replicas.
    let Hub { mut finished, metrics, channels, group, .. } = hub;
    let _group = group;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let permits = Arc::new(Semaphore::new(drive.concurrency));
    let collector = {
        let (shared, permits) = (shared.clone(), permits.clone());
        tokio::spawn(async move {
            while let Some(f) = finished.recv().await {
                let mut s = shared.lock().expect("lock");
                match s.started.remove(&f.id) {
                    Some(t) => {
                        s.run.record(Some(t.elapsed()), &f.status);
                        permits.add_permits(1);
                    }
                    None => drop(s.early.insert(f.id, f)),
                }
            }
        })
    };
    let (warm, untimed) = drive.warm_up(scn);
    shared.lock().expect("lock").run = Run::new(warm.len());
    let offered =
        offer(&warm, &untimed, &nodes, &shared, &permits, &mut Progress::new(String::new(), false)).await;
    if let Err(e) = offered {
        collector.abort();
        return Err(e.context("warm-up"));
    }
    shared.lock().expect("lock").run = Run::new(drive.jobs);
    let (bytes0, cpu0, start) = (teepay_link::BYTES_SENT.load(Relaxed), cpu_seconds(), Instant::now());
    let syncs0 = teepay_link::host::DURABLE_WRITES.load(Relaxed);
    let batches0 = (metrics.batch_size.buckets(), metrics.batch_size.sum());
    let offered = offer(&scn.jobs, drive, &nodes, &shared, &permits, progress).await;
    collector.abort();
    offered?;
    let mut r = std::mem::take(&mut shared.lock().expect("lock").run);
    r.elapsed = start.elapsed();
    r.cpu_seconds = cpu_seconds() - cpu0;
    r.wire_bytes = teepay_link::BYTES_SENT.load(Relaxed) - bytes0;
    r.durable_writes = teepay_link::host::DURABLE_WRITES.load(Relaxed) - syncs0;
    r.batches = metrics
        .batch_size
        .buckets()
        .into_iter()
        .zip(batches0.0)
        .map(|((b, after), (_, before))| (b, after - before))
        .collect();
    // The histogram's sum is kept in millionths; items are whole numbers.
    r.batch_items = (metrics.batch_size.sum() - batches0.1).round() as u64;
    r.conservation = Some(conserved(scn, &channels, &*nodes).await?);
    Ok(r)
}

/// Starts `drive.jobs` jobs cycling through `jobs` and waits until all have finished (or
/// were refused), recording into `shared.run`.
async fn offer<N: Nodes>(
    jobs: &[Job],
    drive: &Drive,
    nodes: &Arc<N>,
    shared: &Arc<Mutex<Shared>>,
    permits: &Arc<Semaphore>,
    progress: &mut Progress,
) -> Result<()> {
    let start = Instant::now();
    let done = || shared.lock().expect("lock").run.done();
    for k in 0..drive.jobs {
        permits.acquire().await?.forget();
        while !drive.may_start(k, start) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let job = jobs[k % jobs.len()].clone();
        let (nodes, shared, permits) = (nodes.clone(), shared.clone(), permits.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let started = nodes.start(&job).await;
            let mut s = shared.lock().expect("lock");
            match started {
                Ok(id) => match s.early.remove(&id) {
                    Some(f) => {
                        s.run.record(Some(t.elapsed()), &f.status);
                        permits.add_permits(1);
                    }
                    None => drop(s.started.insert(id, t)),
                },
                Err(e) => {
                    s.run.refuse(&format!("{e:#}"));
                    permits.add_permits(1);
                }
            }
        });
        if k % 64 == 0 {
            progress.show(done(), drive.jobs);
        }
    }
    let deadline = Duration::from_secs(300);
    tokio::time::timeout(deadline, async {
        loop {
            progress.show(done(), drive.jobs);
            if done() >= drive.jobs {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .context("jobs did not all finish within 300 s")
}

async fn start_job(nodes: &[NodeHandle], job: &Job) -> Result<InstanceId> {
    Ok(match job {
        Job::Pay { chain, payer, payee, amount, max_fee } => {
            nodes[*payer].pay(*chain, nodes[*payee].address, Amount(*amount), Amount(*max_fee)).await?
        }
        Job::Swap { gives } => {
            let expires_at = teepay_link::host::now_ms() + 600_000;
            let mut intents = Vec::new();
            for (party, req) in swap_intent_request(gives, |i| nodes[i].address, expires_at) {
                match nodes[party].enclave(req).await? {
                    Response::Order(o) => intents.push(o),
                    _ => bail!("unexpected enclave response"),
                }
            }
            nodes[gives[0].0].swap(intents).await?
        }
    })
}

/// Once the last CONFIRMs are applied (no locks anywhere; the hub reports a job final when
/// it is decided, a round earlier): every channel's two parties agree and hold exactly what
/// was funded.
async fn conserved<N: Nodes>(scn: &Scenario, ids: &[ChannelId], nodes: &N) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views: HashMap<ChannelId, Vec<(u128, u128, usize)>> = HashMap::new();
        for (id, local, remote, locks) in nodes.channel_views().await? {
            views.entry(id).or_default().push((local, remote, locks));
        }
        let settled = views.values().all(|v| v.iter().all(|x| x.2 == 0));
        if settled || Instant::now() > deadline {
            return Ok(settled
                && scn.channels.iter().zip(ids).all(|(c, id)| {
                    views.get(id).is_some_and(|v| {
                        v.len() == 2
                            && v[0].0 == v[1].1
                            && v[0].1 == v[1].0
                            && v[0].0 + v[0].1 == c.balance_x + c.balance_y
                    })
                }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
