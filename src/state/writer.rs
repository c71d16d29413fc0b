//! The single SQLite writer: commits bucket changes in batches (group commit) and assigns
//! change ids in commit order. A caller is answered only after its batch is durable in WAL.
//! Every write of `states`, `roost_pending` and `roost_changes` happens here.

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
    Upsert {
        key: String,
        bucket: Arc<Bucket>,
    },
    /// A bucket's pending-command record (JSON), or its removal.
    Pending {
        key: String,
        record: Option<String>,
    },
    /// Every bucket and record of the serial.
    DeleteSerial,
}

/// A journal row: the change the event stream replays.
pub(crate) struct Journal {
    pub origin: &'static str,
    /// Keys whose state changed (JSON array).
    pub keys: String,
    /// A named event's kind and JSON detail.
    pub event: Option<(&'static str, String)>,
}

pub(crate) struct Commit {
    pub serial: String,
    pub ops: Vec<DbOp>,
    pub journal: Option<Journal>,
    /// The change id when journaled.
    pub ack: oneshot::Sender<Result<Option<i64>, String>>,
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
            let started = std::time::Instant::now();
            let written = write_batch(&mut conn, &batch, next_id).await;
            crate::telemetry::database::WRITES.batch(batch.len(), started.elapsed(), written.is_ok());
            match written {
                Ok(()) => {
                    for commit in batch.drain(..) {
                        let id = commit.journal.is_some().then(|| {
                            next_id += 1;
                            next_id - 1
                        });
                        let _ = commit.ack.send(Ok(id));
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
    let mut pending: Vec<(&str, &str, Option<&str>)> = Vec::new();
    let mut deletes: Vec<&str> = Vec::new();
    let mut journal: Vec<(i64, &Commit, &Journal)> = Vec::with_capacity(batch.len());
    let mut id = first_id;
    for commit in batch {
        for op in &commit.ops {
            match op {
                DbOp::Upsert { key, bucket } => upserts.push((&commit.serial, key, bucket)),
                DbOp::Pending { key, record } => pending.push((&commit.serial, key, record.as_deref())),
                DbOp::DeleteSerial => deletes.push(&commit.serial),
            }
        }
        if let Some(j) = &commit.journal {
            journal.push((id, commit, j));
            id += 1;
        }
    }

    let mut tx = conn.begin().await?;
    for serial in deletes {
        sqlx::query("DELETE FROM states WHERE serial = ?").bind(serial).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM roost_pending WHERE serial = ?").bind(serial).execute(&mut *tx).await?;
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
    // Rare (commands and their confirmation): one statement each.
    for (serial, key, record) in pending {
        match record {
            Some(record) => {
                sqlx::query(
                    "INSERT INTO roost_pending (serial, object_key, record) VALUES (?, ?, ?)
                     ON CONFLICT (serial, object_key) DO UPDATE SET record = excluded.record",
                )
                .bind(serial)
                .bind(key)
                .bind(record)
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM roost_pending WHERE serial = ? AND object_key = ?")
                    .bind(serial)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?
            }
        };
    }
    for rows in journal.chunks(JOURNAL_ROWS_PER_STATEMENT) {
        let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
        let sql = format!(
            "INSERT INTO roost_changes (id, serial, origin, object_keys, created_at, event, detail) VALUES {placeholders}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (id, commit, j) in rows {
            query = query
                .bind(*id)
                .bind(&commit.serial)
                .bind(j.origin)
                .bind(&j.keys)
                .bind(now)
                .bind(j.event.as_ref().map(|(kind, _)| *kind))
                .bind(j.event.as_ref().map(|(_, detail)| detail.as_str()));
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}
