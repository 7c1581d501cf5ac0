//! The deterministic in-memory world: N node enclaves, the hub enclave, the contract model
//! and a network of in-flight messages. Every nondeterministic choice (which message next,
//! drop, duplicate, tamper, crash, eject, refund request, clock tick) is an explicit
//! [`Action`], so a scheduler — exhaustive or random — decides everything.

use crate::contract::{ContractModel, OnchainChannel};
use std::collections::BTreeMap;
use teepay_coordinator::{Coordinator, HubConfig, HubError};
use teepay_enclave::{
    EnclaveError, FeePolicy, FundedChannel, NodeConfig, NodeEnclave, Request, Response, SealLimits, SealedLog,
};
use teepay_types::{
    Address, Amount, Asset, ChainId, ChannelId, Hop, InstanceId, InstanceKind, Leg, Outcome, SignedHubBatch,
    SignedNodeAck, SignedOrder, SignedRefundRequest, SigningKey, SimPlatform, Transfer, keccak256,
};

pub const NODE_MEASUREMENT: [u8; 32] = [0x11; 32];
pub const HUB_MEASUREMENT: [u8; 32] = [0x22; 32];
pub const CONTRACT: Address = Address([0xcc; 20]);
/// Retransmission interval and PREPARE timeout, in the world's clock units.
pub const RETRANSMIT_AFTER: u64 = 10;
pub const PREPARE_TIMEOUT: u64 = 30;

#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub enclave: NodeEnclave<SimPlatform>,
    /// The sealed log the host persisted: last snapshot and deltas (what a restart uses).
    pub sealed: SealedLog,
}

#[derive(Debug, Clone)]
pub struct SimHub {
    pub coordinator: Coordinator<SimPlatform>,
    pub sealed: SealedLog,
}

/// The group operators' governance key in the simulation: it signs every membership.
pub fn governance() -> SigningKey {
    SigningKey::from_entropy([0x60; 32]).expect("a valid key")
}

/// Something in flight. Chain notices model each host's chain watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    ToNode {
        node: usize,
        batch: SignedHubBatch,
    },
    ToHub(SignedNodeAck),
    RefundRequest(SignedRefundRequest),
    /// The hub's chain sync saw an instance's outcome fixed by an eject.
    OutcomeOnChain(InstanceId, Outcome),
    /// Nodes' chain watchers saw the contract fix an instance's outcome (`InstanceResolved`).
    /// One envelope for all nodes: the block reaches every watcher in some order relative to
    /// the hub's messages, which is what matters (a RESOLVE before the watcher saw the block
    /// is refused and retransmitted).
    OutcomeToNodes(InstanceId, Outcome),
    /// A node's chain watcher saw one of its channels settled.
    SettledOnChain {
        node: usize,
        channel: ChannelId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Node(usize),
    Hub,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Deliver(usize),
    Duplicate(usize),
    Drop(usize),
    /// Deliver a forged copy (a flipped byte under the signature): must be refused.
    Tamper(usize),
    Crash(Target),
    Eject {
        node: usize,
        channel: ChannelId,
    },
    RequestRefund {
        node: usize,
        instance: InstanceId,
    },
    /// Advance the clock past every deadline and retransmission interval.
    Tick,
    /// A node's host lies to its own enclave (`crate::hostile`); the node is then no longer
    /// honest, and the final invariants hold for the honest nodes.
    HostLie {
        node: usize,
        lie: Lie,
    },
    /// The hub's host re-submits an instance's orders in a new instance: must be refused.
    ReplayOrder(InstanceId),
    /// The hub's leader is lost (DESIGN §10): a standby replica, which applied every
    /// committed flush, takes office on a fork of its state; messages in flight to the lost
    /// leader are lost with it. Another replica joins so the group keeps its size.
    Failover,
    /// The hub's host reports an on-chain outcome the contract never recorded (undetectable
    /// without a light client: the hub is then misinformed, and honest nodes must still end
    /// whole, `World::hub_lied`).
    FalseOutcome {
        instance: InstanceId,
        outcome: teepay_types::Outcome,
    },
}

/// What a hostile node host can tell its enclave.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lie {
    /// A deposit of its own that the contract never saw.
    InflateDeposit(ChannelId),
    /// Restore from its sealed log without the last blob (a rollback): must be refused.
    RollBack,
    /// Re-deliver an authentic batch it received before (`World::delivered`).
    ReplayBatch(usize),
    /// Report a channel settled on-chain that is still open: its enclave stops using it and
    /// refuses further rounds of the instances locked on it.
    FalseSettled(ChannelId),
}

/// How many of each fault a schedule may still inject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Budget {
    pub duplicates: u8,
    pub drops: u8,
    pub tampers: u8,
    pub crashes: u8,
    pub ejects: u8,
    pub refunds: u8,
    pub ticks: u8,
    /// Host lies (`Action::HostLie`, `Action::ReplayOrder`).
    pub lies: u8,
    /// Hub leader losses (`Action::Failover`; only in a world with standby replicas).
    pub failovers: u8,
}

/// A broken invariant or a protocol misbehaviour observed while applying an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct World {
    pub now: u64,
    pub authority: SigningKey,
    pub nodes: Vec<SimNode>,
    pub hub: SimHub,
    pub contract: ContractModel,
    pub network: Vec<Envelope>,
    pub budget: Budget,
    /// Initial deposits per (chain, asset, node) — the baseline for no-loss accounting.
    pub deposits: BTreeMap<(ChainId, Asset, Address), Amount>,
    /// Each channel by (chain, asset, one end, the other), both ways round.
    pub channels: BTreeMap<(ChainId, Asset, usize, usize), ChannelId>,
    pub instances: Vec<InstanceId>,
    /// Nodes added from now on NACK every instance without peer acks (`--require-peer-acks`).
    pub require_peer_acks: bool,
    /// Nodes whose host lied to its enclave: the final invariants hold for every other.
    pub liars: std::collections::BTreeSet<usize>,
    /// The hub's host reported an invented chain outcome: the hub's own view of an instance
    /// is no longer judged, the honest nodes' still is.
    pub hub_lied: bool,
    /// Replicated-log entries the hub produced, oldest first (only with replication on and
    /// no standby replicas: tests that apply them by hand).
    pub replicated: Vec<Vec<u8>>,
    /// Standby hub replicas (`World::with_standbys`): every flush's entry is applied to each
    /// before its batches are sent — the commit that precedes release.
    pub standbys: Vec<Coordinator<SimPlatform>>,
    /// The last authentic batches delivered (for `Lie::ReplayBatch`), most recent last.
    pub delivered: Vec<(usize, SignedHubBatch)>,
    entropy_counter: u64,
    seed: u64,
}

fn expect_done(r: Result<teepay_enclave::Output, EnclaveError>) -> teepay_enclave::Output {
    r.unwrap_or_else(|e| panic!("setup request refused: {e}"))
}

impl World {
    pub fn new(seed: u64) -> Self {
        let mut counter: u64 = 0;
        let mut entropy = || {
            counter += 1;
            keccak256(&[&seed.to_le_bytes()[..], &counter.to_le_bytes()].concat())
        };
        let authority = SigningKey::from_entropy(entropy()).expect("keccak output is a valid key");
        let config = HubConfig {
            measurement: HUB_MEASUREMENT,
            attestation_authority: authority.address(),
            allowed_node_measurements: vec![NODE_MEASUREMENT],
            prepare_timeout: PREPARE_TIMEOUT,
            retransmit_after: RETRANSMIT_AFTER,
            round_auth: teepay_types::RoundAuth::default(),
            peer_acks: false,
            // Far beyond any explored run: the sim's swaps end by the hub's decision.
            swap_lock_time: teepay_coordinator::DAY_MS,
        };
        let mut coordinator =
            Coordinator::create(SimPlatform::new(entropy()), config, entropy()).expect("valid hub entropy");
        let blob = coordinator.flush().sealed.expect("a new hub is dirty");
        let sealed = SealedLog::from_blobs([blob]).expect("the enclave seals well-formed blobs");
        World {
            now: 0,
            authority,
            nodes: Vec::new(),
            hub: SimHub { coordinator, sealed },
            contract: ContractModel::default(),
            network: Vec::new(),
            budget: Budget::default(),
            deposits: BTreeMap::new(),
            channels: BTreeMap::new(),
            instances: Vec::new(),
            require_peer_acks: false,
            liars: std::collections::BTreeSet::new(),
            hub_lied: false,
            replicated: Vec::new(),
            standbys: Vec::new(),
            delivered: Vec::new(),
            entropy_counter: counter,
            seed,
        }
    }

    fn entropy(&mut self) -> [u8; 32] {
        self.entropy_counter += 1;
        keccak256(&[&self.seed.to_le_bytes()[..], &self.entropy_counter.to_le_bytes()].concat())
    }

    /// A world whose hub asks every instance for peer acks and whose nodes require them
    /// (`--verify-peer-acks`): nodes commit only on each other's signed PREPARED acks.
    pub fn with_peer_acks(seed: u64) -> Self {
        let mut w = World::new(seed);
        w.require_peer_acks = true;
        w.hub.coordinator.set_peer_acks(true);
        w.flush_hub();
        w
    }

    /// Makes the hub a group: itself (the leader) and `n` standby replicas, each provisioned
    /// over attestation and starting from the leader's state (DESIGN §10).
    pub fn add_standbys(&mut self, n: usize) {
        self.flush_hub();
        self.hub.coordinator.set_replicating(true);
        let entropy = self.entropy();
        self.hub
            .coordinator
            .found_group(governance().address(), entropy)
            .expect("a fresh hub founds its group");
        self.flush_hub();
        for _ in 0..n {
            let standby = self.join_standby();
            self.standbys.push(standby);
        }
        self.admit_members();
    }

    /// The operators make the leader and every standby the group's members (a membership
    /// signed by the governance key), as they do after a replica joins.
    pub(crate) fn admit_members(&mut self) {
        let hub = &self.hub.coordinator;
        let version = hub.inspect().membership.as_ref().map_or(0, |m| m.version) + 1;
        let members = std::iter::once(hub.member_address())
            .chain(self.standbys.iter().map(|s| s.member_address()))
            .map(|m| m.expect("every replica of a group has a member key"))
            .collect();
        let signed =
            teepay_coordinator::SignedMembership::sign(&governance(), hub.address(), version, members);
        self.hub.coordinator.update_membership(&signed).expect("signed by the governance key");
        self.flush_hub();
    }

    /// A new replica provisioned by the leader: its enclave gets the identity for its quote
    /// and the group's state at the leader's last flush.
    pub(crate) fn join_standby(&mut self) -> Coordinator<SimPlatform> {
        let snapshot = self.hub.coordinator.group_snapshot().expect("the hub flushes after every input");
        let platform = SimPlatform::new(self.entropy());
        let candidate = teepay_coordinator::Candidate::new(platform, HUB_MEASUREMENT, self.entropy())
            .expect("keccak output is a valid key");
        let quote = candidate.report(ChainId(0)).attest(&self.authority);
        let gift = self.hub.coordinator.provision(&quote).expect("a quote of the hub measurement");
        candidate.join(&gift, &snapshot).expect("its own gift and the group's snapshot").0
    }

    /// When every enclave in the world seals a snapshot rather than a delta.
    pub fn set_seal_limits(&mut self, limits: SealLimits) {
        self.hub.coordinator.set_seal_limits(limits);
        for node in &mut self.nodes {
            node.enclave.set_seal_limits(limits);
        }
    }

    pub fn address(&self, node: usize) -> Address {
        self.nodes[node].enclave.address()
    }

    pub fn node_index(&self, address: Address) -> Option<usize> {
        self.nodes.iter().position(|n| n.enclave.address() == address)
    }

    /// Creates a node enclave, has it attest the hub, and registers it with the hub.
    pub fn add_node(&mut self, name: &str) -> usize {
        let config = NodeConfig {
            measurement: NODE_MEASUREMENT,
            attestation_authority: self.authority.address(),
            allowed_hub_measurements: vec![HUB_MEASUREMENT],
            contracts: vec![(ChainId(1), CONTRACT), (ChainId(2), CONTRACT)],
            max_tx_fee: Amount(10u128.pow(16)),
            require_peer_acks: self.require_peer_acks,
        };
        let platform = SimPlatform::new(self.entropy());
        let entropy = self.entropy();
        let (enclave, blob) = NodeEnclave::create(platform, config, entropy).expect("valid entropy");
        let index = self.nodes.len();
        let sealed = SealedLog::from_blobs([blob]).expect("the enclave seals well-formed blobs");
        self.nodes.push(SimNode { name: name.to_string(), enclave, sealed });
        let hub_quote = self.hub.coordinator.report(ChainId(0)).attest(&self.authority);
        self.node_request(index, Request::AttestHub { quote: hub_quote });
        let Response::Report(report) =
            expect_done(self.nodes[index].enclave.handle(0, Request::Report { chain: ChainId(0) })).response
        else {
            unreachable!("Report answers with a report")
        };
        self.hub
            .coordinator
            .register_node(&report.attest(&self.authority))
            .expect("quote from the authority");
        self.flush_hub();
        index
    }

    /// Runs a setup request on a node and persists its blob.
    pub fn node_request(&mut self, node: usize, request: Request) -> Response {
        let out = expect_done(self.nodes[node].enclave.handle(self.now, request));
        if let Some(blob) = out.sealed {
            self.nodes[node].sealed.record(blob).expect("the enclave seals well-formed blobs");
        }
        out.response
    }

    /// Opens and funds an ether channel on the contract model and tells both enclaves.
    #[allow(clippy::too_many_arguments)]
    pub fn open_channel(
        &mut self,
        chain: ChainId,
        a: usize,
        b: usize,
        deposit_a: u128,
        deposit_b: u128,
        fee_a: FeePolicy,
        fee_b: FeePolicy,
    ) -> ChannelId {
        self.open_channel_of(chain, Asset::Native, a, b, deposit_a, deposit_b, fee_a, fee_b)
    }

    /// Opens and funds a channel of `asset` (ether or one token) on the contract model and
    /// tells both enclaves.
    #[allow(clippy::too_many_arguments)]
    pub fn open_channel_of(
        &mut self,
        chain: ChainId,
        asset: Asset,
        a: usize,
        b: usize,
        deposit_a: u128,
        deposit_b: u128,
        fee_a: FeePolicy,
        fee_b: FeePolicy,
    ) -> ChannelId {
        let (addr_a, addr_b) = (self.address(a), self.address(b));
        let (deposit_a, deposit_b) = (Amount(deposit_a), Amount(deposit_b));
        let onchain = FundedChannel {
            chain,
            contract: CONTRACT,
            a: addr_a,
            b: addr_b,
            nonce: self.channels.len() as u64,
            deposit_a,
            deposit_b,
            token: asset.token(),
        };
        let id = onchain.id();
        self.contract.open(
            id,
            OnchainChannel { chain, asset, a: addr_a, b: addr_b, deposit_a, deposit_b, open: true },
        );
        for (me, local_is_a, mine, fee) in [(a, true, deposit_a, fee_a), (b, false, deposit_b, fee_b)] {
            for request in onchain.requests(local_is_a, fee) {
                self.node_request(me, request);
            }
            let entry = self.deposits.entry((chain, asset, self.address(me))).or_default();
            *entry = entry.checked_add(mine).expect("test deposits fit in u128");
        }
        self.channels.insert((chain, asset, a, b), id);
        self.channels.insert((chain, asset, b, a), id);
        id
    }

    /// The ether channel between `a` and `b`.
    pub fn channel_between(&self, chain: ChainId, a: usize, b: usize) -> Option<ChannelId> {
        self.channel_of(chain, Asset::Native, a, b)
    }

    pub fn channel_of(&self, chain: ChainId, asset: Asset, a: usize, b: usize) -> Option<ChannelId> {
        self.channels.get(&(chain, asset, a, b)).copied()
    }

    /// The hops of an ether route delivering `amount` to the path's end.
    pub fn route(&self, chain: ChainId, path: &[usize], amount: u128) -> Option<Leg> {
        self.route_of(chain, Asset::Native, path, amount)
    }

    /// The hops of a route of `asset` channels delivering `amount` to the path's end, each
    /// intermediary adding the fee its enclave charges on its outgoing channel.
    pub fn route_of(&self, chain: ChainId, asset: Asset, path: &[usize], amount: u128) -> Option<Leg> {
        let mut hops = Vec::with_capacity(path.len().saturating_sub(1));
        let mut carried = Amount(amount);
        for i in (0..path.len() - 1).rev() {
            let channel = self.channel_of(chain, asset, path[i], path[i + 1])?;
            hops.push(Hop {
                channel,
                from: self.address(path[i]),
                to: self.address(path[i + 1]),
                amount: carried,
            });
            if i > 0 {
                let policy = self.nodes[path[i]].enclave.inspect().channels.get(&channel)?.fee;
                carried = carried.checked_add(policy.fee(carried)?)?;
            }
        }
        hops.reverse();
        Some(Leg { chain, asset, hops })
    }

    /// A payer-signed ether payment routed along `path`, started at the hub.
    pub fn pay(
        &mut self,
        chain: ChainId,
        path: &[usize],
        amount: u128,
        max_fee: u128,
    ) -> Result<InstanceId, HubError> {
        self.pay_of(chain, Asset::Native, path, amount, max_fee)
    }

    /// A payer-signed payment of `asset` routed along `path`, started at the hub.
    pub fn pay_of(
        &mut self,
        chain: ChainId,
        asset: Asset,
        path: &[usize],
        amount: u128,
        max_fee: u128,
    ) -> Result<InstanceId, HubError> {
        let leg = self.route_of(chain, asset, path, amount).expect("path follows open channels");
        let payee = self.address(*path.last().expect("non-empty path"));
        let request = Request::CreatePayment {
            chain,
            asset,
            payee,
            amount: Amount(amount),
            max_fee: Amount(max_fee),
            expires_at: self.now + 1_000,
        };
        let Response::Order(order) = self.node_request(path[0], request) else {
            unreachable!("orders answer Order")
        };
        self.start(InstanceKind::MultiHop, vec![leg], vec![order])
    }

    /// An ether swap: each leg is (chain, path, amount delivered).
    pub fn swap(&mut self, legs: &[(ChainId, Vec<usize>, u128)]) -> Result<InstanceId, HubError> {
        let legs: Vec<_> = legs.iter().map(|(c, p, a)| (*c, Asset::Native, p.clone(), *a)).collect();
        self.swap_of(&legs)
    }

    /// A swap: each leg is (chain, asset, path, amount delivered); every party that sources
    /// a leg signs an intent giving its legs and receiving the legs that end at it.
    pub fn swap_of(&mut self, legs: &[(ChainId, Asset, Vec<usize>, u128)]) -> Result<InstanceId, HubError> {
        let routes: Vec<Leg> = legs
            .iter()
            .map(|(c, asset, p, a)| self.route_of(*c, *asset, p, *a).expect("path follows open channels"))
            .collect();
        let mut parties: Vec<usize> =
            legs.iter().flat_map(|(_, _, p, _)| [p[0], *p.last().expect("path")]).collect();
        parties.sort_unstable();
        parties.dedup();
        let mut orders: Vec<SignedOrder> = Vec::new();
        for party in parties {
            let me = self.address(party);
            let transfer = |leg: &Leg, counterparty: Address| Transfer {
                chain: leg.chain,
                asset: leg.asset,
                counterparty,
                amount: leg.delivered(),
                max_fee: leg.sent().checked_sub(leg.delivered()).expect("fees are non-negative"),
            };
            let gives: Vec<Transfer> = routes
                .iter()
                .filter(|l| l.source() == Some(me))
                .map(|l| transfer(l, l.destination().expect("leg")))
                .collect();
            let receives: Vec<Transfer> = routes
                .iter()
                .filter(|l| l.destination() == Some(me))
                .map(|l| transfer(l, l.source().expect("leg")))
                .collect();
            if gives.is_empty() {
                continue;
            }
            let request = Request::CreateSwapIntent { gives, receives, expires_at: self.now + 1_000 };
            let Response::Order(order) = self.node_request(party, request) else {
                unreachable!("orders answer Order")
            };
            orders.push(order);
        }
        self.start(InstanceKind::CrossChain, routes, orders)
    }

    pub fn start(
        &mut self,
        kind: InstanceKind,
        legs: Vec<Leg>,
        orders: Vec<SignedOrder>,
    ) -> Result<InstanceId, HubError> {
        let id = self.hub.coordinator.create_instance(self.now, kind, legs, orders)?;
        self.instances.push(id);
        self.flush_hub();
        Ok(id)
    }

    /// Flushes the hub's outbox: persist the sealed state first, then put batches in flight.
    pub fn flush_hub(&mut self) {
        let flush = self.hub.coordinator.flush();
        if let Some(blob) = flush.sealed {
            self.hub.sealed.record(blob).expect("the enclave seals well-formed blobs");
        }
        // A hub group commits the flush on its standbys before anything leaves; without
        // standbys (tests of replication by hand) the entries are kept for the test.
        let mut batches = flush.batches;
        if let Some(entry) = flush.replicated {
            if self.standbys.is_empty() {
                self.replicated.push(entry);
            } else {
                for standby in &mut self.standbys {
                    standby.apply_entry(&entry).expect("a committed entry applies on every standby");
                }
                // The leader's enclave lets the flush out only for a majority's receipts; asked
                // for one at a time, as many as it takes (each is a signature and a recovery).
                let mut receipts = Vec::new();
                for standby in &self.standbys {
                    if self.hub.coordinator.held() == 0 {
                        break;
                    }
                    receipts.extend(standby.receipt());
                    batches.extend(self.hub.coordinator.release(&receipts));
                }
                assert_eq!(self.hub.coordinator.held(), 0, "a majority holds every flush");
            }
        }
        for batch in batches {
            let node = self.node_index(batch.batch.node).expect("hub only addresses known nodes");
            self.network.push(Envelope::ToNode { node, batch });
        }
    }
}
