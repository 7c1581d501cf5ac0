//! A hub group of three `teepay hub` processes (issue 15), three `teepay node` daemons and an
//! anvil chain, every party an OS process; the replicas reach each other only through
//! loopback proxies the test controls (one per direction). Scenarios:
//! - `kill -9` of the leader with payments in flight: another replica leads within seconds,
//!   every payment ends, both views of every channel agree, no lock is left, nothing is created
//!   or lost, and the old leader rejoins as a follower;
//! - the leader cut off from the other replicas: it stops driving nodes, the majority elects a
//!   leader and payments go on; after healing the old leader follows;
//! - two of three replicas down: nothing is decided, a stuck payment can still be ejected
//!   on-chain, and once one replica is back every payment in flight ends.

mod common;

use common::group::{GroupNet, NET_TOTAL, NetOptions, consistent};
use common::{ETH, cli, log_tails, ok, wait_until};
use std::path::Path;
use std::time::{Duration, Instant};

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

/// What every open channel holds in all: four channels of 1 ETH on each side.
const TOTAL: u128 = NET_TOTAL;

/// The replicas' net: a [`GroupNet`] with the default settings, and payments over it.
trait Net {
    fn pay_connected(&self) -> Result<serde_json::Value, String>;
    fn pay(&self, wait: bool) -> Result<serde_json::Value, String>;
}

fn start(tag: &str) -> GroupNet {
    GroupNet::start(&format!("replicas-{tag}"), NetOptions::default())
}

impl Net for GroupNet {
    /// [`Net::pay`] once u1 has (re)connected to whichever replica leads.
    fn pay_connected(&self) -> Result<serde_json::Value, String> {
        let start = Instant::now();
        loop {
            match self.pay(true) {
                Err(e) if e.contains("not connected") && start.elapsed() < Duration::from_secs(15) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// u1 pays u2 0.01 ETH through mid.
    fn pay(&self, wait: bool) -> Result<serde_json::Value, String> {
        let amount = (ETH / 100).to_string();
        let mut args = vec![
            "pay",
            "--chain",
            "31337",
            "--to",
            &self.nodes[2].2,
            "--amount",
            &amount,
            "--node",
            &self.apis[0],
        ];
        if !wait {
            args.push("--no-wait");
        }
        cli(&args)
    }
}

#[test]
fn a_hub_group_survives_kill_9_of_its_leader_with_payments_and_swaps_in_flight() {
    let mut net = start("kill");
    let first = net.pay(true).expect("a payment through the group's leader");
    assert_eq!(first["status"], "succeeded", "{first}");
    // A follower's client API says where the leader's is.
    let (leader, _) = net.group.leader_api().unwrap();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let redirect =
        cli(&["network", "--hub", &format!("http://127.0.0.1:{}", net.group.replicas[follower].api)])
            .expect_err("a follower does not serve the map");
    let leader_api = format!("http://127.0.0.1:{}", net.group.replicas[leader].api);
    assert!(redirect.contains(&leader_api), "{redirect}");
    // A follower's node port names the leader's (a node dials it next).
    let mut port = std::net::TcpStream::connect(("127.0.0.1", net.group.replicas[follower].link)).unwrap();
    port.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut len = [0u8; 4];
    std::io::Read::read_exact(&mut port, &mut len).unwrap();
    let mut hint = vec![0u8; u32::from_be_bytes(len) as usize];
    std::io::Read::read_exact(&mut port, &mut hint).unwrap();
    let leader_link = format!("127.0.0.1:{}", net.group.replicas[leader].link);
    assert_eq!(String::from_utf8_lossy(&hint), format!("teepay/follower/v1:{leader_link}"));
    // Every replica's enclave is a member (admitted with the governance key), and holds
    // what the leader released; a key other than the governance key admits nobody.
    let config = net.dir.join("hub1.toml");
    let config = config.to_str().unwrap();
    let shown = ok(&["group", "show", "--config", config]);
    let replicas = shown["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{shown}");
    for r in replicas {
        let members = r["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "{shown}");
        assert!(members.contains(&r["member"]), "every replica is admitted: {shown}");
    }
    let stranger = net.dir.join("stranger.key");
    ok(&["group", "key", stranger.to_str().unwrap()]);
    let refused =
        cli(&["group", "admit", "--config", config, "--governance-key", stranger.to_str().unwrap()])
            .expect_err("only the governance key admits members");
    assert!(refused.contains("is not this group's governance key"), "{refused}");

    // kill -9 of the leader with swaps (each with amounts of its own) and payments in flight.
    let swaps = [(ETH / 20, ETH / 25), (ETH / 32, ETH / 64)];
    let started: Vec<String> = (0..5)
        .filter_map(|_| net.pay(false).ok())
        .map(|v| v["instance"].as_str().unwrap().to_string())
        .collect();
    assert!(!started.is_empty(), "payments started before the kill");
    let swap_threads: Vec<_> = swaps.iter().map(|&(give, receive)| net.swap(give, receive)).collect();
    // The kill lands once a swap holds a lock at u1 (or its threads are done).
    let locked_b = || {
        ok(&["channel", "list", "--node", &net.apis[0]])["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["chain"] == 31338 && c["locks"] != 0)
    };
    let poll = Instant::now();
    let caught = loop {
        if locked_b() {
            break true;
        }
        if swap_threads.iter().all(|t| t.is_finished()) || poll.elapsed() > Duration::from_secs(5) {
            break false;
        }
    };
    eprintln!("kill with a swap holding a lock at u1: {caught}");
    net.group.replicas[leader].proc = None; // SIGKILL
    let killed = Instant::now();
    wait_until("another replica to lead", Duration::from_secs(20), || net.group.leader_api().is_some());
    let failover = killed.elapsed();
    let (new_leader, _) = net.group.leader_api().unwrap();
    assert_ne!(new_leader, leader);
    eprintln!(
        "failover: replica {} leads {failover:?} after kill -9 of replica {}",
        new_leader + 1,
        leader + 1
    );
    let outcomes: Vec<String> = started.iter().map(|id| wait_final(&net.dir, &net.apis[0], id)).collect();
    eprintln!("payments in flight at the kill ended: {outcomes:?}");
    let swap_answers: Vec<_> = swap_threads.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("swaps in flight at the kill: {swap_answers:?}");
    wait_until("locks to clear and views to agree", Duration::from_secs(30), || {
        consistent(&net.apis).is_ok_and(|t| t == TOTAL)
    });

    // The old leader restarts from its state and follows; payments go on.
    net.group.start(leader);
    let again = net.pay_connected().expect("a payment after the old leader rejoined");
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_ne!(net.group.leader_api().unwrap().0, leader, "the restarted replica follows");
    assert_eq!(consistent(&net.apis), Ok(TOTAL), "nothing created or lost");

    // Each swap ended one way on both chains. Chain B carries only swaps: what u1 gained
    // there says which applied; chain A must show exactly those swaps' gives (plus the
    // payments that succeeded, 0.01 ETH each, no fees).
    let paid = (2 + outcomes.iter().filter(|o| *o == "succeeded").count()) as u128 * (ETH / 100);
    let gained_b = net.holdings(0, 31338) - ETH;
    let applied: Vec<usize> = (0..4usize)
        .map(|mask| (0..2).filter(|i| mask & (1 << i) != 0).collect::<Vec<_>>())
        .find(|set| set.iter().map(|&i| swaps[i].1).sum::<u128>() == gained_b)
        .unwrap_or_else(|| panic!("u1 gained {gained_b} on chain B: no set of swaps gives that"));
    let gives: u128 = applied.iter().map(|&i| swaps[i].0).sum();
    assert_eq!(net.holdings(2, 31337), ETH + paid + gives, "u2 on chain A: payments and applied swaps");
    assert_eq!(net.holdings(0, 31337), ETH - paid - gives, "u1 on chain A");
    assert_eq!(net.holdings(2, 31338), ETH - gained_b, "u2 on chain B");
    eprintln!("swaps applied on both chains: {applied:?} of {}", swaps.len());
}

#[test]
fn a_leader_cut_off_from_the_group_stops_and_the_majority_goes_on() {
    let net = start("partition");
    assert_eq!(net.pay(true).unwrap()["status"], "succeeded");
    let (leader, _) = net.group.leader_api().unwrap();
    net.group.isolate(leader, true);
    let cut = Instant::now();
    wait_until("the majority to elect a leader and the cut-off one to stop", Duration::from_secs(20), || {
        net.group.leader_api().is_some_and(|(l, _)| l != leader)
    });
    eprintln!("partition: a new leader serves {:?} after the cut", cut.elapsed());
    let old_api = format!("http://127.0.0.1:{}", net.group.replicas[leader].api);
    wait_until("the cut-off replica to close its API", Duration::from_secs(10), || {
        cli(&["network", "--hub", &old_api]).is_err()
    });
    let during = net.pay_connected().expect("a payment through the majority's leader");
    assert_eq!(during["status"], "succeeded", "{during}");

    net.group.isolate(leader, false);
    std::thread::sleep(Duration::from_secs(2));
    let after = net.pay_connected().expect("a payment after healing");
    assert_eq!(after["status"], "succeeded", "{after}");
    assert_ne!(net.group.leader_api().unwrap().0, leader, "the healed replica follows");
    assert_eq!(consistent(&net.apis), Ok(TOTAL), "nothing created or lost");
}

#[test]
fn with_two_of_three_down_nothing_is_decided_and_all_ends_once_one_returns() {
    let mut net = start("minority");
    assert_eq!(net.pay(true).unwrap()["status"], "succeeded");
    let (leader, _) = net.group.leader_api().unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // Payments in flight when the majority goes: their next flush can never commit.
    let started: Vec<String> = (0..3)
        .filter_map(|_| net.pay(false).ok())
        .map(|v| v["instance"].as_str().unwrap().to_string())
        .collect();
    for f in &followers {
        net.group.replicas[*f].proc = None; // SIGKILL
    }
    wait_until("the leader without a majority to stop", Duration::from_secs(10), || {
        net.group.leader_api().is_none()
    });
    // Nothing can be decided now: a payment cannot even start.
    assert!(net.pay(false).is_err(), "a payment started without a majority");
    std::thread::sleep(Duration::from_secs(2));
    assert!(net.group.leader_api().is_none(), "no replica leads without a majority");
    // A node holding a stuck payment's lock still has its recourse: it ejects the channel.
    let mid_channels = ok(&["channel", "list", "--node", &net.apis[1]]);
    let stuck = mid_channels["channels"].as_array().unwrap().iter().find(|c| c["locks"] != 0).cloned();
    let ejected = stuck.is_some();
    if let Some(c) = stuck {
        let id = c["id"].as_str().unwrap();
        ok(&["channel", "close", "--channel", id, "--node", &net.apis[1]]);
        eprintln!("mid ejected {id} with {} lock(s) while no replica led", c["locks"]);
    }

    net.group.start(followers[0]);
    wait_until("a leader once a majority is back", Duration::from_secs(20), || {
        net.group.leader_api().is_some()
    });
    let outcomes: Vec<String> = started.iter().map(|id| wait_final(&net.dir, &net.apis[0], id)).collect();
    eprintln!("payments in flight when the majority went ended: {outcomes:?}");
    let open_total = if ejected { TOTAL - 2 * ETH } else { TOTAL };
    let start = Instant::now();
    loop {
        match consistent(&net.apis) {
            Ok(t) if t == open_total => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(30),
                "locks did not clear or views disagree: {other:?}; channels: {:?}{}",
                net.apis.iter().map(|a| cli(&["channel", "list", "--node", a])).collect::<Vec<_>>(),
                log_tails(&net.dir)
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !ejected {
        let after = net.pay_connected().expect("a payment once a majority is back");
        assert_eq!(after["status"], "succeeded", "{after}");
        assert_eq!(consistent(&net.apis), Ok(TOTAL), "nothing created or lost");
    }
}
