//! Shared fixtures of the chain suite: a host that funds and drives enclaves on a [`Chain`],
//! a fee ledger for conservation checks, and a gas table.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use teepay_chain::contract::{self, ContractEvent, Deployment, RECEIPT_TIMEOUT, revert_reason};
use teepay_chain::dev::dev_key;
use teepay_chain::{CallRequest, Chain, ChainError, Receipt};
use teepay_enclave::{NewChannel, NodeConfig, NodeEnclave, Request, Response};
use teepay_types::{Address, Amount, ChainId, GasParams, Hash32, SigningKey, SimPlatform};

pub const NODE_MEASUREMENT: Hash32 = [0x11; 32];
pub const HUB_MEASUREMENT: Hash32 = [0x22; 32];
pub const ETHER: u128 = 1_000_000_000_000_000_000;

pub fn authority() -> SigningKey {
    SigningKey::from_entropy([0xa7; 32]).expect("valid key")
}

/// Gas used per contract function, over every run of the suite.
pub type GasTable = BTreeMap<&'static str, Vec<u64>>;

/// Everything the suite did on one chain: who was touched and what they paid in fees, so
/// that "ether in = ether out" can be checked from balances alone.
pub struct Ledger<'a, C: Chain> {
    pub chain: &'a C,
    pub chain_id: ChainId,
    pub tracked: Vec<Address>,
    pub fees: u128,
    pub gas: GasTable,
    start: BTreeMap<Address, u128>,
}

impl<'a, C: Chain> Ledger<'a, C> {
    pub async fn new(chain: &'a C) -> Self {
        let chain_id = chain.chain_id().await.expect("chain id");
        Ledger { chain, chain_id, tracked: Vec::new(), fees: 0, gas: GasTable::new(), start: BTreeMap::new() }
    }

    /// Starts tracking `who` (records its balance now).
    pub async fn track(&mut self, who: Address) {
        if !self.start.contains_key(&who) {
            let b = self.chain.balance(who).await.expect("balance").0;
            self.start.insert(who, b);
            self.tracked.push(who);
        }
    }

    pub fn record(&mut self, function: &'static str, receipt: &Receipt) {
        self.fees += receipt.fee().0;
        if receipt.success {
            self.gas.entry(function).or_default().push(receipt.gas_used);
        }
    }

    /// Every wei that left a tracked account went to another tracked account or to fees.
    pub async fn assert_conserved(&self) {
        let mut before = 0u128;
        let mut after = 0u128;
        for who in &self.tracked {
            before += self.start[who];
            after += self.chain.balance(*who).await.expect("balance").0;
        }
        assert_eq!(before, after + self.fees, "ether in must equal ether out plus gas fees");
    }

    pub async fn balance(&self, who: Address) -> u128 {
        self.chain.balance(who).await.expect("balance").0
    }

    /// A host-key transaction (deployer, faucet, a registered raw key), recorded.
    pub async fn send(
        &mut self,
        function: &'static str,
        key: &SigningKey,
        to: Option<Address>,
        value: u128,
        input: Vec<u8>,
    ) -> Result<Receipt, String> {
        self.track(key.address()).await;
        let r = contract::send_from_key(self.chain, key, to, Amount(value), input).await;
        self.settle(function, r).await
    }

    async fn settle(
        &mut self,
        function: &'static str,
        r: Result<Receipt, ChainError>,
    ) -> Result<Receipt, String> {
        match r {
            Ok(receipt) => {
                self.record(function, &receipt);
                if receipt.success { Ok(receipt) } else { Err("mined but reverted".into()) }
            }
            Err(ChainError::Reverted { data }) => Err(revert_reason(&data)),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn deploy(&mut self) -> Deployment {
        self.deploy_with_window(contract::DEFAULT_CHALLENGE_WINDOW).await
    }

    /// A deployment whose REVERT claims on swap locks wait `window` seconds for a challenge.
    pub async fn deploy_with_window(&mut self, window: u64) -> Deployment {
        let deployer = dev_key(0);
        self.track(deployer.address()).await;
        let d = contract::deploy_with_window(
            self.chain,
            &deployer,
            authority().address(),
            &[NODE_MEASUREMENT],
            window,
        )
        .await
        .expect("deploy PaymentChannels");
        self.fees += d.fee.0;
        self.gas.entry("deploy").or_default().push(d.gas_used);
        self.track(d.address).await;
        d
    }

    /// Sends an enclave-built transaction: the host supplies nonce and fees, the enclave
    /// decides what the transaction does and signs it.
    pub async fn enclave_tx(
        &mut self,
        function: &'static str,
        node: &mut Node,
        gas_limit: Option<u64>,
        estimate: Option<CallRequest>,
        build: impl FnOnce(GasParams) -> Request,
    ) -> Result<Receipt, String> {
        self.track(node.address()).await;
        let from = node.address();
        let mut gas =
            contract::gas_params(self.chain, from, estimate.as_ref()).await.map_err(|e| match e {
                ChainError::Reverted { data } => revert_reason(&data),
                e => e.to_string(),
            })?;
        if let Some(limit) = gas_limit {
            gas.gas_limit = limit;
        }
        let tx = match node.request(build(gas)).map_err(|e| format!("enclave refused: {e}"))? {
            Response::Transaction(tx) => tx,
            other => panic!("expected a transaction, got {other:?}"),
        };
        let sent = self.chain.send_raw_transaction(&tx.raw).await;
        let r = match sent {
            Ok(hash) => {
                assert_eq!(hash, tx.hash, "the chain hashes the transaction as the enclave did");
                self.chain.wait_for_receipt(hash, RECEIPT_TIMEOUT).await
            }
            Err(e) => Err(e),
        };
        self.settle(function, r).await
    }
}

/// A node as its host sees it: the enclave plus the sealed blob the host persists.
pub struct Node {
    pub enclave: NodeEnclave<SimPlatform>,
    pub blob: Vec<u8>,
    /// The host's clock (ms) handed to the enclave with every request.
    pub now: u64,
}

impl Node {
    pub fn new(seed: u8, chain: ChainId, contract: Address) -> Self {
        Self::on_chains(seed, vec![(chain, contract)])
    }

    /// A node with a `PaymentChannels` deployment on each of several chains.
    pub fn on_chains(seed: u8, contracts: Vec<(ChainId, Address)>) -> Self {
        let config = NodeConfig {
            measurement: NODE_MEASUREMENT,
            attestation_authority: authority().address(),
            allowed_hub_measurements: vec![HUB_MEASUREMENT],
            contracts,
            max_tx_fee: Amount(ETHER / 10),
            require_peer_acks: false,
        };
        let (enclave, blob) =
            NodeEnclave::create(SimPlatform::new([seed; 32]), config, [seed.wrapping_add(100); 32])
                .expect("valid entropy");
        Node { enclave, blob, now: 0 }
    }

    pub fn address(&self) -> Address {
        self.enclave.address()
    }

    pub fn request(&mut self, request: Request) -> Result<Response, teepay_enclave::EnclaveError> {
        let out = self.enclave.handle(self.now, request)?;
        if let Some(blob) = out.sealed {
            self.blob = blob;
        }
        Ok(out.response)
    }

    pub fn quote(&mut self, chain: ChainId) -> teepay_types::Quote {
        match self.request(Request::Report { chain }).expect("report") {
            Response::Report(r) => r.attest(&authority()),
            other => panic!("expected a report, got {other:?}"),
        }
    }

    /// Feeds the enclave this receipt's channel events as the node's watcher does:
    /// `ChannelOpened` of its own channels, `ChannelFunded` totals.
    pub fn observe(&mut self, (chain, contract): (ChainId, Address), events: &[ContractEvent]) {
        let me = self.address();
        for event in events {
            match *event {
                ContractEvent::ChannelOpened { channel, a, b, deposit, nonce, token }
                    if a == me || b == me =>
                {
                    let new = NewChannel {
                        chain,
                        contract,
                        id: channel,
                        peer: if a == me { b } else { a },
                        local_is_a: a == me,
                        nonce,
                        deposit,
                        fee: teepay_enclave::FeePolicy { base: Amount(0), ppm: 0 },
                        token,
                    };
                    self.request(Request::AddChannel(new)).expect("add channel");
                }
                ContractEvent::ChannelFunded { channel, deposit_a, deposit_b, .. } => {
                    self.request(Request::Deposit { channel, deposit_a, deposit_b }).expect("deposit");
                }
                _ => {}
            }
        }
    }
}

/// A local anvil started for the suite, stopped (by PID) when dropped — also on panic.
pub struct Anvil {
    child: Child,
    pub url: String,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `TEEPAY_ANVIL_URL` when set (CI starts anvil itself), otherwise an anvil spawned from the
/// pinned npm package (`npm ci` at the repository root installs it).
pub fn anvil() -> (Option<Anvil>, String) {
    if let Ok(url) = std::env::var("TEEPAY_ANVIL_URL") {
        return (None, url);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = root.join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        bin.exists(),
        "anvil is not installed at {}: run `npm ci` in the repository root, or set TEEPAY_ANVIL_URL",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", "0", "--chain-id", "31337"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn anvil");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut anvil = Anvil { child, url: String::new() };
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("anvil output");
        if let Some(addr) = line.strip_prefix("Listening on ") {
            anvil.url = format!("http://{}", addr.trim());
            break;
        }
    }
    // Keep draining anvil's per-transaction log so a full pipe never blocks it.
    std::thread::spawn(move || lines.for_each(drop));
    assert!(!anvil.url.is_empty(), "anvil exited before listening");
    let url = anvil.url.clone();
    (Some(anvil), url)
}
