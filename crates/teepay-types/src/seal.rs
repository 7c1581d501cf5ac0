//! Sealing: authenticated encryption of an enclave's state under a platform sealing key,
//! bound to a monotonic counter so that a host cannot roll the enclave back (DESIGN §4, §7).

use borsh::{BorshDeserialize, BorshSerialize};
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Services a TEE platform provides to an enclave. In simulation mode an in-memory struct
/// stands in for the hardware; on SGX these map to `EGETKEY` and a monotonic counter service.
pub trait Platform {
    /// A key only this enclave (this measurement on this machine) can derive.
    fn sealing_key(&self) -> [u8; 32];
    /// Current value of the enclave's monotonic counter (survives crashes).
    fn counter(&self) -> u64;
    /// Increments the counter and returns the new value.
    fn increment_counter(&mut self) -> u64;
    /// Called with the blob sealed under the counter just incremented. A platform that keeps
    /// the counter in storage writes both together, so a crash can never leave a counter
    /// without the blob that matches it (which would brick the enclave: every older blob is
    /// stale by design).
    fn record_sealed(&mut self, _blob: &[u8]) {}
    /// True when `record_sealed` already stores each blob durably, so the host need not
    /// write its own copy before releasing the outputs.
    fn persists_sealed(&self) -> bool {
        false
    }
}

/// The simulated platform: a sealing key plus a counter that the harness keeps across
/// enclave "crashes", as hardware would.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SimPlatform {
    pub sealing_key: [u8; 32],
    pub counter: u64,
}

impl SimPlatform {
    pub fn new(sealing_key: [u8; 32]) -> Self {
        Self { sealing_key, counter: 0 }
    }
}

impl Platform for SimPlatform {
    fn sealing_key(&self) -> [u8; 32] {
        self.sealing_key
    }
    fn counter(&self) -> u64 {
        self.counter
    }
    fn increment_counter(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed blob is malformed")]
    Malformed,
    #[error("sealed blob failed authentication (tampered, or sealed by another enclave)")]
    Tampered,
    #[error("sealed blob is stale: counter {blob} but the platform counter is {platform} (rollback refused)")]
    Stale { blob: u64, platform: u64 },
    #[error("sealed state authenticates but does not decode")]
    Undecodable,
    #[error("sealed log does not start with a snapshot")]
    NoSnapshot,
    #[error("sealed log has a gap: expected counter {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
}

/// What a sealed blob holds: the whole state, or one change to apply to the state sealed
/// just before it (DESIGN §7: incremental sealing keeps the cost per batch proportional to
/// the batch rather than to the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum SealKind {
    Snapshot,
    Delta,
}

#[derive(BorshSerialize, BorshDeserialize)]
struct Envelope {
    counter: u64,
    kind: SealKind,
    ciphertext: Vec<u8>,
}

fn aad(domain: &[u8], counter: u64, kind: SealKind) -> Vec<u8> {
    let mut aad = domain.to_vec();
    aad.extend_from_slice(&counter.to_le_bytes());
    aad.push(kind as u8);
    aad
}

fn nonce(counter: u64) -> Nonce {
    // The counter never repeats for a given sealing key, so neither does the nonce.
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    *Nonce::from_slice(&n)
}

/// Seals `plaintext` as a snapshot: increments the platform counter and binds the blob to
/// its new value. Every earlier blob becomes stale at once, so the host must persist this one
/// before it releases anything the enclave produced alongside it.
pub fn seal<P: Platform>(platform: &mut P, domain: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(ENVELOPE_HEADER + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(&[0; ENVELOPE_HEADER]);
    blob.extend_from_slice(plaintext);
    seal_buffer(platform, domain, SealKind::Snapshot, blob)
}

/// Bytes before the ciphertext in a blob: the borsh encoding of [`Envelope`]'s counter (u64),
/// kind (u8) and the ciphertext's length (u32), little-endian.
const ENVELOPE_HEADER: usize = 13;
const TAG_LEN: usize = 16;

/// Seals `blob[ENVELOPE_HEADER..]` in place and fills in the header: the blob is exactly
/// `borsh(Envelope { counter, kind, ciphertext })`, built without copying the state twice.
fn seal_buffer<P: Platform>(platform: &mut P, domain: &[u8], kind: SealKind, mut blob: Vec<u8>) -> Vec<u8> {
    let counter = platform.increment_counter();
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&platform.sealing_key()));
    let tag = cipher
        .encrypt_in_place_detached(&nonce(counter), &aad(domain, counter, kind), &mut blob[ENVELOPE_HEADER..])
        .expect("ChaCha20Poly1305 encryption of an in-memory buffer cannot fail");
    blob.extend_from_slice(&tag);
    let len = u32::try_from(blob.len() - ENVELOPE_HEADER).expect("sealed state below 4 GiB");
    blob[..8].copy_from_slice(&counter.to_le_bytes());
    blob[8] = kind as u8;
    blob[9..13].copy_from_slice(&len.to_le_bytes());
    platform.record_sealed(&blob);
    blob
}

/// The counter and kind of a blob, read from its header without opening it (hosts use this
/// to file blobs; nothing here is trusted until [`unseal_log`] authenticates it).
pub fn blob_header(blob: &[u8]) -> Result<(u64, SealKind), SealError> {
    if blob.len() < ENVELOPE_HEADER + TAG_LEN {
        return Err(SealError::Malformed);
    }
    let counter = u64::from_le_bytes(blob[..8].try_into().expect("8 bytes"));
    let kind = match blob[8] {
        0 => SealKind::Snapshot,
        1 => SealKind::Delta,
        _ => return Err(SealError::Malformed),
    };
    Ok((counter, kind))
}

/// Authenticates and decrypts one blob, with no staleness check.
fn open<P: Platform>(
    platform: &P,
    domain: &[u8],
    blob: &[u8],
) -> Result<(u64, SealKind, Vec<u8>), SealError> {
    let env: Envelope = borsh::from_slice(blob).map_err(|_| SealError::Malformed)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&platform.sealing_key()));
    let plaintext = cipher
        .decrypt(
            &nonce(env.counter),
            Payload { msg: &env.ciphertext, aad: &aad(domain, env.counter, env.kind) },
        )
        .map_err(|_| SealError::Tampered)?;
    Ok((env.counter, env.kind, plaintext))
}

/// Opens a snapshot blob, refusing anything but the latest one sealed on this platform.
pub fn unseal<P: Platform>(platform: &P, domain: &[u8], blob: &[u8]) -> Result<Vec<u8>, SealError> {
    let log = SealedLog { snapshot: Some(blob.to_vec()), deltas: Vec::new() };
    unseal_log(platform, domain, &log).map(|opened| opened.snapshot)
}

/// Seals a whole value (its canonical encoding) as a snapshot.
pub fn seal_value<P: Platform, T: BorshSerialize>(platform: &mut P, domain: &[u8], value: &T) -> Vec<u8> {
    let mut blob = vec![0; ENVELOPE_HEADER];
    value.serialize(&mut blob).expect("writing to a Vec never fails");
    seal_buffer(platform, domain, SealKind::Snapshot, blob)
}

/// Seals one change (already encoded) to apply after the previous blob.
pub fn seal_delta<P: Platform>(platform: &mut P, domain: &[u8], change: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(ENVELOPE_HEADER + change.len() + TAG_LEN);
    blob.extend_from_slice(&[0; ENVELOPE_HEADER]);
    blob.extend_from_slice(change);
    seal_buffer(platform, domain, SealKind::Delta, blob)
}

/// Opens a blob sealed by [`seal_value`], with the same rollback protection as [`unseal`].
pub fn unseal_value<P: Platform, T: BorshDeserialize>(
    platform: &P,
    domain: &[u8],
    blob: &[u8],
) -> Result<T, SealError> {
    let plaintext = unseal(platform, domain, blob)?;
    borsh::from_slice(&plaintext).map_err(|_| SealError::Undecodable)
}

/// An enclave's sealed state as a host keeps it: the latest snapshot and every delta sealed
/// after it, in order. Recording a snapshot drops everything before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedLog {
    snapshot: Option<Vec<u8>>,
    deltas: Vec<Vec<u8>>,
}

impl SealedLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A log made of blobs in the order they were sealed (as read back from storage).
    pub fn from_blobs(blobs: impl IntoIterator<Item = Vec<u8>>) -> Result<Self, SealError> {
        let mut log = Self::new();
        for blob in blobs {
            log.record(blob)?;
        }
        Ok(log)
    }

    /// Files the blob an enclave just sealed. Returns its kind.
    pub fn record(&mut self, blob: Vec<u8>) -> Result<SealKind, SealError> {
        let (_, kind) = blob_header(&blob)?;
        match kind {
            SealKind::Snapshot => {
                self.snapshot = Some(blob);
                self.deltas.clear();
            }
            SealKind::Delta => self.deltas.push(blob),
        }
        Ok(kind)
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.deltas.is_empty()
    }

    /// Every blob, snapshot first.
    pub fn blobs(&self) -> impl Iterator<Item = &[u8]> {
        self.snapshot.iter().chain(&self.deltas).map(Vec::as_slice)
    }

    pub fn delta_count(&self) -> usize {
        self.deltas.len()
    }
}

/// A log opened by [`unseal_log`]: the snapshot's plaintext and each delta's, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedLog {
    pub snapshot: Vec<u8>,
    pub deltas: Vec<Vec<u8>>,
}

impl OpenedLog {
    /// Plaintext bytes in the deltas (what [`LogBudget`] counts).
    pub fn delta_bytes(&self) -> usize {
        self.deltas.iter().map(Vec::len).sum()
    }
}

/// Opens a sealed log, refusing anything but the state as of the latest seal on this
/// platform: every blob must authenticate, the first be a snapshot, the counters follow one
/// another with no gap (each counter value seals exactly one blob, so consecutive counters
/// are one unbroken history) and the last be the platform's current counter (a host that
/// drops the newest deltas or replays an older log is caught as stale).
pub fn unseal_log<P: Platform>(platform: &P, domain: &[u8], log: &SealedLog) -> Result<OpenedLog, SealError> {
    let first = log.snapshot.as_deref().ok_or(SealError::NoSnapshot)?;
    let (mut counter, kind, snapshot) = open(platform, domain, first)?;
    if kind != SealKind::Snapshot {
        return Err(SealError::NoSnapshot);
    }
    let mut deltas = Vec::with_capacity(log.deltas.len());
    for blob in &log.deltas {
        let (c, kind, plaintext) = open(platform, domain, blob)?;
        if kind != SealKind::Delta || c != counter + 1 {
            return Err(SealError::Gap { expected: counter + 1, found: c });
        }
        counter = c;
        deltas.push(plaintext);
    }
    if counter != platform.counter() {
        return Err(SealError::Stale { blob: counter, platform: platform.counter() });
    }
    Ok(OpenedLog { snapshot, deltas })
}

/// When a seal is a snapshot rather than a delta; see [`LogBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealLimits {
    /// Deltas may add up to the snapshot's size, and at least this many bytes.
    pub min_log_bytes: usize,
    /// At most this many deltas after a snapshot (bounds the replay at restart).
    pub max_deltas: usize,
}

impl SealLimits {
    pub const DEFAULT: SealLimits = SealLimits { min_log_bytes: 64 * 1024, max_deltas: 4096 };
    /// Every seal a snapshot: the behaviour before incremental sealing, kept so benchmarks
    /// can compare the two.
    pub const FULL: SealLimits = SealLimits { min_log_bytes: 0, max_deltas: 0 };
}

impl Default for SealLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// When to seal a snapshot instead of a delta: once the deltas since the last snapshot hold
/// as many bytes as the snapshot itself (at least `min_log_bytes`), or `max_deltas` of them.
/// The state is then rewritten at most once per its own size in changes, so sealing costs
/// O(change) amortized, and a restart replays a bounded log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBudget {
    limits: SealLimits,
    snapshot_bytes: usize,
    delta_bytes: usize,
    deltas: usize,
    forced: bool,
}

impl LogBudget {
    /// The budget after restoring from `opened`.
    pub fn after_restore(opened: &OpenedLog) -> Self {
        Self {
            limits: SealLimits::DEFAULT,
            snapshot_bytes: opened.snapshot.len(),
            delta_bytes: opened.delta_bytes(),
            deltas: opened.deltas.len(),
            forced: false,
        }
    }

    pub fn limits(&self) -> SealLimits {
        self.limits
    }

    pub fn set_limits(&mut self, limits: SealLimits) {
        self.limits = limits;
    }

    /// Makes the next seal a snapshot whatever the log holds.
    pub fn set_snapshot_due(&mut self) {
        self.forced = true;
    }

    pub fn snapshot_due(&self) -> bool {
        self.forced
            || self.deltas >= self.limits.max_deltas
            || self.delta_bytes >= self.snapshot_bytes.max(self.limits.min_log_bytes)
    }

    pub fn snapshot_sealed(&mut self, plaintext_bytes: usize) {
        self.forced = false;
        self.snapshot_bytes = plaintext_bytes;
        self.delta_bytes = 0;
        self.deltas = 0;
    }

    pub fn delta_sealed(&mut self, plaintext_bytes: usize) {
        self.delta_bytes += plaintext_bytes;
        self.deltas += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place sealer writes exactly what borsh would for the envelope.
    #[test]
    fn in_place_blob_is_the_borsh_envelope() {
        let mut p = SimPlatform::new([3; 32]);
        let blob = seal(&mut p, b"d", b"hello");
        let env: Envelope = borsh::from_slice(&blob).unwrap();
        assert_eq!(env.counter, p.counter());
        assert_eq!(env.kind, SealKind::Snapshot);
        assert_eq!(blob_header(&blob), Ok((p.counter(), SealKind::Snapshot)));
        assert_eq!(env.ciphertext.len(), 5 + TAG_LEN);
        assert_eq!(unseal(&p, b"d", &blob).unwrap(), b"hello");
    }

    #[test]
    fn seal_unseal_round_trip() {
        let mut p = SimPlatform::new([5; 32]);
        let blob = seal(&mut p, b"d", b"state");
        assert_eq!(unseal(&p, b"d", &blob).unwrap(), b"state");
    }

    #[test]
    fn stale_tampered_and_foreign_blobs_are_refused() {
        let mut p = SimPlatform::new([5; 32]);
        let old = seal(&mut p, b"d", b"old");
        let new = seal(&mut p, b"d", b"new");
        assert_eq!(unseal(&p, b"d", &old), Err(SealError::Stale { blob: 1, platform: 2 }));
        let mut bad = new.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(unseal(&p, b"d", &bad), Err(SealError::Tampered));
        assert_eq!(unseal(&p, b"other", &new), Err(SealError::Tampered));
        let other = SimPlatform { sealing_key: [6; 32], counter: 2 };
        assert_eq!(unseal(&other, b"d", &new), Err(SealError::Tampered));
        assert_eq!(unseal(&p, b"d", &[1, 2]), Err(SealError::Malformed));
    }

    fn log_of(p: &mut SimPlatform) -> (SealedLog, Vec<Vec<u8>>) {
        let mut log = SealedLog::new();
        let blobs = vec![
            seal_value(p, b"d", &1u32),
            seal_delta(p, b"d", &2u32.to_le_bytes()),
            seal_delta(p, b"d", &3u32.to_le_bytes()),
        ];
        for b in &blobs {
            log.record(b.clone()).unwrap();
        }
        (log, blobs)
    }

    #[test]
    fn a_log_opens_to_its_snapshot_and_deltas_in_order() {
        let mut p = SimPlatform::new([5; 32]);
        let (log, _) = log_of(&mut p);
        let opened = unseal_log(&p, b"d", &log).unwrap();
        assert_eq!(opened.snapshot, 1u32.to_le_bytes());
        assert_eq!(opened.deltas, vec![2u32.to_le_bytes().to_vec(), 3u32.to_le_bytes().to_vec()]);
        // A new snapshot supersedes everything before it.
        let mut log = log;
        log.record(seal_value(&mut p, b"d", &4u32)).unwrap();
        assert_eq!(log.delta_count(), 0);
        assert_eq!(unseal_log(&p, b"d", &log).unwrap().snapshot, 4u32.to_le_bytes());
    }

    #[test]
    fn truncated_reordered_or_headless_logs_are_refused() {
        let mut p = SimPlatform::new([5; 32]);
        let (_, blobs) = log_of(&mut p);
        // The host drops the newest delta: a rollback, caught as stale.
        let dropped = SealedLog::from_blobs(blobs[..2].iter().cloned()).unwrap();
        assert_eq!(unseal_log(&p, b"d", &dropped), Err(SealError::Stale { blob: 2, platform: 3 }));
        // The host drops a delta in the middle.
        let gap = SealedLog::from_blobs([blobs[0].clone(), blobs[2].clone()]).unwrap();
        assert_eq!(unseal_log(&p, b"d", &gap), Err(SealError::Gap { expected: 2, found: 3 }));
        // Or swaps two.
        let swapped = SealedLog::from_blobs([blobs[0].clone(), blobs[2].clone(), blobs[1].clone()]).unwrap();
        assert!(matches!(unseal_log(&p, b"d", &swapped), Err(SealError::Gap { .. })));
        // Deltas with no snapshot.
        let headless = SealedLog::from_blobs(blobs[1..].iter().cloned()).unwrap();
        assert_eq!(unseal_log(&p, b"d", &headless), Err(SealError::NoSnapshot));
        // A delta whose kind byte is flipped to pass as a snapshot no longer authenticates.
        let mut forged = blobs[2].clone();
        forged[8] = 0;
        let forged = SealedLog::from_blobs([forged]).unwrap();
        assert_eq!(unseal_log(&p, b"d", &forged), Err(SealError::Tampered));
        assert_eq!(SealedLog::new().record(vec![0; 3]), Err(SealError::Malformed));
    }

    #[test]
    fn the_budget_snapshots_once_the_log_outgrows_the_state() {
        let SealLimits { min_log_bytes, max_deltas } = SealLimits::DEFAULT;
        let mut b = LogBudget::default();
        b.snapshot_sealed(min_log_bytes * 2);
        assert!(!b.snapshot_due());
        b.delta_sealed(min_log_bytes);
        assert!(!b.snapshot_due());
        b.delta_sealed(min_log_bytes);
        assert!(b.snapshot_due());
        b.snapshot_sealed(10);
        for _ in 0..max_deltas - 1 {
            b.delta_sealed(1);
        }
        assert!(!b.snapshot_due());
        b.delta_sealed(1);
        assert!(b.snapshot_due());
        b.snapshot_sealed(10);
        assert!(!b.snapshot_due());
        b.set_snapshot_due();
        assert!(b.snapshot_due());
        b.snapshot_sealed(10);
        b.set_limits(SealLimits::FULL);
        assert!(b.snapshot_due());
    }
}
