//! `GET /metrics`: scraped after real traffic from the simulator and read with a strict
//! Prometheus text parser; who may scrape it.
//!
//! Request and database series are per process and tests run in parallel, so those are
//! asserted to have grown by at least this test's traffic; gauges are read from the app
//! itself and asserted exactly.

use std::time::Duration;

use roost::sim::http::{Client, Request};
use serde_json::json;

use crate::events::Stream;
use crate::helpers::*;
use crate::mqtt_support::{Broker, Proxy};
use crate::prometheus::{self, Kind, Scrape};

const DURATION: &str = "roost_http_request_duration_seconds";

async fn scrape_with(client: &Client, req: Request) -> Scrape {
    let r = client.send(&req).await.expect("scrape");
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8");
    prometheus::parse(&text).unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"))
}

async fn scrape(app: &TestApp) -> Scrape {
    scrape_with(&app.control, Request::get("/metrics")).await
}

/// Requests counted for one port, method, route and status.
fn requests(s: &Scrape, port: &str, method: &str, route: &str, status: &str) -> f64 {
    let labels = [("port", port), ("method", method), ("route", route), ("status", status)];
    s.value_or_zero(&format!("{DURATION}_count"), &labels)
}

/// Polls `/metrics` until `cond` holds (gauges follow background tasks).
async fn scrape_until(app: &TestApp, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = scrape(app).await;
        if cond(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn series_move_with_simulated_traffic() {
    let app = TestApp::start(&[]).await;
    let before = scrape(&app).await;

    // A thermostat boots (entry, full PUT, first subscribe), PUTs a change, and holds a subscribe.
    let t = app.booted(SERIAL).await;
    t.set_local("shared", json!({"current_temperature": 19.5})).await.unwrap();
    let (mut held, _) = t.open_subscribe().await.unwrap();
    // An event-stream client.
    let mut stream = Stream::open(&app.control, "/api/events", None).await;
    assert_eq!(stream.head.status, 200);

    let s = scrape(&app).await;
    assert_eq!(s.value("roost_held_subscribes", &[]), Some(1.0));
    assert_eq!(s.value("roost_held_subscribe_thermostats", &[]), Some(1.0));
    assert_eq!(s.value("roost_event_stream_clients", &[]), Some(1.0));
    assert_eq!(s.value("roost_devices", &[]), Some(1.0));
    assert_eq!(s.value("roost_thermostats_online", &[]), Some(1.0));
    assert_eq!(s.value("roost_pending_command_thermostats", &[]), Some(0.0));

    // A command: pushed on the held subscribe, announced on the stream, pending until confirmed.
    let r = app.command(SERIAL, "set_temperature", json!(22.5)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(held.next_chunk_within(WAIT).await.unwrap().is_some(), "the command reached the held subscribe");
    assert!(stream.next_event().await.is_some(), "the stream carried the change");
    let after = scrape_until(&app, "the stream's event and its fan-out to be counted", |s| {
        s.value_or_zero("roost_event_stream_events_sent_total", &[]) >= 1.0
            && s.value_or_zero("roost_event_stream_fanout_seconds_count", &[]) >= 1.0
    })
    .await;
    assert_eq!(after.value("roost_pending_command_thermostats", &[]), Some(1.0));
    assert!(after.value_or_zero("roost_pending_command_fields", &[]) >= 1.0);

    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let (was, is) = (before.value_or_zero(name, labels), after.value_or_zero(name, labels));
        assert!(is - was >= by, "{name}{labels:?} went from {was} to {is}, expected at least +{by}");
    };
    let grew_requests = |port: &str, method: &str, route: &str, status: &str, by: f64| {
        let (was, is) = (requests(&before, port, method, route, status), requests(&after, port, method, route, status));
        assert!(is - was >= by, "{port} {method} {route} {status}: from {was} to {is}, expected at least +{by}");
    };
    grew_requests("device", "POST", "/nest/transport/{version}/put", "200", 2.0);
    grew_requests("device", "POST", "/nest/transport/{version}/subscribe", "200", 2.0);
    grew_requests("device", "POST", "/nest/entry", "200", 1.0);
    grew_requests("control", "POST", "/command", "200", 1.0);
    grew_requests("control", "GET", "/api/events", "200", 1.0);
    grew_requests("control", "GET", "/metrics", "200", 2.0);
    grew("roost_db_write_batch_commits_count", &[], 2.0);
    grew("roost_db_write_batch_commits_sum", &[], 2.0);
    grew("roost_db_commit_duration_seconds_count", &[], 2.0);

    // Every request series is a histogram with the four labels, and only route patterns.
    assert_eq!(after.kinds.get(DURATION), Some(&Kind::Histogram));
    for sample in after.series(&format!("{DURATION}_count")) {
        let keys: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["method", "port", "route", "status"]);
    }
    assert_eq!(after.value("roost_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(after.value_or_zero("process_start_time_seconds", &[]) > 1.6e9);
    assert_eq!(after.kinds.get("roost_db_commit_duration_seconds"), Some(&Kind::Histogram));
    assert_eq!(after.value("roost_mqtt_enabled", &[]), Some(0.0));

    // Gone again once the subscribe and the stream end.
    drop(held);
    drop(stream);
    scrape_until(&app, "the hold and the stream to end", |s| {
        s.value("roost_held_subscribes", &[]) == Some(0.0) && s.value("roost_event_stream_clients", &[]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn requests_are_labelled_by_route_pattern_never_by_path() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let odd = "/nest/transport/device/02AA01AC99999999";
    let r = app.device.send(&device_req("GET", odd, SERIAL)).await.unwrap();
    assert_eq!(r.status(), 200);
    // More distinct paths than a worker remembers the route of: still labelled by their route.
    for i in 0..300 {
        let path = format!("/nest/transport/device/02AA01AD{i:08}");
        assert_eq!(app.device.send(&device_req("GET", &path, SERIAL)).await.unwrap().status(), 200);
    }
    t.set_local("shared", json!({"current_temperature": 19.0})).await.unwrap();
    let r = app.control.send(&Request::get("/no/such/page-7f3a?token=abc")).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.control.send(&Request::get("/status?serial=02AA01AC12345678")).await.unwrap();
    assert_eq!(r.status(), 200);

    let r = app.control.send(&Request::get("/metrics")).await.unwrap();
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let s = prometheus::parse(&text).unwrap();
    assert!(requests(&s, "device", "GET", "/nest/transport/device/{serial}", "200") >= 301.0);
    assert!(requests(&s, "device", "POST", "/nest/transport/{version}/put", "200") >= 2.0);
    assert!(requests(&s, "control", "GET", "unmatched", "404") >= 1.0);
    assert!(requests(&s, "control", "GET", "/status", "200") >= 1.0);
    for raw in ["02AA01AC99999999", "02AA01AD00000299", "page-7f3a", "token", "02AA01AC12345678"] {
        assert!(!text.contains(raw), "'{raw}' from a request leaked into the metrics");
    }
}

#[tokio::test]
async fn metrics_need_the_control_key_or_a_trusted_network() {
    let app = TestApp::start(&["--control-api-key=metrics-key"]).await;
    let r = app.control.send(&Request::get("/metrics")).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json().unwrap()["error"], "API key required (Authorization: Bearer <key>, X-API-Key, or ?token=)");
    let r = app.control.send(&with_key(Request::get("/metrics"), "wrong")).await.unwrap();
    assert_eq!(r.status(), 401);
    scrape_with(&app.control, with_key(Request::get("/metrics"), "metrics-key")).await;
    // An API key, whatever its scopes, is not an administrator.
    let (key, _) = new_key(&app, Some("metrics-key"), json!({"scopes": ["read", "write"]})).await;
    let r = app.control.send(&with_key(Request::get("/metrics"), &key)).await.unwrap();
    assert_eq!(r.status(), 403);
    drop(app);

    let app = TestApp::start(&["--control-api-key=metrics-key", "--control-trusted-networks=127.0.0.1/32"]).await;
    scrape(&app).await;
}

#[tokio::test]
async fn mqtt_connection_state_and_queue() {
    let broker = Broker::rumqttd(None).await;
    // roost's broker is a proxy that is not listening yet: messages wait.
    let mut proxy = Proxy::new(broker.port);
    let port = format!("--mqtt-port={}", proxy.port);
    let app = TestApp::start(&["--mqtt-host=127.0.0.1", &port]).await;
    app.booted(SERIAL).await;
    let s = scrape_until(&app, "messages queued for the absent broker", |s| {
        s.value_or_zero("roost_mqtt_queued_messages", &[]) > 0.0
    })
    .await;
    assert_eq!(s.value("roost_mqtt_enabled", &[]), Some(1.0));
    assert_eq!(s.value("roost_mqtt_connected", &[]), Some(0.0));
    assert_eq!(s.value("roost_mqtt_connections_total", &[]), Some(0.0));

    proxy.start().await;
    let s = scrape_until(&app, "the queue to drain into the broker", |s| {
        s.value("roost_mqtt_connected", &[]) == Some(1.0) && s.value("roost_mqtt_queued_messages", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(s.value("roost_mqtt_connections_total", &[]), Some(1.0));
    assert!(s.value_or_zero("roost_mqtt_messages_published_total", &[]) > 0.0);

    proxy.stop().await;
    scrape_until(&app, "the broker to be seen gone", |s| s.value("roost_mqtt_connected", &[]) == Some(0.0)).await;
}
