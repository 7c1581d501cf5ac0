//! `--processes`: every node daemon in its own OS process (this binary, re-executed as a
//! hidden bench child), as on separate machines: each restores its enclave from the platform
//! files the bench funded, links to the hub over loopback TCP, and serves the node gRPC API
//! the bench drives payments and swaps through. The hub service stays in the bench process.
//!
//! Child protocol on stdio: the child prints `ready <api address>` once linked to the hub;
//! when its stdin closes it prints `stats <link bytes sent> <cpu seconds> <durable writes>`
//! and exits.

use super::scenario::{Job, Scenario};
use super::sockets::{Nodes, drive_jobs, node_settings, quote, setup};
use super::{Drive, Mode, Progress, Run, cpu_seconds, swap_intent_request};

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use teepay_api::pb::{self, node_client::NodeClient};
use teepay_enclave::{NodeEnclave, Request};
use teepay_link::host::FilePlatform;
use teepay_types::{Address, ChannelId, InstanceId, SealLimits};
use tonic::transport::Channel;

/// Node daemons in child processes, driven through their gRPC APIs.
struct Children {
    clients: Vec<NodeClient<Channel>>,
    addresses: Vec<Address>,
}

impl Nodes for Children {
    async fn start(&self, job: &Job) -> Result<InstanceId> {
        let id = match job {
            Job::Pay { chain, payer, payee, amount, max_fee } => {
                let req = pb::PayRequest {
                    chain: chain.0,
                    payee: self.addresses[*payee].to_string(),
                    amount: amount.to_string(),
                    max_fee: max_fee.to_string(),
                    asset: String::new(),
                };
                call(self.clients[*payer].clone().pay(req).await)?.instance
            }
            Job::Swap { gives } => {
                let mut intents = Vec::new();
                // The expiry is the node's to set (from `ttl_seconds`), so none is passed here.
                for (party, req) in swap_intent_request(gives, |i| self.addresses[i], 0) {
                    let Request::CreateSwapIntent { gives, receives, .. } = req else {
                        bail!("unexpected intent request")
                    };
                    let req = pb::CreateIntentRequest {
                        gives: gives.iter().map(teepay_api::transfer_pb).collect(),
                        receives: receives.iter().map(teepay_api::transfer_pb).collect(),
                        ttl_seconds: 600,
                    };
                    intents.push(call(self.clients[party].clone().create_intent(req).await)?.encoded);
                }
                let req = pb::SubmitSwapRequest { intents };
                call(self.clients[gives[0].0].clone().submit_swap(req).await)?.instance
            }
        };
        teepay_api::parse_instance("instance", &id).map_err(|e| anyhow::anyhow!("{}", e.message()))
    }

    async fn channel_views(&self) -> Result<Vec<(ChannelId, u128, u128, usize)>> {
        let mut views = Vec::new();
        for c in &self.clients {
            for ch in call(c.clone().channels(pb::ChannelsRequest {}).await)?.channels {
                let id = teepay_api::parse_channel("channel", &ch.id)
                    .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
                let amount = |s: &str| s.parse::<u128>().with_context(|| format!("amount {s:?}"));
                views.push((id, amount(&ch.local)?, amount(&ch.remote)?, ch.locks as usize));
            }
        }
        Ok(views)
    }
}

/// A running child and its stdout, read line by line.
struct Proc {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Proc {
    fn line(&mut self, what: &str) -> Result<String> {
        let mut line = String::new();
        if self.out.read_line(&mut line)? == 0 {
            bail!("node process exited before reporting {what}");
        }
        Ok(line.trim().to_string())
    }
}

/// Stops the children however the run ends (an error must not leave 100 processes behind).
struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
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
    let addresses: Vec<Address> = enclaves.iter().map(|e| e.address()).collect();
    // The enclaves' state is on disk (their platform logs); each child restores its own.
    drop(enclaves);
    let exe = std::env::current_exe().context("locating this binary")?;
    let full = mode.seal == SealLimits::FULL;
    let mut procs = Procs(Vec::with_capacity(scn.nodes));
    for i in 0..scn.nodes {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("bench")
            .arg("--node-dir")
            .arg(dir.join(format!("n{i}")))
            .arg("--hub-addr")
            .arg(hub.addr.to_string())
            .arg("--seal")
            .arg(if full { "full" } else { "incremental" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting node process {i}"))?;
        let out = BufReader::new(child.stdout.take().expect("piped"));
        procs.0.push(Proc { child, out });
    }
    let mut clients = Vec::with_capacity(scn.nodes);
    for (i, p) in procs.0.iter_mut().enumerate() {
        let line = teepay_link::host::blocking(|| p.line("readiness"))?;
        let addr = line.strip_prefix("ready ").with_context(|| format!("node process {i} said {line:?}"))?;
        clients.push(NodeClient::connect(format!("http://{addr}")).await?);
    }
    let mut run = drive_jobs(scn, drive, hub, Arc::new(Children { clients, addresses }), progress).await?;
    // The children's share: each reports its own link bytes, CPU and durable writes when its
    // stdin closes. (Theirs include startup, the warm-up jobs and serving the bench's API
    // calls; the bench process's share — hub and driver — is already in `run`.)
    for (i, p) in procs.0.iter_mut().enumerate() {
        drop(p.child.stdin.take());
        let line = teepay_link::host::blocking(|| p.line("stats"))?;
        let mut f = line
            .strip_prefix("stats ")
            .with_context(|| format!("node process {i} said {line:?}"))?
            .split(' ');
        let bytes: u64 = f.next().unwrap_or("").parse().with_context(|| format!("stats {line:?}"))?;
        let cpu: f64 = f.next().unwrap_or("").parse().with_context(|| format!("stats {line:?}"))?;
        let syncs: u64 = f.next().unwrap_or("").parse().with_context(|| format!("stats {line:?}"))?;
        run.wire_bytes += bytes;
        run.cpu_seconds += cpu;
        run.durable_writes += syncs;
    }
    Ok(run)
}

/// The child side: one node daemon restored from `dir`, linked to the hub at `hub`.
pub fn child(dir: &Path, hub: SocketAddr, seal: SealLimits) -> Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let platform = FilePlatform::open(dir)?;
        let log = platform.restorable(&dir.join("sealed"))?.context("no sealed state to restore")?;
        let mut enclave = NodeEnclave::restore(platform, &log)?;
        enclave.set_seal_limits(seal);
        let quote = quote(&mut enclave)?;
        let chains = enclave.inspect().config.contracts.iter().map(|(c, _)| *c).collect();
        let (handle, _) = teepay_node::spawn(enclave, node_settings(hub, dir, quote));
        teepay_demo::wait_ready(&handle).await?;
        let api = teepay_node::api::NodeApi {
            node: handle,
            links: Vec::new(),
            chains,
            hub: hub.to_string(),
            quotes: Vec::new(),
            tokens: Vec::new(),
            units: Default::default(),
        };
        let (addr, _) = api.serve("127.0.0.1:0".parse()?).await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "ready {addr}")?;
        stdout.flush()?;
        // Serve until the bench closes our stdin.
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
        let syncs = teepay_link::host::DURABLE_WRITES.load(Relaxed);
        writeln!(stdout, "stats {} {} {syncs}", teepay_link::BYTES_SENT.load(Relaxed), cpu_seconds())?;
        stdout.flush()?;
        Ok(std::process::ExitCode::SUCCESS)
    })
}

/// A gRPC call's answer, or its status message as the error.
fn call<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(|r| r.into_inner()).map_err(|s| anyhow::anyhow!("{}", s.message()))
}
