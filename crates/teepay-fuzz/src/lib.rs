//! teepay-fuzz: fuzzers that build and run on stable Rust (issue 14). Every decoder of bytes
//! that crosses a trust boundary — link handshake frames, wire messages, sealed blobs,
//! enclave requests, contract event logs, gRPC arguments — and both enclaves' entry points
//! are fed mutations of real protocol traffic: a three-hop payment and a four-party swap run
//! in the deterministic simulation, every message and sealed blob captured as a seed.
//!
//! Not coverage-guided (libFuzzer and AFL need nightly or extra tooling here): mutations start
//! from valid inputs, where the interesting paths are, and the two structure-aware targets
//! re-authenticate what they mutate (a batch MAC'd with the node's real session key, an ack
//! with the hub's), so the enclaves' item handlers see arbitrary *authentic* inputs — what a
//! compromised peer could send — not just inputs their authentication rejects.
//!
//! A target must never panic; whatever it returns is fine. A panicking input is saved (see
//! [`run`]) and reported.

mod corpus;
mod targets;

pub use corpus::Corpus;
pub use targets::{TARGETS, Target};

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// The workspace's SplitMix64 with a `usize` range: deterministic, so a run is reproduced by
/// its seed.
#[derive(Debug, Clone)]
pub struct Rng(teepay_types::rng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(teepay_types::rng::SplitMix64::new(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.0.below(n as u64) as usize }
    }
}

/// Values that tend to find bugs in length fields and amounts.
const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x20, 0x40];

/// One to four random edits of `seed` (bit flips, byte sets, inserts, deletes, truncation,
/// duplication, splices with `other`, interesting values, 4-byte length smashes).
pub fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                out.drain(i..i + n);
            }
            4 => out.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy = out[i..i + n].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, copy);
            }
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            8 if len >= 4 => {
                let i = rng.below(len - 3);
                let v: u32 = [0, 1, 0xffff_ffff, 0x7fff_ffff, 1 << 20, len as u32][rng.below(6)];
                out[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    out
}

/// What a run did per target.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    /// Inputs that got past decoding into the code under test.
    pub reached: u64,
    pub panics: Vec<PathBuf>,
    pub seconds: f64,
}

/// Runs `execs` mutated inputs through `target`. A panicking input is written to
/// `crash_dir/<target>-<n>.bin` (reproduce with `teepay-fuzz --replay <file>`).
pub fn run(target: &Target, corpus: &Corpus, execs: u64, seed: u64, crash_dir: &std::path::Path) -> Report {
    let mut state = (target.setup)(corpus);
    let seeds = (target.seeds)(corpus);
    assert!(!seeds.is_empty(), "target {} has seeds", target.name);
    let mut rng = Rng::new(seed ^ fnv(target.name));
    let started = std::time::Instant::now();
    let mut report = Report { target: target.name, ..Report::default() };
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..execs {
        let base = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let input = if rng.below(16) == 0 { base.clone() } else { mutate(&mut rng, base, other) };
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.exec)(&mut state, &input)));
        report.execs += 1;
        report.reached += u64::from(matches!(outcome, Ok(true)));
        if outcome.is_err() {
            let _ = std::fs::create_dir_all(crash_dir);
            let path = crash_dir.join(format!("{}-{}.bin", target.name, report.panics.len()));
            let _ = std::fs::write(&path, &input);
            report.panics.push(path);
            // A panic may leave the state half-changed: start from a fresh one.
            state = (target.setup)(corpus);
        }
    }
    std::panic::set_hook(quiet);
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn fnv(s: &str) -> u64 {
    fnv_bytes(s.as_bytes())
}

/// FNV-1a: turns an input into the seed of the edits a recipe makes.
pub(crate) fn fnv_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}
