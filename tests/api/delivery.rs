//! Delivery a user can trust: a command is pending until the thermostat confirms it, is pushed
//! once (whatever `base_object_revision` the thermostat sends), loses to a later change on the
//! dial, survives a reboot upload, and expires when it never went out.

use std::sync::{Arc, Mutex};

use roost::sim::Thermostat;
use roost::sim::http::{Client, Request};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::Stream;
use crate::helpers::*;

fn shared() -> String {
    format!("shared.{SERIAL}")
}

async fn status(app: &TestApp) -> Value {
    app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap()
}

/// How many chunks the thermostat received that carried its shared bucket.
fn shared_pushes(t: &Thermostat) -> usize {
    t.state().chunks.iter().filter(|keys| keys.contains(&shared())).count()
}

#[tokio::test]
async fn an_acknowledgement_with_base_object_revision_zero_gets_the_push_once_not_on_every_wake() {
    let app = TestApp::start(&["--connection-hold-timeout=0.3"]).await;
    let t = app.booted(SERIAL).await.with_base_revision_zero();
    let stop = CancellationToken::new();
    let task = t.run(stop.clone());
    let before = shared_pushes(&t);
    assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    let acked = t
        .wait_for(WAIT, "the setpoint, acknowledged", |s| {
            s.field(&shared(), "target_temperature") == Some(&json!(23.0))
                && s.field(&shared(), "target_change_pending") == Some(&json!(false))
        })
        .await
        .unwrap();
    // Several more wakes (each hold ends after 0.3 s and the thermostat resubscribes).
    t.wait_for(WAIT, "three more subscribes", |s| s.subscribes >= acked.subscribes + 3).await.unwrap();
    stop.cancel();
    task.await.unwrap();
    assert_eq!(shared_pushes(&t) - before, 1, "pushed once: {:?}", t.state().chunks);
    assert!(status(&app).await.get("pending").is_none(), "confirmed");
}

#[tokio::test]
async fn a_command_stays_pending_through_a_reboot_upload_and_a_later_dial_change_wins() {
    let app = TestApp::start(&["--defer-device-window=0", "--connection-hold-timeout=0.5"]).await;
    let mut t = app.booted(SERIAL).await;
    let mut events = Stream::open(&app.control, "/api/events?events=command", None).await;
    // The thermostat is away (no subscribe held): the command waits.
    assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    let s = status(&app).await;
    assert_eq!(s["target_temperature"], json!(23.0), "the commanded value stays visible");
    assert_eq!(s["pending"]["fields"], json!({"target_temperature": 23.0}));
    assert!(s["pending"]["expires"].is_string(), "{s}");

    // It reboots and uploads its full state with the old setpoint: the command stays pending.
    t.boot(21.0).await.unwrap();
    let s = status(&app).await;
    assert_eq!(s["target_temperature"], json!(23.0));
    assert_eq!(s["current_temperature"], json!(21.0), "the rest of the upload is stored");
    assert_eq!(s["pending"]["fields"], json!({"target_temperature": 23.0}));

    // Someone turns the dial after the command: the thermostat's value wins.
    t.turn_dial("shared", json!({"target_temperature": 18.5})).await.unwrap().unwrap();
    let s = status(&app).await;
    assert_eq!(s["target_temperature"], json!(18.5));
    assert!(s.get("pending").is_none(), "{s}");
    let overridden = loop {
        let e = events.next_event().await.expect("command events");
        if e.event.as_deref() == Some("command") && e.json()["state"] == "overridden" {
            break e.json();
        }
    };
    assert_eq!(overridden["objects"][0]["fields"], json!({"target_temperature": 18.5}));

    // The command is not delivered when the thermostat comes back.
    t.subscribe_once().await.unwrap();
    assert_eq!(t.state().field(&shared(), "target_temperature"), Some(&json!(18.5)));
}

#[tokio::test]
async fn a_command_the_thermostat_never_fetched_expires_and_is_not_delivered() {
    let app = TestApp::start(&["--pending-setpoint-expiry-seconds=0.5", "--connection-hold-timeout=0.5"]).await;
    let t = app.booted(SERIAL).await;
    let mut events = Stream::open(&app.control, "/api/events?events=command", None).await;
    assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    let mut states = Vec::new();
    let expired = loop {
        let e = events.next_event().await.expect("command events");
        if let Some(state) = e.json()["state"].as_str() {
            states.push(state.to_string());
            if state == "expired" {
                break e.json();
            }
        }
    };
    assert_eq!(states, ["pending", "expired"]);
    assert_eq!(expired["serial"], SERIAL);
    assert_eq!(expired["objects"][0]["fields"], json!({"target_temperature": 23.0}));
    assert_eq!(expired["objects"][0]["restored"], json!({"target_temperature": 20.0}));
    let s = status(&app).await;
    assert_eq!(s["target_temperature"], json!(20.0), "the thermostat's value is back");
    assert!(s.get("pending").is_none());

    t.subscribe_once().await.unwrap();
    let state = t.state();
    assert_eq!(state.field(&shared(), "target_temperature"), Some(&json!(20.0)));
    assert_eq!(state.field(&shared(), "target_change_pending"), Some(&json!(false)));
}

#[tokio::test]
async fn a_confirmed_command_clears_pending_and_says_so() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let stop = CancellationToken::new();
    let task = t.run(stop.clone());
    let mut events = Stream::open(&app.control, "/api/events?events=command", None).await;
    app.command(SERIAL, "set_fan", json!("on")).await;
    let confirmed = loop {
        let e = events.next_event().await.expect("command events");
        if e.json()["state"] == "confirmed" {
            break e.json();
        }
    };
    assert_eq!(confirmed["objects"][0]["object_key"], format!("device.{SERIAL}"));
    let devices = app.control.send(&Request::get("/api/devices")).await.unwrap().json().unwrap();
    assert!(devices["devices"][0].get("pending").is_none(), "{devices}");
    stop.cancel();
    task.await.unwrap();
}

/// A server that answers every listed bucket it lacks with the empty revision-0 object, as the
/// reference does; it records each subscribe body and holds the second one.
async fn placeholder_server() -> (String, Arc<Mutex<Vec<Value>>>, watch::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = bodies.clone();
    let (count_tx, count) = watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            let count_tx = count_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let body = loop {
                    let mut chunk = [0u8; 4096];
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else { continue };
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break serde_json::from_slice::<Value>(&buf[end + 4..end + 4 + length]).unwrap();
                    }
                };
                let listed: Vec<Value> = body["objects"].as_array().cloned().unwrap_or_default();
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(body);
                    count_tx.send_replace(seen.len());
                    seen.len() == 1
                };
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                socket.write_all(head.as_bytes()).await.unwrap();
                if !first {
                    // Held: nothing more.
                    std::future::pending::<()>().await;
                }
                let placeholders: Vec<Value> = listed
                    .iter()
                    .map(|o| json!({"object_revision": 0, "object_timestamp": 0, "object_key": o["object_key"], "value": {}}))
                    .collect();
                let doc = json!({"objects": placeholders}).to_string();
                let chunk = format!("{:x}\r\n{doc}\r\n0\r\n\r\n", doc.len());
                let _ = socket.write_all(chunk.as_bytes()).await;
            });
        }
    });
    (url, bodies, count)
}

#[tokio::test]
async fn the_simulator_does_not_spin_when_a_server_answers_with_empty_revision_zero_objects() {
    let (url, bodies, mut count) = placeholder_server().await;
    let t = Thermostat::new(Client::new(&url).unwrap(), SERIAL);
    let stop = CancellationToken::new();
    let task = t.run(stop.clone());
    tokio::time::timeout(WAIT, count.wait_for(|n| *n >= 2)).await.expect("a second subscribe").unwrap();
    stop.cancel();
    task.await.unwrap();
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies[0]["objects"].as_array().unwrap().len(), 3, "device, shared and schedule at 0/0");
    assert_eq!(bodies[1]["objects"], json!([]), "what the server lacks is not asked for again: {}", bodies[1]);
}

#[tokio::test]
async fn a_pending_command_survives_a_restart_and_is_confirmed_afterwards() {
    let tmp = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    app.booted(SERIAL).await;
    assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    let before = status(&app).await["pending"].clone();
    assert_eq!(before["fields"], json!({"target_temperature": 23.0}));
    app.stop().await;

    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    assert_eq!(status(&app).await["pending"], before, "kept across the restart");
    let t = app.thermostat(SERIAL);
    let stop = CancellationToken::new();
    let task = t.run(stop.clone());
    t.wait_for(WAIT, "the command, acknowledged", |s| {
        s.field(&shared(), "target_temperature") == Some(&json!(23.0))
            && s.field(&shared(), "target_change_pending") == Some(&json!(false))
    })
    .await
    .unwrap();
    stop.cancel();
    task.await.unwrap();
    assert!(status(&app).await.get("pending").is_none());
}
