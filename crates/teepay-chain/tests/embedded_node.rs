//! The embedded chain behaves like a real node towards submitters: it checks signature,
//! chain id, nonce, fee and balance before mining, accepts legacy and EIP-1559 transactions,
//! batches, and survives a restart (including a torn journal tail).

use alloy::consensus::{SignableTransaction, TxLegacy};
use alloy::eips::Encodable2718;
use alloy_primitives::{Address as EvmAddress, Signature as EvmSignature, TxKind, U256};
use teepay_chain::dev::{DEV_ACCOUNT_BALANCE, dev_key};
use teepay_chain::embedded::BASE_FEE;
use teepay_chain::{Chain, ChainError, EmbeddedChain};
use teepay_types::{Address, Amount, ChainId, Eip1559Tx, GasParams, SigningKey};

const CHAIN: ChainId = ChainId(4242);

fn transfer(key: &SigningKey, nonce: u64, to: Address, value: u128) -> Vec<u8> {
    Eip1559Tx {
        chain: CHAIN,
        gas: GasParams {
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 2 * u128::from(BASE_FEE),
            max_priority_fee_per_gas: 1,
        },
        to: Some(to),
        value: Amount(value),
        input: Vec::new(),
    }
    .sign(key)
    .raw
}

fn legacy(key: &SigningKey, nonce: u64, chain_id: Option<u64>, to: Address, value: u128) -> Vec<u8> {
    let tx = TxLegacy {
        chain_id,
        nonce,
        gas_price: u128::from(BASE_FEE),
        gas_limit: 21_000,
        to: TxKind::Call(EvmAddress::from(to.0)),
        value: U256::from(value),
        input: Default::default(),
    };
    let sig = key.sign_digest(&tx.signature_hash().0).0;
    let sig = EvmSignature::from_bytes_and_parity(&sig[..64], sig[64] == 28);
    tx.into_signed(sig).encoded_2718()
}

fn rejected(r: Result<[u8; 32], ChainError>) -> String {
    match r {
        Err(ChainError::Rejected(why)) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn validates_like_a_node() {
    let chain = EmbeddedChain::new(CHAIN);
    let key = dev_key(0);
    let to = Address([0x42; 20]);
    let start_block = chain.block_number().await.unwrap();

    // Legacy (EIP-155 and pre-155) and EIP-1559 all mine.
    let h1 = chain.send_raw_transaction(&legacy(&key, 0, Some(CHAIN.0), to, 5)).await.unwrap();
    let h2 = chain.send_raw_transaction(&legacy(&key, 1, None, to, 6)).await.unwrap();
    let h3 = chain.send_raw_transaction(&transfer(&key, 2, to, 7)).await.unwrap();
    for h in [h1, h2, h3] {
        let r = chain.receipt(h).await.unwrap().expect("mined");
        assert!(r.success);
        assert_eq!(r.from, key.address());
    }
    assert_eq!(chain.balance(to).await.unwrap(), Amount(18));
    assert_eq!(chain.nonce(key.address()).await.unwrap(), 3);
    assert_eq!(chain.block_number().await.unwrap(), start_block + 3, "one block per submission");

    let height = chain.block_number().await.unwrap();
    let why = rejected(chain.send_raw_transaction(&transfer(&key, 2, to, 1)).await);
    assert!(why.contains("nonce"), "{why}");
    let why = rejected(chain.send_raw_transaction(&transfer(&key, 9, to, 1)).await);
    assert!(why.contains("nonce"), "{why}");
    let why = rejected(chain.send_raw_transaction(&legacy(&key, 3, Some(CHAIN.0 + 1), to, 1)).await);
    assert!(why.to_lowercase().contains("chain"), "{why}");
    let pauper = SigningKey::from_entropy([9; 32]).unwrap();
    let why = rejected(chain.send_raw_transaction(&transfer(&pauper, 0, to, 1)).await);
    assert!(why.to_lowercase().contains("fund") || why.contains("balance"), "{why}");
    let cheap = Eip1559Tx {
        chain: CHAIN,
        gas: GasParams { nonce: 3, gas_limit: 21_000, max_fee_per_gas: 1, max_priority_fee_per_gas: 1 },
        to: Some(to),
        value: Amount(1),
        input: Vec::new(),
    }
    .sign(&key);
    let why = rejected(chain.send_raw_transaction(&cheap.raw).await);
    assert!(why.to_lowercase().contains("basefee") || why.to_lowercase().contains("base fee"), "{why}");
    let mut tampered = transfer(&key, 3, to, 1);
    let last = tampered.len() - 1;
    tampered[last] ^= 1; // flips a bit of s: recovers some other account, or nothing
    let r = chain.send_raw_transaction(&tampered).await;
    assert!(r.is_err(), "a tampered signature never spends the dev account's funds: {r:?}");
    rejected(chain.send_raw_transaction(&[0x02, 0xc0]).await);
    rejected(chain.send_raw_transaction(&[]).await);
    assert_eq!(chain.block_number().await.unwrap(), height, "nothing refused was mined");
    assert_eq!(chain.nonce(key.address()).await.unwrap(), 3);
    assert_eq!(chain.balance(to).await.unwrap(), Amount(18));

    // A batch is one block; invalid members are left out and reported.
    let batch = [transfer(&key, 3, to, 1), transfer(&key, 3, to, 1), transfer(&key, 4, to, 1)];
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    let results = chain.submit_batch(&refs);
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok(), "{results:?}");
    assert_eq!(chain.block_number().await.unwrap(), height + 1);
    assert_eq!(chain.latest_block().txs.len(), 2);

    let spent = DEV_ACCOUNT_BALANCE - chain.balance(key.address()).await.unwrap().0;
    let mut fees = 0;
    for h in [h1, h2, h3] {
        fees += chain.receipt(h).await.unwrap().unwrap().fee().0;
    }
    for h in results.iter().flatten() {
        fees += chain.receipt(*h).await.unwrap().unwrap().fee().0;
    }
    assert_eq!(spent, 20 + fees, "the sender paid the values and the fees, nothing else");
}

#[tokio::test]
async fn journal_survives_restart_and_torn_tail() {
    let dir = std::env::temp_dir().join(format!("teepay-chain-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chain.journal");
    let _ = std::fs::remove_file(&path);
    let key = dev_key(1);
    let to = Address([0x43; 20]);
    let (head, hash) = {
        let chain = EmbeddedChain::open(&path, CHAIN).unwrap();
        for n in 0..5 {
            chain.send_raw_transaction(&transfer(&key, n, to, 100 + u128::from(n))).await.unwrap();
        }
        (chain.latest_block(), chain.latest_block().txs[0])
    };
    // A crash mid-append leaves a partial record: reopening drops it and keeps the rest.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    }
    let chain = EmbeddedChain::open(&path, CHAIN).unwrap();
    assert_eq!(chain.latest_block(), head, "same blocks, hashes and timestamps after replay");
    assert_eq!(chain.block_hash(head.number).await.unwrap(), Some(head.hash));
    assert_eq!(chain.block_hash(head.number + 1).await.unwrap(), None);
    assert_eq!(chain.balance(to).await.unwrap(), Amount(510));
    assert_eq!(chain.nonce(key.address()).await.unwrap(), 5);
    assert!(chain.receipt(hash).await.unwrap().is_some());
    chain.send_raw_transaction(&transfer(&key, 5, to, 1)).await.expect("appends after the cut tail");
    drop(chain);
    let chain = EmbeddedChain::open(&path, CHAIN).unwrap();
    assert_eq!(chain.balance(to).await.unwrap(), Amount(511));
    assert!(matches!(EmbeddedChain::open(&path, ChainId(1)), Err(ChainError::Storage(_))), "wrong chain id");
    std::fs::write(dir.join("garbage"), b"not a journal").unwrap();
    assert!(matches!(EmbeddedChain::open(&dir.join("garbage"), CHAIN), Err(ChainError::Storage(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}
