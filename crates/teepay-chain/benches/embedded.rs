//! Embedded-chain throughput: signed raw transactions through signature recovery, validation,
//! execution and receipts/logs bookkeeping. Transactions are signed in the (untimed) setup.
//!
//! `cargo bench -p teepay-chain --bench embedded` — criterion reports elements/s = tx/s.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use teepay_chain::contract::{self, send_from_key};
use teepay_chain::dev::dev_key;
use teepay_chain::embedded::BASE_FEE;
use teepay_chain::{Chain, EmbeddedChain};
use teepay_types::{
    Address, Amount, ChainId, ChannelId, Eip1559Tx, GasParams, Report, SigningKey, deposit_call,
};

const CHAIN: ChainId = ChainId(31337);
const TXS: usize = 1000;

fn signed(key: &SigningKey, nonce: u64, to: Address, value: u128, input: Vec<u8>, gas_limit: u64) -> Vec<u8> {
    Eip1559Tx {
        chain: CHAIN,
        gas: GasParams {
            nonce,
            gas_limit,
            max_fee_per_gas: 2 * u128::from(BASE_FEE),
            max_priority_fee_per_gas: 1,
        },
        to: Some(to),
        value: Amount(value),
        input,
    }
    .sign(key)
    .raw
}

fn transfers() -> (EmbeddedChain, Vec<Vec<u8>>) {
    let key = dev_key(0);
    let txs = (0..TXS as u64).map(|n| signed(&key, n, Address([0x77; 20]), 1, Vec::new(), 21_000)).collect();
    (EmbeddedChain::new(CHAIN), txs)
}

/// A deployed contract, one open channel, and `TXS` signed `deposit` calls into it.
fn deposits(rt: &tokio::runtime::Runtime) -> (EmbeddedChain, Vec<Vec<u8>>) {
    let chain = EmbeddedChain::new(CHAIN);
    let authority = SigningKey::from_entropy([1; 32]).unwrap();
    let (a, b) = (dev_key(1), dev_key(2));
    let measurement = [5; 32];
    let channel = rt.block_on(async {
        let d = contract::deploy(&chain, &dev_key(0), authority.address(), &[measurement]).await.unwrap();
        for k in [&a, &b] {
            let q = Report::of(k, measurement, CHAIN).attest(&authority);
            let call = teepay_types::register_enclave_call(&q);
            send_from_key(&chain, &dev_key(0), Some(d.address), Amount(0), call).await.unwrap();
        }
        let open = teepay_types::open_channel_call(b.address(), Address::default(), Amount(1000));
        let r = send_from_key(&chain, &a, Some(d.address), Amount(1000), open).await.unwrap();
        (d.address, contract::opened_channel(&r).expect("ChannelOpened event"))
    });
    let (to, id): (Address, ChannelId) = channel;
    let nonce = rt.block_on(chain.nonce(a.address())).unwrap();
    let txs =
        (0..TXS as u64).map(|n| signed(&a, nonce + n, to, 1, deposit_call(id, Amount(1)), 60_000)).collect();
    (chain, txs)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut g = c.benchmark_group("embedded_chain");
    g.throughput(Throughput::Elements(TXS as u64)).sample_size(10);
    g.bench_function("transfer/block_per_tx", |bench| {
        bench.iter_batched(
            transfers,
            |(chain, txs)| {
                for tx in &txs {
                    rt.block_on(chain.send_raw_transaction(tx)).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    // The floor under every submission: decoding plus libsecp256k1 sender recovery.
    g.bench_function("transfer/decode_and_recover_only", |bench| {
        use alloy::eips::Decodable2718;
        bench.iter_batched(
            transfers,
            |(_, txs)| {
                for tx in &txs {
                    let e = alloy::consensus::TxEnvelope::decode_2718(&mut tx.as_slice()).unwrap();
                    let sig = teepay_types::Signature(e.signature().as_bytes());
                    teepay_types::recover_signer(&e.signature_hash().0, &sig).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("transfer/block_of_1000", |bench| {
        bench.iter_batched(
            transfers,
            |(chain, txs)| {
                let refs: Vec<&[u8]> = txs.iter().map(Vec::as_slice).collect();
                assert!(chain.submit_batch(&refs).iter().all(Result::is_ok));
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("contract_deposit/block_per_tx", |bench| {
        bench.iter_batched(
            || deposits(&rt),
            |(chain, txs)| {
                for tx in &txs {
                    rt.block_on(chain.send_raw_transaction(tx)).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    // ~34k gas each: 500 deposits fill 17M of the 30M block gas limit.
    g.bench_function("contract_deposit/blocks_of_500", |bench| {
        bench.iter_batched(
            || deposits(&rt),
            |(chain, txs)| {
                for block in txs.chunks(500) {
                    let refs: Vec<&[u8]> = block.iter().map(Vec::as_slice).collect();
                    assert!(chain.submit_batch(&refs).iter().all(Result::is_ok));
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
