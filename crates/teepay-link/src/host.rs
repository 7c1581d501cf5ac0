//! Host-side helpers every service shares: the clock it passes into its enclave, and durable
//! writes of sealed state.

use std::path::Path;

/// Milliseconds since the Unix epoch: the `now` every service passes into its enclave.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// Simulation-mode platform services backed by files: the sealing key (created once from OS
/// entropy) and the monotonic counter, kept as TEE hardware would keep it. The counter file
/// also holds the blob sealed under it, written in one atomic step: a process killed between
/// "counter incremented" and "sealed state written" would otherwise find its only blob stale.
/// A host that restores an older sealed blob still finds it stale.
#[derive(Debug, Clone)]
pub struct FilePlatform {
    sealing_key: [u8; 32],
    counter: u64,
    counter_path: std::path::PathBuf,
    latest: Option<Vec<u8>>,
}

impl FilePlatform {
    /// Opens (or creates) the platform files `platform.key` and `platform.counter` in `dir`.
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
        let counter_path = dir.join("platform.counter");
        let (counter, latest) = match std::fs::read(&counter_path) {
            Ok(bytes) if bytes.len() >= 8 => {
                let counter = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
                (counter, (bytes.len() > 8).then(|| bytes[8..].to_vec()))
            }
            Ok(_) => return Err(std::io::Error::other(format!("{} is corrupt", counter_path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
            Err(e) => return Err(e),
        };
        Ok(FilePlatform { sealing_key, counter, counter_path, latest })
    }

    /// The blob sealed under the current counter (the state to restore), if any.
    pub fn latest_sealed(&self) -> Option<&[u8]> {
        self.latest.as_deref()
    }

    /// The state to restore: the platform's blob, else the host's copy at `host_copy`
    /// (`None` for a fresh enclave).
    pub fn restorable(&self, host_copy: &Path) -> std::io::Result<Option<Vec<u8>>> {
        if let Some(b) = self.latest_sealed() {
            return Ok(Some(b.to_vec()));
        }
        match std::fs::read(host_copy) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
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
        let mut bytes = self.counter.to_le_bytes().to_vec();
        bytes.extend_from_slice(blob);
        // Hardware that cannot keep its counter stops the enclave rather than risk rollback.
        persist_atomic(&self.counter_path, &bytes)
            .unwrap_or_else(|e| panic!("monotonic counter {}: {e}", self.counter_path.display()));
        self.latest = Some(blob.to_vec());
    }
    fn persists_sealed(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teepay_types::{Platform, seal, unseal};

    #[test]
    fn a_crash_between_increment_and_write_leaves_the_last_blob_valid() {
        let dir = std::env::temp_dir().join(format!("teepay-platform-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut p = FilePlatform::open(&dir).unwrap();
        let first = seal(&mut p, b"d", b"one");
        // "Crash" inside the next seal: the counter moved in memory, nothing was written.
        p.increment_counter();
        drop(p);
        let p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.latest_sealed(), Some(first.as_slice()));
        assert_eq!(unseal(&p, b"d", &first).unwrap(), b"one");
        // A completed seal makes the earlier blob stale across a restart (no rollback).
        let mut p = p;
        let second = seal(&mut p, b"d", b"two");
        let p = FilePlatform::open(&dir).unwrap();
        assert_eq!(p.latest_sealed(), Some(second.as_slice()));
        assert!(unseal(&p, b"d", &first).is_err(), "rollback refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
