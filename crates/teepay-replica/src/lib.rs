//! Hub replication (DESIGN §10): 2f+1 hub replicas form one Raft group on openraft; the
//! replicated log carries the hub enclave's sealed deltas, committed on a majority before any
//! message of their flush leaves the leader, and replayed by followers into their own
//! enclave (a hot standby).
//!
//! This crate is the consensus layer only, with the three seams openraft asks for:
//! - [`log_store::FileLogStore`]: the Raft log and vote, durable in a directory (fsync before
//!   openraft is told an entry is stored; a torn last record is cut at open);
//! - [`state_machine::Replayed`]: committed entries handed, in order and once, to an
//!   [`Apply`] implementation (the hub's enclave in production, a recorder in tests), with
//!   snapshots durable beside the log so the log can be purged;
//! - [`network`]: RPCs between replicas over TCP, length-prefixed JSON frames with a size
//!   cap read before any allocation.
//!
//! The executor never sees Raft: it flushes as today, and the flush is released once
//! [`Raft::client_write`] has committed its delta.

// openraft's traits fix their error types (`StorageError`, `RPCError`: 200+ bytes); the
// helpers here return them as the traits do.
#![allow(clippy::result_large_err)]

use serde::{Deserialize, Serialize};
// openraft's default snapshot type, `Cursor<Vec<u8>>`, is named unqualified by its macro.
use std::io::Cursor;

pub mod log_store;
pub mod network;
pub mod state_machine;

pub use openraft;

/// A replica's id in the group (`[[replicas]] id` in hub.toml).
pub type ReplicaId = u64;

/// One replicated log entry: a sealed delta of the hub enclave (opaque here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta(#[serde(with = "hex::serde")] pub Vec<u8>);

/// What applying an entry answers the writer: the log index it was applied at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub u64);

openraft::declare_raft_types!(
    /// openraft's type configuration for the hub group.
    pub TypeConfig:
        D = Delta,
        R = Applied,
        NodeId = ReplicaId,
        Node = openraft::BasicNode,
);

/// A running replica's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Where committed entries go. Entries arrive in log order, each exactly once per process
/// lifetime; after a restart the ones since the last snapshot arrive again, so an
/// implementation that is itself durable must skip indexes it has already applied.
pub trait Apply: Send + Sync + 'static {
    /// Applies the committed entry at `index`. An error stops the replica (a committed entry
    /// that cannot be applied means this replica can no longer follow the group).
    fn apply(&mut self, index: u64, delta: &[u8]) -> Result<(), String>;
    /// The state after every applied entry, for a snapshot (lets the log be purged and a
    /// lagging replica catch up without the whole history).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// Errors of this crate's own I/O and framing (openraft's errors wrap them).
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica storage at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("replica storage at {path} is corrupt: {what}")]
    Corrupt { path: String, what: String },
    #[error("frame of {0} bytes is above the limit")]
    FrameTooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error(
        "replica log at {path} is not the one this replica sealed ({what}): rolled back, truncated or replaced; it must not vote or lead with it"
    )]
    RolledBack { path: String, what: String },
}

/// The Raft settings of a hub group. Elections within a few hundred milliseconds of a
/// leader's loss: a heartbeat every 100 ms, an election timeout of 400–800 ms.
pub fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "teepay-hub".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Snapshot (and then purge the log) every 5,000 entries.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5_000),
        max_in_snapshot_log_to_keep: 1_000,
        snapshot_max_chunk_size: 1 << 20,
        ..Default::default()
    }
}
