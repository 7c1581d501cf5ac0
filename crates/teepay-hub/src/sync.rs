//! Contract sync (DESIGN §8): follows one chain's `PaymentChannels` events into the channel
//! DB from a persistent cursor.
//!
//! Only blocks at least `confirmations` deep are applied, so a reorganization within that
//! depth never reaches the DB. A deeper one is still caught: every applied range records its
//! last block's hash, and each round first checks that hash against the chain; on mismatch
//! it walks back through the recorded hashes to the fork point, rolls the DB back to it
//! (derived tables are rebuilt from the remaining logs) and re-syncs from there.

use teepay_chain::contract::ContractEvent;
use teepay_chain::{Chain, ChainError};
use teepay_store::{Store, StoreError};
use teepay_types::{Address, ChainId};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    #[error("channel DB: {0}")]
    Store(#[from] StoreError),
    #[error("configured for chain {configured:?} but the node serves chain {actual:?}")]
    WrongChain { configured: ChainId, actual: ChainId },
    #[error("the chain has no block {0} although its head is past it")]
    MissingBlock(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    pub chain: ChainId,
    pub contract: Address,
    /// The contract's deployment block: where a fresh DB starts.
    pub from_block: u64,
    /// Blocks a block must be buried under before it is applied (0 = apply the head).
    pub confirmations: u64,
    /// Most blocks fetched per `logs` query.
    pub max_range: u64,
}

impl SyncConfig {
    pub fn new(chain: ChainId, contract: Address, from_block: u64) -> Self {
        SyncConfig { chain, contract, from_block, confirmations: 2, max_range: 2_000 }
    }
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncReport {
    pub head: u64,
    /// The first block not yet applied after this round.
    pub next_block: u64,
    pub events: usize,
    /// Set when a reorganization was found: the DB was rolled back to this block.
    pub rolled_back_to: Option<u64>,
    /// The contract events applied in this round, in chain order (for the live network map).
    pub applied: Vec<ContractEvent>,
}

/// One sync round: reorg check, then apply up to `max_range` confirmed blocks.
pub async fn sync_once<C: Chain>(
    chain: &C,
    store: &Store,
    cfg: &SyncConfig,
) -> Result<SyncReport, SyncError> {
    let actual = chain.chain_id().await?;
    if actual != cfg.chain {
        return Err(SyncError::WrongChain { configured: cfg.chain, actual });
    }
    let mut cursor = store.init_cursor(cfg.chain, cfg.contract, cfg.from_block).await?;
    let mut report = SyncReport::default();

    // Is the last block we applied still on the chain?
    let checkpoints = store.checkpoints(cfg.chain, cursor.next_block).await?;
    if let Some(&(number, hash)) = checkpoints.first()
        && chain.block_hash(number).await? != Some(hash)
    {
        let mut fork = cfg.from_block;
        for &(n, h) in &checkpoints[1..] {
            if chain.block_hash(n).await? == Some(h) {
                fork = n + 1;
                break;
            }
        }
        store.rollback(cfg.chain, fork).await?;
        cursor.next_block = fork;
        report.rolled_back_to = Some(fork);
    }

    report.head = chain.block_number().await?;
    report.next_block = cursor.next_block;
    let safe = report.head.saturating_sub(cfg.confirmations);
    if cursor.next_block > safe {
        return Ok(report);
    }
    let to = safe.min(cursor.next_block.saturating_add(cfg.max_range.max(1) - 1));
    // The hash of `to` before and after fetching: equal means the logs come from that chain.
    let before = chain.block_hash(to).await?.ok_or(SyncError::MissingBlock(to))?;
    let logs = chain.logs(cfg.contract, cursor.next_block, to).await?;
    let after = chain.block_hash(to).await?.ok_or(SyncError::MissingBlock(to))?;
    if before != after {
        return Ok(report); // a reorg raced the fetch; the next round starts over
    }
    report.events = store.apply_logs(cfg.chain, &logs, to + 1, (to, after)).await?;
    for log in &logs {
        report.applied.extend(ContractEvent::decode(log)?);
    }
    report.next_block = to + 1;
    Ok(report)
}

/// Syncs until caught up with the confirmed head (several rounds for a long backlog).
pub async fn sync_to_head<C: Chain>(
    chain: &C,
    store: &Store,
    cfg: &SyncConfig,
) -> Result<SyncReport, SyncError> {
    let mut total = SyncReport::default();
    loop {
        let r = sync_once(chain, store, cfg).await?;
        total.events += r.events;
        total.head = r.head;
        total.next_block = r.next_block;
        total.rolled_back_to = total.rolled_back_to.or(r.rolled_back_to);
        total.applied.extend(r.applied);
        if r.next_block + cfg.confirmations > r.head {
            return Ok(total);
        }
    }
}
