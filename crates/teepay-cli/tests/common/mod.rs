//! Helpers shared by the tests that run every party as an OS process.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_teepay");
pub const ETH: u128 = 1_000_000_000_000_000_000;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A child process killed (SIGKILL) and reaped on drop, also on panic.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns and returns the first stdout line starting with `prefix` (the rest is drained).
pub fn spawn_until(cmd: &mut Command, prefix: &str) -> (Proc, String) {
    spawn_logged(cmd, prefix, None)
}

/// [`spawn_until`] with the daemon's logs (at debug level) appended to `log`, for the
/// failure message of a test that waited in vain.
pub fn spawn_logged(cmd: &mut Command, prefix: &str, log: Option<&Path>) -> (Proc, String) {
    let stderr = match log {
        Some(path) => {
            cmd.env("RUST_LOG", "info,teepay_hub=debug,teepay_node=debug,teepay_link=debug");
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file");
            Stdio::from(file)
        }
        None => Stdio::inherit(),
    };
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut found = None;
    for line in lines.by_ref() {
        let line = line.expect("output");
        if line.starts_with(prefix) {
            found = Some(line);
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let line = found.unwrap_or_else(|| panic!("process exited before printing {prefix:?}"));
    (Proc(child), line)
}

pub fn anvil(chain_id: u64) -> (Proc, String) {
    anvil_with(chain_id, &[])
}

/// An anvil with extra arguments (e.g. `--block-time 1`: a block every second, as a live
/// chain makes them, so chain time passes with no transaction).
pub fn anvil_with(chain_id: u64, extra: &[&str]) -> (Proc, String) {
    let bin = root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(bin.exists(), "anvil is not installed at {}: run `npm ci`", bin.display());
    let (p, line) = spawn_until(
        Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", "0", "--chain-id", &chain_id.to_string()])
            .args(extra),
        "Listening on ",
    );
    (p, format!("http://{}", line.trim_start_matches("Listening on ").trim()))
}

/// A port nothing listens on, below Linux's ephemeral range (32768–60999): a port taken from
/// that range could be handed to an outgoing connection (a daemon dialing its chain) before
/// the daemon it was meant for binds it. Each test process walks its own stretch.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 120) as u16 * 100;
    for _ in 0..10_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = if port > 32_000 { port - 12_000 } else { port };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// Runs the CLI; Ok(json) on exit 0, Err(stderr) otherwise.
pub fn cli(args: &[&str]) -> Result<Value, String> {
    let out = Command::new(BIN).args(args).arg("--json").output().expect("run teepay");
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or(Value::Null))
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)))
    }
}

pub fn ok(args: &[&str]) -> Value {
    cli(args).unwrap_or_else(|e| panic!("teepay {args:?} failed: {e}"))
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of every daemon log in `dir` (what a failure message shows).
pub fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    for path in logs {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n--- {} (last 80 of {} lines)\n", path.display(), lines.len()));
        for line in &lines[lines.len().saturating_sub(80)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

pub mod group;
