//! The single SQLite writer: commits bucket changes in batches (group commit) and assigns
//! change ids in commit order. A caller is answered only after its batch is durable in WAL.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::domain::bucket::Bucket;

/// Most commits folded into one transaction.
const MAX_BATCH: usize = 256;
/// Rows per multi-row statement (SQLite allows 32766 bound values).
const UPSERT_ROWS_PER_STATEMENT: usize = 512;
const JOURNAL_ROWS_PER_STATEMENT: usize = 256;

pub(crate) enum DbOp {
    Upsert { key: String, bucket: Arc<Bucket> },
    DeleteSerial,
}

pub(crate) struct Commit {
    pub serial: String,
    pub origin: &'static str,
    pub ops: Vec<DbOp>,
    /// A named event's kind and JSON detail.
    pub event: Option<(&'static str, String)>,
    pub ack: oneshot::Sender<Result<i64, String>>,
}

pub(crate) fn spawn(mut conn: SqliteConnection, mut next_id: i64, capacity: usize) -> mpsc::Sender<Commit> {
    let (tx, mut rx) = mpsc::channel::<Commit>(capacity);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            match write_batch(&mut conn, &batch, next_id).await {
                Ok(()) => {
                    for commit in batch.drain(..) {
                        let _ = commit.ack.send(Ok(next_id));
                        next_id += 1;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, commits = batch.len(), "database commit failed");
                    for commit in batch.drain(..) {
                        let _ = commit.ack.send(Err(e.to_string()));
                    }
                }
            }
        }
        let _ = conn.close().await;
    });
    tx
}

/// One transaction for the whole batch, with one multi-row statement per table: each
/// statement is a round trip to SQLite's thread, so their number must not grow with the batch.
async fn write_batch(conn: &mut SqliteConnection, batch: &[Commit], first_id: i64) -> Result<(), sqlx::Error> {
    let now = crate::domain::time::now_ms();
    let mut upserts: Vec<(&str, &str, &Bucket)> = Vec::new();
    let mut deletes: Vec<&str> = Vec::new();
    let mut journal: Vec<(i64, &Commit, String)> = Vec::with_capacity(batch.len());
    for (i, commit) in batch.iter().enumerate() {
        let mut keys = Vec::with_capacity(commit.ops.len());
        for op in &commit.ops {
            match op {
                DbOp::Upsert { key, bucket } => {
                    upserts.push((&commit.serial, key, bucket));
                    keys.push(serde_json::Value::String(key.clone()));
                }
                DbOp::DeleteSerial => deletes.push(&commit.serial),
            }
        }
        journal.push((first_id + i as i64, commit, serde_json::Value::Array(keys).to_string()));
    }

    let mut tx = conn.begin().await?;
    for serial in deletes {
        sqlx::query("DELETE FROM states WHERE serial = ?").bind(serial).execute(&mut *tx).await?;
    }
    for rows in upserts.chunks(UPSERT_ROWS_PER_STATEMENT) {
        let placeholders = vec!["(?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
        let sql = format!(
            "INSERT INTO states (serial, object_key, object_revision, object_timestamp, value, \"updatedAt\") VALUES {placeholders}
             ON CONFLICT (serial, object_key) DO UPDATE SET
               object_revision = excluded.object_revision,
               object_timestamp = excluded.object_timestamp,
               value = excluded.value,
               \"updatedAt\" = excluded.\"updatedAt\""
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (serial, key, bucket) in rows {
            let value = serde_json::to_string(&bucket.value).unwrap_or_else(|_| "{}".into());
            query = query
                .bind(*serial)
                .bind(*key)
                .bind(bucket.revision)
                .bind(bucket.timestamp)
                .bind(value)
                .bind(bucket.updated_at);
        }
        query.execute(&mut *tx).await?;
    }
    for rows in journal.chunks(JOURNAL_ROWS_PER_STATEMENT) {
        let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
        let sql = format!(
            "INSERT INTO roost_changes (id, serial, origin, object_keys, created_at, event, detail) VALUES {placeholders}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (id, commit, keys) in rows {
            query = query
                .bind(*id)
                .bind(&commit.serial)
                .bind(commit.origin)
                .bind(keys)
                .bind(now)
                .bind(commit.event.as_ref().map(|(kind, _)| *kind))
                .bind(commit.event.as_ref().map(|(_, detail)| detail.as_str()));
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}
