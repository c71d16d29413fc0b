//! A subscribe: what it writes (values the device carries), what goes out at once, and what a
//! held response waits for (`spec/nest-protocol-reference.md` §4.4, §8.3, §10;
//! `spec/device-protocol.md` §10; `spec/v3-firmware.md` §3).

use std::sync::Arc;

use serde_json::Value;

use super::delivery::{Ledger, PENDING_FLAG};
use super::plan::{Context, DeviceState, Draft, Origin, Plan, Planner};
use super::push::HoldState;
use super::server::{pairing_buckets, pairing_keys};
use super::version::{Bump, Version, adopt, server_is_newer, write};
use crate::domain::bucket::{Bucket, Fields, merged};

/// One bucket a device lists in a subscribe.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub key: String,
    /// The version the device holds; `None` when the dialect does not say (firmware 4.3.3
    /// lists bare keys).
    pub version: Option<Version>,
    /// Values carried with the key (objects dialect only).
    pub value: Option<Fields>,
}

/// Which buckets a subscribe may be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only the keys the device listed (v3).
    Listed,
    /// The listed keys, plus `user.<owner>` and `structure.<id>` for a paired device (objects).
    WithPairing,
}

/// How many buckets one response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Every newer bucket in one document (objects).
    All,
    /// The first newer bucket in request order; the rest on the next polls (v3).
    One,
}

#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub serial: String,
    pub listed: Vec<Listed>,
    /// The owner of a paired device: its user and structure buckets are created when missing.
    pub owner: Option<String>,
    /// A device waiting for pairing to complete: it may subscribe but writes nothing.
    pub read_only: bool,
    /// `X-nl-weave-device-id`, stored on every bucket the device writes.
    pub weave_device_id: Option<Value>,
    pub scope: Scope,
    pub batch: Batch,
}

#[derive(Debug)]
pub struct SubscribeReply {
    /// Buckets to send now, in order. Empty: nothing newer, hold.
    pub send: Vec<(String, Arc<Bucket>)>,
    /// With [`Batch::One`]: more buckets are newer than the device's and wait for the next poll.
    pub more: bool,
    /// What a held response needs to decide on pushes.
    pub hold: HoldState,
}

impl Planner for SubscribeRequest {
    type Reply = SubscribeReply;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, ctx: &Context) -> Result<Plan<SubscribeReply>, Self::Refusal> {
        let mut draft = Draft::new(state, ctx);
        let mut ledger = Ledger::new(&state.pending);
        if !self.read_only {
            for listed in &self.listed {
                apply_device_values(&mut draft, &mut ledger, listed, &self.weave_device_id, ctx);
            }
        }
        let owned = match (&self.owner, self.read_only) {
            (Some(owner), false) => {
                let keys = pairing_keys(owner);
                // Built only when one is missing: this runs on every subscribe.
                if keys.iter().any(|k| draft.get(k).is_none()) {
                    for (key, fields) in pairing_buckets(&self.serial, owner) {
                        if draft.get(&key).is_none() {
                            if let Some(b) = write(None, fields, ctx.now_ms, Bump::IfChanged) {
                                draft.put(&key, b);
                            }
                        }
                    }
                }
                Some(keys)
            }
            _ => None,
        };
        let owned = owned.as_ref().map_or(&[][..], |k| &k[..]);

        // What the device holds, by key: listed versions, else (bare keys) what it was sent.
        let mut known = HoldState::with_capacity(self.listed.len(), self.scope == Scope::Listed);
        for listed in &self.listed {
            if let Some(v) = listed.version.or_else(|| state.sent.get(&listed.key).copied()) {
                known.remember(&listed.key, v);
            }
        }
        // Holding the current version, the device holds every pending field of the bucket. A
        // device listing bare keys holds what it was last sent: polling again, it had it.
        for listed in &self.listed {
            let (Some(device), Some(b)) = (known.known(&listed.key), draft.get(&listed.key)) else { continue };
            if ledger.get(&listed.key).is_some() && super::delivery::Pending::holds_current(device, Version::of(b)) {
                ledger.confirm(&listed.key);
            }
        }

        let mut send: Vec<(String, Arc<Bucket>)> = Vec::new();
        for listed in &self.listed {
            if send.iter().any(|(k, _)| *k == listed.key) {
                continue;
            }
            let Some(b) = draft.get(&listed.key) else { continue };
            let qualifies = match known.known(&listed.key) {
                Some(device) => server_is_newer(Version::of(b), device),
                // First contact with a device that lists bare keys: it needs the bucket once to
                // fill its store — but never an empty value, whose body would read as a tickle.
                None => b.timestamp != 0 && !b.value.is_empty(),
            };
            if qualifies {
                send.push((listed.key.clone(), b.clone()));
            }
        }
        if self.scope == Scope::WithPairing {
            for key in owned {
                if send.iter().any(|(k, _)| k == key) {
                    continue;
                }
                let Some(b) = draft.get(key) else { continue };
                let forced = !state.structure_sent && key.starts_with("structure.");
                if forced || server_is_newer(Version::of(b), known.known(key).unwrap_or(Version::NONE)) {
                    send.push((key.clone(), b.clone()));
                }
            }
        }
        // A bare key the device was never sent is listed all the same: a bucket written under
        // it during the hold wakes it (the next poll then applies the first-contact rule).
        for listed in &self.listed {
            known.remember(&listed.key, Version::NONE);
        }
        let more = self.batch == Batch::One && send.len() > 1;
        if self.batch == Batch::One {
            send.truncate(1);
        }

        let mut sent = Vec::new();
        let mut structure_sent = false;
        for (key, b) in &send {
            let version = Version::of(b);
            known.set_known(key, version);
            if self.listed.iter().any(|l| l.key == *key && l.version.is_none()) {
                sent.push((key.clone(), version));
            }
            ledger.sent(key, version, carries_flag(&b.value));
            structure_sent |= key.starts_with("structure.") && owned.contains(key);
        }
        let mut plan = Plan::new(Origin::Device, SubscribeReply { send, more, hold: known });
        plan.sent = sent;
        plan.structure_sent = structure_sent;
        (plan.pending, plan.event) = ledger.finish();
        draft.finish(&mut plan);
        Ok(plan)
    }
}

/// Whether a pushed value asks the device to acknowledge it.
pub fn carries_flag(value: &Fields) -> bool {
    value.get(PENDING_FLAG) == Some(&Value::Bool(true))
}

/// Values a device carries inside its subscribe (objects dialect): an inline update (revision
/// and timestamp 0), the acknowledgement of a push, or a copy newer than the server's.
fn apply_device_values(
    draft: &mut Draft<'_>,
    ledger: &mut Ledger,
    listed: &Listed,
    weave: &Option<Value>,
    ctx: &Context,
) {
    let Some(fields) = listed.value.as_ref().filter(|v| !v.is_empty()) else { return };
    let device = listed.version.unwrap_or(Version::NONE);
    let key = listed.key.as_str();
    let existing = draft.get(key).cloned();
    let current = existing.as_deref().map_or(Version::NONE, Version::of);
    let before = ledger.clone();
    let with_weave = |mut f: Fields| {
        if let Some(w) = weave {
            f.insert("weave_device_id".into(), w.clone());
        }
        f
    };
    let value = |merge: &Fields| merged(existing.as_deref().map(|e| &e.value), merge);
    let bucket = if device == Version::NONE {
        let merge = ledger.report(key, with_weave(fields.clone()), current, false);
        write(existing.as_deref(), value(&merge), ctx.now_ms, Bump::IfChanged)
    } else if key.starts_with("shared.") && fields.get(PENDING_FLAG) == Some(&Value::Bool(false)) {
        // Only an acknowledgement of the current version clears the flag; an older one gets
        // the newer bucket in the reply.
        if device.timestamp < current.timestamp {
            return;
        }
        ledger.confirm(key);
        let mut ack = Fields::new();
        ack.insert(PENDING_FLAG.into(), Value::Bool(false));
        let merge = ledger.report(key, ack, current, false);
        write(existing.as_deref(), value(&merge), ctx.now_ms, Bump::IfChanged)
    } else if device.timestamp > current.timestamp {
        let merge = ledger.report(key, fields.clone(), current, true);
        adopt(existing.as_deref(), value(&merge), device, ctx.now_ms)
    } else {
        None
    };
    if let Some(b) = bucket {
        if draft.put(key, b).is_none() {
            // Refused: what it did to the pending commands is undone with it.
            *ledger = before;
        }
    }
}
