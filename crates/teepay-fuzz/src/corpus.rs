//! Seeds: real traffic of a three-hop payment and a four-party cross-chain swap in the
//! simulation (every batch, ack and refund request), the enclaves' sealed logs, and the
//! enclaves and their states to run mutated inputs against.

use teepay_coordinator::Coordinator;
use teepay_enclave::{NodeEnclave, Request};
use teepay_sim::world::Envelope;
use teepay_sim::{Action, World};
use teepay_types::{
    Amount, ChainId, GasParams, SealedLog, SignedHubBatch, SignedNodeAck, SignedRefundRequest, SimPlatform,
};

/// Everything the targets draw on.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub batches: Vec<SignedHubBatch>,
    pub acks: Vec<SignedNodeAck>,
    pub refunds: Vec<SignedRefundRequest>,
    pub requests: Vec<Request>,
    /// A node's and the hub's sealed logs, each with the platform that sealed them.
    pub node_log: (SealedLog, SimPlatform),
    pub hub_log: (SealedLog, SimPlatform),
    /// A node enclave (an intermediary, mid-payment) and the hub enclave, to run inputs on.
    pub node: NodeEnclave<SimPlatform>,
    pub hub: Coordinator<SimPlatform>,
    pub quote: teepay_types::Quote,
}

fn capture(mut w: World, corpus: &mut Corpus) -> World {
    for _ in 0..400 {
        let Some(envelope) = w.network.first().cloned() else { break };
        match envelope {
            Envelope::ToNode { batch, .. } => corpus.batches.push(batch),
            Envelope::ToHub(ack) => corpus.acks.push(ack),
            Envelope::RefundRequest(r) => corpus.refunds.push(r),
            _ => {}
        }
        if w.apply(&Action::Deliver(0)).is_err() {
            break;
        }
    }
    w
}

impl Corpus {
    pub fn build() -> Corpus {
        let w = teepay_sim::scenarios::three_hop();
        let mut corpus = Corpus {
            batches: Vec::new(),
            acks: Vec::new(),
            refunds: Vec::new(),
            requests: Vec::new(),
            node_log: (w.nodes[1].sealed.clone(), w.nodes[1].enclave.platform().clone()),
            hub_log: (w.hub.sealed.clone(), w.hub.coordinator.platform().clone()),
            node: w.nodes[1].enclave.clone(),
            hub: w.hub.coordinator.clone(),
            quote: w.hub.coordinator.report(ChainId(0)).attest(&w.authority),
        };
        // Mid-payment: the intermediary holds locks, the hub an undecided instance.
        let mut mid = w.clone();
        for _ in 0..3 {
            let _ = mid.apply(&Action::Deliver(0));
        }
        corpus.node = mid.nodes[1].enclave.clone();
        corpus.hub = mid.hub.coordinator.clone();
        let done = capture(w, &mut corpus);
        corpus.node_log = (done.nodes[1].sealed.clone(), done.nodes[1].enclave.platform().clone());
        corpus.hub_log = (done.hub.sealed.clone(), done.hub.coordinator.platform().clone());
        capture(teepay_sim::scenarios::swap_2chain_4party(), &mut corpus);
        let channel = *corpus.node.inspect().channels.keys().next().expect("the intermediary has channels");
        let gas = GasParams { nonce: 0, gas_limit: 200_000, max_fee_per_gas: 1, max_priority_fee_per_gas: 1 };
        let payee = corpus.node.inspect().channels[&channel].peer;
        corpus.requests = corpus.batches.iter().take(8).map(|b| Request::HubBatch(b.clone())).collect();
        corpus.requests.extend([
            Request::CreatePayment {
                chain: ChainId(1),
                asset: teepay_types::Asset::Native,
                payee,
                amount: Amount(5),
                max_fee: Amount(1),
                expires_at: 1_000,
            },
            Request::Deposit { channel, deposit_a: Amount(500), deposit_b: Amount(500) },
            Request::SignClose { channel },
            Request::BuildClose { channel, gas },
            Request::ClosingState { channel },
            Request::ChannelSettled { channel },
            Request::Report { chain: ChainId(1) },
            Request::AttestHub { quote: corpus.quote.clone() },
        ]);
        // The instance the intermediary holds a lock of, ended by the chain's word.
        if let Some(lock) = corpus.node.inspect().channels[&channel].locks.first() {
            let instance = lock.instance;
            corpus.requests.extend([
                Request::OutcomeOnChain { instance, outcome: teepay_types::Outcome::Apply },
                Request::OutcomeOnChain { instance, outcome: teepay_types::Outcome::Revert },
            ]);
        }
        corpus
    }
}
