//! The one write path. Every change to a thermostat's state goes through [`Store::commit`]:
//! writes are serialised per serial, the request's pure planner (`domain::sync`) computes the
//! whole change against the current state, the change is committed to the database, and only
//! then is the in-memory copy replaced and the change published.
//!
//! Two engines commit: SQLite (one process owns the database; its memory is the current state
//! and a single writer group-commits, `writer`) and PostgreSQL (several nodes share the
//! database; each commit is a transaction under the serial's row lock, `pg`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::db;
use super::pg::follow::Follower;
use super::pg::{self, Cluster};
use super::repos::{History, Integrations, JournalReader, WeatherCache};
use super::sql::{Db, on_db};
use super::writer::{self, Commit, DbOp, Journal};
use crate::domain::bucket::Bucket;
use crate::domain::sync::bounds::{Bounds, Usage};
use crate::domain::sync::{Context, DeviceState, Expiry, Pending, PendingMap, Plan, Planner, Version};
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
pub(super) struct StateRow {
    pub serial: String,
    pub object_key: String,
    pub object_revision: i64,
    pub object_timestamp: i64,
    pub value: Option<String>,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
pub(super) struct PendingRow {
    pub serial: String,
    pub object_key: String,
    pub record: String,
}

/// Buckets and pending commands as stored, grouped per serial (rows in the order written).
pub(super) fn group_rows(rows: Vec<StateRow>, pending: Vec<PendingRow>) -> HashMap<String, DeviceState> {
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
    for PendingRow { serial, object_key, record } in pending {
        let parsed = serde_json::from_str(&record).ok().and_then(|v| Pending::from_json(&v));
        match (parsed, states.get_mut(&serial)) {
            (Some(p), Some(state)) => {
                state.pending.insert(object_key, p);
            }
            _ => tracing::warn!(%serial, %object_key, "skipping a pending-command record that cannot be read"),
        }
    }
    for state in states.values_mut() {
        state.usage = Usage::measure(state.buckets.values().map(|b| &**b));
    }
    states
}

/// How long a PostgreSQL commit waits for its change to be published before it answers anyway
/// (the follower reads the journal; it is only this slow when the database is).
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A slot's `generation` when its copy may be behind the database (PostgreSQL): reloaded before use.
pub(super) const GENERATION_UNKNOWN: i64 = -1;

#[derive(Default)]
pub(super) struct Slot {
    /// Serialises writes of one serial; owned guards let the commit tail outlive a dropped caller.
    pub write: Arc<Mutex<()>>,
    pub state: RwLock<DeviceState>,
    /// PostgreSQL: the `generation` of the stored state this copy matches (see `pg::DeviceRow`).
    pub generation: AtomicI64,
}

impl Slot {
    fn with(state: DeviceState, generation: i64) -> Self {
        Self { write: Default::default(), state: RwLock::new(state), generation: AtomicI64::new(generation) }
    }

    pub fn generation(&self) -> i64 {
        self.generation.load(Ordering::Acquire)
    }
}

pub(super) enum Engine {
    /// One process owns the database: memory is the current state; a single writer
    /// group-commits and hands out change ids.
    Sqlite(mpsc::Sender<Commit>),
    /// Several nodes share the database: each commit is a transaction under the serial's row
    /// lock; changes reach the hub through the follower, in id order, from every node.
    Postgres { cluster: Arc<Cluster>, follower: Arc<Follower> },
}

pub struct Store {
    pub(super) slots: RwLock<HashMap<String, Arc<Slot>>>,
    pub(super) engine: Engine,
    db: Db,
    pub(super) hub: Arc<Hub>,
    pub(super) settings: Settings,
}

/// What a committed plan does to a thermostat's state: applied to the committing node's copy,
/// and (PostgreSQL) carried in the journal to every other node's.
#[derive(Debug, Default)]
pub(super) struct Delta {
    pub delete: bool,
    pub writes: Vec<(String, Arc<Bucket>)>,
    /// Records by bucket key; `None` removes one.
    pub pending: Vec<(String, Option<Pending>)>,
    /// The device restarted: what it was given is forgotten before `sent` is recorded.
    pub restarted: bool,
    pub sent: Vec<(String, Version)>,
    pub structure_sent: bool,
    /// The sizes of the buckets afterwards; measured again when absent and buckets change.
    pub usage: Option<Usage>,
}

impl Delta {
    /// Applies the delta to a copy of the state (the sizes move into it).
    pub fn apply(&mut self, state: &mut DeviceState) {
        if self.delete {
            *state = DeviceState::default();
        }
        for (key, bucket) in &self.writes {
            state.buckets.insert(key.clone(), bucket.clone());
        }
        for (key, record) in &self.pending {
            match record {
                Some(r) => state.pending.insert(key.clone(), r.clone()),
                None => state.pending.shift_remove(key),
            };
        }
        if self.restarted {
            state.sent.clear();
        }
        for (key, version) in &self.sent {
            let known = state.sent.entry(key.clone()).or_default();
            if version.timestamp > known.timestamp {
                *known = *version;
            }
        }
        state.structure_sent |= self.structure_sent;
        match self.usage.take() {
            Some(usage) => state.usage = usage,
            None if !self.writes.is_empty() => state.usage = Usage::measure(state.buckets.values().map(|b| &**b)),
            None => {}
        }
    }
}

/// A plan taken apart for committing.
pub(super) struct Prepared {
    pub origin: Origin,
    pub event: Option<Event>,
    /// Push every bucket again (`/notify-device`).
    pub notify: bool,
    pub delta: Delta,
    /// Pending keys whose change clients see.
    pub visible: Vec<String>,
    /// Produces a change (journaled and published).
    pub journaled: bool,
    /// Must be written to storage.
    pub durable: bool,
    pub at_ms: i64,
}

impl Prepared {
    pub fn new<R>(serial: &str, plan: Plan<R>, at_ms: i64) -> (Self, R) {
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
        let visible: Vec<String> = pending.iter().filter(|p| p.visible).map(|p| p.key.clone()).collect();
        let pending = pending.into_iter().map(|p| (p.key, p.record)).collect();
        let delta = Delta { delete, writes, pending, restarted, sent, structure_sent, usage };
        (Self { origin, event, notify, delta, visible, journaled, durable, at_ms }, reply)
    }

    /// The journal's `object_keys`: buckets written, then pending keys whose change clients see.
    pub fn journal_keys(&self) -> String {
        let mut keys: Vec<&str> = self.delta.writes.iter().map(|(k, _)| k.as_str()).collect();
        for key in &self.visible {
            if !keys.contains(&key.as_str()) {
                keys.push(key);
            }
        }
        serde_json::Value::from(keys).to_string()
    }

    /// The change as published: for `/notify-device` every bucket the device holds.
    pub fn into_change(self, id: i64, serial: String, state: &DeviceState) -> Change {
        let buckets = if self.notify {
            state.buckets.iter().map(|(k, b)| (k.clone(), b.clone())).collect()
        } else {
            self.delta.writes
        };
        Change {
            id,
            serial,
            origin: self.origin,
            buckets,
            pending: self.visible,
            deleted: self.delta.delete,
            event: self.event,
            at_ms: self.at_ms,
        }
    }
}

impl Store {
    /// Loads every bucket and pending command, and starts the engine that commits.
    pub async fn load(opened: db::Opened, hub: Arc<Hub>, settings: Settings) -> Result<Self, StoreError> {
        match opened {
            db::Opened::Sqlite { pool, writer } => {
                let (rows, pending, last_id): (Vec<StateRow>, Vec<PendingRow>, Option<i64>) = (
                    sqlx::query_as(
                        "SELECT serial, object_key, object_revision, object_timestamp, value, \"updatedAt\" AS updated_at
                         FROM states ORDER BY rowid",
                    )
                    .fetch_all(&pool)
                    .await?,
                    sqlx::query_as("SELECT serial, object_key, record FROM roost_pending ORDER BY rowid")
                        .fetch_all(&pool)
                        .await?,
                    sqlx::query_scalar("SELECT MAX(id) FROM roost_changes").fetch_one(&pool).await?,
                );
                let slots = group_rows(rows, pending)
                    .into_iter()
                    .map(|(serial, state)| (serial, Arc::new(Slot::with(state, 0))))
                    .collect();
                let next_id = last_id.unwrap_or(0) + 1;
                hub.start_ids_at(next_id);
                let writer = writer::spawn(writer, next_id, 4096);
                Ok(Self {
                    slots: RwLock::new(slots),
                    engine: Engine::Sqlite(writer),
                    db: Db::Sqlite(pool),
                    hub,
                    settings,
                })
            }
            db::Opened::Postgres(cluster) => {
                let (states, last_id) = pg::commit::load_all(&cluster.pool).await?;
                let slots = states
                    .into_iter()
                    .map(|(serial, (state, generation))| (serial, Arc::new(Slot::with(state, generation))))
                    .collect();
                hub.start_ids_at(last_id + 1);
                let follower = Follower::new(last_id);
                let db = Db::Postgres(cluster.pool.clone());
                Ok(Self {
                    slots: RwLock::new(slots),
                    engine: Engine::Postgres { cluster, follower },
                    db,
                    hub,
                    settings,
                })
            }
        }
    }

    /// PostgreSQL: starts following the journal, through which every node's changes (this
    /// one's included) reach the hub; `observer` hears of each change another node made.
    pub fn follow(
        self: &Arc<Self>,
        observer: Option<pg::follow::RemoteObserver>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if let Engine::Postgres { cluster, follower } = &self.engine {
            follower.clone().spawn(self.clone(), cluster.clone(), observer, shutdown);
        }
    }

    /// The database every repository uses.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The shared database when several nodes may use it (PostgreSQL).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres { cluster, .. } => Some(cluster),
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Temperature history (for charts).
    pub fn history(&self) -> History {
        History::new(self.db.clone())
    }

    /// The weather cache of the thermostats' weather route.
    pub fn weather(&self) -> WeatherCache {
        WeatherCache::new(self.db.clone())
    }

    /// Integration settings clients hand over (MQTT broker).
    pub fn integrations(&self) -> Integrations {
        Integrations::new(self.db.clone())
    }

    /// The change journal, for event-stream replay.
    pub fn journal(&self) -> JournalReader {
        JournalReader::new(self.db.clone())
    }

    /// Closes the database (after the writer has finished).
    pub async fn close(&self) {
        on_db!(&self.db, pool => pool.close().await);
    }

    pub(super) fn slot(&self, serial: &str) -> Option<Arc<Slot>> {
        self.slots.read().ok()?.get(serial).cloned()
    }

    pub(super) fn slot_or_create(&self, serial: &str) -> Arc<Slot> {
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
        match &self.engine {
            Engine::Sqlite(writer) => self.commit_here(writer, slot, guard, serial, request).await,
            Engine::Postgres { cluster, follower } => {
                let (done, published) = self.commit_shared(cluster, follower, &slot, serial, request).await?;
                drop(guard);
                // Answered once published, as with SQLite: whoever hears of the reply may rely
                // on held subscribes and event streams having the change.
                if let Some(published) = published {
                    let _ = tokio::time::timeout(PUBLISH_WAIT, published).await;
                }
                Ok(done)
            }
        }
    }

    pub(super) fn context(&self) -> Context {
        Context { now_ms: now_ms(), bounds: self.settings.bounds, expiry: self.settings.expiry }
    }

    /// SQLite: memory is the current state; the writer commits.
    async fn commit_here<P: Planner>(
        &self,
        writer: &mpsc::Sender<Commit>,
        slot: Arc<Slot>,
        guard: tokio::sync::OwnedMutexGuard<()>,
        serial: &str,
        request: P,
    ) -> Result<Committed<P::Reply>, CommitError<P::Refusal>> {
        let ctx = self.context();
        let plan = {
            let state = slot.state.read().map_err(|_| StoreError::Unavailable("state lock poisoned".into()))?;
            request.plan(&state, &ctx).map_err(CommitError::Refused)?
        };
        let (mut prepared, reply) = Prepared::new(serial, plan, ctx.now_ms);
        if !prepared.durable {
            // Nothing durable (what went out on a subscribe): memory only.
            if let Ok(mut state) = slot.state.write() {
                prepared.delta.apply(&mut state);
            }
            drop(guard);
            return Ok(Committed { reply, change: None });
        }
        let delta = &prepared.delta;
        let mut ops: Vec<DbOp> =
            Vec::with_capacity(delta.writes.len() + delta.pending.len() + usize::from(delta.delete));
        if delta.delete {
            ops.push(DbOp::DeleteSerial);
        }
        ops.extend(delta.writes.iter().map(|(key, bucket)| DbOp::Upsert { key: key.clone(), bucket: bucket.clone() }));
        ops.extend(delta.pending.iter().map(|(key, record)| DbOp::Pending {
            key: key.clone(),
            record: record.as_ref().map(|r| r.to_json().to_string()),
        }));
        let journal = prepared.journaled.then(|| Journal {
            origin: prepared.origin.as_str(),
            keys: prepared.journal_keys(),
            event: prepared.event.as_ref().map(|e| (e.kind, e.detail.to_string())),
        });

        let serial = serial.to_string();
        let writer = writer.clone();
        let hub = self.hub.clone();
        // The commit, the install and the publish run in a task of their own, so a caller that
        // goes away mid-write (a client hanging up, shutdown) can never leave SQLite and memory
        // disagreeing. The serial's write lock is held until the end.
        let task = tokio::spawn(async move {
            let _guard = guard;
            let id = commit(&writer, &serial, ops, journal).await?;
            let change = match slot.state.write() {
                Ok(mut state) => {
                    prepared.delta.apply(&mut state);
                    id.map(|id| prepared.into_change(id, serial, &state))
                }
                Err(_) => return Err(StoreError::Unavailable("state lock poisoned".into())),
            };
            let Some(change) = change else { return Ok(None) };
            let change = Arc::new(change);
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
