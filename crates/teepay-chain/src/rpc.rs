//! The JSON-RPC backend: an alloy provider over HTTP, for anvil, geth, `teepay devnet` or any
//! EVM node.

use crate::chain::{CallRequest, Chain, ChainError, LogEntry, Receipt};
use alloy::network::TransactionBuilder;
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::transports::{RpcError, TransportError};
use alloy_primitives::{Address as EvmAddress, B256, Bytes, U256};
use teepay_types::{Address, Amount, ChainId, Hash32};

/// A chain reached over Ethereum JSON-RPC.
#[derive(Debug, Clone)]
pub struct RpcChain {
    provider: RootProvider,
    url: String,
}

fn evm(a: Address) -> EvmAddress {
    EvmAddress::from(a.0)
}

fn ours(a: EvmAddress) -> Address {
    Address(a.0.0)
}

fn transport(e: TransportError) -> ChainError {
    match e {
        RpcError::ErrorResp(payload) => match payload.as_revert_data() {
            Some(data) => ChainError::Reverted { data: data.to_vec() },
            None => ChainError::Rejected(format!("{} (code {})", payload.message, payload.code)),
        },
        other => ChainError::Transport(other.to_string()),
    }
}

fn request(req: &CallRequest) -> TransactionRequest {
    let mut tx = TransactionRequest::default().with_input(Bytes::from(req.data.clone()));
    if let Some(from) = req.from {
        tx = tx.with_from(evm(from));
    }
    match req.to {
        Some(to) => tx = tx.with_to(evm(to)),
        None => tx.set_create(),
    }
    if req.value.0 > 0 {
        tx = tx.with_value(U256::from(req.value.0));
    }
    tx
}

impl RpcChain {
    /// Connects lazily: the first request reaches the node.
    pub fn connect(url: &str) -> Result<Self, ChainError> {
        let parsed = url.parse().map_err(|e| ChainError::Malformed(format!("chain RPC URL {url:?}: {e}")))?;
        // reqwest builds its client with rustls, which needs a process-wide crypto provider
        // (https:// RPC URLs); a second install (another connection) is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(RpcChain { provider: RootProvider::new_http(parsed), url: url.to_string() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Chain for RpcChain {
    async fn chain_id(&self) -> Result<ChainId, ChainError> {
        self.provider.get_chain_id().await.map(ChainId).map_err(transport)
    }

    async fn block_number(&self) -> Result<u64, ChainError> {
        self.provider.get_block_number().await.map_err(transport)
    }

    async fn block_hash(&self, number: u64) -> Result<Option<Hash32>, ChainError> {
        let block = self.provider.get_block_by_number(number.into()).await.map_err(transport)?;
        Ok(block.map(|b| b.header.hash.0))
    }

    async fn balance(&self, who: Address) -> Result<Amount, ChainError> {
        let v = self.provider.get_balance(evm(who)).await.map_err(transport)?;
        u128::try_from(v).map(Amount).map_err(|_| ChainError::Overflow(v.to_string()))
    }

    async fn nonce(&self, who: Address) -> Result<u64, ChainError> {
        self.provider.get_transaction_count(evm(who)).await.map_err(transport)
    }

    async fn gas_price(&self) -> Result<u128, ChainError> {
        self.provider.get_gas_price().await.map_err(transport)
    }

    async fn send_raw_transaction(&self, raw: &[u8]) -> Result<Hash32, ChainError> {
        let pending = self.provider.send_raw_transaction(raw).await.map_err(transport)?;
        Ok(pending.tx_hash().0)
    }

    async fn receipt(&self, tx: Hash32) -> Result<Option<Receipt>, ChainError> {
        let Some(r) = self.provider.get_transaction_receipt(B256::from(tx)).await.map_err(transport)? else {
            return Ok(None);
        };
        let block_number =
            r.block_number.ok_or_else(|| ChainError::Transport("receipt without a block number".into()))?;
        let logs = r
            .inner
            .logs()
            .iter()
            .map(|l| LogEntry {
                address: ours(l.address()),
                topics: l.topics().iter().map(|t| t.0).collect(),
                data: l.data().data.to_vec(),
                block_number,
                tx_hash: tx,
                log_index: l.log_index.unwrap_or_default(),
            })
            .collect();
        Ok(Some(Receipt {
            tx_hash: tx,
            block_number,
            from: ours(r.from),
            to: r.to.map(ours),
            success: r.status(),
            gas_used: r.gas_used,
            effective_gas_price: r.effective_gas_price,
            contract_address: r.contract_address.map(ours),
            logs,
        }))
    }

    async fn call(&self, req: &CallRequest) -> Result<Vec<u8>, ChainError> {
        self.provider.call(request(req)).await.map(|b| b.to_vec()).map_err(transport)
    }

    async fn estimate_gas(&self, req: &CallRequest) -> Result<u64, ChainError> {
        self.provider.estimate_gas(request(req)).await.map_err(transport)
    }

    async fn logs(&self, contract: Address, from: u64, to: u64) -> Result<Vec<LogEntry>, ChainError> {
        let filter = Filter::new().address(evm(contract)).from_block(from).to_block(to);
        let logs = self.provider.get_logs(&filter).await.map_err(transport)?;
        logs.into_iter()
            .map(|l| {
                Ok(LogEntry {
                    address: ours(l.address()),
                    topics: l.topics().iter().map(|t| t.0).collect(),
                    data: l.data().data.to_vec(),
                    block_number: l
                        .block_number
                        .ok_or_else(|| ChainError::Transport("log without a block number".into()))?,
                    tx_hash: l.transaction_hash.map(|h| h.0).unwrap_or_default(),
                    log_index: l.log_index.unwrap_or_default(),
                })
            })
            .collect()
    }
}
