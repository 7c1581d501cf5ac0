//! Hub replication inside the hub enclave (DESIGN §10): what a replica's enclave does, while
//! the consensus itself runs in its host (`teepay-replica`, openraft).
//!
//! - **Provisioning.** A replica joins with an enclave key of its own. An existing replica's
//!   enclave gives it the hub identity secret only for a quote that verifies with the hub's
//!   own measurement ([`Coordinator::provision`]), encrypted under the ECDH key of the hub
//!   identity and the joining enclave's key: only that enclave can open it ([`Candidate::join`]).
//! - **The replicated log.** With replication on, every flush also yields an entry: the
//!   flush's logged inputs (the same bytes its local seal holds), encrypted under the group key
//!   (derived from the identity secret, so every provisioned replica has it and no host does)
//!   and chained to the previous entry by sequence number and hash. A follower's enclave
//!   applies entries strictly in chain order ([`Coordinator::apply_entry`]), replaying the
//!   inputs deterministically: its state is then exactly the leader's after that flush.
//! - **Group snapshots** carry the whole state at an entry boundary, for a replica joining late
//!   or one whose log the group has purged.
//!
//! Nonces: every entry and snapshot nonce is derived from this platform's sealing key and its
//! monotonic counter (which never repeats), so two replicas, or one replica before and after
//! a crash, never encrypt under the same group-key nonce.

use crate::{Coordinator, HubError, HubInput, HubState, InstanceIndex, tag};
use borsh::{BorshDeserialize, BorshSerialize};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use teepay_types::{
    Address, ChainId, Hash32, LogBudget, Platform, PublicKeyBytes, Quote, Report, SigningKey, keccak256_parts,
};

/// Where this enclave stands in the replicated log: the last entry it produced or applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ReplicaChain {
    pub seq: u64,
    /// Hash of that entry's encoding (zero before the first).
    pub head: Hash32,
}

/// One replicated-log entry: a flush's inputs, encrypted under the group key.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ReplicaEntry {
    pub seq: u64,
    /// `head` of the entry before it.
    pub prev: Hash32,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

impl ReplicaEntry {
    pub fn encode(&self) -> Vec<u8> {
        borsh::to_vec(self).expect("writing to a Vec never fails")
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, HubError> {
        borsh::from_slice(bytes).map_err(|_| HubError::MalformedReplicaData)
    }
    fn aad(seq: u64, prev: &Hash32) -> Vec<u8> {
        [b"teepay/hub-group/entry/v1".as_slice(), &seq.to_be_bytes(), prev].concat()
    }
}

/// The hub identity secret, encrypted for one joining replica's enclave.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ProvisionGift {
    /// The hub identity's public key (the joining enclave derives the ECDH key with it and
    /// checks the secret it opens belongs to it).
    pub identity: PublicKeyBytes,
    pub ciphertext: Vec<u8>,
}

/// The state at an entry boundary, encrypted under the group key.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct GroupSnapshot {
    pub chain: ReplicaChain,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

impl GroupSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        borsh::to_vec(self).expect("writing to a Vec never fails")
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, HubError> {
        borsh::from_slice(bytes).map_err(|_| HubError::MalformedReplicaData)
    }
    fn aad(chain: &ReplicaChain) -> Vec<u8> {
        [b"teepay/hub-group/snapshot/v1".as_slice(), &chain.seq.to_be_bytes(), &chain.head].concat()
    }
}

fn group_cipher(identity_secret: &[u8; 32]) -> ChaCha20Poly1305 {
    let key = keccak256_parts(&[b"teepay/hub-group/key/v1".as_slice(), identity_secret]);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

fn provision_cipher(shared: &Hash32) -> ChaCha20Poly1305 {
    let key = keccak256_parts(&[b"teepay/hub-group/provision/v1".as_slice(), shared]);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

/// A nonce no other encryption under the group key uses: this platform's sealing key (unique
/// to the replica) with its counter (never repeats) and what is encrypted.
fn unique_nonce<P: Platform>(platform: &P, what: &[u8], seq: u64) -> [u8; 12] {
    let hash = keccak256_parts(&[
        b"teepay/hub-group/nonce/v1".as_slice(),
        &platform.sealing_key(),
        &platform.counter().to_be_bytes(),
        what,
        &seq.to_be_bytes(),
    ]);
    let mut nonce = [0; 12];
    nonce.copy_from_slice(&hash[..12]);
    nonce
}

impl<P: Platform> Coordinator<P> {
    /// Turns replication on or off (host configuration: a one-replica hub has no log to
    /// replicate). On, every flush that seals also yields a [`ReplicaEntry`].
    pub fn set_replicating(&mut self, on: bool) {
        self.replicating = on;
    }

    /// Where this enclave stands in the replicated log.
    pub fn replica_chain(&self) -> ReplicaChain {
        self.state.replica
    }

    /// Encrypts the inputs about to be sealed as the next entry and advances the chain
    /// (logged, so the local seal and a local restore reproduce it). Called by `flush`.
    pub(crate) fn next_entry(&mut self) -> Vec<u8> {
        let prev = self.state.replica;
        let seq = prev.seq + 1;
        let nonce = unique_nonce(&self.platform, b"entry", seq);
        let ciphertext = group_cipher(&self.key.secret_bytes())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload { msg: &self.pending, aad: &ReplicaEntry::aad(seq, &prev.head) },
            )
            .expect("encryption into a Vec never fails");
        let bytes = ReplicaEntry { seq, prev: prev.head, nonce, ciphertext }.encode();
        self.advance_chain(ReplicaChain { seq, head: keccak256_parts(&[&bytes]) });
        bytes
    }

    fn advance_chain(&mut self, chain: ReplicaChain) {
        self.state.replica = chain;
        self.state.dirty = true;
        self.log(tag::REPLICATED, &chain);
    }

    /// A follower applies the next committed entry: checked (chain order, group key), its
    /// inputs replayed, and the result sealed locally. Returns the sealed blob, which the
    /// host persists like any other. An entry out of order, not chained to this state, or
    /// not produced by a replica of this group is refused and changes nothing. An authentic
    /// entry that does not replay means this enclave's state is not the group's (it led
    /// and was deposed with unreplicated flushes): it must be rebuilt from a group snapshot.
    pub fn apply_entry(&mut self, bytes: &[u8]) -> Result<Vec<u8>, HubError> {
        let entry = ReplicaEntry::decode(bytes)?;
        let at = self.state.replica;
        if entry.seq != at.seq + 1 {
            return Err(HubError::EntryOutOfOrder { expected: at.seq + 1, got: entry.seq });
        }
        if entry.prev != at.head {
            return Err(HubError::EntryNotChained(entry.seq));
        }
        let inputs = group_cipher(&self.key.secret_bytes())
            .decrypt(
                Nonce::from_slice(&entry.nonce),
                Payload { msg: &entry.ciphertext, aad: &ReplicaEntry::aad(entry.seq, &entry.prev) },
            )
            .map_err(|_| HubError::ForgedReplicaData)?;
        if !self.pending.is_empty() {
            // A follower takes no inputs of its own: anything pending would be lost or
            // interleaved with the leader's.
            return Err(HubError::FollowerHasOwnInputs);
        }
        let mut rest = inputs.as_slice();
        while !rest.is_empty() {
            let input = HubInput::deserialize(&mut rest).map_err(|_| HubError::MalformedReplicaData)?;
            self.replay(input).map_err(|_| HubError::ReplayDiverged { index: entry.seq as usize })?;
        }
        self.pending = inputs;
        self.advance_chain(ReplicaChain { seq: entry.seq, head: keccak256_parts(&[bytes]) });
        Ok(self.seal())
    }

    /// The whole state at the current entry boundary, for a replica that joins late or lags
    /// behind what the group has purged. Refused with inputs not yet flushed (they belong to
    /// no entry).
    pub fn group_snapshot(&self) -> Result<Vec<u8>, HubError> {
        if !self.pending.is_empty() {
            return Err(HubError::NotAtEntryBoundary);
        }
        let chain = self.state.replica;
        let nonce = unique_nonce(&self.platform, b"snapshot", chain.seq);
        let plaintext = borsh::to_vec(&self.state).expect("writing to a Vec never fails");
        let ciphertext = group_cipher(&self.key.secret_bytes())
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad: &GroupSnapshot::aad(&chain) })
            .expect("encryption into a Vec never fails");
        Ok(GroupSnapshot { chain, nonce, ciphertext }.encode())
    }

    /// Replaces this enclave's state with a group snapshot (a lagging or deposed replica
    /// catching up); returns the local seal (a snapshot) to persist.
    pub fn install_group_snapshot(&mut self, bytes: &[u8]) -> Result<Vec<u8>, HubError> {
        let state = open_group_snapshot(&self.key.secret_bytes(), bytes)?;
        if state.config.measurement != self.state.config.measurement {
            return Err(HubError::ForgedReplicaData);
        }
        self.state = state;
        self.index = InstanceIndex::of(&self.state.instances, &self.state.used_orders);
        self.pending.clear();
        self.budget.set_snapshot_due();
        Ok(self.seal())
    }

    /// A second coordinator with this one's identity and state, on another platform: the
    /// leader's live coordinator, forked from its committed state (the follower's) when it
    /// takes office. The live one runs ahead (its flushes are replicated, then committed);
    /// this one keeps following only what is committed. Refused with inputs not yet flushed.
    /// Returns the fork and its first seal (a snapshot).
    pub fn fork<Q: Platform>(&self, platform: Q) -> Result<(Coordinator<Q>, Vec<u8>), HubError> {
        if !self.pending.is_empty() {
            return Err(HubError::NotAtEntryBoundary);
        }
        let mut budget = LogBudget::default();
        budget.set_snapshot_due();
        let mut fork = Coordinator {
            platform,
            key: self.key.clone(),
            state: self.state.clone(),
            pending: Vec::new(),
            budget,
            index: InstanceIndex::of(&self.state.instances, &self.state.used_orders),
            replicating: true,
            // The same replica: its live enclave counts as the member its shadow is.
            member: self.member.clone(),
            held: Default::default(),
        };
        fork.state.dirty = true;
        let sealed = fork.seal();
        Ok((fork, sealed))
    }

    /// Gives the hub identity secret to a joining replica's enclave: only for a quote that
    /// the attestation authority signed for the hub's own measurement, and encrypted so that
    /// only the enclave holding the quoted key can open it.
    pub fn provision(&self, quote: &Quote) -> Result<ProvisionGift, HubError> {
        quote.verify(self.state.config.attestation_authority, &[self.state.config.measurement])?;
        let (_, shared) = self.key.session_with(&quote.report.public_key)?;
        // Deterministic encryption of a constant: the same gift for the same enclave, so a
        // fixed nonce under this pair's key never encrypts two different messages.
        let ciphertext = provision_cipher(&shared)
            .encrypt(
                Nonce::from_slice(&[0; 12]),
                Payload { msg: &self.key.secret_bytes(), aad: &self.state.config.measurement },
            )
            .expect("encryption into a Vec never fails");
        Ok(ProvisionGift { identity: self.key.public_key(), ciphertext })
    }
}

fn open_group_snapshot(identity_secret: &[u8; 32], bytes: &[u8]) -> Result<HubState, HubError> {
    let snapshot = GroupSnapshot::decode(bytes)?;
    let plaintext = group_cipher(identity_secret)
        .decrypt(
            Nonce::from_slice(&snapshot.nonce),
            Payload { msg: &snapshot.ciphertext, aad: &GroupSnapshot::aad(&snapshot.chain) },
        )
        .map_err(|_| HubError::ForgedReplicaData)?;
    let state: HubState = borsh::from_slice(&plaintext).map_err(|_| HubError::MalformedReplicaData)?;
    if state.replica != snapshot.chain {
        return Err(HubError::ForgedReplicaData);
    }
    Ok(state)
}

/// A hub enclave that has not joined a group yet: its own key, for the quote that gets it
/// provisioned, and nothing else.
#[derive(Debug)]
pub struct Candidate<P: Platform> {
    platform: P,
    key: SigningKey,
    measurement: Hash32,
}

impl<P: Platform> Candidate<P> {
    pub fn new(platform: P, measurement: Hash32, entropy: [u8; 32]) -> Result<Self, HubError> {
        Ok(Self { platform, key: SigningKey::from_entropy(entropy)?, measurement })
    }

    /// This enclave's key, as its attestation report shows it.
    pub fn report(&self, chain: ChainId) -> Report {
        Report::of(&self.key, self.measurement, chain)
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// Opens a gift made for this enclave and becomes a replica with the group's state from
    /// `snapshot`. Returns the replica and its first local seal (persist it before use).
    pub fn join(self, gift: &ProvisionGift, snapshot: &[u8]) -> Result<(Coordinator<P>, Vec<u8>), HubError> {
        let (identity_address, shared) = self.key.session_with(&gift.identity)?;
        let secret: [u8; 32] = provision_cipher(&shared)
            .decrypt(Nonce::from_slice(&[0; 12]), Payload { msg: &gift.ciphertext, aad: &self.measurement })
            .map_err(|_| HubError::ForgedReplicaData)?
            .try_into()
            .map_err(|_| HubError::MalformedReplicaData)?;
        let key = SigningKey::from_entropy(secret)?;
        if key.address() != identity_address {
            return Err(HubError::ForgedReplicaData);
        }
        let state = open_group_snapshot(&secret, snapshot)?;
        if state.config.measurement != self.measurement {
            return Err(HubError::ForgedReplicaData);
        }
        let index = InstanceIndex::of(&state.instances, &state.used_orders);
        let mut budget = LogBudget::default();
        budget.set_snapshot_due();
        let mut hub = Coordinator {
            platform: self.platform,
            key,
            state,
            pending: Vec::new(),
            budget,
            index,
            replicating: true,
            // The key its quote showed becomes its member key: the operators admit it by
            // the address the attested quote carries.
            member: Some(self.key),
            held: Default::default(),
        };
        let sealed = hub.seal();
        Ok((hub, sealed))
    }
}
