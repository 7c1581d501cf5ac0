//! The `Chain` trait: what the hub and the nodes need from an EVM chain, and nothing more.
//! Implemented by the embedded revm chain and by the JSON-RPC client; callers are generic.

use std::future::Future;
use std::time::Duration;
use teepay_types::{Address, Amount, ChainId, Hash32};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The node refused the transaction before mining it (bad signature, nonce, balance, fee…).
    #[error("transaction rejected: {0}")]
    Rejected(String),
    /// A read-only call (or gas estimate) reverted; `data` is the revert payload.
    #[error("execution reverted (0x{})", teepay_types::ids::to_hex(data))]
    Reverted { data: Vec<u8> },
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("no receipt for transaction 0x{} within {waited:?}", teepay_types::ids::to_hex(tx))]
    ReceiptTimeout { tx: Hash32, waited: Duration },
    #[error("value does not fit 128 bits: {0}")]
    Overflow(String),
    #[error("chain transport: {0}")]
    Transport(String),
    #[error("chain storage: {0}")]
    Storage(String),
}

/// A log emitted by a mined transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub address: Address,
    pub topics: Vec<Hash32>,
    pub data: Vec<u8>,
    pub block_number: u64,
    pub tx_hash: Hash32,
    pub log_index: u64,
}

/// The receipt of a mined transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub tx_hash: Hash32,
    pub block_number: u64,
    pub from: Address,
    pub to: Option<Address>,
    /// False when the transaction was mined but reverted (its gas is still paid).
    pub success: bool,
    pub gas_used: u64,
    pub effective_gas_price: u128,
    pub contract_address: Option<Address>,
    pub logs: Vec<LogEntry>,
}

impl Receipt {
    /// What the sender paid for gas.
    pub fn fee(&self) -> Amount {
        Amount(u128::from(self.gas_used) * self.effective_gas_price)
    }
}

/// A read-only call (or a gas estimate) at the latest block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallRequest {
    pub from: Option<Address>,
    pub to: Option<Address>,
    pub value: Amount,
    pub data: Vec<u8>,
}

/// An EVM chain as the hub and nodes see it. Futures are `Send` so services can spawn them.
pub trait Chain: Send + Sync {
    fn chain_id(&self) -> impl Future<Output = Result<ChainId, ChainError>> + Send;
    fn block_number(&self) -> impl Future<Output = Result<u64, ChainError>> + Send;
    /// The hash of block `number`, `None` above the head: event sync compares it with the
    /// hash it saw before to detect a reorganization.
    fn block_hash(&self, number: u64) -> impl Future<Output = Result<Option<Hash32>, ChainError>> + Send;
    fn balance(&self, who: Address) -> impl Future<Output = Result<Amount, ChainError>> + Send;
    /// The next nonce `who` must use (mined transactions only).
    fn nonce(&self, who: Address) -> impl Future<Output = Result<u64, ChainError>> + Send;
    /// A max fee per gas that gets a transaction mined now.
    fn gas_price(&self) -> impl Future<Output = Result<u128, ChainError>> + Send;
    /// Submits a signed raw transaction (EIP-2718 encoding); returns its hash.
    fn send_raw_transaction(&self, raw: &[u8]) -> impl Future<Output = Result<Hash32, ChainError>> + Send;
    fn receipt(&self, tx: Hash32) -> impl Future<Output = Result<Option<Receipt>, ChainError>> + Send;
    fn call(&self, req: &CallRequest) -> impl Future<Output = Result<Vec<u8>, ChainError>> + Send;
    fn estimate_gas(&self, req: &CallRequest) -> impl Future<Output = Result<u64, ChainError>> + Send;
    /// Logs emitted by `contract` in blocks `from..=to`, in chain order.
    fn logs(
        &self,
        contract: Address,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<LogEntry>, ChainError>> + Send;

    /// Polls for the receipt of `tx` until it is mined or `timeout` passes.
    fn wait_for_receipt(
        &self,
        tx: Hash32,
        timeout: Duration,
    ) -> impl Future<Output = Result<Receipt, ChainError>> + Send {
        async move {
            let start = std::time::Instant::now();
            let mut delay = Duration::from_millis(2);
            loop {
                if let Some(receipt) = self.receipt(tx).await? {
                    return Ok(receipt);
                }
                if start.elapsed() >= timeout {
                    return Err(ChainError::ReceiptTimeout { tx, waited: start.elapsed() });
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
        }
    }
}
