//! An in-process EVM chain on revm: the default chain wherever a user configured none.
//!
//! It behaves like a real node's public surface: it accepts only signed raw transactions
//! (legacy, EIP-2930, EIP-1559), recovers the sender from the signature, checks chain id,
//! nonce, fee and balance before mining (a refused transaction is never mined), mines one
//! block per submission (or one per batch), and keeps receipts and logs for range queries.
//! With a journal file every mined block is appended and fsynced before the submitter hears
//! back, and reopening the file replays it, so a restarted process sees the same chain.

use crate::chain::{CallRequest, Chain, ChainError, LogEntry, Receipt};
use crate::dev::DEV_ACCOUNT_BALANCE;
use alloy::consensus::{Transaction as _, TxEnvelope};
use alloy::eips::Decodable2718;
use alloy_primitives::{Address as EvmAddress, Bytes, TxKind, U256};
use borsh::{BorshDeserialize, BorshSerialize};
use revm::context::result::{ExecutionResult, Output};
use revm::context::{BlockEnv, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::database_interface::DatabaseRef;
use revm::handler::{MainnetContext, MainnetEvm};
use revm::state::AccountInfo;
use revm::{Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use teepay_types::{Address, Amount, ChainId, Hash32, keccak256};

/// Fixed base fee: the embedded chain has no fee market, but fees are charged like a real
/// chain so that accounting tests see them.
pub const BASE_FEE: u64 = 1_000_000_000;
/// Tip suggested on top of the base fee.
pub const PRIORITY_FEE: u128 = 1_000_000_000;
pub const BLOCK_GAS_LIMIT: u64 = 30_000_000;
/// Per-transaction gas cap of the current hard fork (EIP-7825); calls and estimates use it.
pub const TX_GAS_CAP: u64 = 1 << 24;

/// One mined block as the journal stores it: replaying these rebuilds the whole chain.
#[derive(Debug, Clone, BorshSerialize, BorshDeserialize)]
struct BlockRecord {
    timestamp: u64,
    txs: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, BorshSerialize, BorshDeserialize)]
struct JournalHeader {
    magic: [u8; 8],
    chain_id: u64,
    dev_accounts: Vec<[u8; 20]>,
}

const JOURNAL_MAGIC: [u8; 8] = *b"teepayc1";

/// A mined block's header data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub number: u64,
    pub hash: Hash32,
    pub parent_hash: Hash32,
    pub timestamp: u64,
    pub gas_used: u64,
    pub txs: Vec<Hash32>,
}

/// Where a mined transaction sits, and its decoded fields (for `eth_getTransactionByHash`).
#[derive(Debug, Clone)]
pub struct MinedTx {
    pub block: u64,
    pub index: u64,
    pub envelope: TxEnvelope,
    pub from: Address,
}

struct Inner {
    chain_id: u64,
    /// World state. The revm instance itself is rebuilt per block (it holds `Rc`s, so it
    /// cannot live in a `Send` handle); building one costs far less than executing a block.
    db: CacheDB<EmptyDB>,
    blocks: Vec<BlockInfo>,
    receipts: HashMap<Hash32, Receipt>,
    txs: HashMap<Hash32, MinedTx>,
    /// Every log in chain order (block numbers ascending), for range queries.
    logs: Vec<LogEntry>,
    journal: Option<File>,
    /// Set when a journal write failed after a block was applied in memory: memory and
    /// disk disagree, so the chain refuses further work rather than diverge silently.
    poisoned: bool,
}

/// A handle to the embedded chain; clones share one chain.
#[derive(Clone)]
pub struct EmbeddedChain {
    inner: Arc<Mutex<Inner>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for EmbeddedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChain").field("path", &self.path).finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn evm_address(a: Address) -> EvmAddress {
    EvmAddress::from(a.0)
}

fn to_amount(v: U256) -> Result<Amount, ChainError> {
    u128::try_from(v).map(Amount).map_err(|_| ChainError::Overflow(v.to_string()))
}

impl Inner {
    fn new(chain_id: u64, dev_accounts: &[Address]) -> Self {
        let mut db = CacheDB::new(EmptyDB::default());
        for a in dev_accounts {
            db.insert_account_info(
                evm_address(*a),
                AccountInfo::from_balance(U256::from(DEV_ACCOUNT_BALANCE)),
            );
        }
        let genesis = BlockInfo {
            number: 0,
            hash: keccak256(&chain_id.to_be_bytes()),
            parent_hash: [0; 32],
            timestamp: 0,
            gas_used: 0,
            txs: Vec::new(),
        };
        Inner {
            chain_id,
            db,
            blocks: vec![genesis],
            receipts: HashMap::new(),
            txs: HashMap::new(),
            logs: Vec::new(),
            journal: None,
            poisoned: false,
        }
    }

    fn head(&self) -> &BlockInfo {
        self.blocks.last().expect("genesis always exists")
    }

    fn account(&self, who: Address) -> AccountInfo {
        self.db.basic_ref(evm_address(who)).ok().flatten().unwrap_or_default()
    }
    /// Mines one block from `raws`: valid transactions are included, invalid ones are
    /// reported and left out. With a journal, the block is durable before this returns.
    fn mine(
        &mut self,
        raws: &[&[u8]],
        recovered: Vec<Recovered>,
        timestamp: Option<u64>,
    ) -> Vec<Result<Hash32, ChainError>> {
        if self.poisoned {
            let err = ChainError::Storage("journal write failed earlier; reopen the chain".into());
            return raws.iter().map(|_| Err(err.clone())).collect();
        }
        let parent = self.head().clone();
        let number = parent.number + 1;
        let timestamp = timestamp.unwrap_or_else(|| now_secs().max(parent.timestamp + 1));
        let mut evm = evm_for(&mut self.db, self.chain_id, number, timestamp);
        let mut results = Vec::with_capacity(raws.len());
        // (index into `raws`, receipt, mined): raw bytes are copied only into a journal record.
        let mut included: Vec<(usize, Receipt, MinedTx)> = Vec::new();
        let mut gas_used = 0u64;
        for (i, recovered) in recovered.into_iter().enumerate() {
            match execute(&mut evm, recovered, number, included.len() as u64, gas_used) {
                Ok((receipt, mined)) => {
                    gas_used += receipt.gas_used;
                    results.push(Ok(receipt.tx_hash));
                    included.push((i, receipt, mined));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        drop(evm);
        if included.is_empty() {
            return results;
        }
        if let Some(journal) = self.journal.as_mut() {
            let record =
                BlockRecord { timestamp, txs: included.iter().map(|(i, _, _)| raws[*i].to_vec()).collect() };
            if let Err(e) = append_record(journal, &record) {
                self.poisoned = true;
                let err = ChainError::Storage(format!("journal append failed: {e}"));
                return raws.iter().map(|_| Err(err.clone())).collect();
            }
        }
        let txs: Vec<Hash32> = included.iter().map(|(_, r, _)| r.tx_hash).collect();
        let mut hash_input = Vec::with_capacity(48 + 32 * txs.len());
        hash_input.extend_from_slice(&parent.hash);
        hash_input.extend_from_slice(&number.to_be_bytes());
        hash_input.extend_from_slice(&timestamp.to_be_bytes());
        txs.iter().for_each(|t| hash_input.extend_from_slice(t));
        let hash = keccak256(&hash_input);
        let mut log_index = 0;
        for (_, mut receipt, mined) in included {
            for log in &mut receipt.logs {
                log.log_index = log_index;
                log_index += 1;
                self.logs.push(log.clone());
            }
            self.txs.insert(receipt.tx_hash, mined);
            self.receipts.insert(receipt.tx_hash, receipt);
        }
        self.blocks.push(BlockInfo { number, hash, parent_hash: parent.hash, timestamp, gas_used, txs });
        results
    }

    fn simulate(&mut self, req: &CallRequest, gas_limit: u64) -> Result<ExecutionResult, ChainError> {
        let head = self.head().clone();
        let caller = req.from.unwrap_or(Address([0; 20]));
        let nonce = self.account(caller).nonce;
        let tx = TxEnv {
            caller: evm_address(caller),
            gas_limit,
            gas_price: 0,
            kind: match req.to {
                Some(to) => TxKind::Call(evm_address(to)),
                None => TxKind::Create,
            },
            value: U256::from(req.value.0),
            data: Bytes::from(req.data.clone()),
            nonce,
            chain_id: Some(self.chain_id),
            ..TxEnv::default()
        };
        // The pending block: stamped as the next mined block would be (wall clock), so a call
        // sees time pass even while no block is mined (a challenge window ends).
        let timestamp = now_secs().max(head.timestamp + 1);
        let mut evm = evm_for(&mut self.db, self.chain_id, head.number + 1, timestamp);
        // A call pays no gas: the base fee check is off for it (it never commits).
        evm.ctx.cfg.disable_base_fee = true;
        evm.transact(tx).map(|r| r.result).map_err(|e| ChainError::Rejected(e.to_string()))
    }
}

type BlockEvm<'a> = MainnetEvm<MainnetContext<&'a mut CacheDB<EmptyDB>>>;

fn evm_for(db: &mut CacheDB<EmptyDB>, chain_id: u64, number: u64, timestamp: u64) -> BlockEvm<'_> {
    Context::mainnet()
        .with_db(db)
        .modify_cfg_chained(|cfg| {
            cfg.chain_id = chain_id;
            cfg.tx_chain_id_check = true;
        })
        .with_block(BlockEnv {
            number: U256::from(number),
            timestamp: U256::from(timestamp),
            gas_limit: BLOCK_GAS_LIMIT,
            basefee: BASE_FEE,
            beneficiary: EvmAddress::ZERO,
            ..BlockEnv::default()
        })
        .build_mainnet()
}

/// Decodes, recovers the sender and executes `raw` in block `number`, committing its state
/// change if the transaction is valid (a revert is valid: it is mined, failed).
/// A submitted transaction decoded and with its sender recovered: the expensive, stateless
/// half of validation, done before taking the chain lock and in parallel for batches.
type Recovered = Result<(TxEnvelope, EvmAddress), ChainError>;

fn decode_and_recover(raw: &[u8]) -> Recovered {
    let envelope = TxEnvelope::decode_2718(&mut &raw[..])
        .map_err(|e| ChainError::Rejected(format!("undecodable transaction: {e}")))?;
    if envelope.is_eip4844() || envelope.is_eip7702() {
        return Err(ChainError::Rejected("blob and EIP-7702 transactions are not supported".into()));
    }
    // libsecp256k1 recovery, which also refuses high-s (malleable, EIP-2) signatures.
    let sig = teepay_types::Signature(envelope.signature().as_bytes());
    let from = teepay_types::recover_signer(&envelope.signature_hash().0, &sig)
        .map(|a| EvmAddress::from(a.0))
        .map_err(|e| ChainError::Rejected(format!("bad signature: {e}")))?;
    Ok((envelope, from))
}

/// Sender recovery dominates the cost of a transaction (~3× executing a transfer), so a
/// large batch spreads it over the machine's cores.
fn recover_all(raws: &[&[u8]]) -> Vec<Recovered> {
    const MIN_PER_WORKER: usize = 32;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores.min(raws.len() / MIN_PER_WORKER).max(1);
    if workers == 1 {
        return raws.iter().map(|r| decode_and_recover(r)).collect();
    }
    let chunk = raws.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = raws
            .chunks(chunk)
            .map(|c| scope.spawn(move || c.iter().map(|r| decode_and_recover(r)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("recovery worker does not panic")).collect()
    })
}

fn execute(
    evm: &mut BlockEvm<'_>,
    recovered: Recovered,
    number: u64,
    index: u64,
    gas_so_far: u64,
) -> Result<(Receipt, MinedTx), ChainError> {
    let (envelope, from) = recovered?;
    if gas_so_far.saturating_add(envelope.gas_limit()) > BLOCK_GAS_LIMIT {
        return Err(ChainError::Rejected("gas limit exceeds the block gas limit".into()));
    }
    let tx = TxEnv {
        tx_type: envelope.tx_type() as u8,
        caller: from,
        gas_limit: envelope.gas_limit(),
        gas_price: envelope.max_fee_per_gas(),
        gas_priority_fee: envelope.max_priority_fee_per_gas(),
        kind: envelope.kind(),
        value: envelope.value(),
        data: envelope.input().clone(),
        nonce: envelope.nonce(),
        chain_id: envelope.chain_id(),
        access_list: envelope.access_list().cloned().unwrap_or_default(),
        ..TxEnv::default()
    };
    let result = evm.transact_commit(tx).map_err(|e| ChainError::Rejected(e.to_string()))?;
    let tx_hash: Hash32 = envelope.tx_hash().0;
    let effective_gas_price = envelope.effective_gas_price(Some(BASE_FEE)).min(envelope.max_fee_per_gas());
    let contract_address = match &result {
        ExecutionResult::Success { output: Output::Create(_, Some(a)), .. } => Some(Address(a.0.0)),
        _ => None,
    };
    let logs = result
        .logs()
        .iter()
        .map(|l| LogEntry {
            address: Address(l.address.0.0),
            topics: l.data.topics().iter().map(|t| t.0).collect(),
            data: l.data.data.to_vec(),
            block_number: number,
            tx_hash,
            log_index: 0, // numbered when the block is sealed
        })
        .collect();
    let receipt = Receipt {
        tx_hash,
        block_number: number,
        from: Address(from.0.0),
        to: envelope.to().map(|a| Address(a.0.0)),
        success: result.is_success(),
        gas_used: result.tx_gas_used(),
        effective_gas_price,
        contract_address,
        logs,
    };
    let mined = MinedTx { block: number, index, envelope, from: Address(from.0.0) };
    Ok((receipt, mined))
}

fn append_record<T: BorshSerialize>(file: &mut File, value: &T) -> std::io::Result<()> {
    let body = borsh::to_vec(value)?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    file.write_all(&buf)?;
    file.sync_data()
}

/// Reads length-prefixed records; a torn record at the end (a crash mid-append) is cut off.
fn read_records(path: &Path) -> Result<(Vec<Vec<u8>>, u64), ChainError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| ChainError::Storage(format!("{}: {e}", path.display())))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if at + 4 + len > bytes.len() {
            break;
        }
        records.push(bytes[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    Ok((records, at as u64))
}

impl EmbeddedChain {
    /// A fresh in-memory chain with the dev accounts funded.
    pub fn new(chain: ChainId) -> Self {
        let inner = Inner::new(chain.0, &crate::dev::dev_addresses());
        EmbeddedChain { inner: Arc::new(Mutex::new(inner)), path: None }
    }

    /// A chain journaled to `path`: created if missing, otherwise replayed from it.
    pub fn open(path: &Path, chain: ChainId) -> Result<Self, ChainError> {
        let storage = |e: std::io::Error| ChainError::Storage(format!("{}: {e}", path.display()));
        let dev = crate::dev::dev_addresses();
        let mut inner = Inner::new(chain.0, &dev);
        if path.exists() {
            let (records, valid_len) = read_records(path)?;
            let mut records = records.into_iter();
            let header: JournalHeader = records
                .next()
                .and_then(|r| borsh::from_slice(&r).ok())
                .filter(|h: &JournalHeader| h.magic == JOURNAL_MAGIC)
                .ok_or_else(|| {
                    ChainError::Storage(format!("{}: not a teepay chain journal", path.display()))
                })?;
            if header.chain_id != chain.0 {
                return Err(ChainError::Storage(format!(
                    "{} holds chain {}, not {}",
                    path.display(),
                    header.chain_id,
                    chain.0
                )));
            }
            let blocks = records
                .enumerate()
                .map(|(i, record)| {
                    borsh::from_slice::<BlockRecord>(&record)
                        .map_err(|e| ChainError::Storage(format!("{}: block {}: {e}", path.display(), i + 1)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // Recover every sender of the journal at once (in parallel), then re-execute.
            let all: Vec<&[u8]> = blocks.iter().flat_map(|b| b.txs.iter().map(Vec::as_slice)).collect();
            let mut recovered = recover_all(&all).into_iter();
            for (i, block) in blocks.iter().enumerate() {
                let raws: Vec<&[u8]> = block.txs.iter().map(Vec::as_slice).collect();
                let pre: Vec<Recovered> = recovered.by_ref().take(raws.len()).collect();
                for r in inner.mine(&raws, pre, Some(block.timestamp)) {
                    r.map_err(|e| ChainError::Storage(format!("replaying block {}: {e}", i + 1)))?;
                }
            }
            let file = OpenOptions::new().write(true).open(path).map_err(storage)?;
            file.set_len(valid_len).map_err(storage)?; // drop a torn tail
            drop(file);
            inner.journal = Some(OpenOptions::new().append(true).open(path).map_err(storage)?);
        } else {
            let mut file = OpenOptions::new().create_new(true).append(true).open(path).map_err(storage)?;
            let header = JournalHeader {
                magic: JOURNAL_MAGIC,
                chain_id: chain.0,
                dev_accounts: dev.iter().map(|a| a.0).collect(),
            };
            append_record(&mut file, &header).map_err(storage)?;
            inner.journal = Some(file);
        }
        Ok(EmbeddedChain { inner: Arc::new(Mutex::new(inner)), path: Some(path.to_path_buf()) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-mined block visible (blocks are
        // pushed last), so a poisoned mutex is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mines all of `raws` into one block; one result per transaction, in order.
    pub fn submit_batch(&self, raws: &[&[u8]]) -> Vec<Result<Hash32, ChainError>> {
        let recovered = recover_all(raws);
        self.lock().mine(raws, recovered, None)
    }

    pub fn block(&self, number: u64) -> Option<BlockInfo> {
        self.lock().blocks.get(number as usize).cloned()
    }

    pub fn latest_block(&self) -> BlockInfo {
        self.lock().head().clone()
    }

    pub fn transaction(&self, hash: Hash32) -> Option<MinedTx> {
        self.lock().txs.get(&hash).cloned()
    }

    pub fn receipt_now(&self, tx: Hash32) -> Option<Receipt> {
        self.lock().receipts.get(&tx).cloned()
    }

    /// Every log of every contract in blocks `from..=to`.
    pub fn all_logs(&self, from: u64, to: u64) -> Vec<LogEntry> {
        let inner = self.lock();
        let start = inner.logs.partition_point(|l| l.block_number < from);
        inner.logs[start..].iter().take_while(|l| l.block_number <= to).cloned().collect()
    }

    pub fn code(&self, who: Address) -> Vec<u8> {
        let inner = self.lock();
        let info = inner.account(who);
        match info.code {
            Some(code) if !code.is_empty() => code.original_bytes().to_vec(),
            _ => inner
                .db
                .code_by_hash_ref(info.code_hash)
                .map(|c| c.original_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    pub fn chain_id_now(&self) -> ChainId {
        ChainId(self.lock().chain_id)
    }

    fn call_sync(&self, req: &CallRequest) -> Result<Vec<u8>, ChainError> {
        match self.lock().simulate(req, TX_GAS_CAP)? {
            ExecutionResult::Success { output, .. } => Ok(output.into_data().to_vec()),
            ExecutionResult::Revert { output, .. } => Err(ChainError::Reverted { data: output.to_vec() }),
            ExecutionResult::Halt { reason, .. } => Err(ChainError::Rejected(format!("halted: {reason:?}"))),
        }
    }

    /// The least gas limit with which `req` succeeds (binary search above the gas it used,
    /// since the 63/64 rule can make a call need more gas than it consumes).
    fn estimate_sync(&self, req: &CallRequest) -> Result<u64, ChainError> {
        let mut inner = self.lock();
        let used = match inner.simulate(req, TX_GAS_CAP)? {
            ExecutionResult::Success { gas, .. } => gas.tx_gas_used(),
            ExecutionResult::Revert { output, .. } => {
                return Err(ChainError::Reverted { data: output.to_vec() });
            }
            ExecutionResult::Halt { reason, .. } => {
                return Err(ChainError::Rejected(format!("halted: {reason:?}")));
            }
        };
        let (mut lo, mut hi) = (used, TX_GAS_CAP);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if inner.simulate(req, mid).map(|r| r.is_success()).unwrap_or(false) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }
}

impl Chain for EmbeddedChain {
    async fn chain_id(&self) -> Result<ChainId, ChainError> {
        Ok(self.chain_id_now())
    }

    async fn block_number(&self) -> Result<u64, ChainError> {
        Ok(self.lock().head().number)
    }

    async fn block_hash(&self, number: u64) -> Result<Option<Hash32>, ChainError> {
        Ok(self.block(number).map(|b| b.hash))
    }

    async fn balance(&self, who: Address) -> Result<Amount, ChainError> {
        to_amount(self.lock().account(who).balance)
    }

    async fn nonce(&self, who: Address) -> Result<u64, ChainError> {
        Ok(self.lock().account(who).nonce)
    }

    async fn gas_price(&self) -> Result<u128, ChainError> {
        Ok(u128::from(BASE_FEE) + PRIORITY_FEE)
    }

    async fn send_raw_transaction(&self, raw: &[u8]) -> Result<Hash32, ChainError> {
        let recovered = vec![decode_and_recover(raw)];
        self.lock().mine(&[raw], recovered, None).pop().expect("one result per transaction")
    }

    async fn receipt(&self, tx: Hash32) -> Result<Option<Receipt>, ChainError> {
        Ok(self.lock().receipts.get(&tx).cloned())
    }

    async fn call(&self, req: &CallRequest) -> Result<Vec<u8>, ChainError> {
        self.call_sync(req)
    }

    async fn estimate_gas(&self, req: &CallRequest) -> Result<u64, ChainError> {
        self.estimate_sync(req)
    }

    async fn logs(&self, contract: Address, from: u64, to: u64) -> Result<Vec<LogEntry>, ChainError> {
        Ok(self.all_logs(from, to).into_iter().filter(|l| l.address == contract).collect())
    }
}
