//! The hub enclave as the state machine of the hub group's Raft log (issue 15).
//!
//! Every replica keeps a *follower* coordinator (the shadow) that applies committed entries
//! only, in order, sealing each on its own platform (`<state>/shadow`): it is always exactly
//! the group's committed state, and it survives a restart from its own sealed log. The leader
//! runs its executor on a *fork* of it (`<state>/leader`), which runs ahead: each flush yields
//! an entry that is committed on a majority before anything of that flush leaves, and then
//! reaches every shadow, the leader's own included. A replica that loses the lead discards
//! its fork; whoever leads next forks its own shadow, which holds every committed flush.

use teepay_coordinator::{Coordinator, GroupSnapshot, ReplicaEntry};
use teepay_link::host::FilePlatform;
use teepay_replica::Apply;

/// The shadow coordinator behind a replica's Raft state machine.
#[derive(Debug)]
pub struct HubApply {
    shadow: Coordinator<FilePlatform>,
}

impl HubApply {
    pub fn new(shadow: Coordinator<FilePlatform>) -> Self {
        Self { shadow }
    }

    /// The group's committed state as this replica has applied it.
    pub fn shadow(&self) -> &Coordinator<FilePlatform> {
        &self.shadow
    }
}

impl Apply for HubApply {
    fn apply(&mut self, _index: u64, delta: &[u8]) -> Result<(), String> {
        let entry = ReplicaEntry::decode(delta).map_err(|e| e.to_string())?;
        // After a restart openraft applies the log again from its last snapshot, and a
        // replica that joined from a group snapshot sees entries it already has: the shadow's
        // own sealed log is ahead of both. Committed entries are unique per sequence number.
        if entry.seq <= self.shadow.replica_chain().seq {
            return Ok(());
        }
        // The platform persists the seal itself (FilePlatform::record_sealed).
        self.shadow.apply_entry(delta).map(drop).map_err(|e| e.to_string())
    }

    fn snapshot(&self) -> Vec<u8> {
        // A shadow takes no inputs of its own, so it is always at an entry boundary.
        self.shadow.group_snapshot().expect("the shadow only applies whole entries")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let s = GroupSnapshot::decode(snapshot).map_err(|e| e.to_string())?;
        if s.chain.seq <= self.shadow.replica_chain().seq {
            return Ok(()); // the shadow's own sealed log is at least as far
        }
        self.shadow.install_group_snapshot(snapshot).map(drop).map_err(|e| e.to_string())
    }
}

/// Commits the leader's flushes through the group's Raft log.
#[derive(Clone)]
pub struct RaftGate {
    raft: teepay_replica::Raft,
}

impl RaftGate {
    pub fn new(raft: teepay_replica::Raft) -> Self {
        Self { raft }
    }
}

impl std::fmt::Debug for RaftGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftGate")
    }
}

impl crate::service::ReleaseGate for RaftGate {
    fn committed(
        &self,
        entry: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.raft.client_write(teepay_replica::Delta(entry)).await.map(drop).map_err(|e| e.to_string())
        })
    }
}
