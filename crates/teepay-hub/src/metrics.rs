//! The hub's Prometheus metrics, kept in atomics so the executor task, the sync tasks and the
//! `/metrics` endpoint share them without locks. Rendered in the Prometheus text format by
//! hand: a handful of series does not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A histogram with fixed upper bounds (cumulative buckets are computed when rendering).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Relaxed) as f64 / 1e6
    }

    /// Per-bucket (not cumulative) counts with each bucket's upper bound (`inf` last).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {}", self.count.load(Relaxed));
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub refunded: AtomicU64,
    pub refused: AtomicU64,
    /// Seconds from start to final status.
    pub latency: Histogram,
    /// Items per signed batch sent to a node.
    pub batch_size: Histogram,
    pub connected_nodes: AtomicU64,
    /// Per configured chain: (chain id, last synced block + 1, chain head).
    pub sync: Vec<(u64, AtomicU64, AtomicU64)>,
}

const LATENCY_BOUNDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

impl Metrics {
    /// Waits until the chain sync of `chain` has applied `block`.
    pub async fn synced(&self, chain: teepay_types::ChainId, block: u64) {
        loop {
            let done = self
                .sync
                .iter()
                .any(|(c, next, _)| *c == chain.0 && next.load(std::sync::atomic::Ordering::Relaxed) > block);
            if done {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn new(chains: &[u64]) -> Self {
        Metrics {
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            refunded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BOUNDS),
            batch_size: Histogram::new(BATCH_BOUNDS),
            connected_nodes: AtomicU64::new(0),
            sync: chains.iter().map(|c| (*c, AtomicU64::new(0), AtomicU64::new(0))).collect(),
        }
    }

    pub fn set_sync(&self, chain: u64, next_block: u64, head: u64) {
        if let Some((_, next, h)) = self.sync.iter().find(|(c, _, _)| *c == chain) {
            next.store(next_block, Relaxed);
            h.store(head, Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            ("teepay_instances_started_total", "Payments and swaps started.", &self.started),
            ("teepay_instances_succeeded_total", "Payments and swaps that applied.", &self.succeeded),
            ("teepay_instances_refunded_total", "Payments and swaps refunded.", &self.refunded),
            (
                "teepay_requests_refused_total",
                "Requests refused before starting (no route, bad order…).",
                &self.refused,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP teepay_connected_nodes Nodes with a live link.\n# TYPE teepay_connected_nodes gauge\nteepay_connected_nodes {}",
            self.connected_nodes.load(Relaxed)
        );
        self.latency.render(&mut out, "teepay_instance_latency_seconds", "Time from start to final status.");
        self.batch_size.render(&mut out, "teepay_batch_items", "Round messages per signed batch.");
        let _ = writeln!(
            out,
            "# HELP teepay_sync_height Next block to apply, per chain.\n# TYPE teepay_sync_height gauge"
        );
        for (chain, next, _) in &self.sync {
            let _ = writeln!(out, "teepay_sync_height{{chain=\"{chain}\"}} {}", next.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP teepay_chain_head Chain head seen by sync.\n# TYPE teepay_chain_head gauge"
        );
        for (chain, _, head) in &self.sync {
            let _ = writeln!(out, "teepay_chain_head{{chain=\"{chain}\"}} {}", head.load(Relaxed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::new(&[31337]);
        m.latency.observe(0.0007);
        m.latency.observe(0.3);
        m.latency.observe(99.0);
        m.started.fetch_add(3, Relaxed);
        m.set_sync(31337, 12, 14);
        let text = m.render();
        assert!(text.contains("teepay_instances_started_total 3"));
        assert!(text.contains("teepay_instance_latency_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("teepay_instance_latency_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("teepay_instance_latency_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("teepay_instance_latency_seconds_count 3"));
        assert!(text.contains("teepay_sync_height{chain=\"31337\"} 12"));
    }
}
