//! A device PUT: which buckets it writes, what each receipt says, and which keys the device is
//! behind on (`spec/nest-protocol-reference.md` §4.5, §8.4; `spec/device-protocol.md` §11).

use std::sync::Arc;

use serde_json::Value;

use super::delivery::Ledger;
use super::plan::{Context, DeviceState, Draft, Origin, Outcome, Plan, Planner};
use super::version::{Bump, Version, write};
use crate::domain::bucket::{Bucket, Entry, merged};

/// What a device PUT carries, parsed by its dialect.
#[derive(Debug, Clone, Default)]
pub struct PutRequest {
    /// In request order; entries without a value write nothing and get no receipt.
    pub entries: Vec<Entry>,
    /// `X-nl-weave-device-id`, stored on every bucket written.
    pub weave_device_id: Option<Value>,
}

/// The receipt of one bucket: metadata only, never data the device did not send.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub key: String,
    /// What to tell the device it now holds.
    pub version: Version,
    pub outcome: Outcome,
    /// The server holds a change the device has not confirmed: `version` is just below the
    /// server's, so that change still reaches it.
    pub behind: bool,
    /// The bucket as stored after the PUT (absent when nothing is stored under the key).
    pub bucket: Option<Arc<Bucket>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutReply {
    pub receipts: Vec<Receipt>,
}

impl PutReply {
    /// Keys the device is behind on.
    pub fn behind(&self) -> impl Iterator<Item = &str> {
        self.receipts.iter().filter(|r| r.behind).map(|r| r.key.as_str())
    }
}

impl Planner for PutRequest {
    type Reply = PutReply;
    type Refusal = std::convert::Infallible;

    fn plan(self, state: &DeviceState, ctx: &Context) -> Result<Plan<PutReply>, Self::Refusal> {
        let mut draft = Draft::new(state, ctx);
        let mut ledger = Ledger::new(&state.pending);
        let mut receipts = Vec::with_capacity(self.entries.len());
        for entry in self.entries {
            let Some(mut fields) = entry.value.filter(|v| !v.is_empty()) else { continue };
            let key = entry.key;
            let existing = draft.get(&key).cloned();
            let current = existing.as_deref().map_or(Version::NONE, Version::of);
            if entry.if_revision.is_some_and(|expected| expected != current.revision) {
                // §4.5: no value in the reply; the device keeps its dirty fields and retries
                // with the current revision.
                receipts.push(Receipt {
                    key,
                    version: current,
                    outcome: Outcome::Conflict,
                    behind: false,
                    bucket: existing,
                });
                continue;
            }
            if let Some(weave) = &self.weave_device_id {
                fields.insert("weave_device_id".into(), weave.clone());
            }
            // What a refused write did to the pending commands is undone with it.
            let before = ledger.clone();
            let merge = ledger.report(&key, fields, current, false);
            let value = merged(existing.as_deref().map(|e| &e.value), &merge);
            let behind = ledger.behind(&key);
            let (outcome, bucket) = match write(existing.as_deref(), value, ctx.now_ms, Bump::IfChanged) {
                Some(b) => match draft.put(&key, b) {
                    Some(b) => (Outcome::Changed, Some(b)),
                    None => {
                        ledger = before;
                        receipts.push(refused(key, existing));
                        continue;
                    }
                },
                None => (Outcome::Unchanged, existing),
            };
            let version = bucket.as_deref().map_or(Version::NONE, Version::of);
            let version = if behind { version.just_below() } else { version };
            receipts.push(Receipt { key, version, outcome, behind, bucket });
        }
        // A device that lists bare keys must not be sent back what it just wrote.
        let given: Vec<(String, Version)> = receipts
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Changed | Outcome::Unchanged) && state.sent.contains_key(&r.key))
            .map(|r| (r.key.clone(), r.version))
            .collect();
        let mut plan = Plan::new(Origin::Device, PutReply { receipts });
        plan.sent = given;
        (plan.pending, plan.event) = ledger.finish();
        draft.finish(&mut plan);
        Ok(plan)
    }
}

/// Over a limit: nothing written; the receipt names what is stored (0/0 for nothing).
fn refused(key: String, bucket: Option<Arc<Bucket>>) -> Receipt {
    let version = bucket.as_deref().map_or(Version::NONE, Version::of);
    Receipt { key, version, outcome: Outcome::Refused, behind: false, bucket }
}
