//! Delivery a user can trust: a command stays *pending* until the thermostat confirms it, a
//! change made on the thermostat after the command wins over it, and a command that never
//! went out expires instead of surprising someone hours later.
//!
//! A pending field is **confirmed** when the thermostat
//! - lists the bucket in a subscribe at a version at least as new as the server's (a device
//!   listing bare keys, firmware 4.3.3, holds what it was last sent: it confirms by polling
//!   again after that version went out),
//! - reports the commanded value for it, or
//! - acknowledges (`target_change_pending: false`) the last push it was sent, every earlier
//!   push carrying the flag acknowledged too (`base_object_revision` is never compared:
//!   firmware and other clients send 0 there).
//!
//! It is **overridden** when the thermostat reports a different value *and* says the change
//! was made on it after the command (`touched_by.touched_at` not before the command's second,
//! by the dial or the schedule). A report of another value without that proof settles the
//! command in the thermostat's favour (as confirmed, with its value) only once the thermostat
//! had the command: a version carrying it was sent, and a setpoint's push was acknowledged
//! (before that, such a report is a stale echo of a schedule transition). Otherwise — the
//! full-state upload after a reboot repeats old values — the command stays pending: the value
//! is remembered as the thermostat's last report and the bucket keeps the commanded value.
//!
//! It **expires** when no version carrying it was ever sent on a subscribe and its time is up
//! (setpoints and mode after [`Expiry::setpoint_ms`], other settings after
//! [`Expiry::other_ms`]): the thermostat's last reported value is written back.

use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use super::report::{Resolution, announce};
use super::version::{Version, server_is_newer};
use crate::domain::bucket::Fields;

pub const PENDING_FLAG: &str = "target_change_pending";

/// Fields whose commands expire soonest: a setpoint or mode from half an hour ago is no longer
/// what anyone wants.
const SETPOINT_FIELDS: [&str; 4] =
    ["target_temperature", "target_temperature_low", "target_temperature_high", "target_temperature_type"];

/// `touched_by` values that mean the cloud (roost) made the change, not the thermostat.
const TOUCHED_BY_REMOTE: i64 = 3;

/// How long a command that was never sent stays pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub setpoint_ms: i64,
    pub other_ms: i64,
}

impl Default for Expiry {
    fn default() -> Self {
        Self { setpoint_ms: 30 * 60 * 1000, other_ms: 6 * 3600 * 1000 }
    }
}

impl Expiry {
    fn of(&self, field: &str) -> i64 {
        if SETPOINT_FIELDS.contains(&field) { self.setpoint_ms } else { self.other_ms }
    }
}

/// One commanded field the thermostat has not confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingField {
    pub value: Value,
    /// The thermostat's last reported value (what expiry writes back); `None` when it had none.
    pub previous: Option<Value>,
    /// When the command was committed, ms.
    pub at_ms: i64,
    /// The bucket's timestamp after the command: the field was sent once a version at least
    /// this new went out.
    pub version_ts: i64,
    /// The command asked the display to confirm (`target_change_pending: true`): until the
    /// thermostat acknowledges, reports of another value are stale echoes.
    pub awaits_ack: bool,
}

/// The unconfirmed commands of one bucket.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pending {
    pub fields: IndexMap<String, PendingField>,
    /// Pushes carrying `target_change_pending: true` not acknowledged yet.
    pub acks_due: u32,
    /// Timestamp of the newest version sent on a subscribe (0: never sent).
    pub sent_ts: i64,
}

/// What a thermostat's report (a PUT, or values in a subscribe) does to a pending bucket.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// The fields to store; held-back ones are left out.
    pub merge: Fields,
    pub confirmed: Fields,
    /// The thermostat's values that won over a command.
    pub overridden: Fields,
    /// The record afterwards (`None`: nothing pending any more).
    pub record: Option<Pending>,
}

impl Pending {
    /// Records a command that wrote `fields` over `before` (the bucket's value until then),
    /// committed at `at_ms` as the version with timestamp `version_ts`.
    pub fn command(&mut self, fields: &Fields, before: Option<&Fields>, at_ms: i64, version_ts: i64) {
        let awaits_ack = fields.get(PENDING_FLAG) == Some(&Value::Bool(true));
        for (name, value) in fields.iter().filter(|(name, _)| *name != PENDING_FLAG) {
            // A command over a pending one keeps what the thermostat last reported.
            let previous = match self.fields.get(name) {
                Some(f) => f.previous.clone(),
                None => before.and_then(|b| b.get(name)).cloned(),
            };
            self.fields
                .insert(name.clone(), PendingField { value: value.clone(), previous, at_ms, version_ts, awaits_ack });
        }
    }

    /// Whether a version carrying this field has gone out on a subscribe.
    pub fn was_sent(&self, field: &PendingField) -> bool {
        self.sent_ts >= field.version_ts
    }

    /// A version of the bucket went out on a subscribe. Returns whether the record changed.
    pub fn sent(&mut self, version: Version, carries_flag: bool) -> bool {
        if version.timestamp <= self.sent_ts {
            return false;
        }
        self.sent_ts = version.timestamp;
        if carries_flag {
            self.acks_due = self.acks_due.saturating_add(1);
        }
        true
    }

    /// The device listed the bucket at `device`: holding the current version, it holds every
    /// pending field.
    pub fn holds_current(device: Version, current: Version) -> bool {
        device.timestamp != 0 && !server_is_newer(current, device)
    }

    /// Fields never sent whose time is up.
    pub fn expired(&self, now_ms: i64, expiry: &Expiry) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(name, f)| !self.was_sent(f) && now_ms >= f.at_ms.saturating_add(expiry.of(name)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The soonest time a field of this record can expire (`None` once every field was sent).
    pub fn expires_at(&self, expiry: &Expiry) -> Option<i64> {
        self.fields
            .iter()
            .filter(|(_, f)| !self.was_sent(f))
            .map(|(name, f)| f.at_ms.saturating_add(expiry.of(name)))
            .min()
    }

    /// The commanded values, by field.
    pub fn values(&self) -> Fields {
        self.fields.iter().map(|(k, f)| (k.clone(), f.value.clone())).collect()
    }

    /// Whether a setpoint or mode is among the pending fields.
    pub fn has_setpoint(&self) -> bool {
        self.fields.keys().any(|k| SETPOINT_FIELDS.contains(&k.as_str()))
    }

    /// The thermostat reports `fields` for a bucket whose current version is `current`.
    /// `later` says the report is known to be newer than every command (the device holds a
    /// copy newer than the server's), so it wins like a change made on the dial.
    pub fn report(pending: Option<&Pending>, fields: Fields, current: Version, later: bool) -> Report {
        let Some(before) = pending else {
            return Report { merge: fields, ..Report::default() };
        };
        let mut p = before.clone();
        let local_change_s = if later { Some(i64::MAX) } else { touched_locally_at_s(&fields) };
        let ack = fields.get(PENDING_FLAG) == Some(&Value::Bool(false));
        if ack {
            p.acks_due = p.acks_due.saturating_sub(1);
        }
        // It acknowledged the newest push it was sent, and that push was the current version.
        let ack_confirms = ack && p.acks_due == 0 && p.sent_ts != 0 && p.sent_ts >= current.timestamp;
        let mut out = Report::default();
        let mut flag = None;
        for (name, value) in fields {
            if name == PENDING_FLAG {
                flag = Some(value);
                continue;
            }
            let sent_ts = p.sent_ts;
            let acks_due = p.acks_due;
            let Some(field) = p.fields.get_mut(&name) else {
                out.merge.insert(name, value);
                continue;
            };
            let had_it = sent_ts >= field.version_ts && !(field.awaits_ack && acks_due > 0);
            if value != field.value && local_change_s.is_some_and(|at| at >= field.at_ms.div_euclid(1000)) {
                out.overridden.insert(name.clone(), value.clone());
            } else if value == field.value || ack_confirms || had_it {
                // The thermostat had the command: what it reports now is what it holds (firmware
                // may rewrite what it applies, like a schedule's continuation entries).
                out.confirmed.insert(name.clone(), value.clone());
            } else {
                field.previous = Some(value);
                continue;
            }
            p.fields.shift_remove(&name);
            out.merge.insert(name, value);
        }
        if ack_confirms {
            out.confirmed.extend(p.values());
            p.fields.clear();
        }
        if let Some(flag) = flag {
            // While a command is pending the stored flag stays set, so the push lights the display.
            if p.fields.is_empty() || flag != Value::Bool(false) {
                out.merge.insert(PENDING_FLAG.into(), flag);
            }
        }
        out.record = (!p.fields.is_empty()).then_some(p);
        out
    }

    /// Durable form (a JSON object).
    pub fn to_json(&self) -> Value {
        let fields: Map<String, Value> = self
            .fields
            .iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    json!({
                        "value": f.value, "previous": f.previous, "at_ms": f.at_ms,
                        "version_ts": f.version_ts, "awaits_ack": f.awaits_ack,
                    }),
                )
            })
            .collect();
        json!({"fields": fields, "acks_due": self.acks_due, "sent_ts": self.sent_ts})
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        let mut fields = IndexMap::new();
        for (k, f) in v.get("fields")?.as_object()? {
            fields.insert(
                k.clone(),
                PendingField {
                    value: f.get("value")?.clone(),
                    previous: f.get("previous").filter(|p| !p.is_null()).cloned(),
                    at_ms: f.get("at_ms")?.as_i64()?,
                    version_ts: f.get("version_ts")?.as_i64()?,
                    awaits_ack: f.get("awaits_ack").and_then(Value::as_bool).unwrap_or(false),
                },
            );
        }
        Some(Self {
            fields,
            acks_due: v.get("acks_due").and_then(Value::as_u64).map_or(0, |n| n.min(u32::MAX as u64) as u32),
            sent_ts: v.get("sent_ts").and_then(Value::as_i64).unwrap_or(0),
        })
    }
}

/// What clients are shown of a device's pending commands (`/status`, `/api/devices`, MQTT).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// Commanded values by bucket field (`target_temperature`, `fan_timer_timeout`, …).
    pub fields: Fields,
    pub since_ms: Option<i64>,
    /// When the soonest command expires unless it is sent first; `None` once all were sent.
    pub expires_ms: Option<i64>,
}

impl Summary {
    pub fn of(pending: &super::plan::PendingMap, expiry: &Expiry) -> Self {
        let mut out = Summary::default();
        for p in pending.values() {
            out.fields.extend(p.values());
            let since = p.fields.values().map(|f| f.at_ms).min();
            out.since_ms = match (out.since_ms, since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            out.expires_ms = match (out.expires_ms, p.expires_at(expiry)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out
    }

    /// `{"fields": {…}, "since": <ISO 8601>, "expires": <ISO 8601 or null>}` while something is
    /// pending.
    pub fn to_json(&self) -> Option<Value> {
        let iso = |ms: Option<i64>| ms.map(crate::domain::time::iso8601);
        (!self.fields.is_empty())
            .then(|| json!({"fields": self.fields, "since": iso(self.since_ms), "expires": iso(self.expires_ms)}))
    }
}

/// The pending records of one device while a plan is built: what changed, and how commands
/// were resolved (for the event stream).
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    records: super::plan::PendingMap,
    changed: Vec<(String, bool)>,
    resolutions: Vec<Resolution>,
}

impl Ledger {
    pub fn new(records: &super::plan::PendingMap) -> Self {
        Self { records: records.clone(), changed: Vec::new(), resolutions: Vec::new() }
    }

    pub fn get(&self, key: &str) -> Option<&Pending> {
        self.records.get(key)
    }

    /// Whether the device does not hold a command on `key` yet.
    pub fn behind(&self, key: &str) -> bool {
        self.records.contains_key(key)
    }

    fn set(&mut self, key: &str, record: Option<Pending>, visible: bool) {
        if self.records.get(key) == record.as_ref() {
            return;
        }
        match record {
            Some(p) => self.records.insert(key.to_string(), p),
            None => self.records.shift_remove(key),
        };
        match self.changed.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 |= visible,
            None => self.changed.push((key.to_string(), visible)),
        }
    }

    /// The device reports `fields` for `key`; returns the fields to store.
    pub fn report(&mut self, key: &str, fields: Fields, current: Version, later: bool) -> Fields {
        let report = Pending::report(self.records.get(key), fields, current, later);
        let resolved = Resolution::of(key, &report);
        let visible = !resolved.is_empty();
        self.resolutions.extend(resolved);
        self.set(key, report.record, visible);
        report.merge
    }

    /// The device holds the current version of `key`: every pending field is confirmed.
    pub fn confirm(&mut self, key: &str) {
        let Some(p) = self.records.get(key) else { return };
        let fields = p.values();
        self.resolutions.push(Resolution { key: key.to_string(), state: "confirmed", fields, restored: None });
        self.set(key, None, true);
    }

    /// A command wrote `fields` over `before`, as the version with timestamp `version_ts`.
    pub fn command(&mut self, key: &str, fields: &Fields, before: Option<&Fields>, at_ms: i64, version_ts: i64) {
        let mut p = self.records.get(key).cloned().unwrap_or_default();
        p.command(fields, before, at_ms, version_ts);
        self.set(key, (!p.fields.is_empty()).then_some(p), true);
    }

    /// A version of `key` went out on a subscribe.
    pub fn sent(&mut self, key: &str, version: Version, carries_flag: bool) {
        let Some(mut p) = self.records.get(key).cloned() else { return };
        if p.sent(version, carries_flag) {
            self.set(key, Some(p), false);
        }
    }

    /// Expired fields of `key` were written back with `restored`.
    pub fn expired(&mut self, key: &str, fields: &[String], restored: Fields) {
        let Some(mut p) = self.records.get(key).cloned() else { return };
        let commanded: Fields =
            fields.iter().filter_map(|name| p.fields.shift_remove(name).map(|f| (name.clone(), f.value))).collect();
        self.resolutions.push(Resolution {
            key: key.to_string(),
            state: "expired",
            fields: commanded,
            restored: Some(restored),
        });
        self.set(key, (!p.fields.is_empty()).then_some(p), true);
    }

    /// The pending updates and the event announcing what was resolved.
    pub fn finish(self) -> (Vec<super::plan::PendingUpdate>, Option<super::plan::Event>) {
        let updates = self
            .changed
            .into_iter()
            .map(|(key, visible)| super::plan::PendingUpdate { record: self.records.get(&key).cloned(), key, visible })
            .collect();
        (updates, announce(&self.resolutions))
    }
}

/// When the thermostat says a change was made on it (dial or schedule), in its seconds:
/// `touched_by` as the object the firmware writes (`{"touched_by": 2, "touched_at": <s>}`), or
/// as two top-level fields. The firmware's clock counts seconds, so a change in the same second
/// as a command counts as after it.
fn touched_locally_at_s(fields: &Fields) -> Option<i64> {
    let (by, at) = match fields.get("touched_by") {
        Some(Value::Object(t)) => (t.get("touched_by"), t.get("touched_at")),
        Some(by @ Value::Number(_)) => (Some(by), fields.get("touched_at")),
        _ => return None,
    };
    let by = by.and_then(Value::as_i64)?;
    let at = at.and_then(Value::as_f64).filter(|s| s.is_finite())?;
    (by != TOUCHED_BY_REMOTE).then_some(at as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    /// A setpoint commanded at t=10 000 ms over 20.0, committed as the version at ts 10 000.
    fn commanded() -> Pending {
        let mut p = Pending::default();
        p.command(
            &f(json!({"target_temperature": 23.0, "target_change_pending": true})),
            Some(&f(json!({"target_temperature": 20.0, "target_change_pending": false}))),
            10_000,
            10_000,
        );
        p
    }

    const CURRENT: Version = Version { revision: 6, timestamp: 10_000 };

    #[test]
    fn a_command_records_its_fields_but_not_the_flag() {
        let p = commanded();
        assert_eq!(p.values(), f(json!({"target_temperature": 23.0})));
        assert_eq!(p.fields["target_temperature"].previous, Some(json!(20.0)));
        let mut again = p.clone();
        again.command(
            &f(json!({"target_temperature": 24.0})),
            Some(&f(json!({"target_temperature": 23.0}))),
            11_000,
            11_000,
        );
        assert_eq!(again.fields["target_temperature"].previous, Some(json!(20.0)), "still the thermostat's value");
    }

    #[test]
    fn an_acknowledgement_with_base_revision_zero_confirms_the_push_it_answers() {
        let mut p = commanded();
        assert!(p.sent(CURRENT, true));
        let r = Pending::report(Some(&p), f(json!({"target_change_pending": false})), CURRENT, false);
        assert_eq!(r.record, None, "confirmed: nothing left to push");
        assert_eq!(r.confirmed, f(json!({"target_temperature": 23.0})));
        assert_eq!(r.merge, f(json!({"target_change_pending": false})));
    }

    #[test]
    fn an_acknowledgement_of_an_older_push_leaves_the_newer_command_pending() {
        let mut p = commanded();
        p.sent(Version::new(5, 9_000), true);
        // A newer command (the current version) went out too before the acknowledgement came.
        p.sent(CURRENT, true);
        let r = Pending::report(Some(&p), f(json!({"target_change_pending": false})), CURRENT, false);
        assert!(r.confirmed.is_empty());
        assert!(r.merge.is_empty(), "the stored flag stays set");
        let left = r.record.unwrap();
        assert_eq!(left.acks_due, 1);
        let r = Pending::report(Some(&left), f(json!({"target_change_pending": false})), CURRENT, false);
        assert_eq!(r.record, None, "the second acknowledgement confirms it");
    }

    #[test]
    fn an_acknowledgement_of_a_version_that_was_never_sent_confirms_nothing() {
        let p = commanded();
        let r = Pending::report(Some(&p), f(json!({"target_change_pending": false})), CURRENT, false);
        assert!(r.record.is_some());
    }

    #[test]
    fn a_reboot_upload_repeating_old_values_leaves_the_command_pending() {
        let p = commanded();
        let upload = f(json!({
            "target_temperature": 20.0, "target_change_pending": false, "current_temperature": 19.5,
            "touched_by": {"touched_by": 2, "touched_at": 5}
        }));
        let r = Pending::report(Some(&p), upload, CURRENT, false);
        assert_eq!(r.merge, f(json!({"current_temperature": 19.5, "touched_by": {"touched_by": 2, "touched_at": 5}})));
        let left = r.record.unwrap();
        assert_eq!(left.fields["target_temperature"].value, json!(23.0));
        assert_eq!(left.fields["target_temperature"].previous, Some(json!(20.0)));
    }

    #[test]
    fn a_dial_change_after_the_command_wins() {
        let p = commanded();
        let dial = f(json!({"target_temperature": 18.0, "touched_by": {"touched_by": 2, "touched_at": 11}}));
        let r = Pending::report(Some(&p), dial, CURRENT, false);
        assert_eq!(r.overridden, f(json!({"target_temperature": 18.0})));
        assert_eq!(r.merge["target_temperature"], json!(18.0));
        assert_eq!(r.record, None);
        // The same report from before the command, or made remotely, does not win.
        let old = f(json!({"target_temperature": 18.0, "touched_by": {"touched_by": 2, "touched_at": 9}}));
        assert!(Pending::report(Some(&p), old, CURRENT, false).record.is_some());
        let remote = f(json!({"target_temperature": 18.0, "touched_by": 3, "touched_at": 11}));
        assert!(Pending::report(Some(&p), remote, CURRENT, false).record.is_some());
    }

    #[test]
    fn once_the_thermostat_had_a_command_its_report_settles_it() {
        // A schedule: no display acknowledgement; the firmware rewrites what it applies.
        let mut p = Pending::default();
        let schedule = f(json!({"days": {"0": {"0": {"time": 21600}}}}));
        p.command(&schedule, None, 10_000, 10_000);
        let rewritten = f(json!({"days": {"0": {"0": {"time": 21600, "entry_type": "setpoint"}}}}));
        let before_send = Pending::report(Some(&p), rewritten.clone(), CURRENT, false);
        assert!(before_send.record.is_some(), "not sent yet: held");
        p.sent(CURRENT, false);
        let r = Pending::report(Some(&p), rewritten.clone(), CURRENT, false);
        assert_eq!((r.record, r.confirmed), (None, rewritten));
        // A setpoint sent but not acknowledged: another value is a stale echo, held.
        let mut sp = commanded();
        sp.sent(CURRENT, true);
        let echo = Pending::report(Some(&sp), f(json!({"target_temperature": 20.0})), CURRENT, false);
        assert!(echo.record.is_some());
        assert!(echo.merge.is_empty());
    }

    #[test]
    fn reporting_the_commanded_value_confirms_it() {
        let p = commanded();
        let r = Pending::report(Some(&p), f(json!({"target_temperature": 23.0})), CURRENT, false);
        assert_eq!(r.confirmed, f(json!({"target_temperature": 23.0})));
        assert_eq!(r.record, None);
    }

    #[test]
    fn listing_the_current_version_holds_every_field() {
        assert!(Pending::holds_current(CURRENT, CURRENT));
        assert!(!Pending::holds_current(CURRENT.just_below(), CURRENT));
        assert!(!Pending::holds_current(Version::NONE, CURRENT));
    }

    #[test]
    fn only_fields_never_sent_expire_and_setpoints_first() {
        let mut p = commanded();
        p.command(&f(json!({"fan_mode": "on"})), None, 10_000, 10_000);
        let e = Expiry::default();
        assert!(p.expired(10_000 + e.setpoint_ms - 1, &e).is_empty());
        assert_eq!(p.expired(10_000 + e.setpoint_ms, &e), vec!["target_temperature".to_string()]);
        assert_eq!(p.expired(10_000 + e.other_ms, &e).len(), 2);
        assert_eq!(p.expires_at(&e), Some(10_000 + e.setpoint_ms));
        p.sent(CURRENT, true);
        assert!(p.expired(i64::MAX, &e).is_empty(), "sent commands do not expire");
        assert_eq!(p.expires_at(&e), None);
    }

    #[test]
    fn the_summary_shows_what_waits_and_until_when() {
        let mut map = super::super::plan::PendingMap::new();
        assert_eq!(Summary::of(&map, &Expiry::default()).to_json(), None);
        map.insert("shared.S".into(), commanded());
        let s = Summary::of(&map, &Expiry::default());
        assert_eq!(s.fields, f(json!({"target_temperature": 23.0})));
        assert_eq!((s.since_ms, s.expires_ms), (Some(10_000), Some(10_000 + 1_800_000)));
        assert_eq!(
            s.to_json(),
            Some(
                json!({"fields": {"target_temperature": 23.0}, "since": "1970-01-01T00:00:10.000Z", "expires": "1970-01-01T00:30:10.000Z"})
            )
        );
    }

    #[test]
    fn the_durable_form_round_trips() {
        let mut p = commanded();
        p.sent(CURRENT, true);
        assert_eq!(Pending::from_json(&p.to_json()), Some(p));
    }
}
