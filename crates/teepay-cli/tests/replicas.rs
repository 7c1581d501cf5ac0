//! A hub group of three `teepay hub` processes (issue 15), three `teepay node` daemons and an
//! anvil chain, every party an OS process. The leader is killed (`kill -9`) with payments in
//! flight: another replica takes the lead within seconds, every payment ends (succeeded or
//! refunded), both views of every channel agree, no lock is left and nothing is created or
//! lost; the old leader restarts and rejoins as a follower, and payments go on.

mod common;

use common::{ETH, Proc, anvil, cli, free_port, log_tails, ok, spawn_logged, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Replica {
    id: u64,
    link: u16,
    raft: u16,
    api: u16,
    proc: Option<Proc>,
}

struct Group {
    dir: PathBuf,
    rpc: String,
    contract: String,
    block: u64,
    replicas: Vec<Replica>,
}

impl Group {
    fn chains_toml(&self) -> String {
        format!(
            "[[chains]]\nrpc = \"{}\"\ncontract = \"{}\"\nfrom_block = {}\n",
            self.rpc, self.contract, self.block
        )
    }

    fn start(&mut self, i: usize) {
        let members: String = self
            .replicas
            .iter()
            .map(|r| {
                format!(
                    "[[replicas]]\nid = {}\nlink = \"127.0.0.1:{}\"\nraft = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n",
                    r.id, r.link, r.raft, r.api
                )
            })
            .collect();
        let r = &self.replicas[i];
        let state = self.dir.join(format!("hub{}", r.id));
        let cfg = self.dir.join(format!("hub{}.toml", r.id));
        std::fs::write(
            &cfg,
            format!(
                "replica = {}\nbootstrap = {}\nstate_dir = \"{}\"\nprepare_timeout_ms = 1500\n{}{}",
                r.id,
                r.id == 1,
                state.display(),
                self.chains_toml(),
                members
            ),
        )
        .unwrap();
        let log = self.dir.join(format!("hub{}.log", r.id));
        let (p, _) =
            spawn_logged(Command::new(common::BIN).args(["hub", "--config"]).arg(&cfg), "hub ", Some(&log));
        self.replicas[i].proc = Some(p);
    }

    /// The API of the replica that leads now (only the leader serves it).
    fn leader_api(&self) -> Option<(usize, String)> {
        self.replicas.iter().enumerate().filter(|(_, r)| r.proc.is_some()).find_map(|(i, r)| {
            let api = format!("http://127.0.0.1:{}", r.api);
            cli(&["network", "--hub", &api]).ok().map(|_| (i, api))
        })
    }

    fn start_node(&self, name: &str, api_port: u16) -> (Proc, String, String) {
        let cfg = self.dir.join(format!("{name}.toml"));
        let links: Vec<String> = self.replicas.iter().map(|r| format!("\"127.0.0.1:{}\"", r.link)).collect();
        std::fs::write(
            &cfg,
            format!(
                "hub = {}\nstandby_hubs = [{}]\napi = \"127.0.0.1:{api_port}\"\nstate_dir = \"{}\"\n{}",
                links[0],
                links[1..].join(", "),
                self.dir.join(name).display(),
                self.chains_toml()
            ),
        )
        .unwrap();
        let log = self.dir.join(format!("{name}.log"));
        let (p, line) =
            spawn_logged(Command::new(common::BIN).args(["node", "--config"]).arg(&cfg), "node ", Some(&log));
        let address = line.split_whitespace().nth(1).unwrap().to_string();
        (p, format!("http://127.0.0.1:{api_port}"), address)
    }
}

fn wait_final(dir: &Path, api: &str, id: &str) -> String {
    let start = Instant::now();
    loop {
        let last =
            cli(&["status", id, "--node", api]).map(|v| v["status"].as_str().unwrap_or("").to_string());
        if let Ok(s) = &last
            && (s == "succeeded" || s == "refunded")
        {
            return s.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "instance {id} did not finish in 60 s; last answer: {last:?}{}",
            log_tails(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every channel's two parties agree, no locks remain; returns the total held in channels.
fn consistent(apis: &[String]) -> Result<u128, String> {
    let mut views = std::collections::BTreeMap::new();
    for api in apis {
        let list = cli(&["channel", "list", "--node", api])?;
        for c in list["channels"].as_array().unwrap() {
            if c["locks"] != 0 {
                return Err(format!("locks left on {}", c["id"]));
            }
            let side = |k: &str| c[k].as_str().unwrap().parse::<u128>().unwrap();
            views
                .entry(c["id"].as_str().unwrap().to_string())
                .or_insert_with(Vec::new)
                .push((side("local"), side("remote")));
        }
    }
    let mut total = 0;
    for (id, v) in views {
        if v.len() != 2 || v[0] != (v[1].1, v[1].0) {
            return Err(format!("parties of {id} disagree: {v:?}"));
        }
        total += v[0].0 + v[0].1;
    }
    Ok(total)
}

#[test]
fn a_hub_group_survives_kill_9_of_its_leader_with_payments_in_flight() {
    let dir = std::env::temp_dir().join(format!("teepay-replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_anvil, rpc) = anvil(31337);
    let d = ok(&["deploy", "--rpc", &rpc]);
    let replicas = (1..=3)
        .map(|id| Replica { id, link: free_port(), raft: free_port(), api: free_port(), proc: None })
        .collect();
    let mut group = Group {
        dir: dir.clone(),
        rpc: rpc.clone(),
        contract: d["contract"].as_str().unwrap().to_string(),
        block: d["block"].as_u64().unwrap(),
        replicas,
    };
    // Replica 1 creates the identity; 2 and 3 are provisioned by it as they start.
    for i in 0..3 {
        group.start(i);
    }
    wait_until("a leader to serve the API", Duration::from_secs(20), || group.leader_api().is_some());

    let mut nodes: Vec<(Option<Proc>, String, String)> = ["u1", "mid", "u2"]
        .into_iter()
        .map(|name| {
            let (p, api, address) = group.start_node(name, free_port());
            (Some(p), api, address)
        })
        .collect();
    for (_, _, address) in &nodes {
        ok(&["faucet", "--rpc", &rpc, "--to", address, "--amount", &(5 * ETH).to_string()]);
    }
    let apis: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
    wait_until("every enclave to register itself", Duration::from_secs(30), || {
        apis.iter().all(|api| {
            ok(&["info", "--node", api])["chains"].as_array().unwrap().iter().all(|c| c["registered"] == true)
        })
    });
    let deposit = ETH.to_string();
    for (x, y) in [(0, 1), (1, 2)] {
        let r = ok(&[
            "channel",
            "open",
            "--chain",
            "31337",
            "--peer",
            &nodes[y].2,
            "--deposit",
            &deposit,
            "--node",
            &apis[x],
        ]);
        let id = r["channel"].as_str().unwrap().to_string();
        wait_until("the peer to see the channel", Duration::from_secs(20), || {
            ok(&["channel", "list", "--node", &apis[y]])["channels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id.as_str())
        });
        ok(&["channel", "fund", "--channel", &id, "--amount", &deposit, "--node", &apis[y]]);
    }
    wait_until("both deposits seen by every node and the leader", Duration::from_secs(30), || {
        let Some((_, hub)) = group.leader_api() else { return false };
        let map = ok(&["network", "--hub", &hub]);
        let funded =
            map["channels"].as_array().unwrap().iter().filter(|c| c["balance_b"] == deposit.as_str()).count();
        funded == 2 && consistent(&apis).is_ok_and(|t| t == 4 * ETH)
    });
    let to = nodes[2].2.clone();
    let amount = (ETH / 100).to_string();
    let pay = |wait: bool| {
        let mut args = vec!["pay", "--chain", "31337", "--to", &to, "--amount", &amount, "--node", &apis[0]];
        if !wait {
            args.push("--no-wait");
        }
        cli(&args)
    };
    let first = pay(true).expect("a payment through the group's leader");
    assert_eq!(first["status"], "succeeded", "{first}");

    // kill -9 of the leader with payments in flight.
    let (leader, _) = group.leader_api().unwrap();
    let mut started = Vec::new();
    for _ in 0..5 {
        if let Ok(v) = pay(false) {
            started.push(v["instance"].as_str().unwrap().to_string());
        }
    }
    assert!(!started.is_empty(), "payments started before the kill");
    group.replicas[leader].proc = None; // SIGKILL
    let killed = Instant::now();
    wait_until("another replica to lead", Duration::from_secs(20), || group.leader_api().is_some());
    let failover = killed.elapsed();
    let (new_leader, _) = group.leader_api().unwrap();
    assert_ne!(new_leader, leader);
    eprintln!(
        "failover: replica {} leads {failover:?} after kill -9 of replica {}",
        new_leader + 1,
        leader + 1
    );
    let outcomes: Vec<String> = started.iter().map(|id| wait_final(&dir, &apis[0], id)).collect();
    eprintln!("payments in flight at the kill ended: {outcomes:?}");
    wait_until("locks to clear and views to agree", Duration::from_secs(30), || {
        consistent(&apis).is_ok_and(|t| t == 4 * ETH)
    });

    // The old leader restarts from its state and follows; payments go on.
    group.start(leader);
    let again = pay(true).expect("a payment after the old leader rejoined");
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_ne!(group.leader_api().unwrap().0, leader, "the restarted replica follows");
    assert_eq!(consistent(&apis), Ok(4 * ETH), "nothing created or lost");
    for n in &mut nodes {
        n.0 = None;
    }
    for r in &mut group.replicas {
        r.proc = None;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
