//! The hub enclave as the state machine of the hub group's Raft log (issue 15).
//!
//! Every replica keeps a *follower* coordinator (the shadow) that applies committed entries
//! only, in order, sealing each on its own platform (`<state>/shadow`): it is always exactly
//! the group's committed state, and it survives a restart from its own sealed log. The leader
//! runs its executor on a *fork* of it (`<state>/leader`), which runs ahead: each flush yields
//! an entry that is committed on a majority before anything of that flush leaves, and then
//! reaches every shadow, the leader's own included. A replica that loses the lead discards
//! its fork; whoever leads next forks its own shadow, which holds every committed flush.

use teepay_coordinator::{Coordinator, GroupSnapshot, Receipt, ReplicaEntry};
use teepay_link::host::FilePlatform;
use teepay_replica::Apply;
use teepay_replica::state_machine::Replayed;

/// The shadow coordinator behind a replica's Raft state machine.
#[derive(Debug)]
pub struct HubApply {
    shadow: Coordinator<FilePlatform>,
    /// The sequence number of the last entry the shadow holds: a receipt request waits on it.
    applied: tokio::sync::watch::Sender<u64>,
}

/// How long a follower waits to have applied the entry a receipt is asked for: the leader
/// asks right after the commit, which the follower learns with the next append.
const RECEIPT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl HubApply {
    pub fn new(shadow: Coordinator<FilePlatform>) -> Self {
        let (applied, _) = tokio::sync::watch::channel(shadow.replica_chain().seq);
        Self { shadow, applied }
    }

    fn note_applied(&self) {
        self.applied.send_replace(self.shadow.replica_chain().seq);
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
        self.shadow.apply_entry(delta).map_err(|e| e.to_string())?;
        self.note_applied();
        Ok(())
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
        self.shadow.install_group_snapshot(snapshot).map_err(|e| e.to_string())?;
        self.note_applied();
        Ok(())
    }
}

/// Answers the leader's receipt requests from this replica's shadow (commit receipts,
/// `teepay_coordinator::group`): once it has applied the entry asked for (waiting a little
/// for it), its enclave signs a receipt for everything it holds.
pub fn receipt_source(sm: Replayed<HubApply>) -> teepay_replica::network::ReceiptSource {
    let applied = sm.with_app(|a| a.applied.subscribe());
    std::sync::Arc::new(move |seq| {
        let (sm, mut applied) = (sm.clone(), applied.clone());
        Box::pin(async move {
            let _ = tokio::time::timeout(RECEIPT_WAIT, applied.wait_for(|s| *s >= seq)).await;
            sm.with_app(|a| {
                let held = a.shadow.replica_chain().seq;
                if held < seq {
                    return Err(format!("this replica holds entries up to {held}, not {seq} yet"));
                }
                let receipt = a.shadow.receipt().ok_or("this replica's enclave is not a group member")?;
                Ok(teepay_types::encode(&receipt))
            })
        })
    })
}

/// Signs replica links with the hub identity, inside the shadow's enclave (every
/// provisioned replica holds the identity; nothing else does).
#[derive(Debug)]
pub struct ShadowSigner(pub Replayed<HubApply>);

impl teepay_replica::network::LinkSigner for ShadowSigner {
    fn sign(
        &self,
        transcript: teepay_types::Hash32,
        role: teepay_types::LinkRole,
    ) -> teepay_types::Signature {
        self.0.with_app(|a| a.shadow().sign_link(&transcript, role))
    }
    fn identity(&self) -> teepay_types::Address {
        self.0.with_app(|a| a.shadow().address())
    }
}

/// Commits the leader's flushes through the group's Raft log, and asks the other replicas
/// for the receipts their enclaves sign once they hold them.
#[derive(Clone)]
pub struct RaftGate {
    raft: teepay_replica::Raft,
    receipts: Option<std::sync::Arc<teepay_replica::network::ReceiptClient>>,
}

/// How long one receipt request may take, the follower's wait for the entry included.
const RECEIPT_TTL: std::time::Duration = std::time::Duration::from_millis(1_000);

impl RaftGate {
    pub fn new(raft: teepay_replica::Raft) -> Self {
        Self { raft, receipts: None }
    }

    /// Also asks `peers` (every other replica's Raft address) for receipts, over links
    /// authenticated by `signer`.
    pub fn with_receipts(
        mut self,
        peers: impl IntoIterator<Item = (teepay_replica::ReplicaId, String)>,
        signer: std::sync::Arc<dyn teepay_replica::network::LinkSigner>,
    ) -> Self {
        let client = teepay_replica::network::ReceiptClient::new(peers, signer);
        self.receipts = Some(std::sync::Arc::new(client));
        self
    }
}

impl std::fmt::Debug for RaftGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftGate")
    }
}

type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl crate::service::ReleaseGate for RaftGate {
    fn committed(&self, entry: Vec<u8>) -> Pending<'_, Result<(), String>> {
        Box::pin(async move {
            self.raft.client_write(teepay_replica::Delta(entry)).await.map(drop).map_err(|e| e.to_string())
        })
    }

    fn receipts(&self, seq: u64) -> Pending<'_, Vec<Receipt>> {
        Box::pin(async move {
            let Some(client) = &self.receipts else { return Vec::new() };
            // A majority of the group counting the leader itself: half of the others.
            let voters = self.raft.metrics().borrow().membership_config.membership().voter_ids().count();
            let enough = voters / 2;
            let answers = client.gather(seq, enough, RECEIPT_TTL).await;
            answers.iter().filter_map(|bytes| teepay_types::decode::<Receipt>(bytes).ok()).collect()
        })
    }
}

/// A hub group with every replica in this process, each with its own directory and Raft on
/// loopback (benchmarks and tests; `teepay hub` runs one replica per process,
/// `replicated.rs`). Replica 1 creates the identity, the others are provisioned by it.
pub struct LocalGroup {
    dirs: Vec<std::path::PathBuf>,
    addrs: Vec<String>,
    raft_config: std::sync::Arc<teepay_replica::openraft::Config>,
    pub replicas: std::collections::BTreeMap<teepay_replica::ReplicaId, LocalReplica>,
}

pub struct LocalReplica {
    pub raft: teepay_replica::Raft,
    pub sm: teepay_replica::state_machine::Replayed<HubApply>,
    signer: std::sync::Arc<ShadowSigner>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LocalReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReplica").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LocalGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGroup").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

/// A local group's setup failed (files, Raft, or the enclaves).
#[derive(Debug, thiserror::Error)]
#[error("local hub group: {0}")]
pub struct LocalGroupError(String);

fn local(e: impl std::fmt::Display) -> LocalGroupError {
    LocalGroupError(e.to_string())
}

impl LocalGroup {
    /// `n` replicas under `dir` (`dir/r1`, …), the first creating the hub identity with
    /// `config`; `authority` stands in for the attestation service. The group is governed
    /// by `governance` (`teepay_coordinator::group`): its enclaves release a flush only for
    /// a majority's commit receipts, every replica a member from the start.
    pub async fn start(
        dir: &std::path::Path,
        n: usize,
        config: teepay_coordinator::HubConfig,
        authority: &teepay_types::SigningKey,
        governance: &teepay_types::SigningKey,
    ) -> Result<Self, LocalGroupError> {
        Self::start_with(dir, n, config, authority, governance, teepay_replica::config()).await
    }

    /// [`LocalGroup::start`] with these Raft settings (tests: a small snapshot interval).
    pub async fn start_with(
        dir: &std::path::Path,
        n: usize,
        config: teepay_coordinator::HubConfig,
        authority: &teepay_types::SigningKey,
        governance: &teepay_types::SigningKey,
        raft_config: teepay_replica::openraft::Config,
    ) -> Result<Self, LocalGroupError> {
        let raft_config = std::sync::Arc::new(raft_config.validate().map_err(local)?);
        use teepay_coordinator::Candidate;
        let dirs: Vec<std::path::PathBuf> = (1..=n).map(|i| dir.join(format!("r{i}"))).collect();
        let measurement = config.measurement;
        let entropy = teepay_link::os_entropy().map_err(local)?;
        let platform = FilePlatform::open(&dirs[0].join("shadow")).map_err(local)?;
        let mut founder = Coordinator::create(platform, config, entropy).map_err(local)?;
        let founder_member = founder
            .found_group(governance.address(), teepay_link::os_entropy().map_err(local)?)
            .map_err(local)?;
        // Each joining enclave's key (shown by its quote) becomes its member key: the
        // operators admit all of them before the group starts.
        let mut candidates = Vec::new();
        for d in &dirs[1..] {
            let platform = FilePlatform::open(&d.join("shadow")).map_err(local)?;
            let candidate = Candidate::new(platform, measurement, teepay_link::os_entropy().map_err(local)?)
                .map_err(local)?;
            let quote = candidate.report(teepay_types::ChainId(0)).attest(authority);
            candidates.push((candidate, quote));
        }
        let members =
            std::iter::once(founder_member).chain(candidates.iter().map(|(_, q)| q.report.enclave)).collect();
        let signed = teepay_coordinator::SignedMembership::sign(governance, founder.address(), 1, members);
        founder.update_membership(&signed).map_err(local)?;
        founder.flush();
        let snapshot = founder.group_snapshot().map_err(local)?;
        let mut shadows = vec![founder];
        for (candidate, quote) in candidates {
            let gift = shadows[0].provision(&quote).map_err(local)?;
            shadows.push(candidate.join(&gift, &snapshot).map_err(local)?.0);
        }
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(local)?;
            addrs.push(l.local_addr().map_err(local)?.to_string());
            listeners.push(l);
        }
        let mut group = LocalGroup { dirs, addrs, raft_config, replicas: Default::default() };
        for (i, (shadow, listener)) in shadows.into_iter().zip(listeners).enumerate() {
            let id = i as teepay_replica::ReplicaId + 1;
            let replica = group.start_replica(id, shadow, listener).await?;
            group.replicas.insert(id, replica);
        }
        let members = (0..n)
            .map(|i| {
                (
                    i as teepay_replica::ReplicaId + 1,
                    teepay_replica::openraft::BasicNode::new(&group.addrs[i]),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        group.replicas[&1].raft.initialize(members).await.map_err(local)?;
        Ok(group)
    }

    async fn start_replica(
        &self,
        id: teepay_replica::ReplicaId,
        shadow: Coordinator<FilePlatform>,
        listener: tokio::net::TcpListener,
    ) -> Result<LocalReplica, LocalGroupError> {
        use teepay_replica::log_store::FileLogStore;
        use teepay_replica::state_machine::Replayed;
        let dir = self.dirs[(id - 1) as usize].join("raft");
        let votes = SealedVotes::open(&self.dirs[(id - 1) as usize].join("raft-vote")).map_err(local)?;
        let log = FileLogStore::open_with(&dir, Some(std::sync::Arc::new(votes))).map_err(local)?;
        let sm = Replayed::open(&dir, HubApply::new(shadow)).map_err(local)?;
        let config = self.raft_config.clone();
        let signer = std::sync::Arc::new(ShadowSigner(sm.clone()));
        let network = teepay_replica::network::TcpNetwork::new(signer.clone());
        let raft = teepay_replica::Raft::new(id, config, network, log, sm.clone()).await.map_err(local)?;
        let services = teepay_replica::network::Services {
            provisioner: None,
            receipts: Some(receipt_source(sm.clone())),
        };
        let server = tokio::spawn(teepay_replica::network::serve_with(
            listener,
            raft.clone(),
            signer.clone(),
            services,
        ));
        Ok(LocalReplica { raft, sm, signer, server })
    }

    /// Waits (up to 10 s) until the running replicas agree on a leader.
    pub async fn leader(&self) -> Result<teepay_replica::ReplicaId, LocalGroupError> {
        let start = std::time::Instant::now();
        loop {
            let views: Vec<_> =
                self.replicas.values().map(|r| r.raft.metrics().borrow().current_leader).collect();
            if let Some(Some(l)) = views.first()
                && self.replicas.contains_key(l)
                && views.iter().all(|v| *v == Some(*l))
            {
                return Ok(*l);
            }
            if start.elapsed() > std::time::Duration::from_secs(10) {
                return Err(LocalGroupError(format!("no leader agreed on: {views:?}")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Replica `id` takes office: its live coordinator (a fork of its shadow, once every
    /// committed entry is applied) and the gate its executor releases flushes through.
    pub async fn take_office(
        &self,
        id: teepay_replica::ReplicaId,
    ) -> Result<(Coordinator<FilePlatform>, std::sync::Arc<dyn crate::service::ReleaseGate>), LocalGroupError>
    {
        let r = &self.replicas[&id];
        r.raft.ensure_linearizable().await.map_err(local)?;
        let platform = FilePlatform::open(&self.dirs[(id - 1) as usize].join("leader")).map_err(local)?;
        let (live, _) = r.sm.with_app(|a| a.shadow().fork(platform)).map_err(local)?;
        let peers = (1..=self.addrs.len() as teepay_replica::ReplicaId)
            .filter(|peer| *peer != id)
            .map(|peer| (peer, self.addrs[(peer - 1) as usize].clone()));
        let gate = RaftGate::new(r.raft.clone()).with_receipts(peers, r.signer.clone());
        Ok((live, std::sync::Arc::new(gate)))
    }

    /// Stops replica `id` as a crash would (its files stay).
    pub async fn stop(&mut self, id: teepay_replica::ReplicaId) {
        if let Some(r) = self.replicas.remove(&id) {
            r.server.abort();
            let _ = r.raft.shutdown().await;
        }
    }

    /// Restarts replica `id` from its files, on its old address.
    pub async fn restart(&mut self, id: teepay_replica::ReplicaId) -> Result<(), LocalGroupError> {
        let i = (id - 1) as usize;
        // Its old port may be held for a moment (`teepay_link::tcp::listen`).
        let addr =
            self.addrs[i].parse().map_err(|e| local(format!("replica address {}: {e}", self.addrs[i])))?;
        let listener = teepay_link::tcp::listen(addr, crate::RESTART_PATIENCE).await.map_err(local)?;
        let platform = FilePlatform::open(&self.dirs[i].join("shadow")).map_err(local)?;
        let log = platform
            .restorable(&self.dirs[i].join("unused"))
            .map_err(local)?
            .ok_or_else(|| local("no state"))?;
        let shadow = Coordinator::restore(platform, &log).map_err(local)?;
        let replica = self.start_replica(id, shadow, listener).await?;
        self.replicas.insert(id, replica);
        Ok(())
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<_> = self.replicas.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// The replica's Raft vote and log head sealed on a platform of its own (`<state>/raft-vote`):
/// bound to the platform's monotonic counter like the enclave's state, so a restored older
/// copy is refused as stale instead of letting the replica vote twice in one term or forget
/// acknowledged entries.
#[derive(Debug)]
pub struct SealedVotes {
    platform: std::sync::Mutex<(FilePlatform, Option<usize>)>,
}

const VOTE_DOMAIN: &[u8] = b"teepay/raft-vote/v1";
/// Saves between two snapshots of the sealed log. Each save is sealed whole; appending it as
/// a delta costs one fsync where a snapshot costs two and a rename, and every Raft append
/// saves once.
const SAVES_PER_SNAPSHOT: usize = 1024;

impl SealedVotes {
    pub fn open(dir: &std::path::Path) -> std::io::Result<Self> {
        let platform = FilePlatform::open(dir)?;
        let at_open = platform.sealed_at_open();
        let since_snapshot = at_open.blobs().next().is_some().then(|| at_open.delta_count());
        Ok(Self { platform: std::sync::Mutex::new((platform, since_snapshot)) })
    }
}

impl teepay_replica::log_store::VoteStore for SealedVotes {
    fn save(&self, vote: &[u8]) -> Result<(), String> {
        let mut guard = self.platform.lock().unwrap_or_else(|p| p.into_inner());
        let (platform, since_snapshot) = &mut *guard;
        // The platform writes the blob together with its counter (FilePlatform::record_sealed).
        match since_snapshot {
            Some(n) if *n < SAVES_PER_SNAPSHOT => {
                teepay_types::seal_delta(platform, VOTE_DOMAIN, vote);
                *n += 1;
            }
            _ => {
                teepay_types::seal(platform, VOTE_DOMAIN, vote);
                *since_snapshot = Some(0);
            }
        }
        Ok(())
    }

    fn load(&self) -> Result<Option<Vec<u8>>, String> {
        let guard = self.platform.lock().unwrap_or_else(|p| p.into_inner());
        let platform = &guard.0;
        if platform.sealed_at_open().blobs().next().is_none() {
            return Ok(None);
        }
        let opened = teepay_types::unseal_log(platform, VOTE_DOMAIN, platform.sealed_at_open())
            .map_err(|e| format!("sealed vote: {e}"))?;
        Ok(Some(opened.deltas.last().cloned().unwrap_or(opened.snapshot)))
    }
}
