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
