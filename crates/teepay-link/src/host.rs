//! Host-side helpers every service shares: the clock it passes into its enclave, and durable
//! writes of sealed state.

use std::path::Path;
use teepay_types::{SealKind, SealedLog, blob_header};

/// Milliseconds since the Unix epoch: the `now` every service passes into its enclave.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `f`, which may block on disk (an enclave call that seals and syncs its state), from
/// async code without stalling the runtime: on a multi-threaded runtime the worker hands its
/// other tasks to another thread first, so one service's `fdatasync` never holds up the
/// rest (and syncs of many services overlap, letting the file system commit them together).
/// Elsewhere (a current-thread runtime, or no runtime) it simply runs `f`.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Writes `bytes` to `path` so that after a crash the file holds either the old or the new
/// contents, never a torn mix, and the new contents survive power loss once this returns
/// (temp file, fsync, rename, fsync of the directory).
pub fn persist_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // `<name>.tmp`, not `with_extension`: files differing only in extension (platform.key,
    // platform.counter) must not share a temp file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Sealed blobs this process has written durably (each one synced write): what benchmarks
/// report as durable writes per job.
pub static DURABLE_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A sealed log kept in one append-only file, each blob framed as `[len u32 LE][blob]`.
/// A delta is appended and `fdatasync`ed (one write, one sync: the cost of a seal no longer
/// grows with the state); a snapshot replaces the file atomically ([`persist_atomic`]),
/// dropping everything before it. A record torn by a crash mid-append is cut off at open:
/// its outputs were never released, since the host releases them only after
/// [`SealedLogFile::record`] returns.
#[derive(Debug)]
pub struct SealedLogFile {
    path: std::path::PathBuf,
    /// Open for appending; `None` until the first record (or after a snapshot's rewrite).
    file: Option<std::fs::File>,
}

impl SealedLogFile {
    /// The log file at `path`, without reading it (for a host that only appends).
    pub fn at(path: &Path) -> Self {
        Self { path: path.to_path_buf(), file: None }
    }

    /// Opens `path` (absent: an empty log) and returns the log it holds.
    pub fn open(path: &Path) -> std::io::Result<(Self, SealedLog)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let corrupt = |what: &str| std::io::Error::other(format!("{}: {what}", path.display()));
        let mut log = SealedLog::new();
        let mut at = 0;
        while at < bytes.len() {
            let Some(len) = bytes.get(at..at + 4) else { break };
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let Some(blob) = bytes.get(at + 4..at + 4 + len) else { break };
            if let Err(e) = log.record(blob.to_vec()) {
                // The last record may be torn into something that only looks complete (a
                // file system can expose a zero-filled tail after power loss); anywhere
                // else a bad record is corruption, never silently dropped.
                if at + 4 + len == bytes.len() {
                    break;
                }
                return Err(corrupt(&format!("record at byte {at}: {e}")));
            }
            at += 4 + len;
        }
        if at < bytes.len() {
            // Torn tail: cut it so the next append starts on a record boundary.
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.set_len(at as u64)?;
            f.sync_all()?;
        }
        Ok((Self { path: path.to_path_buf(), file: None }, log))
    }

    /// Durably files a blob just sealed: appended if a delta, the whole file if a snapshot.
    pub fn record(&mut self, blob: &[u8]) -> std::io::Result<()> {
        self.write(blob)?;
        DURABLE_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn write(&mut self, blob: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let (_, kind) = blob_header(blob).map_err(|e| std::io::Error::other(format!("sealed blob: {e}")))?;
        let len = u32::try_from(blob.len()).map_err(|_| std::io::Error::other("sealed blob over 4 GiB"))?;
        let mut framed = Vec::with_capacity(4 + blob.len());
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(blob);
        match kind {
            SealKind::Snapshot => {
                self.file = None;
                persist_atomic(&self.path, &framed)
            }
            SealKind::Delta => {
                if self.file.is_none() {
                    self.file = Some(std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?);
                }
                let file = self.file.as_mut().expect("just opened");
                file.write_all(&framed)?;
                file.sync_data()
            }
        }
    }
}

/// Simulation-mode platform services backed by files: the sealing key (created once from OS
/// entropy) and the monotonic counter, kept as TEE hardware would keep it. The counter lives
/// in the sealed log itself (`platform.seals`, the counter of its last blob), so the counter
/// and the blob sealed under it are written in one step: a process killed between "counter
/// incremented" and "sealed state written" would otherwise find its only state stale. A host
/// that restores an older log still finds it stale.
#[derive(Debug)]
pub struct FilePlatform {
    sealing_key: [u8; 32],
    counter: u64,
    log_file: SealedLogFile,
    /// The log as found at open: the state to restore.
    at_open: SealedLog,
}

impl FilePlatform {
    /// Opens (or creates) the platform files `platform.key` and `platform.seals` in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join("platform.key");
        let sealing_key: [u8; 32] = match std::fs::read(&key_path) {
            Ok(bytes) => bytes
                .try_into()
                .map_err(|_| std::io::Error::other(format!("{} is not a 32-byte key", key_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = crate::os_entropy()?;
                persist_atomic(&key_path, &key)?;
                key
            }
            Err(e) => return Err(e),
        };
        let seals = dir.join("platform.seals");
        // Before incremental sealing the counter and one whole-state blob lived in
        // `platform.counter`; opening such a directory as empty would mint a new enclave
        // beside the old one's channels.
        if dir.join("platform.counter").exists() && !seals.exists() {
            return Err(std::io::Error::other(format!(
                "{} holds enclave state in the format before incremental sealing (platform.counter); \
                 this teepay cannot restore it: start from a fresh state directory",
                dir.display()
            )));
        }
        let (log_file, at_open) = SealedLogFile::open(&seals)?;
        let counter = match at_open.blobs().last() {
            Some(blob) => blob_header(blob).map_err(std::io::Error::other)?.0,
            None => 0,
        };
        Ok(FilePlatform { sealing_key, counter, log_file, at_open })
    }

    /// The sealed log as found when the platform was opened (empty for a fresh enclave).
    pub fn sealed_at_open(&self) -> &SealedLog {
        &self.at_open
    }

    /// The state to restore: the platform's log, else the host's copy at `host_copy`
    /// (`None` for a fresh enclave).
    pub fn restorable(&self, host_copy: &Path) -> std::io::Result<Option<SealedLog>> {
        if !self.at_open.is_empty() {
            return Ok(Some(self.at_open.clone()));
        }
        let (_, log) = SealedLogFile::open(host_copy)?;
        Ok((!log.is_empty()).then_some(log))
    }
}

impl teepay_types::Platform for FilePlatform {
    fn sealing_key(&self) -> [u8; 32] {
        self.sealing_key
    }
    fn counter(&self) -> u64 {
        self.counter
    }
    fn increment_counter(&mut self) -> u64 {
        // Durable only together with its blob, in `record_sealed`.
        self.counter += 1;
        self.counter
    }
    fn record_sealed(&mut self, blob: &[u8]) {
        // The state to restore is on disk now; the copy from open would only grow stale.
        self.at_open = SealedLog::new();
        // Hardware that cannot keep its counter stops the enclave rather than risk rollback.
        self.log_file
            .record(blob)
            .unwrap_or_else(|e| panic!("monotonic counter {}: {e}", self.log_file.path.display()));
    }
    fn persists_sealed(&self) -> bool {
        true
    }
}

/// The exit status of a daemon that panicked (Rust's own for a panic in `main`).
pub const PANIC_EXIT_CODE: i32 = 101;

/// Makes a panic on any thread end the whole process (after the usual message), for
/// daemons. A panic in one of a daemon's tasks would otherwise end only that task: a node
/// whose enclave task died would keep its port and answer its API but never its hub again,
/// freezing every payment it holds locks for, and a supervisor would see nothing to restart.
/// Exiting is safe where nothing is released before it is sealed: a restart resumes from the
/// sealed state and the protocol's retransmissions.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use teepay_types::{Platform, seal, seal_delta, unseal, unseal_log};

    /// Runs in a child process (this test binary again, asked through the environment): a
    /// panic on a runtime's worker task must end the whole process with the panic's status.
    #[test]
    fn a_panic_in_any_task_ends_the_process() {
        if std::env::var_os("TEEPAY_PANIC_CHILD").is_some() {
            exit_on_panic();
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                tokio::spawn(async { panic!("a task's invariant broke") });
                // Without the hook the task's panic is only reported to its JoinHandle and
                // this process would go on to exit normally.
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            });
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "host::tests::a_panic_in_any_task_ends_the_process", "--nocapture"])
            .env("TEEPAY_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(PANIC_EXIT_CODE), "{stderr}");
        assert!(stderr.contains("a task's invariant broke"), "the panic is still reported: {stderr}");
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("teepay-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_crash_between_increment_and_write_leaves_the_last_blob_valid() {
        let dir = temp_dir("platform");
        let mut p = FilePlatform::open(&dir).unwrap();
        let first = seal(&mut p, b"d", b"one");
        // "Crash" inside the next seal: the counter moved in memory, nothing was written.
        p.increment_counter();
        drop(p);
        let p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.sealed_at_open().blobs().collect::<Vec<_>>(), vec![first.as_slice()]);
        assert_eq!(unseal(&p, b"d", &first).unwrap(), b"one");
        // A completed seal makes the earlier blob stale across a restart (no rollback).
        let mut p = p;
        let second = seal(&mut p, b"d", b"two");
        let p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.sealed_at_open().blobs().collect::<Vec<_>>(), vec![second.as_slice()]);
        assert!(unseal(&p, b"d", &first).is_err(), "rollback refused");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_dir_in_the_old_format_is_refused_not_reinitialized() {
        let dir = temp_dir("old-format");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("platform.counter"), 7u64.to_le_bytes()).unwrap();
        let err = FilePlatform::open(&dir).unwrap_err();
        assert!(err.to_string().contains("before incremental sealing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deltas_append_a_snapshot_compacts_and_a_torn_tail_is_cut() {
        let dir = temp_dir("seal-log");
        let mut p = FilePlatform::open(&dir).unwrap();
        let snap = seal(&mut p, b"d", b"base");
        let d1 = seal_delta(&mut p, b"d", b"+1");
        let d2 = seal_delta(&mut p, b"d", b"+2");
        let path = dir.join("platform.seals");
        let whole = std::fs::metadata(&path).unwrap().len();
        drop(p);
        let p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.counter(), 3);
        let opened = unseal_log(&p, b"d", p.sealed_at_open()).unwrap();
        assert_eq!((opened.snapshot.as_slice(), opened.deltas.len()), (b"base".as_slice(), 2));
        assert_eq!(p.sealed_at_open().blobs().collect::<Vec<_>>(), vec![&snap[..], &d1[..], &d2[..]]);
        drop(p);
        // A crash in the middle of appending d2: the torn record is cut, counter back to 2,
        // and the log up to d1 is whole (d2's outputs were never released).
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(whole - 5).unwrap();
        drop(f);
        let p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.counter(), 2);
        assert_eq!(unseal_log(&p, b"d", p.sealed_at_open()).unwrap().deltas, vec![b"+1".to_vec()]);
        drop(p);
        // A zero-filled tail (power loss after the file grew) is cut the same way.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &[0; 4]).unwrap();
        drop(f);
        let mut p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.counter(), 2);
        // The next append lands on a record boundary; a snapshot then rewrites the file.
        seal_delta(&mut p, b"d", b"+2b");
        assert_eq!(FilePlatform::open(&dir).unwrap().sealed_at_open().delta_count(), 2);
        seal(&mut p, b"d", b"compacted");
        let p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.sealed_at_open().delta_count(), 0);
        assert!(std::fs::metadata(&path).unwrap().len() < whole, "compacted");
        assert_eq!(unseal_log(&p, b"d", p.sealed_at_open()).unwrap().snapshot, b"compacted");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
