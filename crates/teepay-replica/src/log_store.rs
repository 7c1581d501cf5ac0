//! The Raft log and vote of one replica, durable in its directory.
//!
//! - `raft-vote.json`: the vote, replaced atomically (write, fsync, rename, fsync the
//!   directory) before openraft is told it is saved. A vote must never be forgotten: a
//!   replica that voted twice in one term could elect two leaders.
//! - `raft-log.jsonl`: one JSON record per line — an entry, a truncation (a new leader
//!   overwrote an uncommitted suffix), or a purge (entries up to a snapshot dropped).
//!   Appends are fsynced before openraft's callback; a record torn by a crash is the last
//!   line and is cut at open. The file is rewritten (atomically) once purged records
//!   dominate it, so it stays proportional to the unpurged log.
//!
//! Reads are served from memory (the unpurged suffix, bounded by the snapshot policy).
//!
//! With a rollback-protected [`VoteStore`] (the hub seals it under its platform's monotonic
//! counter), the store keeps the vote *and the head of a hash chain over the log file's
//! records*, sealed after every write and before openraft hears of it. At open the file must
//! reproduce that head: a host that restores an older copy of the log, cuts acknowledged
//! records or swaps them is refused ([`ReplicaError::RolledBack`]), so a replica never votes or
//! leads with a log that forgot what it acknowledged (DESIGN §10: "a replica restored from an
//! old log cannot vote with it"). Records past the sealed head (written, then a crash before
//! the seal) were never acknowledged and are kept.

use crate::{ReplicaError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Id = LogId<crate::ReplicaId>;

/// Rewrite the log file once it holds this many more records than live entries.
const REWRITE_SLACK: usize = 4_096;

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Entry(Entry<TypeConfig>),
    /// Entries from this index on were removed.
    Truncate(u64),
    /// Entries up to and including this id were purged.
    Purge(Id),
}

/// Where a replica keeps its Raft vote and its log's head when a plain file is not enough: a
/// vote forgotten or rolled back lets a replica vote twice in one term, a log rolled back
/// forgets acknowledged entries. The hub keeps them sealed under its enclave platform's
/// monotonic counter, so a restored older copy is refused as stale.
pub trait VoteStore: Send + Sync + 'static {
    fn save(&self, vote: &[u8]) -> Result<(), String>;
    fn load(&self) -> Result<Option<Vec<u8>>, String>;
}

/// The head of the hash chain over the log file's records: `hash` after `records` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    records: u64,
    hash: [u8; 32],
}

/// What a rollback-protected store holds: the vote and the log's head. `alternate` is the
/// previous head while a rewrite replaces the file (a crash then leaves either file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sealed {
    vote: Option<Vote<crate::ReplicaId>>,
    head: Option<Head>,
    alternate: Option<Head>,
}

fn chain(prev: &[u8; 32], record: &[u8]) -> [u8; 32] {
    teepay_types::keccak256_parts(&[b"teepay/raft-log/v1", prev, record])
}

struct Inner {
    dir: PathBuf,
    log: File,
    /// Records in the file (live or not): drives the rewrite.
    records: usize,
    /// The hash chain over every record in the file.
    hash: [u8; 32],
    sealed: Sealed,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<Id>,
    vote: Option<Vote<crate::ReplicaId>>,
    votes: Option<Arc<dyn VoteStore>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("dir", &self.dir)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

/// A replica's durable Raft log (cheap to clone: readers share it).
#[derive(Debug, Clone)]
pub struct FileLogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io(path: &Path, source: std::io::Error) -> ReplicaError {
    ReplicaError::Io { path: path.display().to_string(), source }
}

fn write_err(e: &ReplicaError) -> StorageError<crate::ReplicaId> {
    StorageIOError::write_logs(e).into()
}

impl FileLogStore {
    /// Opens (or creates) the log in `dir`, replaying its records; the vote in a plain file.
    pub fn open(dir: &Path) -> Result<Self, ReplicaError> {
        Self::open_with(dir, None)
    }

    /// [`FileLogStore::open`] with the vote and the log's head kept in `votes`
    /// (rollback-protected) instead: a log file that does not reproduce the sealed head is
    /// refused.
    pub fn open_with(dir: &Path, votes: Option<Arc<dyn VoteStore>>) -> Result<Self, ReplicaError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("raft-log.jsonl");
        let sealed: Sealed = match &votes {
            Some(v) => match v
                .load()
                .map_err(|what| ReplicaError::Corrupt { path: "sealed vote".into(), what })?
            {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| ReplicaError::Corrupt { path: "sealed vote".into(), what: e.to_string() })?,
                None => Sealed::default(),
            },
            None => Sealed::default(),
        };
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let mut records = 0;
        let mut good_len: u64 = 0;
        let mut hash = [0u8; 32];
        let matches = |records: usize, hash: &[u8; 32]| {
            [sealed.head, sealed.alternate]
                .into_iter()
                .flatten()
                .any(|h| h.records == records as u64 && h.hash == *hash)
        };
        let mut reproduced = matches(0, &hash);
        if path.exists() {
            let file = File::open(&path).map_err(|e| io(&path, e))?;
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(|e| io(&path, e))?;
                if n == 0 {
                    break;
                }
                if !line.ends_with('\n') {
                    break; // torn by a crash mid-append: never acknowledged, cut below
                }
                let record: Record = serde_json::from_str(&line).map_err(|e| ReplicaError::Corrupt {
                    path: path.display().to_string(),
                    what: format!("record {}: {e}", records + 1),
                })?;
                apply_record(&mut entries, &mut last_purged, record);
                records += 1;
                good_len += n as u64;
                hash = chain(&hash, line.as_bytes());
                reproduced |= matches(records, &hash);
            }
        }
        if let Some(head) = sealed.head
            && !reproduced
        {
            return Err(ReplicaError::RolledBack {
                path: path.display().to_string(),
                what: format!(
                    "sealed after record {}, the file has {records} that do not lead there",
                    head.records
                ),
            });
        }
        let log = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io(&path, e))?;
        log.set_len(good_len).map_err(|e| io(&path, e))?;
        let vote_path = dir.join("raft-vote.json");
        let vote = match &votes {
            Some(_) => sealed.vote,
            None => match std::fs::read(&vote_path) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| ReplicaError::Corrupt {
                    path: vote_path.display().to_string(),
                    what: e.to_string(),
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io(&vote_path, e)),
            },
        };
        let inner =
            Inner { dir: dir.to_path_buf(), log, records, hash, sealed, entries, last_purged, vote, votes };
        Ok(Self { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn apply_record(
    entries: &mut BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: &mut Option<Id>,
    record: Record,
) {
    match record {
        Record::Entry(entry) => {
            entries.insert(entry.get_log_id().index, entry);
        }
        Record::Truncate(from) => {
            entries.split_off(&from);
        }
        Record::Purge(upto) => {
            *entries = entries.split_off(&(upto.index + 1));
            *last_purged = Some(upto);
        }
    }
}

impl Inner {
    /// Appends records and fsyncs them; then applies them in memory.
    fn write(&mut self, records: Vec<Record>) -> Result<(), ReplicaError> {
        let path = self.dir.join("raft-log.jsonl");
        let mut buf = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut buf, r).map_err(|e| ReplicaError::Malformed(e.to_string()))?;
            buf.push(b'\n');
        }
        self.log.write_all(&buf).map_err(|e| io(&path, e))?;
        self.log.sync_data().map_err(|e| io(&path, e))?;
        self.records += records.len();
        for line in buf.split_inclusive(|b| *b == b'\n') {
            self.hash = chain(&self.hash, line);
        }
        // Sealed before openraft hears the records are durable: what it acknowledges, a
        // rolled-back file can no longer hide.
        self.seal_head(None)?;
        for r in records {
            apply_record(&mut self.entries, &mut self.last_purged, r);
        }
        if self.records > self.entries.len() + REWRITE_SLACK {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Seals the vote and the current head (with `alternate` still accepted), if this log
    /// has a rollback-protected store.
    fn seal_head(&mut self, alternate: Option<Head>) -> Result<(), ReplicaError> {
        let Some(store) = &self.votes else { return Ok(()) };
        self.sealed.head = Some(Head { records: self.records as u64, hash: self.hash });
        self.sealed.alternate = alternate;
        self.sealed.vote = self.vote;
        let bytes = serde_json::to_vec(&self.sealed).map_err(|e| ReplicaError::Malformed(e.to_string()))?;
        store.save(&bytes).map_err(|what| ReplicaError::Corrupt { path: "sealed log head".into(), what })
    }

    /// Rewrites the log file with the live records only (atomically: a crash leaves the old
    /// file or the new one).
    fn rewrite(&mut self) -> Result<(), ReplicaError> {
        let path = self.dir.join("raft-log.jsonl");
        let tmp = self.dir.join("raft-log.jsonl.tmp");
        let mut buf = Vec::new();
        let mut records = 0;
        if let Some(p) = self.last_purged {
            serde_json::to_writer(&mut buf, &Record::Purge(p))
                .map_err(|e| ReplicaError::Malformed(e.to_string()))?;
            buf.push(b'\n');
            records += 1;
        }
        for entry in self.entries.values() {
            serde_json::to_writer(&mut buf, &Record::Entry(entry.clone()))
                .map_err(|e| ReplicaError::Malformed(e.to_string()))?;
            buf.push(b'\n');
            records += 1;
        }
        // The new file's head is sealed (the old one still accepted) before the rename, and
        // alone after it: a crash in between leaves a file one of the two heads matches.
        let old = Head { records: self.records as u64, hash: self.hash };
        let new_hash = buf.split_inclusive(|b| *b == b'\n').fold([0u8; 32], |h, line| chain(&h, line));
        (self.records, self.hash) = (records, new_hash);
        self.seal_head(Some(old))?;
        write_durably(&tmp, &path, &buf)?;
        self.log = OpenOptions::new().append(true).open(&path).map_err(|e| io(&path, e))?;
        self.seal_head(None)
    }
}

/// Writes `bytes` to `tmp`, fsyncs, renames over `path` and fsyncs the directory.
pub(crate) fn write_durably(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), ReplicaError> {
    let mut f = File::create(tmp).map_err(|e| io(tmp, e))?;
    f.write_all(bytes).map_err(|e| io(tmp, e))?;
    f.sync_all().map_err(|e| io(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| io(path, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))?;
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<crate::ReplicaId>> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<crate::ReplicaId>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| *e.get_log_id()).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(
        &mut self,
        vote: &Vote<crate::ReplicaId>,
    ) -> Result<(), StorageError<crate::ReplicaId>> {
        let mut inner = self.lock();
        if inner.votes.is_some() {
            let previous = inner.vote.replace(*vote);
            let alternate = inner.sealed.alternate;
            if let Err(e) = inner.seal_head(alternate) {
                inner.vote = previous;
                return Err(StorageIOError::write_vote(&e).into());
            }
        } else {
            let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
            let (tmp, path) = (inner.dir.join("raft-vote.json.tmp"), inner.dir.join("raft-vote.json"));
            write_durably(&tmp, &path, &bytes).map_err(|e| StorageIOError::write_vote(&e))?;
            inner.vote = Some(*vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<crate::ReplicaId>>, StorageError<crate::ReplicaId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<crate::ReplicaId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records = entries.into_iter().map(Record::Entry).collect();
        let result = self.lock().write(records);
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(&e))
            }
        }
    }

    async fn truncate(&mut self, log_id: Id) -> Result<(), StorageError<crate::ReplicaId>> {
        self.lock().write(vec![Record::Truncate(log_id.index)]).map_err(|e| write_err(&e))
    }

    async fn purge(&mut self, log_id: Id) -> Result<(), StorageError<crate::ReplicaId>> {
        self.lock().write(vec![Record::Purge(log_id)]).map_err(|e| write_err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(crate::Delta(vec![index as u8])),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("teepay-logstore-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn indexes(store: &FileLogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[test]
    fn truncations_and_purges_survive_a_restart() {
        let d = dir("replay");
        let store = FileLogStore::open(&d).unwrap();
        store.lock().write((1..=6).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        // A new leader overwrote the uncommitted suffix from 5 on.
        store.lock().write(vec![Record::Truncate(5), Record::Entry(entry(2, 5))]).unwrap();
        store.lock().write(vec![Record::Purge(*entry(1, 2).get_log_id())]).unwrap();
        drop(store);
        let again = FileLogStore::open(&d).unwrap();
        assert_eq!(indexes(&again), vec![3, 4, 5]);
        assert_eq!(again.lock().entries[&5].log_id.leader_id.term, 2);
        assert_eq!(again.lock().last_purged.map(|l| l.index), Some(2));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_record_torn_by_a_crash_is_cut_and_the_log_goes_on() {
        let d = dir("torn");
        let store = FileLogStore::open(&d).unwrap();
        store.lock().write((1..=3).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        drop(store);
        let path = d.join("raft-log.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"Entry":{"log_id":"#).unwrap(); // half a record, no newline
        drop(f);
        let store = FileLogStore::open(&d).unwrap();
        assert_eq!(indexes(&store), vec![1, 2, 3], "the torn record was never acknowledged");
        store.lock().write(vec![Record::Entry(entry(1, 4))]).unwrap();
        drop(store);
        assert_eq!(indexes(&FileLogStore::open(&d).unwrap()), vec![1, 2, 3, 4]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_record_is_a_typed_error_not_a_silent_gap() {
        let d = dir("corrupt");
        let store = FileLogStore::open(&d).unwrap();
        store.lock().write((1..=2).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        drop(store);
        let path = d.join("raft-log.jsonl");
        let text = std::fs::read_to_string(&path).unwrap().replacen("Entry", "Entyr", 1);
        std::fs::write(&path, text).unwrap();
        assert!(matches!(FileLogStore::open(&d), Err(ReplicaError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_file_is_rewritten_once_purged_records_dominate_it() {
        let d = dir("rewrite");
        let store = FileLogStore::open(&d).unwrap();
        let n = REWRITE_SLACK as u64 + 10;
        store.lock().write((1..=n).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        store.lock().write(vec![Record::Purge(*entry(1, n - 5).get_log_id())]).unwrap();
        assert_eq!(store.lock().records, 6, "one purge marker and the five live entries");
        drop(store);
        let again = FileLogStore::open(&d).unwrap();
        assert_eq!(indexes(&again), (n - 4..=n).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A store as rollback-protected as sealed state: the host cannot bring back an old value.
    #[derive(Default)]
    struct Monotonic(Mutex<Option<Vec<u8>>>);

    impl VoteStore for Monotonic {
        fn save(&self, vote: &[u8]) -> Result<(), String> {
            *self.0.lock().unwrap() = Some(vote.to_vec());
            Ok(())
        }
        fn load(&self) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    fn sealed_store(d: &Path, store: &Arc<Monotonic>) -> Result<FileLogStore, ReplicaError> {
        FileLogStore::open_with(d, Some(store.clone() as Arc<dyn VoteStore>))
    }

    #[test]
    fn a_rolled_back_truncated_or_swapped_log_is_refused() {
        let d = dir("rollback");
        let store = Arc::new(Monotonic::default());
        let log = sealed_store(&d, &store).unwrap();
        log.lock().write((1..=3).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        let path = d.join("raft-log.jsonl");
        let old = std::fs::read(&path).unwrap();
        log.lock().write((4..=6).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        drop(log);
        let current = std::fs::read(&path).unwrap();
        assert_eq!(indexes(&sealed_store(&d, &store).unwrap()), (1..=6).collect::<Vec<_>>());

        // The host restores the older copy: entries 4..6 were acknowledged, so refused.
        std::fs::write(&path, &old).unwrap();
        assert!(matches!(sealed_store(&d, &store), Err(ReplicaError::RolledBack { .. })));
        // It cuts the last acknowledged record.
        let text = String::from_utf8(current.clone()).unwrap();
        let cut: Vec<&str> = text.lines().collect();
        std::fs::write(&path, cut[..cut.len() - 1].join("\n") + "\n").unwrap();
        assert!(matches!(sealed_store(&d, &store), Err(ReplicaError::RolledBack { .. })));
        // It swaps a record for another well-formed one (same count).
        std::fs::write(&path, text.replacen("\"index\":2", "\"index\":7", 1)).unwrap();
        assert!(matches!(sealed_store(&d, &store), Err(ReplicaError::RolledBack { .. })));
        // Without a sealed head (a plain file log), the same file opens: the check is the seal's.
        std::fs::write(&path, &old).unwrap();
        assert!(FileLogStore::open(&d).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn records_written_but_not_yet_sealed_and_a_rewrite_cut_short_still_open() {
        let d = dir("unsealed");
        let store = Arc::new(Monotonic::default());
        let log = sealed_store(&d, &store).unwrap();
        log.lock().write((1..=2).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        drop(log);
        // A crash between the append's fsync and its seal: the record was never acknowledged.
        let path = d.join("raft-log.jsonl");
        let mut line = serde_json::to_vec(&Record::Entry(entry(1, 3))).unwrap();
        line.push(b'\n');
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&line).unwrap();
        let log = sealed_store(&d, &store).unwrap();
        assert_eq!(indexes(&log), vec![1, 2, 3]);
        // A rewrite sealed its new head but crashed before the rename: the old file opens.
        let before = std::fs::read(&path).unwrap();
        let n = REWRITE_SLACK as u64 + 10;
        log.lock().write((4..=n).map(|i| Record::Entry(entry(1, i))).collect()).unwrap();
        log.lock().write(vec![Record::Purge(*entry(1, n - 5).get_log_id())]).unwrap();
        let sealed: Sealed = serde_json::from_slice(&store.load().unwrap().unwrap()).unwrap();
        let rewritten = std::fs::read(&path).unwrap();
        drop(log);
        let mut mid_rewrite = sealed.clone();
        mid_rewrite.alternate = Some(Head { records: 999_999, hash: [1; 32] });
        store.save(&serde_json::to_vec(&mid_rewrite).unwrap()).unwrap();
        assert!(sealed_store(&d, &store).is_ok(), "the new file matches the new head");
        std::fs::write(&path, &before).unwrap();
        assert!(
            matches!(sealed_store(&d, &store), Err(ReplicaError::RolledBack { .. })),
            "an old file matches neither"
        );
        std::fs::write(&path, &rewritten).unwrap();
        assert_eq!(indexes(&sealed_store(&d, &store).unwrap()), (n - 4..=n).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&d);
    }
}
