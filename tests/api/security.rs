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

/// The port of a `http://127.0.0.1:PORT` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

/// Sends raw request bytes from the local address `from` (any 127.x.y.z) and reads the response
/// until the server closes; returns the status and the body.
async fn send_from(from: &str, port: u16, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

fn passphrase_request(serial: &str) -> Vec<u8> {
    format!("GET /nest/passphrase HTTP/1.1\r\nHost: roost\r\nX-NL-Device-ID: {serial}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

fn made_up(i: usize) -> String {
    format!("02AA01AC{i:08}")
}

#[tokio::test]
async fn made_up_serials_cannot_stop_a_genuine_thermostat_from_pairing() {
    let app = TestApp::start(&["--require-device-pairing=true", "--max-devices=3"]).await;
    let port = port_of(&app.device_url);
    // A stranger asks for codes for 105 made-up serials, five from each of 21 addresses.
    for i in 0..105 {
        let (status, body) = send_from(&format!("127.0.1.{}", i / 5), port, &passphrase_request(&made_up(i))).await;
        assert_eq!(status, 200, "pending pairings do not count toward MAX_DEVICES: {body}");
    }
    // One address asking for more new codes is slowed down.
    let (status, body) = send_from("127.0.1.0", port, &passphrase_request(&made_up(999))).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("try again"), "{body}");
    // Pending pairing state is bounded on its own: the oldest codes were dropped.
    let r = app.device.send(&device_req("GET", "/nest/passphrase/status", &made_up(0))).await.unwrap();
    assert_eq!(r.json().unwrap()["status"], "no_key");
    let r = app.device.send(&device_req("GET", "/nest/passphrase/status", &made_up(104))).await.unwrap();
    assert_eq!(r.json().unwrap()["status"], "pending");
    let r = app.control.send(&Request::get("/api/devices")).await.unwrap();
    assert_eq!(r.json().unwrap()["devices"], json!([]), "a code request does not make a device");

    // A genuine thermostat still gets a code, and pairs.
    let mut t = app.thermostat(SERIAL);
    t.entry().await.unwrap();
    let (code, _) = t.passphrase().await.expect("a genuine thermostat gets a code");
    let r = app.control_post("/api/register", json!({"code": code, "userId": "alice"})).await;
    assert_eq!(r.json().unwrap()["success"], true);
    // Once paired thermostats fill MAX_DEVICES codes are still issued, but pairing past it is
    // refused clearly.
    for i in 0..2 {
        let other = app.thermostat(&made_up(500 + i));
        let (code, _) = other.passphrase().await.unwrap();
        let r = app.control_post("/api/register", json!({"code": code, "userId": "alice"})).await;
        assert_eq!(r.json().unwrap()["success"], true);
    }
    let fourth = app.thermostat(&made_up(600));
    let (code, _) = fourth.passphrase().await.expect("codes are still issued");
    let r = app.control_post("/api/register", json!({"code": code, "userId": "alice"})).await;
    let j = r.json().unwrap();
    assert_eq!(j["success"], false);
    assert!(j["message"].as_str().unwrap().contains("MAX_DEVICES"), "{j}");
}

#[tokio::test]
async fn the_device_limit_covers_empty_puts_and_holds_under_a_concurrent_flood() {
    let app = TestApp::start(&["--max-devices=3"]).await;
    let flood = (0..20).map(|i| {
        let client = app.device.clone();
        async move {
            let req = device_req("POST", "/nest/transport/put", &made_up(i)).json(&json!({"objects": []}));
            client.send(&req).await.unwrap().status()
        }
    });
    let statuses = futures_util::future::join_all(flood).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 17, "{statuses:?}");
    let owners = app.control.send(&Request::get("/api/registered-devices")).await.unwrap().json().unwrap();
    assert_eq!(owners.as_array().unwrap().len(), 3, "no owner rows past the limit: {owners}");
    // A genuine new thermostat is told clearly.
    let r = app
        .device
        .send(&device_req("POST", "/nest/transport/put", SERIAL).json(&padded(&format!("device.{SERIAL}"), "a", 1)))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains("MAX_DEVICES"));
    // Deleting a device makes room.
    let admitted = owners[0]["serial"].as_str().unwrap().to_string();
    let r = app.control.send(&Request::new("DELETE", "/api/device").json(&json!({"serial": admitted}))).await.unwrap();
    assert_eq!(r.status(), 200);
    app.booted(SERIAL).await;
}

fn control_request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

#[tokio::test]
async fn a_page_on_a_rebound_dns_name_cannot_read_or_command_without_a_key() {
    let app = TestApp::start(&["--allowed-hosts=nest.example.org"]).await;
    app.booted(SERIAL).await;
    let port = app.control_port();
    let command = json!({"serial": SERIAL, "command": "set_temperature", "value": 25}).to_string();
    let json_type = ("Content-Type", "application/json");
    let rebound_host = format!("rebind.evil.example:{port}");
    let rebound_origin = format!("http://rebind.evil.example:{port}");
    // The attack: the page's own origin, same as the Host it names.
    let attack = [("Host", rebound_host.as_str()), ("Origin", rebound_origin.as_str()), json_type];
    let (status, body) = send_from("127.0.0.1", port, &control_request("POST", "/command", &attack, &command)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("ALLOWED_HOSTS"), "{body}");
    let read = [("Host", rebound_host.as_str()), ("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Mode", "cors")];
    let path = format!("/status?serial={SERIAL}");
    let (status, _) = send_from("127.0.0.1", port, &control_request("GET", &path, &read, "")).await;
    assert_eq!(status, 403, "a same-origin read from the rebound page");
    let r = app.control.send(&roost::sim::http::Request::get(&path)).await.unwrap();
    assert_eq!(r.json().unwrap()["target_temperature"], json!(20.0), "the command did not run");

    // Browsers that name roost by its address, localhost, a .local name or an allowed name work;
    // programs that are not browsers may use any name (a docker service name, a proxy's).
    let addr = format!("127.0.0.1:{port}");
    let origin = format!("http://{addr}");
    for (host, origin) in [
        (addr.as_str(), Some(origin.as_str())),
        ("localhost", Some("http://localhost")),
        ("roost.local:8082", Some("http://roost.local:8082")),
        ("nest.example.org", Some("http://nest.example.org")),
        ("roost", None),
        ("rebind.evil.example", None),
    ] {
        let mut headers = vec![("Host", host), json_type];
        headers.extend(origin.map(|o| ("Origin", o)));
        let (status, body) =
            send_from("127.0.0.1", port, &control_request("POST", "/command", &headers, &command)).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    app.stop().await;

    // A trusted network gets in without a key, so the same holds there; a key is what a
    // rebinding page does not have.
    let app = TestApp::start(&["--control-api-key=s3cret", "--control-trusted-networks=127.0.0.0/8"]).await;
    app.booted(SERIAL).await;
    let port = app.control_port();
    let rebound_host = format!("rebind.evil.example:{port}");
    let rebound_origin = format!("http://rebind.evil.example:{port}");
    let attack = [("Host", rebound_host.as_str()), ("Origin", rebound_origin.as_str()), json_type];
    let (status, _) = send_from("127.0.0.1", port, &control_request("POST", "/command", &attack, &command)).await;
    assert_eq!(status, 403, "trusted network, rebound name");
    let with_key = [attack[0], attack[1], attack[2], ("X-API-Key", "s3cret")];
    let (status, body) = send_from("127.0.0.1", port, &control_request("POST", "/command", &with_key, &command)).await;
    assert_eq!(status, 200, "{body}");
}

/// A raw connection to a port, for what a well-behaved client would never send.
struct Raw(tokio::net::TcpStream);

impl Raw {
    async fn open(port: u16) -> Raw {
        Raw(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap())
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(bytes).await.unwrap();
    }

    /// Reads until the server closes (or WAIT passes); returns the statuses of the responses.
    async fn statuses_until_closed(&mut self) -> (Vec<u16>, String) {
        use tokio::io::AsyncReadExt;
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, self.0.read_to_end(&mut raw)).await.expect("the server closes").unwrap();
        let text = String::from_utf8_lossy(&raw).to_string();
        let statuses = text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| text[i + 9..].get(..3).and_then(|s| s.parse().ok()))
            .collect();
        (statuses, text)
    }

    /// Whether the server has closed its side, checked without waiting.
    async fn closed_by_server(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(std::time::Duration::ZERO, self.0.read(&mut byte)).await, Ok(Ok(0)))
    }
}

fn put_bytes(serial: &str, body: &str) -> String {
    format!(
        "POST /nest/transport/put HTTP/1.1\r\nHost: roost\r\nX-nl-device-id: {serial}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_malformed_pipelined_request_does_not_take_the_good_ones_before_it() {
    let app = TestApp::start(&[]).await;
    let mut raw = Raw::open(port_of(&app.device_url)).await;
    let body = json!({"objects": [{"object_key": format!("device.{SERIAL}"), "value": {"pipelined": 1}}]}).to_string();
    let mut bytes = put_bytes(SERIAL, &body);
    bytes.push_str("GET /nest/ping HTTP/1.1\r\nHost: roost\r\n\r\n");
    bytes.push_str("GET /nest/ping HTTP/1.1\r\nHost: roost\r\nThis is not a header\r\n\r\n");
    raw.send(bytes.as_bytes()).await;
    let (statuses, text) = raw.statuses_until_closed().await;
    assert_eq!(statuses, [200, 200, 400], "{text}");
    assert!(text.contains(r#""object_revision":1"#), "the PUT was answered: {text}");
    let listing = app.listing_of(SERIAL).await;
    assert_eq!(listing["objects"][0]["object_key"], format!("device.{SERIAL}"), "and applied");
}

#[tokio::test]
async fn slow_requests_are_cut_and_upgrades_answered_at_once() {
    let app = TestApp::start(&["--request-timeout-seconds=1"]).await;
    let device = port_of(&app.device_url);
    // A body sent a byte at a time (here: one byte, then nothing) is cut, with a 408.
    let mut slow = Raw::open(device).await;
    let head = format!(
        "POST /nest/transport/put HTTP/1.1\r\nHost: roost\r\nX-nl-device-id: {SERIAL}\r\nContent-Length: 100\r\n\r\n{{"
    );
    slow.send(head.as_bytes()).await;
    let (statuses, text) = slow.statuses_until_closed().await;
    assert_eq!(statuses, [408], "{text}");
    // So is a slow head on a kept-alive connection (actix only times the first one).
    let mut slow = Raw::open(device).await;
    slow.send(b"GET /nest/ping HTTP/1.1\r\nHost: roost\r\n\r\nGET /nest/pi").await;
    let (statuses, _) = slow.statuses_until_closed().await;
    assert_eq!(statuses, [200]);
    // `Upgrade: websocket` with a valid body is answered at once, on both ports.
    for port in [device, app.control_port()] {
        let mut upgrade = Raw::open(port).await;
        upgrade
            .send(b"POST /command HTTP/1.1\r\nHost: roost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            .await;
        let (statuses, text) = upgrade.statuses_until_closed().await;
        assert_eq!(statuses, [400], "{text}");
        assert!(text.contains("Upgrade is not supported"), "{text}");
    }
}

#[tokio::test]
async fn an_unread_body_does_not_delay_the_close() {
    let app = TestApp::start(&[]).await;
    let mut raw = Raw::open(app.control_port()).await;
    // Refused before the body is read (415), with most of the body still to come.
    raw.send(
        b"POST /command HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nhello",
    )
    .await;
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 12];
    raw.0.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 415");
    let mut rest = vec![0u8; 4096];
    let _ = raw.0.read(&mut rest).await.unwrap();
    // Another request's round trip gives the server every chance; the first connection must be
    // closed by then (actix used to keep it open, reading, for its 5 s disconnect timeout).
    let health = app.control.send(&Request::get("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(raw.closed_by_server().await, "the server closed after its answer");
}

#[tokio::test]
async fn a_request_line_with_a_space_in_the_path_is_repaired_on_the_device_port() {
    let app = TestApp::start(&[]).await;
    app.booted(SERIAL).await;
    // Firmware 4.x: the corrupted key reaches the path; repaired on every request of a
    // kept-alive connection, bodies untouched.
    let path = format!("/nest/transport/device/device.{SERIAL} ._sync");
    let mut conn = app.device.connect().await.unwrap();
    for _ in 0..2 {
        let expected = app.listing_of(SERIAL).await;
        let r = conn.roundtrip(&device_req("GET", &path, SERIAL)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json().unwrap(), expected);
        let body = json!({"objects": [{"object_key": "where.x", "value": {"name": "GET /a b HTTP/1.1"}}]});
        let r = conn.roundtrip(&device_req("POST", "/nest/transport/put", SERIAL).json(&body)).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let stored = app.device.send(&device_req("GET", &path, SERIAL)).await.unwrap().json().unwrap();
    assert!(stored.to_string().contains("where.x"));
    // The control port has no such clients: the line is refused there, as the HTTP parser does.
    let mut raw = Raw::open(app.control_port()).await;
    raw.send(b"GET /api/devices x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(raw.statuses_until_closed().await.0, [400]);
}

#[tokio::test]
async fn extreme_numbers_from_a_thermostat_or_a_client_overflow_nothing() {
    // A resume id far below every event id, on a journal that is still empty.
    let app = TestApp::start(&[]).await;
    let mut conn = app.control.connect().await.unwrap();
    conn.send_request(&Request::get("/api/events").header("Last-Event-ID", i64::MIN.to_string())).await.unwrap();
    let head = tokio::time::timeout(WAIT, conn.read_head()).await.expect("a head").expect("an answer");
    assert_eq!(head.status, 200);

    // A thermostat reporting i64::MIN timers: MQTT keeps publishing.
    let broker = crate::mqtt_support::Broker::rumqttd(None).await;
    let rec = crate::mqtt_support::Recorder::connect(broker.port, None).await;
    let port = format!("--mqtt-port={}", broker.port);
    let app = TestApp::start(&["--mqtt-host=127.0.0.1", &port]).await;
    let t = app.booted(SERIAL).await;
    t.set_local("device", json!({"fan_timer_timeout": i64::MIN, "time_to_target": i64::MIN})).await.unwrap();
    t.set_local("shared", json!({"current_temperature": 18.25})).await.unwrap();
    rec.wait_payload(&format!("nolongerevil/{SERIAL}/shared/current_temperature"), "18.25").await;
}

#[tokio::test]
async fn a_setting_that_would_panic_later_stops_start_up_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("--sqlite3-db-path={}", tmp.path().join("db.sqlite").display());
    for (flag, name) in [
        ("--sse-keepalive-seconds=1e19", "SSE_KEEPALIVE_SECONDS"),
        ("--availability-timeout-seconds=1e300", "AVAILABILITY_TIMEOUT_SECONDS"),
        ("--history-days=1e300", "HISTORY_DAYS"),
    ] {
        let config = roost::config::from_args(["--server-port=0", "--control-port=0", db.as_str(), flag]).unwrap();
        let err = roost::Application::build(config).await.err().expect("start-up fails");
        assert!(err.to_string().contains(name), "{flag}: {err}");
    }
}
