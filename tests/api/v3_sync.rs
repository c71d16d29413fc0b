//! Thermostats on the v3 transport end to end, driven by the simulator as firmware 4.3.3 and
//! 4.0.6: boot, pairing, PUT, commands reaching a held subscribe, successive polls, delivery.
//! Every scenario ends by asserting the simulator saw nothing the real firmware would choke on.

use roost::sim::V3Thermostat;
use roost::sim::http::{Conn, Head, Request};
use roost::sim::v3::{Answer, Firmware};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::events::Stream;
use crate::helpers::*;

const BOTH: [Firmware; 2] = [Firmware::V43, Firmware::V40];

fn shared() -> String {
    format!("shared.{SERIAL}")
}

fn device() -> String {
    format!("device.{SERIAL}")
}

fn sim(app: &TestApp, firmware: Firmware) -> V3Thermostat {
    V3Thermostat::new(app.device.clone(), SERIAL, firmware)
}

/// Polls until the thermostat holds its device and shared buckets and has nothing left to PUT
/// (each poll answers at once while it does not: one bucket per answer).
pub async fn settle(t: &V3Thermostat) {
    let mine = [t.key("device"), t.key("shared")];
    for _ in 0..6 {
        if t.state().settled(&mine) {
            return;
        }
        // Each of these polls is answered at once; one that is held means the store was not filled.
        tokio::time::timeout(WAIT, t.subscribe_once()).await.expect("answered at once").expect("subscribe");
    }
    panic!("{:?} did not settle: {:?}", t.firmware, t.state());
}

/// A thermostat of `firmware` that has booted and settled, without faults.
async fn booted(app: &TestApp, firmware: Firmware) -> V3Thermostat {
    let t = sim(app, firmware);
    t.boot(21.5).await.expect("boot");
    settle(&t).await;
    no_faults(&t);
    t
}

pub fn no_faults(t: &V3Thermostat) {
    let s = t.state();
    assert!(s.faults.is_empty(), "{:?}: {:?}", t.firmware, s.faults);
}

async fn status(app: &TestApp) -> Value {
    app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap()
}

/// Opens a subscribe whose answer is awaited elsewhere (4.0.6 gets no head while it is held).
fn open(t: &V3Thermostat) -> tokio::task::JoinHandle<(Conn, Head)> {
    let t = t.clone();
    tokio::spawn(async move { t.open_subscribe().await.expect("subscribe") })
}

#[tokio::test]
async fn each_firmware_boots_settles_and_then_is_held() {
    for firmware in BOTH {
        let app = TestApp::start(&[]).await;
        let t = booted(&app, firmware).await;
        let s = t.state();
        assert_eq!(s.pushed_keys(), [device(), shared()], "{firmware:?}: one bucket per answer, in listed order");
        assert!(s.pushes.iter().all(|p| p.applied));
        let st = status(&app).await;
        assert_eq!(st["current_temperature"], json!(21.5), "{firmware:?}: {st}");
        assert_eq!(st["target_temperature"], json!(20.0));
        // Nothing newer: held. 4.3.3 gets its head at once (no bucket named), 4.0.6 nothing.
        let pending = open(&t);
        app.wait_held(1).await;
        match firmware {
            Firmware::V43 => {
                let (_, head) = pending.await.unwrap();
                assert!(head.header("x-nl-skv-key").is_none());
            }
            Firmware::V40 => {
                assert!(!pending.is_finished());
                pending.abort();
            }
        }
        no_faults(&t);
    }
}

#[tokio::test]
async fn a_command_reaches_a_held_4_3_subscribe_as_a_tickle_and_the_next_poll_carries_it() {
    let app = TestApp::start(&[]).await;
    let t = booted(&app, Firmware::V43).await;
    let (mut conn, head) = t.open_subscribe().await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head.header("x-nl-skv-key").is_none(), "headers at once, no bucket named");
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(app.command(SERIAL, "set_temperature", json!(22.5)).await.status(), 200);
    let body = tokio::time::timeout(WAIT, conn.read_body(&head)).await.unwrap().unwrap();
    assert!(body.is_empty(), "the tickle is an empty body: {body:?}");
    assert_eq!(status(&app).await["pending"]["fields"], json!({"target_temperature": 22.5}));

    let answer = t.subscribe_once().await.unwrap();
    assert_eq!(answer, Answer::Bucket { key: shared(), applied: true });
    let s = t.state();
    let push = s.pushes.last().unwrap();
    assert!(push.disable_defer, "a setpoint asks for confirmation without the defer window");
    assert_eq!(s.field(&shared(), "target_temperature"), Some(&json!(22.5)));
    // The simulator acknowledged it (target_change_pending: false): confirmed.
    assert!(status(&app).await.get("pending").is_none(), "{}", status(&app).await);
    assert!(t.state().dirty.is_empty());
    no_faults(&t);
}

#[tokio::test]
async fn a_command_reaches_a_held_4_0_subscribe_as_headers_on_data() {
    let app = TestApp::start(&[]).await;
    let t = booted(&app, Firmware::V40).await;
    let before = t.state().buckets[&shared()].clone();
    let pending = open(&t);
    app.wait_held(1).await;
    assert_eq!(app.command(SERIAL, "set_temperature", json!(22.0)).await.status(), 200);
    let (mut conn, head) = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(head.header("x-nl-skv-key"), Some(shared().as_str()));
    assert!(head.header("transfer-encoding").is_none(), "one complete response");
    assert_eq!(head.header("content-type"), Some("application/json; charset=utf-8"));
    let version: i64 = head.header("x-nl-skv-version").unwrap().parse().unwrap();
    let timestamp: i64 = head.header("x-nl-skv-timestamp").unwrap().parse().unwrap();
    assert_eq!(version, before.revision + 1);
    assert!(timestamp > before.timestamp);
    let body = conn.read_body(&head).await.unwrap();
    assert_eq!(body.len(), head.header("content-length").unwrap().parse::<usize>().unwrap());
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (value["target_temperature"].clone(), value["target_change_pending"].clone()),
        (json!(22.0), json!(true))
    );
    assert!(!String::from_utf8_lossy(&body).contains(": "), "compact");
    app.wait_held(0).await;
    // Delivered: it does not expire, and a poll with the new version holds.
    assert!(status(&app).await["pending"]["expires"].is_null(), "{}", status(&app).await);
    no_faults(&t);
}

#[tokio::test]
async fn two_changed_buckets_go_out_on_successive_polls() {
    for firmware in BOTH {
        let app = TestApp::start(&[]).await;
        let t = booted(&app, firmware).await;
        assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
        let scale = app.command(SERIAL, "set_device_setting", json!({"temperature_scale": "F"})).await;
        assert_eq!(scale.status(), 200, "{}", String::from_utf8_lossy(&scale.body));
        let first = t.subscribe_once().await.unwrap();
        let second = t.subscribe_once().await.unwrap();
        assert_eq!(
            (first, second),
            (Answer::Bucket { key: device(), applied: true }, Answer::Bucket { key: shared(), applied: true }),
            "{firmware:?}: one bucket per answer, in the order listed"
        );
        let s = t.state();
        assert_eq!(s.field(&shared(), "target_temperature"), Some(&json!(23.0)));
        assert_eq!(s.field(&device(), "temperature_scale"), Some(&json!("F")));
        assert!(status(&app).await.get("pending").is_none(), "{firmware:?}: both confirmed");
        no_faults(&t);
    }
}

#[tokio::test]
async fn a_running_thermostat_follows_commands_and_never_gets_user_or_structure_on_a_subscribe() {
    for firmware in BOTH {
        let app = TestApp::start(&["--connection-hold-timeout=0.5"]).await;
        let t = booted(&app, firmware).await;
        // Its own change (the dial) is stored and never sent back to it.
        t.set_local("shared", json!({"target_temperature": 18.0})).await.unwrap();
        assert_eq!(status(&app).await["target_temperature"], json!(18.0));
        let stop = CancellationToken::new();
        let task = t.run(stop.clone());
        for target in [19.0, 19.5, 20.5] {
            assert_eq!(app.command(SERIAL, "set_temperature", json!(target)).await.status(), 200);
            t.wait_for(WAIT, "the setpoint, acknowledged", |s| {
                s.field(&shared(), "target_temperature") == Some(&json!(target))
                    && s.field(&shared(), "target_change_pending") == Some(&json!(false))
                    && s.dirty.is_empty()
            })
            .await
            .unwrap();
        }
        t.wait_for(WAIT, "a hold timeout", |s| s.tickles >= 1).await.unwrap();
        stop.cancel();
        task.await.unwrap();
        let s = t.state();
        assert!(
            s.pushed_keys().iter().all(|k| *k == device() || *k == shared()),
            "{firmware:?}: only listed keys: {:?}",
            s.pushed_keys()
        );
        let setpoints = s.pushes.iter().filter(|p| p.key == shared()).count();
        assert_eq!(setpoints, 4, "{firmware:?}: the boot copy and each command once: {:?}", s.pushes);
        assert!(status(&app).await.get("pending").is_none());
        no_faults(&t);
    }
}

#[tokio::test]
async fn pairing_reaches_the_thermostat_through_entry_or_the_listing() {
    for firmware in BOTH {
        let app = TestApp::start(&["--require-device-pairing=true"]).await;
        let t = sim(&app, firmware);
        t.entry().await.unwrap();
        let (code, _) = t.wire().passphrase().await.unwrap();
        // Waiting for pairing: nothing it PUTs is accepted, and it keeps it to send again.
        t.boot(21.5).await.unwrap();
        let s = t.state();
        assert_eq!((s.unacknowledged, s.dirty.len()), (1, 2), "{firmware:?}: {s:?}");
        assert!(!keys_of(&app.listing_of(SERIAL).await).contains(&device()), "nothing stored");
        // Its subscribe is held, read-only.
        let pending = open(&t);
        app.wait_held(1).await;

        let r = app.control_post("/api/register", json!({"code": code, "userId": "alice"})).await;
        assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
        pending.abort();

        // 4.3.3 takes user and structure inline at its next entry, 4.0.6 from its listing.
        t.boot(21.5).await.unwrap();
        let s = t.state();
        assert_eq!(s.field("user.alice", "name"), Some(&json!("alice")), "{firmware:?}: {s:?}");
        assert_eq!(s.field("structure.alice", "devices"), Some(&json!([device()])));
        settle(&t).await;
        assert_eq!(status(&app).await["current_temperature"], json!(21.5), "{firmware:?}: stored once paired");
        no_faults(&t);
    }
}

#[tokio::test]
async fn an_acknowledgement_with_base_object_revision_zero_gets_the_push_once() {
    for firmware in BOTH {
        let app = TestApp::start(&["--connection-hold-timeout=0.3"]).await;
        let t = sim(&app, firmware).with_base_revision_zero();
        t.boot(21.5).await.unwrap();
        settle(&t).await;
        let stop = CancellationToken::new();
        let task = t.run(stop.clone());
        assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
        let acked = t
            .wait_for(WAIT, "the setpoint, acknowledged", |s| {
                s.field(&shared(), "target_temperature") == Some(&json!(23.0))
                    && s.field(&shared(), "target_change_pending") == Some(&json!(false))
                    && s.dirty.is_empty()
            })
            .await
            .unwrap();
        // Several more wakes: each hold ends after 0.3 s and the thermostat polls again.
        t.wait_for(WAIT, "three more subscribes", |s| s.subscribes >= acked.subscribes + 3).await.unwrap();
        stop.cancel();
        task.await.unwrap();
        let pushes: Vec<i64> = t.state().pushes.iter().filter(|p| p.key == shared()).map(|p| p.revision).collect();
        assert_eq!(pushes.len(), 2, "{firmware:?}: the boot copy and the command, once: {pushes:?}");
        assert!(status(&app).await.get("pending").is_none(), "{firmware:?}: confirmed");
        no_faults(&t);
    }
}

#[tokio::test]
async fn a_command_a_v3_thermostat_never_fetched_expires_and_the_event_stream_says_so() {
    for firmware in BOTH {
        let app = TestApp::start(&["--pending-setpoint-expiry-seconds=0.3"]).await;
        let t = booted(&app, firmware).await;
        let mut events = Stream::open(&app.control, "/api/events?events=command", None).await;
        assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
        let expired = loop {
            let e = events.next_event().await.expect("command events");
            if e.json()["state"] == "expired" {
                break e.json();
            }
        };
        assert_eq!(expired["objects"][0]["restored"], json!({"target_temperature": 20.0}), "{firmware:?}");
        let answer = t.subscribe_once().await.unwrap();
        assert_eq!(answer, Answer::Bucket { key: shared(), applied: true }, "{firmware:?}: the restored version");
        let s = t.state();
        assert_eq!(s.field(&shared(), "target_temperature"), Some(&json!(20.0)));
        assert!(s.pushes.iter().all(|p| p.key != shared() || p.revision != 2), "{firmware:?}: 23 never went out");
        no_faults(&t);
    }
}

#[tokio::test]
async fn a_command_on_the_structure_reaches_4_3_3_with_its_next_entry_and_no_longer_expires() {
    let app = TestApp::start(&[]).await;
    let t = booted(&app, Firmware::V43).await;
    assert_eq!(app.command(SERIAL, "set_away", json!(true)).await.status(), 200);
    let s = status(&app).await;
    assert!(s["pending"]["expires"].is_string(), "not sent yet: {s}");
    t.entry().await.unwrap();
    assert_eq!(t.state().field("structure.homeassistant", "manual_eco_all"), Some(&json!(true)));
    let s = status(&app).await;
    assert!(s["pending"]["fields"]["manual_eco_all"] == json!(true) && s["pending"]["expires"].is_null(), "{s}");
    no_faults(&t);
}

#[tokio::test]
async fn a_4_3_3_that_corrupts_its_keys_works_and_nothing_is_stored_under_a_corrupted_key() {
    let app = TestApp::start(&[]).await;
    let t = sim(&app, Firmware::V43).with_corrupted_keys();
    t.boot(21.5).await.unwrap();
    settle(&t).await;
    assert_eq!(app.command(SERIAL, "set_temperature", json!(22.0)).await.status(), 200);
    assert_eq!(t.subscribe_once().await.unwrap(), Answer::Bucket { key: shared(), applied: true });
    let keys = keys_of(&app.listing_of(SERIAL).await);
    assert!(keys.contains(&device()) && keys.iter().all(|k| !k.contains(' ')), "{keys:?}");
    assert!(status(&app).await.get("pending").is_none());
    no_faults(&t);
}

#[tokio::test]
async fn a_reboot_fills_a_4_3_3_store_again() {
    let app = TestApp::start(&[]).await;
    let t = booted(&app, Firmware::V43).await;
    // A new unit under the same serial (its store is empty) boots: each bucket is sent again.
    let fresh = sim(&app, Firmware::V43);
    fresh.boot(21.5).await.unwrap();
    settle(&fresh).await;
    assert_eq!(fresh.state().pushed_keys(), [device(), shared()]);
    no_faults(&fresh);
    no_faults(&t);
}
