//! The crafted-hub fixture shared by the negative tests: round messages are signed by an
//! attested hub key that is not the coordinator, i.e. what a buggy or compromised hub could
//! send; the node enclave must defend on its own.

use teepay_enclave::{BatchResult, EnclaveError, FeePolicy, NodeState, Request, Response};
use teepay_sim::World;
use teepay_sim::scenarios::CHAIN_1;
use teepay_types::{
    Amount, ChainId, HubBatch, HubItem, InstanceKind, InstanceSpec, Leg, NodeItem, Report, SignedOrder,
    SigningKey,
};

pub const HUB_MEASUREMENT: [u8; 32] = teepay_sim::world::HUB_MEASUREMENT;

pub struct Fixture {
    pub w: World,
    pub hub: SigningKey,
    pub nodes: [usize; 4],
}

/// payer → hop1 → hop2 → payee, every node attesting a crafted hub key.
pub fn fixture() -> Fixture {
    fixture_in(World::new(42))
}

/// The same, with nodes that require peer acks.
#[allow(dead_code)] // each test binary uses its own subset
pub fn fixture_requiring_peer_acks() -> Fixture {
    let mut w = World::new(42);
    w.require_peer_acks = true;
    fixture_in(w)
}

fn fixture_in(mut w: World) -> Fixture {
    let nodes = ["payer", "hop1", "hop2", "payee"].map(|n| w.add_node(n));
    let [p, i1, i2, r] = nodes;
    let fee = FeePolicy { base: Amount(1), ppm: 0 };
    w.open_channel(CHAIN_1, p, i1, 100, 100, FeePolicy::default(), fee);
    w.open_channel(CHAIN_1, i1, i2, 100, 100, fee, fee);
    w.open_channel(CHAIN_1, i2, r, 100, 100, fee, FeePolicy::default());
    let hub = SigningKey::from_entropy([0x77; 32]).unwrap();
    let quote = Report::of(&hub, HUB_MEASUREMENT, ChainId(0)).attest(&w.authority);
    for n in nodes {
        w.node_request(n, Request::AttestHub { quote: quote.clone() });
    }
    Fixture { w, hub, nodes }
}

#[allow(dead_code)] // each test binary uses its own subset
impl Fixture {
    pub fn order(&mut self, amount: u128, max_fee: u128) -> SignedOrder {
        let payee = self.w.address(self.nodes[3]);
        let req = Request::CreatePayment {
            chain: CHAIN_1,
            asset: teepay_types::Asset::Native,
            payee,
            amount: Amount(amount),
            max_fee: Amount(max_fee),
            expires_at: 1_000,
        };
        let Response::Order(o) = self.w.node_request(self.nodes[0], req) else { panic!() };
        o
    }

    /// The crafted hub's instance number `seq` (its id derived as the hub enclave does).
    pub fn spec(&self, seq: u8, leg: Leg, order: SignedOrder) -> InstanceSpec {
        InstanceSpec {
            id: teepay_types::instance_id(self.hub.address(), u64::from(seq)),
            seq: u64::from(seq),
            kind: InstanceKind::MultiHop,
            legs: vec![leg],
            orders: vec![order],
            deadline: 100,
            lock_deadline: 0,
            peer_acks: false,
        }
    }

    /// Gives `spec` the crafted hub's instance number `seq` (id included).
    pub fn respec(&self, spec: &mut InstanceSpec, seq: u64) {
        spec.seq = seq;
        spec.id = teepay_types::instance_id(self.hub.address(), seq);
    }

    pub fn leg(&self, amount: u128) -> Leg {
        self.w.route(CHAIN_1, &self.nodes, amount).unwrap()
    }

    /// Sends `items` to `node`, signed by the crafted hub; persists the blob like a host.
    pub fn send(&mut self, node: usize, items: Vec<HubItem>) -> Result<BatchResult, EnclaveError> {
        let batch = HubBatch { hub: self.hub.address(), node: self.w.address(node), items }.sign(&self.hub);
        let out = self.w.nodes[node].enclave.handle(self.w.now, Request::HubBatch(batch))?;
        if let Some(blob) = out.sealed {
            self.w.nodes[node].sealed.record(blob).unwrap();
        }
        let Response::Batch(r) = out.response else { panic!() };
        Ok(r)
    }

    pub fn state(&self, node: usize) -> NodeState {
        self.w.nodes[node].enclave.inspect().clone()
    }

    /// Asserts one item is refused with `expected`, and the node's state is unchanged.
    pub fn refused(&mut self, node: usize, item: HubItem, expected: EnclaveError) {
        // The first batch a node sees from the hub may change its state on its own (the hub's
        // use of the session): do that first, so what is compared is the item's effect.
        self.send(node, vec![]).expect("authentic empty batch");
        let before = self.state(node);
        let result = self.send(node, vec![item.clone()]).expect("batch itself is authentic");
        assert_eq!(result.results, vec![Err(expected.clone())], "item {item:?}");
        if let EnclaveError::Refused(reason) = expected {
            let ack = result.ack.expect("a refused PREPARE is NACKed");
            assert_eq!(ack.ack.items, vec![NodeItem::Nack { instance: item.instance(), reason }]);
        }
        assert_eq!(self.state(node), before, "refused item changed state");
    }

    pub fn accepted(&mut self, node: usize, item: HubItem) -> NodeItem {
        let result = self.send(node, vec![item]).expect("authentic batch");
        result.results.into_iter().next().unwrap().expect("item accepted")
    }

    /// Prepares, commits and (optionally) confirms a valid payment on every node.
    pub fn run_to(&mut self, id: u8, commit: bool, confirm: bool) -> InstanceSpec {
        let order = self.order(10, 5);
        let spec = self.spec(id, self.leg(10), order);
        for n in self.nodes {
            self.accepted(n, HubItem::Prepare(spec.clone()));
        }
        if commit {
            for n in self.nodes {
                self.accepted(
                    n,
                    HubItem::Commit { instance: spec.id, prepared_acks: [0; 32], peer_acks: vec![] },
                );
            }
        }
        if confirm {
            for n in self.nodes {
                self.accepted(n, HubItem::Confirm { instance: spec.id, certificate: None });
            }
        }
        spec
    }
}
