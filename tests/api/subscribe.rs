use std::time::{Duration, Instant};

use roost::sim::http::Request;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

fn shared() -> String {
    format!("shared.{SERIAL}")
}

fn device() -> String {
    format!("device.{SERIAL}")
}

#[tokio::test]
async fn headers_go_out_at_once_and_the_hold_ends_with_the_terminal_chunk() {
    // With a 60 s hold, the head arriving within WAIT shows it is not held back with the body.
    let app = TestApp::start(&["--connection-hold-timeout=60", "--suspend-time-max=300"]).await;
    let t = app.booted(SERIAL).await;
    let (_conn, head) = tokio::time::timeout(WAIT, t.open_subscribe()).await.expect("head at once").unwrap();
    assert_eq!(head.status, 200);
    drop(app);

    let app = TestApp::start(&["--connection-hold-timeout=1", "--suspend-time-max=300"]).await;
    let t = app.booted(SERIAL).await;
    let started = Instant::now();
    let (mut conn, head) = t.open_subscribe().await.unwrap();
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(head.header("x-nl-suspend-time-max"), Some("300"));
    assert_eq!(head.header("x-nl-defer-device-window"), Some("15"));
    let ts: i64 = head.header("x-nl-service-timestamp").unwrap().parse().unwrap();
    assert!((ts - roost::domain::time::now_ms()).abs() < 5000);
    assert!(head.header("x-nl-disable-defer-window").is_none());
    // Up to date: no body at all, then the terminal chunk at the hold timeout.
    assert_eq!(conn.next_chunk_within(WAIT).await.unwrap(), None);
    assert!(started.elapsed() >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_command_reaches_the_held_subscribe_at_once_and_the_ack_keeps_revision() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (mut conn, _) = t.open_subscribe().await.unwrap();
    let sent = Instant::now();
    let r = app.command(SERIAL, "set_temperature", json!(23.5)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json().unwrap(),
        json!({"success": true, "data": {"object_key": shared(), "values": {"target_temperature": 23.5, "target_change_pending": true}}})
    );
    let chunk = conn.next_chunk_within(Duration::from_secs(1)).await.expect("pushed within a second").unwrap();
    assert!(sent.elapsed() < Duration::from_secs(1));
    let raw = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(raw.starts_with(r#"{"objects":[{"object_revision":"#), "{raw}");
    let doc = chunk_json(&chunk);
    assert_eq!(keys_of(&doc), vec![shared()]);
    let o = &doc["objects"][0];
    assert_eq!(
        o.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["object_revision", "object_timestamp", "object_key", "value"]
    );
    assert_eq!(o["value"]["target_temperature"], json!(23.5));
    assert_eq!(o["value"]["target_change_pending"], json!(true));
    assert_eq!(o["value"]["current_temperature"], json!(21.5), "pushes carry the whole bucket");
    // After the 3 s batch window the response ends.
    let pushed_at = Instant::now();
    assert_eq!(conn.next_chunk_within(WAIT).await.unwrap(), None);
    assert!(pushed_at.elapsed() >= Duration::from_millis(2500));

    // The device applies it and acknowledges; revision and timestamp stay.
    t.apply_chunk(&chunk).await.unwrap();
    let state = t.state();
    let local = &state.buckets[&shared()];
    assert_eq!(local.value["target_change_pending"], json!(false));
    let list = app.device.send(&device_req("GET", &format!("/nest/transport/device/{SERIAL}"), SERIAL)).await.unwrap();
    let server = list.json().unwrap()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object_key"] == shared())
        .cloned()
        .unwrap();
    assert_eq!(server["object_revision"], o["object_revision"]);
    assert_eq!(server["object_timestamp"], o["object_timestamp"]);
    // The acknowledged bucket is not pushed back: the next subscribe is held.
    let (mut conn, _) = t.open_subscribe().await.unwrap();
    assert!(conn.next_chunk_within(Duration::from_millis(300)).await.is_err(), "held, nothing pushed");
}

#[tokio::test]
async fn the_simulator_follows_commands_end_to_end() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let stop = CancellationToken::new();
    let task = t.run(stop.clone());
    for target in [22.0, 19.5] {
        let r = app.command(SERIAL, "set_temperature", json!(target)).await;
        assert_eq!(r.status(), 200);
        t.wait_for(WAIT, "the new setpoint, acknowledged", |s| {
            s.field(&shared(), "target_temperature") == Some(&json!(target))
                && s.field(&shared(), "target_change_pending") == Some(&json!(false))
        })
        .await
        .unwrap();
    }
    let r = app.command(SERIAL, "set_temperature", json!({"low": 18.5, "high": 25.0})).await;
    assert_eq!(r.status(), 200);
    t.wait_for(WAIT, "the range", |s| s.field(&shared(), "target_temperature_high") == Some(&json!(25.0)))
        .await
        .unwrap();
    stop.cancel();
    task.await.unwrap();
    assert!(t.state().last_error.is_none(), "{:?}", t.state().last_error);
}

#[tokio::test]
async fn newer_server_data_goes_out_at_once_but_never_placeholders() {
    let app = TestApp::start(&["--connection-hold-timeout=1"]).await;
    put(&app.device, SERIAL, json!({"objects": [{"object_key": shared(), "value": {"target_temperature": 20.5, "target_temperature_type": "heat"}}]})).await;
    let (mut conn, head) = open_subscribe(
        &app.device,
        SERIAL,
        listing(&[(&shared(), 0, 0), (&device(), 0, 0), (&format!("schedule.{SERIAL}"), 0, 0)]),
    )
    .await;
    assert_eq!(head.header("x-nl-disable-defer-window"), Some("60"), "setpoint fields in an immediate reply");
    let doc = chunk_json(&conn.next_chunk_within(WAIT).await.unwrap().unwrap());
    let keys = keys_of(&doc);
    assert!(keys.contains(&shared()));
    assert!(!keys.contains(&device()), "no placeholder for a bucket the server lacks: {keys:?}");
    assert!(!keys.contains(&format!("schedule.{SERIAL}")));
    assert_eq!(doc["objects"][0]["value"], json!({"target_temperature": 20.5, "target_temperature_type": "heat"}));
}

#[tokio::test]
async fn timestamps_decide_and_equal_is_in_sync() {
    let app = TestApp::start(&["--connection-hold-timeout=0.5"]).await;
    let r = put(&app.device, SERIAL, json!({"objects": [{"object_key": shared(), "value": {"name": "Hall"}}]})).await;
    let ts = r["objects"][0]["object_timestamp"].as_i64().unwrap();
    // Owned in open mode: the first subscribe also carries the structure once; take it.
    let (mut conn, _) = open_subscribe(&app.device, SERIAL, listing(&[(&shared(), 1, ts)])).await;
    while conn.next_chunk_within(WAIT).await.unwrap().is_some() {}
    let user = "user.homeassistant";
    let structure = "structure.homeassistant";
    let list = app.listing_of(SERIAL).await;
    let ts_of = |k: &str| {
        list["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == k).unwrap()["object_timestamp"]
            .as_i64()
            .unwrap()
    };
    let held = |rev: i64, client_ts: i64| {
        listing(&[(&shared(), rev, client_ts), (user, 1, ts_of(user)), (structure, 1, ts_of(structure))])
    };
    for (rev, client_ts, expect_push) in
        [(0, ts, false), (9, ts, false), (1, ts + 5000, false), (1, ts - 1, true), (1, 0, true)]
    {
        let (mut conn, _) = open_subscribe(&app.device, SERIAL, held(rev, client_ts)).await;
        let first = conn.next_chunk_within(WAIT).await.unwrap();
        assert_eq!(first.is_some(), expect_push, "rev {rev} ts {client_ts} vs server ts {ts}");
    }
}

#[tokio::test]
async fn inline_updates_are_applied_and_the_reply_carries_the_updated_bucket() {
    let app = TestApp::start(&[]).await;
    put(
        &app.device,
        SERIAL,
        json!({"objects": [{"object_key": shared(), "value": {"target_temperature": 20.0, "name": "Hall"}}]}),
    )
    .await;
    let body = json!({"chunked": true, "objects": [{"object_key": shared(), "object_revision": 0, "object_timestamp": 0, "value": {"target_temperature": 22.0}}]});
    let (mut conn, _) = open_subscribe(&app.device, SERIAL, body).await;
    let doc = chunk_json(&conn.next_chunk_within(WAIT).await.unwrap().unwrap());
    let o = doc["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == shared()).unwrap();
    assert_eq!(o["value"], json!({"target_temperature": 22.0, "name": "Hall"}));
    assert_eq!(o["object_revision"], 2);
}

#[tokio::test]
async fn changes_within_the_batch_window_go_out_as_further_chunks() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (mut conn, _) = t.open_subscribe().await.unwrap();
    app.command(SERIAL, "set_temperature", json!(21.0)).await;
    let first = chunk_json(&conn.next_chunk_within(Duration::from_secs(1)).await.unwrap().unwrap());
    app.command(SERIAL, "set_temperature", json!(22.0)).await;
    let second = chunk_json(&conn.next_chunk_within(Duration::from_secs(1)).await.unwrap().unwrap());
    assert_eq!(first["objects"][0]["value"]["target_temperature"], json!(21.0));
    assert_eq!(second["objects"][0]["value"]["target_temperature"], json!(22.0));
    assert_eq!(conn.next_chunk_within(WAIT).await.unwrap(), None);
}

#[tokio::test]
async fn every_held_subscribe_receives_a_push_and_the_oldest_is_ended_past_the_limit() {
    let app = TestApp::start(&["--max-subscriptions-per-device=2"]).await;
    let t = app.booted(SERIAL).await;
    let (mut a, _) = t.open_subscribe().await.unwrap();
    let (mut b, _) = t.open_subscribe().await.unwrap();
    app.command(SERIAL, "set_temperature", json!(21.0)).await;
    let pushed = a.next_chunk_within(Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(b.next_chunk_within(Duration::from_secs(1)).await.unwrap(), Some(pushed.clone()));
    t.apply_chunk(&pushed).await.unwrap();
    drop(a);
    // Both ended after their batch window; open three: the first is ended at once.
    assert_eq!(b.next_chunk_within(WAIT).await.unwrap(), None);
    let (mut c1, _) = t.open_subscribe().await.unwrap();
    let (mut c2, _) = t.open_subscribe().await.unwrap();
    let (mut c3, _) = t.open_subscribe().await.unwrap();
    assert_eq!(
        c1.next_chunk_within(Duration::from_secs(2)).await.unwrap(),
        None,
        "oldest ended with the terminal chunk"
    );
    app.command(SERIAL, "set_temperature", json!(22.0)).await;
    assert!(c2.next_chunk_within(Duration::from_secs(1)).await.unwrap().is_some());
    assert!(c3.next_chunk_within(Duration::from_secs(1)).await.unwrap().is_some());
}

#[tokio::test]
async fn a_change_made_while_no_subscribe_is_held_arrives_on_the_next_one() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    app.command(SERIAL, "set_temperature", json!(24.0)).await;
    let (mut conn, _) = t.open_subscribe().await.unwrap();
    let doc = chunk_json(&conn.next_chunk_within(WAIT).await.unwrap().unwrap());
    let o = doc["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == shared()).unwrap();
    assert_eq!(o["value"]["target_temperature"], json!(24.0));
}

#[tokio::test]
async fn non_chunked_subscribe_answers_at_once() {
    let app = TestApp::start(&[]).await;
    put(&app.device, SERIAL, json!({"objects": [{"object_key": shared(), "value": {"a": 1}}]})).await;
    for chunked in [json!(false), json!("false"), json!(null)] {
        let body = json!({"chunked": chunked, "objects": [{"object_key": shared(), "object_revision": 0, "object_timestamp": 0}]});
        let started = Instant::now();
        let r = app.device.send(&device_req("POST", "/nest/transport", SERIAL).json(&body)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(6), "well inside the device's 7 s");
        assert_eq!(r.status(), 200);
        assert!(r.header("transfer-encoding").is_none());
        assert!(keys_of(&r.json().unwrap()).contains(&shared()));
    }
}

#[tokio::test]
async fn all_subscribe_paths_and_the_named_bucket_form_work() {
    let app = TestApp::start(&[]).await;
    put(&app.device, SERIAL, json!({"objects": [{"object_key": shared(), "value": {"a": 1}}]})).await;
    let named =
        json!({"chunked": false, "shared": {"object_key": shared(), "object_revision": 0, "object_timestamp": 0}});
    for path in [
        "/nest/transport",
        "/nest/transport/",
        "/nest/transport/subscribe",
        "/nest/transport/v7/subscribe",
        "/czfe/v5/subscribe",
        "/transport/v5/subscribe",
        "/transport",
    ] {
        let r = app.device.send(&device_req("POST", path, SERIAL).json(&named)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(keys_of(&r.json().unwrap()).contains(&shared()), "{path}");
    }
    let list = app
        .device
        .send(&device_req("GET", &format!("/nest/transport/v7/device/device.{SERIAL}"), "OTHER0000000"))
        .await
        .unwrap();
    assert!(keys_of(&list.json().unwrap()).contains(&shared()));
    let legacy = app.device.send(&Request::get(&format!("/czfe/v5/device/{SERIAL}"))).await.unwrap();
    assert!(keys_of(&legacy.json().unwrap()).contains(&shared()));
}

#[tokio::test]
async fn the_simulator_defers_local_changes_as_the_server_asks() {
    let app = TestApp::start(&["--defer-device-window=2"]).await;
    let t = app.booted(SERIAL).await;
    assert_eq!(t.state().defer_window, Duration::from_secs(2));
    let turned = t.turn_dial("shared", json!({"target_temperature": 18.5}));
    let list = device_req("GET", &format!("/nest/transport/device/{SERIAL}"), SERIAL);
    let before = app.device.send(&list).await.unwrap().json().unwrap();
    turned.await.unwrap().unwrap();
    let after = app.device.send(&list).await.unwrap().json().unwrap();
    assert_ne!(before, after, "the change reached the server only after the defer window");
    let (mut conn, head) = open_subscribe(&app.device, SERIAL, listing(&[(&shared(), 0, 0)])).await;
    assert_eq!(head.header("x-nl-defer-device-window"), Some("2"));
    let doc = chunk_json(&conn.next_chunk_within(WAIT).await.unwrap().unwrap());
    assert_eq!(doc["objects"][0]["value"]["target_temperature"], json!(18.5));
}
