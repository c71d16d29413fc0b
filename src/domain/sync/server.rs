//! Changes the server makes: commands, pairing, the pairing dialog, `/notify-device`, named
//! events, deleting a device, expiring commands that never went out, and recording what went
//! out on a subscribe.

use serde_json::{Value, json};

use super::delivery::Ledger;
use std::sync::Arc;

use super::plan::{Buckets, Context, DeviceState, Draft, Event, Origin, Plan, Planner};
use super::subscribe::carries_flag;
use super::version::{Bump, Version, write};
use crate::domain::bucket::{Bucket, Fields, compact, merged};
use crate::domain::command::{self, CommandError, DeviceView, Target};

/// The user id with a leading `user_` removed, as used in `structure.<id>`.
pub fn structure_id(user: &str) -> &str {
    user.strip_prefix("user_").unwrap_or(user)
}

/// The keys of the user and structure buckets that pair a device to `owner`.
pub fn pairing_keys(owner: &str) -> [String; 2] {
    [format!("user.{owner}"), format!("structure.{}", structure_id(owner))]
}

/// The user bucket (its `name` completes pairing on the device) and the structure bucket that
/// pair a device to `owner` (§10).
pub fn pairing_buckets(serial: &str, owner: &str) -> [(String, Fields); 2] {
    let mut user = Fields::new();
    user.insert("name".into(), Value::String(owner.to_string()));
    let mut structure = Fields::new();
    structure.insert("name".into(), "Home".into());
    structure.insert("devices".into(), Value::Array(vec![Value::String(format!("device.{serial}"))]));
    let [user_key, structure_key] = pairing_keys(owner);
    [(user_key, user), (structure_key, structure)]
}

/// A validated command (`/command`, MQTT, the web UI): its writes are committed and pushed
/// together, and stay pending until the thermostat confirms them.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub serial: String,
    pub name: String,
    pub value: Value,
    /// The owner's structure id (`default` for a device without an owner).
    pub structure_id: String,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CommandRefusal {
    #[error("Device not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] CommandError),
}

/// What a command wrote: its first bucket and fields (the reply echoes them).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReply {
    pub object_key: String,
    pub values: Fields,
}

impl Planner for CommandRequest {
    type Reply = CommandReply;
    type Refusal = CommandRefusal;

    fn plan(self, state: &DeviceState, ctx: &Context) -> Result<Plan<CommandReply>, CommandRefusal> {
        let buckets = &state.buckets;
        if buckets.is_empty() {
            return Err(CommandRefusal::NotFound);
        }
        let key = |target: Target| target.key(&self.serial, &self.structure_id);
        let value_of = |target: Target| buckets.get(&key(target)).map(|b| &b.value);
        let view = DeviceView {
            device: value_of(Target::Device),
            shared: value_of(Target::Shared),
            schedule: value_of(Target::Schedule),
            structure: value_of(Target::Structure),
            now_s: ctx.now_ms / 1000,
            serial: &self.serial,
        };
        let planned = command::plan(&self.name, &self.value, view)?;
        let mut draft = Draft::new(state, ctx);
        let mut ledger = Ledger::new(&state.pending);
        let mut first: Option<CommandReply> = None;
        for w in planned.writes {
            let key = key(w.target);
            let existing = draft.get(&key).cloned();
            let base = existing.as_deref().filter(|_| !w.replace).map(|e| &e.value);
            let value = merged(base, &w.fields);
            let Some(bucket) = write(existing.as_deref(), value, ctx.now_ms, Bump::Always) else { continue };
            let version_ts = bucket.timestamp;
            if draft.put(&key, bucket).is_none() {
                return Err(CommandError::Invalid(format!("{key} would exceed the thermostat's storage limits")).into());
            }
            ledger.command(&key, &w.fields, existing.as_ref().map(|e| &e.value), ctx.now_ms, version_ts);
            first.get_or_insert(CommandReply { object_key: key, values: w.fields });
        }
        let reply = first.ok_or_else(|| CommandError::Invalid("the command writes nothing".into()))?;
        let mut plan = Plan::new(Origin::Command, reply);
        plan.event = Some(Event {
            kind: "command",
            detail: json!({
                "command": self.name, "value": self.value, "object_key": plan.reply.object_key,
                "values": plan.reply.values, "state": "pending",
            }),
        });
        plan.pending = ledger.finish().0;
        draft.finish(&mut plan);
        Ok(plan)
    }
}

/// A pairing code was claimed: the user and structure buckets go to the thermostat together,
/// with fresh versions even if they existed.
#[derive(Debug, Clone)]
pub struct PairRequest {
    pub serial: String,
    pub owner: String,
}

impl Planner for PairRequest {
    type Reply = ();
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, ctx: &Context) -> Result<Plan<()>, Self::Refusal> {
        let mut draft = Draft::new(state, ctx);
        for (key, fields) in pairing_buckets(&self.serial, &self.owner) {
            let existing = draft.get(&key).cloned();
            let value = merged(existing.as_deref().map(|e| &e.value), &fields);
            if let Some(b) = write(existing.as_deref(), value, ctx.now_ms, Bump::Always) {
                draft.put(&key, b);
            }
        }
        let mut plan = Plan::new(Origin::Pairing, ());
        plan.event = Some(Event { kind: "pairing", detail: json!({"action": "paired", "user": self.owner}) });
        draft.finish(&mut plan);
        Ok(plan)
    }
}

/// The `confirm-pairing` dialog on the thermostat's screen.
#[derive(Debug, Clone)]
pub enum DialogRequest {
    /// Shown while a pairing code is issued (created once).
    Offer { serial: String },
    /// Dismissed by pushing an empty dialog. Replies whether there was one.
    Dismiss { serial: String },
}

impl Planner for DialogRequest {
    type Reply = bool;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, ctx: &Context) -> Result<Plan<bool>, Self::Refusal> {
        let (serial, offer) = match &self {
            DialogRequest::Offer { serial } => (serial, true),
            DialogRequest::Dismiss { serial } => (serial, false),
        };
        let key = format!("device_alert_dialog.{serial}");
        let existing = state.buckets.get(&key);
        let mut draft = Draft::new(state, ctx);
        let mut plan = if offer {
            let mut dialog = Fields::new();
            dialog.insert("dialog_data".into(), "".into());
            dialog.insert("dialog_id".into(), "confirm-pairing".into());
            if existing.is_none() {
                if let Some(b) = write(None, dialog, ctx.now_ms, Bump::IfChanged) {
                    draft.put(&key, b);
                }
            }
            Plan::new(Origin::Device, existing.is_some())
        } else {
            let mut plan = Plan::new(Origin::Pairing, existing.is_some());
            if existing.is_some() {
                if let Some(b) = write(existing.map(|b| &**b), Fields::new(), ctx.now_ms, Bump::Always) {
                    draft.put(&key, b);
                }
                plan.event = Some(Event { kind: "pairing", detail: json!({"action": "dismissed"}) });
            }
            plan
        };
        draft.finish(&mut plan);
        Ok(plan)
    }
}

/// `/notify-device`: every bucket is pushed again; nothing is written. Replies whether the
/// device has any bucket.
#[derive(Debug, Clone, Copy)]
pub struct NotifyRequest;

impl Planner for NotifyRequest {
    type Reply = bool;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, _: &Context) -> Result<Plan<bool>, Self::Refusal> {
        let any = !state.buckets.is_empty();
        let mut plan = Plan::new(Origin::Notify, any);
        plan.notify = any;
        Ok(plan)
    }
}

/// A named event that changes no bucket (availability, pairing).
#[derive(Debug, Clone)]
pub struct RecordRequest {
    pub origin: Origin,
    pub event: Event,
}

impl Planner for RecordRequest {
    type Reply = ();
    type Refusal = std::convert::Infallible;

    fn plan(self, _: &DeviceState, _: &Context) -> Result<Plan<()>, Self::Refusal> {
        let mut plan = Plan::new(self.origin, ());
        plan.event = Some(self.event);
        Ok(plan)
    }
}

/// Whether every bucket a serial holds is pending pairing state (the confirm-pairing dialog a
/// code request creates): such a serial is not a device yet.
pub fn holds_pending_pairing_only(buckets: &super::plan::Buckets) -> bool {
    buckets.keys().all(|k| k.starts_with("device_alert_dialog."))
}

/// Removes every bucket and record of a device. Replies how many buckets there were.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub event: Event,
    /// Only when the device holds nothing but pending pairing state (else nothing happens).
    pub only_pending_pairing: bool,
}

impl Planner for DeleteRequest {
    type Reply = usize;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, _: &Context) -> Result<Plan<usize>, Self::Refusal> {
        if self.only_pending_pairing && !holds_pending_pairing_only(&state.buckets) {
            return Ok(Plan::new(Origin::Server, 0));
        }
        let mut plan = Plan::new(Origin::Server, state.buckets.len());
        plan.delete = true;
        plan.event = Some(self.event);
        Ok(plan)
    }
}

/// Commands that were never sent and whose time is up: the thermostat's last reported values
/// are written back. Replies how many fields expired.
#[derive(Debug, Clone, Copy)]
pub struct ExpireRequest;

impl Planner for ExpireRequest {
    type Reply = usize;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, ctx: &Context) -> Result<Plan<usize>, Self::Refusal> {
        let mut draft = Draft::new(state, ctx);
        let mut ledger = Ledger::new(&state.pending);
        let mut count = 0;
        for (key, pending) in &state.pending {
            let expired = pending.expired(ctx.now_ms, &ctx.expiry);
            if expired.is_empty() {
                continue;
            }
            count += expired.len();
            let mut restored = Fields::new();
            let mut value = draft.get(key).map(|b| compact(&b.value)).unwrap_or_default();
            for name in &expired {
                match pending.fields.get(name).and_then(|f| f.previous.clone()) {
                    Some(previous) => {
                        value.insert(name.clone(), previous.clone());
                        restored.insert(name.clone(), previous);
                    }
                    None => {
                        value.shift_remove(name);
                    }
                }
            }
            ledger.expired(key, &expired, restored);
            // Nothing left for the display to confirm.
            if ledger.get(key).is_none_or(|p| !p.has_setpoint()) && carries_flag(&value) {
                value.insert(super::delivery::PENDING_FLAG.into(), Value::Bool(false));
            }
            let existing = draft.get(key).cloned();
            if let Some(b) = write(existing.as_deref(), value, ctx.now_ms, Bump::IfChanged) {
                draft.put(key, b);
            }
        }
        let mut plan = Plan::new(Origin::Server, count);
        (plan.pending, plan.event) = ledger.finish();
        draft.finish(&mut plan);
        Ok(plan)
    }
}

/// What went out on a held subscribe (the subscribe's own answer records itself): for knowing
/// which pushes await an acknowledgement, and what a device that lists bare keys holds.
#[derive(Debug, Clone, Default)]
pub struct SentRequest {
    /// Key, version, and whether the value carried `target_change_pending: true`.
    pub sent: Vec<(String, Version, bool)>,
}

impl SentRequest {
    pub fn of(buckets: &[(String, Arc<Bucket>)]) -> Self {
        Self { sent: buckets.iter().map(|(k, b)| (k.clone(), Version::of(b), carries_flag(&b.value))).collect() }
    }
}

impl Planner for SentRequest {
    type Reply = ();
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, _: &Context) -> Result<Plan<()>, Self::Refusal> {
        let mut ledger = Ledger::new(&state.pending);
        let mut plan = Plan::new(Origin::Device, ());
        record_sent(state, &mut ledger, &mut plan, self.sent);
        plan.pending = ledger.finish().0;
        Ok(plan)
    }
}

/// Records versions that went out: a pending command they carry counts as sent (it no longer
/// expires), and a key the device lists bare now holds that version.
fn record_sent<R>(
    state: &DeviceState,
    ledger: &mut Ledger,
    plan: &mut Plan<R>,
    sent: impl IntoIterator<Item = (String, Version, bool)>,
) {
    for (key, version, flag) in sent {
        ledger.sent(&key, version, flag);
        if state.sent.contains_key(&key) && !plan.restarted {
            plan.sent.push((key, version));
        }
    }
}

/// A bucket listing (`GET …/device/device.S`). Replies every bucket of the device; when the
/// listing carries their values (firmware 4.0.6 fills its store from it) they count as sent.
#[derive(Debug, Clone, Copy)]
pub struct ListingRequest {
    pub values: bool,
}

impl Planner for ListingRequest {
    type Reply = Buckets;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, _: &Context) -> Result<Plan<Buckets>, Self::Refusal> {
        let mut plan = Plan::new(Origin::Device, state.buckets.clone());
        if self.values {
            let mut ledger = Ledger::new(&state.pending);
            let sent = state.buckets.iter().map(|(k, b)| (k.clone(), Version::of(b), carries_flag(&b.value)));
            record_sent(state, &mut ledger, &mut plan, sent);
            plan.pending = ledger.finish().0;
        }
        Ok(plan)
    }
}

/// `/nest/entry`: the thermostat (re)started and asks where to connect. What it was given
/// before is gone from its memory, so a device that lists bare keys (4.3.3) is sent each of its
/// buckets again on first contact (its store is filled that way). With `inline_pairing`, a
/// paired device takes its user and structure buckets in the entry answer (4.3.3 arms its
/// subscribe only once its store holds them, and never subscribes to them): they count as
/// sent, so a command on them is delivered, not expired.
#[derive(Debug, Clone)]
pub struct EntryRequest {
    pub owner: Option<String>,
    pub inline_pairing: bool,
}

impl Planner for EntryRequest {
    /// The buckets the entry answer carries.
    type Reply = Vec<(String, Arc<Bucket>)>;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, _: &Context) -> Result<Plan<Self::Reply>, Self::Refusal> {
        let inline: Vec<(String, Arc<Bucket>)> = match (&self.owner, self.inline_pairing) {
            (Some(owner), true) => {
                pairing_keys(owner).into_iter().filter_map(|k| state.buckets.get(&k).map(|b| (k, b.clone()))).collect()
            }
            _ => Vec::new(),
        };
        let mut ledger = Ledger::new(&state.pending);
        let mut plan = Plan::new(Origin::Device, Vec::new());
        plan.restarted = true;
        let sent: Vec<_> = inline.iter().map(|(k, b)| (k.clone(), Version::of(b), carries_flag(&b.value))).collect();
        record_sent(state, &mut ledger, &mut plan, sent);
        plan.pending = ledger.finish().0;
        plan.reply = inline;
        Ok(plan)
    }
}
