//! The hub's gRPC API (`teepay.v1.Hub`): the network map, payment/swap statuses, and an
//! intent board where swap parties find each other (intents are enclave-signed, so the
//! board only stores and lists them; the hub refuses unmatched sets when they are submitted).

use crate::executor::Status as ExecStatus;
use crate::service::HubControl;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use teepay_api::pb::hub_server::{Hub, HubServer};
use teepay_api::pb::{self};
use teepay_api::{intent_pb, parse_address, parse_instance, parse_intent};
use teepay_link::host::now_ms;
use teepay_types::{Address, Order, SignedOrder};
use tonic::{Request, Response, Status};

/// Most intents the board keeps at once (expired ones are dropped first).
pub const BOARD_CAPACITY: usize = 10_000;
/// Most intents one party may have on the board: no party can fill it alone.
pub const BOARD_PER_PARTY: usize = 16;
/// Most members a hub group may name (each is a receipt the leader may have to check).
pub const MAX_MEMBERS: usize = 64;
/// Latest expiry an intent may have, from now (ms): the hub enclave's limit for any order.
pub const BOARD_MAX_TTL_MS: u64 = teepay_coordinator::MAX_ORDER_LIFETIME;

#[derive(Clone)]
pub struct HubApi {
    control: Source,
    board: Arc<Mutex<Board>>,
    events: Option<Arc<teepay_events::EventLog>>,
    /// Event streams open at once (each holds a task and a page of events).
    streams: Arc<tokio::sync::Semaphore>,
}

/// Most event streams the hub serves at once.
pub const MAX_STREAMS: usize = 256;

impl std::fmt::Debug for HubApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubApi").finish_non_exhaustive()
    }
}

/// Where the API finds the executor: a single hub's, or whichever a replica has while it
/// leads (a follower answers with where the leader's API is).
#[derive(Clone)]
enum Source {
    Fixed(HubControl),
    Replica {
        slot: crate::runtime::ControlSlot,
        leader_api: Arc<dyn Fn() -> Option<String> + Send + Sync>,
        /// This replica's committed group view (its shadow enclave's).
        group: Arc<dyn Fn() -> pb::GroupInfo + Send + Sync>,
    },
}

/// A hub enclave's group view: its member key, the membership, the last entry it holds.
pub fn group_info<P: teepay_types::Platform>(hub: &teepay_coordinator::Coordinator<P>) -> pb::GroupInfo {
    let mut info = pb::GroupInfo {
        hub: hub.address().to_string(),
        member: hub.member_address().map(|m| m.to_string()).unwrap_or_default(),
        seq: hub.replica_chain().seq,
        ..Default::default()
    };
    if let Some(m) = &hub.inspect().membership {
        set_membership(&mut info, m);
    }
    info
}

fn set_membership(info: &mut pb::GroupInfo, m: &teepay_coordinator::Membership) {
    info.governance = m.governance.to_string();
    info.version = m.version;
    info.members = m.members.iter().map(ToString::to_string).collect();
}

#[derive(Debug, Default)]
struct Board {
    next: u64,
    entries: Vec<(u64, SignedOrder)>,
}

impl Board {
    fn prune(&mut self, now: u64) {
        self.entries.retain(|(_, o)| matches!(&o.order, Order::Swap(i) if i.expires_at > now));
    }
}

impl HubApi {
    pub fn new(control: HubControl) -> Self {
        HubApi {
            control: Source::Fixed(control),
            board: Arc::default(),
            events: None,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }

    /// A hub group replica's API: served on every replica, answered while it leads, and
    /// otherwise refused with where the leader's API is (`leader_api`).
    pub fn for_replica(
        slot: crate::runtime::ControlSlot,
        leader_api: Arc<dyn Fn() -> Option<String> + Send + Sync>,
        group: Arc<dyn Fn() -> pb::GroupInfo + Send + Sync>,
    ) -> Self {
        HubApi {
            control: Source::Replica { slot, leader_api, group },
            board: Arc::default(),
            events: None,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Serves `SubscribeInstances` from this log.
    pub fn with_events(mut self, log: Arc<teepay_events::EventLog>) -> Self {
        self.events = Some(log);
        self
    }

    fn control(&self) -> Result<HubControl, Status> {
        match &self.control {
            Source::Fixed(c) => Ok(c.clone()),
            Source::Replica { slot, leader_api, .. } => slot.get().ok_or_else(|| {
                Status::unavailable(match leader_api() {
                    Some(addr) => format!("this hub replica follows; the leader's API is at {addr}"),
                    None => "this hub replica follows and no leader is known yet (an election is under way?)"
                        .into(),
                })
            }),
        }
    }

    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = teepay_link::tcp::listen(addr, crate::RESTART_PATIENCE).await?;
        let bound = listener.local_addr()?;
        // No Nagle: a small reply held back for a delayed ACK would add ~40 ms to every call.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(HubServer::new(self))
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "hub API server stopped");
            }
        });
        Ok((bound, task))
    }
}

#[tonic::async_trait]
impl Hub for HubApi {
    async fn network(&self, _: Request<pb::NetworkRequest>) -> Result<Response<pb::NetworkMap>, Status> {
        let mut channels = Vec::new();
        for ((chain, asset), list) in self.control()?.network().await {
            for c in list {
                channels.push(pb::MapChannel {
                    chain: chain.0,
                    asset: teepay_api::asset_pb(asset),
                    id: c.info.id.to_string(),
                    a: c.info.a.to_string(),
                    b: c.info.b.to_string(),
                    balance_a: c.info.balance_a.0.to_string(),
                    balance_b: c.info.balance_b.0.to_string(),
                    reserved_a: c.reserved_a.0.to_string(),
                    reserved_b: c.reserved_b.0.to_string(),
                    open: c.open,
                });
            }
        }
        channels.sort_by(|x, y| (x.chain, &x.asset, &x.id).cmp(&(y.chain, &y.asset, &y.id)));
        Ok(Response::new(pb::NetworkMap { channels }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::InstanceStatus>, Status> {
        let id = parse_instance("instance", &req.into_inner().instance)?;
        let (status, reason) = match self.control()?.status(id).await {
            None => ("unknown", String::new()),
            Some(ExecStatus::InFlight) => ("in_flight", String::new()),
            Some(ExecStatus::Succeeded) => ("succeeded", String::new()),
            Some(ExecStatus::Refunded(r)) => ("refunded", r),
        };
        Ok(Response::new(pb::InstanceStatus { instance: id.to_string(), status: status.into(), reason }))
    }

    async fn post_intent(&self, req: Request<pb::Intent>) -> Result<Response<pb::PostedIntent>, Status> {
        let order = parse_intent("encoded", &req.into_inner().encoded)?;
        let now = now_ms();
        let Order::Swap(intent) = &order.order else {
            return Err(Status::invalid_argument("encoded: not a swap intent"));
        };
        if intent.expires_at <= now {
            return Err(Status::invalid_argument("encoded: the intent has expired"));
        }
        if intent.expires_at > now.saturating_add(BOARD_MAX_TTL_MS) {
            return Err(Status::invalid_argument("encoded: the intent expires more than a day from now"));
        }
        // `parse_intent` checked the size, the caps and the signature; only an enclave this hub
        // admitted may post: the board is not a free store for any key.
        if !self.control()?.is_admitted(intent.party).await {
            return Err(Status::permission_denied(
                "encoded: its party is not an enclave admitted by this hub",
            ));
        }
        let party = intent.party;
        let mut board = self.board.lock().expect("board lock");
        board.prune(now);
        if board.entries.iter().any(|(_, o)| *o == order) {
            return Err(Status::already_exists("this intent is already on the board"));
        }
        if board.entries.iter().filter(|(_, o)| o.order.owner() == party).count() >= BOARD_PER_PARTY {
            return Err(Status::resource_exhausted(format!(
                "this party already has {BOARD_PER_PARTY} intents on the board"
            )));
        }
        if board.entries.len() >= BOARD_CAPACITY {
            return Err(Status::resource_exhausted("the intent board is full"));
        }
        board.next += 1;
        let id = board.next;
        board.entries.push((id, order));
        Ok(Response::new(pb::PostedIntent { id }))
    }

    async fn group(&self, _: Request<pb::GroupRequest>) -> Result<Response<pb::GroupInfo>, Status> {
        match &self.control {
            Source::Replica { group, .. } => Ok(Response::new(group())),
            Source::Fixed(_) => Err(Status::failed_precondition("a single hub: not a hub group")),
        }
    }

    async fn update_membership(
        &self,
        req: Request<pb::MembershipUpdate>,
    ) -> Result<Response<pb::GroupInfo>, Status> {
        let req = req.into_inner();
        let Source::Replica { group, .. } = &self.control else {
            return Err(Status::failed_precondition("a single hub: not a hub group"));
        };
        if req.members.is_empty() || req.members.len() > MAX_MEMBERS {
            return Err(Status::invalid_argument(format!("members: between 1 and {MAX_MEMBERS}")));
        }
        let members = req
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| parse_address(&format!("members[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        let signature = teepay_types::ids::from_hex::<65>(req.signature.trim())
            .map(teepay_types::Signature)
            .ok_or_else(|| Status::invalid_argument("signature: expected 65 bytes of hex"))?;
        let signed = teepay_coordinator::SignedMembership { version: req.version, members, signature };
        // Checked here first, so a stranger's lists never reach the executor.
        let view = group();
        let (hub, governance) = (Address::from_hex(&view.hub), Address::from_hex(&view.governance));
        let (Some(hub), Some(governance)) = (hub, governance) else {
            return Err(Status::failed_precondition("this replica's enclave is not in a governed group"));
        };
        if !signed.is_signed_by(hub, governance) {
            return Err(Status::permission_denied("membership not signed by the group's governance key"));
        }
        let membership =
            self.control()?.update_membership(signed).await.map_err(Status::permission_denied)?;
        let mut info = group();
        set_membership(&mut info, &membership);
        Ok(Response::new(info))
    }

    type SubscribeInstancesStream = teepay_api::EventStream;

    async fn subscribe_instances(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeInstancesStream>, Status> {
        let log = self.events.as_ref().ok_or_else(|| Status::unimplemented("this hub keeps no event log"))?;
        let slots = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("{MAX_STREAMS} event streams are open already"))
        })?;
        let stream = teepay_api::event_stream(log, req.into_inner().after, |k| k.starts_with("instance."))?;
        // The slot is held as long as the stream lives.
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(stream, move |e| {
            let _held = &slots;
            e
        }))))
    }

    async fn list_intents(
        &self,
        _: Request<pb::ListIntentsRequest>,
    ) -> Result<Response<pb::IntentList>, Status> {
        // A follower's board is not the leader's: it redirects like every other call.
        self.control()?;
        let mut board = self.board.lock().expect("board lock");
        board.prune(now_ms());
        let entries =
            board.entries.iter().map(|(id, o)| pb::BoardEntry { id: *id, intent: intent_pb(o) }).collect();
        Ok(Response::new(pb::IntentList { entries }))
    }
}
