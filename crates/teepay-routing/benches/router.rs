//! Router hot paths: `find_route` on scale-free graphs of 1k and 10k nodes and on the real
//! Lightning graph (when `../shared/data/ln-graph-2020` or `TEEPAY_LN_GRAPH` is there), and
//! the reserve/release pair the hub runs for every payment.
//!
//! `cargo bench -p teepay-routing --bench router`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::PathBuf;
use teepay_routing::topology::{SplitMix64, Topology, node_address};
use teepay_routing::{Graph, RouteQuery};
use teepay_types::{Amount, FeePolicy};

fn graph_of(topo: &Topology) -> Graph {
    let mut g = Graph::new();
    for info in topo.channel_infos(node_address) {
        g.upsert_channel(&info).expect("valid channel");
    }
    g
}

fn queries(nodes: u32, amount: u128, n: usize) -> Vec<RouteQuery> {
    let mut rng = SplitMix64::new(99);
    (0..n)
        .map(|_| {
            let s = rng.below(u64::from(nodes)) as u32;
            let d = (s + 1 + rng.below(u64::from(nodes) - 1) as u32) % nodes;
            RouteQuery {
                source: node_address(s),
                destination: node_address(d),
                amount: Amount(amount),
                max_fee: Amount(amount / 100 + 50_000),
            }
        })
        .collect()
}

fn bench_find_route(c: &mut Criterion, name: &str, g: &Graph, qs: &[RouteQuery]) {
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % qs.len();
            black_box(g.find_route(&qs[i]).ok())
        })
    });
}

fn router(c: &mut Criterion) {
    let fee = FeePolicy { base: Amount(1_000), ppm: 100 };
    for nodes in [1_000u32, 10_000] {
        let topo = Topology::scale_free(nodes, 2, 10_000_000_000, fee, 1);
        let g = graph_of(&topo);
        bench_find_route(c, &format!("find_route/scale-free-{nodes}"), &g, &queries(nodes, 1_000_000, 256));
    }

    let dir = std::env::var_os("TEEPAY_LN_GRAPH").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ln-graph-2020")
    });
    match (std::fs::read_to_string(dir.join("channels.csv")), std::fs::read_to_string(dir.join("edges.csv")))
    {
        (Ok(ch), Ok(ed)) => {
            let topo = Topology::lightning_csv(&ch, &ed).expect("valid graph");
            let g = graph_of(&topo);
            bench_find_route(c, "find_route/ln-2020", &g, &queries(topo.nodes, 10_000_000, 256));
        }
        _ => eprintln!("skipping find_route/ln-2020: no graph at {}", dir.display()),
    }

    let topo = Topology::scale_free(1_000, 2, 10_000_000_000, fee, 1);
    let mut g = graph_of(&topo);
    let route = g.find_route(&queries(1_000, 1_000, 1)[0]).expect("route");
    c.bench_function("reserve+release/route", |b| {
        b.iter(|| {
            for h in &route.hops {
                g.reserve(h.channel, h.from, h.amount).expect("capacity");
            }
            for h in &route.hops {
                g.release(h.channel, h.from, h.amount, false).expect("reserved");
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = router
}
criterion_main!(benches);
