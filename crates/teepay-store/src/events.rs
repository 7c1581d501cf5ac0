//! Applying contract events to the derived tables (enclaves, channels, instance outcomes),
//! and rebuilding those tables from the stored raw logs after a reorganization.

use crate::codec::{addr, amount, hex, parse_amount, parse_hash};
use crate::{Result, StoreError, i64_of, u64_of};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;
use teepay_chain::LogEntry;
use teepay_chain::contract::ContractEvent;
use teepay_types::{Address, ChainId};

/// Applies one log; `Ok(false)` when it is not one of the contract's events.
pub(crate) async fn apply(conn: &mut AnyConnection, chain: ChainId, log: &LogEntry) -> Result<bool> {
    let event = ContractEvent::decode(log).map_err(|e| StoreError::Corrupt(format!("event: {e}")))?;
    let Some(event) = event else { return Ok(false) };
    let c = i64_of(chain.0);
    let block = i64_of(log.block_number);
    match event {
        ContractEvent::MeasurementAllowed { .. } => {}
        // Swap decisions are the hub's own; nodes act on these events (DESIGN §10).
        ContractEvent::DecisionRecorded { .. } | ContractEvent::RevertClaimed { .. } => {}
        // Deferred token payouts are the parties' business, after the close.
        ContractEvent::PayoutDeferred { .. } | ContractEvent::Withdrawn { .. } => {}
        ContractEvent::EnclaveRegistered { enclave, measurement } => {
            sqlx::query(
                "INSERT INTO enclaves (chain_id, address, measurement, block_number) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(c)
            .bind(addr(enclave))
            .bind(hex(&measurement))
            .bind(block)
            .execute(&mut *conn)
            .await?;
        }
        ContractEvent::ChannelOpened { channel, a, b, deposit, token, .. } => {
            sqlx::query(
                "INSERT INTO channels (chain_id, channel_id, party_a, party_b, deposit_a, deposit_b, balance_a, balance_b, \
                 status, opened_block, token) VALUES ($1, $2, $3, $4, $5, '0', $5, '0', 'open', $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(c)
            .bind(hex(&channel.0))
            .bind(addr(a))
            .bind(addr(b))
            .bind(amount(deposit))
            .bind(block)
            .bind(addr(token))
            .execute(&mut *conn)
            .await?;
        }
        ContractEvent::ChannelFunded { channel, party, amount: added, deposit_a, deposit_b } => {
            let row = sqlx::query(
                "SELECT party_a, balance_a, balance_b FROM channels WHERE chain_id = $1 AND channel_id = $2",
            )
            .bind(c)
            .bind(hex(&channel.0))
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("funding of unknown channel {channel:?}")))?;
            let party_is_a = row.try_get::<String, _>(0)? == addr(party);
            let (mut bal_a, mut bal_b) =
                (parse_amount(&row.try_get::<String, _>(1)?)?, parse_amount(&row.try_get::<String, _>(2)?)?);
            let side = if party_is_a { &mut bal_a } else { &mut bal_b };
            *side = side.checked_add(added).ok_or_else(|| StoreError::Corrupt("balance overflow".into()))?;
            sqlx::query(
                "UPDATE channels SET deposit_a = $1, deposit_b = $2, balance_a = $3, balance_b = $4 \
                 WHERE chain_id = $5 AND channel_id = $6",
            )
            .bind(amount(deposit_a))
            .bind(amount(deposit_b))
            .bind(amount(bal_a))
            .bind(amount(bal_b))
            .bind(c)
            .bind(hex(&channel.0))
            .execute(&mut *conn)
            .await?;
        }
        ContractEvent::InstanceResolved { instance, applied, channel } => {
            sqlx::query(
                "INSERT INTO instance_outcomes (chain_id, instance_id, applied, channel_id, block_number) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(c)
            .bind(hex(&instance.0))
            .bind(i64::from(applied))
            .bind(hex(&channel.0))
            .bind(block)
            .execute(&mut *conn)
            .await?;
        }
        ContractEvent::ChannelClosed { channel, payout_a, payout_b, .. } => {
            sqlx::query(
                "UPDATE channels SET status = 'closed', closed_block = $1, payout_a = $2, payout_b = $3 \
                 WHERE chain_id = $4 AND channel_id = $5",
            )
            .bind(block)
            .bind(amount(payout_a))
            .bind(amount(payout_b))
            .bind(c)
            .bind(hex(&channel.0))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(true)
}

/// Rebuilds `chain`'s derived tables from its stored logs. Off-chain state the logs do not
/// carry (balances from acks, fee policies) is kept for channels that still exist with the
/// same deposits; otherwise balances restart from the deposits.
pub(crate) async fn rebuild(conn: &mut AnyConnection, chain: ChainId) -> Result<()> {
    let c = i64_of(chain.0);
    let saved: HashMap<String, Vec<String>> = sqlx::query(
        "SELECT channel_id, deposit_a, deposit_b, balance_a, balance_b, fee_a_base, fee_b_base, \
         fee_a_ppm, fee_b_ppm FROM channels WHERE chain_id = $1",
    )
    .bind(c)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let mut v: Vec<String> =
            (1..7).map(|i| r.try_get::<String, _>(i)).collect::<std::result::Result<_, _>>()?;
        v.push(r.try_get::<i64, _>(7)?.to_string());
        v.push(r.try_get::<i64, _>(8)?.to_string());
        Ok((r.try_get::<String, _>(0)?, v))
    })
    .collect::<std::result::Result<_, sqlx::Error>>()?;
    for table in ["enclaves", "channels", "instance_outcomes"] {
        let sql = format!("DELETE FROM {table} WHERE chain_id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(c).execute(&mut *conn).await?;
    }
    let logs = sqlx::query(
        "SELECT block_number, log_index, tx_hash, topics, data FROM chain_events WHERE chain_id = $1 \
         ORDER BY block_number, log_index",
    )
    .bind(c)
    .fetch_all(&mut *conn)
    .await?;
    for r in &logs {
        let topics: String = r.try_get(3)?;
        let log = LogEntry {
            address: Address([0; 20]), // not consulted by decoding
            topics: topics.split(',').filter(|t| !t.is_empty()).map(parse_hash).collect::<Result<_>>()?,
            data: r.try_get(4)?,
            block_number: u64_of(r.try_get(0)?)?,
            tx_hash: parse_hash(&r.try_get::<String, _>(2)?)?,
            log_index: u64_of(r.try_get(1)?)?,
        };
        apply(conn, chain, &log).await?;
    }
    for (id, v) in saved {
        let row =
            sqlx::query("SELECT deposit_a, deposit_b FROM channels WHERE chain_id = $1 AND channel_id = $2")
                .bind(c)
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(row) = row else { continue };
        let deposits: (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let same_deposits = deposits.0 == v[0] && deposits.1 == v[1];
        let (bal_a, bal_b) = if same_deposits { (v[2].clone(), v[3].clone()) } else { deposits };
        sqlx::query(
            "UPDATE channels SET balance_a = $1, balance_b = $2, fee_a_base = $3, fee_b_base = $4, fee_a_ppm = $5, \
             fee_b_ppm = $6 WHERE chain_id = $7 AND channel_id = $8",
        )
        .bind(bal_a)
        .bind(bal_b)
        .bind(v[4].clone())
        .bind(v[5].clone())
        .bind(v[6].parse::<i64>().unwrap_or(0))
        .bind(v[7].parse::<i64>().unwrap_or(0))
        .bind(c)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
