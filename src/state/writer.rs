//! The single SQLite writer: commits bucket changes in batches (group commit) and assigns
//! change ids in commit order. A caller is answered only after its batch is durable in WAL.

use std::sync::Arc;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::domain::bucket::Bucket;

/// Most commits folded into one transaction.
const MAX_BATCH: usize = 256;

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

async fn write_batch(conn: &mut SqliteConnection, batch: &[Commit], first_id: i64) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let now = crate::domain::time::now_ms();
    for (i, commit) in batch.iter().enumerate() {
        let mut keys = Vec::with_capacity(commit.ops.len());
        for op in &commit.ops {
            match op {
                DbOp::Upsert { key, bucket } => {
                    let value = serde_json::to_string(&bucket.value).unwrap_or_else(|_| "{}".into());
                    sqlx::query(
                        "INSERT INTO states (serial, object_key, object_revision, object_timestamp, value, \"updatedAt\")
                         VALUES (?, ?, ?, ?, ?, ?)
                         ON CONFLICT (serial, object_key) DO UPDATE SET
                           object_revision = excluded.object_revision,
                           object_timestamp = excluded.object_timestamp,
                           value = excluded.value,
                           \"updatedAt\" = excluded.\"updatedAt\"",
                    )
                    .bind(&commit.serial)
                    .bind(key)
                    .bind(bucket.revision)
                    .bind(bucket.timestamp)
                    .bind(value)
                    .bind(bucket.updated_at)
                    .execute(&mut *tx)
                    .await?;
                    keys.push(serde_json::Value::String(key.clone()));
                }
                DbOp::DeleteSerial => {
                    sqlx::query("DELETE FROM states WHERE serial = ?").bind(&commit.serial).execute(&mut *tx).await?;
                }
            }
        }
        sqlx::query(
            "INSERT INTO roost_changes (id, serial, origin, object_keys, created_at, event, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(first_id + i as i64)
        .bind(&commit.serial)
        .bind(commit.origin)
        .bind(serde_json::Value::Array(keys).to_string())
        .bind(now)
        .bind(commit.event.as_ref().map(|(kind, _)| *kind))
        .bind(commit.event.as_ref().map(|(_, detail)| detail.as_str()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
