//! The node enclave's state: channels with their locks, instances it has seen, orders it
//! has issued. Everything here is sealed as one blob.

use borsh::{BorshDeserialize, BorshSerialize};
use std::collections::BTreeMap;
pub use teepay_types::FeePolicy;
use teepay_types::{
    Address, Amount, ChainId, ChannelId, ChannelState, Hash32, InstanceId, InstanceKind, LockState, Outcome,
    Phase, SignedChannelState,
};

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Lock {
    pub instance: InstanceId,
    pub amount: Amount,
    /// True when this node pays (the amount is reserved from its balance).
    pub outgoing: bool,
    pub phase: Phase,
    pub kind: InstanceKind,
    /// The hub identity that drives the instance (named in the signed state, so the contract
    /// accepts only its decision certificates for this lock).
    pub hub: Address,
    /// A swap lock's last-resort deadline (hub clock, ms; 0 for multi-hop): after it this
    /// enclave signs a close carrying the lock, and the contract lets a party claim REVERT.
    pub deadline: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum ChannelStatus {
    Open,
    /// This enclave signed a closing/eject state; it is kept so a crashed host can fetch the
    /// very same state again, and nothing else is ever signed for this channel.
    Closing(Box<SignedChannelState>),
    /// Settled on-chain (by either party).
    Settled,
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Channel {
    pub chain: ChainId,
    pub contract: Address,
    pub id: ChannelId,
    /// The channel's asset: zero for ether, else the ERC-20 token's address.
    pub token: Address,
    pub peer: Address,
    pub local_is_a: bool,
    /// The deposits this enclave has seen on each side (the signed state carries them, and
    /// the contract refuses one above the real deposit): `balance_local + balance_peer`
    /// always equals their sum.
    pub deposit_local: Amount,
    pub deposit_peer: Amount,
    pub balance_local: Amount,
    pub balance_peer: Amount,
    pub version: u64,
    pub locks: Vec<Lock>,
    pub fee: FeePolicy,
    pub status: ChannelStatus,
}

impl Channel {
    pub fn is_open(&self) -> bool {
        self.status == ChannelStatus::Open
    }

    /// Sum of both deposits seen (cannot overflow: every deposit was admitted checked).
    pub fn capacity(&self) -> Amount {
        Amount(self.deposit_local.0.saturating_add(self.deposit_peer.0))
    }

    fn reserved(&self, outgoing: bool) -> Amount {
        // Cannot overflow: every lock was admitted only while covered by a balance.
        Amount(self.locks.iter().filter(|l| l.outgoing == outgoing).map(|l| l.amount.0).sum())
    }

    /// What this node can still send: its balance minus outgoing reservations.
    pub fn available_out(&self) -> Amount {
        self.balance_local.checked_sub(self.reserved(true)).unwrap_or(Amount::ZERO)
    }

    /// What the peer can still send us, as this enclave knows the channel.
    pub fn available_in(&self) -> Amount {
        self.balance_peer.checked_sub(self.reserved(false)).unwrap_or(Amount::ZERO)
    }

    pub fn lock_index(&self, instance: InstanceId) -> Option<usize> {
        self.locks.iter().position(|l| l.instance == instance)
    }

    /// The contract's view of this channel (party A/B rather than local/peer).
    pub fn to_state(&self) -> ChannelState {
        self.state_with_locks(|_| true)
    }

    /// The channel's state carrying only `instance`'s lock: what a PREPARED ack reports.
    /// (Carrying every lock would make a batch of B acks O(B²) to build and hash.)
    pub fn state_for(&self, instance: InstanceId) -> ChannelState {
        self.state_with_locks(|l| l.instance == instance)
    }

    fn state_with_locks(&self, keep: impl Fn(&Lock) -> bool) -> ChannelState {
        let (balance_a, balance_b) = if self.local_is_a {
            (self.balance_local, self.balance_peer)
        } else {
            (self.balance_peer, self.balance_local)
        };
        let (deposit_a, deposit_b) = if self.local_is_a {
            (self.deposit_local, self.deposit_peer)
        } else {
            (self.deposit_peer, self.deposit_local)
        };
        ChannelState {
            chain: self.chain,
            contract: self.contract,
            channel: self.id,
            token: self.token,
            version: self.version,
            deposit_a,
            deposit_b,
            balance_a,
            balance_b,
            locks: self
                .locks
                .iter()
                .filter(|l| keep(l))
                .map(|l| LockState {
                    instance: l.instance,
                    amount: l.amount,
                    a_to_b: l.outgoing == self.local_is_a,
                    phase: l.phase,
                    kind: l.kind,
                    hub: l.hub,
                    // The contract counts seconds; rounding up never lets a claim come early.
                    deadline: l.deadline.div_ceil(1000),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum InstanceStatus {
    Prepared,
    Committed,
    Finished(Outcome),
}

/// What the enclave remembers of an instance. Kept after it ends, so that a replayed or
/// late PREPARE is refused forever (replay protection).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct InstanceRecord {
    /// The instance's place in the hub's sequence (`InstanceSpec::seq`).
    pub seq: u64,
    /// When it finished here (host time; 0 while it runs): finished records are pruned
    /// [`FINISHED_RETENTION`] later, the replay floor rising past them.
    pub finished_at: u64,
    /// Leaf hash of the PREPARE item acked (identifies the spec: a retransmission of the
    /// same PREPARE gets the same ack, any other spec under this id is a replay).
    pub prepare_hash: Hash32,
    pub kind: InstanceKind,
    pub status: InstanceStatus,
    pub channels: Vec<ChannelId>,
    /// Nonce of this enclave's own order the instance carries, if any.
    pub order_nonce: Option<u64>,
    /// A channel of this instance was closed on-chain with its lock: no further phase
    /// advances, only the outcome is followed on the remaining channels.
    pub ejected: bool,
    /// The instance's participants, in the order COMMIT lists their acks, when it asks for
    /// peer acks (empty otherwise): its COMMIT must carry each one's signed PREPARED ack.
    pub peers: Vec<Address>,
    /// `InstanceSpec::lock_deadline` (0 for multi-hop): how long its certificate is kept.
    pub lock_deadline: u64,
    /// The instance pays one of this enclave's invoices, or carries its payment of one.
    pub invoice: Option<crate::invoices::InvoiceRole>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum OrderStatus {
    /// Issued, not yet carried by any instance.
    Open,
    /// Carried by this instance. When it ends, paid or refunded, the record is dropped and
    /// the order is never usable again (see `NodeState::orders`).
    InFlight(InstanceId),
}

#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct OrderRecord {
    pub digest: Hash32,
    pub status: OrderStatus,
    /// The order's own expiry: an open order past it is pruned (refused either way).
    pub expires_at: u64,
    /// The invoice it pays, if any: one live order per invoice.
    pub invoice: Option<Hash32>,
}

/// How long a finished instance's record is kept (host clock, ms): long enough to answer a
/// retransmitted CONFIRM/REFUND the same way, after which the replay floor alone refuses a
/// replayed PREPARE. A host that fakes its clock only loses those idempotent answers.
pub const FINISHED_RETENTION: u64 = 60_000;

/// The `seq` of a record made for an instance this node never PREPAREd (a REFUND or RESOLVE
/// that came first): unknown, so pruning it does not raise the replay floor.
pub const UNSEEN_SEQ: u64 = u64::MAX;

/// Most records pruned per request: pruning work stays bounded whatever the backlog.
pub const PRUNE_BATCH: usize = 256;

/// Static configuration fixed when the enclave is created (in a real TEE: part of the
/// measured code or its signed config).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct NodeConfig {
    pub measurement: Hash32,
    pub attestation_authority: Address,
    pub allowed_hub_measurements: Vec<Hash32>,
    /// The `PaymentChannels` deployment per chain: the only contract this enclave sends
    /// value to or accepts channels of (a host cannot redirect deposits elsewhere).
    pub contracts: Vec<(ChainId, Address)>,
    /// Most the enclave lets one transaction spend on gas (`gas_limit × max_fee_per_gas`),
    /// so a host cannot drain the enclave's account through fees.
    pub max_tx_fee: Amount,
    /// NACK every PREPARE whose instance does not ask for peer acks: this node then commits
    /// only on every other participant's own signed evidence that it locked, never on the
    /// hub enclave's word alone (`--require-peer-acks`).
    pub require_peer_acks: bool,
}

impl NodeConfig {
    pub fn contract(&self, chain: ChainId) -> Option<Address> {
        self.contracts.iter().find(|(c, _)| *c == chain).map(|(_, a)| *a)
    }
}

/// Everything the enclave knows except its key (which only the sealed blob carries).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct NodeState {
    pub config: NodeConfig,
    pub hub: Option<Address>,
    /// The session key shared with the hub (ECDH, derived when the hub's quote is attested);
    /// batches may carry a MAC under it instead of a signature.
    pub hub_session: Option<Hash32>,
    /// The hub has sent a batch MAC'd under `hub_session`, so its durable state holds the
    /// session too (it seals before it sends): payment orders can then be MAC'd for it
    /// instead of signed. Until then (or with a hub that signs every round) they are signed.
    pub hub_uses_session: bool,
    pub channels: BTreeMap<ChannelId, Channel>,
    pub instances: BTreeMap<InstanceId, InstanceRecord>,
    /// Finished instances by (finish time, seq): what pruning walks, oldest first.
    pub finished: std::collections::BTreeSet<(u64, u64, InstanceId)>,
    /// Every PREPARE with a `seq` below this and no record is a replay of a pruned instance
    /// (or arrives far too late): refused. Pruning raises it past what it drops.
    pub replay_floor: u64,
    /// Orders issued and not yet paid, refunded or expired (a finished order's record is
    /// dropped: with no record and a nonce below `next_nonce` it counts as used).
    pub orders: BTreeMap<u64, OrderRecord>,
    pub next_nonce: u64,
    /// Decision certificates of swaps this node took part in (DESIGN §10), kept until
    /// [`CERTIFICATE_RETENTION`] after the swap's lock deadline: the host posts one to a
    /// contract to settle a chain without the hub, or to overturn a REVERT claim.
    pub certificates: BTreeMap<InstanceId, teepay_types::DecisionCertificate>,
    /// Certificates by (keep-until, instance): what pruning walks, oldest first.
    pub certificate_expiry: std::collections::BTreeSet<(u64, InstanceId)>,
    /// Invoices issued as payee and paid as payer, with their receipts (`invoices.rs`).
    pub invoices: crate::invoices::InvoiceBook,
}

/// How long after a swap's lock deadline its certificate is kept (ms): a REVERT claim can
/// come only after the deadline, and a challenge must follow it within the contract's
/// window; thirty days leave the host ample time to see the claim and answer it.
pub const CERTIFICATE_RETENTION: u64 = 30 * 86_400_000;

impl NodeState {
    /// Drops finished instance records older than [`FINISHED_RETENTION`] and open orders
    /// past their expiry, at most [`PRUNE_BATCH`] of each. True if anything was dropped.
    pub(crate) fn prune(&mut self, now: u64) -> bool {
        let mut pruned = false;
        for _ in 0..PRUNE_BATCH {
            let Some(&(at, seq, id)) = self.finished.first() else { break };
            if now < at.saturating_add(FINISHED_RETENTION) {
                break;
            }
            self.finished.pop_first();
            self.instances.remove(&id);
            if seq != UNSEEN_SEQ {
                self.replay_floor = self.replay_floor.max(seq.saturating_add(1));
            }
            pruned = true;
        }
        for _ in 0..PRUNE_BATCH {
            let Some(&(until, id)) = self.certificate_expiry.first() else { break };
            if now < until {
                break;
            }
            self.certificate_expiry.pop_first();
            self.certificates.remove(&id);
            pruned = true;
        }
        // Orders are issued with increasing nonces and similar lifetimes: the oldest first.
        for _ in 0..PRUNE_BATCH {
            let Some((&nonce, record)) = self.orders.first_key_value() else { break };
            if record.status != OrderStatus::Open || now <= record.expires_at {
                break;
            }
            self.orders.remove(&nonce);
            pruned = true;
        }
        pruned |= self.prune_invoices(now, PRUNE_BATCH);
        pruned
    }
}
