//! Payment and swap instances as the hub's executor tracks them: queryable status with the
//! outcome or the failure reason.

use crate::codec::hex;
use crate::{Result, Store, StoreError, i64_of, u64_of};
use sqlx::Row;
use teepay_types::InstanceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    InFlight,
    Succeeded,
    Refunded,
}

impl InstanceStatus {
    fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::InFlight => "in_flight",
            InstanceStatus::Succeeded => "succeeded",
            InstanceStatus::Refunded => "refunded",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "in_flight" => InstanceStatus::InFlight,
            "succeeded" => InstanceStatus::Succeeded,
            "refunded" => InstanceStatus::Refunded,
            other => return Err(StoreError::Corrupt(format!("instance status {other:?}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: InstanceId,
    /// "multi_hop" or "cross_chain".
    pub kind: String,
    /// The canonical encoding of the instance spec (legs and orders).
    pub spec: Vec<u8>,
    pub status: InstanceStatus,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    pub outcome: Option<String>,
    pub failure_reason: Option<String>,
}

fn row(r: &sqlx::any::AnyRow) -> Result<InstanceRow> {
    let id: String = r.try_get("instance_id")?;
    Ok(InstanceRow {
        id: InstanceId(crate::codec::parse_hash(&id)?),
        kind: r.try_get("kind")?,
        spec: r.try_get("spec")?,
        status: InstanceStatus::parse(&r.try_get::<String, _>("status")?)?,
        created_at: u64_of(r.try_get("created_at")?)?,
        updated_at: u64_of(r.try_get("updated_at")?)?,
        outcome: r.try_get("outcome")?,
        failure_reason: r.try_get("failure_reason")?,
    })
}

impl Store {
    /// Records a new instance (in flight). Inserting the same id again is a no-op, so a
    /// restarted executor can re-record what it recovers from the hub enclave. True iff the
    /// row is new.
    pub async fn insert_instance(&self, i: &InstanceRow) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO instances (instance_id, kind, spec, status, created_at, updated_at, outcome, failure_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(hex(&i.id.0))
        .bind(i.kind.clone())
        .bind(i.spec.clone())
        .bind(i.status.as_str())
        .bind(i64_of(i.created_at))
        .bind(i64_of(i.updated_at))
        .bind(i.outcome.clone())
        .bind(i.failure_reason.clone())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Ends an instance. An instance that already ended keeps its first ending.
    pub async fn finish_instance(
        &self,
        id: InstanceId,
        status: InstanceStatus,
        outcome: Option<&str>,
        failure_reason: Option<&str>,
        now_ms: u64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE instances SET status = $1, outcome = $2, failure_reason = $3, updated_at = $4 \
             WHERE instance_id = $5 AND status = 'in_flight'",
        )
        .bind(status.as_str())
        .bind(outcome.map(str::to_string))
        .bind(failure_reason.map(str::to_string))
        .bind(i64_of(now_ms))
        .bind(hex(&id.0))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Keeps a payee's receipt (its canonical encoding) for the payer of `id`; the first one
    /// kept stays.
    pub async fn insert_receipt(
        &self,
        id: InstanceId,
        invoice: &[u8; 32],
        receipt: &[u8],
        now_ms: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO receipts (instance_id, invoice_id, receipt, received_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(hex(&id.0))
        .bind(hex(invoice))
        .bind(receipt.to_vec())
        .bind(i64_of(now_ms))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The receipt kept for instance `id`, if any.
    pub async fn receipt(&self, id: InstanceId) -> Result<Option<Vec<u8>>> {
        let r = sqlx::query("SELECT receipt FROM receipts WHERE instance_id = $1")
            .bind(hex(&id.0))
            .fetch_optional(self.pool())
            .await?;
        Ok(r.map(|r| r.try_get::<Vec<u8>, _>("receipt")).transpose()?)
    }

    pub async fn instance(&self, id: InstanceId) -> Result<Option<InstanceRow>> {
        let r = sqlx::query("SELECT * FROM instances WHERE instance_id = $1")
            .bind(hex(&id.0))
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(row).transpose()
    }

    pub async fn instances_with_status(&self, status: InstanceStatus) -> Result<Vec<InstanceRow>> {
        let rows = sqlx::query("SELECT * FROM instances WHERE status = $1 ORDER BY created_at, instance_id")
            .bind(status.as_str())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row).collect()
    }
}
