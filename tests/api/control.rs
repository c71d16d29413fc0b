//! The control port route by route: success and error shapes, pushes to held subscribes,
//! deletion, registration records, and the access layer (API keys, CORS, JSON-only bodies).

use std::net::SocketAddr;

use roost::sim::http::{Request, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const SERIAL2: &str = "02AA01AC87654321";
const UNKNOWN: &str = "02AA01AC00000000";
/// `SERIAL` as people type it: lower case, with dashes.
const TYPED: &str = "02aa-01ac-1234-5678";

const STATUS_KEYS: [&str; 39] = [
    "serial",
    "api_key",
    "is_available",
    "last_seen",
    "name",
    "current_temperature",
    "target_temperature",
    "target_temperature_high",
    "target_temperature_low",
    "humidity",
    "target_humidity",
    "target_humidity_enabled",
    "mode",
    "hvac",
    "fan_timer_active",
    "fan_timer_timeout",
    "eco_temperatures",
    "is_online",
    "has_leaf",
    "software_version",
    "temperature_scale",
    "capabilities",
    "eco_mode",
    "time_to_target",
    "time_to_target_training_status",
    "safety_state",
    "safety_temp_activating_hvac",
    "learning_mode",
    "preconditioning_enabled",
    "backplate_temperature",
    "local_ip",
    "mac_address",
    "structure_id",
    "away",
    "schedule_mode",
    "preset",
    "can_heat",
    "can_cool",
    "has_fan",
];

const KEY_REQUIRED: &str = "API key required (Authorization: Bearer <key>, X-API-Key, or ?token=)";

async fn get(app: &TestApp, path: &str) -> Response {
    app.control.send(&Request::get(path)).await.expect("control request")
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let r = get(app, path).await;
    assert_eq!(r.status(), 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
    r.json().unwrap()
}

async fn delete(app: &TestApp, path: &str, body: Option<Value>) -> Response {
    let req = Request::new("DELETE", path);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    app.control.send(&req).await.expect("control request")
}

/// Asserts status and the exact JSON body.
fn expect(r: &Response, status: u16, body: Value) {
    assert_eq!(r.status(), status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap(), body);
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// A JSON body that is not JSON.
fn broken(path: &str) -> Request {
    Request::post(path).header("Content-Type", "application/json").body(b"{not json".to_vec())
}

// ---------------------------------------------------------------------------------------------
// /health, /status, /api/devices

#[tokio::test]
async fn status_has_the_reference_keys_in_order_and_the_booted_values() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    let status = get_json(&app, &format!("/status?serial={SERIAL}")).await;
    assert_eq!(keys(&status), STATUS_KEYS);
    assert!(status["last_seen"].is_string(), "{status}");
    let mut expected = json!({
        "serial": SERIAL, "api_key": null, "is_available": true, "last_seen": status["last_seen"],
        "name": SERIAL, "current_temperature": 21.5, "target_temperature": 20.0, "target_temperature_high": 24.0,
        "target_temperature_low": 18.0, "humidity": 45, "target_humidity": null, "target_humidity_enabled": false,
        "mode": "heat",
        "hvac": {"heater": false, "heat_x2": false, "heat_x3": false, "ac": false, "cool_x2": false, "cool_x3": false,
                 "fan": false, "aux_heat": false, "emer_heat": false, "alt_heat": false, "humidifier": false,
                 "dehumidifier": false, "auto_dehum": false, "fan_cooling": false},
        "fan_timer_active": false, "fan_timer_timeout": 0, "eco_temperatures": {"high": 28.0, "low": 12.0},
        "is_online": false, "has_leaf": false, "software_version": "5.9.4-5", "temperature_scale": "C",
        "capabilities": {"can_heat": true, "can_cool": true, "has_fan": true, "has_emer_heat": false,
                         "has_humidifier": false, "has_dehumidifier": false},
        "eco_mode": "schedule", "time_to_target": null, "time_to_target_training_status": null,
        "safety_state": null, "safety_temp_activating_hvac": null, "learning_mode": null,
        "preconditioning_enabled": null, "backplate_temperature": null, "local_ip": null,
        "mac_address": "18b430aabbcc", "structure_id": null, "away": false, "schedule_mode": null,
        "preset": "home", "can_heat": true, "can_cool": true, "has_fan": true,
    });
    assert_eq!(status, expected);
    assert_eq!(
        keys(&status["hvac"]),
        [
            "heater",
            "heat_x2",
            "heat_x3",
            "ac",
            "cool_x2",
            "cool_x3",
            "fan",
            "aux_heat",
            "emer_heat",
            "alt_heat",
            "humidifier",
            "dehumidifier",
            "auto_dehum",
            "fan_cooling"
        ]
    );
    assert_eq!(
        keys(&status["capabilities"]),
        ["can_heat", "can_cool", "has_fan", "has_emer_heat", "has_humidifier", "has_dehumidifier"]
    );
    assert_eq!(keys(&status["eco_temperatures"]), ["high", "low"]);

    // Serials are normalised: lower case and dashes address the same device.
    let typed = get_json(&app, &format!("/status?serial={TYPED}")).await;
    expected["last_seen"] = typed["last_seen"].clone();
    assert_eq!(typed, expected);
}

#[tokio::test]
async fn status_name_follows_label_name_then_room() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let path = format!("/status?serial={SERIAL}");
    t.set_local("device", json!({"where_id": "00000000-0000-0000-0000-00010000000c"})).await.unwrap();
    assert_eq!(get_json(&app, &path).await["name"], "Living Room");
    t.set_local("shared", json!({"name": "Hall"})).await.unwrap();
    assert_eq!(get_json(&app, &path).await["name"], "Hall");
    t.set_local("shared", json!({"label": "Upstairs hall"})).await.unwrap();
    assert_eq!(get_json(&app, &path).await["name"], "Upstairs hall");
}

#[tokio::test]
async fn status_errors_are_400_and_404_and_create_nothing() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    for path in ["/status", "/status?serial=", "/status?serial=%20"] {
        expect(&get(&app, path).await, 400, json!({"error": "Serial parameter required"}));
    }
    expect(&get(&app, "/status?serial=abc").await, 400, json!({"error": "'abc' is not a valid thermostat serial"}));
    expect(&get(&app, &format!("/status?serial={UNKNOWN}")).await, 404, json!({"error": "Device not found"}));
    let devices = get_json(&app, "/api/devices").await;
    assert_eq!(devices["total"], 1, "no phantom device: {devices}");
}

#[tokio::test]
async fn devices_lists_booted_thermostats_with_their_held_subscribes() {
    let app = TestApp::start(&[]).await;
    expect(&get(&app, "/api/devices").await, 200, json!({"devices": [], "total": 0}));

    let _t2 = app.booted(SERIAL2).await;
    let t1 = app.booted(SERIAL).await;
    let list = get_json(&app, "/api/devices").await;
    assert_eq!(keys(&list), ["devices", "total"]);
    assert_eq!(list["total"], 2);
    let devices = list["devices"].as_array().unwrap();
    let serials: Vec<&str> = devices.iter().map(|d| d["serial"].as_str().unwrap()).collect();
    assert_eq!(serials, [SERIAL, SERIAL2]);
    for d in devices {
        let mut expected_keys: Vec<&str> = STATUS_KEYS.to_vec();
        expected_keys.push("subscription_count");
        assert_eq!(keys(d), expected_keys, "status object plus subscription_count last");
        assert_eq!(d["subscription_count"], 0, "boot subscribes have ended: {d}");
        assert_eq!(d["current_temperature"], 21.5);
    }
    // Every entry is the /status object of that device.
    let mut first = devices[0].clone();
    first.as_object_mut().unwrap().remove("subscription_count");
    let status = get_json(&app, &format!("/status?serial={SERIAL}")).await;
    assert_eq!(first, status);

    let (_held, head) = t1.open_subscribe().await.unwrap();
    assert_eq!(head.status, 200);
    let (_held2, _) = t1.open_subscribe().await.unwrap();
    let list = get_json(&app, "/api/devices").await;
    let count = |serial: &str| {
        list["devices"].as_array().unwrap().iter().find(|d| d["serial"] == serial).unwrap()["subscription_count"]
            .clone()
    };
    assert_eq!(count(SERIAL), 2);
    assert_eq!(count(SERIAL2), 0);
}

// ---------------------------------------------------------------------------------------------
// /command envelope (the commands themselves are in commands.rs)

#[tokio::test]
async fn command_envelope_errors() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    let fail = |message: &str| json!({"success": false, "message": message});
    let r = app.control.send(&broken("/command")).await.unwrap();
    expect(&r, 400, fail("Invalid JSON"));
    for body in [json!([1, 2]), json!("set_temperature"), json!(null)] {
        expect(&app.control_post("/command", body).await, 400, fail("JSON body must be an object"));
    }
    expect(
        &app.control_post("/command", json!({"command": "set_temperature", "value": 21})).await,
        400,
        fail("Serial required"),
    );
    expect(
        &app.control_post("/command", json!({"serial": "", "command": "set_temperature", "value": 21})).await,
        400,
        fail("Serial required"),
    );
    expect(&app.control_post("/command", json!({"serial": SERIAL, "value": 21})).await, 400, fail("Command required"));
    expect(&app.command(SERIAL, "warp_speed", json!(9)).await, 400, fail("Unknown command: warp_speed"));
    expect(
        &app.command("abc", "set_temperature", json!(21)).await,
        400,
        fail("'abc' is not a valid thermostat serial"),
    );
    expect(&app.command(UNKNOWN, "set_temperature", json!(21)).await, 404, fail("Device not found"));
    let devices = get_json(&app, "/api/devices").await;
    assert_eq!(devices["total"], 1, "no phantom device: {devices}");
}

// ---------------------------------------------------------------------------------------------
// /notify-device

#[tokio::test]
async fn notify_device_pushes_every_bucket_to_a_held_subscribe() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (mut held, _) = t.open_subscribe().await.unwrap();
    let r = app.control_post("/notify-device", json!({"serial": TYPED})).await;
    expect(&r, 200, json!({"success": true, "subscribers_notified": 1}));
    assert_eq!(keys(&r.json().unwrap()), ["success", "subscribers_notified"]);

    let doc = chunk_json(&held.next_chunk_within(WAIT).await.unwrap().expect("a push"));
    let mut pushed = keys_of(&doc);
    pushed.sort();
    let mut expected = vec![
        format!("device.{SERIAL}"),
        format!("shared.{SERIAL}"),
        "structure.homeassistant".to_string(),
        "user.homeassistant".to_string(),
    ];
    expected.sort();
    assert_eq!(pushed, expected, "every bucket, although the device holds them all");
    let shared = doc["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == format!("shared.{SERIAL}"));
    assert_eq!(shared.unwrap()["value"]["target_temperature"], 20.0, "whole buckets");
    // A notify changes no revision.
    assert_eq!(shared.unwrap()["object_revision"], t.state().buckets[&format!("shared.{SERIAL}")].revision);

    // Nobody listening: still a success, nobody notified.
    drop(held);
    let other = app.booted(SERIAL2).await;
    expect(
        &app.control_post("/notify-device", json!({"serial": SERIAL2})).await,
        200,
        json!({"success": true, "subscribers_notified": 0}),
    );
    drop(other);
}

#[tokio::test]
async fn notify_device_errors() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    expect(&app.control.send(&broken("/notify-device")).await.unwrap(), 400, json!({"error": "Invalid JSON"}));
    expect(&app.control_post("/notify-device", json!({})).await, 400, json!({"error": "Serial required"}));
    expect(&app.control_post("/notify-device", json!({"serial": ""})).await, 400, json!({"error": "Serial required"}));
    expect(
        &app.control_post("/notify-device", json!({"serial": "abc"})).await,
        400,
        json!({"error": "'abc' is not a valid thermostat serial"}),
    );
    expect(
        &app.control_post("/notify-device", json!({"serial": UNKNOWN})).await,
        404,
        json!({"error": "Device not found"}),
    );
    expect(&get(&app, &format!("/status?serial={UNKNOWN}")).await, 404, json!({"error": "Device not found"}));
}

// ---------------------------------------------------------------------------------------------
// /api/schedule

#[tokio::test]
async fn schedule_route_shapes() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    expect(&get(&app, "/api/schedule").await, 400, json!({"error": "Serial parameter required"}));
    expect(&get(&app, &format!("/api/schedule?serial={UNKNOWN}")).await, 404, json!({"error": "Device not found"}));
    expect(
        &get(&app, &format!("/api/schedule?serial={SERIAL}")).await,
        200,
        json!({"serial": SERIAL, "schedule": null}),
    );

    let sent = json!({"ver": 2, "name": "Week", "schedule_mode": "HEAT",
                      "days": {"1": [{"type": "HEAT", "time": 3600, "temp": 20}]}});
    let r = app.command(SERIAL, "set_schedule", sent).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    let stored = r.json().unwrap()["data"]["values"].clone();
    let got = get_json(&app, &format!("/api/schedule?serial={TYPED}")).await;
    assert_eq!(keys(&got), ["serial", "schedule", "object_revision", "object_timestamp"]);
    assert_eq!(got["serial"], SERIAL);
    assert_eq!(got["schedule"], stored);
    assert_eq!(got["object_revision"], 1);
    assert!(got["object_timestamp"].as_i64().unwrap() > 0);
}

// ---------------------------------------------------------------------------------------------
// /api/config and /api/stats

#[tokio::test]
async fn config_reports_origin_and_pairing_settings() {
    let app = TestApp::start(&["--api-origin=http://192.168.1.50:8000"]).await;
    let r = get(&app, "/api/config").await;
    expect(
        &r,
        200,
        json!({"api_origin": "http://192.168.1.50:8000", "cloudregisterurl": "http://192.168.1.50:8000/entry",
               "require_device_pairing": false, "entry_key_ttl_seconds": 3600}),
    );
    assert_eq!(
        keys(&r.json().unwrap()),
        ["api_origin", "cloudregisterurl", "require_device_pairing", "entry_key_ttl_seconds"]
    );

    let app = TestApp::start(&[
        "--api-origin=http://nest.lan",
        "--require-device-pairing=true",
        "--entry-key-ttl-seconds=7200",
    ])
    .await;
    let config = get_json(&app, "/api/config").await;
    assert_eq!(config["api_origin"], "http://nest.lan");
    assert_eq!(config["require_device_pairing"], true);
    assert_eq!(config["entry_key_ttl_seconds"], 7200);
    // The same registration URL the device port advertises.
    let info = app.device.send(&Request::get("/info")).await.unwrap().json().unwrap();
    assert_eq!(config["cloudregisterurl"], info["cloudregisterurl"]);
}

#[tokio::test]
async fn stats_count_devices_subscriptions_and_availability() {
    let app = TestApp::start(&[]).await;
    let empty = get_json(&app, "/api/stats").await;
    assert_eq!(keys(&empty), ["devices", "subscriptions", "availability", "events", "mqtt", "storage"]);
    let engine = if postgres().is_some() { "postgres" } else { "sqlite" };
    assert_eq!(empty["storage"], json!({"engine": engine, "leader": true}), "a lone node leads from the start");
    assert_eq!(empty["mqtt"]["enabled"], false, "MQTT is off without MQTT_HOST");
    assert_eq!(empty["devices"], json!({"total": 0, "available": 0, "serials": []}));
    assert_eq!(empty["subscriptions"], json!({"total_subscriptions": 0, "devices_with_subscriptions": 0}));
    assert_eq!(empty["availability"], json!({}));
    assert!(empty["events"].is_object());

    let t = app.booted(SERIAL).await;
    let _t2 = app.booted(SERIAL2).await;
    let (_a, _) = t.open_subscribe().await.unwrap();
    let (_b, _) = t.open_subscribe().await.unwrap();
    let stats = get_json(&app, "/api/stats").await;
    assert_eq!(keys(&stats["devices"]), ["total", "available", "serials"]);
    assert_eq!(stats["devices"], json!({"total": 2, "available": 2, "serials": [SERIAL, SERIAL2]}));
    assert_eq!(keys(&stats["subscriptions"]), ["total_subscriptions", "devices_with_subscriptions"]);
    assert_eq!(stats["subscriptions"], json!({"total_subscriptions": 2, "devices_with_subscriptions": 1}));
    for serial in [SERIAL, SERIAL2] {
        let a = &stats["availability"][serial];
        assert_eq!(keys(a), ["is_available", "last_seen"]);
        assert_eq!(a["is_available"], true);
        assert!(a["last_seen"].is_string(), "{a}");
    }
    assert_eq!(stats["events"]["open_streams"], 0);
}

// ---------------------------------------------------------------------------------------------
// /api/dismiss-pairing/{serial}

#[tokio::test]
async fn dismiss_pairing_pushes_an_empty_dialog() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let dialog = format!("device_alert_dialog.{SERIAL}");
    expect(
        &app.control_post(&format!("/api/dismiss-pairing/{SERIAL}"), json!({})).await,
        200,
        json!({"success": true, "message": format!("No pairing dialog to dismiss for {SERIAL}")}),
    );
    t.passphrase().await.unwrap();

    // Hold a subscribe listing everything the server has, dialog included: nothing is newer.
    let list = app.device.send(&device_req("GET", &format!("/nest/transport/device/{SERIAL}"), SERIAL)).await.unwrap();
    let objects: Vec<(String, i64, i64)> = list.json().unwrap()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["object_key"].as_str().unwrap().to_string(),
                o["object_revision"].as_i64().unwrap(),
                o["object_timestamp"].as_i64().unwrap(),
            )
        })
        .collect();
    let (_, dialog_rev, dialog_ts) = objects.iter().find(|(k, _, _)| *k == dialog).cloned().expect("dialog exists");
    let refs: Vec<(&str, i64, i64)> = objects.iter().map(|(k, r, ts)| (k.as_str(), *r, *ts)).collect();
    let (mut held, _) = open_subscribe(&app.device, SERIAL, listing(&refs)).await;

    // Normalised serial in the path; an empty POST body is fine.
    let r = app.control.send(&Request::post(&format!("/api/dismiss-pairing/{TYPED}"))).await.unwrap();
    expect(&r, 200, json!({"success": true, "message": format!("Pairing dialog dismissed for {SERIAL}")}));
    let doc = chunk_json(&held.next_chunk_within(WAIT).await.unwrap().expect("the dismissed dialog"));
    assert_eq!(keys_of(&doc), vec![dialog.clone()]);
    let pushed = &doc["objects"][0];
    assert_eq!(pushed["value"], json!({}));
    assert_eq!(pushed["object_revision"], dialog_rev + 1);
    assert!(pushed["object_timestamp"].as_i64().unwrap() > dialog_ts);

    // Dismissing again re-dismisses with a new revision.
    let r = app.control_post(&format!("/api/dismiss-pairing/{SERIAL}"), json!({})).await;
    assert_eq!(r.json().unwrap()["message"], format!("Pairing dialog dismissed for {SERIAL}"));
    let doc = chunk_json(&held.next_chunk_within(WAIT).await.unwrap().expect("the second dismissal"));
    assert_eq!(doc["objects"][0]["object_revision"], dialog_rev + 2);

    expect(
        &app.control_post("/api/dismiss-pairing/abc", json!({})).await,
        400,
        json!({"error": "'abc' is not a valid thermostat serial"}),
    );
    // An unknown serial has nothing to dismiss, and does not become a device.
    let r = app.control_post(&format!("/api/dismiss-pairing/{UNKNOWN}"), json!({})).await;
    expect(&r, 200, json!({"success": true, "message": format!("No pairing dialog to dismiss for {UNKNOWN}")}));
    assert_eq!(get_json(&app, "/api/devices").await["total"], 1);
}

// ---------------------------------------------------------------------------------------------
// DELETE /api/device

#[tokio::test]
async fn delete_device_removes_everything_and_ends_held_subscribes() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let _other = app.booted(SERIAL2).await;
    t.passphrase().await.unwrap();
    let (mut held, _) = t.open_subscribe().await.unwrap();
    assert_eq!(get_json(&app, "/api/registered-devices").await.as_array().unwrap().len(), 2);

    let r = delete(&app, "/api/device", Some(json!({"serial": TYPED}))).await;
    // device, shared, user, structure and the pairing dialog.
    expect(&r, 200, json!({"success": true, "serial": SERIAL, "objects_deleted": 5}));
    assert_eq!(keys(&r.json().unwrap()), ["success", "serial", "objects_deleted"]);
    assert_eq!(held.next_chunk_within(WAIT).await.unwrap(), None, "held subscribe ended with the terminal chunk");

    expect(&get(&app, &format!("/status?serial={SERIAL}")).await, 404, json!({"error": "Device not found"}));
    expect(&get(&app, &format!("/api/schedule?serial={SERIAL}")).await, 404, json!({"error": "Device not found"}));
    let devices = get_json(&app, "/api/devices").await;
    assert_eq!(devices["total"], 1);
    assert_eq!(devices["devices"][0]["serial"], SERIAL2);
    let registered = get_json(&app, "/api/registered-devices").await;
    let serials: Vec<&str> = registered.as_array().unwrap().iter().map(|d| d["serial"].as_str().unwrap()).collect();
    assert_eq!(serials, [SERIAL2], "owner removed");
    let stats = get_json(&app, "/api/stats").await;
    assert_eq!(stats["devices"]["serials"], json!([SERIAL2]));
    assert!(stats["availability"].get(SERIAL).is_none(), "availability forgotten: {stats}");
    assert_eq!(stats["subscriptions"]["total_subscriptions"], 0);
    let key = app.device.send(&device_req("GET", "/nest/passphrase/status", SERIAL)).await.unwrap();
    assert_eq!(key.json().unwrap()["status"], "no_key", "entry keys removed");
    let list = app.device.send(&device_req("GET", &format!("/nest/transport/device/{SERIAL}"), SERIAL)).await.unwrap();
    assert_eq!(list.json().unwrap(), json!({"objects": []}));

    // Deleting again: nothing left.
    expect(
        &delete(&app, "/api/device", Some(json!({"serial": SERIAL}))).await,
        404,
        json!({"error": "Device not found"}),
    );

    // A thermostat still running recreates its state with its next upload.
    t.set_local("shared", json!({"target_temperature": 19.0})).await.unwrap();
    let status = get_json(&app, &format!("/status?serial={SERIAL}")).await;
    assert_eq!(status["target_temperature"], 19.0);
}

#[tokio::test]
async fn delete_device_errors() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    let bad = Request::new("DELETE", "/api/device").header("Content-Type", "application/json").body(b"nope".to_vec());
    expect(&app.control.send(&bad).await.unwrap(), 400, json!({"error": "Invalid JSON"}));
    expect(&delete(&app, "/api/device", Some(json!({}))).await, 400, json!({"error": "Serial required"}));
    expect(&delete(&app, "/api/device", None).await, 400, json!({"error": "Invalid JSON"}));
    expect(
        &delete(&app, "/api/device", Some(json!({"serial": UNKNOWN}))).await,
        404,
        json!({"error": "Device not found"}),
    );
    expect(
        &delete(&app, "/api/device", Some(json!({"serial": "abc"}))).await,
        400,
        json!({"error": "'abc' is not a valid thermostat serial"}),
    );
    assert_eq!(get_json(&app, "/api/devices").await["total"], 1);
}

// ---------------------------------------------------------------------------------------------
// Registration routes

#[tokio::test]
async fn registered_devices_newest_first_and_unregister() {
    let app = TestApp::start(&[]).await;
    expect(&get(&app, "/api/registered-devices").await, 200, json!([]));
    // Open mode adopts each thermostat for the default user.
    let _a = app.booted(SERIAL).await;
    let _b = app.booted(SERIAL2).await;
    for path in ["/api/registered-devices", "/api/registered-devices?userId=homeassistant"] {
        let list = get_json(&app, path).await;
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 2);
        for d in list {
            assert_eq!(keys(d), ["serial", "createdAt"]);
        }
        assert_eq!(list[0]["serial"], SERIAL2, "newest first");
        assert_eq!(list[1]["serial"], SERIAL);
        assert!(list[0]["createdAt"].as_i64().unwrap() > list[1]["createdAt"].as_i64().unwrap());
    }
    expect(&get(&app, "/api/registered-devices?userId=bob").await, 200, json!([]));

    // Only the owner's row goes.
    let r = delete(&app, "/api/registered-devices/02aa-01ac-1234-5678?userId=bob", None).await;
    expect(&r, 200, json!({"success": false, "message": format!("Device {SERIAL} not found")}));
    let r = delete(&app, "/api/registered-devices/02aa-01ac-1234-5678", None).await;
    expect(&r, 200, json!({"success": true, "message": format!("Device {SERIAL} deleted")}));
    let list = get_json(&app, "/api/registered-devices").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["serial"], SERIAL2);
    let r = delete(&app, &format!("/api/registered-devices/{SERIAL}?userId=homeassistant"), None).await;
    expect(&r, 200, json!({"success": false, "message": format!("Device {SERIAL} not found")}));
    // Buckets stay.
    assert_eq!(get(&app, &format!("/status?serial={SERIAL}")).await.status(), 200);

    for bad in ["bad.serial.x", "abc", "02AA01AC1234%21"] {
        let r = delete(&app, &format!("/api/registered-devices/{bad}"), None).await;
        expect(&r, 400, json!({"success": false, "message": "Invalid device serial format"}));
    }
}

#[tokio::test]
async fn register_error_shapes() {
    let app = TestApp::start(&[]).await;
    let fail = |m: &str| json!({"success": false, "message": m});
    expect(&app.control.send(&broken("/api/register")).await.unwrap(), 400, fail("Invalid JSON"));
    for body in [json!({}), json!({"code": "123ABCD"}), json!({"userId": "alice"}), json!({"code": "", "userId": "a"})]
    {
        expect(
            &app.control_post("/api/register", body.clone()).await,
            400,
            fail("Missing required fields: code, userId"),
        );
    }
    for code in ["12", "123ABCDE", "123 ABC", "12$ABCD"] {
        expect(
            &app.control_post("/api/register", json!({"code": code, "userId": "alice"})).await,
            400,
            fail("Invalid entry code format. Must be exactly 7 alphanumeric characters."),
        );
    }
    expect(
        &app.control_post("/api/register", json!({"code": "123ABCD", "userId": "alice"})).await,
        200,
        fail("Invalid, expired, or already claimed entry key"),
    );
}

#[tokio::test]
async fn ensure_user_creates_once() {
    let app = TestApp::start(&[]).await;
    let fail = |m: &str| json!({"success": false, "message": m});
    expect(
        &app.control_post("/api/ensure-user", json!({"userId": "alice"})).await,
        200,
        json!({"success": true, "created": true}),
    );
    expect(
        &app.control_post("/api/ensure-user", json!({"userId": "alice"})).await,
        200,
        json!({"success": true, "created": false}),
    );
    expect(
        &app.control_post("/api/ensure-user", json!({"userId": "bob", "email": "bob@example.com"})).await,
        200,
        json!({"success": true, "created": true}),
    );
    expect(&app.control_post("/api/ensure-user", json!({})).await, 400, fail("Missing required field: userId"));
    expect(
        &app.control_post("/api/ensure-user", json!({"userId": " "})).await,
        400,
        fail("Missing required field: userId"),
    );
    expect(&app.control.send(&broken("/api/ensure-user")).await.unwrap(), 400, fail("Invalid JSON"));
}

#[tokio::test]
async fn mqtt_config_creates_then_updates_and_checks_its_fields() {
    let app = TestApp::start(&[]).await;
    let fail = |m: &str| json!({"success": false, "message": m});
    expect(
        &app.control_post("/api/mqtt-config", json!({"brokerUrl": "mqtt://broker.lan:1883"})).await,
        200,
        json!({"success": true, "created": true}),
    );
    let full = json!({"brokerUrl": "mqtts://broker.lan:8883", "username": "u", "password": "p", "clientId": "c",
                      "topicPrefix": "nest", "discoveryPrefix": "ha", "publishRaw": false,
                      "homeAssistantDiscovery": true, "username2": null});
    expect(&app.control_post("/api/mqtt-config", full).await, 200, json!({"success": true, "created": false}));
    expect(
        &app.control_post("/api/mqtt-config", json!({"brokerUrl": "mqtt://b", "clientId": null})).await,
        200,
        json!({"success": true, "created": false}),
    );
    let cases = [
        (json!({}), "Missing required field: brokerUrl"),
        (json!({"brokerUrl": ""}), "Missing required field: brokerUrl"),
        (json!({"brokerUrl": 5}), "Missing required field: brokerUrl"),
        (json!({"brokerUrl": "http://broker.lan"}), "brokerUrl must start with mqtt:// or mqtts://"),
        (json!({"brokerUrl": "mqtt://b", "clientId": 5}), "clientId must be a string"),
        (json!({"brokerUrl": "mqtt://b", "topicPrefix": ["x"]}), "topicPrefix must be a string"),
        (json!({"brokerUrl": "mqtt://b", "publishRaw": "yes"}), "publishRaw must be true or false"),
        (json!({"brokerUrl": "mqtt://b", "homeAssistantDiscovery": 1}), "homeAssistantDiscovery must be true or false"),
    ];
    for (body, message) in cases {
        expect(&app.control_post("/api/mqtt-config", body.clone()).await, 400, fail(message));
    }
    expect(&app.control.send(&broken("/api/mqtt-config")).await.unwrap(), 400, fail("Invalid JSON"));
}

// ---------------------------------------------------------------------------------------------
// Access: API keys

/// Every control route with a request that would otherwise succeed or fail on its own terms.
fn every_route() -> Vec<Request> {
    vec![
        Request::get(&format!("/status?serial={SERIAL}")),
        Request::get("/api/devices"),
        Request::post("/command").json(&json!({"serial": SERIAL, "command": "set_temperature", "value": 21})),
        Request::post("/notify-device").json(&json!({"serial": SERIAL})),
        Request::get(&format!("/api/schedule?serial={SERIAL}")),
        Request::get("/api/config"),
        Request::get("/api/stats"),
        Request::get("/api/events"),
        Request::get("/api/events/stats"),
        Request::post(&format!("/api/dismiss-pairing/{SERIAL}")),
        Request::new("DELETE", "/api/device").json(&json!({"serial": UNKNOWN})),
        Request::post("/api/register").json(&json!({"code": "123ABCD", "userId": "alice"})),
        Request::get("/api/registered-devices"),
        Request::new("DELETE", &format!("/api/registered-devices/{UNKNOWN}")),
        Request::post("/api/ensure-user").json(&json!({"userId": "alice"})),
        Request::post("/api/mqtt-config").json(&json!({"brokerUrl": "mqtt://b"})),
        Request::get("/api/keys"),
        Request::post("/api/keys").json(&json!({"scopes": ["read"]})),
        Request::new("DELETE", "/api/keys/1"),
        Request::post("/api/scan-network").json(&json!({"subnet": "127.0.0.1/32"})),
        Request::post("/api/configure-nest").json(&json!({"ip": "127.0.0.1"})),
        Request::get("/no-such-route"),
    ]
}

fn with_query(req: &Request, query: &str) -> Request {
    let mut req = req.clone();
    req.path = if req.path.contains('?') { format!("{}&{query}", req.path) } else { format!("{}?{query}", req.path) };
    req
}

#[tokio::test]
async fn with_a_key_every_route_but_health_needs_it() {
    let app = TestApp::start(&["--control-api-key=k1,k2"]).await;
    let _t = app.booted(SERIAL).await;
    expect(&get(&app, "/health").await, 200, json!({"status": "ok"}));

    for req in every_route() {
        let what = format!("{} {}", req.method, req.path);
        let r = app.control.send(&req).await.unwrap();
        assert_eq!(r.status(), 401, "{what} without a key");
        assert_eq!(r.json().unwrap(), json!({"error": KEY_REQUIRED}), "{what}");
        for wrong in [
            req.clone().header("Authorization", "Bearer k3"),
            req.clone().header("X-API-Key", "k1k2"),
            with_query(&req, "token=k"),
            req.clone().header("Authorization", "Basic azE6azE="),
        ] {
            let r = app.control.send(&wrong).await.unwrap();
            assert_eq!(r.status(), 401, "{what} with {:?}", wrong.headers);
            let body = r.json().unwrap();
            assert!(body == json!({"error": "Invalid API key"}) || body == json!({"error": KEY_REQUIRED}), "{body}");
        }
    }
    // Nothing a refused request asked for happened.
    let r = app
        .control
        .send(&Request::post("/api/ensure-user").header("X-API-Key", "k2").json(&json!({"userId": "alice"})))
        .await
        .unwrap();
    expect(&r, 200, json!({"success": true, "created": true}));

    // Each way of presenting either key works.
    let status = format!("/status?serial={SERIAL}");
    for req in [
        Request::get(&status).header("Authorization", "Bearer k1"),
        Request::get(&status).header("Authorization", "Bearer k2"),
        Request::get(&status).header("X-API-Key", "k1"),
        Request::get(&status).header("X-API-Key", "k2"),
        Request::get(&format!("{status}&token=k1")),
        Request::get("/api/devices?token=k2"),
    ] {
        let r = app.control.send(&req).await.unwrap();
        assert_eq!(r.status(), 200, "{} {:?}: {}", req.path, req.headers, String::from_utf8_lossy(&r.body));
    }
    let r = app
        .control
        .send(&Request::post("/command").header("Authorization", "Bearer k1").json(&json!({
            "serial": SERIAL, "command": "set_temperature", "value": 22.5
        })))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap()["data"]["values"]["target_temperature"], 22.5);
    let r =
        app.control.send(&Request::new("DELETE", &format!("/api/registered-devices/{SERIAL}?token=k2"))).await.unwrap();
    expect(&r, 200, json!({"success": true, "message": format!("Device {SERIAL} deleted")}));
    // The health probe works with a key too.
    let r = app.control.send(&Request::get("/health").header("Authorization", "Bearer k1")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn without_a_key_a_bearer_token_is_ignored() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    // What the Homebridge plugin sends.
    let bearer = |req: Request| req.header("Authorization", "Bearer anything-at-all");
    let r = app.control.send(&bearer(Request::get("/api/devices"))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap()["total"], 1);
    let r = app.control.send(&bearer(Request::get(&format!("/status?serial={SERIAL}")))).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .control
        .send(&bearer(
            Request::post("/command").json(&json!({"serial": SERIAL, "command": "set_mode", "value": "cool"})),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    let r = app.control.send(&Request::get("/api/stats").header("X-API-Key", "whatever")).await.unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Access: CORS

/// Sends a request that closes the connection after the reply (so a body-less 204 ends).
async fn send_closing(app: &TestApp, req: Request) -> Response {
    app.control.send(&req.header("Connection", "close")).await.expect("control request")
}

fn preflight(path: &str, origin: &str) -> Request {
    Request::new("OPTIONS", path)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type, authorization")
}

#[tokio::test]
async fn cors_headers_only_for_configured_origins() {
    let ui = "http://ui.example";
    let app = TestApp::start(&[&format!("--cors-origins={ui}")]).await;
    let _t = app.booted(SERIAL).await;

    let r = send_closing(&app, preflight("/command", ui)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ui));
    let methods = r.header("access-control-allow-methods").unwrap_or_default();
    for m in ["GET", "POST", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = r.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    for h in ["content-type", "authorization", "x-api-key"] {
        assert!(headers.contains(h), "{headers}");
    }
    assert!(r.header("vary").is_some_and(|v| v.contains("Origin")));
    // Preflight for any path of an allowed origin.
    assert_eq!(send_closing(&app, preflight("/api/device", ui)).await.status(), 204);

    for other in ["http://evil.example", "http://ui.example.evil.com", "https://ui.example"] {
        let r = send_closing(&app, preflight("/command", other)).await;
        assert_eq!(r.status(), 403, "{other}");
        assert!(r.header("access-control-allow-origin").is_none(), "{other}");
        assert!(r.json().unwrap()["error"].is_string());
    }
    let r = send_closing(&app, Request::new("OPTIONS", "/command")).await;
    assert_eq!(r.status(), 403, "no Origin, no preflight");

    for path in ["/health".to_string(), "/api/devices".to_string(), format!("/status?serial={SERIAL}")] {
        let r = app.control.send(&Request::get(&path).header("Origin", ui)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("access-control-allow-origin"), Some(ui), "{path}");
        let r = app.control.send(&Request::get(&path).header("Origin", "http://evil.example")).await.unwrap();
        assert_eq!(r.status(), 200, "the request itself is served");
        assert!(r.header("access-control-allow-origin").is_none(), "{path}");
        let r = app.control.send(&Request::get(&path)).await.unwrap();
        assert!(r.header("access-control-allow-origin").is_none(), "{path}");
    }
    let r = app
        .control
        .send(
            &Request::post("/command")
                .header("Origin", ui)
                .json(&json!({"serial": SERIAL, "command": "set_mode", "value": "off"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(ui));
}

#[tokio::test]
async fn no_cors_origins_means_no_cors() {
    let app = TestApp::start(&[]).await;
    let r = send_closing(&app, preflight("/command", "http://ui.example")).await;
    assert_eq!(r.status(), 403);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = app.control.send(&Request::get("/api/devices").header("Origin", "http://ui.example")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_refused_key_still_carries_cors_for_an_allowed_origin() {
    let ui = "http://ui.example";
    let app = TestApp::start(&["--control-api-key=k1", &format!("--cors-origins={ui}")]).await;
    // Preflight needs no key (browsers send none).
    let r = send_closing(&app, preflight("/api/devices", ui)).await;
    assert_eq!(r.status(), 204);
    let r = app.control.send(&Request::get("/api/devices").header("Origin", ui)).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.header("access-control-allow-origin"), Some(ui), "so the page can read the 401");
    let r =
        app.control.send(&Request::get("/api/devices").header("Origin", ui).header("X-API-Key", "k1")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(ui));
}

// ---------------------------------------------------------------------------------------------
// Access: JSON-only bodies

#[tokio::test]
async fn bodies_that_change_state_must_be_json() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    let unsupported = json!({"error": "Content-Type must be application/json"});
    let command = json!({"serial": SERIAL, "command": "set_temperature", "value": 25}).to_string().into_bytes();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        let mut req = Request::post("/command").body(command.clone());
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        expect(&app.control.send(&req).await.unwrap(), 415, unsupported.clone());
    }
    let form = Request::post("/api/register")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(b"code=123ABCD&userId=mallory".to_vec());
    expect(&app.control.send(&form).await.unwrap(), 415, unsupported.clone());
    let del = Request::new("DELETE", "/api/device")
        .header("Content-Type", "text/plain")
        .body(json!({"serial": SERIAL}).to_string().into_bytes());
    expect(&app.control.send(&del).await.unwrap(), 415, unsupported.clone());
    let r = app
        .control
        .send(
            &Request::post("/api/ensure-user")
                .header("Content-Type", "text/plain")
                .body(b"{\"userId\":\"m\"}".to_vec()),
        )
        .await
        .unwrap();
    expect(&r, 415, unsupported.clone());
    // Nothing of the refused requests happened.
    let status = get_json(&app, &format!("/status?serial={SERIAL}")).await;
    assert_eq!(status["target_temperature"], 20.0);
    assert_eq!(get_json(&app, "/api/devices").await["total"], 1);
    expect(
        &app.control_post("/api/ensure-user", json!({"userId": "m"})).await,
        200,
        json!({"success": true, "created": true}),
    );

    // JSON with parameters or a +json type is fine; so is a POST without a body.
    for ct in ["application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"] {
        let r = app
            .control
            .send(&Request::post("/command").header("Content-Type", ct).body(command.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{ct}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = app.control.send(&Request::post(&format!("/api/dismiss-pairing/{SERIAL}"))).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Starts roost like [`TestApp`] does, but hands out the control port's address, for requests
/// the test client cannot frame (a chunked request body).
struct RawApp {
    control: SocketAddr,
    handle: roost::AppHandle,
    _tmp: tempfile::TempDir,
}

impl RawApp {
    async fn start() -> RawApp {
        let tmp = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--server-host=127.0.0.1".to_string(),
            "--server-port=0".to_string(),
            "--control-host=127.0.0.1".to_string(),
            "--control-port=0".to_string(),
            "--api-origin=http://127.0.0.1".to_string(),
        ];
        args.extend(db_args(&tmp.path().join("roost.sqlite")).await);
        let config = roost::config::from_args(&args).unwrap();
        let app = roost::Application::build(config).await.unwrap();
        let control = app.control_addr();
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        RawApp { control, handle, _tmp: tmp }
    }

    /// Writes `head` and a chunked `body` (split in two chunks); returns status and body.
    async fn chunked(&self, head: &str, body: &[u8]) -> (u16, Value) {
        let mut tcp = tokio::net::TcpStream::connect(self.control).await.unwrap();
        let (a, b) = body.split_at(body.len() / 2);
        let mut out = format!("{head}\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .into_bytes();
        for part in [a, b] {
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        tcp.write_all(&out).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply)).await.expect("reply in time").unwrap();
        let text = String::from_utf8_lossy(&reply).to_string();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        let json = serde_json::from_str(body.trim()).unwrap_or_else(|_| json!({"raw": body}));
        (status, json)
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.handle.stop();
    }
}

#[tokio::test]
async fn chunked_bodies_are_held_to_the_same_content_type_rule() {
    let app = RawApp::start().await;
    let unsupported = json!({"error": "Content-Type must be application/json"});
    let user = br#"{"userId": "carol"}"#;
    let r = app.chunked("POST /api/ensure-user HTTP/1.1\r\nContent-Type: text/plain", user).await;
    assert_eq!(r, (415, unsupported.clone()));
    let r = app.chunked("POST /api/ensure-user HTTP/1.1", user).await;
    assert_eq!(r, (415, unsupported.clone()), "no Content-Type");
    let r = app
        .chunked("DELETE /api/device HTTP/1.1\r\nContent-Type: text/plain", br#"{"serial": "02AA01AC12345678"}"#)
        .await;
    assert_eq!(r, (415, unsupported));
    // The refused body was not acted on; a chunked JSON body is read whole.
    let r = app.chunked("POST /api/ensure-user HTTP/1.1\r\nContent-Type: application/json", user).await;
    assert_eq!(r, (200, json!({"success": true, "created": true})));
    let r = app.chunked("POST /api/ensure-user HTTP/1.1\r\nContent-Type: application/json", user).await;
    assert_eq!(r, (200, json!({"success": true, "created": false})));
}

#[tokio::test]
async fn health_is_open_with_a_key_set() {
    // Container health checks probe it without a key.
    let app = TestApp::start(&["--control-api-key=secret"]).await;
    expect(&get(&app, "/health").await, 200, json!({"status": "ok"}));
    let r = get(&app, "/health?token=wrong").await;
    assert_eq!(r.status(), 200, "a wrong key does not matter on /health");
    assert_eq!(get(&app, "/api/config").await.status(), 401);
}

#[tokio::test]
async fn get_routes_also_answer_head() {
    let app = TestApp::start(&[]).await;
    let _t = app.booted(SERIAL).await;
    for (path, status) in [
        ("/health".to_string(), 200),
        ("/api/devices".to_string(), 200),
        (format!("/status?serial={SERIAL}"), 200),
        (format!("/status?serial={UNKNOWN}"), 404),
    ] {
        let mut conn = app.control.connect().await.unwrap();
        conn.send_request(&Request::new("HEAD", &path).header("Connection", "close")).await.unwrap();
        let head = conn.read_head().await.unwrap();
        assert_eq!(head.status, status, "HEAD {path}: {head:?}");
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::start(&["--control-api-key=k1"]).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = app.control.send(&Request::get("/api/devices").header("Authorization", format!("{scheme} k1"))).await;
        assert_eq!(r.unwrap().status(), 200, "{scheme}");
    }
}

#[tokio::test]
async fn the_web_ui_is_served_from_the_binary_and_open_with_a_key_set() {
    let app = TestApp::start(&["--control-api-key=k"]).await;
    let page = app.control.send(&Request::get("/").header("X-Ingress-Path", "/api/hassio_ingress/x\"y")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains("data-ingress-path=\"/api/hassio_ingress/x&quot;y\""), "escaped ingress path");
    assert!(!html.contains("http://") && !html.contains("https://"), "no external requests");
    for (path, mime) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/admin.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let r = app.control.send(&Request::get(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.header("content-type"), Some(mime));
    }
    let api = app.control.send(&Request::get("/api/devices")).await.unwrap();
    assert_eq!(api.status(), 401);
}

#[tokio::test]
async fn other_sites_cannot_change_state_and_the_device_password_needs_the_key() {
    let app = TestApp::start(&["--cors-origins=http://ui.example"]).await;
    app.booted(SERIAL).await;
    let body = json!({"serial": SERIAL, "command": "set_temperature", "value": 21.0});
    let r =
        app.control.send(&Request::post("/command").header("Origin", "http://evil.example").json(&body)).await.unwrap();
    assert_eq!(r.status(), 403, "a foreign page's POST is refused");
    let host = format!("127.0.0.1:{}", app.control_port());
    let r = app
        .control
        .send(&Request::post("/command").header("Origin", format!("http://{host}")).json(&body))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the web UI's own origin may");
    let r =
        app.control.send(&Request::post("/command").header("Origin", "http://ui.example").json(&body)).await.unwrap();
    assert_eq!(r.status(), 200, "a configured origin may");
    let status = app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap();
    assert_eq!(status["api_key"], Value::Null, "no device password without a control key");

    let keyed = TestApp::start(&["--control-api-key=k"]).await;
    keyed.booted(SERIAL).await;
    let status = keyed
        .control
        .send(&Request::get(&format!("/status?serial={SERIAL}")).header("X-API-Key", "k"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["api_key"], "pw-02aa01ac12345678");
}
