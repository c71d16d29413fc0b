//! The one write path. Every change to a bucket goes through [`Store::update`]: writes are
//! serialised per serial, revision and timestamp are computed here, the change is committed to
//! SQLite, and only then is the in-memory copy replaced and the change published.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use indexmap::IndexMap;
use serde_json::Value;
use sqlx::SqlitePool;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot};

use super::bounds::{Bounds, Usage};
use super::db;
use super::writer::{self, Commit, DbOp};
use crate::domain::bucket::{Bucket, Fields, merged};
use crate::domain::time::{next_timestamp, now_ms};
use crate::hub::Hub;

pub type Buckets = IndexMap<String, Arc<Bucket>>;

/// Who made a change; decides who is woken (a device's own write is never pushed back to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Device,
    Command,
    Pairing,
    Server,
    /// `/notify-device`: every bucket is pushed again, nothing is written.
    Notify,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Device => "device",
            Origin::Command => "command",
            Origin::Pairing => "pairing",
            Origin::Server => "server",
            Origin::Notify => "notify",
        }
    }
}

/// A named event that travels with a change (and is journaled with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `command`, `availability` or `pairing`.
    pub kind: &'static str,
    pub detail: Value,
}

/// One requested change to one bucket.
#[derive(Debug, Clone)]
pub enum Op {
    /// Shallow-merge fields. With `if_revision`, skipped unless it equals the stored revision.
    Merge { key: String, fields: Fields, if_revision: Option<i64> },
    /// A device's merge based on a revision older than a server change it has not confirmed:
    /// the bucket keeps that change marked unconfirmed.
    MergeUnseen { key: String, fields: Fields },
    /// Replace the whole value.
    Replace { key: String, fields: Fields },
    /// Create the bucket with these fields only if it does not exist.
    CreateIfMissing { key: String, fields: Fields },
    /// The device cleared `target_change_pending`: change the value but keep revision and
    /// timestamp, so the bucket is not pushed back to the device.
    ClearPending { key: String },
    /// The device holds a newer copy: store its fields with its revision and timestamp.
    Adopt { key: String, fields: Fields, revision: i64, timestamp: i64 },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Merge { key, .. }
            | Op::MergeUnseen { key, .. }
            | Op::Replace { key, .. }
            | Op::CreateIfMissing { key, .. }
            | Op::ClearPending { key }
            | Op::Adopt { key, .. } => key,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
    /// `if_object_revision` did not match; nothing written.
    Conflict,
    /// Over a bound of [`Bounds`] (buckets, fields or bytes); nothing written.
    Refused,
}

#[derive(Debug, Clone)]
pub struct Written {
    pub key: String,
    pub outcome: Outcome,
    /// The bucket as stored after this write (absent only for a conflict on a missing bucket).
    pub bucket: Option<Arc<Bucket>>,
}

/// A committed change: the buckets that changed together, with its journal id.
#[derive(Debug)]
pub struct Change {
    pub id: i64,
    pub serial: String,
    pub origin: Origin,
    pub buckets: Vec<(String, Arc<Bucket>)>,
    /// Set when every bucket of the serial was removed.
    pub deleted: bool,
    pub event: Option<Event>,
    pub at_ms: i64,
}

impl Change {
    /// Whether this is a change of the device's state (a plain message on the event stream).
    pub fn is_state_change(&self) -> bool {
        !self.buckets.is_empty() || self.deleted
    }
}

#[derive(Debug)]
pub struct Applied {
    pub written: Vec<Written>,
    pub change: Option<Arc<Change>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

#[derive(sqlx::FromRow)]
struct StateRow {
    serial: String,
    object_key: String,
    object_revision: i64,
    object_timestamp: i64,
    value: Option<String>,
    updated_at: i64,
}

#[derive(Default)]
struct Slot {
    /// Serialises writes of one serial; owned guards let the commit tail outlive a dropped caller.
    write: Arc<Mutex<()>>,
    buckets: RwLock<Buckets>,
    /// Sizes of `buckets`, replaced together with them.
    usage: std::sync::Mutex<Usage>,
}

pub struct Store {
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    writer: mpsc::Sender<Commit>,
    pool: SqlitePool,
    hub: Arc<Hub>,
    bounds: Bounds,
}

impl Store {
    /// Loads every bucket and starts the writer.
    pub async fn load(pool: SqlitePool, writer_conn: sqlx::SqliteConnection, hub: Arc<Hub>) -> anyhow::Result<Self> {
        let rows: Vec<StateRow> = sqlx::query_as(
            "SELECT serial, object_key, object_revision, object_timestamp, value, \"updatedAt\" AS updated_at FROM states ORDER BY rowid",
        )
        .fetch_all(&pool)
        .await?;
        let mut slots: HashMap<String, Arc<Slot>> = HashMap::new();
        for StateRow {
            serial,
            object_key: key,
            object_revision: revision,
            object_timestamp: timestamp,
            value,
            updated_at,
        } in rows
        {
            let Some(value) = db::parse_stored_object(value.as_deref().unwrap_or("{}")) else {
                tracing::warn!(%serial, object_key = %key, "skipping a stored bucket whose value is not a JSON object");
                continue;
            };
            let slot = slots.entry(serial).or_default();
            if let Ok(mut b) = slot.buckets.write() {
                b.insert(key, Arc::new(Bucket { revision, timestamp, value, updated_at, unconfirmed: false }));
            }
        }
        for slot in slots.values() {
            if let (Ok(buckets), Ok(mut usage)) = (slot.buckets.read(), slot.usage.lock()) {
                *usage = Usage::measure(buckets.values().map(|b| &**b));
            }
        }
        let last_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM roost_changes").fetch_one(&pool).await?;
        let next_id = last_id.unwrap_or(0) + 1;
        hub.start_ids_at(next_id);
        let writer = writer::spawn(writer_conn, next_id, 4096);
        Ok(Self { slots: RwLock::new(slots), writer, pool, hub, bounds: Bounds::default() })
    }

    /// The bounds every write is checked against (the defaults until set).
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn slot(&self, serial: &str) -> Option<Arc<Slot>> {
        self.slots.read().ok()?.get(serial).cloned()
    }

    fn slot_or_create(&self, serial: &str) -> Arc<Slot> {
        if let Some(slot) = self.slot(serial) {
            return slot;
        }
        match self.slots.write() {
            Ok(mut slots) => slots.entry(serial.to_string()).or_default().clone(),
            Err(_) => Arc::new(Slot::default()),
        }
    }

    /// Every bucket of a serial, in the order they were first written.
    pub fn snapshot(&self, serial: &str) -> Buckets {
        self.slot(serial).and_then(|s| s.buckets.read().ok().map(|b| b.clone())).unwrap_or_default()
    }

    pub fn get(&self, serial: &str, key: &str) -> Option<Arc<Bucket>> {
        self.slot(serial)?.buckets.read().ok()?.get(key).cloned()
    }

    /// A device exists when it has at least one bucket.
    pub fn exists(&self, serial: &str) -> bool {
        self.slot(serial).is_some_and(|s| s.buckets.read().is_ok_and(|b| !b.is_empty()))
    }

    /// Serials with at least one bucket, sorted.
    pub fn serials(&self) -> Vec<String> {
        let Ok(slots) = self.slots.read() else { return Vec::new() };
        let mut out: Vec<String> = slots
            .iter()
            .filter(|(_, s)| s.buckets.read().is_ok_and(|b| !b.is_empty()))
            .map(|(k, _)| k.clone())
            .collect();
        out.sort();
        out
    }

    /// Applies fixed operations (see [`Store::update`]).
    pub async fn apply(&self, serial: &str, origin: Origin, force: bool, ops: Vec<Op>) -> Result<Applied, StoreError> {
        self.plan(serial, origin, force, |_| ops, None).await
    }

    /// [`Store::update_with_event`] for a plan that cannot fail.
    pub async fn plan(
        &self,
        serial: &str,
        origin: Origin,
        force: bool,
        plan: impl FnOnce(&Buckets) -> Vec<Op>,
        event: Option<Event>,
    ) -> Result<Applied, StoreError> {
        let result = self
            .update_with_event(serial, origin, force, |b| Ok::<_, std::convert::Infallible>(plan(b)), |_| event)
            .await;
        match result {
            Ok(applied) => Ok(applied),
            Err(UpdateError::Store(e)) => Err(e),
            Err(UpdateError::Plan(never)) => match never {},
        }
    }

    /// The one write path. `plan` sees the serial's buckets under its write lock and returns the
    /// operations; they are applied, committed, and published as one change. With `force`, a
    /// merge that changes nothing still gets a new revision and timestamp (a command that must
    /// reach the device even if the server already holds the value).
    pub async fn update<E>(
        &self,
        serial: &str,
        origin: Origin,
        force: bool,
        plan: impl FnOnce(&Buckets) -> Result<Vec<Op>, E>,
    ) -> Result<Applied, UpdateError<E>> {
        self.update_with_event(serial, origin, force, plan, |_| None).await
    }

    /// [`Store::update`], attaching a named event (built from what was written) to the change.
    pub async fn update_with_event<E>(
        &self,
        serial: &str,
        origin: Origin,
        force: bool,
        plan: impl FnOnce(&Buckets) -> Result<Vec<Op>, E>,
        event: impl FnOnce(&[Written]) -> Option<Event>,
    ) -> Result<Applied, UpdateError<E>> {
        let slot = self.slot_or_create(serial);
        let guard = slot.write.clone().lock_owned().await;
        let current = slot.buckets.read().map(|b| b.clone()).unwrap_or_default();
        let ops = plan(&current).map_err(UpdateError::Plan)?;
        let mut usage = slot.usage.lock().map(|u| u.clone()).unwrap_or_default();

        let now = now_ms();
        let mut next = current.clone();
        let mut written = Vec::with_capacity(ops.len());
        let mut changed_keys: Vec<String> = Vec::new();
        for op in ops {
            let key = op.key().to_string();
            let existing = next.get(&key).cloned();
            let (outcome, bucket) = match compute(op, existing.as_deref(), now, force, origin) {
                (Outcome::Changed, Some(b)) if !usage.admit(&self.bounds, next.get_index_of(&key), &b) => {
                    tracing::warn!(%serial, object_key = %key, "bucket write refused: over the size limits");
                    (Outcome::Refused, None)
                }
                other => other,
            };
            let bucket = match (outcome, bucket) {
                (Outcome::Changed, Some(b)) => {
                    let b = Arc::new(b);
                    next.insert(key.clone(), b.clone());
                    if !changed_keys.contains(&key) {
                        changed_keys.push(key.clone());
                    }
                    Some(b)
                }
                _ => existing,
            };
            written.push(Written { key, outcome, bucket });
        }
        if changed_keys.is_empty() {
            return Ok(Applied { written, change: None });
        }

        let buckets: Vec<(String, Arc<Bucket>)> =
            changed_keys.iter().filter_map(|k| next.get(k).map(|b| (k.clone(), b.clone()))).collect();
        let ops =
            buckets.iter().map(|(key, bucket)| DbOp::Upsert { key: key.clone(), bucket: bucket.clone() }).collect();
        let event = event(&written);
        let change = Change { id: 0, serial: serial.to_string(), origin, buckets, deleted: false, event, at_ms: now };
        let change = self.finish(Some((slot, guard, next, usage)), change, ops).await.map_err(UpdateError::Store)?;
        Ok(Applied { written, change: Some(change) })
    }

    /// Commits, then installs the new buckets and publishes the change — in a task of its own,
    /// so a caller that goes away mid-write (a client hanging up, shutdown) can never leave
    /// SQLite and memory disagreeing. The serial's write lock is held until the end.
    async fn finish(
        &self,
        install: Option<(Arc<Slot>, OwnedMutexGuard<()>, Buckets, Usage)>,
        mut change: Change,
        ops: Vec<DbOp>,
    ) -> Result<Arc<Change>, StoreError> {
        let writer = self.writer.clone();
        let hub = self.hub.clone();
        let task = tokio::spawn(async move {
            let id = commit(&writer, &change.serial, change.origin, ops, change.event.as_ref()).await?;
            change.id = id;
            if let Some((slot, _guard, next, usage)) = install {
                if let Ok(mut b) = slot.buckets.write() {
                    *b = next;
                }
                if let Ok(mut u) = slot.usage.lock() {
                    *u = usage;
                }
            }
            let change = Arc::new(change);
            hub.publish(change.clone());
            Ok(change)
        });
        task.await.map_err(|e| StoreError::Unavailable(format!("write task failed: {e}")))?
    }

    /// Marks a bucket's server change as confirmed: the device listed it with the current
    /// timestamp, so it holds that version.
    pub async fn confirm(&self, serial: &str, key: &str, device_timestamp: i64) {
        let Some(slot) = self.slot(serial) else { return };
        let _guard = slot.write.lock().await;
        if let Ok(mut buckets) = slot.buckets.write() {
            if let Some(b) = buckets.get_mut(key).filter(|b| b.unconfirmed && device_timestamp >= b.timestamp) {
                *b = Arc::new(Bucket { unconfirmed: false, ..(**b).clone() });
            }
        }
    }

    /// Pushes every bucket of a serial to its held subscribes again (`/notify-device`).
    /// Journaled, so event-stream clients see it; nothing is written. Returns `None` for a
    /// serial without buckets.
    pub async fn notify(&self, serial: &str) -> Result<Option<Arc<Change>>, StoreError> {
        let Some(slot) = self.slot(serial) else { return Ok(None) };
        let _guard = slot.write.lock().await;
        let buckets: Vec<(String, Arc<Bucket>)> =
            slot.buckets.read().map(|b| b.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        if buckets.is_empty() {
            return Ok(None);
        }
        let change = Change {
            id: 0,
            serial: serial.to_string(),
            origin: Origin::Notify,
            buckets,
            deleted: false,
            event: None,
            at_ms: now_ms(),
        };
        self.finish(None, change, Vec::new()).await.map(Some)
    }

    /// Journals and publishes a named event that changes no bucket (availability, pairing).
    pub async fn record(&self, serial: &str, origin: Origin, event: Event) -> Result<Arc<Change>, StoreError> {
        let change = Change {
            id: 0,
            serial: serial.to_string(),
            origin,
            buckets: Vec::new(),
            deleted: false,
            event: Some(event),
            at_ms: now_ms(),
        };
        self.finish(None, change, Vec::new()).await
    }

    /// Removes every bucket of a serial. Returns how many there were.
    pub async fn delete_device(&self, serial: &str, event: Event) -> Result<usize, StoreError> {
        let Some(slot) = self.slot(serial) else { return Ok(0) };
        let guard = slot.write.clone().lock_owned().await;
        let count = slot.buckets.read().map(|b| b.len()).unwrap_or(0);
        if count == 0 {
            return Ok(0);
        }
        let change = Change {
            id: 0,
            serial: serial.to_string(),
            origin: Origin::Server,
            buckets: Vec::new(),
            deleted: true,
            event: Some(event),
            at_ms: now_ms(),
        };
        self.finish(Some((slot, guard, Buckets::new(), Usage::default())), change, vec![DbOp::DeleteSerial]).await?;
        Ok(count)
    }
}

/// Hands a commit to the writer and waits until it is durable; returns its change id.
async fn commit(
    writer: &mpsc::Sender<Commit>,
    serial: &str,
    origin: Origin,
    ops: Vec<DbOp>,
    event: Option<&Event>,
) -> Result<i64, StoreError> {
    let (ack, done) = oneshot::channel();
    let commit = Commit {
        serial: serial.to_string(),
        origin: origin.as_str(),
        ops,
        event: event.map(|e| (e.kind, e.detail.to_string())),
        ack,
    };
    writer.send(commit).await.map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
    match done.await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => Err(StoreError::Unavailable(e)),
        Err(_) => Err(StoreError::Unavailable("writer stopped".into())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error("{0}")]
    Plan(E),
    #[error(transparent)]
    Store(StoreError),
}

/// Computes one bucket write. Returns the outcome and, when it changed, the new bucket.
fn compute(op: Op, existing: Option<&Bucket>, now: i64, force: bool, origin: Origin) -> (Outcome, Option<Bucket>) {
    let from_server = origin != Origin::Device;
    let bump = |value: Fields, unconfirmed: bool| Bucket {
        revision: existing.map_or(1, |e| e.revision.saturating_add(1)),
        timestamp: next_timestamp(existing.map_or(0, |e| e.timestamp), now),
        value,
        updated_at: now,
        unconfirmed,
    };
    match op {
        Op::Merge { fields, if_revision, .. } => {
            if let Some(expected) = if_revision {
                if expected != existing.map_or(0, |e| e.revision) {
                    return (Outcome::Conflict, None);
                }
            }
            let value = existing.map_or_else(|| fields.clone(), |e| merged(&e.value, &fields));
            if existing.is_some_and(|e| e.value == value) && !force {
                return (Outcome::Unchanged, None);
            }
            (Outcome::Changed, Some(bump(value, from_server)))
        }
        Op::MergeUnseen { fields, .. } => {
            let value = existing.map_or_else(|| fields.clone(), |e| merged(&e.value, &fields));
            if existing.is_some_and(|e| e.value == value) {
                return (Outcome::Unchanged, None);
            }
            (Outcome::Changed, Some(bump(value, existing.is_some_and(|e| e.unconfirmed))))
        }
        Op::Replace { fields, .. } => {
            if existing.is_some_and(|e| e.value == fields) && !force {
                return (Outcome::Unchanged, None);
            }
            (Outcome::Changed, Some(bump(fields, from_server)))
        }
        Op::CreateIfMissing { fields, .. } => match existing {
            Some(_) => (Outcome::Unchanged, None),
            None => (Outcome::Changed, Some(bump(fields, from_server))),
        },
        Op::ClearPending { .. } => match existing {
            Some(e) if e.value.get("target_change_pending") == Some(&Value::Bool(true)) => {
                let mut value = e.value.clone();
                value.insert("target_change_pending".into(), Value::Bool(false));
                (Outcome::Changed, Some(Bucket { value, updated_at: now, unconfirmed: false, ..e.clone() }))
            }
            _ => (Outcome::Unchanged, None),
        },
        Op::Adopt { fields, revision, timestamp, .. } => {
            let value = existing.map_or_else(|| fields.clone(), |e| merged(&e.value, &fields));
            if existing.is_some_and(|e| e.value == value && e.timestamp >= timestamp) {
                return (Outcome::Unchanged, None);
            }
            (Outcome::Changed, Some(Bucket { revision, timestamp, value, updated_at: now, unconfirmed: false }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    fn bucket(rev: i64, ts: i64, v: Value) -> Bucket {
        Bucket { revision: rev, timestamp: ts, value: f(v), updated_at: 0, unconfirmed: false }
    }

    #[test]
    fn identical_merge_keeps_revision_and_timestamp() {
        let e = bucket(4, 1000, json!({"a": 1}));
        let (o, b) = compute(
            Op::Merge { key: "k".into(), fields: f(json!({"a": 1})), if_revision: None },
            Some(&e),
            5000,
            false,
            Origin::Device,
        );
        assert_eq!(o, Outcome::Unchanged);
        assert!(b.is_none());
        let (o, b) = compute(
            Op::Merge { key: "k".into(), fields: f(json!({"a": 1})), if_revision: None },
            Some(&e),
            5000,
            true,
            Origin::Command,
        );
        assert_eq!(o, Outcome::Changed);
        assert_eq!(b.unwrap().revision, 5);
    }

    #[test]
    fn merge_bumps_and_timestamp_never_goes_back() {
        let e = bucket(4, 9000, json!({"a": 1}));
        let (_, b) = compute(
            Op::Merge { key: "k".into(), fields: f(json!({"b": 2})), if_revision: None },
            Some(&e),
            5000,
            false,
            Origin::Device,
        );
        let b = b.unwrap();
        assert_eq!((b.revision, b.timestamp), (5, 9001));
        assert_eq!(serde_json::to_string(&b.value).unwrap(), r#"{"a":1,"b":2}"#);
    }

    #[test]
    fn conditional_write_mismatch_is_a_conflict() {
        let e = bucket(5, 1000, json!({}));
        let op = Op::Merge { key: "k".into(), fields: f(json!({"t": 1})), if_revision: Some(3) };
        assert_eq!(compute(op, Some(&e), 2000, false, Origin::Device).0, Outcome::Conflict);
        let op = Op::Merge { key: "k".into(), fields: f(json!({"t": 1})), if_revision: Some(0) };
        assert_eq!(compute(op, None, 2000, false, Origin::Device).0, Outcome::Changed);
    }

    #[test]
    fn server_changes_are_unconfirmed_until_the_device_writes_on_top() {
        let e = bucket(4, 1000, json!({"t": 20.0}));
        let set = |o| {
            compute(
                Op::Merge { key: "k".into(), fields: f(json!({"t": 22.0})), if_revision: None },
                Some(&e),
                5000,
                true,
                o,
            )
        };
        assert!(set(Origin::Command).1.unwrap().unconfirmed);
        assert!(!set(Origin::Device).1.unwrap().unconfirmed);
        let pending = Bucket { unconfirmed: true, ..e.clone() };
        let (_, b) = compute(
            Op::MergeUnseen { key: "k".into(), fields: f(json!({"h": 1})) },
            Some(&pending),
            5000,
            false,
            Origin::Device,
        );
        assert!(b.unwrap().unconfirmed, "a device write based on an older revision keeps the change unconfirmed");
    }

    #[test]
    fn clearing_pending_keeps_revision_and_timestamp() {
        let e = bucket(7, 1000, json!({"target_change_pending": true, "t": 20.0}));
        let (o, b) = compute(Op::ClearPending { key: "k".into() }, Some(&e), 9000, false, Origin::Device);
        assert_eq!(o, Outcome::Changed);
        let b = b.unwrap();
        assert_eq!((b.revision, b.timestamp), (7, 1000));
        assert_eq!(b.value["target_change_pending"], json!(false));
        let (o, _) = compute(Op::ClearPending { key: "k".into() }, Some(&b), 9000, false, Origin::Device);
        assert_eq!(o, Outcome::Unchanged);
    }
}
