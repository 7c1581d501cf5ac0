//! `teepay devnet`: serves an [`EmbeddedChain`] over Ethereum JSON-RPC (HTTP POST, single and
//! batch requests), so separate hub and node processes — and tools like `cast` — can share
//! one chain without installing anything.
//!
//! Served methods: `eth_chainId`, `net_version`, `web3_clientVersion`, `eth_blockNumber`,
//! `eth_getBalance`, `eth_getTransactionCount`, `eth_getCode`, `eth_gasPrice`,
//! `eth_maxPriorityFeePerGas`, `eth_feeHistory`, `eth_estimateGas`, `eth_call`,
//! `eth_sendRawTransaction`, `eth_getTransactionReceipt`, `eth_getTransactionByHash`,
//! `eth_getLogs`, `eth_getBlockByNumber`, `eth_syncing`, `eth_accounts`. State queries
//! answer at the latest block only; asking for an older block's state is an error rather
//! than a silently wrong answer.

use crate::chain::{CallRequest, Chain, ChainError, LogEntry, Receipt};
use crate::embedded::{BASE_FEE, EmbeddedChain, PRIORITY_FEE};
use alloy::consensus::Transaction as _;
use alloy_primitives::{Bloom, Log as EvmLog};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::net::SocketAddr;
use teepay_types::ids::{from_hex, to_hex};
use teepay_types::{Address, Amount};

/// A JSON-RPC error object.
#[derive(Debug)]
struct RpcErr {
    code: i64,
    message: String,
    data: Option<String>,
}

impl RpcErr {
    fn params(msg: impl Into<String>) -> Self {
        RpcErr { code: -32602, message: msg.into(), data: None }
    }
}

impl From<ChainError> for RpcErr {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Reverted { data } => RpcErr {
                code: 3,
                message: format!("execution reverted: {}", crate::contract::revert_reason(&data)),
                data: Some(format!("0x{}", to_hex(&data))),
            },
            ChainError::Malformed(m) => RpcErr::params(m),
            other => RpcErr { code: -32000, message: other.to_string(), data: None },
        }
    }
}

fn qty(v: impl Into<u128>) -> Value {
    Value::String(format!("{:#x}", v.into()))
}

fn hex(bytes: &[u8]) -> Value {
    Value::String(format!("0x{}", to_hex(bytes)))
}

fn param(params: &Value, i: usize) -> Option<&Value> {
    params.as_array().and_then(|a| a.get(i)).filter(|v| !v.is_null())
}

fn parse_address(v: Option<&Value>) -> Result<Address, RpcErr> {
    v.and_then(Value::as_str)
        .and_then(Address::from_hex)
        .ok_or_else(|| RpcErr::params("expected a 20-byte hex address"))
}

fn parse_hash(v: Option<&Value>) -> Result<[u8; 32], RpcErr> {
    v.and_then(Value::as_str)
        .and_then(from_hex::<32>)
        .ok_or_else(|| RpcErr::params("expected a 32-byte hex hash"))
}

fn parse_bytes(v: &Value) -> Result<Vec<u8>, RpcErr> {
    let s = v.as_str().ok_or_else(|| RpcErr::params("expected hex data"))?;
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() % 2 != 0 {
        return Err(RpcErr::params("hex data has an odd length"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| RpcErr::params("invalid hex data")))
        .collect()
}

fn parse_qty(v: &Value) -> Result<u128, RpcErr> {
    let s = v.as_str().ok_or_else(|| RpcErr::params("expected a hex quantity"))?;
    let digits = s.strip_prefix("0x").ok_or_else(|| RpcErr::params("hex quantity must start with 0x"))?;
    u128::from_str_radix(digits, 16).map_err(|_| RpcErr::params(format!("invalid quantity {s:?}")))
}

/// A block tag or number; `None` (absent) means latest.
fn parse_block(v: Option<&Value>, head: u64) -> Result<u64, RpcErr> {
    match v.and_then(Value::as_str) {
        None | Some("latest" | "pending" | "safe" | "finalized") => Ok(head),
        Some("earliest") => Ok(0),
        Some(_) => {
            let n = parse_qty(v.expect("matched Some"))?;
            u64::try_from(n).map_err(|_| RpcErr::params("block number out of range"))
        }
    }
}

fn require_latest(v: Option<&Value>, head: u64) -> Result<(), RpcErr> {
    if parse_block(v, head)? < head {
        return Err(RpcErr { code: -32000, message: "historical state is not available".into(), data: None });
    }
    Ok(())
}

fn parse_call(v: Option<&Value>) -> Result<CallRequest, RpcErr> {
    let obj = v.and_then(Value::as_object).ok_or_else(|| RpcErr::params("expected a call object"))?;
    let from = obj.get("from").filter(|v| !v.is_null()).map(|v| parse_address(Some(v))).transpose()?;
    let to = obj.get("to").filter(|v| !v.is_null()).map(|v| parse_address(Some(v))).transpose()?;
    let data = match obj.get("input").or_else(|| obj.get("data")).filter(|v| !v.is_null()) {
        Some(v) => parse_bytes(v)?,
        None => Vec::new(),
    };
    let value = obj.get("value").filter(|v| !v.is_null()).map(parse_qty).transpose()?.unwrap_or(0);
    Ok(CallRequest { from, to, value: Amount(value), data })
}

fn log_json(chain: &EmbeddedChain, l: &LogEntry) -> Value {
    let (block_hash, tx_index) = match (chain.block(l.block_number), chain.transaction(l.tx_hash)) {
        (Some(b), Some(t)) => (b.hash, t.index),
        _ => ([0; 32], 0),
    };
    json!({
        "address": hex(&l.address.0),
        "topics": l.topics.iter().map(|t| hex(t)).collect::<Vec<_>>(),
        "data": hex(&l.data),
        "blockNumber": qty(l.block_number),
        "blockHash": hex(&block_hash),
        "transactionHash": hex(&l.tx_hash),
        "transactionIndex": qty(tx_index),
        "logIndex": qty(l.log_index),
        "removed": false,
    })
}

fn bloom_of<'a>(logs: impl IntoIterator<Item = &'a LogEntry>) -> Bloom {
    let mut bloom = Bloom::default();
    for l in logs {
        let log = EvmLog::new_unchecked(
            l.address.0.into(),
            l.topics.iter().map(|t| (*t).into()).collect(),
            l.data.clone().into(),
        );
        bloom.accrue_log(&log);
    }
    bloom
}

fn receipt_json(chain: &EmbeddedChain, r: &Receipt) -> Value {
    let mined = chain.transaction(r.tx_hash);
    let block = chain.block(r.block_number);
    let (index, ty) = mined.map(|m| (m.index, m.envelope.tx_type() as u8)).unwrap_or_default();
    let cumulative: u64 = block
        .as_ref()
        .map(|b| {
            b.txs
                .iter()
                .take(index as usize + 1)
                .filter_map(|t| chain.receipt_now(*t))
                .map(|r| r.gas_used)
                .sum()
        })
        .unwrap_or(r.gas_used);
    json!({
        "type": qty(ty),
        "status": qty(u8::from(r.success)),
        "cumulativeGasUsed": qty(cumulative),
        "gasUsed": qty(r.gas_used),
        "effectiveGasPrice": qty(r.effective_gas_price),
        "logs": r.logs.iter().map(|l| log_json(chain, l)).collect::<Vec<_>>(),
        "logsBloom": hex(bloom_of(&r.logs).as_slice()),
        "transactionHash": hex(&r.tx_hash),
        "transactionIndex": qty(index),
        "blockHash": hex(&block.map(|b| b.hash).unwrap_or_default()),
        "blockNumber": qty(r.block_number),
        "from": hex(&r.from.0),
        "to": r.to.map(|a| hex(&a.0)).unwrap_or(Value::Null),
        "contractAddress": r.contract_address.map(|a| hex(&a.0)).unwrap_or(Value::Null),
    })
}

fn tx_json(chain: &EmbeddedChain, hash: [u8; 32]) -> Value {
    let Some(m) = chain.transaction(hash) else { return Value::Null };
    let block = chain.block(m.block).map(|b| b.hash).unwrap_or_default();
    let e = &m.envelope;
    let sig = e.signature();
    let mut v = json!({
        "hash": hex(&hash),
        "type": qty(e.tx_type() as u8),
        "blockHash": hex(&block),
        "blockNumber": qty(m.block),
        "transactionIndex": qty(m.index),
        "from": hex(&m.from.0),
        "to": e.to().map(|a| hex(a.as_slice())).unwrap_or(Value::Null),
        "nonce": qty(e.nonce()),
        "gas": qty(e.gas_limit()),
        "value": Value::String(format!("{:#x}", e.value())),
        "input": hex(e.input()),
        "r": Value::String(format!("{:#x}", sig.r())),
        "s": Value::String(format!("{:#x}", sig.s())),
        "yParity": qty(u8::from(sig.v())),
        "v": qty(u8::from(sig.v())),
        "chainId": e.chain_id().map(qty).unwrap_or(Value::Null),
    });
    let obj = v.as_object_mut().expect("object");
    if e.is_legacy() {
        obj.insert("gasPrice".into(), qty(e.max_fee_per_gas()));
    } else {
        obj.insert("maxFeePerGas".into(), qty(e.max_fee_per_gas()));
        obj.insert("maxPriorityFeePerGas".into(), qty(e.max_priority_fee_per_gas().unwrap_or_default()));
        obj.insert("gasPrice".into(), qty(e.effective_gas_price(Some(BASE_FEE))));
        obj.insert("accessList".into(), json!([]));
    }
    v
}

fn block_json(chain: &EmbeddedChain, number: u64, full: bool) -> Value {
    let Some(b) = chain.block(number) else { return Value::Null };
    let receipts: Vec<Receipt> = b.txs.iter().filter_map(|t| chain.receipt_now(*t)).collect();
    let zero = hex(&[0; 32]);
    json!({
        "number": qty(b.number),
        "hash": hex(&b.hash),
        "parentHash": hex(&b.parent_hash),
        "timestamp": qty(b.timestamp),
        "gasUsed": qty(b.gas_used),
        "gasLimit": qty(crate::embedded::BLOCK_GAS_LIMIT),
        "baseFeePerGas": qty(BASE_FEE),
        "miner": hex(&[0; 20]),
        "difficulty": "0x0",
        "totalDifficulty": "0x0",
        "extraData": "0x",
        "nonce": "0x0000000000000000",
        "mixHash": zero,
        "sha3Uncles": hex(&teepay_types::keccak256(&[0xc0])),
        "stateRoot": zero,
        "transactionsRoot": zero,
        "receiptsRoot": zero,
        "logsBloom": hex(bloom_of(receipts.iter().flat_map(|r| &r.logs)).as_slice()),
        "size": "0x0",
        "uncles": [],
        "withdrawals": [],
        "withdrawalsRoot": zero,
        "transactions": if full {
            b.txs.iter().map(|t| tx_json(chain, *t)).collect::<Vec<_>>()
        } else {
            b.txs.iter().map(|t| hex(t)).collect::<Vec<_>>()
        },
    })
}

fn topic_matches(filter: Option<&Value>, topic: Option<&[u8; 32]>) -> Result<bool, RpcErr> {
    match filter {
        None | Some(Value::Null) => Ok(true),
        Some(Value::String(_)) => Ok(topic == Some(&parse_hash(filter)?)),
        Some(Value::Array(options)) => {
            for o in options {
                if topic == Some(&parse_hash(Some(o))?) {
                    return Ok(true);
                }
            }
            Ok(options.is_empty())
        }
        Some(_) => Err(RpcErr::params("invalid topic filter")),
    }
}

async fn get_logs(chain: &EmbeddedChain, filter: Option<&Value>) -> Result<Value, RpcErr> {
    let f = filter.and_then(Value::as_object).ok_or_else(|| RpcErr::params("expected a filter object"))?;
    let head = chain.latest_block().number;
    let (from, to) = if let Some(h) = f.get("blockHash").filter(|v| !v.is_null()) {
        let hash = parse_hash(Some(h))?;
        let n = (0..=head).rev().find(|n| chain.block(*n).is_some_and(|b| b.hash == hash));
        let n = n.ok_or_else(|| RpcErr::params("unknown block hash"))?;
        (n, n)
    } else {
        (parse_block(f.get("fromBlock"), head)?, parse_block(f.get("toBlock"), head)?)
    };
    let addresses: Vec<Address> = match f.get("address") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(|v| parse_address(Some(v))).collect::<Result<_, _>>()?,
        Some(v) => vec![parse_address(Some(v))?],
    };
    let topics = f.get("topics").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for l in chain.all_logs(from, to) {
        if !addresses.is_empty() && !addresses.contains(&l.address) {
            continue;
        }
        let mut ok = true;
        for (i, t) in topics.iter().enumerate() {
            ok &= topic_matches(Some(t), l.topics.get(i))?;
        }
        if ok {
            out.push(log_json(chain, &l));
        }
    }
    Ok(Value::Array(out))
}

async fn dispatch(chain: &EmbeddedChain, method: &str, p: &Value) -> Result<Value, RpcErr> {
    let head = chain.latest_block().number;
    Ok(match method {
        "eth_chainId" => qty(chain.chain_id().await?.0),
        "net_version" => Value::String(chain.chain_id().await?.0.to_string()),
        "web3_clientVersion" => Value::String(format!("teepay-devnet/{}", env!("CARGO_PKG_VERSION"))),
        "eth_syncing" => Value::Bool(false),
        "eth_accounts" => json!([]),
        "eth_blockNumber" => qty(head),
        "eth_getBalance" => {
            require_latest(param(p, 1), head)?;
            qty(chain.balance(parse_address(param(p, 0))?).await?.0)
        }
        "eth_getTransactionCount" => {
            require_latest(param(p, 1), head)?;
            qty(chain.nonce(parse_address(param(p, 0))?).await?)
        }
        "eth_getCode" => {
            require_latest(param(p, 1), head)?;
            hex(&chain.code(parse_address(param(p, 0))?))
        }
        "eth_gasPrice" => qty(chain.gas_price().await?),
        "eth_maxPriorityFeePerGas" => qty(PRIORITY_FEE),
        "eth_feeHistory" => {
            let count = param(p, 0)
                .map(|v| v.as_u64().map(u128::from).map_or_else(|| parse_qty(v), Ok))
                .transpose()?
                .unwrap_or(1)
                .clamp(1, 1024) as u64;
            let newest = parse_block(param(p, 1), head)?.min(head);
            let oldest = newest.saturating_sub(count - 1);
            let n = (newest - oldest + 1) as usize;
            let percentiles = param(p, 2).and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            json!({
                "oldestBlock": qty(oldest),
                "baseFeePerGas": vec![qty(BASE_FEE); n + 1],
                "gasUsedRatio": (oldest..=newest)
                    .map(|b| chain.block(b).map(|b| b.gas_used as f64 / crate::embedded::BLOCK_GAS_LIMIT as f64).unwrap_or(0.0))
                    .collect::<Vec<_>>(),
                "reward": vec![vec![qty(PRIORITY_FEE); percentiles]; n],
            })
        }
        "eth_estimateGas" => qty(chain.estimate_gas(&parse_call(param(p, 0))?).await?),
        "eth_call" => {
            require_latest(param(p, 1), head)?;
            hex(&chain.call(&parse_call(param(p, 0))?).await?)
        }
        "eth_sendRawTransaction" => {
            let raw = parse_bytes(param(p, 0).ok_or_else(|| RpcErr::params("missing raw transaction"))?)?;
            hex(&chain.send_raw_transaction(&raw).await?)
        }
        "eth_getTransactionReceipt" => match chain.receipt(parse_hash(param(p, 0))?).await? {
            Some(r) => receipt_json(chain, &r),
            None => Value::Null,
        },
        "eth_getTransactionByHash" => tx_json(chain, parse_hash(param(p, 0))?),
        "eth_getLogs" => get_logs(chain, param(p, 0)).await?,
        "eth_getBlockByNumber" => {
            let n = parse_block(param(p, 0), head)?;
            block_json(chain, n, param(p, 1).and_then(Value::as_bool).unwrap_or(false))
        }
        _ => {
            return Err(RpcErr {
                code: -32601,
                message: format!("method {method} is not served"),
                data: None,
            });
        }
    })
}

async fn handle_one(chain: &EmbeddedChain, req: &Value) -> Value {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "invalid request"}});
    };
    let params = req.get("params").cloned().unwrap_or(Value::Array(Vec::new()));
    match dispatch(chain, method, &params).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => {
            let mut error = json!({"code": e.code, "message": e.message});
            if let Some(data) = e.data {
                error["data"] = Value::String(data);
            }
            json!({"jsonrpc": "2.0", "id": id, "error": error})
        }
    }
}

async fn rpc(State(chain): State<EmbeddedChain>, body: Bytes) -> impl IntoResponse {
    let response = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(batch)) => {
            let mut out = Vec::with_capacity(batch.len());
            for req in &batch {
                out.push(handle_one(&chain, req).await);
            }
            Value::Array(out)
        }
        Ok(req) => handle_one(&chain, &req).await,
        Err(e) => {
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}})
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], response.to_string())
}

/// A running devnet server.
#[derive(Debug)]
pub struct Devnet {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Devnet {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `addr` (port 0 picks a free port) and serves `chain` until the task is aborted.
pub async fn serve(chain: EmbeddedChain, addr: SocketAddr) -> std::io::Result<Devnet> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/", axum::routing::post(rpc)).with_state(chain);
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Devnet { addr, task })
}
