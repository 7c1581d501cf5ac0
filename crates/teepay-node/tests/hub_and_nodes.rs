//! The hub service and node daemons over real loopback TCP (one process): admission,
//! payments to completion, statuses in the channel DB, refusal of unroutable payments, a
//! refund when a node goes silent, and a node restarted from its persisted sealed state.

use std::time::Duration;
use teepay_coordinator::{Coordinator, HubConfig};
use teepay_enclave::{FundedChannel, NodeConfig, NodeEnclave, Request, Response};
use teepay_hub::executor::Executor;
use teepay_hub::service::{HubSettings, serve};
use teepay_link::host::FilePlatform;
use teepay_link::wire::WireStatus;
use teepay_node::{NodeError, NodeHandle, NodeSettings, spawn};
use teepay_routing::{ChannelInfo, Network};
use teepay_store::{InstanceStatus, Store};
use teepay_types::{Address, Amount, ChainId, ChannelId, FeePolicy, InstanceId, SigningKey, SimPlatform};

const C1: ChainId = ChainId(1);
const CONTRACT: Address = Address([0xcc; 20]);

fn authority() -> SigningKey {
    SigningKey::from_entropy([0xaa; 32]).unwrap()
}

fn node_config(require_peer_acks: bool) -> NodeConfig {
    NodeConfig {
        measurement: [1; 32],
        attestation_authority: authority().address(),
        allowed_hub_measurements: vec![[2; 32]],
        contracts: vec![(C1, CONTRACT)],
        max_tx_fee: Amount(1),
        require_peer_acks,
    }
}

struct Setup {
    dir: std::path::PathBuf,
    hub_addr: std::net::SocketAddr,
    nodes: Vec<NodeHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    store: Store,
    channels: Vec<ChannelId>,
    hub: teepay_hub::service::HubControl,
    hub_events: std::sync::Arc<teepay_events::EventLog>,
}

fn settings(
    dir: &std::path::Path,
    i: usize,
    hub: std::net::SocketAddr,
    quote: teepay_types::Quote,
) -> NodeSettings {
    NodeSettings {
        hub,
        standby_hubs: Vec::new(),
        state_path: dir.join(format!("node{i}/sealed")),
        quote,
        reconnect_after: Duration::from_millis(50),
        order_ttl: Duration::from_secs(60),
        events: Some(teepay_events::EventLog::in_memory(10_000)),
    }
}

/// A line of `n` nodes with channels i → i+1 (100 each side, no fees).
async fn setup(name: &str, n: usize) -> Setup {
    setup_with(name, n, false).await
}

/// [`setup`], with peer acks asked for by the hub and required by every node if `peer_acks`.
async fn setup_with(name: &str, n: usize, peer_acks: bool) -> Setup {
    let dir = std::env::temp_dir().join(format!("teepay-node-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.join("hub.db").display())).await.unwrap();
    let hub_config = HubConfig {
        measurement: [2; 32],
        attestation_authority: authority().address(),
        allowed_node_measurements: vec![[1; 32]],
        prepare_timeout: 1_000,
        retransmit_after: 200,
        round_auth: teepay_types::RoundAuth::default(),
        peer_acks,
        swap_lock_time: teepay_coordinator::DAY_MS,
    };
    let hub = Coordinator::create(SimPlatform::new([5; 32]), hub_config, [6; 32]).unwrap();
    let hub_quote = hub.report(ChainId(0)).attest(&authority());

    let mut enclaves: Vec<NodeEnclave<FilePlatform>> = (0..n)
        .map(|i| {
            let platform = FilePlatform::open(&dir.join(format!("node{i}"))).unwrap();
            NodeEnclave::create(platform, node_config(peer_acks), [i as u8 + 60; 32]).unwrap().0
        })
        .collect();
    let mut network = Network::new();
    let mut channels = Vec::new();
    for i in 0..n - 1 {
        let (a, b) = (enclaves[i].address(), enclaves[i + 1].address());
        let onchain = FundedChannel {
            chain: C1,
            contract: CONTRACT,
            a,
            b,
            nonce: i as u64,
            deposit_a: Amount(100),
            deposit_b: Amount(100),
            token: Address::default(),
        };
        let id = onchain.id();
        for (k, is_a) in [(i, true), (i + 1, false)] {
            for request in onchain.requests(is_a, FeePolicy::default()) {
                enclaves[k].handle(0, request).unwrap();
            }
        }
        let info = ChannelInfo {
            id,
            a,
            b,
            balance_a: Amount(100),
            balance_b: Amount(100),
            fee_a: FeePolicy::default(),
            fee_b: FeePolicy::default(),
        };
        network.graph_mut(C1, teepay_types::Asset::Native).upsert_channel(&info).unwrap();
        channels.push(id);
    }
    let hub_events = teepay_events::EventLog::in_memory(10_000);
    let settings_hub = HubSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_path: dir.join("hub.sealed"),
        quote: hub_quote,
        tick: Duration::from_millis(20),
        batch_window: Duration::ZERO,
        metrics: std::sync::Arc::new(teepay_hub::metrics::Metrics::new(&[C1.0])),
        finished: None,
        gate: None,
        events: Some(hub_events.clone()),
    };
    let handle = serve(Executor::new(hub, network), Some(store.clone()), settings_hub).await.unwrap();
    let hub_addr = handle.addr;
    let hub = handle.control();
    std::mem::forget(handle); // runs for the rest of the test process

    let mut nodes = Vec::new();
    let mut tasks = Vec::new();
    for (i, mut enclave) in enclaves.drain(..).enumerate() {
        let Response::Report(report) =
            enclave.handle(0, Request::Report { chain: ChainId(0) }).unwrap().response
        else {
            panic!()
        };
        let (h, t) = spawn(enclave, settings(&dir, i, hub_addr, report.attest(&authority())));
        nodes.push(h);
        tasks.push(t);
    }
    Setup { dir, hub_addr, nodes, tasks, store, channels, hub, hub_events }
}

/// Stops the daemons before removing their files (a still-running daemon may be writing).
fn cleanup(s: Setup) {
    for t in &s.tasks {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

async fn wait_for(node: &NodeHandle, id: InstanceId, want: fn(&WireStatus) -> bool) -> WireStatus {
    for _ in 0..300 {
        if let Ok(s) = node.status(id).await
            && want(&s)
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("instance {id:?} never reached the expected status")
}

async fn balance(node: &NodeHandle, channel: ChannelId) -> (u128, u128) {
    let c = node.channels().await.unwrap().into_iter().find(|c| c.id == channel).unwrap();
    (c.local.0, c.remote.0)
}

fn balance_of(enclave: &NodeEnclave<FilePlatform>, channel: ChannelId) -> u128 {
    enclave.inspect().channels[&channel].balance_local.0
}

async fn pay_when_connected(
    node: &NodeHandle,
    payee: Address,
    amount: u128,
) -> Result<InstanceId, NodeError> {
    for _ in 0..200 {
        match node.pay(C1, payee, Amount(amount), Amount(0)).await {
            Err(NodeError::Disconnected) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(NodeError::Refused(r)) if r.contains("not an attested enclave") => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => return other,
        }
    }
    panic!("node never connected")
}

/// The first node pays the last `first` once connected, then `count` payments of `each` at
/// once (they share batches); every one must succeed.
async fn pay_first_then_many(s: &Setup, first: u128, count: usize, each: u128) {
    let payee = s.nodes[s.nodes.len() - 1].address;
    let id = pay_when_connected(&s.nodes[0], payee, first).await.unwrap();
    assert_eq!(wait_for(&s.nodes[0], id, |st| *st != WireStatus::InFlight).await, WireStatus::Succeeded);
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(s.nodes[0].pay(C1, payee, Amount(each), Amount(0)).await.unwrap());
    }
    for id in &ids {
        assert_eq!(wait_for(&s.nodes[0], *id, |st| *st != WireStatus::InFlight).await, WireStatus::Succeeded);
    }
}

/// With peer acks the services carry every PREPARED ack to every participant in COMMIT
/// (nodes that require them would NACK anything else), and payments still complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_with_peer_acks_run_over_real_sockets() {
    let s = setup_with("peer-acks", 4, true).await;
    pay_first_then_many(&s, 10, 5, 2).await;
    assert_eq!(balance(&s.nodes[0], s.channels[0]).await, (80, 120));
    assert_eq!(balance(&s.nodes[3], s.channels[2]).await, (120, 80));
    cleanup(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_run_over_real_sockets() {
    let s = setup("pay", 4).await;
    let payee = s.nodes[3].address;
    pay_first_then_many(&s, 10, 20, 1).await;
    // 100 - 10 - 20 = 70 left on the first channel: 71 cannot be routed.
    match s.nodes[0].pay(C1, payee, Amount(71), Amount(0)).await {
        Err(NodeError::Refused(reason)) => assert!(reason.contains("no route"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The hub's DB has every status.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = s.store.instances_with_status(InstanceStatus::Succeeded).await.unwrap();
    assert_eq!(done.len(), 21);
    assert_eq!(balance(&s.nodes[0], s.channels[0]).await, (70, 130));
    assert_eq!(balance(&s.nodes[3], s.channels[2]).await, (130, 70));
    cleanup(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_means_a_refund_and_a_restarted_node_resumes() {
    let mut s = setup("silent", 3).await;
    let payee = s.nodes[2].address;
    let id = pay_when_connected(&s.nodes[0], payee, 5).await.unwrap();
    assert_eq!(wait_for(&s.nodes[0], id, |st| *st != WireStatus::InFlight).await, WireStatus::Succeeded);

    // The payee's daemon dies: its next payment is refunded after the PREPARE timeout.
    s.tasks[2].abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = s.nodes[0].pay(C1, payee, Amount(5), Amount(0)).await.unwrap();
    match wait_for(&s.nodes[0], id, |st| *st != WireStatus::InFlight).await {
        WireStatus::Refunded(why) => assert!(why.contains("did not answer"), "{why}"),
        other => panic!("{other:?}"),
    }

    // Restart the payee from its persisted sealed state: it reconnects and is paid again.
    let platform = FilePlatform::open(&s.dir.join("node2")).unwrap();
    let blob = platform.restorable(&s.dir.join("node2/sealed")).unwrap().expect("sealed state");
    let mut enclave = NodeEnclave::restore(platform, &blob).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(balance_of(&enclave, s.channels[1]), 105, "the restored enclave kept its first payment");
    let Response::Report(report) = enclave.handle(0, Request::Report { chain: ChainId(0) }).unwrap().response
    else {
        panic!()
    };
    let (h, t) = spawn(enclave, settings(&s.dir, 2, s.hub_addr, report.attest(&authority())));
    s.nodes[2] = h;
    s.tasks[2] = t;
    let id = pay_when_connected(&s.nodes[0], payee, 5).await.unwrap();
    assert_eq!(wait_for(&s.nodes[0], id, |st| *st != WireStatus::InFlight).await, WireStatus::Succeeded);
    cleanup(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_valid_quote_is_not_admitted() {
    let s = setup("unadmitted", 2).await;
    let platform = FilePlatform::open(&s.dir.join("intruder")).unwrap();
    let mut enclave = NodeEnclave::create(platform, node_config(false), [99; 32]).unwrap().0;
    let Response::Report(report) = enclave.handle(0, Request::Report { chain: ChainId(0) }).unwrap().response
    else {
        panic!()
    };
    let forged = report.attest(&SigningKey::from_entropy([0x66; 32]).unwrap());
    let mut settings = settings(&s.dir, 9, s.hub_addr, forged);
    settings.state_path = s.dir.join("intruder/sealed");
    let (intruder, task) = spawn(enclave, settings);
    let payee = s.nodes[1].address;
    // The hub checks the quote inside the handshake, before its enclave signs the link: the
    // intruder never gets a link, however often it redials.
    for _ in 0..50 {
        match intruder.pay(C1, payee, Amount(1), Amount(0)).await {
            Err(NodeError::Disconnected) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("a node with a forged quote got a link: {other:?}"),
        }
    }
    // The admitted nodes are unaffected.
    let id = pay_when_connected(&s.nodes[0], payee, 1).await.unwrap();
    assert_eq!(wait_for(&s.nodes[0], id, |st| *st != WireStatus::InFlight).await, WireStatus::Succeeded);
    task.abort();
    cleanup(s);
}

/// Issue 14 item 6: when a node learns an instance id (`Accepted`), the hub's durable sealed
/// state already holds that instance, so a hub crash right then can never hand the id to
/// another instance. Checked for many payments at once (they share flushes): at each
/// `Accepted`, the hub enclave restored from a copy of its state file knows the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_id_leaves_the_hub_only_once_its_creation_is_durable() {
    let s = setup("durable-ids", 3).await;
    let payee = s.nodes[2].address;
    let first = pay_when_connected(&s.nodes[0], payee, 1).await.unwrap();
    let mut ids = vec![first];
    let payer = s.nodes[0].clone();
    let many: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let n = payer.clone();
                async move { n.pay(C1, payee, Amount(1), Amount(0)).await }
            })
        })
        .collect();
    for p in many {
        let id = p.await.unwrap().unwrap();
        ids.push(id);
        // The hub's state file as it is now (copied: the running hub keeps appending).
        let copy = s.dir.join("hub.sealed.copy");
        std::fs::copy(s.dir.join("hub.sealed"), &copy).unwrap();
        let (_, log) = teepay_link::host::SealedLogFile::open(&copy).unwrap();
        let counter = teepay_types::blob_header(log.blobs().last().unwrap()).unwrap().0;
        let platform = SimPlatform { sealing_key: [5; 32], counter };
        let durable = Coordinator::restore(platform, &log).unwrap();
        // (Complete instances are pruned once past their deadline, a second later: the
        // one just announced cannot be.)
        assert!(durable.instance(id).is_some(), "{id:?} was announced before it was sealed");
    }
    for id in ids {
        assert_eq!(wait_for(&s.nodes[0], id, |st| *st != WireStatus::InFlight).await, WireStatus::Succeeded);
    }
    cleanup(s);
}

/// Issue 14 item 13: the hub's intent board takes only intents of enclaves the hub admitted,
/// within the transfer caps, expiring within a day, at most `BOARD_PER_PARTY` per party.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intent_board_admits_only_attested_parties_within_caps() {
    use teepay_api::pb;
    use teepay_hub::api::{BOARD_MAX_TTL_MS, BOARD_PER_PARTY, HubApi};
    use teepay_types::{Order, SwapIntent, Transfer};
    let s = setup("board", 2).await;
    pay_when_connected(&s.nodes[0], s.nodes[1].address, 1).await.unwrap(); // both admitted
    let (addr, _task) = HubApi::new(s.hub.clone()).serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut client = pb::hub_client::HubClient::connect(format!("http://{addr}")).await.unwrap();
    let peer = s.nodes[1].address;
    let t = |amount| Transfer {
        chain: C1,
        asset: teepay_types::Asset::Native,
        counterparty: peer,
        amount: Amount(amount),
        max_fee: Amount(0),
    };
    let now = teepay_link::host::now_ms();
    let encoded = |o: &teepay_types::SignedOrder| pb::Intent {
        encoded: teepay_types::ids::to_hex(&teepay_types::encoding::encode(o)),
        ..Default::default()
    };
    let intent = |n: &NodeHandle, amount: u128, expires_at: u64| {
        let n = n.clone();
        async move {
            let request =
                Request::CreateSwapIntent { gives: vec![t(amount)], receives: vec![t(amount)], expires_at };
            match n.enclave(request).await.unwrap() {
                Response::Order(o) => o,
                other => panic!("{other:?}"),
            }
        }
    };
    // A key the hub never admitted, even correctly signed.
    let stranger = SigningKey::from_entropy([0x51; 32]).unwrap();
    let theirs = Order::Swap(SwapIntent {
        party: stranger.address(),
        gives: vec![t(1)],
        receives: vec![t(1)],
        nonce: 0,
        expires_at: now + 60_000,
    })
    .sign(&stranger);
    let err = client.post_intent(encoded(&theirs)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Too far in the future.
    let late = intent(&s.nodes[0], 1, now + BOARD_MAX_TTL_MS + 60_000).await;
    let err = client.post_intent(encoded(&late)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // Oversized before decoding.
    let huge = pb::Intent { encoded: "00".repeat(teepay_api::MAX_INTENT_HEX), ..Default::default() };
    assert_eq!(client.post_intent(huge).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    // An admitted party fills its share, then is refused; the board holds exactly its share.
    for i in 0..BOARD_PER_PARTY {
        let o = intent(&s.nodes[0], 10 + i as u128, now + 60_000).await;
        client.post_intent(encoded(&o)).await.unwrap();
    }
    let one_more = intent(&s.nodes[0], 99, now + 60_000).await;
    let err = client.post_intent(encoded(&one_more)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let listed = client.list_intents(pb::ListIntentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.entries.len(), BOARD_PER_PARTY);
    cleanup(s);
}

/// Issue 14 item 10: connections that never complete a handshake hold at most
/// `MAX_PENDING_HANDSHAKES` slots; one more is closed at once (nothing is read from it, nothing
/// allocated for it); once the stalled ones go, admitted nodes link and pay as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_bounded_and_do_not_lock_out_nodes() {
    use teepay_hub::admission::MAX_PENDING_HANDSHAKES;
    use tokio::io::AsyncReadExt;
    let s = setup("stalled", 2).await;
    let payee = s.nodes[1].address;
    pay_when_connected(&s.nodes[0], payee, 1).await.unwrap();
    let mut stalled = Vec::new();
    for _ in 0..MAX_PENDING_HANDSHAKES {
        stalled.push(tokio::net::TcpStream::connect(s.hub_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // every one accepted and waiting
    let mut extra = tokio::net::TcpStream::connect(s.hub_addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "one handshake too many is closed at once: {read:?}");
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = s.nodes[0].pay(C1, payee, Amount(1), Amount(0)).await.unwrap();
    assert_eq!(wait_for(&s.nodes[0], id, |st| *st != WireStatus::InFlight).await, WireStatus::Succeeded);
    cleanup(s);
}

/// Issue 16: an invoice paid across two hops, seen through the gRPC API. The payee's invoice
/// stream and the payer's payment stream deliver every change in order; a subscriber that
/// reconnects from its cursor gets the rest with no gap and no duplicate; the payer keeps the
/// payee's receipt, which proves the payment; the hub's stream has the instance start and end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_paid_streams_its_events_in_order_and_resumes_from_a_cursor() {
    use teepay_api::pb;
    use teepay_api::pb::node_client::NodeClient;
    use teepay_node::api::NodeApi;
    let s = setup("events", 3).await;
    pay_when_connected(&s.nodes[0], s.nodes[2].address, 1).await.unwrap(); // every link up
    let api = |n: &NodeHandle| NodeApi {
        node: n.clone(),
        links: Vec::new(),
        chains: vec![C1],
        hub: s.hub_addr.to_string(),
        quotes: Vec::new(),
        tokens: Vec::new(),
        units: Default::default(),
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let (payee_addr, _t1) = api(&s.nodes[2]).serve(any).await.unwrap();
    let (payer_addr, _t2) = api(&s.nodes[0]).serve(any).await.unwrap();
    let mut payee = NodeClient::connect(format!("http://{payee_addr}")).await.unwrap();
    let mut payer = NodeClient::connect(format!("http://{payer_addr}")).await.unwrap();
    let start = s.nodes[2].events.as_ref().unwrap().last_seq();
    let mut invoices =
        payee.subscribe_invoices(pb::SubscribeRequest { after: start }).await.unwrap().into_inner();

    let req = pb::CreateInvoiceRequest {
        chain: C1.0,
        amount: "5".into(),
        memo: "order #42".into(),
        expires_in_s: 60,
        asset: String::new(),
    };
    let invoice = payee.create_invoice(req).await.unwrap().into_inner();
    let started =
        payer.pay_invoice(pb::PayInvoiceRequest { invoice: invoice.encoded.clone(), ..Default::default() });
    let instance = started.await.unwrap().into_inner().instance;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = invoices.message().await.unwrap().expect("the stream stays open");
        seen.push(e);
    }
    let kinds: Vec<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["invoice.created", "invoice.pending", "invoice.paid"]);
    assert!(seen.windows(2).all(|w| w[1].seq > w[0].seq), "in order");
    let paid: serde_json::Value = serde_json::from_str(&seen[2].data).unwrap();
    assert_eq!(paid["instance"], instance.as_str());
    assert_eq!(paid["payer"], s.nodes[0].address.to_string().as_str());
    let receipt = teepay_types::PaymentReceipt::decode(paid["receipt"].as_str().unwrap()).unwrap();
    let signed = teepay_types::SignedInvoice::decode(&invoice.encoded).unwrap();
    assert!(receipt.proves_payment_of(&signed));

    // Reconnecting after the first event: exactly the two after it, then nothing more.
    drop(invoices);
    let mut resumed =
        payee.subscribe_invoices(pb::SubscribeRequest { after: seen[0].seq }).await.unwrap().into_inner();
    for want in &seen[1..] {
        assert_eq!(resumed.message().await.unwrap().unwrap(), *want, "no gap");
    }
    let more = tokio::time::timeout(Duration::from_millis(300), resumed.message()).await;
    assert!(more.is_err(), "no duplicate: {more:?}");

    // The payer's stream: its own payment, from start to the receipt it keeps.
    let mut payments =
        payer.subscribe_payments(pb::SubscribeRequest { after: 0 }).await.unwrap().into_inner();
    let mut mine = Vec::new();
    while !mine.iter().any(|k| k == "receipt.received") {
        let e = payments.message().await.unwrap().unwrap();
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        if data["instance"] == instance.as_str() {
            mine.push(e.kind);
        }
    }
    assert_eq!(
        mine,
        ["payment.started", "payment.locked", "payment.committed", "payment.succeeded", "receipt.received"]
    );
    let kept = payer.receipt(pb::InvoiceRef { invoice: invoice.id.clone() }).await.unwrap().into_inner();
    assert_eq!(kept.encoded, receipt.encode());

    // The hub's instance events (served by its API from the log the status writer fills).
    let (hub_api, _t3) = teepay_hub::api::HubApi::new(s.hub.clone())
        .with_events(s.hub_events.clone())
        .serve(any)
        .await
        .unwrap();
    let mut hub = pb::hub_client::HubClient::connect(format!("http://{hub_api}")).await.unwrap();
    let mut instances =
        hub.subscribe_instances(pb::SubscribeRequest { after: 0 }).await.unwrap().into_inner();
    let mut ours = Vec::new();
    while ours.len() < 2 {
        let e = instances.message().await.unwrap().unwrap();
        if serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["instance"] == instance.as_str() {
            ours.push(e.kind);
        }
    }
    assert_eq!(ours, ["instance.started", "instance.succeeded"]);
    // A cursor ahead of the log is refused, not waited on.
    let ahead = hub.subscribe_instances(pb::SubscribeRequest { after: 1 << 40 }).await.unwrap_err();
    assert_eq!(ahead.code(), tonic::Code::OutOfRange, "{ahead}");
    cleanup(s);
}

/// A hub that completes the link handshake, then reads everything and answers nothing (a
/// lost reply looks the same to the node): a status query ends with `HubSilent`, not a
/// caller waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_query_the_hub_never_answers_ends_in_an_error() {
    let dir = std::env::temp_dir().join(format!("teepay-node-mute-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_addr = listener.local_addr().unwrap();
    let mute_hub = tokio::spawn(async move {
        let key = SigningKey::from_entropy([0x77; 32]).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        let sign = |transcript| {
            let digest = teepay_types::link_digest(&transcript, teepay_types::LinkRole::Responder);
            std::future::ready(Ok(key.sign_digest(&digest)))
        };
        let role = teepay_types::LinkRole::Responder;
        let mut link = teepay_link::handshake(r, w, role, [0x78; 32], &[], sign, |_, _| true).await.unwrap();
        let mut heard = 0;
        while link.reader.recv().await.is_ok() {
            heard += 1;
        }
        heard
    });
    let platform = FilePlatform::open(&dir.join("node0")).unwrap();
    let mut enclave = NodeEnclave::create(platform, node_config(false), [60; 32]).unwrap().0;
    let Response::Report(report) = enclave.handle(0, Request::Report { chain: ChainId(0) }).unwrap().response
    else {
        panic!()
    };
    let (node, task) = spawn(enclave, settings(&dir, 0, hub_addr, report.attest(&authority())));
    let started = std::time::Instant::now();
    let asked = loop {
        match node.status(InstanceId([9; 32])).await {
            // Asked before the link was up.
            Err(NodeError::Disconnected) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => break other,
        }
    };
    assert!(matches!(asked, Err(NodeError::HubSilent(_))), "{asked:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
    task.abort();
    let _ = task.await;
    assert!(mute_hub.await.unwrap() >= 2, "the node's Register and its query reached the hub");
    let _ = std::fs::remove_dir_all(&dir);
}
