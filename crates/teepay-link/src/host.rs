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
/// entropy) and the monotonic counter, which is written durably on every increment as TEE
/// hardware would keep it. A host that restores an older sealed blob finds it stale.
#[derive(Debug, Clone)]
pub struct FilePlatform {
    sealing_key: [u8; 32],
    counter: u64,
    counter_path: std::path::PathBuf,
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
        let counter = match std::fs::read(&counter_path) {
            Ok(bytes) => u64::from_le_bytes(
                bytes
                    .try_into()
                    .map_err(|_| std::io::Error::other(format!("{} is corrupt", counter_path.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(FilePlatform { sealing_key, counter, counter_path })
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
        // Hardware that cannot keep its counter stops the enclave rather than risk rollback.
        persist_atomic(&self.counter_path, &(self.counter + 1).to_le_bytes())
            .unwrap_or_else(|e| panic!("monotonic counter {}: {e}", self.counter_path.display()));
        self.counter += 1;
        self.counter
    }
}
