//! `scale-1m`: a hub with a million channels. A synthetic scale-free network (Barabási–Albert,
//! 5 channels per new node) is written to a SQLite channel DB the way chain sync writes it
//! (ChannelOpened and ChannelFunded events through `Store::apply_logs`); then a fresh
//! process starts from that DB like a hub does (`load_network`) and routes: startup time,
//! resident memory, route p50/p99.

use alloy_primitives::{Address as EvmAddress, B256, U256};
use alloy_sol_types::SolEvent;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;
use teepay_chain::{LogEntry, PaymentChannels as PC};
use teepay_routing::RouteQuery;
use teepay_routing::topology::{SplitMix64, Topology, channel_id, node_address};
use teepay_store::Store;
use teepay_types::{Address, Amount, ChainId, FeePolicy};

const CHAIN: ChainId = ChainId(1);
const CONTRACT: Address = Address([0xcc; 20]);
const LINKS: u32 = 5;
const DEPOSIT: u128 = 1_000_000_000_000_000_000; // 1 ETH per side
const QUERIES: usize = 2_000;

fn topology(channels: usize) -> Topology {
    // m(m+1)/2 clique channels, then m per node.
    let nodes = ((channels.saturating_sub(15)) as u32 / LINKS + LINKS + 1).max(LINKS + 2);
    Topology::scale_free(nodes, LINKS, DEPOSIT, FeePolicy::default(), 3)
}

fn log<E: SolEvent>(event: E, block: u64, index: u64) -> LogEntry {
    let data = event.encode_log_data();
    LogEntry {
        address: CONTRACT,
        topics: data.topics().iter().map(|t| t.0).collect(),
        data: data.data.to_vec(),
        block_number: block,
        tx_hash: keccak_of(block, index),
        log_index: index,
    }
}

fn keccak_of(block: u64, index: u64) -> [u8; 32] {
    teepay_types::keccak256(&[block.to_be_bytes(), index.to_be_bytes()].concat())
}

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn run(channels: usize, json: bool) -> Result<ExitCode> {
    if channels < 20 {
        bail!("--channels must be at least 20");
    }
    let topo = topology(channels);
    let dir = std::env::temp_dir().join(format!("teepay-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("hub.db");
    if !json {
        println!(
            "scale-1m: {} nodes, {} channels (scale-free, {LINKS} per new node), written to a SQLite channel DB as contract events",
            topo.nodes,
            topo.channels.len()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let t = Instant::now();
    rt.block_on(async {
        let store = Store::connect(&format!("sqlite://{}", db.display())).await?;
        store.init_cursor(CHAIN, CONTRACT, 1).await?;
        let evm = |a: Address| EvmAddress::from(a.0);
        const PER_BLOCK: usize = 20_000;
        for (b, chunk) in topo.channels.chunks(PER_BLOCK).enumerate() {
            let block = b as u64 + 1;
            let mut logs = Vec::with_capacity(chunk.len() * 2);
            for (j, c) in chunk.iter().enumerate() {
                let id = B256::from(channel_id((b * PER_BLOCK + j) as u32).0);
                let (a, bb) = (node_address(c.a), node_address(c.b));
                let idx = 2 * j as u64;
                logs.push(log(
                    PC::ChannelOpened {
                        channelId: id,
                        a: evm(a),
                        b: evm(bb),
                        deposit: U256::from(c.balance_a),
                        nonce: (b * PER_BLOCK + j) as u64,
                        token: evm(teepay_types::Address::default()),
                    },
                    block,
                    idx,
                ));
                logs.push(log(
                    PC::ChannelFunded {
                        channelId: id,
                        party: evm(bb),
                        amount: U256::from(c.balance_b),
                        depositA: U256::from(c.balance_a),
                        depositB: U256::from(c.balance_b),
                    },
                    block,
                    idx + 1,
                ));
            }
            store.apply_logs(CHAIN, &logs, block + 1, (block, keccak_of(block, u64::MAX))).await?;
            if !json {
                eprint!(
                    "\r  writing the channel DB: {}/{}  ",
                    ((b + 1) * PER_BLOCK).min(topo.channels.len()),
                    topo.channels.len()
                );
            }
        }
        store.close().await;
        anyhow::Ok(())
    })?;
    let write_s = t.elapsed().as_secs_f64();
    if !json {
        eprintln!();
    }
    // A fresh process, so its memory is the hub's alone.
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args(["bench", "--scenario", "scale-1m", "--channels", &channels.to_string(), "--scale-db"])
        .arg(&db)
        .output()
        .context("starting the measuring process")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!("measuring process failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("measuring process output")?;
    report["db_write_s"] = json!(write_s);
    if json {
        println!("{report}");
    } else {
        let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
        println!("DB written (setup, not part of startup): {write_s:.1} s");
        println!(
            "startup from the DB (connect, read every channel row, build the network map): {:.2} s; resident {:.0} MiB (peak {:.0} MiB)",
            f("startup_s"),
            f("rss_mib"),
            f("peak_rss_mib")
        );
        println!(
            "routes: {} queries, p50 {:.2} ms, p99 {:.2} ms, found {:.1}%, average {:.2} hops",
            report["queries"],
            f("route_p50_ms"),
            f("route_p99_ms"),
            100.0 * f("found") / f("queries").max(1.0),
            f("avg_hops")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The measuring process: start from the DB as the hub does, then route.
pub fn measure(db: &Path, channels: usize) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let t = Instant::now();
    let net = rt.block_on(async {
        let store = Store::connect(&format!("sqlite://{}", db.display())).await?;
        let net = teepay_hub::load_network(&store).await?;
        store.close().await;
        anyhow::Ok(net)
    })?;
    let startup = t.elapsed().as_secs_f64();
    let g = net.graph(CHAIN, teepay_types::Asset::Native)?;
    let expected = topology(channels).channels.len();
    if g.channel_count() != expected {
        bail!("loaded {} channels, expected {expected}", g.channel_count());
    }
    let n = g.node_count() as u64;
    let mut rng = SplitMix64::new(5);
    let mut times = Vec::with_capacity(QUERIES);
    let (mut found, mut hops) = (0usize, 0usize);
    for _ in 0..QUERIES {
        let s = rng.below(n) as u32;
        let d = (s as u64 + 1 + rng.below(n - 1)) % n;
        let q = RouteQuery {
            source: node_address(s),
            destination: node_address(d as u32),
            amount: Amount(DEPOSIT / 1000),
            max_fee: Amount(0),
        };
        let t = Instant::now();
        let r = g.find_route(&q);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if let Ok(r) = r {
            found += 1;
            hops += r.hops.len();
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "{}",
        json!({
            "scenario": "scale-1m", "nodes": g.node_count(), "channels": g.channel_count(),
            "startup_s": startup,
            "rss_mib": rss_mib("VmRSS:"), "peak_rss_mib": rss_mib("VmHWM:"),
            "queries": QUERIES, "found": found, "avg_hops": hops as f64 / found.max(1) as f64,
            "route_p50_ms": pct(0.5), "route_p99_ms": pct(0.99),
        })
    );
    Ok(ExitCode::SUCCESS)
}
