use serde_json::{Value, json};

use crate::helpers::*;

fn shared() -> String {
    format!("shared.{SERIAL}")
}

fn device() -> String {
    format!("device.{SERIAL}")
}

#[tokio::test]
async fn receipts_carry_revision_timestamp_and_key_only() {
    let app = TestApp::start(&[]).await;
    let before = roost::domain::time::now_ms();
    let r = app
        .device
        .send(&device_req("POST", "/nest/transport/v7/put", SERIAL).json(&json!({
            "session": "s", "objects": [{"object_key": device(), "base_object_revision": 0, "value": {"current_humidity": 45, "target_temperature": 21.0}}]
        })))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for h in ["X-nl-service-timestamp", "X-nl-suspend-time-max", "X-nl-defer-device-window"] {
        assert!(r.header(h).is_some(), "{h}");
    }
    let raw = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(raw.starts_with(r#"{"objects":[{"object_revision":1,"object_timestamp":"#), "{raw}");
    let j = r.json().unwrap();
    let o = &j["objects"][0];
    assert_eq!(
        o.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["object_revision", "object_timestamp", "object_key"]
    );
    let ts = o["object_timestamp"].as_i64().unwrap();
    assert!(ts >= before && ts > 1_000_000_000_000, "timestamps are milliseconds");
}

#[tokio::test]
async fn identical_put_keeps_revision_and_timestamp_and_a_change_bumps_by_one() {
    let app = TestApp::start(&[]).await;
    let body = json!({"session": "s", "objects": [{"object_key": shared(), "value": {"target_temperature": 21.5}}]});
    let a = put(&app.device, SERIAL, body.clone()).await;
    let b = put(&app.device, SERIAL, body).await;
    assert_eq!(a, b);
    let c =
        put(&app.device, SERIAL, json!({"objects": [{"object_key": shared(), "value": {"target_temperature": 23.0}}]}))
            .await;
    assert_eq!(c["objects"][0]["object_revision"], a["objects"][0]["object_revision"].as_i64().unwrap() + 1);
    assert!(c["objects"][0]["object_timestamp"].as_i64() > a["objects"][0]["object_timestamp"].as_i64());
}

#[tokio::test]
async fn conditional_write_mismatch_skips_only_that_bucket() {
    let app = TestApp::start(&[]).await;
    put(&app.device, SERIAL, json!({"objects": [{"object_key": shared(), "value": {"target_temperature": 19.0}}]}))
        .await;
    let current = put(&app.device, SERIAL, json!({"objects": [{"object_key": shared(), "value": {"x": 1}}]})).await;
    let (rev, ts) =
        (current["objects"][0]["object_revision"].clone(), current["objects"][0]["object_timestamp"].clone());
    // Bucket-keyed form, as 4.x firmware and the protocol notes write it.
    let j = put(
        &app.device,
        SERIAL,
        json!({
            "session": "s",
            (shared()): {"object_key": shared(), "if_object_revision": 1, "target_temperature": 23.0},
            (device()): {"object_key": device(), "base_object_revision": 3, "current_humidity": 44},
        }),
    )
    .await;
    let objects = j["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2);
    let s = objects.iter().find(|o| o["object_key"] == shared()).unwrap();
    assert_eq!((s["object_revision"].clone(), s["object_timestamp"].clone()), (rev, ts));
    assert!(s.get("value").is_none());
    let d = objects.iter().find(|o| o["object_key"] == device()).unwrap();
    assert_eq!(d["object_revision"], 1);
    // The rejected value was not stored; the device bucket was.
    let t = app.thermostat(SERIAL);
    let (mut conn, _) = t.open_subscribe().await.unwrap();
    let chunk = conn.next_chunk_within(WAIT).await.unwrap().unwrap();
    let doc = chunk_json(&chunk);
    let shared_obj = doc["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == shared()).unwrap();
    assert_eq!(shared_obj["value"]["target_temperature"], json!(19.0));
    let device_obj = doc["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == device()).unwrap();
    assert_eq!(device_obj["value"]["current_humidity"], json!(44));
}

#[tokio::test]
async fn values_are_stored_exactly_as_sent() {
    let app = TestApp::start(&[]).await;
    let value = json!({"i": 21, "f": 21.0, "s": "21", "b": false, "n": null, "nested": {"z": 1, "a": [1.5, "x"]}, "big": 3.822});
    put(&app.device, SERIAL, json!({"objects": [{"object_key": device(), "value": value}]})).await;
    let (mut conn, _) = open_subscribe(&app.device, SERIAL, listing(&[(&device(), 0, 0)])).await;
    let chunk = conn.next_chunk_within(WAIT).await.unwrap().unwrap();
    let raw = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(
        raw.contains(
            r#""value":{"i":21,"f":21.0,"s":"21","b":false,"n":null,"nested":{"z":1,"a":[1.5,"x"]},"big":3.822}"#
        ),
        "{raw}"
    );
}

#[tokio::test]
async fn a_device_put_never_wakes_its_own_held_subscribe() {
    let app = TestApp::start(&["--connection-hold-timeout=1.5"]).await;
    let t = app.booted(SERIAL).await;
    let (mut conn, head) = t.open_subscribe().await.unwrap();
    assert_eq!(head.status, 200);
    t.set_local("shared", json!({"target_temperature": 17.5})).await.unwrap();
    // The hold ends with the terminal chunk and nothing before it.
    assert_eq!(conn.next_chunk_within(WAIT).await.unwrap(), None);
}

#[tokio::test]
async fn fifty_connections_putting_to_200_serials_all_succeed() {
    let app = TestApp::start(&[]).await;
    let mut tasks = Vec::new();
    for c in 0..50usize {
        let client = app.device.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            for round in 0..8usize {
                let serial = format!("LOAD{:012}", (c * 4 + round % 4) % 200);
                let body = json!({"objects": [{"object_key": format!("device.{serial}"), "value": {"seq": round, "conn": c}}]});
                let req = device_req("POST", "/nest/transport/put", &serial).header("Connection", "keep-alive").json(&body);
                let r = conn.roundtrip(&req).await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each serial ends with the last values written to it (round 4..7 wrote after 0..3).
    for c in [0usize, 17, 49] {
        let serial = format!("LOAD{:012}", (c * 4) % 200);
        let (mut conn, _) = open_subscribe(&app.device, &serial, json!({"chunked": true, "objects": [{"object_key": format!("device.{serial}"), "object_revision": 0, "object_timestamp": 0}]})).await;
        let doc = chunk_json(&conn.next_chunk_within(WAIT).await.unwrap().unwrap());
        let value: &Value = &doc["objects"][0]["value"];
        assert_eq!(value["seq"], 4, "{serial}: {value}");
    }
}

#[tokio::test]
async fn a_lagging_base_revision_alone_changes_nothing_and_echoes_nothing() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (mut held, _) = t.open_subscribe().await.unwrap();
    // Captured firmware PUTs with a base revision behind the one it holds; that is informational.
    let body = json!({"session": "s", "objects": [{"object_key": device(), "base_object_revision": 14, "value": {"battery_level": 3.822, "current_humidity": 44}}]});
    let first = put(&app.device, SERIAL, body.clone()).await;
    let again = put(&app.device, SERIAL, body).await;
    assert_eq!(first, again, "the identical PUT keeps revision and timestamp");
    let listed = app.listing_of(SERIAL).await;
    let stored = listed["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == device()).unwrap();
    assert_eq!(
        stored["object_timestamp"], first["objects"][0]["object_timestamp"],
        "the receipt is the stored version"
    );
    assert!(held.next_chunk_within(std::time::Duration::from_millis(300)).await.is_err(), "nothing pushed back");
}
