//! The protocol's own limit: the same executor and enclaves as production, no sockets, no
//! disk (sealing still runs, into memory), driven in one thread.

use super::scenario::{Job, Scenario};
use super::{Drive, Mode, Progress, Run, cpu_seconds, fund, hub_config, node_config, swap_intent_request};
use anyhow::{Result, bail};
use std::collections::HashMap;
use std::time::Instant;
use teepay_coordinator::Coordinator;
use teepay_enclave::{NodeEnclave, Request, Response};
use teepay_hub::executor::{ExecError, Executor};
use teepay_types::{Address, Amount, ChainId, ChannelId, InstanceId, SimPlatform};

pub fn run(scn: &Scenario, drive: &Drive, mode: &Mode, progress: &mut Progress) -> Result<Run> {
    let mut enclaves: Vec<NodeEnclave<SimPlatform>> = (0..scn.nodes)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let mut e = NodeEnclave::create(SimPlatform::new(seed), node_config(scn, mode), seed)?.0;
            e.set_seal_limits(mode.seal);
            Ok::<_, teepay_enclave::EnclaveError>(e)
        })
        .collect::<Result<_, _>>()?;
    let (network, ids) = fund(&mut enclaves, scn)?;
    let mut hub = Coordinator::create(SimPlatform::new([9; 32]), hub_config(mode), [8; 32])?;
    hub.set_seal_limits(mode.seal);
    let hub_quote = hub.report(ChainId(0)).attest(&teepay_demo::dev::attestation_key());
    let index: HashMap<Address, usize> = enclaves.iter().enumerate().map(|(i, e)| (e.address(), i)).collect();
    for e in enclaves.iter_mut() {
        let Response::Report(r) = e.handle(0, Request::Report { chain: ChainId(0) })?.response else {
            bail!("report")
        };
        hub.register_node(&r.attest(&teepay_demo::dev::attestation_key()))?;
        e.handle(0, Request::AttestHub { quote: hub_quote.clone() })?;
    }
    let mut net = Net { exec: Executor::new(hub, network), enclaves, index };
    let (warm, untimed) = drive.warm_up(scn);
    net.drive(&warm, &untimed, &mut Progress::new(String::new(), false))?;
    let mut run = net.drive(&scn.jobs, drive, progress)?;
    run.conservation = Some(conserved(scn, &ids, &net.enclaves));
    Ok(run)
}

/// The hub's executor and every node enclave, wired by direct calls.
struct Net {
    exec: Executor<SimPlatform>,
    enclaves: Vec<NodeEnclave<SimPlatform>>,
    index: HashMap<Address, usize>,
}

impl Net {
    /// Offers `drive.jobs` jobs cycling through `jobs` and measures them; returns once the
    /// last CONFIRM is applied.
    fn drive(&mut self, jobs: &[Job], drive: &Drive, progress: &mut Progress) -> Result<Run> {
        let (cpu0, start) = (cpu_seconds(), Instant::now());
        let mut started_at: HashMap<InstanceId, Instant> = HashMap::new();
        let (mut next, mut run) = (0usize, Run::new(drive.jobs));
        let now = teepay_link::host::now_ms();
        let expires_at = now + 600_000;
        while run.done() < drive.jobs {
            while next < drive.jobs && started_at.len() < drive.concurrency && drive.may_start(next, start) {
                let id = self.start(&jobs[next % jobs.len()], now, expires_at)?;
                next += 1;
                match id {
                    Ok(id) => drop(started_at.insert(id, Instant::now())),
                    Err(e) => run.refuse(&e.to_string()),
                }
            }
            if started_at.is_empty() && next < drive.jobs {
                // Offered-rate mode, ahead of schedule.
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            }
            self.deliver_once(now, &mut run, &mut started_at)?;
            progress.show(run.done(), drive.jobs);
        }
        run.elapsed = start.elapsed();
        run.cpu_seconds = cpu_seconds() - cpu0;
        // The hub reports a payment final when it is decided; the CONFIRMs still go out.
        while self.deliver_once(now, &mut run, &mut started_at)? {}
        Ok(run)
    }

    /// The initiator's enclave issues the order(s); the hub routes and starts the instance.
    fn start(&mut self, job: &Job, now: u64, expires_at: u64) -> Result<Result<InstanceId, ExecError>> {
        let enclaves = &mut self.enclaves;
        Ok(match job {
            Job::Pay { chain, payer, payee, amount, max_fee } => {
                let req = Request::CreatePayment {
                    chain: *chain,
                    asset: teepay_types::Asset::Native,
                    payee: enclaves[*payee].address(),
                    amount: Amount(*amount),
                    max_fee: Amount(*max_fee),
                    expires_at,
                };
                let Response::Order(order) = enclaves[*payer].handle(now, req)?.response else {
                    bail!("order")
                };
                self.exec.submit_payment(now, order)
            }
            Job::Swap { gives } => {
                let mut intents = Vec::new();
                for (party, req) in swap_intent_request(gives, |i| enclaves[i].address(), expires_at) {
                    let Response::Order(o) = enclaves[party].handle(now, req)?.response else {
                        bail!("intent")
                    };
                    intents.push(o);
                }
                self.exec.submit_swap(now, intents)
            }
        })
    }

    /// One flush of the executor and delivery of its batches; false when nothing was sent.
    fn deliver_once(
        &mut self,
        now: u64,
        run: &mut Run,
        started_at: &mut HashMap<InstanceId, Instant>,
    ) -> Result<bool> {
        let out = self.exec.flush(now);
        for f in out.finished {
            run.record(started_at.remove(&f.id).map(|t| t.elapsed()), &f.status);
        }
        let sent = !out.batches.is_empty();
        for batch in out.batches {
            run.batch(batch.batch.items.len());
            let node = self.index[&batch.batch.node];
            if let Response::Batch(r) = self.enclaves[node].handle(now, Request::HubBatch(batch))?.response
                && let Some(ack) = r.ack
            {
                self.exec.on_ack(now, &ack)?;
            }
        }
        Ok(sent)
    }
}

/// Every channel's two enclaves agree, hold no locks, and hold exactly what was funded
/// (`ids`: each scenario channel's id, in order).
fn conserved(scn: &Scenario, ids: &[ChannelId], enclaves: &[NodeEnclave<SimPlatform>]) -> bool {
    let mut views: HashMap<ChannelId, Vec<(u128, u128, usize)>> = HashMap::new();
    for e in enclaves {
        for (id, c) in &e.inspect().channels {
            views.entry(*id).or_default().push((c.balance_local.0, c.balance_peer.0, c.locks.len()));
        }
    }
    scn.channels.iter().zip(ids).all(|(c, id)| {
        views.get(id).is_some_and(|v| {
            v.len() == 2
                && v.iter().all(|x| x.2 == 0)
                && v[0].0 == v[1].1
                && v[0].1 == v[1].0
                && v[0].0 + v[0].1 == c.balance_x + c.balance_y
        })
    })
}
