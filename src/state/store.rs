//! The one write path. Every change to a thermostat's state goes through [`Store::commit`]:
//! writes are serialised per serial, the request's pure planner (`domain::sync`) computes the
//! whole change against the current state, the change is committed to SQLite, and only then is
//! the in-memory copy replaced and the change published.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};

use sqlx::SqlitePool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::db;
use super::repos::{History, Integrations, JournalReader, WeatherCache};
use super::writer::{self, Commit, DbOp, Journal};
use crate::domain::bucket::Bucket;
use crate::domain::sync::bounds::{Bounds, Usage};
use crate::domain::sync::{Context, DeviceState, Expiry, Pending, PendingMap, Plan, Planner};
use crate::domain::time::now_ms;
use crate::hub::Hub;

pub use crate::domain::sync::{Buckets, Event, Origin, Outcome};

/// A committed change: the buckets that changed together, with its journal id.
#[derive(Debug)]
pub struct Change {
    pub id: i64,
    pub serial: String,
    pub origin: Origin,
    pub buckets: Vec<(String, Arc<Bucket>)>,
    /// Keys whose pending command changed in a way clients see (new, confirmed, overridden,
    /// expired).
    pub pending: Vec<String>,
    /// Set when every bucket of the serial was removed.
    pub deleted: bool,
    pub event: Option<Event>,
    pub at_ms: i64,
}

impl Change {
    /// Whether this is a change of the device's state (a plain message on the event stream).
    pub fn is_state_change(&self) -> bool {
        !self.buckets.is_empty() || !self.pending.is_empty() || self.deleted
    }
}

/// What [`Store::commit`] hands back: the plan's reply, and the change when one was published.
#[derive(Debug)]
pub struct Committed<R> {
    pub reply: R,
    pub change: Option<Arc<Change>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Why a commit did not happen: the planner refused the request, or storage failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError<E> {
    #[error("{0}")]
    Refused(E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CommitError<Infallible>> for StoreError {
    fn from(e: CommitError<Infallible>) -> Self {
        match e {
            CommitError::Store(e) => e,
            CommitError::Refused(never) => match never {},
        }
    }
}

/// The rules' settings that come from the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// What one thermostat may store (`MAX_BUCKETS_PER_DEVICE`, `MAX_BUCKET_BYTES`, …).
    pub bounds: Bounds,
    pub expiry: Expiry,
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

#[derive(sqlx::FromRow)]
struct PendingRow {
    serial: String,
    object_key: String,
    record: String,
}

#[derive(Default)]
struct Slot {
    /// Serialises writes of one serial; owned guards let the commit tail outlive a dropped caller.
    write: Arc<Mutex<()>>,
    state: RwLock<DeviceState>,
}

pub struct Store {
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    writer: mpsc::Sender<Commit>,
    pool: SqlitePool,
    hub: Arc<Hub>,
    settings: Settings,
}

impl Store {
    /// Loads every bucket and pending command, and starts the writer.
    pub async fn load(
        pool: SqlitePool,
        writer_conn: sqlx::SqliteConnection,
        hub: Arc<Hub>,
        settings: Settings,
    ) -> Result<Self, StoreError> {
        let rows: Vec<StateRow> = sqlx::query_as(
            "SELECT serial, object_key, object_revision, object_timestamp, value, \"updatedAt\" AS updated_at FROM states ORDER BY rowid",
        )
        .fetch_all(&pool)
        .await?;
        let mut states: HashMap<String, DeviceState> = HashMap::new();
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
            let state = states.entry(serial).or_default();
            state.buckets.insert(key, Arc::new(Bucket { revision, timestamp, value, updated_at }));
        }
        let pending: Vec<PendingRow> =
            sqlx::query_as("SELECT serial, object_key, record FROM roost_pending ORDER BY rowid")
                .fetch_all(&pool)
                .await?;
        for PendingRow { serial, object_key, record } in pending {
            let parsed = serde_json::from_str(&record).ok().and_then(|v| Pending::from_json(&v));
            match (parsed, states.get_mut(&serial)) {
                (Some(p), Some(state)) => {
                    state.pending.insert(object_key, p);
                }
                _ => tracing::warn!(%serial, %object_key, "skipping a pending-command record that cannot be read"),
            }
        }
        let slots = states
            .into_iter()
            .map(|(serial, mut state)| {
                state.usage = Usage::measure(state.buckets.values().map(|b| &**b));
                (serial, Arc::new(Slot { write: Default::default(), state: RwLock::new(state) }))
            })
            .collect();
        let last_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM roost_changes").fetch_one(&pool).await?;
        let next_id = last_id.unwrap_or(0) + 1;
        hub.start_ids_at(next_id);
        let writer = writer::spawn(writer_conn, next_id, 4096);
        Ok(Self { slots: RwLock::new(slots), writer, pool, hub, settings })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Temperature history (for charts).
    pub fn history(&self) -> History {
        History::new(self.pool.clone())
    }

    /// The weather cache of the thermostats' weather route.
    pub fn weather(&self) -> WeatherCache {
        WeatherCache::new(self.pool.clone())
    }

    /// Integration settings clients hand over (MQTT broker).
    pub fn integrations(&self) -> Integrations {
        Integrations::new(self.pool.clone())
    }

    /// The change journal, for event-stream replay.
    pub fn journal(&self) -> JournalReader {
        JournalReader::new(self.pool.clone())
    }

    /// Closes the database (after the writer has finished).
    pub async fn close(&self) {
        self.pool.close().await;
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

    fn read<T>(&self, serial: &str, f: impl FnOnce(&DeviceState) -> T) -> Option<T> {
        let slot = self.slot(serial)?;
        let state = slot.state.read().ok()?;
        Some(f(&state))
    }

    /// Every bucket of a serial, in the order they were first written.
    pub fn snapshot(&self, serial: &str) -> Buckets {
        self.read(serial, |s| s.buckets.clone()).unwrap_or_default()
    }

    pub fn get(&self, serial: &str, key: &str) -> Option<Arc<Bucket>> {
        self.read(serial, |s| s.buckets.get(key).cloned()).flatten()
    }

    /// Commands the thermostat has not confirmed, by bucket key.
    pub fn pending(&self, serial: &str) -> PendingMap {
        self.read(serial, |s| s.pending.clone()).unwrap_or_default()
    }

    /// Serials with a command that may have expired by `now_ms`.
    pub fn serials_with_expired_commands(&self, now_ms: i64) -> Vec<String> {
        let Ok(slots) = self.slots.read() else { return Vec::new() };
        let expiry = self.settings.expiry;
        slots
            .iter()
            .filter(|(_, slot)| {
                slot.state.read().is_ok_and(|s| s.pending.values().any(|p| !p.expired(now_ms, &expiry).is_empty()))
            })
            .map(|(serial, _)| serial.clone())
            .collect()
    }

    /// A device exists when it has at least one bucket.
    pub fn exists(&self, serial: &str) -> bool {
        self.read(serial, |s| !s.buckets.is_empty()).unwrap_or(false)
    }

    /// Serials with at least one bucket, sorted.
    pub fn serials(&self) -> Vec<String> {
        let Ok(slots) = self.slots.read() else { return Vec::new() };
        let mut out: Vec<String> = slots
            .iter()
            .filter(|(_, s)| s.state.read().is_ok_and(|s| !s.buckets.is_empty()))
            .map(|(k, _)| k.clone())
            .collect();
        out.sort();
        out
    }

    /// The one write path: plans `request` against the serial's state under its write lock,
    /// commits the plan, then installs it in memory and publishes the change. Returns the
    /// plan's reply once it is durable.
    pub async fn commit<P: Planner>(
        &self,
        serial: &str,
        request: P,
    ) -> Result<Committed<P::Reply>, CommitError<P::Refusal>> {
        let slot = self.slot_or_create(serial);
        let guard = slot.write.clone().lock_owned().await;
        let ctx = Context { now_ms: now_ms(), bounds: self.settings.bounds, expiry: self.settings.expiry };
        let plan = {
            let state = slot.state.read().map_err(|_| StoreError::Unavailable("state lock poisoned".into()))?;
            request.plan(&state, &ctx).map_err(CommitError::Refused)?
        };
        let journaled = plan.changes_something();
        let durable = plan.touches_storage();
        let Plan {
            origin,
            writes,
            pending,
            sent,
            restarted,
            structure_sent,
            usage,
            refused,
            event,
            notify,
            delete,
            reply,
        } = plan;
        for key in &refused {
            tracing::warn!(%serial, object_key = %key, "bucket write refused: over the storage bounds");
        }

        let mut ops: Vec<DbOp> = Vec::with_capacity(writes.len() + pending.len() + usize::from(delete));
        if delete {
            ops.push(DbOp::DeleteSerial);
        }
        ops.extend(writes.iter().map(|(key, bucket)| DbOp::Upsert { key: key.clone(), bucket: bucket.clone() }));
        ops.extend(
            pending.iter().map(|p| DbOp::Pending {
                key: p.key.clone(),
                record: p.record.as_ref().map(|r| r.to_json().to_string()),
            }),
        );
        let visible: Vec<String> = pending.iter().filter(|p| p.visible).map(|p| p.key.clone()).collect();
        let install = move |state: &mut DeviceState| {
            if delete {
                *state = DeviceState::default();
            }
            for (key, bucket) in writes.iter() {
                state.buckets.insert(key.clone(), bucket.clone());
            }
            for p in pending {
                match p.record {
                    Some(r) => state.pending.insert(p.key, r),
                    None => state.pending.shift_remove(&p.key),
                };
            }
            if restarted {
                state.sent.clear();
            }
            for (key, version) in sent {
                let known = state.sent.entry(key).or_default();
                if version.timestamp > known.timestamp {
                    *known = version;
                }
            }
            state.structure_sent |= structure_sent;
            if let Some(usage) = usage {
                state.usage = usage;
            }
            writes
        };

        if !durable {
            // Nothing durable (what went out on a subscribe): memory only.
            if let Ok(mut state) = slot.state.write() {
                install(&mut state);
            }
            drop(guard);
            return Ok(Committed { reply, change: None });
        }

        let at_ms = ctx.now_ms;
        let serial = serial.to_string();
        let writer = self.writer.clone();
        let hub = self.hub.clone();
        // The commit, the install and the publish run in a task of their own, so a caller that
        // goes away mid-write (a client hanging up, shutdown) can never leave SQLite and memory
        // disagreeing. The serial's write lock is held until the end.
        let task = tokio::spawn(async move {
            let _guard = guard;
            let journal = journaled.then(|| {
                let mut keys: Vec<serde_json::Value> = ops
                    .iter()
                    .filter_map(|op| match op {
                        DbOp::Upsert { key, .. } => Some(serde_json::Value::String(key.clone())),
                        _ => None,
                    })
                    .collect();
                keys.extend(
                    visible
                        .iter()
                        .filter(|k| !keys.iter().any(|j| j == *k))
                        .cloned()
                        .map(Into::into)
                        .collect::<Vec<_>>(),
                );
                Journal {
                    origin: origin.as_str(),
                    keys: serde_json::Value::Array(keys).to_string(),
                    event: event.as_ref().map(|e| (e.kind, e.detail.to_string())),
                }
            });
            let id = commit(&writer, &serial, ops, journal).await?;
            let written = match slot.state.write() {
                Ok(mut state) => {
                    let written = install(&mut state);
                    if notify { state.buckets.iter().map(|(k, b)| (k.clone(), b.clone())).collect() } else { written }
                }
                Err(_) => return Err(StoreError::Unavailable("state lock poisoned".into())),
            };
            let Some(id) = id else { return Ok(None) };
            let change = Arc::new(Change {
                id,
                serial,
                origin,
                buckets: written,
                pending: visible,
                deleted: delete,
                event,
                at_ms,
            });
            hub.publish(change.clone());
            Ok(Some(change))
        });
        let change = task.await.map_err(|e| StoreError::Unavailable(format!("write task failed: {e}")))??;
        Ok(Committed { reply, change })
    }
}

/// Hands a commit to the writer and waits until it is durable; returns its change id.
async fn commit(
    writer: &mpsc::Sender<Commit>,
    serial: &str,
    ops: Vec<DbOp>,
    journal: Option<Journal>,
) -> Result<Option<i64>, StoreError> {
    let (ack, done) = oneshot::channel();
    let commit = Commit { serial: serial.to_string(), ops, journal, ack };
    writer.send(commit).await.map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
    match done.await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => Err(StoreError::Unavailable(e)),
        Err(_) => Err(StoreError::Unavailable("writer stopped".into())),
    }
}
