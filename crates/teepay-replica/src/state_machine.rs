//! Committed entries, in order, to an [`Apply`] implementation; snapshots of it, durable
//! beside the log (`raft-snapshot.json`), so the log can be purged behind them and a replica
//! restarts from its last snapshot plus the log after it.

use crate::log_store::write_durably;
use crate::{Applied, Apply, ReplicaError, ReplicaId, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogId, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<ReplicaId, BasicNode>,
    #[serde(with = "hex::serde")]
    data: Vec<u8>,
}

struct Inner<A> {
    app: A,
    last_applied: Option<LogId<ReplicaId>>,
    membership: StoredMembership<ReplicaId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The replica's state machine: `A` with Raft's bookkeeping (cheap to clone: the snapshot
/// builder shares it).
pub struct Replayed<A> {
    inner: Arc<Mutex<Inner<A>>>,
    dir: PathBuf,
}

impl<A> Clone for Replayed<A> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), dir: self.dir.clone() }
    }
}

impl<A> std::fmt::Debug for Replayed<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayed").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl<A: Apply> Replayed<A> {
    /// Wraps `app`, restoring it from the snapshot in `dir` if there is one (the entries
    /// after it are then re-applied by openraft from the log).
    pub fn open(dir: &Path, mut app: A) -> Result<Self, ReplicaError> {
        let path = dir.join("raft-snapshot.json");
        let snapshot: Option<StoredSnapshot> = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| ReplicaError::Corrupt {
                path: path.display().to_string(),
                what: e.to_string(),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ReplicaError::Io { path: path.display().to_string(), source: e }),
        };
        let (mut last_applied, mut membership) = (None, StoredMembership::default());
        if let Some(s) = &snapshot {
            app.restore(&s.data)
                .map_err(|what| ReplicaError::Corrupt { path: path.display().to_string(), what })?;
            last_applied = s.meta.last_log_id;
            membership = s.meta.last_membership.clone();
        }
        let inner = Inner { app, last_applied, membership, snapshot, snapshots_built: 0 };
        Ok(Self { inner: Arc::new(Mutex::new(inner)), dir: dir.to_path_buf() })
    }

    /// Reads the application state (e.g. to check what a follower has replayed).
    pub fn with_app<T>(&self, f: impl FnOnce(&A) -> T) -> T {
        f(&self.lock().app)
    }

    /// The last log id applied here.
    pub fn last_applied(&self) -> Option<LogId<ReplicaId>> {
        self.lock().last_applied
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<A>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError<ReplicaId>> {
        let bytes = serde_json::to_vec(snapshot).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        write_durably(&self.dir.join("raft-snapshot.json.tmp"), &self.dir.join("raft-snapshot.json"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &e).into())
    }
}

fn to_snapshot(s: &StoredSnapshot) -> Snapshot<TypeConfig> {
    Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }
}

impl<A: Apply> RaftSnapshotBuilder<TypeConfig> for Replayed<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<ReplicaId>> {
        let stored = {
            let mut inner = self.lock();
            inner.snapshots_built += 1;
            let last = inner.last_applied;
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.snapshots_built),
                None => format!("--{}", inner.snapshots_built),
            };
            let meta =
                SnapshotMeta { last_log_id: last, last_membership: inner.membership.clone(), snapshot_id };
            StoredSnapshot { meta, data: inner.app.snapshot() }
        };
        self.save(&stored)?;
        let snapshot = to_snapshot(&stored);
        self.lock().snapshot = Some(stored);
        Ok(snapshot)
    }
}

impl<A: Apply> RaftStateMachine<TypeConfig> for Replayed<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<ReplicaId>>, StoredMembership<ReplicaId, BasicNode>), StorageError<ReplicaId>>
    {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<ReplicaId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for entry in entries {
            let id = *entry.get_log_id();
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(delta) => {
                    inner.app.apply(id.index, &delta.0).map_err(|e| {
                        StorageIOError::apply(
                            id,
                            &ReplicaError::Malformed(format!("entry {}: {e}", id.index)),
                        )
                    })?;
                }
                EntryPayload::Membership(m) => inner.membership = StoredMembership::new(Some(id), m.clone()),
            }
            inner.last_applied = Some(id);
            out.push(Applied(id.index));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<ReplicaId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ReplicaId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<ReplicaId>> {
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot.into_inner() };
        // Restored first: a snapshot the application refuses is never kept.
        self.lock().app.restore(&stored.data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), &ReplicaError::Malformed(e))
        })?;
        self.save(&stored)?;
        let mut inner = self.lock();
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<ReplicaId>> {
        Ok(self.lock().snapshot.as_ref().map(to_snapshot))
    }
}
