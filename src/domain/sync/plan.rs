//! What every planner sees and returns: the device's state, the context of a write, and the
//! plan the store commits.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;

use super::bounds::{Bounds, Usage};
use super::delivery::{Expiry, Pending};
use super::version::Version;
use crate::domain::bucket::Bucket;

/// A thermostat's buckets by key, in the order they were first written.
pub type Buckets = IndexMap<String, Arc<Bucket>>;

/// Commands the thermostat has not confirmed yet, by bucket key.
pub type PendingMap = IndexMap<String, Pending>;

/// Everything the store holds for one thermostat, as the planners see it.
#[derive(Debug, Clone, Default)]
pub struct DeviceState {
    pub buckets: Buckets,
    /// Durable: committed with the buckets.
    pub pending: PendingMap,
    /// For keys a device lists without a version (firmware 4.3.3): the newest version it was
    /// given since this process started, sent on a subscribe or named in a PUT receipt.
    pub sent: HashMap<String, Version>,
    /// The structure bucket went out once since this process started (the first subscribe
    /// after a start always carries it: a device may have reset its mode while its cached
    /// timestamp survived in flash).
    pub structure_sent: bool,
    /// The sizes of `buckets`, for the storage bounds.
    pub usage: Usage,
}

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

    /// Whether a change of this origin is pushed to the device's held subscribes.
    pub fn wakes_device(self) -> bool {
        self != Origin::Device
    }
}

/// A named event that travels with a change (and is journaled with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `command`, `availability` or `pairing`.
    pub kind: &'static str,
    pub detail: Value,
}

/// What happened to one bucket a device wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
    /// `if_object_revision` did not match; nothing written.
    Conflict,
    /// Over a size limit (buckets per device, fields per bucket); nothing written.
    Refused,
}

/// The context of one write: the clock and the settings that rules depend on.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now_ms: i64,
    pub bounds: Bounds,
    pub expiry: Expiry,
}

impl Context {
    pub fn new(now_ms: i64) -> Self {
        Self { now_ms, bounds: Bounds::default(), expiry: Expiry::default() }
    }
}

/// A change to the durable record of one bucket's unconfirmed command.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingUpdate {
    pub key: String,
    /// `None` removes the record.
    pub record: Option<Pending>,
    /// Whether clients see the difference (a command confirmed, overridden, expired or new),
    /// so the change is announced on the event stream.
    pub visible: bool,
}

/// Everything one request changes, computed without I/O; the store commits it as a whole.
#[derive(Debug)]
pub struct Plan<R> {
    pub origin: Origin,
    /// Buckets as they are to be stored (new revision and timestamp already set), each key once.
    pub writes: Vec<(String, Arc<Bucket>)>,
    pub pending: Vec<PendingUpdate>,
    /// Versions the device was given (process memory only).
    pub sent: Vec<(String, Version)>,
    /// The device restarted: the versions it was given are forgotten (before `sent` is added).
    pub restarted: bool,
    pub structure_sent: bool,
    /// The sizes of the buckets after `writes` (set when there are writes).
    pub usage: Option<Usage>,
    /// Keys whose write was refused for breaking a storage bound (the store logs them).
    pub refused: Vec<String>,
    pub event: Option<Event>,
    /// Push every bucket again without writing (`/notify-device`).
    pub notify: bool,
    /// Remove every bucket and record of the device.
    pub delete: bool,
    /// What the caller renders.
    pub reply: R,
}

impl<R> Plan<R> {
    pub fn new(origin: Origin, reply: R) -> Self {
        Self {
            origin,
            writes: Vec::new(),
            pending: Vec::new(),
            sent: Vec::new(),
            restarted: false,
            structure_sent: false,
            usage: None,
            refused: Vec::new(),
            event: None,
            notify: false,
            delete: false,
            reply,
        }
    }

    /// Whether committing this plan produces a change (journaled and published).
    pub fn changes_something(&self) -> bool {
        !self.writes.is_empty()
            || self.pending.iter().any(|p| p.visible)
            || self.event.is_some()
            || self.notify
            || self.delete
    }

    /// Whether anything must be written to storage.
    pub fn touches_storage(&self) -> bool {
        self.changes_something() || !self.pending.is_empty()
    }
}

/// A request the store can commit: it plans against the device's current state (under the
/// device's write lock) and the store commits the plan whole.
pub trait Planner {
    type Reply;
    /// Why a request is refused (nothing is written then).
    type Refusal;
    fn plan(self, state: &DeviceState, ctx: &Context) -> Result<Plan<Self::Reply>, Self::Refusal>;
}

/// Buckets written so far by a plan being built, over the device's stored ones, kept within
/// the storage bounds.
#[derive(Debug)]
pub(crate) struct Draft<'a> {
    stored: &'a Buckets,
    written: IndexMap<String, Arc<Bucket>>,
    bounds: Bounds,
    /// The sizes after the writes so far; copied from the stored ones at the first write.
    usage: Option<Usage>,
    stored_usage: &'a Usage,
    refused: Vec<String>,
}

impl<'a> Draft<'a> {
    pub fn new(state: &'a DeviceState, ctx: &Context) -> Self {
        Self {
            stored: &state.buckets,
            written: IndexMap::new(),
            bounds: ctx.bounds,
            usage: None,
            stored_usage: &state.usage,
            refused: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Arc<Bucket>> {
        self.written.get(key).or_else(|| self.stored.get(key))
    }

    /// Where `key` sits among the device's buckets once the writes so far are stored (`None`
    /// for a bucket not stored yet: it goes at the end).
    fn index_of(&self, key: &str) -> Option<usize> {
        if let Some(i) = self.stored.get_index_of(key) {
            return Some(i);
        }
        let mut added = self.written.keys().filter(|k| !self.stored.contains_key(*k));
        added.position(|k| k == key).map(|p| self.stored.len() + p)
    }

    /// Stores `bucket` under `key` unless it breaks a storage bound; `None` when refused.
    pub fn put(&mut self, key: &str, bucket: Bucket) -> Option<Arc<Bucket>> {
        let index = self.index_of(key);
        let usage = self.usage.get_or_insert_with(|| self.stored_usage.clone());
        if !usage.admit(&self.bounds, index, &bucket) {
            self.refused.push(key.to_string());
            return None;
        }
        let b = Arc::new(bucket);
        self.written.insert(key.to_string(), b.clone());
        Some(b)
    }

    /// Hands the writes, the sizes after them and the refusals to `plan`.
    pub fn finish<R>(self, plan: &mut Plan<R>) {
        plan.writes = self.written.into_iter().collect();
        plan.usage = self.usage.filter(|_| !plan.writes.is_empty());
        plan.refused = self.refused;
    }
}
