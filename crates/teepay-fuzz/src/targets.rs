//! The fuzz targets: one per trust boundary. Each takes the bytes as the far side would send
//! them; none may panic.

use crate::corpus::Corpus;
use alloy_primitives::{Address as EvmAddress, B256, U256};
use alloy_sol_types::SolEvent;
use teepay_chain::{LogEntry, PaymentChannels as PC};
use teepay_coordinator::Coordinator;
use teepay_enclave::{NodeEnclave, Request};
use teepay_link::wire::{HubMessage, NodeMessage};
use teepay_types::{
    Address, LinkRole, SealedLog, SignedHubBatch, SignedNodeAck, SimPlatform, decode, encode,
};

/// What a target runs against; built fresh from the corpus (and again after a panic).
#[derive(Debug)]
pub struct State {
    node: NodeEnclave<SimPlatform>,
    hub: Coordinator<SimPlatform>,
    node_platform: SimPlatform,
    hub_platform: SimPlatform,
    hub_items: Vec<teepay_types::HubItem>,
    node_items: Vec<teepay_types::NodeItem>,
    acks: Vec<teepay_types::NodeAck>,
    rt: tokio::runtime::Runtime,
    now: u64,
}

#[derive(Debug)]
pub struct Target {
    pub name: &'static str,
    pub seeds: fn(&Corpus) -> Vec<Vec<u8>>,
    pub setup: fn(&Corpus) -> State,
    /// Runs one input; true when it got past decoding to the code under test.
    pub exec: fn(&mut State, &[u8]) -> bool,
}

fn setup(c: &Corpus) -> State {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    State {
        node: c.node.clone(),
        hub: c.hub.clone(),
        node_platform: c.node_log.1.clone(),
        hub_platform: c.hub_log.1.clone(),
        hub_items: c.batches.iter().flat_map(|b| b.batch.items.clone()).collect(),
        node_items: c.acks.iter().flat_map(|a| a.ack.items.clone()).collect(),
        acks: c.acks.iter().map(|a| a.ack.clone()).collect(),
        rt,
        now: 10,
    }
}

pub const TARGETS: &[Target] = &[
    Target { name: "wire", seeds: wire_seeds, setup, exec: wire },
    Target { name: "node-request", seeds: request_seeds, setup, exec: node_request },
    Target { name: "node-batch-authentic", seeds: batch_seeds, setup, exec: node_batch_authentic },
    Target { name: "hub-ack", seeds: ack_seeds, setup, exec: hub_ack },
    Target { name: "hub-ack-authentic", seeds: ack_seeds, setup, exec: hub_ack_authentic },
    Target { name: "sealed-node", seeds: node_log_seeds, setup, exec: sealed_node },
    Target { name: "sealed-hub", seeds: hub_log_seeds, setup, exec: sealed_hub },
    Target { name: "contract-events", seeds: event_seeds, setup, exec: contract_event },
    Target { name: "grpc-arguments", seeds: argument_seeds, setup, exec: grpc_arguments },
    Target { name: "link-handshake", seeds: handshake_seeds, setup, exec: link_handshake },
];

// ------------------------------------------------------------------ wire messages

fn wire_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = c.acks.iter().map(|a| NodeMessage::Ack(a.clone()).to_bytes()).collect();
    seeds.extend(c.batches.iter().map(|b| HubMessage::Batch(b.clone()).to_bytes()));
    seeds.extend(c.refunds.iter().map(|r| NodeMessage::Refund(r.clone()).to_bytes()));
    seeds.push(NodeMessage::Register(c.quote.clone()).to_bytes());
    seeds.push(HubMessage::Welcome(c.quote.clone()).to_bytes());
    seeds
}

fn wire(_: &mut State, bytes: &[u8]) -> bool {
    let node = NodeMessage::from_bytes(bytes).ok();
    if let Some(m) = &node {
        assert_eq!(NodeMessage::from_bytes(&m.to_bytes()).ok().as_ref(), Some(m), "decoding is canonical");
    }
    let hub = HubMessage::from_bytes(bytes).ok();
    node.is_some() || hub.is_some()
}

// ------------------------------------------------------------------ the node enclave

fn request_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    c.requests.iter().map(encode).collect()
}

/// Any request a host could pass its enclave, decoded from bytes.
fn node_request(s: &mut State, bytes: &[u8]) -> bool {
    let Ok(request) = decode::<Request>(bytes) else { return false };
    s.now += 1;
    let _ = s.node.handle(s.now, request);
    true
}

fn batch_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    c.batches.iter().map(encode).collect()
}

/// A compromised hub: arbitrary items, addressed to this node and MAC'd with the real
/// session key, so the item handlers (not just authentication) see them.
fn node_batch_authentic(s: &mut State, bytes: &[u8]) -> bool {
    // Bytes that decode are a batch; others are a recipe: items of real batches, edited.
    let items = match decode::<SignedHubBatch>(bytes) {
        Ok(signed) => signed.batch.items,
        Err(_) => recipe_items(&s.hub_items, bytes),
    };
    let state = s.node.inspect();
    let (Some(hub), Some(session)) = (state.hub, state.hub_session) else { return false };
    let batch = teepay_types::HubBatch { hub, node: s.node.address(), items };
    s.now += 1;
    let _ = s.node.handle(s.now, Request::HubBatch(batch.mac(&session)));
    true
}

/// 1–4 items drawn from real batches, each edited: other instance ids, amounts, deadlines,
/// sequence numbers, phases and outcomes, dropped orders — what a compromised hub could send.
fn recipe_items(pool: &[teepay_types::HubItem], bytes: &[u8]) -> Vec<teepay_types::HubItem> {
    use teepay_types::{HubItem, Outcome};
    let mut rng = crate::Rng::new(crate::fnv_bytes(bytes));
    let any_id = |rng: &mut crate::Rng| pool[rng.below(pool.len())].instance();
    (0..1 + rng.below(4))
        .map(|_| {
            let mut item = pool[rng.below(pool.len())].clone();
            match &mut item {
                HubItem::Prepare(spec) => match rng.below(6) {
                    0 => spec.deadline = rng.next_u64() % 1_000,
                    1 => spec.seq = rng.next_u64() % 8,
                    2 => spec.orders.clear(),
                    3 => {
                        if let Some(hop) = spec.legs.first_mut().and_then(|l| l.hops.first_mut()) {
                            hop.amount = teepay_types::Amount(u128::from(rng.next_u64() % 1_000));
                        }
                    }
                    4 => spec.peer_acks = !spec.peer_acks,
                    _ => spec.kind = teepay_types::InstanceKind::CrossChain,
                },
                HubItem::Commit { instance, .. }
                | HubItem::Confirm { instance, .. }
                | HubItem::Refund { instance, .. } => {
                    if rng.below(2) == 0 {
                        *instance = any_id(&mut rng);
                    }
                }
                HubItem::Resolve { instance, outcome } => {
                    *instance = any_id(&mut rng);
                    *outcome = if rng.below(2) == 0 { Outcome::Apply } else { Outcome::Revert };
                }
            }
            if rng.below(4) == 0 {
                let id = any_id(&mut rng);
                item = match rng.below(4) {
                    0 => HubItem::Confirm { instance: id, certificate: None },
                    1 => HubItem::Refund {
                        instance: id,
                        certificate: Some(teepay_types::Signature([rng.next_u64() as u8; 65])),
                    },
                    2 => HubItem::Resolve { instance: id, outcome: Outcome::Apply },
                    _ => HubItem::Commit {
                        instance: id,
                        prepared_acks: [rng.next_u64() as u8; 32],
                        peer_acks: vec![],
                    },
                };
            }
            item
        })
        .collect()
}

/// A real node answer, edited: another instance, another outcome, NACK instead of PREPARED.
fn edit_node_item(rng: &mut crate::Rng, pool: &[teepay_types::NodeItem]) -> teepay_types::NodeItem {
    use teepay_types::{NackReason, NodeItem, Outcome};
    let mut item = pool[rng.below(pool.len())].clone();
    let other = pool[rng.below(pool.len())].instance();
    match rng.below(4) {
        0 => item = NodeItem::Nack { instance: other, reason: NackReason::InsufficientFunds },
        1 => item = NodeItem::Committed { instance: other },
        2 => {
            let outcome = if rng.below(2) == 0 { Outcome::Apply } else { Outcome::Revert };
            item = NodeItem::Finished { instance: other, outcome };
        }
        _ => {}
    }
    item
}

// ------------------------------------------------------------------ the hub enclave

fn ack_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    c.acks.iter().map(encode).collect()
}

fn hub_ack(s: &mut State, bytes: &[u8]) -> bool {
    let Ok(ack) = decode::<SignedNodeAck>(bytes) else { return false };
    s.now += 1;
    let _ = s.hub.on_ack(s.now, &ack);
    true
}

/// A compromised node: arbitrary answers under its real session key.
fn hub_ack_authentic(s: &mut State, bytes: &[u8]) -> bool {
    let mut ack = match decode::<SignedNodeAck>(bytes) {
        Ok(signed) => signed.ack,
        Err(_) => {
            let mut rng = crate::Rng::new(crate::fnv_bytes(bytes));
            let mut ack = s.acks[rng.below(s.acks.len())].clone();
            ack.items = (0..1 + rng.below(4)).map(|_| edit_node_item(&mut rng, &s.node_items)).collect();
            ack
        }
    };
    ack.hub = s.hub.address();
    let Some(session) = s.hub.inspect().sessions.get(&ack.node).copied() else { return false };
    s.now += 1;
    let _ = s.hub.on_ack(s.now, &ack.mac(&session));
    if s.now.is_multiple_of(64) {
        let _ = s.hub.flush();
    }
    true
}

// ------------------------------------------------------------------ sealed state

/// The log as bytes: each blob with a 4-byte length, as `SealedLogFile` stores it.
fn log_bytes(log: &SealedLog) -> Vec<u8> {
    let mut out = Vec::new();
    for blob in log.blobs() {
        out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        out.extend_from_slice(blob);
    }
    out
}

fn log_of(bytes: &[u8]) -> Option<SealedLog> {
    let mut log = SealedLog::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
        let blob = rest.get(4..4 + len)?;
        log.record(blob.to_vec()).ok()?;
        rest = &rest[4 + len..];
    }
    Some(log)
}

fn node_log_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    vec![log_bytes(&c.node_log.0)]
}

fn hub_log_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    vec![log_bytes(&c.hub_log.0)]
}

/// A host restoring its enclave from a tampered, truncated or spliced sealed log.
fn sealed_node(s: &mut State, bytes: &[u8]) -> bool {
    let Some(log) = log_of(bytes) else { return false };
    let _ = NodeEnclave::restore(s.node_platform.clone(), &log);
    true
}

fn sealed_hub(s: &mut State, bytes: &[u8]) -> bool {
    let Some(log) = log_of(bytes) else { return false };
    let _ = Coordinator::restore(s.hub_platform.clone(), &log);
    true
}

// ------------------------------------------------------------------ chain events

fn evm(a: Address) -> EvmAddress {
    EvmAddress::from(a.0)
}

/// A log as bytes: the topic count, the topics, then the data.
fn log_entry_bytes(topics: &[B256], data: &[u8]) -> Vec<u8> {
    let mut out = vec![topics.len() as u8];
    for t in topics {
        out.extend_from_slice(t.as_slice());
    }
    out.extend_from_slice(data);
    out
}

fn event_seeds(_: &Corpus) -> Vec<Vec<u8>> {
    let (a, b) = (Address([1; 20]), Address([2; 20]));
    let id = B256::from([3; 32]);
    let logs = [
        PC::ChannelOpened {
            channelId: id,
            a: evm(a),
            b: evm(b),
            deposit: U256::from(100),
            nonce: 7,
            token: evm(Address([0; 20])),
        }
        .encode_log_data(),
        PC::ChannelFunded {
            channelId: id,
            party: evm(b),
            amount: U256::from(5),
            depositA: U256::from(100),
            depositB: U256::from(5),
        }
        .encode_log_data(),
        PC::InstanceResolved { instanceId: B256::from([4; 32]), applied: true, channelId: id }
            .encode_log_data(),
        PC::ChannelClosed {
            channelId: id,
            version: 3,
            payoutA: U256::from(1),
            payoutB: U256::from(2),
            ejected: true,
        }
        .encode_log_data(),
        PC::EnclaveRegistered { enclave: evm(a), measurement: B256::from([5; 32]) }.encode_log_data(),
    ];
    logs.iter().map(|l| log_entry_bytes(l.topics(), &l.data)).collect()
}

/// A log as a chain's RPC would return it, decoded into a contract event.
fn contract_event(_: &mut State, bytes: &[u8]) -> bool {
    let Some((&n, rest)) = bytes.split_first() else { return false };
    let n = usize::from(n % 5);
    if rest.len() < 32 * n {
        return false;
    }
    let topics = rest[..32 * n].chunks(32).map(|t| t.try_into().expect("32 bytes")).collect();
    let log = LogEntry {
        address: Address([9; 20]),
        topics,
        data: rest[32 * n..].to_vec(),
        block_number: 1,
        tx_hash: [0; 32],
        log_index: 0,
    };
    matches!(teepay_chain::contract::ContractEvent::decode(&log), Ok(Some(_)))
}

// ------------------------------------------------------------------ client arguments

fn argument_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    let intent = c
        .batches
        .iter()
        .flat_map(|b| &b.batch.items)
        .find_map(|i| match i {
            teepay_types::HubItem::Prepare(spec) => spec.orders.first().cloned(),
            _ => None,
        })
        .map(|o| teepay_types::ids::to_hex(&encode(&o)))
        .unwrap_or_default();
    [
        "1000000000000000000",
        "0",
        "-5",
        "340282366920938463463374607431768211456",
        "0x0102030405060708090a0b0c0d0e0f1011121314",
        "0x0303030303030303030303030303030303030303030303030303030303030303",
        "  12 ",
        "0x",
        intent.as_str(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Every argument parser the gRPC servers apply to client strings.
fn grpc_arguments(_: &mut State, bytes: &[u8]) -> bool {
    let s = String::from_utf8_lossy(bytes);
    let parsed = [
        teepay_api::parse_amount("amount", &s).is_ok(),
        teepay_api::parse_fee("max_fee", &s).is_ok(),
        teepay_api::parse_address("payee", &s).is_ok(),
        teepay_api::parse_channel("channel", &s).is_ok(),
        teepay_api::parse_instance("instance", &s).is_ok(),
        teepay_api::parse_intent("intent", &s).is_ok(),
    ];
    parsed.iter().any(|ok| *ok)
}

// ------------------------------------------------------------------ link handshake

fn handshake_seeds(c: &Corpus) -> Vec<Vec<u8>> {
    // A valid ephemeral key frame, then a signature frame with a quote.
    let key = [2u8; 33];
    let mut seed = (33u32.to_be_bytes()).to_vec();
    seed.extend_from_slice(&key);
    let quote = encode(&c.quote);
    seed.extend_from_slice(&((65 + quote.len()) as u32).to_be_bytes());
    seed.extend_from_slice(&[1u8; 65]);
    seed.extend_from_slice(&quote);
    vec![seed]
}

/// What an unauthenticated stranger sends the hub's listener: the responder's handshake
/// over an in-memory pipe fed the bytes, then closed.
fn link_handshake(s: &mut State, bytes: &[u8]) -> bool {
    use tokio::io::AsyncWriteExt;
    let hub = &s.hub;
    s.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let _ = client.write_all(bytes).await;
        drop(client);
        let (r, w) = tokio::io::split(server);
        let sign = |t| std::future::ready(Ok(hub.sign_link(&t, LinkRole::Responder)));
        teepay_link::handshake(r, w, LinkRole::Responder, [8; 32], &[], sign, |_, _| true).await.is_ok()
    })
}
