//! Held subscribes and event streams are written by roost's connection layer once their head is
//! out (`src/conn/detach.rs`): what a client sees must not change, and the connection must end
//! cleanly. HEAD and HTTP/1.0 requests keep actix's own framing.

use std::time::Duration;

use roost::sim::http::Request;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::events::Stream;
use crate::helpers::*;

#[tokio::test]
async fn a_held_subscribe_gets_its_push_then_the_terminal_chunk_and_a_clean_close() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (mut conn, head) = t.open_subscribe().await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("connection"), Some("close"));
    app.command(SERIAL, "set_temperature", json!(22.5)).await;
    let chunk = conn.next_chunk_within(WAIT).await.unwrap().expect("the push");
    assert_eq!(chunk_json(&chunk)["objects"][0]["value"]["target_temperature"], json!(22.5));
    // The batch window passes, the terminal chunk ends the body, then the server closes.
    assert_eq!(conn.next_chunk_within(WAIT).await.unwrap(), None);
    let rest = tokio::time::timeout(WAIT, conn.read_until_closed()).await.expect("closed").unwrap();
    assert!(rest.is_empty(), "nothing after the terminal chunk: {:?}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn a_subscribe_answered_at_once_also_ends_cleanly_and_the_thermostat_goes_on() {
    let app = TestApp::start(&[]).await;
    let mut t = app.thermostat(SERIAL);
    t.boot(20.0).await.unwrap();
    // The first subscribe after boot is answered at once (user and structure are new to it).
    let (mut conn, head) = t.open_subscribe().await.unwrap();
    assert_eq!(head.status, 200);
    let chunk = conn.next_chunk_within(WAIT).await.unwrap().expect("an immediate answer");
    assert!(!keys_of(&chunk_json(&chunk)).is_empty());
    assert_eq!(conn.next_chunk_within(WAIT).await.unwrap(), None);
    assert!(tokio::time::timeout(WAIT, conn.read_until_closed()).await.expect("closed").unwrap().is_empty());
    t.apply_chunk(&chunk).await.unwrap();
    let (mut conn, _) = t.open_subscribe().await.unwrap();
    app.command(SERIAL, "set_temperature", json!(18)).await;
    let chunk = conn.next_chunk_within(WAIT).await.unwrap().expect("the push");
    assert_eq!(chunk_json(&chunk)["objects"][0]["value"]["target_temperature"], json!(18.0));
}

#[tokio::test]
async fn a_thermostat_that_hangs_up_is_no_longer_held() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (conn, _) = t.open_subscribe().await.unwrap();
    await_condition(|| async { held(&app).await == 1 }).await;
    drop(conn);
    await_condition(|| async { held(&app).await == 0 }).await;
}

#[tokio::test]
async fn an_http_1_0_subscribe_is_framed_by_closing_the_connection() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let req = t.authed(Request::post("/nest/transport/v7/subscribe")).json(&t.subscribe_body());
    let mut raw = format!("POST {} HTTP/1.0\r\nHost: roost\r\n", req.path);
    for (name, value) in &req.headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", req.body.len()));
    let addr = app.device_url.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(raw.as_bytes()).await.unwrap();
    socket.write_all(&req.body).await.unwrap();
    // Wait until the hold is registered, then push.
    await_condition(|| async { held(&app).await == 1 }).await;
    app.command(SERIAL, "set_temperature", json!(21.5)).await;
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut seen)).await.expect("closed after the push").unwrap();
    let text = String::from_utf8(seen).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "no chunked framing for HTTP/1.0: {head}");
    let doc: serde_json::Value = serde_json::from_str(body).expect("the body is the push, unframed");
    assert_eq!(doc["objects"][0]["value"]["target_temperature"], json!(21.5));
}

#[tokio::test]
async fn an_event_stream_delivers_and_is_released_when_its_client_leaves() {
    let app = TestApp::start(&[]).await;
    app.booted(SERIAL).await;
    let mut s = Stream::open(&app.control, "/api/events", None).await;
    assert_eq!(s.head.header("connection"), Some("close"));
    app.command(SERIAL, "set_temperature", json!(23)).await;
    assert_eq!(s.next_event().await.unwrap().json(), json!({"serial": SERIAL}));
    let open = || async {
        let stats = app.control.send(&Request::get("/api/events/stats")).await.unwrap().json().unwrap();
        stats["open_streams"].as_i64()
    };
    assert_eq!(open().await, Some(1));
    drop(s);
    await_condition(|| async { open().await == Some(0) }).await;
}

#[tokio::test]
async fn head_of_the_event_stream_answers_the_head_alone() {
    let app = TestApp::start(&[]).await;
    let mut conn = app.control.connect().await.unwrap();
    conn.send_request(&Request::new("HEAD", "/api/events").header("Connection", "close")).await.unwrap();
    let head = tokio::time::timeout(WAIT, conn.read_head()).await.expect("a head").unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
}

/// Subscribes held for [`SERIAL`].
async fn held(app: &TestApp) -> i64 {
    let devices = app.control.send(&Request::get("/api/devices")).await.unwrap().json().unwrap();
    let device = devices["devices"].as_array().unwrap().iter().find(|d| d["serial"] == SERIAL).cloned();
    device.and_then(|d| d["subscription_count"].as_i64()).unwrap_or(0)
}

/// Polls `check` until it holds (at most [`WAIT`]).
async fn await_condition<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
