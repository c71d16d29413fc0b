use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const PAIRING: &[&str] = &["--require-device-pairing=true"];

fn body_for(serial: &str) -> serde_json::Value {
    json!({"session": "s", "objects": [{"object_key": format!("device.{serial}"), "value": {"a": 1}}]})
}

#[tokio::test]
async fn unknown_devices_are_refused_on_every_transport_and_upload_path() {
    let app = TestApp::start(PAIRING).await;
    let unknown = json!({"error": "Device not authorized. Complete pairing first."});
    for path in [
        "/nest/transport/put",
        "/nest/transport/v7/put",
        "/czfe/v5/put",
        "/transport/v5/put",
        "/nest/transport/v7/subscribe",
        "/czfe/v5/subscribe",
        "/nest/upload",
        "/upload",
    ] {
        let r = app.device.send(&device_req("POST", path, SERIAL).json(&body_for(SERIAL))).await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.json().unwrap(), unknown, "{path}");
    }
    let r = app.device.send(&device_req("GET", &format!("/czfe/v5/device/{SERIAL}"), SERIAL)).await.unwrap();
    assert_eq!(r.status(), 401);
    // Discovery and pairing codes stay open, so pairing can start.
    let r = app.device.send(&device_req("GET", "/nest/entry", SERIAL)).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn pairing_flow_end_to_end_with_the_simulator() {
    let app = TestApp::start(PAIRING).await;
    let mut t = app.thermostat(SERIAL);
    t.entry().await.unwrap();
    let (code, _) = t.passphrase().await.unwrap();

    // Pending: its PUTs are dropped silently, its subscribe is held.
    let r = app.device.send(&device_req("POST", "/nest/transport/put", SERIAL).json(&body_for(SERIAL))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap(), json!({"objects": []}));
    assert!(r.header("x-nl-service-timestamp").is_none());
    let r = app.device.send(&device_req("POST", "/upload", SERIAL).body(b"log".to_vec())).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json().unwrap(), json!({"error": "Not authorized"}));
    let listing_body = json!({"chunked": true, "objects": [
        {"object_key": format!("device.{SERIAL}"), "object_revision": 0, "object_timestamp": 0},
        {"object_key": format!("device_alert_dialog.{SERIAL}"), "object_revision": 1, "object_timestamp": i64::MAX / 2},
    ]});
    let (mut held, head) = open_subscribe(&app.device, SERIAL, listing_body).await;
    assert_eq!(head.status, 200);

    // Claiming the code (lower case and with the dash the display shows) pairs it.
    let shown = format!("{}-{}", &code[..3], &code[3..]).to_ascii_lowercase();
    let r = app.control_post("/api/register", json!({"code": shown, "userId": "alice"})).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json().unwrap(),
        json!({"success": true, "serial": SERIAL, "message": format!("Device {SERIAL} registered to alice")})
    );

    // User and structure arrive together, in one chunk, on the held subscribe.
    let chunk = held.next_chunk_within(Duration::from_secs(1)).await.unwrap().unwrap();
    let doc = chunk_json(&chunk);
    assert_eq!(keys_of(&doc), vec!["user.alice".to_string(), "structure.alice".to_string()]);
    assert_eq!(doc["objects"][0]["value"], json!({"name": "alice"}));
    assert_eq!(doc["objects"][1]["value"], json!({"name": "Home", "devices": [format!("device.{SERIAL}")]}));

    let status = app.device.send(&device_req("GET", "/nest/passphrase/status", SERIAL)).await.unwrap().json().unwrap();
    assert_eq!(status["status"], "claimed");
    assert_eq!(status["claimedBy"], "alice");

    // Paired: PUTs are stored now.
    let receipt = put(&app.device, SERIAL, body_for(SERIAL)).await;
    assert_eq!(receipt["objects"][0]["object_revision"], 1);

    // A used code cannot be claimed again.
    let r = app.control_post("/api/register", json!({"code": code, "userId": "bob"})).await;
    assert_eq!(r.json().unwrap()["success"], false);
    let r = app.control_post("/api/register", json!({"code": "12", "userId": "bob"})).await;
    assert_eq!(r.status(), 400);
    let r = app.control_post("/api/register", json!({"code": "123ABCD"})).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn open_mode_adopts_a_device_with_user_and_structure() {
    let app = TestApp::start(&[]).await;
    let mut t = app.thermostat(SERIAL);
    t.boot(20.0).await.unwrap();
    t.subscribe_once().await.unwrap();
    let s = t.state();
    assert_eq!(s.field("user.homeassistant", "name"), Some(&json!("homeassistant")));
    assert_eq!(s.field("structure.homeassistant", "devices"), Some(&json!([format!("device.{SERIAL}")])));
    assert_eq!(s.chunks.len(), 1, "user and structure in one chunk: {:?}", s.chunks);
}
