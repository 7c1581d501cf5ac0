//! [`AnyChain`]: one type for "the embedded chain or a JSON-RPC node", chosen at run time by
//! the services and the CLI (the [`Chain`] trait itself is static-dispatch only).

use crate::chain::{CallRequest, Chain, ChainError, LogEntry, Receipt};
use crate::{EmbeddedChain, RpcChain};
use teepay_types::{Address, Amount, ChainId, Hash32};

#[derive(Debug, Clone)]
pub enum AnyChain {
    Embedded(EmbeddedChain),
    Rpc(RpcChain),
}

impl AnyChain {
    /// `embedded` for an in-process chain with id `chain`, otherwise an `http://` RPC URL.
    pub fn from_spec(spec: &str, chain: ChainId) -> Result<Self, ChainError> {
        if spec == "embedded" {
            Ok(AnyChain::Embedded(EmbeddedChain::new(chain)))
        } else {
            Ok(AnyChain::Rpc(RpcChain::connect(spec)?))
        }
    }

    /// Where the chain lives, for messages.
    pub fn describe(&self) -> String {
        match self {
            AnyChain::Embedded(_) => "embedded chain".into(),
            AnyChain::Rpc(r) => r.url().to_string(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            AnyChain::Embedded($c) => $e.await,
            AnyChain::Rpc($c) => $e.await,
        }
    };
}

impl Chain for AnyChain {
    async fn chain_id(&self) -> Result<ChainId, ChainError> {
        delegate!(self, c => c.chain_id())
    }
    async fn block_number(&self) -> Result<u64, ChainError> {
        delegate!(self, c => c.block_number())
    }
    async fn block_hash(&self, number: u64) -> Result<Option<Hash32>, ChainError> {
        delegate!(self, c => c.block_hash(number))
    }
    async fn balance(&self, who: Address) -> Result<Amount, ChainError> {
        delegate!(self, c => c.balance(who))
    }
    async fn nonce(&self, who: Address) -> Result<u64, ChainError> {
        delegate!(self, c => c.nonce(who))
    }
    async fn gas_price(&self) -> Result<u128, ChainError> {
        delegate!(self, c => c.gas_price())
    }
    async fn send_raw_transaction(&self, raw: &[u8]) -> Result<Hash32, ChainError> {
        delegate!(self, c => c.send_raw_transaction(raw))
    }
    async fn receipt(&self, tx: Hash32) -> Result<Option<Receipt>, ChainError> {
        delegate!(self, c => c.receipt(tx))
    }
    async fn call(&self, req: &CallRequest) -> Result<Vec<u8>, ChainError> {
        delegate!(self, c => c.call(req))
    }
    async fn estimate_gas(&self, req: &CallRequest) -> Result<u64, ChainError> {
        delegate!(self, c => c.estimate_gas(req))
    }
    async fn logs(&self, contract: Address, from: u64, to: u64) -> Result<Vec<LogEntry>, ChainError> {
        delegate!(self, c => c.logs(contract, from, to))
    }
}
