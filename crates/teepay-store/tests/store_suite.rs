//! One channel-DB suite, run on SQLite (a temporary file) and on PostgreSQL (the server at
//! `TEEPAY_PG_URL`, or a throwaway one started with `scripts/postgres`).

use alloy_primitives::{Address as EvmAddress, B256, U256};
use alloy_sol_types::SolEvent;
use std::process::Command;
use teepay_chain::{LogEntry, PaymentChannels as PC};
use teepay_store::{Backend, ChannelStatus, InstanceRow, InstanceStatus, Store, StoreError};
use teepay_types::{Address, Amount, ChainId, ChannelId, FeePolicy, InstanceId};

const CHAIN: ChainId = ChainId(31337);
const CONTRACT: Address = Address([0xcc; 20]);
const A: Address = Address([0xa1; 20]);
const B: Address = Address([0xb2; 20]);
const CH: ChannelId = ChannelId([0x11; 32]);
const X: InstanceId = InstanceId([0x22; 32]);

fn log<E: SolEvent>(event: E, block: u64, index: u64) -> LogEntry {
    let data = event.encode_log_data();
    LogEntry {
        address: CONTRACT,
        topics: data.topics().iter().map(|t| t.0).collect(),
        data: data.data.to_vec(),
        block_number: block,
        tx_hash: [block as u8; 32],
        log_index: index,
    }
}

fn evm(a: Address) -> EvmAddress {
    EvmAddress::from(a.0)
}

fn registered(who: Address, block: u64, index: u64) -> LogEntry {
    log(PC::EnclaveRegistered { enclave: evm(who), measurement: B256::from([7; 32]) }, block, index)
}

async fn suite(url: &str, backend: Backend) {
    let store = Store::connect(url).await.expect("connect + migrate");
    assert_eq!(store.backend(), backend);
    drop(Store::connect(url).await.expect("migrations are idempotent"));

    // Cursor: created once, bound to one contract.
    let cursor = store.init_cursor(CHAIN, CONTRACT, 1).await.unwrap();
    assert_eq!(cursor.next_block, 1);
    assert!(matches!(
        store.init_cursor(CHAIN, Address([1; 20]), 1).await,
        Err(StoreError::ContractMismatch { .. })
    ));

    // Blocks 1-3: registrations, open, funding from B.
    let logs = vec![
        registered(A, 1, 0),
        registered(B, 1, 1),
        log(
            PC::ChannelOpened {
                channelId: B256::from(CH.0),
                a: evm(A),
                b: evm(B),
                deposit: U256::from(100),
                nonce: 0,
                token: evm(Address::default()),
            },
            2,
            0,
        ),
        log(
            PC::ChannelFunded {
                channelId: B256::from(CH.0),
                party: evm(B),
                amount: U256::from(50),
                depositA: U256::from(100),
                depositB: U256::from(50),
            },
            3,
            0,
        ),
    ];
    assert_eq!(store.apply_logs(CHAIN, &logs, 4, (3, [3; 32])).await.unwrap(), 4);
    assert_eq!(
        store.apply_logs(CHAIN, &logs, 4, (3, [3; 32])).await.unwrap(),
        0,
        "a re-synced range changes nothing"
    );
    assert_eq!(store.cursor(CHAIN).await.unwrap().unwrap().next_block, 4);
    assert_eq!(store.synced_hash(CHAIN, 3).await.unwrap(), Some([3; 32]));
    assert_eq!(store.enclaves(CHAIN).await.unwrap().len(), 2);
    let ch = store.channel(CHAIN, CH).await.unwrap().expect("channel synced");
    assert_eq!((ch.a, ch.b, ch.status), (A, B, ChannelStatus::Open));
    assert_eq!(
        (ch.deposit_a, ch.deposit_b, ch.balance_a, ch.balance_b),
        (Amount(100), Amount(50), Amount(100), Amount(50))
    );

    // Off-chain state from the hub: balances must add up, fees only for parties.
    store.set_balances(CHAIN, CH, Amount(90), Amount(60)).await.unwrap();
    assert!(matches!(
        store.set_balances(CHAIN, CH, Amount(90), Amount(61)).await,
        Err(StoreError::BadBalances(..))
    ));
    assert!(matches!(
        store.set_balances(CHAIN, ChannelId([9; 32]), Amount(1), Amount(1)).await,
        Err(StoreError::UnknownChannel(_))
    ));
    let fee = FeePolicy { base: Amount(3), ppm: 250 };
    store.set_fee(CHAIN, CH, B, fee).await.unwrap();
    assert!(matches!(store.set_fee(CHAIN, CH, Address([5; 20]), fee).await, Err(StoreError::NotAParty(..))));
    let ch = store.channel(CHAIN, CH).await.unwrap().unwrap();
    assert_eq!(
        (ch.balance_a, ch.balance_b, ch.fee_b, ch.fee_a),
        (Amount(90), Amount(60), fee, FeePolicy::default())
    );

    // Block 5: an eject fixes an instance's outcome and settles the channel.
    let close = vec![
        log(
            PC::InstanceResolved { instanceId: B256::from(X.0), applied: true, channelId: B256::from(CH.0) },
            5,
            0,
        ),
        log(
            PC::ChannelClosed {
                channelId: B256::from(CH.0),
                version: 9,
                payoutA: U256::from(80),
                payoutB: U256::from(70),
                ejected: true,
            },
            5,
            1,
        ),
    ];
    assert_eq!(store.apply_logs(CHAIN, &close, 6, (5, [5; 32])).await.unwrap(), 2);
    let ch = store.channel(CHAIN, CH).await.unwrap().unwrap();
    assert_eq!(
        (ch.status, ch.closed_block, ch.payouts),
        (ChannelStatus::Closed, Some(5), Some((Amount(80), Amount(70))))
    );
    assert_eq!(store.instance_outcome(CHAIN, X).await.unwrap(), Some(true));

    // A reorganization drops block 5: the channel is open again with the hub's balances.
    store.rollback(CHAIN, 5).await.unwrap();
    let ch = store.channel(CHAIN, CH).await.unwrap().unwrap();
    assert_eq!(
        (ch.status, ch.balance_a, ch.balance_b, ch.fee_b),
        (ChannelStatus::Open, Amount(90), Amount(60), fee)
    );
    assert_eq!(store.instance_outcome(CHAIN, X).await.unwrap(), None);
    assert_eq!(store.cursor(CHAIN).await.unwrap().unwrap().next_block, 5);
    assert_eq!(store.synced_hash(CHAIN, 5).await.unwrap(), None);
    // Deeper: the funding goes too, and balances restart from the remaining deposit.
    store.rollback(CHAIN, 3).await.unwrap();
    let ch = store.channel(CHAIN, CH).await.unwrap().unwrap();
    assert_eq!((ch.deposit_b, ch.balance_a, ch.balance_b), (Amount(0), Amount(100), Amount(0)));
    store.rollback(CHAIN, 2).await.unwrap();
    assert_eq!(store.channel(CHAIN, CH).await.unwrap(), None);
    assert_eq!(store.channels(Some(CHAIN)).await.unwrap().len(), 0);
    assert_eq!(store.enclaves(CHAIN).await.unwrap().len(), 2, "block 1 stays");

    // Instances: status with outcome or reason; the first ending sticks.
    let row = InstanceRow {
        id: X,
        kind: "multi_hop".into(),
        spec: vec![1, 2, 3],
        status: InstanceStatus::InFlight,
        created_at: 1_000,
        updated_at: 1_000,
        outcome: None,
        failure_reason: None,
    };
    assert!(store.insert_instance(&row).await.unwrap(), "new");
    assert!(!store.insert_instance(&row).await.unwrap(), "a second insert is a no-op");
    assert_eq!(store.instances_with_status(InstanceStatus::InFlight).await.unwrap(), vec![row.clone()]);
    assert!(
        store
            .finish_instance(X, InstanceStatus::Refunded, None, Some("node stopped answering"), 2_000)
            .await
            .unwrap()
    );
    assert!(
        !store.finish_instance(X, InstanceStatus::Succeeded, Some("applied"), None, 3_000).await.unwrap()
    );
    let got = store.instance(X).await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.failure_reason.as_deref(), got.updated_at),
        (InstanceStatus::Refunded, Some("node stopped answering"), 2_000)
    );
    assert_eq!(store.instance(InstanceId([0; 32])).await.unwrap(), None);
    store.close().await;

    // Everything survives a reconnect.
    let again = Store::connect(url).await.unwrap();
    assert_eq!(again.instance(X).await.unwrap().unwrap().status, InstanceStatus::Refunded);
    assert_eq!(again.cursor(CHAIN).await.unwrap().unwrap().next_block, 2);
    again.close().await;
}

#[tokio::test]
async fn suite_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("teepay-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.db");
    let _ = std::fs::remove_file(&path);
    suite(&format!("sqlite://{}", path.display()), Backend::Sqlite).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A PostgreSQL server started for this test (stopped on drop, also on panic).
struct Postgres {
    dir: std::path::PathBuf,
    script: std::path::PathBuf,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("stop").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn postgres() -> (Option<Postgres>, String) {
    if let Ok(url) = std::env::var("TEEPAY_PG_URL") {
        return (None, url);
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let dir = std::env::temp_dir().join(format!("teepay-pg-{}", std::process::id()));
    let out = Command::new(&script).arg("start").arg(&dir).output().expect("run scripts/postgres");
    let guard = Postgres { dir, script };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let url =
        stdout.lines().find_map(|l| l.strip_prefix("Listening on ")).map(str::to_string).unwrap_or_else(
            || {
                panic!(
                    "could not start PostgreSQL (set TEEPAY_PG_URL to use a running one): {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            },
        );
    (Some(guard), url)
}

#[tokio::test]
async fn suite_on_postgres() {
    let (_guard, url) = postgres();
    // Each run gets its own database so reruns against one server start clean.
    let db = format!("teepay_test_{}", std::process::id());
    let base = url.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    create_database(&url, &db).await;
    suite(&format!("{base}/{db}"), Backend::Postgres).await;
}

async fn create_database(url: &str, name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let _ =
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut conn).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn rejects_unknown_urls() {
    assert!(matches!(Store::connect("mysql://x").await, Err(StoreError::Url(_))));
    assert!(matches!(Store::connect("hub.db").await, Err(StoreError::Url(_))));
}
