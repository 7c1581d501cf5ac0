//! End to end with every party a separate OS process: two anvil chains, `teepay hub`, three
//! `teepay node` daemons, and the `teepay` CLI as the user — exactly what README's "by hand"
//! section does. Multi-hop payment, swap via the intent board, refund on a dead node,
//! `kill -9` of a node and of the hub mid-payment (restart; every instance resolves and
//! every channel's two parties agree), bad client requests, and `/metrics`.
//! Runs on SQLite, and on PostgreSQL too (`TEEPAY_PG_URL`, or one started by
//! `scripts/postgres`).

mod common;

use common::{BIN, ETH, Proc, anvil, cli, free_port, log_tails, ok, root, spawn_logged, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Net {
    dir: PathBuf,
    chains: Vec<(String, u64, String, u64)>, // rpc, id, contract, block
    hub_port: u16,
    hub_api: String,
    metrics_port: u16,
    db: String,
    /// u2's webhook (a merchant's backend): the test's HTTP server.
    webhook: String,
}

/// The merchant backend's secret for u2's webhook.
const WEBHOOK_SECRET: &str = "the shop's webhook secret, 32 B.";

/// What the test's webhook receiver got: (delivery id, event kind, signature, body).
type Deliveries = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Vec<u8>)>>>;

/// A merchant's HTTP endpoint that answers 500 to the first `fail` requests, then 200.
fn webhook_receiver(fail: usize) -> (String, Deliveries) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/teepay", listener.local_addr().unwrap());
    let got: Deliveries = std::sync::Arc::default();
    let log = got.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(k) = s.read(&mut chunk) else { break (String::new(), Vec::new()) };
                if k == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < i + 4 + len {
                        let k = s.read(&mut chunk).unwrap();
                        buf.extend_from_slice(&chunk[..k]);
                    }
                    break (head, buf[i + 4..i + 4 + len].to_vec());
                }
            };
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let record =
                (header("x-teepay-delivery"), header("x-teepay-event"), header("x-teepay-signature"), body);
            log.lock().unwrap().push(record);
            let status = if n < fail { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

impl Net {
    fn chains_toml(&self) -> String {
        self.chains
            .iter()
            .map(|(rpc, _, contract, block)| {
                format!("[[chains]]\nrpc = \"{rpc}\"\ncontract = \"{contract}\"\nfrom_block = {block}\n")
            })
            .collect()
    }

    fn start_hub(&self) -> Proc {
        let cfg = self.dir.join("hub.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{}\"\napi = \"{}\"\nmetrics = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\ndb = \"{}\"\nprepare_timeout_ms = 1500\n{}",
                self.hub_port,
                self.hub_api.trim_start_matches("http://"),
                self.metrics_port,
                self.dir.join("hub").display(),
                self.db,
                self.chains_toml()
            ),
        )
        .unwrap();
        spawn_logged(
            Command::new(BIN).args(["hub", "--config"]).arg(&cfg),
            "hub ",
            Some(&self.dir.join("hub.log")),
        )
        .0
    }

    /// Starts one node per name, each on a free API port.
    fn start_nodes(&self, names: [&'static str; 3]) -> Vec<Node> {
        names
            .into_iter()
            .map(|name| {
                let port = free_port();
                let (p, api, address) = self.start_node(name, port);
                Node { proc: Some(p), api, address, port, name }
            })
            .collect()
    }

    /// Starts (or restarts) node `name`; returns the process, its API URL and address.
    fn start_node(&self, name: &str, api_port: u16) -> (Proc, String, String) {
        let cfg = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "hub = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{api_port}\"\nstate_dir = \"{}\"\n{}{}",
                self.hub_port,
                self.dir.join(name).display(),
                self.chains_toml(),
                if name == "u2" {
                    format!(
                        "[[webhooks]]\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\nevents = [\"invoice.\"]\n",
                        self.webhook
                    )
                } else {
                    String::new()
                }
            ),
        )
        .unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let (p, line) =
            spawn_logged(Command::new(BIN).args(["node", "--config"]).arg(&cfg), "node ", Some(&log));
        let address = line.split_whitespace().nth(1).unwrap().to_string();
        (p, format!("http://127.0.0.1:{api_port}"), address)
    }
}

struct Node {
    proc: Option<Proc>,
    api: String,
    address: String,
    port: u16,
    name: &'static str,
}

/// Every channel's two parties agree on its balances and no locks remain.
fn assert_consistent(nodes: &[Node]) {
    let mut views = std::collections::BTreeMap::new();
    for n in nodes {
        let list = ok(&["channel", "list", "--node", &n.api]);
        for c in list["channels"].as_array().unwrap() {
            assert_eq!(c["locks"], 0, "{}: locks left on {}", n.name, c["id"]);
            views
                .entry(c["id"].as_str().unwrap().to_string())
                .or_insert_with(Vec::new)
                .push((c["local"].as_str().unwrap().to_string(), c["remote"].as_str().unwrap().to_string()));
        }
    }
    for (id, v) in views {
        assert_eq!(v.len(), 2, "channel {id} known to both parties");
        assert_eq!((&v[0].0, &v[0].1), (&v[1].1, &v[1].0), "parties of {id} disagree");
    }
}

fn status(node: &Node, id: &str) -> Value {
    ok(&["status", id, "--node", &node.api])
}

fn wait_final(dir: &Path, node: &Node, id: &str) -> String {
    // What the node last answered, kept for the failure message (an instance stuck in
    // flight and a node that stopped answering are different bugs).
    let start = Instant::now();
    loop {
        let last = match cli(&["status", id, "--node", &node.api]) {
            Ok(v) => Ok(v["status"].as_str().unwrap_or("").to_string()),
            Err(e) => Err(e), // node (re)connecting
        };
        if let Ok(s) = &last
            && (s == "succeeded" || s == "refunded")
        {
            return s.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "instance {id} did not finish in 30 s; last answer: {last:?}{}",
            log_tails(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scenario(db_for: impl FnOnce(&Path) -> String, tag: &str) {
    let dir = std::env::temp_dir().join(format!("teepay-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_a1, rpc1) = anvil(31337);
    let (_a2, rpc2) = anvil(31338);
    let mut chains = Vec::new();
    for (rpc, id) in [(rpc1.clone(), 31337u64), (rpc2.clone(), 31338)] {
        let d = ok(&["deploy", "--rpc", &rpc]);
        chains.push((rpc, id, d["contract"].as_str().unwrap().to_string(), d["block"].as_u64().unwrap()));
    }
    let net = Net {
        db: db_for(&dir),
        dir: dir.clone(),
        chains,
        hub_port: free_port(),
        hub_api: format!("http://127.0.0.1:{}", free_port()),
        metrics_port: free_port(),
        webhook: String::new(),
    };
    let (webhook, deliveries) = webhook_receiver(2);
    let net = Net { webhook, ..net };
    let hub = net.start_hub();
    let mut nodes = net.start_nodes(["u1", "mid", "u2"]);
    for n in &nodes {
        for (rpc, ..) in &net.chains {
            ok(&["faucet", "--rpc", rpc, "--to", &n.address, "--amount", &(5 * ETH).to_string()]);
        }
    }
    wait_until("every enclave to register itself on both chains", Duration::from_secs(30), || {
        nodes.iter().all(|n| {
            ok(&["info", "--node", &n.api])["chains"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["registered"] == true)
        })
    });
    // Chain A: u1 → mid → u2; chain B: u2 → mid → u1. Each side funded with 1 ETH.
    let deposit = ETH.to_string();
    let mut opened = 0;
    for (chain, (x, y)) in [("31337", (0, 1)), ("31337", (1, 2)), ("31338", (2, 1)), ("31338", (1, 0))] {
        let r = ok(&[
            "channel",
            "open",
            "--chain",
            chain,
            "--peer",
            &nodes[y].address,
            "--deposit",
            &deposit,
            "--node",
            &nodes[x].api,
        ]);
        let id = r["channel"].as_str().unwrap().to_string();
        wait_until("the peer's watcher to see the channel", Duration::from_secs(20), || {
            ok(&["channel", "list", "--node", &nodes[y].api])["channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id.as_str())
        });
        ok(&["channel", "fund", "--channel", &id, "--amount", &deposit, "--node", &nodes[y].api]);
        opened += 1;
    }
    wait_until("the hub to sync every funded channel", Duration::from_secs(20), || {
        let map = ok(&["network", "--hub", &net.hub_api]);
        let chans = map["channels"].as_array().unwrap();
        chans.len() == opened && chans.iter().all(|c| c["balance_b"] == deposit.as_str())
    });
    // Each node learns of its peers' deposits from its own watcher, which may lag the hub's
    // sync under load: until it has, it believes its peer holds less than the peer does.
    wait_until("every node's watcher to see both deposits of its channels", Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            ok(&["channel", "list", "--node", &n.api])["channels"].as_array().unwrap().iter().all(|c| {
                let side = |k: &str| c[k].as_str().unwrap().parse::<u128>().unwrap();
                side("local") + side("remote") == 2 * ETH
            })
        })
    });

    // Multi-hop payment.
    // Written as people write it: the node reads 0.1eth as 10^17 wei.
    let amount = "0.1eth".to_string();
    let r = ok(&[
        "pay",
        "--chain",
        "31337",
        "--to",
        &nodes[2].address,
        "--amount",
        &amount,
        "--node",
        &nodes[0].api,
    ]);
    assert_eq!(r["status"], "succeeded", "{r}");

    // Invoices: u2 asks for 0.02 ETH, u1 pays it once, and u2's receipt proves it to anyone.
    let created = ok(&[
        "invoice",
        "create",
        "--chain",
        "31337",
        "--amount",
        "0.02eth",
        "--memo",
        "order #42",
        "--qr",
        "--node",
        &nodes[2].api,
    ]);
    assert_eq!(created["status"], "open", "{created}");
    let invoice = created["invoice"].as_str().unwrap().to_string();
    let decoded = ok(&["invoice", "decode", &invoice]);
    assert_eq!(decoded["payee"], nodes[2].address.as_str());
    assert_eq!(decoded["amount"], (ETH / 50).to_string().as_str());
    let paid = ok(&["pay", &invoice, "--node", &nodes[0].api]);
    assert_eq!(paid["status"], "succeeded", "{paid}");
    let receipt = paid["receipt"].as_str().expect("the payer gets the payee's receipt").to_string();
    assert_eq!(ok(&["receipt", "verify", &receipt, "--invoice", &invoice])["valid"], true);
    let listed = ok(&["invoice", "list", "--node", &nodes[2].api]);
    let entry =
        listed["invoices"].as_array().unwrap().iter().find(|i| i["invoice"] == invoice.as_str()).cloned();
    let entry = entry.expect("the payee lists its invoice");
    assert_eq!(
        (entry["status"].as_str(), entry["payer"].as_str()),
        (Some("paid"), Some(nodes[0].address.as_str()))
    );
    assert_eq!(ok(&["receipt", "get", &invoice, "--node", &nodes[2].api])["receipt"], receipt.as_str());
    assert_eq!(ok(&["receipt", "get", &invoice, "--node", &nodes[0].api])["receipt"], receipt.as_str());
    // Paid once: u1's enclave refuses to pay it again, u2's refuses mid's payment of it.
    let again = cli(&["pay", &invoice, "--node", &nodes[0].api]).expect_err("paid once");
    assert!(again.contains("already paid"), "{again}");
    let by_mid = cli(&["pay", &invoice, "--node", &nodes[1].api]).expect_err("the payee takes one payment");
    assert!(by_mid.contains("refunded") && by_mid.contains("InvoiceNotOpen"), "{by_mid}");
    // A receipt does not prove payment of another invoice; a forged invoice pays nothing.
    let other =
        ok(&["invoice", "create", "--chain", "31337", "--amount", "0.03eth", "--node", &nodes[2].api]);
    let other = other["invoice"].as_str().unwrap().to_string();
    let invalid = cli(&["receipt", "verify", &receipt, "--invoice", &other]).expect_err("exits non-zero");
    assert!(invalid.contains("\"valid\":false"), "{invalid}");
    let mut forged = other.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'q' { b'p' } else { b'q' };
    let forged = String::from_utf8(forged).unwrap();
    let refused = cli(&["pay", &forged, "--node", &nodes[0].api]).expect_err("not a valid invoice");
    assert!(refused.contains("invoice:"), "{refused}");
    let cancelled = ok(&["invoice", "cancel", &other, "--node", &nodes[2].api]);
    assert_eq!(cancelled["status"], "cancelled");
    // The shop's backend was told, through its webhook: every invoice event in order, signed,
    // the first deliveries retried (the receiver failed them) under the same delivery id.
    wait_until("the webhook deliveries", Duration::from_secs(20), || {
        deliveries.lock().unwrap().len() >= 2 + 5
    });
    let got = deliveries.lock().unwrap().clone();
    assert_eq!(got[0].0, got[1].0, "a retry keeps its delivery id");
    assert_eq!(got[1].0, got[2].0);
    let mut delivered: Vec<(String, String)> = Vec::new();
    for (id, kind, signature, body) in &got {
        assert!(teepay_events::webhook::verify(WEBHOOK_SECRET, body, signature), "signed: {kind}");
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!((v["delivery"].as_str(), v["kind"].as_str()), (Some(id.as_str()), Some(kind.as_str())));
        if delivered.last().is_none_or(|(last, _)| last != id) {
            delivered.push((id.clone(), kind.clone()));
        }
    }
    let kinds: Vec<&str> = delivered.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["invoice.created", "invoice.pending", "invoice.paid", "invoice.created", "invoice.cancelled"]
    );
    let paid: Value = serde_json::from_slice(&got.iter().find(|d| d.1 == "invoice.paid").unwrap().3).unwrap();
    assert_eq!(paid["data"]["receipt"], receipt.as_str(), "the paid event carries the receipt");
    // `teepay watch`: the same events from the node's stream, resumable from any of them.
    let third = ok(&["watch", "invoices", "--count", "3", "--node", &nodes[2].api]);
    assert_eq!(third["kind"], "invoice.paid", "{third}");
    let next = ok(&[
        "watch",
        "invoices",
        "--after",
        &third["seq"].to_string(),
        "--count",
        "1",
        "--node",
        &nodes[2].api,
    ]);
    assert_eq!(next["kind"], "invoice.created", "{next}");
    // (Sequence numbers are the node's, shared with its payment events: the next invoice
    // event is the next invoice created, whatever its number.)
    assert_eq!(next["data"]["encoded"], other.as_str(), "nothing skipped: {next}");
    let late = ok(&[
        "invoice",
        "create",
        "--chain",
        "31337",
        "--amount",
        "1",
        "--expires-in",
        "1",
        "--node",
        &nodes[2].api,
    ]);
    std::thread::sleep(Duration::from_millis(1_100));
    let expired =
        cli(&["pay", late["invoice"].as_str().unwrap(), "--node", &nodes[0].api]).expect_err("expired");
    assert!(expired.contains("has expired"), "{expired}");

    // ERC-20 channels: a test token deployed and minted on chain A; u1 → mid → u2 in the
    // token (each enclave approves the contract, then the contract pulls the tokens), paid
    // across both hops by push and by invoice, then closed with exact token balances.
    let token = ok(&["deploy", "--rpc", &net.chains[0].0, "--token", "USDC:6"]);
    let usdc = token["token"].as_str().unwrap().to_string();
    // The same 1,000 USDC, in base units and in the token's unit.
    for (n, amount) in [(&nodes[0], "1000000000"), (&nodes[1], "1000usdc")] {
        ok(&["faucet", "--rpc", &net.chains[0].0, "--token", &usdc, "--to", &n.address, "--amount", amount]);
    }
    let token_balance = |who: &str| -> u128 {
        let b = ok(&["balance", "--rpc", &net.chains[0].0, "--of", who, "--token", &usdc]);
        b["balance"].as_str().unwrap().parse().unwrap()
    };
    let open_token = |from: &Node, to: &Node, deposit: &str| -> String {
        let opened = ok(&[
            "channel",
            "open",
            "--chain",
            "31337",
            "--peer",
            &to.address,
            "--deposit",
            deposit,
            "--token",
            &usdc,
            "--node",
            &from.api,
        ]);
        let id = opened["channel"].as_str().unwrap().to_string();
        wait_until("the peer's watcher to see the token channel", Duration::from_secs(20), || {
            ok(&["channel", "list", "--node", &to.api])["channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id.as_str() && c["token"] == usdc.as_str())
        });
        id
    };
    let token_channel = open_token(&nodes[0], &nodes[1], "300usdc");
    // Amounts in the token's own unit (its contract's symbol() and decimals()), exactly.
    for (bad, why) in
        [("5eth", "unknown unit"), ("0.0000001usdc", "more decimals"), ("0usdc", "must be positive")]
    {
        let refused =
            cli(&["channel", "fund", "--channel", &token_channel, "--amount", bad, "--node", &nodes[1].api])
                .expect_err("refused");
        assert!(refused.contains(why), "{bad}: {refused}");
    }
    ok(&["channel", "fund", "--channel", &token_channel, "--amount", "150.5usdc", "--node", &nodes[1].api]);
    ok(&["channel", "fund", "--channel", &token_channel, "--amount", "49500000", "--node", &nodes[1].api]);
    let second = open_token(&nodes[1], &nodes[2], "300usdc");
    wait_until("u1's view of both token deposits", Duration::from_secs(20), || {
        ok(&["channel", "list", "--node", &nodes[0].api])["channels"].as_array().unwrap().iter().any(|c| {
            c["id"] == token_channel.as_str() && c["local"] == "300000000" && c["remote"] == "200000000"
        })
    });
    // The hub routes each asset on a map of its own.
    wait_until("the hub's token map", Duration::from_secs(20), || {
        let map = ok(&["network", "--hub", &net.hub_api]);
        let token_channels: Vec<&Value> =
            map["channels"].as_array().unwrap().iter().filter(|c| c["asset"] == usdc.as_str()).collect();
        token_channels.len() == 2
            && token_channels
                .iter()
                .any(|c| c["id"] == token_channel.as_str() && c["balance_b"] == "200000000")
    });
    let contract_before = token_balance(&net.chains[0].2);
    assert_eq!(contract_before, 800_000_000, "the contract holds every token deposit");
    // A push payment of 25 USDC over the token's channels; the ether channels beside them
    // (same parties, same chain) do not move.
    let ether_view = |n: &Node| -> Vec<Value> {
        let list = ok(&["channel", "list", "--node", &n.api])["channels"].as_array().unwrap().clone();
        list.into_iter().filter(|c| c["token"] == "").collect()
    };
    let ether_before = ether_view(&nodes[1]);
    let r = ok(&[
        "pay",
        "--chain",
        "31337",
        "--to",
        &nodes[2].address,
        "--amount",
        "25usdc",
        "--asset",
        &usdc,
        "--node",
        &nodes[0].api,
    ]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(ether_view(&nodes[1]), ether_before, "no ether moved");
    let refused = cli(&[
        "pay",
        "--chain",
        "31337",
        "--to",
        &nodes[2].address,
        "--amount",
        "1usdc",
        "--asset",
        "dai",
        "--node",
        &nodes[0].api,
    ])
    .expect_err("an unknown asset");
    assert!(refused.contains("unknown asset \"dai\""), "{refused}");
    // A token invoice: asked and paid in USDC, with the payee's receipt.
    let created = ok(&[
        "invoice",
        "create",
        "--chain",
        "31337",
        "--amount",
        "10usdc",
        "--asset",
        &usdc,
        "--node",
        &nodes[2].api,
    ]);
    assert_eq!(created["asset"], usdc.as_str(), "{created}");
    assert_eq!(created["amount"], "10000000", "{created}");
    let token_invoice = created["invoice"].as_str().unwrap().to_string();
    let paid = ok(&["pay", &token_invoice, "--node", &nodes[0].api]);
    assert_eq!(paid["status"], "succeeded", "{paid}");
    let receipt = paid["receipt"].as_str().expect("a receipt").to_string();
    assert_eq!(ok(&["receipt", "verify", &receipt, "--invoice", &token_invoice])["valid"], true);
    // People read token amounts in the token's unit: the node names each token it knows.
    let info = ok(&["info", "--node", &nodes[2].api]);
    let known = info["chains"][0]["tokens"].as_array().unwrap();
    assert!(
        known.iter().any(|t| t["token"] == usdc.as_str() && t["symbol"] == "usdc" && t["decimals"] == 6),
        "{info}"
    );
    let listed = text(&["invoice", "list", "--node", &nodes[2].api]);
    assert!(listed.contains("10 USDC (10000000 base units)"), "{listed}");
    let channels = text(&["channel", "list", "--node", &nodes[1].api]);
    assert!(channels.contains("USDC (") && channels.contains(" ETH ("), "{channels}");
    // Token for ether through the intent board: u1's 5 USDC on chain A (u1 → mid → u2) for
    // u2's 0.01 ETH on chain B (u2 → mid → u1).
    let give = format!("31337:5usdc:{}:{usdc}", nodes[2].address);
    let receive = format!("31338:0.01eth:{}", nodes[2].address);
    swap_via_board(&net, &nodes, &give, &receive);
    // Closed: every token leaves the contract, each party's exactly.
    let wait_token_views = |n: &Node, id: &str, local: &str| {
        wait_until("a node's view of the token payments", Duration::from_secs(20), || {
            ok(&["channel", "list", "--node", &n.api])["channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id && c["local"] == local)
        })
    };
    wait_token_views(&nodes[1], &token_channel, "240000000");
    wait_token_views(&nodes[2], &second, "40000000");
    let before = [&nodes[0], &nodes[1], &nodes[2]].map(|n| token_balance(&n.address));
    for (id, closer) in [(&token_channel, &nodes[0]), (&second, &nodes[2])] {
        ok(&["channel", "close", "--channel", id, "--node", &closer.api]);
    }
    wait_until("both token channels to close", Duration::from_secs(20), || {
        ok(&["channel", "list", "--node", &nodes[1].api])["channels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["token"] == usdc.as_str() && c["open"] == false)
            .count()
            == 2
    });
    let after = [&nodes[0], &nodes[1], &nodes[2]].map(|n| token_balance(&n.address));
    let paid_out: Vec<u128> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        paid_out,
        [260_000_000, 500_000_000, 40_000_000],
        "u1 300 - 40, mid (200 + 40) + (300 - 40), u2 40"
    );
    assert_eq!(after, [960_000_000, 1_000_000_000, 40_000_000], "u1 paid 40 USDC, u2 got them, mid neither");
    assert_eq!(token_balance(&net.chains[0].2), 0, "the contract holds no token after the closes");

    // Swap through the hub's intent board: u1 gives on chain A, u2 gives on chain B.
    let give = format!("31337:0.05eth:{}", nodes[2].address);
    let receive = format!("31338:{}:{}", ETH / 25, nodes[2].address);
    swap_via_board(&net, &nodes, &give, &receive);
    assert_consistent(&nodes);

    // Bad client requests: clear errors, nothing started.
    let u1 = nodes[0].api.clone();
    let to = nodes[2].address.clone();
    let bad = |args: &[&str], expect: &str| {
        let e = cli(args).expect_err("must fail");
        assert!(e.contains(expect), "{args:?}: {e}");
    };
    bad(
        &["pay", "--chain", "31337", "--to", &to, "--amount", "0", "--node", &u1],
        "amount: must be positive",
    );
    bad(
        &["pay", "--chain", "31337", "--to", &to, "--amount", "-5", "--node", &u1],
        "amount: must be positive",
    );
    bad(
        &[
            "pay",
            "--chain",
            "31337",
            "--to",
            &to,
            "--amount",
            "999999999999999999999999999999999999999999",
            "--node",
            &u1,
        ],
        "larger than 2^128",
    );
    bad(
        &["pay", "--chain", "31337", "--to", "0x1234", "--amount", "5", "--node", &u1],
        "payee: not a 20-byte hex address",
    );
    bad(
        &[
            "pay",
            "--chain",
            "31337",
            "--to",
            "0x00000000000000000000000000000000000000aa",
            "--amount",
            "5",
            "--node",
            &u1,
        ],
        "is not in the network map",
    );
    bad(
        &["pay", "--chain", "31337", "--to", &to, "--amount", &(50 * ETH).to_string(), "--node", &u1],
        "no route",
    );
    bad(&["pay", "--chain", "5", "--to", &to, "--amount", "5", "--node", &u1], "not configured for chain 5");
    bad(&["pay", "--chain", "31337", "--to", &to, "--amount", "0.5", "--node", &u1], "is ambiguous");
    bad(
        &["pay", "--chain", "31337", "--to", &to, "--amount", "5usdc", "--node", &u1],
        "unknown asset \"usdc\"",
    );
    bad(
        &["pay", "--chain", "31337", "--to", &to, "--amount", "1.5wei", "--node", &u1],
        "more decimals than wei",
    );
    bad(&["status", "0x12", "--node", &u1], "instance: not a 32-byte hex id");
    bad(
        &["channel", "close", "--channel", &format!("0x{}", "11".repeat(32)), "--node", &u1],
        "not one of this node's channels",
    );

    // Refund: the intermediary is dead (kill -9) while a payment needs it.
    nodes[1].proc = None;
    let r = cli(&["pay", "--chain", "31337", "--to", &to, "--amount", &amount, "--node", &u1])
        .expect_err("refunded");
    assert!(r.contains("refunded") && r.contains("did not answer"), "{r}");
    let (p, api, _) = net.start_node("mid", nodes[1].port);
    (nodes[1].proc, nodes[1].api) = (Some(p), api);

    // kill -9 of the payee right after a payment starts; it restarts from its sealed state.
    let started =
        ok(&["pay", "--chain", "31337", "--to", &to, "--amount", &amount, "--no-wait", "--node", &u1]);
    let id = started["instance"].as_str().unwrap().to_string();
    nodes[2].proc = None;
    std::thread::sleep(Duration::from_millis(100));
    let (p, api, _) = net.start_node("u2", nodes[2].port);
    (nodes[2].proc, nodes[2].api) = (Some(p), api);
    let final1 = wait_final(&net.dir, &nodes[0], &id);
    wait_until("locks to clear after the node restart", Duration::from_secs(20), || {
        std::panic::catch_unwind(|| assert_consistent(&nodes)).is_ok()
    });

    // kill -9 of the hub right after a payment starts; restart: the instance resolves.
    let started =
        ok(&["pay", "--chain", "31337", "--to", &to, "--amount", &amount, "--no-wait", "--node", &u1]);
    let id2 = started["instance"].as_str().unwrap().to_string();
    drop(hub); // SIGKILL
    std::thread::sleep(Duration::from_millis(200));
    let _hub = net.start_hub();
    let final2 = wait_final(&net.dir, &nodes[0], &id2);
    wait_until("locks to clear after the hub restart", Duration::from_secs(20), || {
        std::panic::catch_unwind(|| assert_consistent(&nodes)).is_ok()
    });
    eprintln!("after kill -9 of the payee: {final1}; after kill -9 of the hub: {final2}");
    assert_eq!(status(&nodes[0], &id)["status"], final1.as_str(), "status survives the hub restart");

    // Metrics.
    let metrics = http_get(net.metrics_port, "/metrics");
    assert!(metrics.contains("teepay_instances_started_total"), "{metrics}");
    assert!(metrics.contains("teepay_sync_height{chain=\"31337\"}"), "{metrics}");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// u1 posts an intent to the hub's board (GIVE/RECEIVE as `teepay swap propose` takes them)
/// and u2 accepts it; the swap succeeds.
fn swap_via_board(net: &Net, nodes: &[Node], give: &str, receive: &str) {
    let propose = ["swap", "propose", "--give", give, "--receive", receive, "--hub", &net.hub_api];
    let posted = ok(&[&propose[..], &["--node", &nodes[0].api]].concat());
    let id = posted["id"].as_u64().unwrap().to_string();
    let r = ok(&["swap", "accept", &id, "--hub", &net.hub_api, "--node", &nodes[2].api]);
    assert_eq!(r["status"], "succeeded", "{r}");
}

/// A command's output for people (no `--json`).
fn text(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run teepay");
    assert!(out.status.success(), "teepay {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn processes_on_sqlite() {
    scenario(|dir| format!("sqlite://{}", dir.join("hub.db").display()), "sqlite");
}

#[test]
fn processes_on_postgres() {
    let (guard, url) = match std::env::var("TEEPAY_PG_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let script = root().join("scripts/postgres");
            let dir =
                std::env::temp_dir().join(format!("teepay-e2e-postgres-cluster-{}", std::process::id()));
            let out = Command::new(&script).arg("start").arg(&dir).output().expect("run scripts/postgres");
            let url = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("Listening on ").map(str::to_string))
                .unwrap_or_else(|| {
                    panic!("could not start PostgreSQL: {}", String::from_utf8_lossy(&out.stderr))
                });
            (Some((script, dir)), url)
        }
    };
    let db = format!("teepay_e2e_{}", std::process::id());
    let psql = |sql: &str| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut c).await;
        });
    };
    psql(&format!("DROP DATABASE IF EXISTS {db}"));
    psql(&format!("CREATE DATABASE {db}"));
    let base = url.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    let result = std::panic::catch_unwind(|| scenario(|_| format!("{base}/{db}"), "pg"));
    if let Some((script, dir)) = guard {
        let _ = Command::new(script).arg("stop").arg(&dir).output();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Many `kill -9`s of a payment's payer, intermediary, payee or hub at varied moments right
/// after the payment starts, each followed by a restart: every payment must end and leave no lock.
/// A payment takes a few milliseconds from the hub's acceptance to its end, so the kill is
/// drawn within 10 ms of the pay command's start (which is accepted after about 3.5 ms):
/// before the PREPARE, between rounds, or just after. 60 rounds by default (about 1.3 s each);
/// more: `TEEPAY_SOAK_ROUNDS=400 cargo test -p teepay --test processes kill_restart_soak`
#[test]
fn kill_restart_soak() {
    let rounds: usize = std::env::var("TEEPAY_SOAK_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(60);
    let dir = std::env::temp_dir().join(format!("teepay-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_anvil, rpc) = anvil(31337);
    let d = ok(&["deploy", "--rpc", &rpc]);
    let chain =
        (rpc.clone(), 31337, d["contract"].as_str().unwrap().to_string(), d["block"].as_u64().unwrap());
    let net = Net {
        db: format!("sqlite://{}", dir.join("hub.db").display()),
        dir: dir.clone(),
        chains: vec![chain],
        hub_port: free_port(),
        hub_api: format!("http://127.0.0.1:{}", free_port()),
        metrics_port: free_port(),
        webhook: String::new(),
    };
    let mut hub = Some(net.start_hub());
    let mut nodes = net.start_nodes(["payer", "relay", "payee"]);
    for n in &nodes {
        ok(&["faucet", "--rpc", &rpc, "--to", &n.address, "--amount", &(5 * ETH).to_string()]);
    }
    wait_until("every enclave to register itself", Duration::from_secs(30), || {
        nodes.iter().all(|n| ok(&["info", "--node", &n.api])["chains"][0]["registered"] == true)
    });
    for (x, y) in [(0, 1), (1, 2)] {
        let deposit = ETH.to_string();
        let open =
            ["channel", "open", "--chain", "31337", "--peer", &nodes[y].address, "--deposit", &deposit];
        ok(&[&open[..], &["--node", &nodes[x].api]].concat());
    }
    wait_until("the hub to sync both channels", Duration::from_secs(20), || {
        ok(&["network", "--hub", &net.hub_api])["channels"].as_array().unwrap().len() == 2
    });
    let to = nodes[2].address.clone();
    let pay = ["pay", "--chain", "31337", "--to", &to, "--amount", "1000000", "--no-wait"];
    let (mut succeeded, mut refunded, mut not_started) = (0, 0, 0);
    // A small deterministic generator: each round kills at a different moment.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for round in 0..rounds {
        let victim = round % 4; // the payer, the relay, the payee, the hub in turn
        // The payment starts while the victim is killed: before its PREPARE, during the
        // rounds, or after, depending on the moment drawn.
        let args: Vec<String> =
            [&pay[..], &["--node", &nodes[0].api]].concat().iter().map(|a| a.to_string()).collect();
        let t0 = Instant::now();
        let paying = std::thread::spawn(move || {
            let r = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
            (r, t0.elapsed())
        });
        std::thread::sleep(Duration::from_micros(next(10_000)));
        let killed_at = t0.elapsed();
        match victim {
            3 => hub = None,                // SIGKILL
            _ => nodes[victim].proc = None, // SIGKILL
        }
        let (started, took) = paying.join().unwrap();
        // Down for up to 2.5 s: often past the PREPARE timeout (1.5 s), so the hub refunds
        // while the victim is away and must tell it on its return.
        std::thread::sleep(Duration::from_millis(next(2_500)));
        if victim == 3 {
            hub = Some(net.start_hub());
        } else {
            let (p, api, _) = net.start_node(nodes[victim].name, nodes[victim].port);
            (nodes[victim].proc, nodes[victim].api) = (Some(p), api);
        }
        match started {
            Ok(v) => match wait_final(&net.dir, &nodes[0], v["instance"].as_str().unwrap()).as_str() {
                "succeeded" => succeeded += 1,
                _ => refunded += 1,
            },
            // The payer or the hub killed before the payer answered: whether the payment
            // started is not known here; the lock check below and the final count cover it
            // either way.
            Err(_) if victim == 0 || victim == 3 => not_started += 1,
            Err(e) => panic!("round {round}: pay failed: {e}"),
        }
        wait_until("locks to clear after the restart", Duration::from_secs(20), || {
            std::panic::catch_unwind(|| assert_consistent(&nodes)).is_ok()
        });
        eprintln!(
            "round {round}: victim {victim} killed {killed_at:?} after the pay command started \
             (accepted after {took:?}); {succeeded} succeeded, {refunded} refunded, {not_started} not started"
        );
    }
    // Nothing created or lost: the payee's channel still holds its deposit, and the payee
    // holds exactly the payments that succeeded (plus any the killed payer started unseen).
    let listed = ok(&["channel", "list", "--node", &nodes[2].api]);
    let side = |k: &str| listed["channels"][0][k].as_str().unwrap().parse::<u128>().unwrap();
    assert_eq!(side("local") + side("remote"), ETH, "{listed}");
    let paid = side("local");
    assert_eq!(paid % 1_000_000, 0, "whole payments only: {paid}");
    let paid = (paid / 1_000_000) as usize;
    assert!((succeeded..=succeeded + not_started).contains(&paid), "{paid} paid, {succeeded} succeeded");
    drop((nodes, hub));
    let _ = std::fs::remove_dir_all(&dir);
}
