//! Issue 12: what a stranger on the network sends cannot hang roost, lock out new thermostats or
//! exhaust the machine. Each test replays one of the attacks (with small limits where the limit
//! is a setting).

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
