//! teepay-store: the hub's channel DB (DESIGN §8) — SQLite file by default, PostgreSQL when
//! given a `postgres://` URL; the same code and the same test suite run on both.
//!
//! The contract's raw logs are stored as they were synced (`chain_events`); the enclave,
//! channel and instance-outcome tables are derived from them, in the same transaction that
//! advances the sync cursor, so a crash never leaves a half-applied block. A reorganization
//! deletes the logs from the fork point and rebuilds the derived tables from what remains.

mod codec;
mod events;
mod instances;
mod migrate;

pub use instances::{InstanceRow, InstanceStatus};
pub use migrate::MIGRATIONS;

use codec::{addr, amount, hex, parse_addr, parse_amount, parse_hash};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use teepay_chain::LogEntry;
use teepay_types::{Address, Amount, ChainId, ChannelId, FeePolicy, Hash32, InstanceId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    Url(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("chain {chain:?} is synced from contract {stored}, not {requested}")]
    ContractMismatch { chain: ChainId, stored: Address, requested: Address },
    #[error("unknown channel {0:?}")]
    UnknownChannel(ChannelId),
    #[error("{1} is not a party of channel {0:?}")]
    NotAParty(ChannelId, Address),
    #[error("balances {0:?} + {1:?} do not add up to the channel's deposits")]
    BadBalances(Amount, Amount),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the sync of one chain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub contract: Address,
    /// The first block not yet applied.
    pub next_block: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStatus {
    Open,
    Closed,
}

/// A channel as the DB holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    pub chain: ChainId,
    pub id: ChannelId,
    pub a: Address,
    pub b: Address,
    /// Zero for an ether channel, else its ERC-20 token.
    pub token: Address,
    pub deposit_a: Amount,
    pub deposit_b: Amount,
    pub balance_a: Amount,
    pub balance_b: Amount,
    pub fee_a: FeePolicy,
    pub fee_b: FeePolicy,
    pub status: ChannelStatus,
    pub opened_block: u64,
    pub closed_block: Option<u64>,
    pub payouts: Option<(Amount, Amount)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveRow {
    pub chain: ChainId,
    pub address: Address,
    pub measurement: Hash32,
    pub block: u64,
}

/// The channel DB.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative number {v}")))
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    /// Accepts `sqlite://PATH`, `sqlite::memory:` and `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else if url == "sqlite::memory:" {
            (Backend::Sqlite, url.to_string())
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("sqlite://{path}{sep}mode=rwc"))
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        let options = AnyPoolOptions::new();
        let pool = match backend {
            // One writer at a time is SQLite's model; WAL + synchronous=FULL keeps every
            // committed transaction across a power loss.
            Backend::Sqlite => {
                let max = if url.contains(":memory:") { 1 } else { 4 };
                options
                    .max_connections(max)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode=WAL",
                                "PRAGMA synchronous=FULL",
                                "PRAGMA busy_timeout=5000",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => options.max_connections(8).connect(&url).await?,
        };
        let store = Store { pool, backend };
        migrate::run(&store.pool, backend).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ------------------------------------------------------------------ sync

    pub async fn cursor(&self, chain: ChainId) -> Result<Option<Cursor>> {
        let row = sqlx::query("SELECT contract, next_block FROM sync_cursors WHERE chain_id = $1")
            .bind(i64_of(chain.0))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Cursor {
                contract: parse_addr(&r.try_get::<String, _>(0)?)?,
                next_block: u64_of(r.try_get(1)?)?,
            })
        })
        .transpose()
    }

    /// The cursor of `chain`, created at `from_block` on first use. Syncing a chain from a
    /// different contract than before is refused rather than mixed into the same tables.
    pub async fn init_cursor(&self, chain: ChainId, contract: Address, from_block: u64) -> Result<Cursor> {
        if let Some(c) = self.cursor(chain).await? {
            if c.contract != contract {
                return Err(StoreError::ContractMismatch { chain, stored: c.contract, requested: contract });
            }
            return Ok(c);
        }
        sqlx::query("INSERT INTO sync_cursors (chain_id, contract, next_block) VALUES ($1, $2, $3)")
            .bind(i64_of(chain.0))
            .bind(addr(contract))
            .bind(i64_of(from_block))
            .execute(&self.pool)
            .await?;
        Ok(Cursor { contract, next_block: from_block })
    }

    /// The hash recorded for a synced block, if it is still remembered.
    pub async fn synced_hash(&self, chain: ChainId, number: u64) -> Result<Option<Hash32>> {
        let row = sqlx::query("SELECT block_hash FROM sync_blocks WHERE chain_id = $1 AND block_number = $2")
            .bind(i64_of(chain.0))
            .bind(i64_of(number))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| parse_hash(&r.try_get::<String, _>(0)?)).transpose()
    }

    /// Recorded block hashes below `below`, newest first (where to look for a fork point).
    pub async fn checkpoints(&self, chain: ChainId, below: u64) -> Result<Vec<(u64, Hash32)>> {
        let rows = sqlx::query(
            "SELECT block_number, block_hash FROM sync_blocks WHERE chain_id = $1 AND block_number < $2 \
             ORDER BY block_number DESC",
        )
        .bind(i64_of(chain.0))
        .bind(i64_of(below))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((u64_of(r.try_get(0)?)?, parse_hash(&r.try_get::<String, _>(1)?)?))).collect()
    }

    /// Applies the contract's logs of blocks `cursor.next_block..next_block`, records
    /// `checkpoint` (a block number and its hash) and moves the cursor — atomically.
    /// Returns how many of the logs were contract events.
    pub async fn apply_logs(
        &self,
        chain: ChainId,
        logs: &[LogEntry],
        next_block: u64,
        checkpoint: (u64, Hash32),
    ) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let mut applied = 0;
        for log in logs {
            let inserted = sqlx::query(
                "INSERT INTO chain_events (chain_id, block_number, log_index, tx_hash, topics, data) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(i64_of(chain.0))
            .bind(i64_of(log.block_number))
            .bind(i64_of(log.log_index))
            .bind(hex(&log.tx_hash))
            .bind(log.topics.iter().map(|t| hex(t)).collect::<Vec<_>>().join(","))
            .bind(log.data.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 && events::apply(&mut tx, chain, log).await? {
                applied += 1;
            }
        }
        sqlx::query("UPDATE sync_cursors SET next_block = $1 WHERE chain_id = $2")
            .bind(i64_of(next_block))
            .bind(i64_of(chain.0))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO sync_blocks (chain_id, block_number, block_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(i64_of(chain.0))
            .bind(i64_of(checkpoint.0))
            .bind(hex(&checkpoint.1))
            .execute(&mut *tx)
            .await?;
        // Remember a bounded window of hashes: enough to find any fork point we must handle.
        sqlx::query("DELETE FROM sync_blocks WHERE chain_id = $1 AND block_number < $2")
            .bind(i64_of(chain.0))
            .bind(i64_of(checkpoint.0.saturating_sub(4096)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Forgets everything synced from block `from` on (a reorganization replaced it) and
    /// rebuilds the derived tables from the remaining logs; the cursor moves back to `from`.
    pub async fn rollback(&self, chain: ChainId, from: u64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM chain_events WHERE chain_id = $1 AND block_number >= $2",
            "DELETE FROM sync_blocks WHERE chain_id = $1 AND block_number >= $2",
        ] {
            sqlx::query(sql).bind(i64_of(chain.0)).bind(i64_of(from)).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE sync_cursors SET next_block = $1 WHERE chain_id = $2 AND next_block > $1")
            .bind(i64_of(from))
            .bind(i64_of(chain.0))
            .execute(&mut *tx)
            .await?;
        events::rebuild(&mut tx, chain).await?;
        tx.commit().await?;
        Ok(())
    }

    // ------------------------------------------------------------------ queries

    pub async fn channels(&self, chain: Option<ChainId>) -> Result<Vec<ChannelRow>> {
        let rows = match chain {
            Some(c) => {
                sqlx::query("SELECT * FROM channels WHERE chain_id = $1 ORDER BY opened_block, channel_id")
                    .bind(i64_of(c.0))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM channels ORDER BY chain_id, opened_block, channel_id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(channel_row).collect()
    }

    /// Every channel of every chain, one row at a time: a million-channel hub builds its map
    /// without ever holding all rows at once.
    pub async fn for_each_channel(&self, mut f: impl FnMut(ChannelRow) -> Result<()>) -> Result<()> {
        use futures_util::TryStreamExt;
        let mut rows = sqlx::query("SELECT * FROM channels ORDER BY chain_id, opened_block, channel_id")
            .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            f(channel_row(&row)?)?;
        }
        Ok(())
    }

    pub async fn channel(&self, chain: ChainId, id: ChannelId) -> Result<Option<ChannelRow>> {
        let row = sqlx::query("SELECT * FROM channels WHERE chain_id = $1 AND channel_id = $2")
            .bind(i64_of(chain.0))
            .bind(hex(&id.0))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(channel_row).transpose()
    }

    pub async fn enclaves(&self, chain: ChainId) -> Result<Vec<EnclaveRow>> {
        let rows = sqlx::query("SELECT address, measurement, block_number FROM enclaves WHERE chain_id = $1 ORDER BY block_number, address")
            .bind(i64_of(chain.0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EnclaveRow {
                    chain,
                    address: parse_addr(&r.try_get::<String, _>(0)?)?,
                    measurement: parse_hash(&r.try_get::<String, _>(1)?)?,
                    block: u64_of(r.try_get(2)?)?,
                })
            })
            .collect()
    }

    /// The on-chain outcome of an instance (`Some(true)` = applied), once an eject fixed it.
    pub async fn instance_outcome(&self, chain: ChainId, id: InstanceId) -> Result<Option<bool>> {
        let row =
            sqlx::query("SELECT applied FROM instance_outcomes WHERE chain_id = $1 AND instance_id = $2")
                .bind(i64_of(chain.0))
                .bind(hex(&id.0))
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.map(|v| v != 0))
    }

    /// Records the off-chain balances after an instance applied on this channel.
    pub async fn set_balances(&self, chain: ChainId, id: ChannelId, a: Amount, b: Amount) -> Result<()> {
        let ch = self.channel(chain, id).await?.ok_or(StoreError::UnknownChannel(id))?;
        if a.checked_add(b) != ch.deposit_a.checked_add(ch.deposit_b) {
            return Err(StoreError::BadBalances(a, b));
        }
        sqlx::query(
            "UPDATE channels SET balance_a = $1, balance_b = $2 WHERE chain_id = $3 AND channel_id = $4",
        )
        .bind(amount(a))
        .bind(amount(b))
        .bind(i64_of(chain.0))
        .bind(hex(&id.0))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets the fee `party` charges forwarding over this channel.
    pub async fn set_fee(&self, chain: ChainId, id: ChannelId, party: Address, fee: FeePolicy) -> Result<()> {
        let ch = self.channel(chain, id).await?.ok_or(StoreError::UnknownChannel(id))?;
        let sql = if party == ch.a {
            "UPDATE channels SET fee_a_base = $1, fee_a_ppm = $2 WHERE chain_id = $3 AND channel_id = $4"
        } else if party == ch.b {
            "UPDATE channels SET fee_b_base = $1, fee_b_ppm = $2 WHERE chain_id = $3 AND channel_id = $4"
        } else {
            return Err(StoreError::NotAParty(id, party));
        };
        sqlx::query(sql)
            .bind(amount(fee.base))
            .bind(i64::from(fee.ppm))
            .bind(i64_of(chain.0))
            .bind(hex(&id.0))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn channel_row(r: &sqlx::any::AnyRow) -> Result<ChannelRow> {
    let s = |name: &str| -> Result<String> { Ok(r.try_get::<String, _>(name)?) };
    let fee = |base: &str, ppm: &str| -> Result<FeePolicy> {
        let ppm: i64 = r.try_get(ppm)?;
        Ok(FeePolicy {
            base: parse_amount(&s(base)?)?,
            ppm: u32::try_from(ppm).map_err(|_| StoreError::Corrupt(format!("fee ppm {ppm}")))?,
        })
    };
    let payout_a: Option<String> = r.try_get("payout_a")?;
    let payout_b: Option<String> = r.try_get("payout_b")?;
    let closed: Option<i64> = r.try_get("closed_block")?;
    Ok(ChannelRow {
        chain: ChainId(u64_of(r.try_get("chain_id")?)?),
        id: ChannelId(parse_hash(&s("channel_id")?)?),
        a: parse_addr(&s("party_a")?)?,
        b: parse_addr(&s("party_b")?)?,
        token: parse_addr(&s("token")?)?,
        deposit_a: parse_amount(&s("deposit_a")?)?,
        deposit_b: parse_amount(&s("deposit_b")?)?,
        balance_a: parse_amount(&s("balance_a")?)?,
        balance_b: parse_amount(&s("balance_b")?)?,
        fee_a: fee("fee_a_base", "fee_a_ppm")?,
        fee_b: fee("fee_b_base", "fee_b_ppm")?,
        status: match s("status")?.as_str() {
            "open" => ChannelStatus::Open,
            "closed" => ChannelStatus::Closed,
            other => return Err(StoreError::Corrupt(format!("channel status {other:?}"))),
        },
        opened_block: u64_of(r.try_get("opened_block")?)?,
        closed_block: closed.map(u64_of).transpose()?,
        payouts: match (payout_a, payout_b) {
            (Some(a), Some(b)) => Some((parse_amount(&a)?, parse_amount(&b)?)),
            _ => None,
        },
    })
}
