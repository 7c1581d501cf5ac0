//! Versioned schema migrations, compiled in. Each migration runs in one transaction together
//! with its row in `schema_migrations`, so a crash mid-migration leaves the previous version.

use crate::{Backend, Result};
use sqlx::{AnyPool, Row};

/// (version, SQL) in order. The SQL is shared by both backends; `{BLOB}` is the binary type.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_receipts.sql")),
    (3, include_str!("../migrations/0003_channel_tokens.sql")),
];

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<Vec<i64>> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let done: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<std::result::Result<_, _>>()?;
    let blob = match backend {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "BYTEA",
    };
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let sql = sql.replace("{BLOB}", blob);
        let mut tx = pool.begin().await?;
        // Statements are separated by ";" at line ends; the DDL holds no string literal
        // containing one.
        for statement in sql.split(";\n").map(strip_comments).filter(|s| !s.is_empty()) {
            sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, CURRENT_TIMESTAMP)")
            .bind(*version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        applied.push(*version);
    }
    Ok(applied)
}

fn strip_comments(s: &str) -> String {
    s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n").trim().to_string()
}
