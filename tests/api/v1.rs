//! The hosted API (`/api/v1`) on the control port: every route with keys of each scope, an
//! allow-listed and a foreign device, expired and revoked keys, the rate limit, and the bodies
//! and headers the real clients send — down to what a running simulated thermostat receives.

use std::time::Duration;

use roost::domain::time::{iso8601, now_ms, parse_rfc3339};
use roost::sim::Thermostat;
use roost::sim::http::{Request, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const OTHER: &str = "02AA01AC00000002";
const STRUCTURE: &str = "structure.homeassistant";

fn thermostat(path: &str) -> String {
    format!("/api/v1/thermostat/{SERIAL}{path}")
}

async fn send(app: &TestApp, req: Request) -> Response {
    app.control.send(&req).await.expect("v1 request")
}

async fn post(app: &TestApp, key: &str, path: &str, body: Value) -> Response {
    send(app, with_key(Request::post(path).json(&body), key)).await
}

async fn get(app: &TestApp, key: &str, path: &str) -> Response {
    send(app, with_key(Request::get(path), key)).await
}

fn expect(r: &Response, status: u16, body: Value) {
    assert_eq!(r.status(), status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap(), body);
}

/// A command that must succeed: checks the hosted success object and returns it.
async fn ok(app: &TestApp, key: &str, path: &str, body: Value, object: &str) -> Value {
    let r = post(app, key, &thermostat(path), body.clone()).await;
    assert_eq!(r.status(), 200, "{path} {body}: {}", String::from_utf8_lossy(&r.body));
    let answer = r.json().unwrap();
    let keys: Vec<&String> = answer.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["success", "message", "device", "object", "revision", "timestamp"]);
    assert_eq!(answer["success"], true);
    assert_eq!(answer["message"], "Command handled");
    assert_eq!(answer["device"], SERIAL);
    assert_eq!(answer["object"], object, "{path} {body}");
    assert!(answer["revision"].as_i64().unwrap() >= 1 && answer["timestamp"].as_i64().unwrap() > 0);
    answer
}

async fn wait_field(t: &Thermostat, key: &str, field: &str, value: Value) {
    let what = format!("{key}.{field} = {value}");
    t.wait_for(WAIT, &what, |s| s.field(key, field) == Some(&value)).await.unwrap();
}

async fn shared_value(app: &TestApp, key: &str) -> (Value, Value) {
    let r = get(app, key, &thermostat("/status")).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    let state = r.json().unwrap()["state"].clone();
    (state[format!("shared.{SERIAL}")]["value"].clone(), state[format!("device.{SERIAL}")]["value"].clone())
}

struct Running {
    app: TestApp,
    t: Thermostat,
    stop: CancellationToken,
}

impl Running {
    async fn start(args: &[&str]) -> Running {
        let app = TestApp::start(args).await;
        let t = app.booted(SERIAL).await;
        let stop = CancellationToken::new();
        t.run(stop.clone());
        Running { app, t, stop }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn every_route_reaches_the_thermostat_with_a_read_write_key() {
    let Running { app, t, .. } = &Running::start(&[]).await;
    let (key, _) = new_key(app, None, json!({"name": "Home Assistant", "scopes": ["read", "write"]})).await;
    let shared = format!("shared.{SERIAL}");
    let device = format!("device.{SERIAL}");

    let r = get(app, &key, "/api/v1/devices").await;
    expect(&r, 200, json!({"devices": [{"id": SERIAL, "serial": SERIAL, "name": null, "accessType": "owner"}]}));
    assert_eq!(r.header("x-ratelimit-limit"), Some("240"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("239"));
    let reset = parse_rfc3339(r.header("x-ratelimit-reset").unwrap()).expect("an ISO reset time");
    assert!(reset > now_ms() - 1000);

    // The raw buckets, plus what the hosted clients read, derived.
    let r = get(app, &key, &thermostat("/status")).await;
    assert_eq!(r.status(), 200);
    let status = r.json().unwrap();
    assert_eq!(status["device"], json!({"id": SERIAL, "serial": SERIAL, "name": null}));
    let state = status["state"].as_object().unwrap();
    for bucket in [&shared, &device, &STRUCTURE.to_string(), &"user.homeassistant".to_string()] {
        let b = &state[bucket.as_str()];
        assert!(b["object_revision"].is_i64() && b["object_timestamp"].is_i64() && b["value"].is_object(), "{bucket}");
    }
    assert!(
        state
            .keys()
            .all(|k| ["shared.", "device.", "user.", "structure.", "schedule."].iter().any(|p| k.starts_with(p)))
    );
    assert_eq!(state[&shared]["value"]["target_temperature"], 20.0);
    assert_eq!(state[&shared]["value"]["auto_away"], 0);
    assert_eq!(state[&device]["value"]["eco_mode_enabled"], false);
    assert_eq!(state[&device]["value"]["temperature_lock_enabled"], false);

    // Setpoints, in °F too, with the aliases some clients send.
    ok(app, &key, "/temperature", json!({"value": 70, "mode": "heat", "scale": "F"}), &shared).await;
    wait_field(t, &shared, "target_temperature", json!(21.111)).await;
    ok(app, &key, "/temperature", json!({"value": 21.5}), &shared).await;
    wait_field(t, &shared, "target_temperature", json!(21.5)).await;
    ok(app, &key, "/temperature/range", json!({"heatValue": 19, "coolValue": 25, "scale": "C"}), &shared).await;
    wait_field(t, &shared, "target_temperature_high", json!(25.0)).await;
    assert_eq!(t.state().field(&shared, "target_temperature_low"), Some(&json!(19.0)));
    ok(app, &key, "/temperature/range", json!({"low": 18.5, "high": 23}), &shared).await;
    wait_field(t, &shared, "target_temperature_low", json!(18.5)).await;

    // `auto` is heat-cool.
    ok(app, &key, "/mode", json!({"mode": "auto"}), &shared).await;
    wait_field(t, &shared, "target_temperature_type", json!("range")).await;
    ok(app, &key, "/mode", json!({"mode": "heat-cool"}), &shared).await;
    ok(app, &key, "/mode", json!({"mode": "off"}), &shared).await;
    wait_field(t, &shared, "target_temperature_type", json!("off")).await;

    // Away and eco drive the structure's manual eco; the status shows it as auto_away 2.
    ok(app, &key, "/away", json!({"away": true}), STRUCTURE).await;
    wait_field(t, STRUCTURE, "manual_eco_all", json!(true)).await;
    let (s, d) = shared_value(app, &key).await;
    assert_eq!((s["auto_away"].clone(), d["eco_mode_enabled"].clone()), (json!(2), json!(true)));
    ok(app, &key, "/eco", json!({"enabled": false}), STRUCTURE).await;
    wait_field(t, STRUCTURE, "manual_eco_all", json!(false)).await;
    let (s, d) = shared_value(app, &key).await;
    assert_eq!((s["auto_away"].clone(), d["eco_mode_enabled"].clone()), (json!(0), json!(false)));
    ok(app, &key, "/eco", json!({"enabled": true}), STRUCTURE).await;
    assert_eq!(shared_value(app, &key).await.0["auto_away"], 2);
    ok(app, &key, "/away", json!({"away": false}), STRUCTURE).await;

    // Every fan body.
    ok(app, &key, "/fan", json!({"mode": "on", "duration": 900}), &device).await;
    wait_field(t, &device, "fan_timer_duration", json!(900)).await;
    ok(app, &key, "/fan", json!({"mode": "off"}), &device).await;
    wait_field(t, &device, "fan_timer_timeout", json!(0)).await;
    ok(app, &key, "/fan", json!({"enabled": true}), &device).await;
    wait_field(t, &device, "fan_timer_duration", json!(3600)).await;
    ok(app, &key, "/fan", json!({"duration": 1800}), &device).await;
    wait_field(t, &device, "fan_timer_duration", json!(1800)).await;
    ok(app, &key, "/fan", json!({"mode": "auto"}), &device).await;
    wait_field(t, &device, "fan_timer_timeout", json!(0)).await;

    // The lock: a plain PIN is hashed, a client's hash is stored as sent, disabling clears.
    ok(app, &key, "/lock", json!({"enabled": true, "pin": "0000", "minTemp": 18, "maxTemp": 24}), &device).await;
    wait_field(t, &device, "temperature_lock_pin_hash", json!(roost::domain::lock::pin_hash("0000", SERIAL))).await;
    let st = t.state();
    assert_eq!(st.field(&device, "temperature_lock"), Some(&json!(true)));
    assert_eq!(st.field(&device, "temperature_lock_low_temp"), Some(&json!(18.0)));
    assert_eq!(st.field(&device, "temperature_lock_high_temp"), Some(&json!(24.0)));
    assert_eq!(shared_value(app, &key).await.1["temperature_lock_enabled"], true);
    let hash = "Client/Made+Hash=";
    ok(app, &key, "/lock", json!({"enabled": true, "pin_hash": hash, "temp_min": 17, "temp_max": 25}), &device).await;
    wait_field(t, &device, "temperature_lock_pin_hash", json!(hash)).await;
    ok(app, &key, "/lock", json!({"enabled": false}), &device).await;
    wait_field(t, &device, "temperature_lock", json!(false)).await;
    assert_eq!(t.state().field(&device, "temperature_lock_pin_hash"), Some(&json!("")));
    assert_eq!(shared_value(app, &key).await.1["temperature_lock_enabled"], false);

    // Refusals are 400s with the reason, 404 for an unknown device or route.
    for (path, body, message) in [
        ("/temperature", json!({"value": "warm"}), "Temperature value must be a number"),
        ("/temperature", json!({"value": 20, "scale": "K"}), "scale must be \"C\" or \"F\""),
        ("/temperature/range", json!({"low": 24, "high": 20}), "low must be below high"),
        ("/away", json!({"away": "yes"}), "away must be true or false"),
        ("/fan", json!({"mode": "turbo"}), "Unknown fan mode 'turbo' (use on, auto or off)"),
        ("/lock", json!({"enabled": true, "pin": "12"}), "pin must be a string of 4 digits, such as \"0123\""),
    ] {
        expect(&post(app, &key, &thermostat(path), body).await, 400, json!({"error": message}));
    }
    let r = post(app, &key, &thermostat("/mode"), json!({"mode": "eco"})).await;
    assert_eq!(r.status(), 400);
    assert!(r.json().unwrap()["error"].as_str().unwrap().starts_with("Use set_away"));
    let r =
        send(app, with_key(Request::post(&thermostat("/mode")).header("Content-Type", "application/json"), &key)).await;
    expect(&r, 400, json!({"error": "Body must be a JSON object"}));
    let unknown = "/api/v1/thermostat/02AA01AC99999999/status";
    expect(&get(app, &key, unknown).await, 404, json!({"error": "Device not found"}));
    expect(&get(app, &key, "/api/v1/nothing-here").await, 404, json!({"error": "Not found"}));

    // Deleting is for the owner (the control key), not for an API key.
    let r = send(app, with_key(Request::new("DELETE", &thermostat("")), &key)).await;
    expect(&r, 403, json!({"error": "Only device owners can delete devices"}));
}

#[tokio::test]
async fn a_schedule_written_through_v1_reads_back_with_monday_as_day_0() {
    let Running { app, t, .. } = &Running::start(&[]).await;
    let (key, _) = new_key(app, None, json!({"scopes": "read,write"})).await;
    let r = get(app, &key, &thermostat("/schedule")).await;
    expect(&r, 200, json!({"device": {"id": SERIAL, "serial": SERIAL, "name": null}, "schedule": null}));

    // Wrapped, as the docs and Homebridge send it: Monday 06:00 and Sunday 08:00.
    let week = json!({"ver": 2, "schedule_mode": "HEAT", "name": "Week", "days": {
        "0": [{"time": 21600, "type": "HEAT", "temp": 21}],
        "6": {"0": {"time": 28800, "type": "HEAT", "temp": 19.5}},
    }});
    let schedule = format!("schedule.{SERIAL}");
    let r =
        send(app, with_key(Request::new("PUT", &thermostat("/schedule")).json(&json!({"schedule": week})), &key)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["object"], schedule);

    let monday = json!({"0": {"type": "HEAT", "time": 21600, "entry_type": "setpoint", "temp": 21.0}});
    let sunday = json!({"0": {"type": "HEAT", "time": 28800, "entry_type": "setpoint", "temp": 19.5}});
    let control =
        app.control.send(&Request::get(&format!("/api/schedule?serial={SERIAL}"))).await.unwrap().json().unwrap();
    assert_eq!(control["schedule"]["days"]["0"], monday, "day 0 is Monday, as sent");
    assert_eq!(control["schedule"]["days"]["6"], sunday);
    assert!(control["schedule"]["days"].get("3").is_none(), "only the days sent are kept");
    // The thermostat gets the same days, which it applies Monday = 0.
    let st = t.wait_for(WAIT, "the schedule", |s| s.buckets.contains_key(&schedule)).await.unwrap();
    assert_eq!(st.buckets[&schedule].value["days"]["0"], monday);
    assert_eq!(st.buckets[&schedule].value["days"]["6"], sunday);
    let r = get(app, &key, &thermostat("/schedule")).await.json().unwrap();
    assert_eq!(r["schedule"], control["schedule"]);

    // Unwrapped, as the Home Assistant integration sends it.
    let cool = json!({"ver": 2, "schedule_mode": "COOL", "days": {"4": [{"time": 3600, "type": "COOL", "temp": 25}]}});
    let r = send(app, with_key(Request::new("PUT", &thermostat("/schedule")).json(&cool), &key)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    let st = t
        .wait_for(WAIT, "the cool schedule", |s| s.field(&schedule, "schedule_mode") == Some(&json!("COOL")))
        .await
        .unwrap();
    assert_eq!(st.buckets[&schedule].value["days"]["4"]["0"]["temp"], 25.0);
    let r =
        send(app, with_key(Request::new("PUT", &thermostat("/schedule")).json(&json!({"schedule": {"ver": 1}})), &key))
            .await;
    expect(&r, 400, json!({"error": "Schedule ver must be 2"}));
}

#[tokio::test]
async fn scopes_decide_reading_and_writing() {
    let Running { app, .. } = &Running::start(&[]).await;
    let (read, _) = new_key(app, None, json!({"scopes": ["read"]})).await;
    let (write, _) = new_key(app, None, json!({"scopes": ["write"]})).await;
    let denied = json!({"error": "Access denied to this device"});

    assert_eq!(get(app, &read, "/api/v1/devices").await.status(), 200);
    assert_eq!(get(app, &read, &thermostat("/status")).await.status(), 200);
    expect(&post(app, &read, &thermostat("/temperature"), json!({"value": 22})).await, 403, denied.clone());
    expect(&get(app, &write, &thermostat("/status")).await, 403, denied.clone());
    ok(app, &write, "/temperature", json!({"value": 22}), &format!("shared.{SERIAL}")).await;

    // The same scopes on the rest of the control port.
    let status = format!("/status?serial={SERIAL}");
    assert_eq!(send(app, with_key(Request::get(&status), &read)).await.status(), 200);
    let command = Request::post("/command").json(&json!({"serial": SERIAL, "command": "set_mode", "value": "cool"}));
    let r = send(app, with_key(command.clone(), &read)).await;
    expect(&r, 403, json!({"error": "This API key may not write (its scopes: read)"}));
    assert_eq!(send(app, with_key(command, &write)).await.status(), 200);
    expect(
        &send(app, with_key(Request::get(&status), &write)).await,
        403,
        json!({"error": "This API key may not read (its scopes: write)"}),
    );
    // Administration is never for API keys, even on an open port.
    for (req, what) in [
        (Request::get("/api/keys"), "keys"),
        (Request::post("/api/mqtt-config").json(&json!({"brokerUrl": "mqtt://b"})), "mqtt"),
        (Request::new("DELETE", "/api/device").json(&json!({"serial": SERIAL})), "delete"),
        (Request::post("/api/scan-network").json(&json!({"subnet": "127.0.0.0/30"})), "scan"),
    ] {
        let r = send(app, with_key(req, &write)).await;
        assert_eq!(r.status(), 403, "{what}: {}", String::from_utf8_lossy(&r.body));
    }
    // A read-only key cannot even see the device's password.
    assert!(send(app, with_key(Request::get(&status), &read)).await.json().unwrap()["api_key"].is_null());
}

/// Reads a stream until its first `data: {"serial": ...}` message.
async fn first_serial(conn: &mut roost::sim::http::Conn) -> String {
    let mut text = String::new();
    loop {
        let chunk = conn.next_chunk_within(WAIT).await.unwrap().expect("the stream goes on");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(line) = text.lines().find(|l| l.starts_with("data: {\"serial\"")) {
            let data: Value = serde_json::from_str(&line["data: ".len()..]).unwrap();
            return data["serial"].as_str().unwrap().to_string();
        }
    }
}

#[tokio::test]
async fn an_allow_listed_key_sees_and_steers_only_its_devices() {
    let app = TestApp::start(&[]).await;
    app.booted(SERIAL).await;
    app.booted(OTHER).await;
    let (key, _) = new_key(&app, None, json!({"scopes": ["read", "write"], "devices": [SERIAL]})).await;
    let denied = json!({"error": "Access denied to this device"});

    let r = get(&app, &key, "/api/v1/devices").await.json().unwrap();
    assert_eq!(r["devices"].as_array().unwrap().iter().map(|d| d["id"].clone()).collect::<Vec<_>>(), [json!(SERIAL)]);
    let foreign = |path: &str| format!("/api/v1/thermostat/{OTHER}{path}");
    expect(&get(&app, &key, &foreign("/status")).await, 403, denied.clone());
    expect(&get(&app, &key, &foreign("/schedule")).await, 403, denied.clone());
    expect(&post(&app, &key, &foreign("/temperature"), json!({"value": 22})).await, 403, denied.clone());
    ok(&app, &key, "/temperature", json!({"value": 22}), &format!("shared.{SERIAL}")).await;

    // The control port applies the same list: filtered lists, 403 for the other device.
    let devices = send(&app, with_key(Request::get("/api/devices"), &key)).await.json().unwrap();
    assert_eq!(devices["total"], 1);
    assert_eq!(devices["devices"][0]["serial"], SERIAL);
    let all = app.control.send(&Request::get("/api/devices")).await.unwrap().json().unwrap();
    assert_eq!(all["total"], 2, "without the key, an open port still lists both");
    for path in [
        format!("/status?serial={OTHER}"),
        format!("/api/schedule?serial={OTHER}"),
        format!("/api/history?serial={OTHER}"),
    ] {
        expect(&send(&app, with_key(Request::get(&path), &key)).await, 403, denied.clone());
    }
    assert_eq!(send(&app, with_key(Request::get(&format!("/status?serial={SERIAL}")), &key)).await.status(), 200);
    let r = send(
        &app,
        with_key(
            Request::post("/command").json(&json!({"serial": OTHER, "command": "set_mode", "value": "off"})),
            &key,
        ),
    )
    .await;
    expect(&r, 403, json!({"success": false, "message": "Access denied to this device"}));
    let r = send(&app, with_key(Request::post("/notify-device").json(&json!({"serial": OTHER})), &key)).await;
    assert_eq!(r.status(), 403);
    for path in ["/api/stats", "/api/events/stats", "/api/registered-devices"] {
        let r = send(&app, with_key(Request::get(path), &key)).await;
        assert_eq!(r.status(), 403, "{path} covers every device");
    }
    let r = send(&app, with_key(Request::get(&format!("/api/events?serial={OTHER}")), &key)).await;
    expect(&r, 403, denied);

    // Its event stream carries only its own device.
    let mut conn = app.control.connect().await.unwrap();
    conn.send_request(&Request::get(&format!("/api/events?token={key}"))).await.unwrap();
    assert_eq!(conn.read_head().await.unwrap().status, 200);
    assert_eq!(app.command(OTHER, "set_mode", json!("off")).await.status(), 200);
    assert_eq!(app.command(SERIAL, "set_mode", json!("off")).await.status(), 200);
    assert_eq!(first_serial(&mut conn).await, SERIAL, "the other device's change is not in this stream");
}

#[tokio::test]
async fn expired_revoked_missing_and_unknown_keys_get_401() {
    let app = TestApp::start(&["--control-trusted-networks=127.0.0.0/8"]).await;
    app.booted(SERIAL).await;
    let unauthorized = json!({"error": "Unauthorized"});
    // Every way a client presents a key: Bearer (any case), the bare key, X-API-Key.
    let (key, id) = new_key(&app, None, json!({"scopes": ["read"]})).await;
    for req in [
        Request::get("/api/v1/devices").header("Authorization", format!("Bearer {key}")),
        Request::get("/api/v1/devices").header("Authorization", format!("bearer {key}")),
        Request::get("/api/v1/devices").header("Authorization", key.clone()),
        Request::get("/api/v1/devices").header("X-API-Key", key.clone()),
    ] {
        assert_eq!(send(&app, req.clone()).await.status(), 200, "{:?}", req.headers);
    }
    // Without a key: 401, even from a trusted network; and so for a key nobody issued.
    let r = send(&app, Request::get("/api/v1/devices")).await;
    expect(&r, 401, unauthorized.clone());
    assert!(r.header("x-ratelimit-limit").is_none(), "no key, no bucket");
    let made_up = format!("nle_{}", "ab".repeat(32));
    expect(&get(&app, &made_up, "/api/v1/devices").await, 401, unauthorized.clone());
    expect(&get(&app, "nlapi_test", "/api/v1/devices").await, 401, unauthorized.clone());

    // Revoked: refused at once.
    let r = app.control.send(&Request::new("DELETE", &format!("/api/keys/{id}"))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap()["key"]["status"], "revoked");
    expect(&get(&app, &key, "/api/v1/devices").await, 401, unauthorized.clone());
    assert_eq!(app.control.send(&Request::new("DELETE", "/api/keys/999")).await.unwrap().status(), 404);

    // Expiring: works until its time, then 401.
    let expires = iso8601(now_ms() + 2500);
    let (short, _) = new_key(&app, None, json!({"scopes": ["read"], "expires": expires})).await;
    let r = get(&app, &short, "/api/v1/devices").await;
    assert!(r.status() == 200 || now_ms() >= parse_rfc3339(&expires).unwrap(), "{}", r.status());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&app, &short, "/api/v1/devices").await;
        if r.status() == 401 {
            expect(&r, 401, unauthorized);
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(tokio::time::Instant::now() < deadline, "the key never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = app.control.send(&Request::get("/api/keys")).await.unwrap().json().unwrap();
    let statuses: Vec<&str> = list["keys"].as_array().unwrap().iter().map(|k| k["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["revoked", "expired"]);
    assert!(!list.to_string().contains(&key) && !list.to_string().contains(&short), "keys are never shown again");
}

#[tokio::test]
async fn the_rate_limit_is_per_key_with_the_hosted_headers() {
    let app = TestApp::start(&["--v1-rate-limit-per-minute=3"]).await;
    app.booted(SERIAL).await;
    let (key, _) = new_key(&app, None, json!({"scopes": ["read", "write"]})).await;
    let (other, _) = new_key(&app, None, json!({"scopes": ["read"]})).await;
    let mut resets = Vec::new();
    for remaining in ["2", "1", "0"] {
        let r = get(&app, &key, "/api/v1/devices").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
        resets.push(r.header("x-ratelimit-reset").unwrap().to_string());
    }
    assert!(resets.iter().all(|r| r == &resets[0]), "one window: {resets:?}");
    // The fourth request of the minute (a write too) is refused.
    let r = post(&app, &key, &thermostat("/temperature"), json!({"value": 22})).await;
    assert_eq!(r.status(), 429);
    let body = r.json().unwrap();
    assert_eq!(body["error"], "Rate limit exceeded");
    assert_eq!(body["retryAfter"], resets[0].as_str(), "retry when the window resets");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset"), Some(resets[0].as_str()));
    let reset = parse_rfc3339(&resets[0]).unwrap();
    let retry_after: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after) && reset <= now_ms() + 60_000);
    let status = app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap();
    assert_eq!(status["target_temperature"], 20.0, "the refused write did nothing");
    // Another key has its own window, and the rest of the control port is not limited.
    assert_eq!(get(&app, &other, "/api/v1/devices").await.header("x-ratelimit-remaining"), Some("2"));
    for _ in 0..10 {
        assert_eq!(send(&app, with_key(Request::get("/api/devices"), &key)).await.status(), 200);
    }
}
