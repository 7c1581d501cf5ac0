//! The protocol executor's core (DESIGN §8), sans-IO: clients' enclave-signed orders in,
//! routed instances through the hub enclave, node acks in, signed batches out. The async
//! service around it only moves bytes and persists what [`Executor::flush`] returns.
//!
//! - A payment starts from the payer enclave's signed request: routed by shortest time, its
//!   hops reserved in the network map, then created in the hub enclave.
//! - A swap is assembled from every party's signed intent; intents that do not match up
//!   (a give without the counterparty's matching receive, or the reverse) are refused.
//! - When the hub enclave decides an instance, its reservations are released (applied
//!   transfers move balances in the map) and its status becomes final: succeeded, or
//!   refunded with the reason.

use std::collections::{BTreeSet, HashMap, HashSet};
use teepay_chain::contract::ContractEvent;
use teepay_coordinator::{Coordinator, HubError, HubPhase, RefundReason};
use teepay_routing::{ChannelInfo, Network, RouteError, RouteQuery};
use teepay_types::{
    Address, Amount, Asset, ChainId, FeePolicy, InstanceId, InstanceKind, Leg, MAX_SWAP_PARTIES,
    MAX_TRANSFERS_PER_INTENT, NackReason, Order, Outcome, PaymentReceipt, Platform, SignedHubBatch,
    SignedNodeAck, SignedOrder, SignedRefundRequest, SpecError,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("no route: {0}")]
    Route(#[from] RouteError),
    #[error("hub enclave refused: {0}")]
    Hub(#[from] HubError),
    #[error("order is not signed by its issuer's enclave")]
    BadOrderSignature,
    #[error("expected a payment request")]
    NotAPayment,
    #[error("expected swap intents only")]
    NotASwap,
    #[error("a swap needs intents from at least two parties")]
    TooFewIntents,
    #[error("a swap takes at most {max} intents, got {got}")]
    TooManyIntents { got: usize, max: usize },
    #[error("an intent lists at most {max} transfers (gives and receives)")]
    TooManyTransfers { max: usize },
    #[error("intent of {0} is not signed by that attested enclave")]
    BadIntent(Address),
    #[error("intents do not match up: {0}")]
    IntentsDoNotMatch(String),
    #[error("receipt refused: {0}")]
    BadReceipt(&'static str),
}

/// Every give must be exactly one counterparty's receive (same parties, chain and amount)
/// and vice versa, as multisets: one pass over all transfers (hash counts), one route query
/// per give. `intents` are swap orders with at most [`MAX_TRANSFERS_PER_INTENT`] each.
fn match_intents(intents: &[SignedOrder]) -> Result<Vec<(ChainId, Asset, RouteQuery)>, ExecError> {
    let mut parties = HashSet::new();
    for o in intents {
        let Order::Swap(intent) = &o.order else { return Err(ExecError::NotASwap) };
        if !parties.insert(intent.party) {
            return Err(ExecError::IntentsDoNotMatch(format!("two intents from {}", intent.party)));
        }
    }
    if parties.len() < 2 {
        return Err(ExecError::TooFewIntents);
    }
    // (from, to, chain, asset, amount) → gives minus receives: every entry must come out zero.
    let mut balance: HashMap<(Address, Address, ChainId, Asset, Amount), i64> = HashMap::new();
    let mut queries = Vec::new();
    for o in intents {
        let Order::Swap(intent) = &o.order else { unreachable!("checked above") };
        let party = intent.party;
        for give in &intent.gives {
            if !parties.contains(&give.counterparty) {
                return Err(ExecError::IntentsDoNotMatch(format!(
                    "{party} gives to {}, who sent no intent",
                    give.counterparty
                )));
            }
            *balance.entry((party, give.counterparty, give.chain, give.asset, give.amount)).or_default() += 1;
            let query = RouteQuery {
                source: party,
                destination: give.counterparty,
                amount: give.amount,
                max_fee: give.max_fee,
            };
            queries.push((give.chain, give.asset, query));
        }
        for receive in &intent.receives {
            *balance
                .entry((receive.counterparty, party, receive.chain, receive.asset, receive.amount))
                .or_default() -= 1;
        }
    }
    // Deterministic report: the smallest unmatched transfer.
    let unmatched = balance.into_iter().filter(|(_, n)| *n != 0).min_by_key(|(k, _)| *k);
    if let Some(((from, to, chain, asset, amount), n)) = unmatched {
        return Err(ExecError::IntentsDoNotMatch(if n > 0 {
            format!("{from} gives {} of {asset} on {chain} to {to}, who does not expect it", amount.0)
        } else {
            format!("{to} expects {} of {asset} on {chain} from {from}, who does not give it", amount.0)
        }));
    }
    Ok(queries)
}

/// A payment's or swap's status, as the client API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    InFlight,
    Succeeded,
    Refunded(String),
}

/// An instance that reached its final status during the last call (for the DB and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub id: InstanceId,
    pub kind: InstanceKind,
    pub status: Status,
    pub created_at: u64,
    pub finished_at: u64,
    /// The hub's view of every channel the instance touched, after it finished (for the DB,
    /// so a restarted hub routes on current balances).
    pub channels: Vec<(ChainId, ChannelInfo)>,
}

/// What the executor adds to the hub enclave's instance (whose spec holds the legs).
#[derive(Debug, Clone)]
struct Tracked {
    kind: InstanceKind,
    status: Status,
    created_at: u64,
    /// It pays an invoice: its payer may ask for the payee's receipt.
    invoice: bool,
}

fn pays_invoice(orders: &[SignedOrder]) -> bool {
    orders.iter().any(|o| matches!(&o.order, Order::Payment(r) if r.invoice.is_some()))
}

/// What to send and persist after a flush: persist `sealed` (the hub enclave's state) durably
/// *before* sending any batch.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub batches: Vec<SignedHubBatch>,
    pub sealed: Option<Vec<u8>>,
    /// A replicated hub's entry for this flush (commit it before sending anything).
    pub replicated: Option<Vec<u8>>,
    pub finished: Vec<Finished>,
}

#[derive(Debug)]
pub struct Executor<P: Platform> {
    coordinator: Coordinator<P>,
    network: Network,
    tracked: HashMap<InstanceId, Tracked>,
    in_flight: Vec<InstanceId>,
    /// Final statuses by the time they became final: dropped from `tracked` after
    /// [`STATUS_RETENTION_MS`] (the DB keeps them), so memory follows the recent load.
    done: std::collections::VecDeque<(u64, InstanceId)>,
    /// Instances found final and not yet handed out by a flush.
    finished: Vec<Finished>,
    /// With a status DB: final statuses reported but not yet recorded there, by deadline.
    /// The hub enclave keeps those instances until the DB holds their outcome: pruned
    /// before, a crash would leave the DB saying "in flight" forever with nobody left who
    /// knows better. (Being kept, each one's deadline can be read from the hub enclave.)
    unrecorded: Option<BTreeSet<(u64, InstanceId)>>,
}

/// How long a final status stays in memory (ms of the executor's clock); status queries for
/// older instances are answered from the channel DB.
pub const STATUS_RETENTION_MS: u64 = 10 * 60 * 1000;

/// Ends the reservations `legs` made: applied transfers move balances in the map.
fn release(network: &mut Network, legs: &[Leg], applied: bool) {
    for leg in legs {
        let graph = network.graph_mut(leg.chain, leg.asset);
        for hop in &leg.hops {
            // Reservations were made by `reserve`; a failure here means the map was rebuilt
            // meanwhile (e.g. a channel closed), which leaves nothing to release.
            let _ = graph.release(hop.channel, hop.from, hop.amount, applied);
        }
    }
}

fn describe(reason: Option<RefundReason>) -> String {
    match reason {
        Some(RefundReason::Nack(node, why)) => format!("node {node} refused: {}", nack_text(why)),
        Some(RefundReason::Timeout) => "a participant did not answer in time".into(),
        Some(RefundReason::Requested(node)) => format!("refund requested by {node}"),
        None => "refunded".into(),
    }
}

fn refund_text(phase: HubPhase, reason: Option<RefundReason>) -> String {
    match phase {
        HubPhase::Resolved(_) => "reverted on-chain by an eject".into(),
        _ => describe(reason),
    }
}

/// The NACK's name (what tests and logs match) and, for an invoice, what it means.
fn nack_text(why: NackReason) -> String {
    let meaning = match why {
        NackReason::InvoiceUnknown => " (the payee never issued that invoice)",
        NackReason::InvoiceNotOpen => " (the invoice is already paid, being paid, or cancelled)",
        NackReason::InvoiceExpired => " (the invoice has expired)",
        NackReason::InvoiceMismatch => " (the payment does not meet the invoice's chain, asset or amount)",
        _ => "",
    };
    format!("{why:?}{meaning}")
}

impl<P: Platform> Executor<P> {
    /// Wraps a fresh or restored hub enclave. Instances it has not decided yet (after a
    /// restart) hold their reservations again and are driven on; decided ones keep a
    /// queryable final status.
    pub fn new(coordinator: Coordinator<P>, network: Network) -> Self {
        let mut exec = Executor {
            coordinator,
            network,
            tracked: HashMap::new(),
            in_flight: Vec::new(),
            done: std::collections::VecDeque::new(),
            finished: Vec::new(),
            unrecorded: None,
        };
        let instances: Vec<_> = exec
            .coordinator
            .inspect()
            .instances
            .values()
            .map(|i| {
                (i.spec.id, i.spec.kind, i.phase, i.refund_reason, i.created_at, pays_invoice(&i.spec.orders))
            })
            .collect();
        for (id, kind, phase, reason, created_at, invoice) in instances {
            let status = match phase.outcome() {
                None => {
                    exec.resume(id);
                    Status::InFlight
                }
                Some(Outcome::Apply) => Status::Succeeded,
                Some(Outcome::Revert) => Status::Refunded(refund_text(phase, reason)),
            };
            exec.tracked.insert(id, Tracked { kind, status, created_at, invoice });
        }
        exec
    }

    /// Puts an instance back in flight with its reservations, so the next flush reports it
    /// finished if it is decided. A restarted hub calls this for instances its DB still
    /// lists as in flight although the enclave decided them (the crash fell in between).
    pub fn resume(&mut self, id: InstanceId) {
        let Some(instance) = self.coordinator.instance(id) else { return };
        if self.in_flight.contains(&id) {
            return;
        }
        let legs = instance.spec.legs.clone();
        // The map was rebuilt from the DB, which never saw this instance's transfers.
        let _ = self.reserve(&legs);
        if let Some(t) = self.tracked.get_mut(&id) {
            t.status = Status::InFlight;
        }
        self.in_flight.push(id);
    }

    /// Replaces the map (rebuilt from the DB after a reorg); in-flight instances hold their
    /// reservations in the new one.
    pub fn replace_network(&mut self, network: Network) {
        self.network = network;
        for id in self.in_flight.clone() {
            if let Some(i) = self.coordinator.instance(id) {
                let legs = i.spec.legs.clone();
                let _ = self.reserve(&legs);
            }
        }
    }

    /// A contract event seen by chain sync (confirmed): keeps the map current, and hands
    /// an eject's fixed outcome to the hub enclave (RESOLVE).
    pub fn on_chain_event(
        &mut self,
        now: u64,
        chain: ChainId,
        event: &ContractEvent,
    ) -> Result<(), ExecError> {
        match *event {
            ContractEvent::ChannelOpened { channel, a, b, deposit, token, .. } => {
                // Each asset of a chain is a map of its own: a route never mixes them.
                let graph = self.network.graph_mut(chain, Asset::from_token(token));
                if graph.channel(channel).is_none() {
                    graph.upsert_channel(&ChannelInfo {
                        id: channel,
                        a,
                        b,
                        balance_a: deposit,
                        balance_b: Amount::ZERO,
                        fee_a: FeePolicy::default(),
                        fee_b: FeePolicy::default(),
                    })?;
                }
            }
            ContractEvent::ChannelFunded { channel, party, amount, .. } => {
                if let Some(graph) = self.network.graph_of_channel_mut(chain, channel) {
                    graph.credit(channel, party, amount)?
                }
            }
            ContractEvent::ChannelClosed { channel, .. } => {
                if let Some(graph) = self.network.graph_of_channel_mut(chain, channel) {
                    graph.close_channel(channel)?
                }
            }
            ContractEvent::InstanceResolved { instance, applied, .. } => {
                let outcome = if applied { Outcome::Apply } else { Outcome::Revert };
                // Repeats (one event per ejected channel) are accepted by the hub enclave.
                self.coordinator.on_chain_outcome(now, instance, outcome)?;
            }
            // A swap is decided by this hub alone; nodes act on its certificates on-chain.
            ContractEvent::MeasurementAllowed { .. }
            | ContractEvent::EnclaveRegistered { .. }
            | ContractEvent::DecisionRecorded { .. }
            | ContractEvent::RevertClaimed { .. }
            | ContractEvent::PayoutDeferred { .. }
            | ContractEvent::Withdrawn { .. } => {}
        }
        Ok(())
    }

    pub fn coordinator(&self) -> &Coordinator<P> {
        &self.coordinator
    }

    /// The hub enclave, without the executor (as a crash leaves it: sealed, and restored
    /// into a new executor by `runtime::executor_for`).
    pub fn into_coordinator(self) -> Coordinator<P> {
        self.coordinator
    }

    pub fn coordinator_mut(&mut self) -> &mut Coordinator<P> {
        &mut self.coordinator
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    /// How many statuses are held in memory (in flight, or final and recent).
    pub fn tracked_len(&self) -> usize {
        self.tracked.len()
    }

    /// True iff `id` (still tracked) pays an invoice.
    pub fn pays_invoice(&self, id: InstanceId) -> bool {
        self.tracked.get(&id).is_some_and(|t| t.invoice)
    }

    pub fn status(&self, id: InstanceId) -> Option<&Status> {
        self.tracked.get(&id).map(|t| &t.status)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Routes and starts a payment from the payer enclave's signed request.
    pub fn submit_payment(&mut self, now: u64, order: SignedOrder) -> Result<InstanceId, ExecError> {
        let Order::Payment(req) = &order.order else { return Err(ExecError::NotAPayment) };
        // The signature is checked once, by the hub enclave in `start` (one ECDSA recovery
        // per order on the hot path, not two).
        let route = self.network.graph(req.chain, req.asset)?.find_route(&RouteQuery {
            source: req.payer,
            destination: req.payee,
            amount: req.amount,
            max_fee: req.max_fee,
        })?;
        let leg = route.into_leg(req.chain, req.asset);
        self.start(now, InstanceKind::MultiHop, vec![leg], vec![order])
    }

    /// Assembles a swap from every party's signed intent, routes one leg per give, starts it.
    pub fn submit_swap(&mut self, now: u64, intents: Vec<SignedOrder>) -> Result<InstanceId, ExecError> {
        // Cheap checks first, then signatures, and only then matching and routing: whoever
        // sends a swap request, its cost is bounded before any real work is done.
        if intents.len() > MAX_SWAP_PARTIES {
            return Err(ExecError::TooManyIntents { got: intents.len(), max: MAX_SWAP_PARTIES });
        }
        for o in &intents {
            let Order::Swap(intent) = &o.order else { return Err(ExecError::NotASwap) };
            if !intent.within_caps() {
                return Err(ExecError::TooManyTransfers { max: MAX_TRANSFERS_PER_INTENT });
            }
        }
        for o in &intents {
            let owner = o.order.owner();
            if !self.coordinator.is_registered(owner) || !o.is_signed() {
                return Err(ExecError::BadIntent(owner));
            }
        }
        let legs = match_intents(&intents)?;
        let routed = self.network.route_legs(&legs)?;
        self.start(now, InstanceKind::CrossChain, routed, intents)
    }

    fn start(
        &mut self,
        now: u64,
        kind: InstanceKind,
        legs: Vec<Leg>,
        orders: Vec<SignedOrder>,
    ) -> Result<InstanceId, ExecError> {
        self.reserve(&legs)?;
        let invoice = pays_invoice(&orders);
        // The hub enclave takes the legs; the copy only serves to undo the reservation if
        // it refuses the instance.
        match self.coordinator.create_instance(now, kind, legs.clone(), orders) {
            Ok(id) => {
                self.tracked.insert(id, Tracked { kind, status: Status::InFlight, created_at: now, invoice });
                self.in_flight.push(id);
                Ok(id)
            }
            Err(e) => {
                release(&mut self.network, &legs, false);
                Err(match e {
                    HubError::Spec(SpecError::UnsignedOrder(_)) => ExecError::BadOrderSignature,
                    other => other.into(),
                })
            }
        }
    }

    fn reserve(&mut self, legs: &[Leg]) -> Result<(), ExecError> {
        for (i, leg) in legs.iter().enumerate() {
            let graph = self.network.graph_mut(leg.chain, leg.asset);
            for (j, hop) in leg.hops.iter().enumerate() {
                if let Err(e) = graph.reserve(hop.channel, hop.from, hop.amount) {
                    // Undo what this call reserved so far.
                    for h in &leg.hops[..j] {
                        let _ = graph.release(h.channel, h.from, h.amount, false);
                    }
                    release(&mut self.network, &legs[..i], false);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    pub fn on_ack(&mut self, now: u64, ack: &SignedNodeAck) -> Result<(), ExecError> {
        self.coordinator.on_ack(now, ack)?;
        Ok(())
    }

    pub fn on_refund_request(&mut self, now: u64, request: &SignedRefundRequest) -> Result<(), ExecError> {
        self.coordinator.on_refund_request(now, request)?;
        Ok(())
    }

    /// A payee's receipt for the invoice an instance paid, from the payee's own link (`from`):
    /// for exactly that instance's payment (invoice, payee, payer, amount delivered), once
    /// the hub enclave decided to apply it, and signed by the payee (checked last: the cheap
    /// checks bound what a node can make the executor do). The payer to pass it on to.
    pub fn check_receipt(&self, from: Address, receipt: &PaymentReceipt) -> Result<Address, ExecError> {
        let bad = |why: &'static str| ExecError::BadReceipt(why);
        if receipt.payee != from {
            return Err(bad("only the payee passes on its receipt"));
        }
        let instance = self.coordinator.instance(receipt.instance).ok_or(bad("unknown instance"))?;
        if instance.phase.outcome() != Some(Outcome::Apply) {
            return Err(bad("the instance was not applied"));
        }
        let paid = instance.spec.orders.iter().find_map(|o| match &o.order {
            Order::Payment(r) => Some(r),
            Order::Swap(_) => None,
        });
        let Some(request) = paid.filter(|r| r.invoice == Some(receipt.invoice)) else {
            return Err(bad("the instance pays no such invoice"));
        };
        let delivered = instance.spec.legs.first().map(|l| l.delivered());
        if request.payee != receipt.payee
            || request.payer != receipt.payer
            || delivered != Some(receipt.amount)
        {
            return Err(bad("it does not match the instance's payment"));
        }
        receipt.verify().map_err(|_| bad("not signed by the payee it names"))?;
        Ok(request.payer)
    }

    /// An eject seen by chain sync fixed an instance's outcome on-chain.
    pub fn on_chain_outcome(&mut self, now: u64, id: InstanceId, outcome: Outcome) -> Result<(), ExecError> {
        self.coordinator.on_chain_outcome(now, id, outcome)?;
        Ok(())
    }

    /// Keeps every instance in the hub enclave until [`Executor::recorded`] says the status
    /// DB holds its final status (for a hub that keeps one).
    pub fn hold_until_recorded(&mut self) {
        self.unrecorded.get_or_insert_with(Default::default);
    }

    /// The status DB now holds `id`'s final status: the hub enclave may forget it.
    pub fn recorded(&mut self, id: InstanceId) {
        if let Some(unrecorded) = &mut self.unrecorded
            && let Some(instance) = self.coordinator.instance(id)
        {
            unrecorded.remove(&(instance.spec.deadline, id));
        }
    }

    /// Timeouts and retransmissions, and pruning of instances that are complete and past
    /// their deadline from the hub enclave (their statuses stay here and in the DB).
    pub fn tick(&mut self, now: u64) {
        self.coordinator.tick(now);
        // Whatever became final is reported before pruning could drop it: an instance a
        // restarted hub resumed may be complete and past its deadline already, and once
        // pruned its outcome could no longer be read.
        self.collect_finished(now);
        // Nothing whose final status the DB lacks is pruned (pruning goes by deadline).
        let unrecorded = self.unrecorded.as_ref().and_then(BTreeSet::first);
        self.coordinator.prune_complete(unrecorded.map_or(now, |(deadline, _)| now.min(*deadline)));
        while let Some(&(at, id)) = self.done.front()
            && now > at.saturating_add(STATUS_RETENTION_MS)
        {
            self.done.pop_front();
            self.tracked.remove(&id);
        }
    }

    /// Signs the queued round messages (one batch per node) and reports instances that
    /// reached their final status since the last flush.
    pub fn flush(&mut self, now: u64) -> Outgoing {
        let flush = self.coordinator.flush();
        self.collect_finished(now);
        let finished = std::mem::take(&mut self.finished);
        Outgoing { batches: flush.batches, sealed: flush.sealed, replicated: flush.replicated, finished }
    }

    /// Moves the in-flight instances the hub enclave decided to `finished`.
    fn collect_finished(&mut self, now: u64) {
        let mut still = Vec::with_capacity(self.in_flight.len());
        for id in std::mem::take(&mut self.in_flight) {
            let Some(instance) = self.coordinator.instance(id) else { continue };
            let (phase, reason) = (instance.phase, instance.refund_reason);
            let status = match phase.outcome() {
                None => {
                    still.push(id);
                    continue;
                }
                Some(Outcome::Apply) => Status::Succeeded,
                Some(Outcome::Revert) => Status::Refunded(refund_text(phase, reason)),
            };
            let tracked = self.tracked.get_mut(&id).expect("every in-flight instance is tracked");
            tracked.status = status.clone();
            release(&mut self.network, &instance.spec.legs, status == Status::Succeeded);
            let mut channels = Vec::new();
            for leg in &instance.spec.legs {
                let graph = self.network.graph_mut(leg.chain, leg.asset);
                for hop in &leg.hops {
                    if let Some(c) = graph.channel(hop.channel) {
                        channels.push((leg.chain, c.info));
                    }
                }
            }
            self.done.push_back((now, id));
            if let Some(unrecorded) = &mut self.unrecorded {
                unrecorded.insert((instance.spec.deadline, id));
            }
            self.finished.push(Finished {
                id,
                kind: tracked.kind,
                status,
                created_at: tracked.created_at,
                finished_at: now,
                channels,
            });
        }
        self.in_flight = still;
    }
}
