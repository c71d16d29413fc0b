//! A commit on PostgreSQL: one transaction under the serial's row lock. The plan is made
//! against state that is current under that lock (this node's copy when its `generation` matches the
//! row's, else the state read from the database), so revision, timestamp and every other
//! decision hold whichever node made them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tokio::sync::oneshot;

use super::follow::Follower;
use super::{Cluster, DeviceRow, lock_device};
use crate::domain::bucket::Bucket;
use crate::domain::sync::{DeviceState, Pending, Planner, Version};
use crate::state::sql::placeholders;
use crate::state::store::{
    CommitError, Committed, Delta, PendingRow, Prepared, Slot, StateRow, Store, StoreError, group_rows,
};

/// The thermostat's row after a write: its new `generation` ($2), what the device was given
/// when that changed ($3) and whether it got the structure bucket ($4). After a delete it
/// matches no row.
const UPDATE_DEVICE: &str = "UPDATE roost_devices SET generation = $2, sent = COALESCE($3, sent),
        structure_sent = structure_sent OR $4 WHERE serial = $1";

/// Rows per multi-row upsert (PostgreSQL allows 65535 bound values).
const UPSERT_ROWS_PER_STATEMENT: usize = 1000;

const STATES: &str = "SELECT serial, object_key, object_revision, object_timestamp, value, \"updatedAt\" AS updated_at
     FROM states";
const PENDING: &str = "SELECT serial, object_key, record FROM roost_pending";

/// Every thermostat's state with its `generation`, and the last change id, read in one snapshot.
pub(crate) async fn load_all(pool: &PgPool) -> Result<(HashMap<String, (DeviceState, i64)>, i64), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    let rows: Vec<StateRow> = sqlx::query_as(concat!(
        "SELECT serial, object_key, object_revision, object_timestamp, value, \"updatedAt\" AS updated_at FROM states",
        " ORDER BY seq"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let pending: Vec<PendingRow> =
        sqlx::query_as(concat!("SELECT serial, object_key, record FROM roost_pending", " ORDER BY seq"))
            .fetch_all(&mut *tx)
            .await?;
    let devices: Vec<(String, i64, Option<String>, bool)> =
        sqlx::query_as("SELECT serial, generation, sent, structure_sent FROM roost_devices")
            .fetch_all(&mut *tx)
            .await?;
    let last_id: i64 = sqlx::query_scalar("SELECT last_id FROM roost_change_counter").fetch_one(&mut *tx).await?;
    tx.commit().await?;
    let mut states = group_rows(rows, pending);
    let mut out = HashMap::with_capacity(states.len());
    for (serial, generation, sent, structure_sent) in devices {
        let mut state = states.remove(&serial).unwrap_or_default();
        state.sent = parse_sent(sent.as_deref());
        state.structure_sent = structure_sent;
        out.insert(serial, (state, generation));
    }
    // State without a device row (written before the row existed) is read again at its next commit.
    out.extend(states.into_iter().map(|(serial, state)| (serial, (state, crate::state::store::GENERATION_UNKNOWN))));
    Ok((out, last_id))
}

/// One thermostat's state as stored, under its row lock.
async fn load_device(conn: &mut PgConnection, serial: &str, row: &DeviceRow) -> Result<DeviceState, sqlx::Error> {
    let rows: Vec<StateRow> = sqlx::query_as(AssertSqlSafe(format!("{STATES} WHERE serial = $1 ORDER BY seq")))
        .bind(serial)
        .fetch_all(&mut *conn)
        .await?;
    let pending: Vec<PendingRow> = if rows.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(AssertSqlSafe(format!("{PENDING} WHERE serial = $1 ORDER BY seq")))
            .bind(serial)
            .fetch_all(&mut *conn)
            .await?
    };
    let mut state = group_rows(rows, pending).remove(serial).unwrap_or_default();
    state.sent = parse_sent(row.sent.as_deref());
    state.structure_sent = row.structure_sent;
    Ok(state)
}

fn parse_sent(text: Option<&str>) -> HashMap<String, Version> {
    let Some(Value::Object(map)) = text.and_then(|t| serde_json::from_str(t).ok()) else { return HashMap::new() };
    map.into_iter().filter_map(|(k, v)| Some((k, Version::new(v.get(0)?.as_i64()?, v.get(1)?.as_i64()?)))).collect()
}

fn sent_json(sent: &HashMap<String, Version>) -> String {
    let map: serde_json::Map<String, Value> =
        sent.iter().map(|(k, v)| (k.clone(), json!([v.revision, v.timestamp]))).collect();
    Value::Object(map).to_string()
}

impl Store {
    /// PostgreSQL: lock, plan, write, take an id, notify, commit; then install and hand the
    /// change to the follower, which publishes every node's changes in id order.
    pub(in crate::state) async fn commit_shared<P: Planner>(
        &self,
        cluster: &Cluster,
        follower: &Follower,
        slot: &Arc<Slot>,
        serial: &str,
        request: P,
    ) -> Result<(Committed<P::Reply>, Option<oneshot::Receiver<()>>), CommitError<P::Refusal>> {
        let poisoned = || StoreError::Unavailable("state lock poisoned".into());
        let started = std::time::Instant::now();
        let mut tx = cluster.pool.begin().await.map_err(StoreError::from)?;
        let row = lock_device(&mut tx, serial).await.map_err(StoreError::from)?;
        if slot.generation() != row.generation {
            let state = load_device(&mut tx, serial, &row).await.map_err(StoreError::from)?;
            *slot.state.write().map_err(|_| poisoned())? = state;
            slot.generation.store(row.generation, Ordering::Release);
        }
        let ctx = self.context();
        let (plan, sent) = {
            let state = slot.state.read().map_err(|_| poisoned())?;
            let plan = request.plan(&state, &ctx).map_err(CommitError::Refused)?;
            // What a device was given is stored too: its next request may reach another node.
            // A restart (`/nest/entry`) forgets what the device was given before.
            let forgot = plan.restarted && !state.sent.is_empty();
            let mut sent = if plan.restarted { HashMap::new() } else { state.sent.clone() };
            let before = sent.len();
            let mut grew = forgot;
            for (key, version) in &plan.sent {
                let known = sent.entry(key.clone()).or_default();
                if version.timestamp > known.timestamp {
                    *known = *version;
                    grew = true;
                }
            }
            let remembered = (grew || sent.len() != before).then(|| sent_json(&sent));
            (plan, remembered)
        };
        let (mut prepared, reply) = Prepared::new(serial, plan, ctx.now_ms);
        let structure_sent = prepared.delta.structure_sent && !row.structure_sent;
        if !prepared.durable && sent.is_none() && !structure_sent {
            // Nothing to write: the transaction ends without one (and without a flush).
            return Ok((Committed { reply, change: None }, None));
        }
        let written = async {
            let id = write(&mut tx, cluster, serial, &prepared, &row, sent.as_deref()).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>((row.next_generation, id))
        }
        .await;
        // Each commit is its own transaction here: a batch of one for /metrics.
        crate::telemetry::database::WRITES.batch(1, started.elapsed(), written.is_ok());
        let (generation, id) = written.map_err(StoreError::from)?;

        let mut state = slot.state.write().map_err(|_| poisoned())?;
        // The copy was at the row's generation when the plan was made, and only the follower
        // moves it meanwhile: if it moved, the follower applied this change from the journal
        // already, perhaps with another node's later ones, which this delta must not overwrite.
        if slot.generation() == row.generation {
            prepared.delta.apply(&mut state);
            slot.generation.store(generation, Ordering::Release);
        }
        let change = id.map(|id| Arc::new(prepared.into_change(id, serial.to_string(), &state)));
        drop(state);
        let published = change.as_ref().map(|change| follower.committed(change.clone()));
        Ok((Committed { reply, change }, published))
    }
}

/// The statements of one commit; returns the change id when it produces a change. The row's
/// new `generation` is `row.next_generation`.
async fn write(
    tx: &mut PgConnection,
    cluster: &Cluster,
    serial: &str,
    prepared: &Prepared,
    row: &DeviceRow,
    sent: Option<&str>,
) -> Result<Option<i64>, sqlx::Error> {
    let delta = &prepared.delta;
    if delta.delete {
        sqlx::query("DELETE FROM states WHERE serial = $1").bind(serial).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM roost_pending WHERE serial = $1").bind(serial).execute(&mut *tx).await?;
    }
    for rows in delta.writes.chunks(UPSERT_ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO states (serial, object_key, object_revision, object_timestamp, value, \"updatedAt\") VALUES {}
             ON CONFLICT (serial, object_key) DO UPDATE SET
               object_revision = excluded.object_revision,
               object_timestamp = excluded.object_timestamp,
               value = excluded.value,
               \"updatedAt\" = excluded.\"updatedAt\"",
            placeholders(rows.len(), 6)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (key, bucket) in rows {
            query = query
                .bind(serial)
                .bind(key)
                .bind(bucket.revision)
                .bind(bucket.timestamp)
                .bind(value_text(bucket))
                .bind(bucket.updated_at);
        }
        query.execute(&mut *tx).await?;
    }
    for (key, record) in &delta.pending {
        match record {
            Some(record) => {
                sqlx::query(
                    "INSERT INTO roost_pending (serial, object_key, record) VALUES ($1, $2, $3)
                 ON CONFLICT (serial, object_key) DO UPDATE SET record = excluded.record",
                )
                .bind(serial)
                .bind(key)
                .bind(record.to_json().to_string())
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM roost_pending WHERE serial = $1 AND object_key = $2")
                    .bind(serial)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?
            }
        };
    }
    if delta.delete {
        // A deleted thermostat's row goes too (made-up serials must not accumulate rows); the
        // `generation` its journal row carries still came from the sequence, so no copy
        // anywhere is mistaken for current.
        sqlx::query("DELETE FROM roost_devices WHERE serial = $1").bind(serial).execute(&mut *tx).await?;
    }
    if !prepared.journaled {
        let update = sqlx::query(UPDATE_DEVICE).bind(serial).bind(row.next_generation);
        update.bind(sent).bind(delta.structure_sent).execute(&mut *tx).await?;
        return Ok(None);
    }
    // The row's update, the change id, the journal row and the NOTIFY in one statement: one
    // round trip where four were (this path is all round trips). The counter row stays locked
    // from here to the commit, so ids follow commit order; the NOTIFY is delivered at commit,
    // to every node listening (this one included).
    let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "WITH device AS ({UPDATE_DEVICE}),
              next AS (UPDATE roost_change_counter SET last_id = last_id + 1 RETURNING last_id),
              logged AS (
                INSERT INTO roost_changes (id, serial, origin, object_keys, created_at, event, detail, body)
                SELECT last_id, $1, $5, $6, $7, $8, $9, $10 FROM next RETURNING id)
         SELECT id FROM logged, LATERAL pg_notify($11, logged.id::text) AS notified"
    )))
    .bind(serial)
    .bind(row.next_generation)
    .bind(sent)
    .bind(delta.structure_sent)
    .bind(prepared.origin.as_str())
    .bind(prepared.journal_keys())
    .bind(prepared.at_ms)
    .bind(prepared.event.as_ref().map(|e| e.kind))
    .bind(prepared.event.as_ref().map(|e| e.detail.to_string()))
    .bind(body(prepared, row.generation, row.next_generation).to_string())
    .bind(&cluster.channel)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Some(id))
}

fn value_text(bucket: &Bucket) -> String {
    serde_json::to_string(&bucket.value).unwrap_or_else(|_| "{}".into())
}

/// What another node needs to apply a change to its copy: the delta, and the `generation` before and
/// after it (a copy at `prev` becomes current at `generation`).
fn body(prepared: &Prepared, prev: i64, generation: i64) -> Value {
    let delta = &prepared.delta;
    let writes: Vec<Value> = delta
        .writes
        .iter()
        .map(|(k, b)| json!([k, b.revision, b.timestamp, b.updated_at, Value::Object(b.value.clone())]))
        .collect();
    let pending: Vec<Value> = delta.pending.iter().map(|(k, r)| json!([k, r.as_ref().map(Pending::to_json)])).collect();
    let sent: Vec<Value> = delta.sent.iter().map(|(k, v)| json!([k, v.revision, v.timestamp])).collect();
    json!({
        "prev": prev, "generation": generation, "delete": delta.delete, "writes": writes, "pending": pending,
        "restarted": delta.restarted, "sent": sent, "structure_sent": delta.structure_sent,
        "visible": prepared.visible,
    })
}

/// A journal body read back: the delta, the `generation` before and after, and the visible keys.
pub(super) struct Body {
    pub prev: i64,
    pub generation: i64,
    pub delta: Delta,
    pub visible: Vec<String>,
}

pub(super) fn parse_body(text: &str) -> Option<Body> {
    let v: Value = serde_json::from_str(text).ok()?;
    let strings =
        |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect() };
    let mut delta = Delta { delete: v.get("delete")?.as_bool()?, ..Delta::default() };
    for w in v.get("writes")?.as_array()? {
        let value = match w.get(4)? {
            // Kept as the node's copy of the bucket: at its exact size, as a local write's is.
            Value::Object(map) => crate::domain::bucket::compact(map),
            _ => return None,
        };
        let bucket = Bucket {
            revision: w.get(1)?.as_i64()?,
            timestamp: w.get(2)?.as_i64()?,
            updated_at: w.get(3)?.as_i64()?,
            value,
        };
        delta.writes.push((w.get(0)?.as_str()?.to_string(), Arc::new(bucket)));
    }
    for p in v.get("pending")?.as_array()? {
        let record = match p.get(1)? {
            Value::Null => None,
            r => Some(Pending::from_json(r)?),
        };
        delta.pending.push((p.get(0)?.as_str()?.to_string(), record));
    }
    delta.restarted = v.get("restarted").and_then(Value::as_bool).unwrap_or(false);
    for s in v.get("sent")?.as_array()? {
        delta.sent.push((s.get(0)?.as_str()?.to_string(), Version::new(s.get(1)?.as_i64()?, s.get(2)?.as_i64()?)));
    }
    delta.structure_sent = v.get("structure_sent")?.as_bool()?;
    Some(Body {
        prev: v.get("prev")?.as_i64()?,
        generation: v.get("generation")?.as_i64()?,
        delta,
        visible: strings(v.get("visible")?)?,
    })
}
