//! A hub group of `teepay hub` processes for the process tests: replicas that reach each
//! other through loopback proxies the test controls, over one or more chains.

use super::{BIN, Proc, cli, spawn_logged};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A loopback TCP proxy to `target` that the test can cut (every connection through it is
/// closed, new ones are refused, bytes still held are dropped) and heal; it may hold what
/// `target` sends back for a while (a slow link).
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    pub fn to(target: u16) -> Proxy {
        Self::delaying(target, Duration::ZERO)
    }

    /// A proxy that holds every byte `target` sends back for `delay` before passing it on.
    pub fn delaying(target: u16, delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if flag.load(Relaxed) {
                    continue; // dropped: refused
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                for (from, to, hold) in [(&inbound, &outbound, Duration::ZERO), (&outbound, &inbound, delay)]
                {
                    let (mut from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let flag = flag.clone();
                    std::thread::spawn(move || pump(&mut from, to, &flag, hold));
                }
            }
        });
        Proxy { port, cut }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Relaxed);
    }
}

/// Copies `from` to `to` (each chunk `hold` later) until either closes or the proxy is cut
/// (then both are shut down and whatever is still held is dropped).
fn pump(from: &mut TcpStream, to: TcpStream, cut: &Arc<AtomicBool>, hold: Duration) {
    from.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer_cut = cut.clone();
    let writer_to = to.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut to = writer_to;
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if writer_cut.load(Relaxed) || to.write_all(&bytes).is_err() {
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        if cut.load(Relaxed) {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send((Instant::now() + hold, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    drop(tx);
    let _ = writer.join();
}

pub struct Replica {
    pub id: u64,
    pub link: u16,
    pub raft: u16,
    pub api: u16,
    pub proc: Option<Proc>,
}

pub struct Group {
    pub dir: PathBuf,
    /// (RPC URL, contract, deployment block) of every chain.
    pub chains: Vec<(String, String, u64)>,
    /// Extra `hub.toml` lines for every replica.
    pub hub_extra: String,
    pub prepare_timeout_ms: u64,
    pub replicas: Vec<Replica>,
    /// `proxies[i][j]`: how replica i reaches replica j.
    pub proxies: Vec<Vec<Option<Proxy>>>,
}

impl Group {
    pub fn chains_toml(&self) -> String {
        self.chains
            .iter()
            .map(|(rpc, contract, block)| {
                format!("[[chains]]\nrpc = \"{rpc}\"\ncontract = \"{contract}\"\nfrom_block = {block}\n")
            })
            .collect()
    }

    pub fn start(&mut self, i: usize) {
        // Replica i binds its own raft port and reaches every other through its proxy.
        let members: String = self
            .replicas
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let raft = if i == j { r.raft } else { self.proxies[i][j].as_ref().unwrap().port };
                format!(
                    "[[replicas]]\nid = {}\nlink = \"127.0.0.1:{}\"\nraft = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n",
                    r.id, r.link, raft, r.api
                )
            })
            .collect();
        let r = &self.replicas[i];
        let state = self.dir.join(format!("hub{}", r.id));
        let cfg = self.dir.join(format!("hub{}.toml", r.id));
        std::fs::write(
            &cfg,
            format!(
                "replica = {}\nbootstrap = {}\nstate_dir = \"{}\"\nprepare_timeout_ms = {}\n{}{}{}",
                r.id,
                r.id == 1,
                state.display(),
                self.prepare_timeout_ms,
                self.hub_extra,
                self.chains_toml(),
                members
            ),
        )
        .unwrap();
        let log = self.dir.join(format!("hub{}.log", r.id));
        let (p, _) = spawn_logged(Command::new(BIN).args(["hub", "--config"]).arg(&cfg), "hub ", Some(&log));
        self.replicas[i].proc = Some(p);
    }

    /// Cuts (or heals) every proxy to and from replica `i`.
    pub fn isolate(&self, i: usize, cut: bool) {
        for (a, row) in self.proxies.iter().enumerate() {
            for (b, p) in row.iter().enumerate() {
                if let Some(p) = p
                    && (a == i || b == i)
                {
                    p.set_cut(cut);
                }
            }
        }
    }

    /// The API of the replica that leads now (only the leader serves it).
    pub fn leader_api(&self) -> Option<(usize, String)> {
        self.replicas.iter().enumerate().filter(|(_, r)| r.proc.is_some()).find_map(|(i, r)| {
            let api = format!("http://127.0.0.1:{}", r.api);
            cli(&["network", "--hub", &api]).ok().map(|_| (i, api))
        })
    }

    /// A `teepay node` that knows every replica's link address (through `links`, e.g.
    /// proxies, when given).
    pub fn start_node(&self, name: &str, api_port: u16) -> (Proc, String, String) {
        let links: Vec<u16> = self.replicas.iter().map(|r| r.link).collect();
        self.start_node_via(name, api_port, &links)
    }

    pub fn start_node_via(&self, name: &str, api_port: u16, links: &[u16]) -> (Proc, String, String) {
        let cfg = self.dir.join(format!("{name}.toml"));
        let links: Vec<String> = links.iter().map(|port| format!("\"127.0.0.1:{port}\"")).collect();
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
            spawn_logged(Command::new(BIN).args(["node", "--config"]).arg(&cfg), "node ", Some(&log));
        let address = line.split_whitespace().nth(1).unwrap().to_string();
        (p, format!("http://127.0.0.1:{api_port}"), address)
    }
}

/// How a [`GroupNet`] is set up beyond its fixed shape.
pub struct NetOptions {
    /// Extra anvil arguments (e.g. `--block-time 1`).
    pub anvil: &'static [&'static str],
    /// Extra `teepay deploy` arguments (e.g. `--challenge-window 3`).
    pub deploy: &'static [&'static str],
    pub hub_extra: &'static str,
    pub prepare_timeout_ms: u64,
    /// u2 reaches every replica through a proxy that holds what the hub sends it this long
    /// (`GroupNet::slow` holds those proxies).
    pub slow_u2: Option<Duration>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions { anvil: &[], deploy: &[], hub_extra: "", prepare_timeout_ms: 1500, slow_u2: None }
    }
}

/// A channel of the net: which chain (0: A, 1: B), who opened it, who funded the other side.
pub struct NetChannel {
    pub id: String,
    pub chain: usize,
    pub opener: usize,
    pub peer: usize,
}

/// A hub group of three replicas (behind proxies the test controls), three nodes u1, mid
/// and u2 and two anvil chains, with funded channels of 1 ETH on each side: on chain A
/// u1 → mid → u2 (payments), on chain B u2 → mid → u1 (the other side of swaps).
pub struct GroupNet {
    pub dir: PathBuf,
    pub group: Group,
    pub nodes: Vec<(Option<Proc>, String, String)>,
    pub apis: Vec<String>,
    pub channels: Vec<NetChannel>,
    pub slow: Vec<Proxy>,
    _anvils: Vec<Proc>,
}

/// What the net's open channels hold in all.
pub const NET_TOTAL: u128 = 8 * super::ETH;

impl GroupNet {
    pub fn start(tag: &str, opts: NetOptions) -> GroupNet {
        use super::{ETH, anvil_with, free_port, ok, wait_until};
        let dir = std::env::temp_dir().join(format!("teepay-group-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut anvils = Vec::new();
        let mut chains = Vec::new();
        for id in [31337u64, 31338] {
            let (p, rpc) = anvil_with(id, opts.anvil);
            let mut args = vec!["deploy", "--rpc", &rpc];
            args.extend_from_slice(opts.deploy);
            let d = ok(&args);
            chains.push((
                rpc.clone(),
                d["contract"].as_str().unwrap().to_string(),
                d["block"].as_u64().unwrap(),
            ));
            anvils.push(p);
        }
        let replicas: Vec<Replica> = (1..=3)
            .map(|id| Replica { id, link: free_port(), raft: free_port(), api: free_port(), proc: None })
            .collect();
        let proxies =
            (0..3).map(|i| (0..3).map(|j| (i != j).then(|| Proxy::to(replicas[j].raft))).collect()).collect();
        let slow: Vec<Proxy> = match opts.slow_u2 {
            Some(hold) => replicas.iter().map(|r| Proxy::delaying(r.link, hold)).collect(),
            None => Vec::new(),
        };
        // The operators' key: every replica's enclave is admitted with it once all run.
        let key_file = dir.join("governance.key");
        let key = ok(&["group", "key", key_file.to_str().unwrap()]);
        let governance = key["address"].as_str().unwrap().to_string();
        let mut group = Group {
            dir: dir.clone(),
            chains,
            hub_extra: format!("governance = \"{governance}\"\n{}", opts.hub_extra),
            prepare_timeout_ms: opts.prepare_timeout_ms,
            replicas,
            proxies,
        };
        // Replica 1 creates the identity; 2 and 3 are provisioned by it as they start.
        for i in 0..3 {
            group.start(i);
        }
        wait_until("a leader to serve the API", Duration::from_secs(20), || group.leader_api().is_some());
        let config = dir.join("hub1.toml");
        let admitted = ok(&[
            "group",
            "admit",
            "--config",
            config.to_str().unwrap(),
            "--governance-key",
            key_file.to_str().unwrap(),
        ]);
        assert_eq!(admitted["members"].as_array().unwrap().len(), 3, "{admitted}");
        let slow_links: Vec<u16> = slow.iter().map(|p| p.port).collect();
        let nodes: Vec<(Option<Proc>, String, String)> = ["u1", "mid", "u2"]
            .into_iter()
            .map(|name| {
                let (p, api, address) = if name == "u2" && !slow_links.is_empty() {
                    group.start_node_via(name, free_port(), &slow_links)
                } else {
                    group.start_node(name, free_port())
                };
                (Some(p), api, address)
            })
            .collect();
        for (_, _, address) in &nodes {
            for (rpc, ..) in &group.chains {
                ok(&["faucet", "--rpc", rpc, "--to", address, "--amount", &(5 * ETH).to_string()]);
            }
        }
        let apis: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
        wait_until("every enclave to register itself on both chains", Duration::from_secs(30), || {
            apis.iter().all(|api| {
                ok(&["info", "--node", api])["chains"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["registered"] == true)
            })
        });
        let deposit = ETH.to_string();
        let mut channels = Vec::new();
        for (chain, opener, peer) in [(0, 0, 1), (0, 1, 2), (1, 2, 1), (1, 1, 0)] {
            let chain_id = ["31337", "31338"][chain];
            let r = ok(&[
                "channel",
                "open",
                "--chain",
                chain_id,
                "--peer",
                &nodes[peer].2,
                "--deposit",
                &deposit,
                "--node",
                &apis[opener],
            ]);
            let id = r["channel"].as_str().unwrap().to_string();
            wait_until("the peer to see the channel", Duration::from_secs(20), || {
                ok(&["channel", "list", "--node", &apis[peer]])["channels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["id"] == id.as_str())
            });
            ok(&["channel", "fund", "--channel", &id, "--amount", &deposit, "--node", &apis[peer]]);
            channels.push(NetChannel { id, chain, opener, peer });
        }
        wait_until("every deposit seen by every node and the leader", Duration::from_secs(30), || {
            let Some((_, hub)) = group.leader_api() else { return false };
            let map = ok(&["network", "--hub", &hub]);
            let funded =
                map["channels"].as_array().unwrap().iter().filter(|c| c["balance_b"] == deposit.as_str());
            funded.count() == 4 && consistent(&apis).is_ok_and(|t| t == NET_TOTAL)
        });
        GroupNet { dir, group, nodes, apis, channels, slow, _anvils: anvils }
    }

    /// What `node` holds in its open channels on `chain`, as its enclave sees them.
    pub fn holdings(&self, node: usize, chain: u64) -> u128 {
        super::ok(&["channel", "list", "--node", &self.apis[node]])["channels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["open"] == true && c["chain"] == chain)
            .map(|c| c["local"].as_str().unwrap().parse::<u128>().unwrap())
            .sum()
    }

    /// A swap posted by u1 (gives `give` on chain A, receives `receive` on chain B) and
    /// accepted by u2, on a thread of its own (it waits for an end a failover may delay).
    pub fn swap(
        &self,
        give: u128,
        receive: u128,
    ) -> std::thread::JoinHandle<Result<serde_json::Value, String>> {
        let (_, hub) = self.group.leader_api().expect("a leader");
        let u2 = self.nodes[2].2.clone();
        let (u1_api, u2_api) = (self.apis[0].clone(), self.apis[2].clone());
        std::thread::spawn(move || {
            let give = format!("31337:{give}:{u2}");
            let receive = format!("31338:{receive}:{u2}");
            let posted = cli(&[
                "swap",
                "propose",
                "--give",
                &give,
                "--receive",
                &receive,
                "--hub",
                &hub,
                "--node",
                &u1_api,
            ])?;
            let id = posted["id"].as_u64().unwrap().to_string();
            cli(&["swap", "accept", &id, "--hub", &hub, "--node", &u2_api])
        })
    }
}

impl Drop for GroupNet {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.0 = None;
        }
        for r in &mut self.group.replicas {
            r.proc = None;
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Every open channel's two parties agree and no locks remain; returns the total held in
/// open channels (a closed one was settled by the contract, whatever its parties' last views).
pub fn consistent(apis: &[String]) -> Result<u128, String> {
    let mut views = std::collections::BTreeMap::new();
    for api in apis {
        let list = cli(&["channel", "list", "--node", api])?;
        for c in list["channels"].as_array().unwrap().iter().filter(|c| c["open"] == true) {
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
