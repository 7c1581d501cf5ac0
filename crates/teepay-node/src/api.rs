//! The node's gRPC API (`teepay.v1.Node`): what the owner's CLI or wallet calls. Every
//! argument is parsed strictly before anything reaches the enclave; errors carry the
//! enclave's or the hub's reason.

use crate::onchain::{ChainLink, OnchainError, close, fund, open_channel_of, register};
use crate::{NodeError, NodeHandle};
use std::net::SocketAddr;
use teepay_api::pb::node_server::{Node, NodeServer};
use teepay_api::pb::{self};
use teepay_api::{intent_pb, parse_address, parse_channel, parse_instance, parse_intent};
use teepay_chain::{AnyChain, Chain};
use teepay_enclave::{EnclaveError, Request, Response};
use teepay_link::host::now_ms;
use teepay_link::wire::WireStatus;
use teepay_types::{Asset, ChainId, Quote};
use tonic::{Request as Req, Response as Resp, Status};

/// Serves the API for one node daemon.
#[derive(Debug, Clone)]
pub struct NodeApi {
    pub node: NodeHandle,
    pub links: Vec<ChainLink<AnyChain>>,
    /// The chains this node's enclave holds channels on. Off-chain calls (payments, intents)
    /// need only this; on-chain ones need a link too.
    pub chains: Vec<ChainId>,
    pub hub: String,
    /// This enclave's quote per chain (for on-chain registration before a first open).
    pub quotes: Vec<(ChainId, Quote)>,
    /// Token symbols the owner configured per chain (`12.5usdc`, `asset = "usdc"`).
    pub tokens: Vec<crate::assets::TokenSymbol>,
    /// Each token's unit once read from its contract (a token's symbol and decimals do not
    /// change; `Default` starts it empty).
    pub units: crate::assets::UnitCache,
}

pub(crate) fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::Enclave(e @ (EnclaveError::ZeroAmount | EnclaveError::InvalidOrder(_))) => {
            Status::invalid_argument(e.to_string())
        }
        NodeError::Enclave(e @ (EnclaveError::UnknownChannel(_) | EnclaveError::UnknownInstance(_))) => {
            Status::not_found(e.to_string())
        }
        NodeError::Enclave(e) => Status::failed_precondition(format!("enclave refused: {e}")),
        NodeError::Refused(r) => Status::failed_precondition(format!("hub refused: {r}")),
        NodeError::Disconnected => {
            Status::unavailable("not connected to the hub (retrying in the background)")
        }
        e @ NodeError::HubSilent(_) => Status::deadline_exceeded(e.to_string()),
        e @ (NodeError::Stopped | NodeError::Storage(_)) => Status::internal(e.to_string()),
    }
}

fn onchain_status(e: OnchainError) -> Status {
    match e {
        OnchainError::Node(e) => node_status(e),
        OnchainError::Chain(e) => Status::unavailable(format!("chain: {e}")),
        e => Status::failed_precondition(e.to_string()),
    }
}

impl NodeApi {
    fn event_log(&self) -> Result<&std::sync::Arc<teepay_events::EventLog>, Status> {
        self.node.events.as_ref().ok_or_else(|| Status::unimplemented("this node keeps no event log"))
    }

    pub(crate) fn off_chain(&self, chain: ChainId) -> Result<ChainId, Status> {
        self.chains.contains(&chain).then_some(chain).ok_or_else(|| {
            Status::invalid_argument(format!("chain: this node is not configured for chain {}", chain.0))
        })
    }

    pub(crate) fn link(&self, chain: ChainId) -> Result<&ChainLink<AnyChain>, Status> {
        self.links.iter().find(|l| l.id == chain).ok_or_else(|| {
            Status::invalid_argument(format!("chain: this node is not configured for chain {}", chain.0))
        })
    }

    async fn channel_link(&self, channel: teepay_types::ChannelId) -> Result<&ChainLink<AnyChain>, Status> {
        self.channel_link_and_token(channel).await.map(|(link, _)| link)
    }

    /// The channel's chain link and its token (zero: ether).
    async fn channel_link_and_token(
        &self,
        channel: teepay_types::ChannelId,
    ) -> Result<(&ChainLink<AnyChain>, teepay_types::Address), Status> {
        let view = self.node.channels().await.map_err(node_status)?;
        let c = view.iter().find(|c| c.id == channel).ok_or_else(|| {
            Status::not_found(format!("channel {channel} is not one of this node's channels"))
        })?;
        Ok((self.link(c.chain)?, c.token))
    }

    /// Registers the enclave on `chain` if it is not yet (its first on-chain action there).
    async fn ensure_registered(&self, link: &ChainLink<AnyChain>) -> Result<(), Status> {
        let quote = self
            .quotes
            .iter()
            .find(|(c, _)| *c == link.id)
            .map(|(_, q)| q)
            .ok_or_else(|| Status::internal("no quote for this chain"))?;
        register(&self.node, link, quote).await.map_err(onchain_status)?;
        Ok(())
    }

    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        // A restarted daemon's port may be held for a moment (`teepay_link::tcp::listen`).
        let listener = teepay_link::tcp::listen(addr, std::time::Duration::from_secs(5)).await?;
        let bound = listener.local_addr()?;
        // No Nagle: a small reply held back for a delayed ACK would add ~40 ms to every call.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(NodeServer::new(self))
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "node API server stopped");
            }
        });
        Ok((bound, task))
    }
}

fn tx_done(r: &teepay_chain::Receipt) -> pb::TxDone {
    pb::TxDone {
        tx: format!("0x{}", teepay_types::ids::to_hex(&r.tx_hash)),
        block: r.block_number,
        gas_used: r.gas_used,
    }
}

pub fn status_pb(instance: String, s: WireStatus) -> pb::InstanceStatus {
    let (status, reason) = match s {
        WireStatus::Unknown => ("unknown", String::new()),
        WireStatus::InFlight => ("in_flight", String::new()),
        WireStatus::Succeeded => ("succeeded", String::new()),
        WireStatus::Refunded(r) => ("refunded", r),
    };
    pb::InstanceStatus { instance, status: status.into(), reason }
}

#[tonic::async_trait]
impl Node for NodeApi {
    async fn info(&self, _: Req<pb::InfoRequest>) -> Result<Resp<pb::NodeInfo>, Status> {
        let mut chains = Vec::new();
        for l in &self.links {
            let balance =
                l.chain.balance(self.node.address).await.map(|b| b.0.to_string()).unwrap_or_default();
            let view = teepay_chain::contract::ContractView { chain: &l.chain, address: l.contract };
            let registered = matches!(view.enclave_measurement(self.node.address).await, Ok(Some(_)));
            let tokens = self.known_tokens(l.id).await;
            chains.push(pb::ChainInfo {
                chain_id: l.id.0,
                contract: l.contract.to_string(),
                rpc: l.chain.describe(),
                balance,
                registered,
                tokens,
            });
        }
        Ok(Resp::new(pb::NodeInfo { address: self.node.address.to_string(), hub: self.hub.clone(), chains }))
    }

    async fn pay(&self, req: Req<pb::PayRequest>) -> Result<Resp<pb::Started>, Status> {
        let r = req.into_inner();
        let chain = self.off_chain(ChainId(r.chain))?;
        let payee = parse_address("payee", &r.payee)?;
        let asset = self.asset_of(chain, "asset", &r.asset, &r.amount)?;
        let amount = self.amount_of(chain, asset, "amount", &r.amount, false).await?;
        let max_fee = self.amount_of(chain, asset, "max_fee", &r.max_fee, true).await?;
        let id = self.node.pay_asset(chain, asset, payee, amount, max_fee).await.map_err(node_status)?;
        Ok(Resp::new(pb::Started { instance: id.to_string() }))
    }

    async fn create_invoice(
        &self,
        req: Req<pb::CreateInvoiceRequest>,
    ) -> Result<Resp<pb::InvoiceInfo>, Status> {
        self.create_invoice_call(req.into_inner()).await.map(Resp::new)
    }

    async fn list_invoices(&self, _: Req<pb::ListInvoicesRequest>) -> Result<Resp<pb::InvoiceList>, Status> {
        self.list_invoices_call().await.map(Resp::new)
    }

    async fn cancel_invoice(&self, req: Req<pb::InvoiceRef>) -> Result<Resp<pb::InvoiceInfo>, Status> {
        self.cancel_invoice_call(req.into_inner()).await.map(Resp::new)
    }

    async fn pay_invoice(&self, req: Req<pb::PayInvoiceRequest>) -> Result<Resp<pb::Started>, Status> {
        self.pay_invoice_call(req.into_inner()).await.map(Resp::new)
    }

    async fn receipt(&self, req: Req<pb::InvoiceRef>) -> Result<Resp<pb::ReceiptInfo>, Status> {
        self.receipt_call(req.into_inner()).await.map(Resp::new)
    }

    type SubscribeInvoicesStream = teepay_api::EventStream;
    type SubscribePaymentsStream = teepay_api::EventStream;

    async fn subscribe_invoices(
        &self,
        req: Req<pb::SubscribeRequest>,
    ) -> Result<Resp<Self::SubscribeInvoicesStream>, Status> {
        let log = self.event_log()?;
        teepay_api::event_stream(log, req.into_inner().after, |k| k.starts_with("invoice.")).map(Resp::new)
    }

    async fn subscribe_payments(
        &self,
        req: Req<pb::SubscribeRequest>,
    ) -> Result<Resp<Self::SubscribePaymentsStream>, Status> {
        let log = self.event_log()?;
        let wanted = |k: &str| k.starts_with("payment.") || k.starts_with("receipt.");
        teepay_api::event_stream(log, req.into_inner().after, wanted).map(Resp::new)
    }

    async fn status(&self, req: Req<pb::StatusRequest>) -> Result<Resp<pb::InstanceStatus>, Status> {
        let r = req.into_inner();
        let id = parse_instance("instance", &r.instance)?;
        let s = self.node.status(id).await.map_err(node_status)?;
        Ok(Resp::new(status_pb(id.to_string(), s)))
    }

    async fn channels(&self, _: Req<pb::ChannelsRequest>) -> Result<Resp<pb::ChannelList>, Status> {
        let channels = self
            .node
            .channels()
            .await
            .map_err(node_status)?
            .into_iter()
            .map(|c| pb::Channel {
                chain: c.chain.0,
                id: c.id.to_string(),
                peer: c.peer.to_string(),
                local: c.local.0.to_string(),
                remote: c.remote.0.to_string(),
                locks: c.locks as u32,
                open: c.open,
                token: if c.token == teepay_types::Address::default() {
                    String::new()
                } else {
                    c.token.to_string()
                },
            })
            .collect();
        Ok(Resp::new(pb::ChannelList { channels }))
    }

    async fn open_channel(
        &self,
        req: Req<pb::OpenChannelRequest>,
    ) -> Result<Resp<pb::ChannelOpened>, Status> {
        let r = req.into_inner();
        let link = self.link(ChainId(r.chain))?;
        let peer = parse_address("peer", &r.peer)?;
        let asset = self.asset_of(link.id, "token", &r.token, &r.deposit)?;
        let token = asset.token();
        let deposit = self.amount_of(link.id, asset, "deposit", &r.deposit, false).await?;
        self.ensure_registered(link).await?;
        let (id, receipt, _) =
            open_channel_of(&self.node, link, peer, token, deposit).await.map_err(onchain_status)?;
        let done = tx_done(&receipt);
        Ok(Resp::new(pb::ChannelOpened { channel: id.to_string(), tx: done.tx, block: done.block }))
    }

    async fn fund(&self, req: Req<pb::FundRequest>) -> Result<Resp<pb::TxDone>, Status> {
        let r = req.into_inner();
        let channel = parse_channel("channel", &r.channel)?;
        let (link, token) = self.channel_link_and_token(channel).await?;
        let amount = self.amount_of(link.id, Asset::from_token(token), "amount", &r.amount, false).await?;
        let receipt = fund(&self.node, link, channel, amount).await.map_err(onchain_status)?;
        Ok(Resp::new(tx_done(&receipt)))
    }

    async fn close(&self, req: Req<pb::CloseRequest>) -> Result<Resp<pb::TxDone>, Status> {
        let channel = parse_channel("channel", &req.into_inner().channel)?;
        let link = self.channel_link(channel).await?;
        let receipt = close(&self.node, link, channel).await.map_err(onchain_status)?;
        Ok(Resp::new(tx_done(&receipt)))
    }

    async fn create_intent(&self, req: Req<pb::CreateIntentRequest>) -> Result<Resp<pb::Intent>, Status> {
        let r = req.into_inner();
        let mut gives = Vec::with_capacity(r.gives.len());
        for t in &r.gives {
            gives.push(self.transfer_of("gives", t).await?);
        }
        let mut receives = Vec::with_capacity(r.receives.len());
        for t in &r.receives {
            receives.push(self.transfer_of("receives", t).await?);
        }
        let ttl = if r.ttl_seconds == 0 { 600 } else { r.ttl_seconds.min(86_400) };
        let expires_at = now_ms() + ttl * 1000;
        let Response::Order(order) = self
            .node
            .enclave(Request::CreateSwapIntent { gives, receives, expires_at })
            .await
            .map_err(node_status)?
        else {
            return Err(Status::internal("unexpected enclave response"));
        };
        Ok(Resp::new(intent_pb(&order).ok_or_else(|| Status::internal("not an intent"))?))
    }

    async fn submit_swap(&self, req: Req<pb::SubmitSwapRequest>) -> Result<Resp<pb::Started>, Status> {
        let intents = req
            .into_inner()
            .intents
            .iter()
            .enumerate()
            .map(|(i, h)| parse_intent(&format!("intents[{i}]"), h))
            .collect::<Result<Vec<_>, _>>()?;
        if intents.len() < 2 {
            return Err(Status::invalid_argument("intents: a swap needs at least two parties' intents"));
        }
        let id = self.node.swap(intents).await.map_err(node_status)?;
        Ok(Resp::new(pb::Started { instance: id.to_string() }))
    }
}
