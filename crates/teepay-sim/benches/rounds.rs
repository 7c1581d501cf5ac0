//! Criterion benchmarks of the enclave hot paths: one node enclave processing a three-hop
//! payment's rounds (PREPARE, COMMIT, CONFIRM) for B instances in batches of B items, and
//! the hub enclave driving the same B instances (create, verify every node's batch ack,
//! sign one batch per node per round). B = 1 is the unbatched case.
//!
//! Setup runs the protocol once and captures every batch and ack; the hub enclave is
//! deterministic, so each measured iteration replays them against a fresh clone.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use teepay_coordinator::Coordinator;
use teepay_enclave::{FeePolicy, NodeEnclave, Request, Response};
use teepay_sim::World;
use teepay_sim::scenarios::CHAIN_1;
use teepay_types::{Amount, InstanceKind, Leg, SignedHubBatch, SignedNodeAck, SignedOrder, SimPlatform};

struct Captured {
    world: World,
    legs: Vec<Leg>,
    orders: Vec<SignedOrder>,
    /// Per round: the hub's batches and the nodes' acks.
    rounds: Vec<(Vec<SignedHubBatch>, Vec<SignedNodeAck>)>,
}

fn capture(instances: usize) -> Captured {
    let mut w = World::new(9);
    let nodes = ["payer", "hop1", "hop2", "payee"].map(|n| w.add_node(n));
    let fee = FeePolicy { base: Amount(1), ppm: 100 };
    let big = 1_000_000_000_000_000_000u128;
    w.open_channel(CHAIN_1, nodes[0], nodes[1], big, big, FeePolicy::default(), fee);
    w.open_channel(CHAIN_1, nodes[1], nodes[2], big, big, fee, fee);
    w.open_channel(CHAIN_1, nodes[2], nodes[3], big, big, fee, FeePolicy::default());
    let leg = w.route(CHAIN_1, &nodes, 1_000_000).expect("route");
    let mut orders = Vec::new();
    for _ in 0..instances {
        let req = Request::CreatePayment {
            chain: CHAIN_1,
            asset: teepay_types::Asset::Native,
            payee: w.address(nodes[3]),
            amount: Amount(1_000_000),
            max_fee: Amount(1_000),
            expires_at: u64::MAX,
        };
        let Response::Order(o) = w.node_request(nodes[0], req) else { unreachable!() };
        orders.push(o);
    }
    let legs = vec![leg; instances];
    let mut hub = w.hub.coordinator.clone();
    let mut enclaves: Vec<NodeEnclave<SimPlatform>> = w.nodes.iter().map(|n| n.enclave.clone()).collect();
    for (leg, order) in legs.iter().zip(&orders) {
        hub.create_instance(0, InstanceKind::MultiHop, vec![leg.clone()], vec![order.clone()])
            .expect("valid");
    }
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let batches = hub.flush().batches;
        let mut acks = Vec::new();
        for batch in &batches {
            let n = w.node_index(batch.batch.node).expect("node");
            let out = enclaves[n].handle(0, Request::HubBatch(batch.clone())).expect("authentic");
            let Response::Batch(r) = out.response else { unreachable!() };
            assert!(r.results.iter().all(Result::is_ok), "every item accepted");
            acks.push(r.ack.expect("ack"));
        }
        for ack in &acks {
            hub.on_ack(0, ack).expect("valid ack");
        }
        rounds.push((batches, acks));
    }
    Captured { world: w, legs, orders, rounds }
}

fn node_rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("node_enclave_3hop_rounds");
    group.sample_size(10);
    for size in [1usize, 64, 1024] {
        let cap = capture(size);
        for (role, index) in [("payer", 0usize), ("intermediary", 1)] {
            let address = cap.world.address(index);
            let mine: Vec<SignedHubBatch> = cap
                .rounds
                .iter()
                .flat_map(|(b, _)| b.iter().filter(|b| b.batch.node == address).cloned())
                .collect();
            group.throughput(Throughput::Elements(size as u64));
            group.bench_function(format!("{role}/batch_{size}"), |b| {
                b.iter_batched(
                    || cap.world.nodes[index].enclave.clone(),
                    |mut enclave| {
                        for batch in &mine {
                            let out = enclave.handle(0, Request::HubBatch(batch.clone())).expect("authentic");
                            std::hint::black_box(out);
                        }
                    },
                    BatchSize::LargeInput,
                );
            });
        }
    }
    group.finish();
}

fn hub_rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_enclave_3hop_rounds");
    group.sample_size(10);
    for size in [1usize, 64, 1024] {
        let cap = capture(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("batch_{size}"), |b| {
            b.iter_batched(
                || cap.world.hub.coordinator.clone(),
                |mut hub: Coordinator<SimPlatform>| {
                    for (leg, order) in cap.legs.iter().zip(&cap.orders) {
                        hub.create_instance(
                            0,
                            InstanceKind::MultiHop,
                            vec![leg.clone()],
                            vec![order.clone()],
                        )
                        .expect("valid");
                    }
                    for (_, acks) in &cap.rounds {
                        std::hint::black_box(hub.flush());
                        for ack in acks {
                            hub.on_ack(0, ack).expect("valid ack");
                        }
                    }
                    std::hint::black_box(hub.flush());
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, node_rounds, hub_rounds);
criterion_main!(benches);
