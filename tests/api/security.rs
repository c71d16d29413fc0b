//! Issue 12: what a stranger on the network sends cannot hang roost, lock out new thermostats or
//! exhaust the machine. Each test replays one of the attacks (with small limits where the limit
//! is a setting).

use roost::sim::http::Request;
use serde_json::{Value, json};

use crate::helpers::*;

fn padded(key: &str, field: &str, bytes: usize) -> Value {
    json!({"objects": [{"object_key": key, "value": {field: "x".repeat(bytes)}}]})
}

fn revision(receipt: &Value) -> i64 {
    receipt["objects"][0]["object_revision"].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn buckets_and_devices_have_a_byte_limit() {
    // Defaults: a 300 KiB field is far beyond anything a thermostat stores.
    let app = TestApp::start(&[]).await;
    let key = format!("device.{SERIAL}");
    assert_eq!(revision(&put(&app.device, SERIAL, padded(&key, "ok", 10)).await), 1);
    // Refused like every over-limit write: the receipt names the stored version, unchanged.
    assert_eq!(revision(&put(&app.device, SERIAL, padded(&key, "pad", 300 * 1024)).await), 1);
    assert_eq!(revision(&put(&app.device, SERIAL, padded("where.0", "pad", 300 * 1024)).await), 0, "new: 0/0");
    app.stop().await;

    // Growing one bucket a little at a time, then spreading over many.
    let app = TestApp::start(&["--max-bucket-bytes=4096", "--max-device-bytes=10240"]).await;
    assert_eq!(revision(&put(&app.device, SERIAL, padded(&key, "a", 3000)).await), 1);
    assert_eq!(revision(&put(&app.device, SERIAL, padded(&key, "b", 3000)).await), 1, "the bucket would pass 4 KiB");
    for (i, expected) in [(0, 1), (1, 1), (2, 0)] {
        let receipt = put(&app.device, SERIAL, padded(&format!("where.{i}"), "a", 3000)).await;
        assert_eq!(revision(&receipt), expected, "where.{i}: the device would pass 10 KiB");
    }
    let listing = app.listing_of(SERIAL).await;
    let stored: Vec<(&str, i64)> = listing["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["object_key"].as_str().unwrap(), o["object_revision"].as_i64().unwrap()))
        .collect();
    assert_eq!(stored, [(key.as_str(), 1), ("where.0", 1), ("where.1", 1)], "refused writes left nothing behind");
    // A thermostat's real full-state upload fits with room to spare under the defaults.
    app.stop().await;
    let app = TestApp::start(&[]).await;
    let full: Value = serde_json::from_str(include_str!("../fixtures/full_state.json")).unwrap();
    let receipt = put(&app.device, SERIAL, full).await;
    assert!(receipt["objects"].as_array().unwrap().iter().all(|o| o["object_revision"] == 1), "{receipt}");
}

/// Polls `/api/history` until a point satisfies `done` (history is recorded off the request path).
async fn history_until(app: &TestApp, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    for _ in 0..250 {
        let r = app.control.send(&Request::get(&format!("/api/history?serial={SERIAL}&since=1h"))).await.unwrap();
        let points = r.json().unwrap()["points"].as_array().cloned().unwrap_or_default();
        if points.iter().any(&done) {
            return points;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("history never showed the expected point");
}

#[tokio::test]
async fn absurd_temperatures_are_stored_but_not_charted_and_the_chart_always_answers() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    for t_c in [1.7e308, -1.7e308] {
        t.set_local("shared", json!({"current_temperature": t_c, "target_temperature": t_c})).await.unwrap();
    }
    t.set_local("shared", json!({"current_temperature": 19.5})).await.unwrap();
    history_until(&app, |p| p["current_temperature"] == json!(19.5)).await;
    // A request that spun a core forever before: it completes, and the port keeps answering.
    for range in ["24h", "7d"] {
        let chart = tokio::time::timeout(
            WAIT,
            app.control.send(&Request::get(&format!("/api/history/chart.svg?serial={SERIAL}&range={range}"))),
        )
        .await
        .expect("the chart answers")
        .unwrap();
        assert_eq!(chart.status(), 200);
        assert!(chart.body.starts_with(b"<svg"));
    }
    let points = history_until(&app, |p| p["current_temperature"] == json!(19.5)).await;
    for p in &points {
        for field in ["current_temperature", "target_temperature"] {
            let v = p[field].as_f64();
            assert!(v.is_none_or(|v| (-50.0..=80.0).contains(&v)), "{field} charted: {p}");
        }
    }
    // The thermostat's own value is kept as sent.
    let status = app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap();
    assert_eq!(status.json().unwrap()["target_temperature"], json!(-1.7e308));
    let health = tokio::time::timeout(WAIT, app.control.send(&Request::get("/health"))).await.expect("health answers");
    assert_eq!(health.unwrap().status(), 200);
}
