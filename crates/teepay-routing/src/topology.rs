//! Network topologies for tests and benchmarks: the real Lightning Network snapshot (parsed
//! from its CSV text; the caller reads the files) and synthetic scale-free graphs
//! (Barabási–Albert, deterministic from a seed). Nodes are indices; the caller maps them to
//! addresses (the bench maps them to its nodes' enclave addresses).

use crate::graph::ChannelInfo;
use std::collections::HashMap;
pub use teepay_types::rng::SplitMix64;
use teepay_types::{Address, Amount, ChannelId, FeePolicy};

/// One channel between node indices `a` and `b`, with each side's balance and forwarding fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyChannel {
    pub a: u32,
    pub b: u32,
    pub balance_a: u128,
    pub balance_b: u128,
    pub fee_a: FeePolicy,
    pub fee_b: FeePolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub nodes: u32,
    pub channels: Vec<TopologyChannel>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("{file} line {line}: {reason}")]
    Malformed { file: &'static str, line: usize, reason: String },
    #[error("{file}: missing column {column}")]
    MissingColumn { file: &'static str, column: &'static str },
}

/// A stable address for node index `i` (used where no real key stands behind a node).
pub fn node_address(i: u32) -> Address {
    let mut a = [0u8; 20];
    a[0] = 0x7e;
    a[16..].copy_from_slice(&i.to_be_bytes());
    Address(a)
}

/// A stable channel id for channel index `i` of a topology.
pub fn channel_id(i: u32) -> ChannelId {
    let mut c = [0u8; 32];
    c[0] = 0xc4;
    c[28..].copy_from_slice(&i.to_be_bytes());
    ChannelId(c)
}

impl Topology {
    /// The channels as the router takes them, with node `i` at `address(i)`.
    pub fn channel_infos(&self, address: impl Fn(u32) -> Address) -> Vec<ChannelInfo> {
        self.channels
            .iter()
            .enumerate()
            .map(|(i, c)| ChannelInfo {
                id: channel_id(i as u32),
                a: address(c.a),
                b: address(c.b),
                balance_a: Amount(c.balance_a),
                balance_b: Amount(c.balance_b),
                fee_a: c.fee_a,
                fee_b: c.fee_b,
            })
            .collect()
    }

    /// The Lightning Network snapshot of `../shared/data/ln-graph-2020` (CLoTH format): the
    /// text of `channels.csv` and `edges.csv`. Amounts stay in millisatoshi. Channels whose two
    /// ends are the same node, or whose edges disagree with the channel row, are rejected as
    /// malformed rather than silently dropped.
    pub fn lightning_csv(channels_csv: &str, edges_csv: &str) -> Result<Self, TopologyError> {
        struct Edge {
            from: u32,
            to: u32,
            balance: u128,
            fee: FeePolicy,
        }
        let mut edges: HashMap<u64, Edge> = HashMap::new();
        for (line, row) in rows(
            "edges.csv",
            edges_csv,
            &["id", "from_node_id", "to_node_id", "balance", "fee_base", "fee_proportional"],
        )? {
            let f = |i: usize| field("edges.csv", line, &row, i);
            let ppm = f(5)?;
            edges.insert(
                f(0)? as u64,
                Edge {
                    from: to_u32("edges.csv", line, f(1)?)?,
                    to: to_u32("edges.csv", line, f(2)?)?,
                    balance: f(3)?,
                    fee: FeePolicy {
                        base: Amount(f(4)?),
                        ppm: u32::try_from(ppm)
                            .map_err(|_| malformed("edges.csv", line, "fee_proportional"))?,
                    },
                },
            );
        }
        let mut topo = Topology::default();
        for (line, row) in
            rows("channels.csv", channels_csv, &["edge1_id", "edge2_id", "node1_id", "node2_id"])?
        {
            let f = |i: usize| field("channels.csv", line, &row, i);
            let (a, b) = (to_u32("channels.csv", line, f(2)?)?, to_u32("channels.csv", line, f(3)?)?);
            let e1 = edges.get(&(f(0)? as u64)).ok_or_else(|| malformed("channels.csv", line, "edge1_id"))?;
            let e2 = edges.get(&(f(1)? as u64)).ok_or_else(|| malformed("channels.csv", line, "edge2_id"))?;
            if a == b || e1.from != a || e1.to != b || e2.from != b || e2.to != a {
                return Err(malformed("channels.csv", line, "edges do not match the channel's nodes"));
            }
            topo.nodes = topo.nodes.max(a.max(b) + 1);
            topo.channels.push(TopologyChannel {
                a,
                b,
                balance_a: e1.balance,
                balance_b: e2.balance,
                fee_a: e1.fee,
                fee_b: e2.fee,
            });
        }
        Ok(topo)
    }

    /// A Barabási–Albert scale-free graph: each new node opens `links` channels to distinct
    /// earlier nodes chosen with probability proportional to their degree (the first
    /// `links + 1` nodes form a clique). Both sides of every channel get `balance`; fees
    /// are `fee`. Deterministic in `seed`.
    pub fn scale_free(nodes: u32, links: u32, balance: u128, fee: FeePolicy, seed: u64) -> Self {
        let links = links.max(1);
        let mut rng = SplitMix64::new(seed);
        let mut topo = Topology { nodes, channels: Vec::new() };
        // Every channel end, once per channel: sampling it uniformly is degree-proportional.
        let mut ends: Vec<u32> = Vec::new();
        let add = |topo: &mut Topology, ends: &mut Vec<u32>, a: u32, b: u32| {
            topo.channels.push(TopologyChannel {
                a,
                b,
                balance_a: balance,
                balance_b: balance,
                fee_a: fee,
                fee_b: fee,
            });
            ends.push(a);
            ends.push(b);
        };
        let clique = (links + 1).min(nodes);
        for a in 0..clique {
            for b in a + 1..clique {
                add(&mut topo, &mut ends, a, b);
            }
        }
        let mut picked = Vec::with_capacity(links as usize);
        for new in clique..nodes {
            picked.clear();
            while picked.len() < links as usize {
                let t = ends[(rng.below(ends.len() as u64)) as usize];
                if !picked.contains(&t) {
                    picked.push(t);
                }
            }
            for &t in &picked {
                add(&mut topo, &mut ends, t, new);
            }
        }
        topo
    }
}

fn malformed(file: &'static str, line: usize, reason: &str) -> TopologyError {
    TopologyError::Malformed { file, line, reason: reason.to_string() }
}

fn to_u32(file: &'static str, line: usize, v: u128) -> Result<u32, TopologyError> {
    u32::try_from(v).map_err(|_| malformed(file, line, "node id out of range"))
}

fn field(file: &'static str, line: usize, row: &[&str], i: usize) -> Result<u128, TopologyError> {
    row[i].trim().parse::<u128>().map_err(|_| malformed(file, line, &format!("not a number: {:?}", row[i])))
}

/// Data rows (1-based line numbers) with the named columns picked out, in `wanted` order.
fn rows<'a>(
    file: &'static str,
    text: &'a str,
    wanted: &[&'static str],
) -> Result<impl Iterator<Item = (usize, Vec<&'a str>)> + 'a, TopologyError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> =
        lines.next().map(|(_, h)| h.split(',').map(str::trim).collect()).unwrap_or_default();
    let mut columns = Vec::with_capacity(wanted.len());
    for w in wanted {
        columns.push(
            header.iter().position(|h| h == w).ok_or(TopologyError::MissingColumn { file, column: w })?,
        );
    }
    let width = header.len();
    Ok(lines.filter(|(_, l)| !l.trim().is_empty()).map(move |(i, l)| {
        let cells: Vec<&str> = l.split(',').collect();
        let picked = columns.iter().map(|&c| if cells.len() == width { cells[c] } else { "" }).collect();
        (i + 1, picked)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNELS: &str = "id,edge1_id,edge2_id,node1_id,node2_id,capacity\n0,0,1,0,1,50\n1,2,3,2,1,20\n";
    const EDGES: &str = "id,channel_id,counter_edge_id,from_node_id,to_node_id,balance,fee_base,fee_proportional,min_htlc,timelock\n\
        0,0,1,0,1,30,1000,1,1000,144\n1,0,0,1,0,20,1000,1,1000,144\n\
        2,1,3,2,1,5,0,10,1,40\n3,1,2,1,2,15,7,0,1,40\n";

    #[test]
    fn parses_the_cloth_format() {
        let t = Topology::lightning_csv(CHANNELS, EDGES).unwrap();
        assert_eq!(t.nodes, 3);
        assert_eq!(
            t.channels[1],
            TopologyChannel {
                a: 2,
                b: 1,
                balance_a: 5,
                balance_b: 15,
                fee_a: FeePolicy { base: Amount(0), ppm: 10 },
                fee_b: FeePolicy { base: Amount(7), ppm: 0 },
            }
        );
    }

    #[test]
    fn rejects_malformed_rows() {
        let bad_number = EDGES.replace("2,1,3,2,1,5,", "2,1,3,2,1,x,");
        assert!(matches!(
            Topology::lightning_csv(CHANNELS, &bad_number),
            Err(TopologyError::Malformed { file: "edges.csv", line: 4, .. })
        ));
        let swapped = CHANNELS.replace("1,2,3,2,1,20", "1,3,2,2,1,20");
        assert!(matches!(
            Topology::lightning_csv(&swapped, EDGES),
            Err(TopologyError::Malformed { line: 3, .. })
        ));
        let short = EDGES.replace("1,0,0,1,0,20,1000,1,1000,144", "1,0,0,1,0,20");
        assert!(Topology::lightning_csv(CHANNELS, &short).is_err());
        assert!(matches!(
            Topology::lightning_csv("id,x\n", EDGES),
            Err(TopologyError::MissingColumn { file: "channels.csv", .. })
        ));
    }

    #[test]
    fn scale_free_is_deterministic_connected_and_skewed() {
        let fee = FeePolicy { base: Amount(0), ppm: 0 };
        let t = Topology::scale_free(1_000, 2, 100, fee, 7);
        assert_eq!(t, Topology::scale_free(1_000, 2, 100, fee, 7));
        assert_eq!(t.channels.len(), 3 + 997 * 2);
        let mut degree = vec![0u32; 1_000];
        for c in &t.channels {
            assert_ne!(c.a, c.b);
            degree[c.a as usize] += 1;
            degree[c.b as usize] += 1;
        }
        assert!(degree.iter().all(|d| *d >= 2), "every node is connected");
        // Preferential attachment makes hubs: the best-connected node has far more than the mean.
        assert!(*degree.iter().max().unwrap() > 10 * 4);
    }
}
