//! teepay-coordinator: the hub enclave (DESIGN §5).
//!
//! Creates instances, verifies node acks, drives NONE → PREPARED → COMMITTED or
//! REFUND_AUTHORIZED, follows on-chain outcomes (RESOLVE), and times out by an injected
//! clock. Round messages are queued per node and leave only through [`Coordinator::flush`],
//! as one signed batch per node; `flush` also returns the sealed state, which the host must
//! persist before sending anything, so a decision (CONFIRM xor REFUND) can never be
//! forgotten or contradicted after a restart.
//!
//! Sealing is incremental: every input that changed the state is logged (it is
//! deterministic given the state), and `flush` seals the inputs since the previous seal as
//! one delta; [`Coordinator::restore`] replays them on the last snapshot. A snapshot is
//! sealed only once the deltas outgrow it ([`LogBudget`]).
//!
//! Pure: no I/O, clock or RNG.

mod error;
mod instance;

pub use error::HubError;
pub use instance::{HubInstance, HubPhase, RefundReason};

use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::{BTreeMap, BTreeSet};
use teepay_types::{
    Address, Auth, ChainId, Hash32, HubBatch, HubItem, InstanceId, InstanceKind, InstanceSpec, Leg, NodeItem,
    Order, Outcome, PeerAck, Platform, Quote, Report, RoundAuth, SignedHubBatch, SignedNodeAck, SignedOrder,
    SignedRefundRequest, SigningKey, leaf_hash, macs_equal, seal_delta, seal_value, session_mac, unseal_log,
    verify_signer,
};
pub use teepay_types::{LogBudget, SealLimits, SealedLog};

mod group;
mod replica;
pub use group::{Membership, Receipt, SignedMembership};
pub use replica::{Candidate, GroupSnapshot, ProvisionGift, ReplicaChain, ReplicaEntry};

const SEAL_DOMAIN: &[u8] = b"teepay/hub-seal/v1";

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct HubConfig {
    pub measurement: Hash32,
    pub attestation_authority: Address,
    pub allowed_node_measurements: Vec<Hash32>,
    /// How long nodes may take to PREPARE before the hub refunds (clock units of `now`).
    pub prepare_timeout: u64,
    /// Resend the current round message to silent nodes after this long.
    pub retransmit_after: u64,
    /// Session MACs (the session is derived when a node is admitted), or a signature on
    /// every batch.
    pub round_auth: RoundAuth,
    /// New instances ask for peer acks (`--verify-peer-acks`): each node signs its PREPARED
    /// ack on its own and COMMIT forwards all of them, so nodes need not trust this enclave
    /// alone that every participant locked.
    pub peer_acks: bool,
    /// How long after a swap's deadline its locks' last-resort deadline falls (clock units of
    /// `now`): a swap is CONFIRMed only before its deadline, so every CONFIRM certificate
    /// has at least this long to reach a chain before anyone may claim REVERT there.
    pub swap_lock_time: u64,
}

/// A day in clock units (ms): the default [`HubConfig::swap_lock_time`] is two.
pub const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct HubState {
    pub config: HubConfig,
    pub nodes: BTreeSet<Address>,
    /// Session keys shared with nodes (ECDH), each derived when the node's quote is admitted.
    pub sessions: BTreeMap<Address, Hash32>,
    pub instances: BTreeMap<InstanceId, HubInstance>,
    pub next_instance: u64,
    /// Items waiting for the next flush, per node, keyed by (instance, round) so a
    /// re-queued item is deduplicated in O(log n) and rounds of one instance stay in order.
    pub outbox: BTreeMap<Address, BTreeMap<(InstanceId, u8), HubItem>>,
    /// Digest → expiry of every order an instance has carried, kept until
    /// [`ORDER_EXPIRY_MARGIN`] after the order expires: an order starts at most one instance,
    /// so neither a host nor a replayed request can have a refunded order paid later.
    pub used_orders: BTreeMap<Hash32, u64>,
    /// Set when the state changed since the last seal.
    pub dirty: bool,
    /// The last replicated-log entry this state includes (`replica.rs`; zero for a hub that
    /// never replicated).
    pub replica: ReplicaChain,
    /// A group's members and its governance key (`group.rs`); `None` for a single hub.
    pub membership: Option<group::Membership>,
}

/// How long past its expiry the hub enclave remembers a used order (clock units of `now`:
/// milliseconds in the services, 10 minutes). The payer's enclave refuses an expired order by
/// its own clock, so a replay after the hub forgets it would need the payer's clock to run
/// this far behind the hub's.
pub const ORDER_EXPIRY_MARGIN: u64 = 600_000;

/// Latest expiry an order may carry, from the hub's `now` (a day in the services' ms): what
/// bounds `used_orders`, since the order's owner picks its expiry.
pub const MAX_ORDER_LIFETIME: u64 = 24 * 60 * 60 * 1000;

/// What one node ack did, item by item.
#[derive(Debug, Clone)]
pub struct AckResult {
    pub results: Vec<Result<(), HubError>>,
}

/// Batches to send, and the sealed state to persist before sending them.
#[derive(Debug, Clone)]
pub struct Flush {
    pub batches: Vec<SignedHubBatch>,
    pub sealed: Option<Vec<u8>>,
    /// With replication on: this flush's entry of the replicated log, to be committed on a
    /// majority of the group before any batch leaves.
    pub replicated: Option<Vec<u8>>,
}

#[derive(BorshSerialize, BorshDeserialize)]
struct SealedContents {
    secret: [u8; 32],
    /// The member key of a group's replica (`group.rs`).
    member: Option<[u8; 32]>,
    state: HubState,
}

/// What is sealed: the same encoding as [`SealedContents`], borrowing the state instead of
/// cloning it (the state is the bulk of every seal).
#[derive(BorshSerialize)]
struct SealedContentsRef<'a> {
    secret: [u8; 32],
    member: Option<[u8; 32]>,
    state: &'a HubState,
}

#[derive(Debug, Clone)]
pub struct Coordinator<P: Platform> {
    platform: P,
    key: SigningKey,
    state: HubState,
    /// The inputs that changed the state since the last seal, each a borsh-encoded
    /// [`HubInput`]: the next delta.
    pending: Vec<u8>,
    /// When the next seal is a snapshot rather than a delta (enclave memory, not sealed).
    budget: LogBudget,
    /// Indexes over `state.instances` (derived, rebuilt on restore), so that a tick costs
    /// the instances in flight, not the complete ones kept until their deadline.
    index: InstanceIndex,
    /// Whether flushes also yield replicated-log entries (a host setting, `replica.rs`;
    /// always on in a group).
    replicating: bool,
    /// This replica's member key in a group (`group.rs`): sealed, never replicated.
    member: Option<SigningKey>,
    /// Flushes whose batches wait for a majority's receipts (enclave memory).
    held: std::collections::VecDeque<group::Held>,
}

/// Which instances are still open (not complete), the complete ones by deadline, and the
/// used orders by expiry.
#[derive(Debug, Clone, Default)]
struct InstanceIndex {
    open: BTreeSet<InstanceId>,
    complete: BTreeSet<(u64, InstanceId)>,
    orders_by_expiry: BTreeSet<(u64, Hash32)>,
}

impl InstanceIndex {
    fn of(instances: &BTreeMap<InstanceId, HubInstance>, used_orders: &BTreeMap<Hash32, u64>) -> Self {
        let mut index = Self {
            orders_by_expiry: used_orders.iter().map(|(digest, expiry)| (*expiry, *digest)).collect(),
            ..Self::default()
        };
        for (id, instance) in instances {
            if instance.is_complete() {
                index.complete.insert((instance.spec.deadline, *id));
            } else {
                index.open.insert(*id);
            }
        }
        index
    }
}

/// One logged input, as sealed in a delta. The public entry points encode their arguments
/// by reference in this layout (borsh: the variant index, then the fields in order) so the
/// hot path clones nothing; the replay test decodes what they wrote.
#[derive(Debug, BorshDeserialize)]
enum HubInput {
    RoundAuth(RoundAuth),
    RegisterNode(Quote),
    CreateInstance { now: u64, kind: InstanceKind, legs: Vec<Leg>, orders: Vec<SignedOrder> },
    Ack { now: u64, ack: SignedNodeAck },
    RefundRequest { now: u64, request: SignedRefundRequest },
    ChainOutcome { now: u64, id: InstanceId, outcome: Outcome },
    Tick(u64),
    Prune(u64),
    Flush,
    PeerAcks(bool),
    Replicated(ReplicaChain),
    FoundGroup(group::Membership),
    Membership(group::SignedMembership),
}

/// Variant indices of [`HubInput`], in declaration order.
mod tag {
    pub const ROUND_AUTH: u8 = 0;
    pub const REGISTER_NODE: u8 = 1;
    pub const CREATE_INSTANCE: u8 = 2;
    pub const ACK: u8 = 3;
    pub const REFUND_REQUEST: u8 = 4;
    pub const CHAIN_OUTCOME: u8 = 5;
    pub const TICK: u8 = 6;
    pub const PRUNE: u8 = 7;
    pub const FLUSH: u8 = 8;
    pub const PEER_ACKS: u8 = 9;
    pub const REPLICATED: u8 = 10;
    pub const FOUND_GROUP: u8 = 11;
    pub const MEMBERSHIP: u8 = 12;
}

impl<P: Platform> Coordinator<P> {
    pub fn create(platform: P, config: HubConfig, entropy: [u8; 32]) -> Result<Self, HubError> {
        let key = SigningKey::from_entropy(entropy)?;
        let state = HubState {
            config,
            nodes: BTreeSet::new(),
            sessions: BTreeMap::new(),
            instances: BTreeMap::new(),
            used_orders: BTreeMap::new(),
            next_instance: 0,
            outbox: BTreeMap::new(),
            dirty: true,
            replica: ReplicaChain::default(),
            membership: None,
        };
        let mut budget = LogBudget::default();
        // The first seal must be a snapshot: there is nothing for a delta to apply to.
        budget.set_snapshot_due();
        Ok(Self {
            platform,
            key,
            state,
            pending: Vec::new(),
            budget,
            index: InstanceIndex::default(),
            replicating: false,
            member: None,
            held: Default::default(),
        })
    }

    /// Restarts from the sealed log (the last snapshot and the deltas after it), replaying
    /// the logged inputs. Stale (rolled-back or truncated), gapped, tampered or foreign logs
    /// are refused.
    pub fn restore(platform: P, log: &SealedLog) -> Result<Self, HubError> {
        let opened = unseal_log(&platform, SEAL_DOMAIN, log)?;
        let contents: SealedContents =
            borsh::from_slice(&opened.snapshot).map_err(|_| teepay_types::SealError::Undecodable)?;
        let key = SigningKey::from_entropy(contents.secret)?;
        let member = contents.member.map(SigningKey::from_entropy).transpose()?;
        let budget = LogBudget::after_restore(&opened);
        let index = InstanceIndex::of(&contents.state.instances, &contents.state.used_orders);
        let mut hub = Self {
            platform,
            key,
            state: contents.state,
            pending: Vec::new(),
            budget,
            index,
            replicating: false,
            member,
            held: Default::default(),
        };
        for (index, delta) in opened.deltas.iter().enumerate() {
            let mut rest = delta.as_slice();
            while !rest.is_empty() {
                let input =
                    HubInput::deserialize(&mut rest).map_err(|_| teepay_types::SealError::Undecodable)?;
                // Deterministic: the same state and input change the state the same way, so
                // an input that now fails means the log is not this enclave's history.
                hub.replay(input).map_err(|_| HubError::ReplayDiverged { index })?;
            }
        }
        Ok(hub)
    }

    pub(crate) fn replay(&mut self, input: HubInput) -> Result<(), HubError> {
        match input {
            HubInput::RoundAuth(mode) => self.state.config.round_auth = mode,
            HubInput::PeerAcks(on) => self.state.config.peer_acks = on,
            HubInput::RegisterNode(quote) => {
                self.admit(&quote)?;
            }
            HubInput::CreateInstance { now, kind, legs, orders } => {
                self.new_instance(now, kind, legs, orders)?;
            }
            HubInput::Ack { now, ack } => {
                self.ack(now, &ack)?;
            }
            HubInput::RefundRequest { now, request } => self.refund_requested(now, &request)?,
            HubInput::ChainOutcome { now, id, outcome } => {
                self.chain_outcome(now, id, outcome)?;
            }
            HubInput::Tick(now) => {
                self.advance(now);
            }
            HubInput::Prune(now) => {
                self.prune(now);
            }
            HubInput::Flush => {
                // What a flush does to the state: the outbox empties (authenticating the
                // batches, which are not state, would only cost a follower signatures).
                self.state.outbox.clear();
                self.state.dirty = false;
            }
            HubInput::Replicated(chain) => self.state.replica = chain,
            HubInput::FoundGroup(membership) => self.state.membership = Some(membership),
            HubInput::Membership(signed) => self.change_membership(&signed)?,
        }
        Ok(())
    }

    /// Appends one input to the pending delta: its variant `tag`, then its fields.
    pub(crate) fn log<T: BorshSerialize>(&mut self, tag: u8, fields: &T) {
        self.pending.push(tag);
        fields.serialize(&mut self.pending).expect("writing to a Vec never fails");
    }

    /// When seals are snapshots rather than deltas ([`SealLimits::FULL`]: always, as before
    /// incremental sealing; for benchmarks). Not sealed: a host choice, set after restore.
    pub fn set_seal_limits(&mut self, limits: SealLimits) {
        self.budget.set_limits(limits);
    }

    pub fn seal_limits(&self) -> SealLimits {
        self.budget.limits()
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    pub fn inspect(&self) -> &HubState {
        &self.state
    }

    /// True iff the derived instance index matches the instances (checked by the sim after
    /// every step, restarts included).
    pub fn index_is_consistent(&self) -> bool {
        let rebuilt = InstanceIndex::of(&self.state.instances, &self.state.used_orders);
        rebuilt.open == self.index.open
            && rebuilt.complete == self.index.complete
            && rebuilt.orders_by_expiry == self.index.orders_by_expiry
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    pub fn report(&self, chain: ChainId) -> Report {
        Report::of(&self.key, self.state.config.measurement, chain)
    }

    /// Switches how round messages are authenticated (a host performance choice: both
    /// modes authenticate every message; sessions already established are kept).
    pub fn set_round_auth(&mut self, mode: RoundAuth) {
        if self.state.config.round_auth != mode {
            self.state.config.round_auth = mode;
            self.state.dirty = true;
            self.log(tag::ROUND_AUTH, &mode);
        }
    }

    /// Whether instances created from now on ask for peer acks (a host choice like the
    /// round authentication; instances already created keep theirs).
    pub fn set_peer_acks(&mut self, on: bool) {
        if self.state.config.peer_acks != on {
            self.state.config.peer_acks = on;
            self.state.dirty = true;
            self.log(tag::PEER_ACKS, &on);
        }
    }

    /// Admits an attested node enclave; only those may take part in instances.
    pub fn register_node(&mut self, quote: &Quote) -> Result<(), HubError> {
        if self.admit(quote)? {
            self.log(tag::REGISTER_NODE, quote);
        }
        Ok(())
    }

    fn admit(&mut self, quote: &Quote) -> Result<bool, HubError> {
        quote
            .verify(self.state.config.attestation_authority, &self.state.config.allowed_node_measurements)?;
        let node = quote.report.enclave;
        // The session key is derived here, at attestation (ECDH with the key the quote
        // carries): batches to the node can be MAC'd from the first one.
        if !self.state.sessions.contains_key(&node) {
            let (_, session) = self.key.session_with(&quote.report.public_key)?;
            self.state.sessions.insert(node, session);
        }
        let added = self.state.nodes.insert(node);
        if added {
            self.state.dirty = true;
        }
        Ok(added)
    }

    /// Creates an instance from routes and the orders that authorize them, and queues its
    /// PREPARE to every participant.
    pub fn create_instance(
        &mut self,
        now: u64,
        kind: InstanceKind,
        legs: Vec<Leg>,
        orders: Vec<SignedOrder>,
    ) -> Result<InstanceId, HubError> {
        let mark = self.pending.len();
        self.log(tag::CREATE_INSTANCE, &(now, kind, &legs, &orders));
        let created = self.new_instance(now, kind, legs, orders);
        if created.is_err() {
            self.pending.truncate(mark);
        }
        created
    }

    fn new_instance(
        &mut self,
        now: u64,
        kind: InstanceKind,
        legs: Vec<Leg>,
        orders: Vec<SignedOrder>,
    ) -> Result<InstanceId, HubError> {
        let n = self.state.next_instance;
        let id = teepay_types::instance_id(self.address(), n);
        let deadline = now.saturating_add(self.state.config.prepare_timeout);
        let lock_deadline = match kind {
            InstanceKind::MultiHop => 0,
            InstanceKind::CrossChain => deadline.saturating_add(self.state.config.swap_lock_time.max(1)),
        };
        let spec = InstanceSpec {
            id,
            seq: n,
            kind,
            legs,
            orders,
            deadline,
            lock_deadline,
            peer_acks: self.state.config.peer_acks,
        };
        spec.validate_structure()?;
        let sessions = &self.state.sessions;
        spec.verify_orders(|owner| sessions.get(owner))?;
        if let (InstanceKind::MultiHop, [leg], [SignedOrder { order: Order::Payment(req), .. }]) =
            (kind, spec.legs.as_slice(), spec.orders.as_slice())
            && leg.source() != Some(req.payer)
        {
            return Err(HubError::OrderNotFromSource);
        }
        let participants: Vec<Address> = spec.participants().into_iter().collect();
        if let Some(p) = participants.iter().find(|p| !self.state.nodes.contains(p)) {
            return Err(HubError::UnattestedNode(*p));
        }
        let digests: Vec<(Hash32, u64)> =
            spec.orders.iter().map(|o| (o.order.digest(), o.order.expires_at())).collect();
        if let Some((digest, _)) = digests.iter().find(|(_, e)| *e > now.saturating_add(MAX_ORDER_LIFETIME)) {
            return Err(HubError::OrderLivesTooLong(*digest));
        }
        if let Some((digest, _)) = digests.iter().find(|(d, _)| self.state.used_orders.contains_key(d)) {
            return Err(HubError::OrderReused(*digest));
        }
        for (digest, expiry) in digests {
            self.state.used_orders.insert(digest, expiry);
            self.index.orders_by_expiry.insert((expiry, digest));
        }
        let prepare = HubItem::Prepare(spec);
        let prepare_hash = leaf_hash(&prepare);
        for p in &participants {
            self.queue(*p, prepare.clone());
        }
        let HubItem::Prepare(spec) = prepare else { unreachable!("built above") };
        self.state.next_instance += 1;
        self.index.open.insert(id);
        self.state.instances.insert(
            id,
            HubInstance {
                spec,
                prepare_hash,
                phase: HubPhase::None,
                participants,
                prepared: BTreeMap::new(),
                peer_acks: BTreeMap::new(),
                committed: BTreeSet::new(),
                finished: BTreeSet::new(),
                refund_reason: None,
                certificate: None,
                created_at: now,
                last_sent: now,
            },
        );
        self.state.dirty = true;
        Ok(id)
    }

    fn queue(&mut self, node: Address, item: HubItem) {
        let round = match item {
            HubItem::Prepare(_) => 0,
            HubItem::Commit { .. } => 1,
            HubItem::Confirm { .. } => 2,
            HubItem::Refund { .. } => 3,
            HubItem::Resolve { .. } => 4,
        };
        self.state.outbox.entry(node).or_default().entry((item.instance(), round)).or_insert(item);
    }

    fn queue_current(&mut self, id: InstanceId, now: u64) {
        let instance = self.state.instances.get_mut(&id).expect("caller checked");
        instance.last_sent = now;
        let (item, missing) = instance.pending();
        for node in missing {
            self.queue(node, item.clone());
        }
    }

    fn decide(&mut self, id: InstanceId, phase: HubPhase, reason: Option<RefundReason>, now: u64) {
        let instance = self.state.instances.get_mut(&id).expect("caller checked");
        instance.phase = phase;
        if instance.spec.kind == InstanceKind::CrossChain
            && let Some(outcome) = phase.outcome()
        {
            // Deterministic (RFC 6979), so a replica replaying this decision makes the same.
            let cert = teepay_types::DecisionCertificate::sign(&self.key, id, outcome);
            instance.certificate = Some(cert.signature);
        }
        if reason.is_some() {
            instance.refund_reason = reason;
        }
        self.state.dirty = true;
        self.queue_current(id, now);
    }

    /// Verifies a node's batch ack (one signature or session MAC) and applies each answer.
    /// An ack that changes nothing (a duplicate, a late or repeated answer) is not logged,
    /// so it costs no durable write: a peer cannot make the hub seal at will.
    pub fn on_ack(&mut self, now: u64, signed: &SignedNodeAck) -> Result<AckResult, HubError> {
        let (result, changed) = self.tracking_changes(|hub| hub.ack(now, signed));
        if changed {
            self.log(tag::ACK, &(now, signed));
        }
        result
    }

    /// Runs `f` and reports whether it changed the sealed state (`HubState::dirty`).
    fn tracking_changes<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> (T, bool) {
        let was_dirty = std::mem::take(&mut self.state.dirty);
        let result = f(self);
        let changed = self.state.dirty;
        self.state.dirty |= was_dirty;
        (result, changed)
    }

    fn ack(&mut self, now: u64, signed: &SignedNodeAck) -> Result<AckResult, HubError> {
        let node = signed.ack.node;
        if signed.ack.hub != self.address() {
            return Err(HubError::WrongHub);
        }
        if !self.state.nodes.contains(&node) {
            return Err(HubError::UnattestedNode(node));
        }
        // Each answer's leaf hash is kept: a PREPARED's is what COMMIT binds.
        let mut leaves = Vec::with_capacity(signed.ack.items.len());
        let digest = signed.ack.digest_with(|item| {
            let leaf = leaf_hash(item);
            leaves.push(leaf);
            leaf
        });
        match signed.auth {
            Auth::Signature(signature) => {
                if !verify_signer(&digest, &signature, node) {
                    return Err(HubError::BadSignature(node));
                }
            }
            Auth::Mac(tag) => {
                let session = self.state.sessions.get(&node).ok_or(HubError::NoSession(node))?;
                if !macs_equal(&tag, &session_mac(session, &digest)) {
                    return Err(HubError::BadSignature(node));
                }
            }
        }
        let results = signed
            .ack
            .items
            .iter()
            .zip(leaves)
            .map(|(item, leaf)| self.on_item(now, node, item, leaf))
            .collect();
        Ok(AckResult { results })
    }

    /// One answer from an authenticated ack; `leaf` is `leaf_hash(item)`.
    fn on_item(&mut self, now: u64, node: Address, item: &NodeItem, leaf: Hash32) -> Result<(), HubError> {
        let id = item.instance();
        let instance = self.state.instances.get_mut(&id).ok_or(HubError::UnknownInstance(id))?;
        if !instance.participants.contains(&node) {
            return Err(HubError::NotParticipant(node));
        }
        let phase = instance.phase;
        match item {
            NodeItem::Prepared { states, signature, .. } => match phase {
                HubPhase::None => {
                    // Checked here, not by the peers only: a COMMIT they refuse could not be
                    // taken back (a multi-hop instance cannot refund after COMMIT).
                    if instance.spec.peer_acks && !instance.prepared.contains_key(&node) {
                        let ack =
                            signature.map(|signature| PeerAck { node, states: states.clone(), signature });
                        match ack {
                            Some(ack) if ack.is_valid(self.key.address(), id, &instance.prepare_hash) => {
                                instance.peer_acks.insert(node, ack);
                            }
                            _ => return Err(HubError::BadPeerAck(node)),
                        }
                    }
                    // The first PREPARED answer counts: a repeat (a retransmitted PREPARE answered
                    // again, maybe with states changed by a deposit since) must not replace the
                    // leaf COMMIT binds, nor differ from the peer ack forwarded with it.
                    if let std::collections::btree_map::Entry::Vacant(e) = instance.prepared.entry(node) {
                        e.insert(leaf);
                        self.state.dirty = true;
                    }
                    if instance.prepared.len() == instance.participants.len() {
                        self.decide(id, HubPhase::Prepared, None, now);
                    }
                }
                // A late PREPARED after the decision: that node must learn the outcome.
                _ if phase.outcome().is_some() => {
                    let (item, _) = instance.pending();
                    self.queue(node, item);
                }
                _ => {}
            },
            NodeItem::Nack { reason, .. } => {
                if phase == HubPhase::None {
                    self.decide(id, HubPhase::RefundAuthorized, Some(RefundReason::Nack(node, *reason)), now);
                }
            }
            NodeItem::Committed { .. } => {
                if phase == HubPhase::Prepared {
                    if instance.committed.insert(node) {
                        self.state.dirty = true;
                    }
                    if instance.committed.len() == instance.participants.len() {
                        // A swap is CONFIRMed only before its deadline, so every CONFIRM
                        // certificate is far from its locks' last-resort deadline (DESIGN
                        // §10); a later one is refunded, which nodes accept for a swap.
                        if instance.spec.kind == InstanceKind::CrossChain && now > instance.spec.deadline {
                            self.decide(id, HubPhase::RefundAuthorized, Some(RefundReason::Timeout), now);
                        } else {
                            self.decide(id, HubPhase::Committed, None, now);
                        }
                    }
                }
            }
            NodeItem::Finished { outcome, .. } => {
                if phase.outcome() != Some(*outcome) {
                    return Err(HubError::ConflictingFinish(id, *outcome));
                }
                if instance.finished.insert(node) {
                    self.state.dirty = true;
                    if instance.is_complete() {
                        self.index.open.remove(&id);
                        self.index.complete.insert((instance.spec.deadline, id));
                    }
                }
            }
        }
        Ok(())
    }

    /// A participant asks for a refund (DESIGN §5): swaps before COMMITTED, multi-hop
    /// payments only before any COMMIT left the enclave.
    /// A request for an instance already refunded changes nothing and is not logged.
    pub fn on_refund_request(&mut self, now: u64, signed: &SignedRefundRequest) -> Result<(), HubError> {
        let (result, changed) = self.tracking_changes(|hub| hub.refund_requested(now, signed));
        if changed {
            self.log(tag::REFUND_REQUEST, &(now, signed));
        }
        result
    }

    fn refund_requested(&mut self, now: u64, signed: &SignedRefundRequest) -> Result<(), HubError> {
        let node = signed.request.node;
        if !signed.is_authentic() {
            return Err(HubError::BadSignature(node));
        }
        let id = signed.request.instance;
        self.refund(now, id, Some(node))
    }

    fn refund(&mut self, now: u64, id: InstanceId, by: Option<Address>) -> Result<(), HubError> {
        let instance = self.state.instances.get(&id).ok_or(HubError::UnknownInstance(id))?;
        if let Some(node) = by
            && !instance.participants.contains(&node)
        {
            return Err(HubError::NotParticipant(node));
        }
        let allowed = match (instance.spec.kind, instance.phase) {
            (_, HubPhase::RefundAuthorized) => return Ok(()),
            (_, HubPhase::None) | (InstanceKind::CrossChain, HubPhase::Prepared) => true,
            (InstanceKind::MultiHop, HubPhase::Prepared) => return Err(HubError::RefundAfterCommit(id)),
            _ => false,
        };
        if !allowed {
            return Err(HubError::AlreadyDecided(id));
        }
        let reason = by.map_or(RefundReason::Timeout, RefundReason::Requested);
        self.decide(id, HubPhase::RefundAuthorized, Some(reason), now);
        Ok(())
    }

    /// RESOLVE: chain sync saw an eject that fixed the instance's outcome on-chain.
    /// Simulation trusts the hub host's report; a real deployment verifies a receipt proof
    /// of the `InstanceResolved` event inside the enclave. Even so, an outcome the protocol
    /// makes impossible (APPLY before any COMMIT; REVERT after every node COMMITTED) is
    /// refused, so a lying host cannot split an instance.
    /// Idempotent: an outcome the instance already has changes nothing and is not logged
    /// (one event per ejected channel repeats it; a restarted hub replays what the DB holds).
    pub fn on_chain_outcome(&mut self, now: u64, id: InstanceId, outcome: Outcome) -> Result<(), HubError> {
        if self.chain_outcome(now, id, outcome)? {
            self.log(tag::CHAIN_OUTCOME, &(now, id, outcome));
        }
        Ok(())
    }

    /// True when it decided the instance (false: it already had this outcome).
    fn chain_outcome(&mut self, now: u64, id: InstanceId, outcome: Outcome) -> Result<bool, HubError> {
        let instance = self.state.instances.get(&id).ok_or(HubError::UnknownInstance(id))?;
        if instance.spec.kind == InstanceKind::CrossChain {
            return Err(HubError::ResolveOnSwap(id));
        }
        match (instance.phase, outcome) {
            (HubPhase::None, Outcome::Revert) | (HubPhase::Prepared, _) => {
                self.decide(id, HubPhase::Resolved(outcome), None, now);
                Ok(true)
            }
            (phase, o) if phase.outcome() == Some(o) => Ok(false),
            _ => Err(HubError::InconsistentOutcome(id)),
        }
    }

    /// Advances the clock: refunds what timed out (as DESIGN §5 allows) and re-queues the
    /// current round message for nodes that have not answered.
    pub fn tick(&mut self, now: u64) {
        if self.advance(now) {
            self.log(tag::TICK, &now);
        }
    }

    /// `tick` without logging; true when it changed anything.
    fn advance(&mut self, now: u64) -> bool {
        let mut changed = false;
        let open: Vec<InstanceId> = self.index.open.iter().copied().collect();
        for id in open {
            let instance = &self.state.instances[&id];
            let timed_out = now > instance.spec.deadline
                && matches!(
                    (instance.spec.kind, instance.phase),
                    (_, HubPhase::None) | (InstanceKind::CrossChain, HubPhase::Prepared)
                );
            if timed_out {
                self.decide(id, HubPhase::RefundAuthorized, Some(RefundReason::Timeout), now);
                changed = true;
            } else if now >= instance.last_sent.saturating_add(self.state.config.retransmit_after) {
                self.queue_current(id, now);
                changed = true;
            }
        }
        changed
    }

    /// Forgets complete instances whose deadline has passed: nothing is left to send for
    /// them, and nodes refuse a replayed PREPARE after the deadline anyway. Keeps the
    /// sealed state proportional to the instances in flight rather than to history (the host
    /// keeps statuses in its DB). Used orders are forgotten [`ORDER_EXPIRY_MARGIN`] after
    /// they expire. Returns how many instances were dropped.
    pub fn prune_complete(&mut self, now: u64) -> usize {
        let (dropped, changed) = self.prune(now);
        if changed {
            self.log(tag::PRUNE, &now);
        }
        dropped
    }

    /// Instances dropped, and whether anything (instances or used orders) was.
    fn prune(&mut self, now: u64) -> (usize, bool) {
        let mut dropped = 0;
        while let Some(&(deadline, id)) = self.index.complete.first()
            && now > deadline
        {
            self.index.complete.pop_first();
            self.state.instances.remove(&id);
            dropped += 1;
        }
        let mut forgotten = 0;
        while let Some(&(expiry, digest)) = self.index.orders_by_expiry.first()
            && now > expiry.saturating_add(ORDER_EXPIRY_MARGIN)
        {
            self.index.orders_by_expiry.pop_first();
            self.state.used_orders.remove(&digest);
            forgotten += 1;
        }
        let changed = dropped + forgotten > 0;
        if changed {
            self.state.dirty = true;
        }
        (dropped, changed)
    }

    /// Authenticates one batch per node with everything queued (a session MAC where a
    /// session exists and MACs are on, else a signature), and seals the state. The host
    /// must persist `sealed` before sending any batch.
    pub fn flush(&mut self) -> Flush {
        let mut batches = self.take_batches();
        let mut replicated = None;
        // In a group every flush is an entry, whatever the host set: its batches are held
        // until a majority holds the entry (`release`).
        let grouped = self.state.membership.is_some();
        let sealed = (self.state.dirty || !batches.is_empty()).then(|| {
            self.log(tag::FLUSH, &());
            if self.replicating || grouped {
                replicated = Some(self.next_entry());
            }
            self.seal()
        });
        if grouped && !batches.is_empty() {
            let chain = self.state.replica;
            let batches = std::mem::take(&mut batches);
            self.held.push_back(group::Held { seq: chain.seq, head: chain.head, batches });
        }
        Flush { batches, sealed, replicated }
    }

    /// Authenticates one batch per node with everything queued.
    fn take_batches(&mut self) -> Vec<SignedHubBatch> {
        let outbox = std::mem::take(&mut self.state.outbox);
        let hub = self.address();
        let macs = self.state.config.round_auth == RoundAuth::SessionMacs;
        // Every participant's PREPARE carries the same spec: hash it once per flush.
        let mut prepares: BTreeMap<InstanceId, Hash32> = BTreeMap::new();
        let mut leaf = |item: &HubItem| match item {
            HubItem::Prepare(spec) => *prepares.entry(spec.id).or_insert_with(|| leaf_hash(item)),
            other => leaf_hash(other),
        };
        outbox
            .into_iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|(node, items)| {
                let batch = HubBatch { hub, node, items: items.into_values().collect() };
                let digest = batch.digest_with(&mut leaf);
                match self.state.sessions.get(&node) {
                    Some(session) if macs => batch.mac_digest(session, &digest),
                    _ => batch.sign_digest(&self.key, &digest),
                }
            })
            .collect()
    }

    /// Seals the inputs since the last seal as a delta, or the whole state when the budget
    /// says the log has outgrown it.
    pub(crate) fn seal(&mut self) -> Vec<u8> {
        self.state.dirty = false;
        let blob = if self.budget.snapshot_due() {
            let contents = SealedContentsRef {
                secret: self.key.secret_bytes(),
                member: self.member.as_ref().map(SigningKey::secret_bytes),
                state: &self.state,
            };
            let blob = seal_value(&mut self.platform, SEAL_DOMAIN, &contents);
            self.budget.snapshot_sealed(blob.len());
            blob
        } else {
            let blob = seal_delta(&mut self.platform, SEAL_DOMAIN, &self.pending);
            self.budget.delta_sealed(blob.len());
            blob
        };
        self.pending.clear();
        blob
    }

    /// Signs a node↔hub link handshake transcript (see `teepay_types::link_digest`).
    pub fn sign_link(&self, transcript: &Hash32, role: teepay_types::LinkRole) -> teepay_types::Signature {
        self.key.sign_digest(&teepay_types::link_digest(transcript, role))
    }

    /// True for a node enclave the hub admitted with a valid quote.
    pub fn is_registered(&self, node: Address) -> bool {
        self.state.nodes.contains(&node)
    }

    pub fn instance(&self, id: InstanceId) -> Option<&HubInstance> {
        self.state.instances.get(&id)
    }
}

#[cfg(test)]
mod log_encoding_tests {
    use super::*;
    use teepay_types::{NodeAck, RefundRequest, Report, Signature};

    fn decode(bytes: &[u8]) -> Vec<HubInput> {
        let mut rest = bytes;
        let mut inputs = Vec::new();
        while !rest.is_empty() {
            inputs.push(HubInput::deserialize(&mut rest).expect("decodes"));
        }
        inputs
    }

    /// What the entry points write (a tag, then their arguments by reference) decodes as the
    /// `HubInput` variant replay expects, for every tag.
    #[test]
    fn every_logged_input_decodes_as_its_variant() {
        let mut hub = Coordinator::create(
            teepay_types::SimPlatform::new([1; 32]),
            HubConfig {
                measurement: [0; 32],
                attestation_authority: Address([0; 20]),
                allowed_node_measurements: Vec::new(),
                prepare_timeout: 1,
                retransmit_after: 1,
                round_auth: RoundAuth::SessionMacs,
                peer_acks: false,
                swap_lock_time: DAY_MS,
            },
            [2; 32],
        )
        .unwrap();
        let node = Address([7; 20]);
        let quote = Quote {
            report: Report {
                measurement: [3; 32],
                enclave: node,
                chain: ChainId(1),
                public_key: teepay_types::PublicKeyBytes([2; 33]),
            },
            signature: Signature([4; 65]),
        };
        let ack =
            SignedNodeAck { ack: NodeAck { node, hub: node, items: Vec::new() }, auth: Auth::Mac([5; 32]) };
        let refund = SignedRefundRequest {
            request: RefundRequest { node, instance: InstanceId([6; 32]) },
            signature: Signature([8; 65]),
        };
        hub.log(tag::ROUND_AUTH, &RoundAuth::Signatures);
        hub.log(tag::REGISTER_NODE, &quote);
        hub.log(
            tag::CREATE_INSTANCE,
            &(9u64, InstanceKind::CrossChain, &Vec::<Leg>::new(), &Vec::<SignedOrder>::new()),
        );
        hub.log(tag::ACK, &(10u64, &ack));
        hub.log(tag::REFUND_REQUEST, &(11u64, &refund));
        hub.log(tag::CHAIN_OUTCOME, &(12u64, InstanceId([6; 32]), Outcome::Revert));
        hub.log(tag::TICK, &13u64);
        hub.log(tag::PRUNE, &14u64);
        hub.log(tag::FLUSH, &());
        hub.log(tag::PEER_ACKS, &true);
        let inputs = decode(&hub.pending);
        assert!(matches!(inputs[0], HubInput::RoundAuth(RoundAuth::Signatures)));
        assert!(matches!(&inputs[1], HubInput::RegisterNode(q) if *q == quote));
        assert!(
            matches!(&inputs[2], HubInput::CreateInstance { now: 9, kind: InstanceKind::CrossChain, legs, orders } if legs.is_empty() && orders.is_empty())
        );
        assert!(matches!(&inputs[3], HubInput::Ack { now: 10, ack: a } if *a == ack));
        assert!(matches!(&inputs[4], HubInput::RefundRequest { now: 11, request } if *request == refund));
        assert!(matches!(inputs[5], HubInput::ChainOutcome { now: 12, outcome: Outcome::Revert, .. }));
        assert!(matches!(inputs[6], HubInput::Tick(13)));
        assert!(matches!(inputs[7], HubInput::Prune(14)));
        assert!(matches!(inputs[8], HubInput::Flush));
        assert!(matches!(inputs[9], HubInput::PeerAcks(true)));
        assert_eq!(inputs.len(), 10);
    }
}
