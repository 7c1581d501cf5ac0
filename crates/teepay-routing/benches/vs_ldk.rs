//! teepay's router against LDK's `find_route` on the real Lightning graph, in one process,
//! on the same graph and the same queries.
//!
//! `cargo bench -p teepay-routing --bench vs_ldk` (env: `TEEPAY_LN_GRAPH` = the CSV directory,
//! default `../shared/data/ln-graph-2020` beside the checkout; `TEEPAY_QUERIES` = how many
//! random queries, default 10,000; `TEEPAY_JSON=1` for one JSON line).
//!
//! Both routers get the same information: every channel with its two directions' fees and
//! balances (LDK gets each direction's balance as its `htlc_maximum_msat`, which it treats as
//! a hard limit, and the capacity as the channel's). LDK runs single-path (the payee
//! advertises no MPP), with its default probabilistic scorer and channel saturation limit
//! lifted, so both look for one path that can carry the whole amount. A route counts as a
//! success only if it is feasible against the true balances (amount plus downstream fees on
//! every hop ≤ that direction's balance).

use lightning::bitcoin::Network as BtcNetwork;
use lightning::bitcoin::constants::ChainHash;
use lightning::bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use lightning::ln::msgs::UnsignedChannelUpdate;
use lightning::routing::gossip::{NetworkGraph, NodeId};
use lightning::routing::router::{PaymentParameters, RouteParameters, find_route};
use lightning::routing::scoring::{
    ProbabilisticScorer, ProbabilisticScoringDecayParameters, ProbabilisticScoringFeeParameters,
};
use lightning::types::features::ChannelFeatures;
use lightning::util::logger::{Logger, Record};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use teepay_routing::topology::{SplitMix64, Topology, channel_id, node_address};
use teepay_routing::{Graph, RouteQuery};
use teepay_types::{Address, Amount};

struct Quiet;
impl Logger for Quiet {
    fn log(&self, _record: Record) {}
}

#[derive(Clone, Copy)]
struct Query {
    src: u32,
    dst: u32,
    amount_msat: u64,
}

#[derive(Default)]
struct Tally {
    micros: Vec<f64>,
    found: usize,
    feasible: usize,
    fee_msat: u128,
    hops: usize,
}

impl Tally {
    fn record(&mut self, micros: f64, outcome: Option<(bool, u128, usize)>) {
        self.micros.push(micros);
        if let Some((feasible, fee, hops)) = outcome {
            self.found += 1;
            if feasible {
                self.feasible += 1;
                self.fee_msat += fee;
                self.hops += hops;
            }
        }
    }

    fn pct(&self, p: f64) -> f64 {
        let mut v = self.micros.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    fn line(&self, name: &str, n: usize) -> String {
        let ok = self.feasible.max(1) as f64;
        format!(
            "{name:<8} p50 {:>9.1} µs  p99 {:>9.1} µs  found {:>5.1}%  feasible {:>5.1}%  avg fee {:>8.0} msat  avg hops {:.2}",
            self.pct(0.5),
            self.pct(0.99),
            100.0 * self.found as f64 / n as f64,
            100.0 * self.feasible as f64 / n as f64,
            self.fee_msat as f64 / ok,
            self.hops as f64 / ok,
        )
    }

    fn json(&self, n: usize) -> String {
        let ok = self.feasible.max(1) as f64;
        format!(
            "{{\"p50_us\":{:.1},\"p99_us\":{:.1},\"found\":{},\"feasible\":{},\"queries\":{n},\"avg_fee_msat\":{:.1},\"avg_hops\":{:.3}}}",
            self.pct(0.5),
            self.pct(0.99),
            self.found,
            self.feasible,
            self.fee_msat as f64 / ok,
            self.hops as f64 / ok
        )
    }
}

fn main() {
    let dir = std::env::var_os("TEEPAY_LN_GRAPH").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ln-graph-2020")
    });
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| {
            eprintln!(
                "cannot read {}: {e} (set TEEPAY_LN_GRAPH to the ln-graph-2020 directory)",
                dir.join(f).display()
            );
            std::process::exit(2)
        })
    };
    let topo = Topology::lightning_csv(&read("channels.csv"), &read("edges.csv")).unwrap_or_else(|e| {
        eprintln!("bad graph: {e}");
        std::process::exit(2)
    });
    let n_queries: usize =
        std::env::var("TEEPAY_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let json = std::env::var("TEEPAY_JSON").is_ok_and(|v| v == "1");
    let profile_ours = std::env::var("TEEPAY_PROFILE_OURS").is_ok_and(|v| v == "1");
    // Directed balances by (channel index, sender node) for the feasibility check.
    let balance_of = |ch: usize, from: u32| {
        let c = &topo.channels[ch];
        if from == c.a { c.balance_a } else { c.balance_b }
    };

    // Our router.
    let t0 = Instant::now();
    let mut ours = Graph::new();
    for info in topo.channel_infos(node_address) {
        ours.upsert_channel(&info).expect("valid channel");
    }
    let ours_build = t0.elapsed();

    // LDK's graph: node i's key is secret i+1; channel i is short channel id i+1.
    let secp = Secp256k1::new();
    let keys: Vec<PublicKey> = (0..topo.nodes)
        .map(|i| {
            let mut s = [0u8; 32];
            s[28..].copy_from_slice(&(i + 1).to_be_bytes());
            PublicKey::from_secret_key(&secp, &SecretKey::from_slice(&s).expect("valid key"))
        })
        .collect();
    let index_of_key: HashMap<PublicKey, u32> =
        keys.iter().enumerate().map(|(i, k)| (*k, i as u32)).collect();
    let t0 = Instant::now();
    let graph = NetworkGraph::new(BtcNetwork::Bitcoin, &Quiet);
    // LDK rejects gossip older than two weeks: stamp it now.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    for (i, c) in topo.channels.iter().enumerate() {
        let scid = i as u64 + 1;
        let (ka, kb) = (NodeId::from_pubkey(&keys[c.a as usize]), NodeId::from_pubkey(&keys[c.b as usize]));
        // LDK orders a channel's two nodes; direction bit 0 means "from node one".
        let (one, two, a_is_one) = if ka < kb { (ka, kb, true) } else { (kb, ka, false) };
        let capacity_sat = ((c.balance_a + c.balance_b) / 1000) as u64;
        graph
            .add_channel_from_partial_announcement(
                scid,
                Some(capacity_sat),
                now,
                ChannelFeatures::empty(),
                one,
                two,
            )
            .expect("channel added");
        for (from_a, balance, fee) in [(true, c.balance_a, c.fee_a), (false, c.balance_b, c.fee_b)] {
            let from_one = from_a == a_is_one;
            graph
                .update_channel_unsigned(&UnsignedChannelUpdate {
                    chain_hash: ChainHash::using_genesis_block(BtcNetwork::Bitcoin),
                    short_channel_id: scid,
                    timestamp: now as u32,
                    message_flags: 1,
                    channel_flags: if from_one { 0 } else { 1 },
                    cltv_expiry_delta: 40,
                    htlc_minimum_msat: 0,
                    htlc_maximum_msat: (balance as u64).min(capacity_sat * 1000),
                    fee_base_msat: fee.base.0 as u32,
                    fee_proportional_millionths: fee.ppm,
                    excess_data: Vec::new(),
                })
                .expect("update applied");
        }
    }
    let ldk_build = t0.elapsed();
    let scorer = ProbabilisticScorer::new(ProbabilisticScoringDecayParameters::default(), &graph, &Quiet);
    let score_params = ProbabilisticScoringFeeParameters::default();

    // Queries: random distinct endpoints, amounts log-uniform in 1,000..100,000 sat.
    let mut rng = SplitMix64::new(2020);
    let queries: Vec<Query> = (0..n_queries)
        .map(|_| {
            let src = rng.below(topo.nodes as u64) as u32;
            let mut dst = rng.below(topo.nodes as u64) as u32;
            while dst == src {
                dst = rng.below(topo.nodes as u64) as u32;
            }
            let exp = 3.0 + 2.0 * (rng.below(1_000_000) as f64 / 1_000_000.0);
            Query { src, dst, amount_msat: (10f64.powf(exp) * 1000.0) as u64 }
        })
        .collect();
    let max_fee = |amount: u64| amount / 100 + 50_000; // LDK's default fee limit, for both

    let chan_index: HashMap<teepay_types::ChannelId, usize> =
        (0..topo.channels.len()).map(|i| (channel_id(i as u32), i)).collect();
    let addr_index: HashMap<Address, u32> = (0..topo.nodes).map(|i| (node_address(i), i)).collect();

    let mut ours_tally = Tally::default();
    let mut ldk_tally = Tally::default();
    let seed = [7u8; 32];
    let progress_every = (n_queries / 10).max(1);
    for (qi, q) in queries.iter().enumerate() {
        // Ours.
        let query = RouteQuery {
            source: node_address(q.src),
            destination: node_address(q.dst),
            amount: Amount(u128::from(q.amount_msat)),
            max_fee: Amount(u128::from(max_fee(q.amount_msat))),
        };
        let t = Instant::now();
        let r = ours.find_route(&query);
        let us = t.elapsed().as_secs_f64() * 1e6;
        ours_tally.record(
            us,
            r.ok().map(|route| {
                let feasible = route
                    .hops
                    .iter()
                    .all(|h| h.amount.0 <= balance_of(chan_index[&h.channel], addr_index[&h.from]));
                (feasible, route.fee.0, route.hops.len())
            }),
        );

        // LDK (skipped with TEEPAY_PROFILE_OURS=1, to profile our router alone).
        if profile_ours {
            continue;
        }
        let params = RouteParameters {
            max_total_routing_fee_msat: Some(max_fee(q.amount_msat)),
            ..RouteParameters::from_payment_params_and_value(
                PaymentParameters::from_node_id(keys[q.dst as usize], 40)
                    .with_max_channel_saturation_power_of_half(0),
                q.amount_msat,
            )
        };
        let t = Instant::now();
        let r =
            find_route(&keys[q.src as usize], &params, &graph, None, &Quiet, &scorer, &score_params, &seed);
        let us = t.elapsed().as_secs_f64() * 1e6;
        ldk_tally.record(
            us,
            r.ok().and_then(|route| route.paths.into_iter().next()).map(|path| {
                let mut from = q.src;
                let mut feasible = true;
                for (i, hop) in path.hops.iter().enumerate() {
                    let carried: u128 = path.hops[i..].iter().map(|h| u128::from(h.fee_msat)).sum();
                    feasible &= carried <= balance_of(hop.short_channel_id as usize - 1, from);
                    from = index_of_key[&hop.pubkey];
                }
                (feasible, u128::from(path.fee_msat()), path.hops.len())
            }),
        );
        if !json && (qi + 1) % progress_every == 0 {
            eprint!("\r{} / {n_queries} queries", qi + 1);
        }
    }
    if !json {
        eprintln!();
    }
    let ratio = ldk_tally.pct(0.5) / ours_tally.pct(0.5);
    if json {
        println!(
            "{{\"graph\":{{\"nodes\":{},\"channels\":{}}},\"build_ms\":{{\"teepay\":{:.1},\"ldk\":{:.1}}},\"teepay\":{},\"ldk\":{},\"p50_ratio\":{ratio:.1}}}",
            topo.nodes,
            topo.channels.len(),
            ours_build.as_secs_f64() * 1e3,
            ldk_build.as_secs_f64() * 1e3,
            ours_tally.json(n_queries),
            ldk_tally.json(n_queries)
        );
    } else {
        println!(
            "Lightning graph 2020: {} nodes, {} channels; {n_queries} queries (1k–100k sat, log-uniform, fee limit 1% + 50 sat)",
            topo.nodes,
            topo.channels.len()
        );
        println!(
            "graph build: teepay {:.0} ms, LDK {:.0} ms",
            ours_build.as_secs_f64() * 1e3,
            ldk_build.as_secs_f64() * 1e3
        );
        println!("{}", ours_tally.line("teepay", n_queries));
        println!("{}", ldk_tally.line("LDK", n_queries));
        println!("p50 ratio (LDK / teepay): {ratio:.1}x");
    }
}
