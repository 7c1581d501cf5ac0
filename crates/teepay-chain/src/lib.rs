//! teepay-chain: the on-chain layer (DESIGN §2–§3).
//!
//! - [`Chain`]: what the hub and the nodes need from an EVM chain;
//! - [`EmbeddedChain`]: an in-process revm chain (the default when no chain is configured);
//! - [`RpcChain`]: an alloy JSON-RPC client for anvil, geth or any EVM node;
//! - [`devnet`]: serves an embedded chain over Ethereum JSON-RPC so processes can share it;
//! - [`contract`]: deploying `PaymentChannels` and decoding its events and errors.
//!
//! The contract bindings are generated from the committed compiler artifact
//! (`contracts/out/PaymentChannels.json`) in `teepay-types`, so the enclave can encode the
//! calls it signs without depending on this crate.

pub mod any;
pub mod chain;
pub mod contract;
pub mod dev;
pub mod devnet;
pub mod embedded;
pub mod finality;
pub mod rpc;

pub use any::AnyChain;
pub use chain::{CallRequest, Chain, ChainError, LogEntry, Receipt};
pub use embedded::EmbeddedChain;
pub use rpc::RpcChain;
pub use teepay_types::bindings::PaymentChannels;
