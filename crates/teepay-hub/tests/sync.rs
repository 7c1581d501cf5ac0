//! Contract sync against real chains: the embedded chain (confirmation depth, restart from the
//! cursor, the network map rebuilt from the DB) and anvil (a real reorganization made with
//! `evm_snapshot` / `evm_revert`, rolled back and re-synced).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use teepay_chain::contract::{Deployment, deploy, opened_channel, send_from_key};
use teepay_chain::dev::dev_key;
use teepay_chain::{Chain, EmbeddedChain, RpcChain};
use teepay_hub::sync::{SyncConfig, sync_once, sync_to_head};
use teepay_store::{ChannelStatus, Store};
use teepay_types::{
    Amount, ChainId, ChannelId, Report, SigningKey, deposit_call, open_channel_call, register_enclave_call,
};

const MEASUREMENT: [u8; 32] = [0x5a; 32];

struct Setup {
    d: Deployment,
    a: SigningKey,
    b: SigningKey,
    channel: ChannelId,
}

/// Deploys, registers two parties and opens a channel A→B with 1,000 wei.
async fn setup<C: Chain>(chain: &C, seed: u8) -> Setup {
    let authority = SigningKey::from_entropy([0xa1; 32]).unwrap();
    let d = deploy(chain, &dev_key(0), authority.address(), &[MEASUREMENT]).await.unwrap();
    let (a, b) =
        (SigningKey::from_entropy([seed; 32]).unwrap(), SigningKey::from_entropy([seed + 1; 32]).unwrap());
    for k in [&a, &b] {
        send_from_key(chain, &dev_key(1), Some(k.address()), Amount(10u128.pow(17)), Vec::new())
            .await
            .unwrap();
        let q = Report::of(k, MEASUREMENT, chain.chain_id().await.unwrap()).attest(&authority);
        send_from_key(chain, &dev_key(2), Some(d.address), Amount(0), register_enclave_call(&q))
            .await
            .unwrap();
    }
    let r = send_from_key(
        chain,
        &a,
        Some(d.address),
        Amount(1000),
        open_channel_call(b.address(), teepay_types::Address::default(), Amount(1000)),
    )
    .await
    .unwrap();
    let channel = opened_channel(&r).expect("ChannelOpened event");
    Setup { d, a, b, channel }
}

fn temp_db(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("teepay-sync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("hub.db").display());
    (dir, url)
}

#[tokio::test]
async fn follows_the_embedded_chain_with_confirmations_and_resumes() {
    let chain = EmbeddedChain::new(ChainId(31337));
    let s = setup(&chain, 10).await;
    let (dir, url) = temp_db("embedded");
    let store = Store::connect(&url).await.unwrap();
    let cfg = SyncConfig {
        confirmations: 2,
        max_range: 3,
        ..SyncConfig::new(ChainId(31337), s.d.address, s.d.block)
    };

    let r = sync_to_head(&chain, &store, &cfg).await.unwrap();
    assert_eq!(r.next_block + cfg.confirmations, r.head + 1, "caught up to the confirmed head");
    // The open is in the head block: not yet confirmed.
    assert_eq!(store.channel(ChainId(31337), s.channel).await.unwrap(), None);
    for _ in 0..2 {
        send_from_key(&chain, &dev_key(3), Some(dev_key(4).address()), Amount(1), Vec::new()).await.unwrap();
    }
    sync_to_head(&chain, &store, &cfg).await.unwrap();
    let ch = store.channel(ChainId(31337), s.channel).await.unwrap().expect("confirmed now");
    assert_eq!(
        (ch.a, ch.b, ch.deposit_a, ch.status),
        (s.a.address(), s.b.address(), Amount(1000), ChannelStatus::Open)
    );
    assert_eq!(store.enclaves(ChainId(31337)).await.unwrap().len(), 2);

    // B funds; after a restart (new process, same DB file) sync resumes from the cursor.
    send_from_key(&chain, &s.b, Some(s.d.address), Amount(400), deposit_call(s.channel, Amount(400)))
        .await
        .unwrap();
    for _ in 0..2 {
        send_from_key(&chain, &dev_key(3), Some(dev_key(4).address()), Amount(1), Vec::new()).await.unwrap();
    }
    store.close().await;
    let store = Store::connect(&url).await.unwrap();
    let before = store.cursor(ChainId(31337)).await.unwrap().unwrap().next_block;
    let r = sync_to_head(&chain, &store, &cfg).await.unwrap();
    assert!(r.next_block > before);
    assert_eq!(r.events, 1, "only the new funding event, nothing applied twice");
    let ch = store.channel(ChainId(31337), s.channel).await.unwrap().unwrap();
    assert_eq!((ch.deposit_a, ch.deposit_b, ch.balance_b), (Amount(1000), Amount(400), Amount(400)));

    let net = teepay_hub::load_network(&store).await.unwrap();
    let g = net.graph(ChainId(31337), teepay_types::Asset::Native).unwrap();
    assert_eq!(g.available(s.channel, s.b.address()).unwrap(), Amount(400), "the map comes from the DB");

    // Misconfiguration is refused with a clear error.
    let wrong = SyncConfig { chain: ChainId(5), ..cfg };
    assert!(matches!(
        sync_once(&chain, &store, &wrong).await,
        Err(teepay_hub::sync::SyncError::WrongChain { .. })
    ));
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Minimal JSON-RPC over HTTP/1.1 for anvil's test methods (the `Chain` trait rightly has
/// no snapshot/revert).
fn rpc(url: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut stream = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let json = response.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    v["result"].clone()
}

struct Anvil(Child);

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn anvil() -> (Option<Anvil>, String) {
    if let Ok(url) = std::env::var("TEEPAY_ANVIL_URL") {
        return (None, url);
    }
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        bin.exists(),
        "anvil is not installed: run `npm ci` in the repository root, or set TEEPAY_ANVIL_URL"
    );
    let mut child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", "0", "--chain-id", "31337"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .find_map(|l| l.ok()?.strip_prefix("Listening on ").map(|a| format!("http://{a}")))
        .unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    (Some(Anvil(child)), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_back_a_reorganization_on_anvil() {
    let (_guard, url) = anvil();
    let chain = RpcChain::connect(&url).unwrap();
    let s = setup(&chain, 30).await;
    let chain_id = chain.chain_id().await.unwrap();
    let (dir, db) = temp_db("anvil");
    let store = Store::connect(&db).await.unwrap();
    // Depth 0: apply the head at once, so the reorg below reaches the DB and must be undone.
    let cfg = SyncConfig { confirmations: 0, ..SyncConfig::new(chain_id, s.d.address, s.d.block) };
    sync_to_head(&chain, &store, &cfg).await.unwrap();

    let snapshot = rpc(&url, "evm_snapshot", serde_json::json!([]));
    send_from_key(&chain, &s.b, Some(s.d.address), Amount(300), deposit_call(s.channel, Amount(300)))
        .await
        .unwrap();
    sync_to_head(&chain, &store, &cfg).await.unwrap();
    assert_eq!(store.channel(chain_id, s.channel).await.unwrap().unwrap().deposit_b, Amount(300));

    // The funding block is replaced by a different history: a larger funding by B, one block later.
    assert_eq!(rpc(&url, "evm_revert", serde_json::json!([snapshot])), serde_json::json!(true));
    send_from_key(&chain, &dev_key(3), Some(dev_key(4).address()), Amount(1), Vec::new()).await.unwrap();
    send_from_key(&chain, &s.b, Some(s.d.address), Amount(700), deposit_call(s.channel, Amount(700)))
        .await
        .unwrap();
    let r = sync_to_head(&chain, &store, &cfg).await.unwrap();
    assert!(r.rolled_back_to.is_some(), "the reorganization was detected");
    let ch = store.channel(chain_id, s.channel).await.unwrap().unwrap();
    assert_eq!(
        (ch.deposit_a, ch.deposit_b, ch.balance_b),
        (Amount(1000), Amount(700), Amount(700)),
        "DB follows the new chain"
    );
    assert_eq!(r.next_block, chain.block_number().await.unwrap() + 1);
    store.close().await;
    std::fs::remove_dir_all(dir).unwrap();
    let _ = s.a;
}
