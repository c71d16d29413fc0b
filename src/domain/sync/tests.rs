//! The planners against the test vectors of `spec/nest-protocol-reference.md` §15 (TVnn),
//! `spec/v3-firmware.md` §7 (V3-nn) and the delivery rules of issue 8.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::domain::bucket::{Bucket, Entry, Fields, parse_entries};

const S: &str = "02AA01AC12345678";
const NOW: i64 = 1_760_000_500_000;

fn f(v: Value) -> Fields {
    v.as_object().cloned().unwrap()
}

fn shared() -> String {
    format!("shared.{S}")
}

fn device() -> String {
    format!("device.{S}")
}

fn state(buckets: &[(&str, i64, i64, Value)]) -> DeviceState {
    let mut s = DeviceState::default();
    for (k, rev, ts, v) in buckets {
        s.buckets.insert(
            k.to_string(),
            Arc::new(Bucket { revision: *rev, timestamp: *ts, value: f(v.clone()), updated_at: 0 }),
        );
    }
    s.usage = bounds::Usage::measure(s.buckets.values().map(|b| &**b));
    s
}

fn ctx(now: i64) -> Context {
    Context::new(now)
}

/// Installs a plan the way the store does (memory only).
fn apply<R>(state: &mut DeviceState, plan: &Plan<R>) {
    for (k, b) in &plan.writes {
        state.buckets.insert(k.clone(), b.clone());
    }
    for p in &plan.pending {
        match &p.record {
            Some(r) => state.pending.insert(p.key.clone(), r.clone()),
            None => state.pending.shift_remove(&p.key),
        };
    }
    if plan.restarted {
        state.sent.clear();
    }
    for (k, v) in &plan.sent {
        state.sent.insert(k.clone(), *v);
    }
    state.structure_sent |= plan.structure_sent;
    if let Some(u) = &plan.usage {
        state.usage = u.clone();
    }
}

fn put_entries(body: Value) -> Vec<Entry> {
    parse_entries(body.to_string().as_bytes(), true).unwrap().1
}

fn put(state: &DeviceState, body: Value, now: i64) -> Plan<PutReply> {
    PutRequest { entries: put_entries(body), weave_device_id: None }.plan(state, &ctx(now)).unwrap()
}

fn listed(key: &str, rev: i64, ts: i64) -> Listed {
    Listed { key: key.to_string(), version: Some(Version::new(rev, ts)), value: None }
}

fn bare(key: &str) -> Listed {
    Listed { key: key.to_string(), version: None, value: None }
}

fn subscribe(listed: Vec<Listed>) -> SubscribeRequest {
    SubscribeRequest {
        serial: S.into(),
        listed,
        owner: None,
        read_only: false,
        weave_device_id: None,
        scope: Scope::WithPairing,
        batch: Batch::All,
    }
}

fn v3(listed: Vec<Listed>) -> SubscribeRequest {
    SubscribeRequest { scope: Scope::Listed, batch: Batch::One, ..subscribe(listed) }
}

fn keys(send: &[(String, Arc<Bucket>)]) -> Vec<&str> {
    send.iter().map(|(k, _)| k.as_str()).collect()
}

fn command(state: &DeviceState, name: &str, value: Value, now: i64) -> Plan<CommandReply> {
    CommandRequest { serial: S.into(), name: name.into(), value, structure_id: "default".into() }
        .plan(state, &ctx(now))
        .unwrap()
}

/// A booted thermostat: shared rev 5 at 20 °C, device rev 3.
fn booted() -> DeviceState {
    state(&[
        (
            &shared(),
            5,
            1_760_000_000_000,
            json!({"target_temperature": 20.0, "target_change_pending": false, "can_heat": true, "can_cool": true}),
        ),
        (&device(), 3, 1_760_000_000_000, json!({"current_temperature": 21.5})),
    ])
}

// ---------------------------------------------------------------------------------------------
// Subscribe

#[test]
fn tv06_a_cold_device_gets_what_the_server_has_and_no_placeholder() {
    let s = state(&[(
        &shared(),
        5,
        1_760_000_000_000,
        json!({"target_temperature": 20.5, "target_temperature_type": "heat"}),
    )]);
    let plan = subscribe(vec![listed(&shared(), 0, 0), listed(&device(), 0, 0)]).plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(keys(&plan.reply.send), [shared()]);
    assert_eq!(plan.reply.send[0].1.revision, 5);
    assert!(plan.writes.is_empty(), "a listing writes nothing");
}

#[test]
fn tv07_an_up_to_date_device_is_held() {
    let s = state(&[(&shared(), 5, 1_760_000_000_000, json!({}))]);
    let plan = subscribe(vec![listed(&shared(), 5, 1_760_000_000_000)]).plan(&s, &ctx(NOW)).unwrap();
    assert!(plan.reply.send.is_empty());
    assert!(!plan.changes_something());
}

#[test]
fn tv10_equal_timestamps_push_only_a_higher_revision() {
    let s = state(&[(&shared(), 9, 1_760_000_000_000, json!({"name": "Hall"}))]);
    for (rev, push) in [(8, true), (9, false), (12, false)] {
        let plan = subscribe(vec![listed(&shared(), rev, 1_760_000_000_000)]).plan(&s, &ctx(NOW)).unwrap();
        assert_eq!(!plan.reply.send.is_empty(), push, "device rev {rev}");
    }
}

#[test]
fn tv11_a_device_ahead_is_held_and_nothing_changes() {
    let s = state(&[(&shared(), 9, 1_760_000_000_000, json!({}))]);
    let plan = subscribe(vec![listed(&shared(), 3, 1_760_000_500_000)]).plan(&s, &ctx(NOW)).unwrap();
    assert!(plan.reply.send.is_empty());
    assert!(plan.writes.is_empty());
}

#[test]
fn tv19_the_named_bucket_form_behaves_like_tv06() {
    let body = json!({"chunked": true, "session": "s",
        "device": {"object_key": device(), "object_revision": 0, "object_timestamp": 0},
        "shared": {"object_key": shared(), "object_revision": 0, "object_timestamp": 0}});
    let (_, entries) = parse_entries(body.to_string().as_bytes(), false).unwrap();
    let listed: Vec<Listed> = entries
        .into_iter()
        .map(|e| Listed { key: e.key, version: Some(Version::new(e.revision, e.timestamp)), value: e.value })
        .collect();
    let s = state(&[(&shared(), 5, 1_760_000_000_000, json!({"a": 1}))]);
    assert_eq!(keys(&subscribe(listed).plan(&s, &ctx(NOW)).unwrap().reply.send), [shared()]);
}

#[test]
fn tv20_an_inline_update_is_stored_and_the_reply_carries_the_updated_bucket() {
    let s = state(&[(&shared(), 1, 1_760_000_000_000, json!({"target_temperature": 20.0, "name": "Hall"}))]);
    let inline = Listed { value: Some(f(json!({"target_temperature": 22.0}))), ..listed(&shared(), 0, 0) };
    let plan = subscribe(vec![inline]).plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(plan.origin, Origin::Device);
    let (_, b) = &plan.writes[0];
    assert_eq!(b.value, f(json!({"target_temperature": 22.0, "name": "Hall"})));
    assert_eq!(b.revision, 2, "revision incremented");
    assert_eq!(plan.reply.send[0].1.value, b.value, "the reply carries the bucket after the update");
}

#[test]
fn an_acknowledgement_listed_at_the_current_version_clears_the_flag_and_keeps_the_version() {
    let s =
        state(&[(&shared(), 6, 1_760_000_000_000, json!({"target_temperature": 21.5, "target_change_pending": true}))]);
    let ack =
        Listed { value: Some(f(json!({"target_change_pending": false}))), ..listed(&shared(), 6, 1_760_000_000_000) };
    let plan = subscribe(vec![ack]).plan(&s, &ctx(NOW)).unwrap();
    let (_, b) = &plan.writes[0];
    assert_eq!(b.value["target_change_pending"], json!(false));
    assert_eq!(Version::of(b), Version::new(6, 1_760_000_000_000));
    assert!(plan.reply.send.is_empty());
}

#[test]
fn tv17_a_paired_device_gets_user_and_structure_in_one_answer_and_structure_once_per_start() {
    let mut s = booted();
    let mut req = subscribe(vec![listed(&shared(), 5, 1_760_000_000_000), listed(&device(), 3, 1_760_000_000_000)]);
    req.owner = Some("u1".into());
    let plan = req.clone().plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(keys(&plan.reply.send), ["user.u1", "structure.u1"]);
    assert_eq!(plan.reply.send[0].1.value, f(json!({"name": "u1"})));
    assert_eq!(plan.reply.send[1].1.value, f(json!({"name": "Home", "devices": [device()]})));
    assert!(plan.structure_sent);
    apply(&mut s, &plan);
    // Listed at their versions, nothing more is sent.
    let mut again = req.clone();
    for (k, b) in &plan.reply.send {
        again.listed.push(listed(k, b.revision, b.timestamp));
    }
    assert!(again.plan(&s, &ctx(NOW + 1000)).unwrap().reply.send.is_empty());
    // After a restart (structure not yet sent) the structure goes out again.
    s.structure_sent = false;
    let mut after_restart = req;
    after_restart.listed.push(listed("user.u1", 1, NOW));
    after_restart.listed.push(listed("structure.u1", 1, NOW));
    assert_eq!(keys(&after_restart.plan(&s, &ctx(NOW + 2000)).unwrap().reply.send), ["structure.u1"]);
}

#[test]
fn a_device_waiting_for_pairing_writes_nothing() {
    let s = state(&[]);
    let mut req = subscribe(vec![Listed { value: Some(f(json!({"a": 1}))), ..listed(&device(), 0, 0) }]);
    req.read_only = true;
    let plan = req.plan(&s, &ctx(NOW)).unwrap();
    assert!(plan.writes.is_empty());
}

// ---------------------------------------------------------------------------------------------
// PUT

#[test]
fn tv12_a_put_bumps_by_one_and_the_receipt_has_no_value() {
    let s = state(&[(&shared(), 9, 1_760_000_000_000, json!({"target_temperature": 20.0}))]);
    let body = json!({"session": "s", (shared()): {"object_key": shared(), "base_object_revision": 9, "if_object_revision": 9,
        "target_temperature": 22.0, "target_temperature_type": "heat"}});
    let plan = put(&s, body, NOW);
    let r = &plan.reply.receipts[0];
    assert_eq!((r.version, r.outcome, r.behind), (Version::new(10, NOW), Outcome::Changed, false));
    assert_eq!(plan.writes[0].1.value, f(json!({"target_temperature": 22.0, "target_temperature_type": "heat"})));
    assert_eq!(plan.origin, Origin::Device, "never pushed back to the device");
}

#[test]
fn tv13_a_cas_conflict_rejects_that_bucket_only() {
    let s = state(&[(&shared(), 11, 1_760_000_100_000, json!({"target_temperature": 19.0}))]);
    let body = json!({"session": "s",
        (shared()): {"object_key": shared(), "if_object_revision": 10, "target_temperature": 23.0},
        (device()): {"object_key": device(), "base_object_revision": 3, "current_humidity": 44}});
    let plan = put(&s, body, NOW);
    let receipts = &plan.reply.receipts;
    let conflict = receipts.iter().find(|r| r.key == shared()).unwrap();
    assert_eq!((conflict.version, conflict.outcome), (Version::new(11, 1_760_000_100_000), Outcome::Conflict));
    assert_eq!(keys(&plan.writes), [device()]);
    assert_eq!(plan.writes[0].1.value["current_humidity"], json!(44));
}

#[test]
fn tv14_tv15_the_objects_form_and_an_identical_repeat() {
    let body = json!({"session": "s", "objects": [{"object_key": device(), "base_object_revision": 14,
        "value": {"battery_level": 3.822, "current_humidity": 44}}]});
    let mut s = state(&[]);
    let first = put(&s, body.clone(), NOW);
    assert_eq!(first.reply.receipts.len(), 1);
    apply(&mut s, &first);
    let again = put(&s, body, NOW + 5000);
    assert!(again.writes.is_empty() && !again.changes_something());
    assert_eq!(again.reply.receipts[0].version, first.reply.receipts[0].version);
    assert_eq!(again.reply.receipts[0].outcome, Outcome::Unchanged);
}

#[test]
fn tv16_the_acknowledgement_clears_the_flag_and_is_not_pushed_back() {
    let mut s = booted();
    let cmd = command(&s, "set_temperature", json!(21.5), NOW);
    apply(&mut s, &cmd);
    let version = Version::of(&s.buckets[&shared()]);
    let sub = subscribe(vec![listed(&shared(), 5, 1_760_000_000_000)]).plan(&s, &ctx(NOW + 10)).unwrap();
    assert_eq!(keys(&sub.reply.send), [shared()], "pushed");
    apply(&mut s, &sub);
    let ack = put(
        &s,
        json!({"objects": [{"object_key": shared(), "base_object_revision": 6, "value": {"target_change_pending": false}}]}),
        NOW + 500,
    );
    assert_eq!(ack.reply.receipts[0].version, version, "revision and timestamp kept");
    apply(&mut s, &ack);
    assert_eq!(s.buckets[&shared()].value["target_change_pending"], json!(false));
    let next =
        subscribe(vec![listed(&shared(), version.revision, version.timestamp)]).plan(&s, &ctx(NOW + 900)).unwrap();
    assert!(next.reply.send.is_empty(), "target_change_pending: true is not sent again");
}

#[test]
fn values_are_stored_as_sent_and_limits_refuse_made_up_growth() {
    let mut c = ctx(NOW);
    c.bounds = bounds::Bounds { buckets: 1, fields: 2, bucket_bytes: 1024, device_bytes: 1024 };
    let s = state(&[(&device(), 1, 1000, json!({"a": 1}))]);
    let plan = PutRequest {
        entries: put_entries(json!({"objects": [
            {"object_key": shared(), "value": {"x": 1}},
            {"object_key": device(), "value": {"b": 2.0}},
            {"object_key": device(), "value": {"c": 3}}]})),
        weave_device_id: None,
    }
    .plan(&s, &c)
    .unwrap();
    let outcomes: Vec<Outcome> = plan.reply.receipts.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::Refused, Outcome::Changed, Outcome::Refused]);
    assert_eq!(plan.reply.receipts[0].version, Version::NONE);
    assert_eq!(plan.reply.receipts[2].version, Version::new(2, NOW), "the stored version");
    assert_eq!(serde_json::to_string(&plan.writes[0].1.value).unwrap(), r#"{"a":1,"b":2.0}"#);
}

// ---------------------------------------------------------------------------------------------
// Pushes and commands

#[test]
fn tv08_a_command_reaches_the_held_subscribe_with_the_display_flag() {
    let mut s = booted();
    let sub = subscribe(vec![listed(&shared(), 5, 1_760_000_000_000), listed(&device(), 3, 1_760_000_000_000)])
        .plan(&s, &ctx(NOW))
        .unwrap();
    let mut hold = sub.reply.hold;
    let cmd = command(&s, "set_temperature", json!(21.5), NOW + 10_000);
    apply(&mut s, &cmd);
    assert_eq!(cmd.origin, Origin::Command);
    let pushed = hold.push(&[Committed { origin: cmd.origin, buckets: &cmd.writes }]);
    assert_eq!(keys(&pushed), [shared()]);
    let b = &pushed[0].1;
    assert_eq!(Version::of(b), Version::new(6, NOW + 10_000));
    assert_eq!(b.value["target_temperature"], json!(21.5));
    assert_eq!(b.value["target_change_pending"], json!(true));
    assert_eq!(b.value["can_heat"], json!(true), "pushes carry the whole bucket");
}

#[test]
fn tv22_leaving_eco_writes_structure_and_device_in_one_change() {
    let mut s = booted();
    s.buckets.insert(
        "structure.default".into(),
        Arc::new(Bucket {
            revision: 4,
            timestamp: 1_760_000_000_000,
            value: f(json!({"manual_eco_all": true})),
            updated_at: 0,
        }),
    );
    let plan = command(&s, "set_away", json!(false), NOW);
    assert_eq!(keys(&plan.writes), ["structure.default", device().as_str()]);
    let structure = &plan.writes[0].1.value;
    assert_eq!((structure["manual_eco_all"].clone(), structure["away"].clone()), (json!(false), json!(false)));
    assert!(structure["manual_eco_timestamp"].as_i64().unwrap() < 10_000_000_000, "seconds");
    assert_eq!(plan.writes[1].1.value["eco"]["mode"], json!("schedule"));
}

#[test]
fn tv29_server_timestamps_are_milliseconds() {
    let plan = command(&booted(), "set_temperature", json!(21.0), NOW);
    assert!(plan.writes.iter().all(|(_, b)| b.timestamp > 1_000_000_000_000));
}

/// A schedule command replaces the whole bucket (what the old one had and the new one lacks
/// goes); a command on another bucket merges into it.
#[test]
fn a_schedule_replaces_its_bucket_while_shared_is_merged() {
    let schedule = format!("schedule.{S}");
    let mut s = booted();
    s.buckets.insert(
        schedule.clone(),
        Arc::new(Bucket {
            revision: 2,
            timestamp: 1_760_000_000_000,
            value: f(json!({"ver": 2, "schedule_mode": "HEAT", "name": "Winter", "days": {"1": {}}, "old_field": 1})),
            updated_at: 0,
        }),
    );
    let sent = json!({"ver": 2, "schedule_mode": "cool", "days": {"0": [{"type": "COOL", "time": 3600, "temp": 25}]}});
    let plan = command(&s, "set_schedule", sent, 1_760_000_001_000);
    apply(&mut s, &plan);
    let stored = &s.buckets[&schedule].value;
    assert!(stored.get("old_field").is_none(), "replaced, not merged: {stored:?}");
    assert_eq!(stored["schedule_mode"], json!("COOL"));
    let shared = &s.buckets[&shared()].value;
    assert_eq!(shared["schedule_mode"], json!("COOL"));
    assert_eq!(shared["target_temperature"], json!(20.0), "merged, not replaced");
}

#[test]
fn a_command_on_a_device_without_buckets_is_refused() {
    let r = CommandRequest {
        serial: S.into(),
        name: "set_temperature".into(),
        value: json!(20),
        structure_id: "default".into(),
    }
    .plan(&state(&[]), &ctx(NOW));
    assert_eq!(r.unwrap_err(), CommandRefusal::NotFound);
}

// ---------------------------------------------------------------------------------------------
// Delivery a user can trust

/// A booted thermostat with a held subscribe that was sent `set_temperature 23`.
fn pushed_command() -> (DeviceState, Version) {
    let mut s = booted();
    let cmd = command(&s, "set_temperature", json!(23.0), NOW);
    assert_eq!(cmd.pending[0].record.as_ref().unwrap().values(), f(json!({"target_temperature": 23.0})));
    apply(&mut s, &cmd);
    let sent = SentRequest::of(&cmd.writes).plan(&s, &ctx(NOW + 1)).unwrap();
    apply(&mut s, &sent);
    (s, Version::of(&cmd.writes[0].1))
}

#[test]
fn an_acknowledgement_with_base_object_revision_zero_is_answered_once_not_on_every_wake() {
    let (mut s, version) = pushed_command();
    let ack = put(
        &s,
        json!({"objects": [{"object_key": shared(), "base_object_revision": 0, "value": {"target_change_pending": false}}]}),
        NOW + 500,
    );
    let r = &ack.reply.receipts[0];
    assert!(!r.behind);
    assert_eq!(r.version, version, "the receipt names the pushed version");
    assert_eq!(ack.event.as_ref().unwrap().detail["state"], "confirmed");
    apply(&mut s, &ack);
    assert!(s.pending.is_empty());
    // The device resubscribes with what the receipt told it: nothing to send, on every wake.
    for wake in 1..4 {
        let sub = subscribe(vec![listed(&shared(), r.version.revision, r.version.timestamp)])
            .plan(&s, &ctx(NOW + wake * 1000))
            .unwrap();
        assert!(sub.reply.send.is_empty(), "wake {wake}");
    }
}

#[test]
fn an_acknowledgement_of_an_older_push_does_not_swallow_a_newer_command() {
    let (mut s, _) = pushed_command();
    let newer = command(&s, "set_temperature", json!(24.0), NOW + 100);
    apply(&mut s, &newer);
    let newest = Version::of(&newer.writes[0].1);
    let sent = SentRequest::of(&newer.writes).plan(&s, &ctx(NOW + 101)).unwrap();
    apply(&mut s, &sent);
    // The thermostat acknowledges the first push; the second is still on its way.
    let ack = put(
        &s,
        json!({"objects": [{"object_key": shared(), "base_object_revision": 6, "value": {"target_change_pending": false}}]}),
        NOW + 200,
    );
    let r = &ack.reply.receipts[0];
    assert!(r.behind);
    assert_eq!(r.version, newest.just_below(), "the newer push stays newer for the device");
    apply(&mut s, &ack);
    assert_eq!(s.buckets[&shared()].value["target_change_pending"], json!(true));
    // It applies the second push and acknowledges it: confirmed.
    let ack = put(
        &s,
        json!({"objects": [{"object_key": shared(), "base_object_revision": 7, "value": {"target_change_pending": false}}]}),
        NOW + 300,
    );
    assert_eq!(ack.reply.receipts[0].version, newest);
    apply(&mut s, &ack);
    assert!(s.pending.is_empty());
}

#[test]
fn a_full_state_upload_after_a_reboot_leaves_a_pending_command_pending() {
    let mut s = booted();
    let cmd = command(&s, "set_temperature", json!(23.0), NOW);
    apply(&mut s, &cmd);
    let upload = json!({"objects": [{"object_key": shared(), "base_object_revision": 0, "value": {
        "target_temperature": 20.0, "target_change_pending": false, "current_temperature": 19.0,
        "touched_by": {"touched_by": 2, "touched_at": (NOW - 3_600_000) / 1000}}}]});
    let plan = put(&s, upload, NOW + 60_000);
    let r = &plan.reply.receipts[0];
    assert!(r.behind, "the device still has to get the command");
    let stored = &plan.writes[0].1;
    assert_eq!(stored.value["target_temperature"], json!(23.0), "the commanded value stays");
    assert_eq!(stored.value["target_change_pending"], json!(true));
    assert_eq!(stored.value["current_temperature"], json!(19.0));
    assert_eq!(r.version, Version::of(stored).just_below());
    apply(&mut s, &plan);
    assert_eq!(s.pending[&shared()].fields["target_temperature"].previous, Some(json!(20.0)));
    // So the next subscribe pushes it.
    let sub = subscribe(vec![listed(&shared(), r.version.revision, r.version.timestamp)])
        .plan(&s, &ctx(NOW + 61_000))
        .unwrap();
    assert_eq!(sub.reply.send[0].1.value["target_temperature"], json!(23.0));
}

#[test]
fn a_dial_change_after_a_command_wins() {
    let (mut s, _) = pushed_command();
    let dial = json!({"objects": [{"object_key": shared(), "value": {
        "target_temperature": 18.5, "touched_by": {"touched_by": 2, "touched_at": NOW / 1000 + 5}}}]});
    let plan = put(&s, dial, NOW + 6000);
    assert!(!plan.reply.receipts[0].behind);
    assert_eq!(plan.writes[0].1.value["target_temperature"], json!(18.5));
    let event = plan.event.as_ref().unwrap();
    assert_eq!(event.detail["state"], "overridden");
    assert_eq!(event.detail["objects"][0]["fields"], json!({"target_temperature": 18.5}));
    apply(&mut s, &plan);
    assert!(s.pending.is_empty());
}

#[test]
fn listing_the_pushed_version_confirms_a_command() {
    let (s, version) = pushed_command();
    let plan =
        subscribe(vec![listed(&shared(), version.revision, version.timestamp)]).plan(&s, &ctx(NOW + 2000)).unwrap();
    assert_eq!(plan.pending[0].record, None);
    assert!(plan.pending[0].visible);
    assert_eq!(plan.event.unwrap().detail["objects"][0]["fields"], json!({"target_temperature": 23.0}));
}

#[test]
fn a_command_never_sent_expires_and_the_thermostats_values_come_back() {
    let mut s = booted();
    let fan = command(&s, "set_temperature", json!(23.0), NOW);
    apply(&mut s, &fan);
    let expiry = Expiry::default();
    let early = ExpireRequest.plan(&s, &ctx(NOW + expiry.setpoint_ms - 1)).unwrap();
    assert_eq!(early.reply, 0);
    assert!(!early.touches_storage());
    let plan = ExpireRequest.plan(&s, &ctx(NOW + expiry.setpoint_ms)).unwrap();
    assert_eq!(plan.reply, 1);
    let b = &plan.writes[0].1;
    assert_eq!(b.value["target_temperature"], json!(20.0));
    assert_eq!(b.value["target_change_pending"], json!(false));
    assert!(b.timestamp > s.buckets[&shared()].timestamp, "a new version, so the device is told");
    let event = plan.event.as_ref().unwrap();
    assert_eq!(event.detail["state"], "expired");
    assert_eq!(event.detail["objects"][0]["restored"], json!({"target_temperature": 20.0}));
    assert_eq!(plan.pending[0].record, None);
    // A command that was sent does not expire.
    let (sent, _) = pushed_command();
    assert_eq!(ExpireRequest.plan(&sent, &ctx(i64::MAX / 2)).unwrap().reply, 0);
}

// ---------------------------------------------------------------------------------------------
// v3 (spec/v3-firmware.md §7)

#[test]
fn v3_07_cas_on_a_nested_put_rejects_only_that_bucket() {
    let s = state(&[(&shared(), 5, 1000, json!({"a": 1}))]);
    let entries = vec![
        Entry {
            key: shared(),
            revision: 0,
            timestamp: 0,
            value: Some(f(json!({"a": 2}))),
            if_revision: Some(3),
            base_revision: None,
        },
        Entry {
            key: device(),
            revision: 0,
            timestamp: 0,
            value: Some(f(json!({"b": 1}))),
            if_revision: None,
            base_revision: None,
        },
    ];
    let plan = PutRequest { entries, weave_device_id: None }.plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(plan.reply.receipts[0].version, Version::new(5, 1000));
    assert_eq!(plan.reply.receipts[0].outcome, Outcome::Conflict);
    assert_eq!(keys(&plan.writes), [device()]);
}

#[test]
fn v3_13_14_bare_keys_get_each_bucket_once_then_hold() {
    let mut s = state(&[(&shared(), 5, 1_795_324_039_323, json!({"target_temperature": 21.5}))]);
    let first = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(keys(&first.reply.send), [shared()]);
    assert_eq!(Version::of(&first.reply.send[0].1), Version::new(5, 1_795_324_039_323));
    apply(&mut s, &first);
    let again = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW + 1)).unwrap();
    assert!(again.reply.send.is_empty(), "held");
}

#[test]
fn a_bare_key_device_is_not_sent_back_what_it_put() {
    let mut s = booted();
    let first = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
    apply(&mut s, &first);
    let second = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
    apply(&mut s, &second);
    let own = put(&s, json!({"objects": [{"object_key": shared(), "value": {"target_temperature": 19.0}}]}), NOW + 10);
    apply(&mut s, &own);
    assert!(v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW + 20)).unwrap().reply.send.is_empty());
}

#[test]
fn v3_15_a_change_during_a_bare_key_hold_wakes_it_and_the_next_poll_carries_it() {
    let mut s = booted();
    let sub = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
    apply(&mut s, &sub);
    let sub = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
    apply(&mut s, &sub);
    let held = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
    assert!(held.reply.send.is_empty());
    let mut hold = held.reply.hold;
    let cmd = command(&s, "set_temperature", json!(22.0), NOW + 1000);
    apply(&mut s, &cmd);
    assert!(!hold.push(&[Committed { origin: cmd.origin, buckets: &cmd.writes }]).is_empty(), "wake (tickle)");
    // The tickle sent nothing; the next poll carries the new version.
    let next = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW + 1100)).unwrap();
    assert_eq!(keys(&next.reply.send), [shared()]);
    assert_eq!(next.reply.send[0].1.revision, 6);
}

#[test]
fn v3_16_a_versioned_hold_gets_the_command() {
    let mut s = state(&[(&shared(), 1, 123, json!({"target_temperature": 20.0}))]);
    let held = v3(vec![listed(&shared(), 1, 123)]).plan(&s, &ctx(NOW)).unwrap();
    assert!(held.reply.send.is_empty());
    let mut hold = held.reply.hold;
    let cmd = command(&s, "set_temperature", json!(22), NOW);
    apply(&mut s, &cmd);
    let pushed = hold.push(&[Committed { origin: cmd.origin, buckets: &cmd.writes }]);
    let b = &pushed[0].1;
    assert_eq!(b.revision, 2);
    assert!(b.timestamp > 123);
    assert_eq!(serde_json::to_string(&b.value).unwrap(), r#"{"target_temperature":22.0,"target_change_pending":true}"#);
}

#[test]
fn v3_17_two_newer_buckets_go_out_on_successive_polls() {
    let mut s = booted();
    let first = v3(vec![listed(&shared(), 1, 100), listed(&device(), 1, 100)]).plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(keys(&first.reply.send), [shared()]);
    assert!(first.reply.more);
    apply(&mut s, &first);
    let sv = Version::of(&first.reply.send[0].1);
    let second =
        v3(vec![listed(&shared(), sv.revision, sv.timestamp), listed(&device(), 1, 100)]).plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(keys(&second.reply.send), [device()]);
    assert!(!second.reply.more);
}

#[test]
fn v3_18_user_and_structure_are_never_added_to_a_v3_answer() {
    let mut s = booted();
    let mut req = v3(vec![listed(&device(), 3, 1_760_000_000_000), listed(&shared(), 5, 1_760_000_000_000)]);
    req.owner = Some("u1".into());
    let plan = req.clone().plan(&s, &ctx(NOW)).unwrap();
    assert!(plan.reply.send.is_empty(), "{:?}", keys(&plan.reply.send));
    apply(&mut s, &plan);
    assert!(s.buckets.contains_key("user.u1"), "created for the entry answer");
    let pairing = PairRequest { serial: S.into(), owner: "u1".into() }.plan(&s, &ctx(NOW + 1)).unwrap();
    assert!(
        req.plan(&s, &ctx(NOW))
            .unwrap()
            .reply
            .hold
            .clone()
            .push(&[Committed { origin: pairing.origin, buckets: &pairing.writes }])
            .is_empty()
    );
}

#[test]
fn an_entry_is_a_restart_a_bare_key_device_gets_its_buckets_again() {
    let mut s = booted();
    for _ in 0..2 {
        let sub = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
        apply(&mut s, &sub);
    }
    assert!(v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap().reply.send.is_empty());
    let entry = EntryRequest { owner: None, inline_pairing: true }.plan(&s, &ctx(NOW)).unwrap();
    assert!(entry.restarted && entry.reply.is_empty() && !entry.changes_something());
    apply(&mut s, &entry);
    assert!(s.sent.is_empty(), "forgotten");
    let first = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(keys(&first.reply.send), [device()], "its store is filled again, one bucket per poll");
}

#[test]
fn buckets_an_entry_inlines_count_as_sent_so_commands_on_them_do_not_expire() {
    let mut s = booted();
    let owned = v3(vec![listed(&device(), 3, 1_760_000_000_000)]);
    let plan = SubscribeRequest { owner: Some("u1".into()), ..owned }.plan(&s, &ctx(NOW)).unwrap();
    apply(&mut s, &plan);
    let away =
        CommandRequest { serial: S.into(), name: "set_away".into(), value: json!(true), structure_id: "u1".into() }
            .plan(&s, &ctx(NOW + 10))
            .unwrap();
    assert_eq!(away.reply.object_key, "structure.u1");
    apply(&mut s, &away);
    let expiry = ctx(NOW).expiry;
    assert!(s.pending["structure.u1"].expires_at(&expiry).is_some(), "never sent: it would expire");

    let plain = EntryRequest { owner: Some("u1".into()), inline_pairing: false }.plan(&s, &ctx(NOW + 20)).unwrap();
    assert!(plain.reply.is_empty() && plain.pending.is_empty(), "nothing inline, nothing sent");
    let entry = EntryRequest { owner: Some("u1".into()), inline_pairing: true }.plan(&s, &ctx(NOW + 20)).unwrap();
    assert_eq!(keys(&entry.reply), ["user.u1", "structure.u1"]);
    assert_eq!(entry.reply[1].1.value["manual_eco_all"], json!(true), "the commanded value");
    apply(&mut s, &entry);
    assert_eq!(s.pending["structure.u1"].expires_at(&expiry), None, "sent: it no longer expires");
    let unowned = EntryRequest { owner: None, inline_pairing: true }.plan(&s, &ctx(NOW + 30)).unwrap();
    assert!(unowned.reply.is_empty());
}

#[test]
fn a_listing_with_values_counts_as_sent_one_without_does_not() {
    let mut s = booted();
    let cmd = command(&s, "set_temperature", json!(22.0), NOW);
    apply(&mut s, &cmd);
    let metadata = ListingRequest { values: false }.plan(&s, &ctx(NOW)).unwrap();
    assert_eq!(
        keys(&metadata.reply.iter().map(|(k, b)| (k.clone(), b.clone())).collect::<Vec<_>>()),
        [shared(), device()]
    );
    assert!(metadata.pending.is_empty());
    let values = ListingRequest { values: true }.plan(&s, &ctx(NOW)).unwrap();
    apply(&mut s, &values);
    let p = &s.pending[&shared()];
    assert_eq!((p.sent_ts, p.acks_due), (Version::of(&s.buckets[&shared()]).timestamp, 1), "its flag awaits an ack");
}

#[test]
fn a_bare_key_device_confirms_a_command_by_polling_again_after_it_went_out() {
    let mut s = booted();
    for _ in 0..2 {
        let sub = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW)).unwrap();
        apply(&mut s, &sub);
    }
    let cmd = CommandRequest {
        serial: S.into(),
        name: "set_device_setting".into(),
        value: json!({"temperature_scale": "F"}),
        structure_id: "default".into(),
    }
    .plan(&s, &ctx(NOW + 10))
    .unwrap();
    apply(&mut s, &cmd);
    let out = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW + 20)).unwrap();
    assert_eq!(keys(&out.reply.send), [device()]);
    assert!(out.event.is_none(), "sent, not confirmed yet");
    apply(&mut s, &out);
    assert!(s.pending.contains_key(&device()));
    let again = v3(vec![bare(&device()), bare(&shared())]).plan(&s, &ctx(NOW + 30)).unwrap();
    assert!(again.reply.send.is_empty());
    assert_eq!(again.event.as_ref().map(|e| e.detail["state"].clone()), Some(json!("confirmed")));
    apply(&mut s, &again);
    assert!(s.pending.is_empty());
}

#[test]
fn a_bare_key_never_sent_still_wakes_the_hold_when_its_bucket_is_written() {
    let mut s = state(&[(&device(), 1, 1_760_000_000_000, json!({}))]);
    let held = v3(vec![bare(&device())]).plan(&s, &ctx(NOW)).unwrap();
    assert!(held.reply.send.is_empty(), "an empty value is never a first contact");
    let mut hold = held.reply.hold;
    let cmd = CommandRequest {
        serial: S.into(),
        name: "set_device_setting".into(),
        value: json!({"temperature_scale": "F"}),
        structure_id: "default".into(),
    }
    .plan(&s, &ctx(NOW + 10))
    .unwrap();
    apply(&mut s, &cmd);
    assert_eq!(keys(&hold.push(&[Committed { origin: cmd.origin, buckets: &cmd.writes }])), [device()]);
    let next = v3(vec![bare(&device())]).plan(&s, &ctx(NOW + 20)).unwrap();
    assert_eq!(keys(&next.reply.send), [device()]);
}
