use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use roost::sim::http::Request;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn entry_advertises_urls_with_an_explicit_port() {
    let app = TestApp::start(&["--api-origin=http://192.168.1.50", "--server-port=0"]).await;
    for (method, path) in [("POST", "/nest/entry"), ("GET", "/nest/entry"), ("GET", "/entry"), ("POST", "/entry/")] {
        let r = app.device.send(&device_req(method, path, SERIAL)).await.unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
        let j = r.json().unwrap();
        // The port is SERVER_PORT (0 here: the configured value, as the reference does).
        assert_eq!(j["transport_url"], "http://192.168.1.50:0/nest/transport");
        assert_eq!(j["weather_url"], "http://192.168.1.50:0/nest/weather/v1?query=");
        assert_eq!(j["software_update_url"], "");
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys[0], "czfe_url");
        for (k, v) in j.as_object().unwrap() {
            let url = v.as_str().unwrap();
            if k.ends_with("_url") && !url.is_empty() {
                assert!(url.starts_with("http://192.168.1.50:0/"), "{k}: {url}");
            }
        }
    }
    let info = app.device.send(&Request::get("/info")).await.unwrap().json().unwrap();
    assert_eq!(info["cloudregisterurl"], "http://192.168.1.50:0/entry");
    assert_eq!(info["port"], 0);
    assert_eq!(info["ssl"], false);
}

#[tokio::test]
async fn ping_pro_info_and_upload_answer_200() {
    let app = TestApp::start(&[]).await;
    for path in ["/nest/ping", "/ping", "/nest/transport"] {
        let r = app.device.send(&Request::get(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json().unwrap()["status"], "ok");
    }
    for path in ["/nest/pro_info/ABC123", "/pro_info/ABC123", "/nest/pro_info?entry_code=ABC123"] {
        let j = app.device.send(&Request::get(path)).await.unwrap().json().unwrap();
        assert_eq!(j["pro_id"], "ABC123", "{path}");
    }
    let gzip = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
    for path in ["/nest/upload", "/upload"] {
        let r = app
            .device
            .send(&device_req("POST", path, SERIAL).header("Content-Type", "text/plain").body(gzip.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json().unwrap(), json!({"status": "ok"}));
    }
    // Bigger than the body limit: still a 200, the log is dropped.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let r = app.device.send(&device_req("POST", "/nest/upload", SERIAL).body(big)).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn device_logs_are_stored_when_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let app = TestApp::start(&["--store-device-logs=true", &format!("--device-logs-dir={}", logs.display())]).await;
    let r = app.device.send(&device_req("POST", "/nest/upload", SERIAL).body(b"hello log".to_vec())).await.unwrap();
    assert_eq!(r.status(), 200);
    let dir = logs.join(SERIAL);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let content = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(content, b"hello log");
}

/// A stand-in for the weather service: answers `{"<query>": {...}}` and counts requests.
async fn fake_weather() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/weather/v1", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let query =
                head.split_whitespace().nth(1).and_then(|p| p.split_once("?query=")).map(|(_, q)| q.to_string());
            counter.fetch_add(1, Ordering::SeqCst);
            let body = json!({ query.unwrap_or_default(): {"current": {"temp_c": 10.6}, "location": {"zip": "07719"}}})
                .to_string();
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    (url, hits, task)
}

#[tokio::test]
async fn weather_is_proxied_and_cached_per_location() {
    let (url, hits, upstream) = fake_weather().await;
    let app = TestApp::start(&[&format!("--weather-upstream-url={url}")]).await;
    let get = |q: &str| Request::get(&format!("/nest/weather/v1?query={q}"));
    let r = app.device.send(&get("07719,US")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap()["07719,US"]["current"]["temp_c"], json!(10.6));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let r = app.device.send(&get("07719,US")).await.unwrap();
    assert_eq!(r.json().unwrap()["07719,US"]["location"]["zip"], "07719");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "served from the cache");
    let r = app.device.send(&get("94103,US")).await.unwrap();
    assert!(r.json().unwrap().get("94103,US").is_some(), "each location has its own forecast");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    upstream.abort();
}

#[tokio::test]
async fn weather_is_cached_per_normalised_location_and_the_cache_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, hits, _upstream) = fake_weather().await;
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[&format!("--weather-upstream-url={url}")]).await;
    // One place, spelled five ways: one upstream fetch, each answer keyed as the device asked.
    for (query, key) in [
        ("07719,US", "07719,US"),
        ("07719,us", "07719,us"),
        ("%2007719%20,%20US", " 07719 , US"),
        ("07719,US&junk=1", "07719,US"),
        ("07719,U.S.", "07719,U.S."),
    ] {
        let r = app.device.send(&Request::get(&format!("/nest/weather/v1?query={query}"))).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json().unwrap()[key]["current"]["temp_c"], json!(10.6), "{query}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Made-up locations cannot grow the cache without end.
    for i in 0..510 {
        let r = app.device.send(&Request::get(&format!("/nest/weather/v1?query={i:05},US"))).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let db = TestDb::open(&tmp.path().join("roost.sqlite")).await;
    assert_eq!(db.count("SELECT COUNT(*) FROM weather").await, 500);
}

#[tokio::test]
async fn stale_weather_when_the_upstream_is_down_and_the_reference_502_without_any() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, _hits, upstream) = fake_weather().await;
    let app = TestApp::start_in(
        tmp.path().to_path_buf(),
        &[&format!("--weather-upstream-url={url}"), "--weather-cache-ttl-ms=0"],
    )
    .await;
    let r = app.device.send(&Request::get("/weather/v1?query=07719,US")).await.unwrap();
    assert_eq!(r.status(), 200);
    upstream.abort();
    let _ = upstream.await;
    // Expired and the upstream is gone: the stale copy is better than nothing.
    let r = app.device.send(&Request::get("/nest/weather/v1?query=07719,US")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json().unwrap().get("07719,US").is_some());
    let r = app.device.send(&Request::get("/nest/weather/v1?query=10001,US")).await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.json().unwrap(), json!({"error": "Weather service unavailable"}));
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let app = TestApp::start(&[]).await;
    let r = app.control.send(&Request::get("/health")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap(), json!({"status": "ok"}));
    let r = app.control.send(&Request::get("/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json().unwrap()["error"].is_string());
    let r = app.device.send(&Request::get("/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn passphrase_issues_a_stable_code_that_expires_at_least_30_minutes_ahead() {
    let app = TestApp::start(&[]).await;
    let t = app.thermostat(SERIAL);
    let before = roost::domain::time::now_ms();
    let (code, expires) = t.passphrase().await.unwrap();
    assert_eq!(code.len(), 7);
    assert!(
        code[..3].chars().all(|c| c.is_ascii_digit()) && code[3..].chars().all(|c| c.is_ascii_uppercase()),
        "{code}"
    );
    assert!(expires >= before + 30 * 60 * 1000, "expires {expires}");
    // `expires` is a JSON number.
    let raw = app.device.send(&device_req("GET", "/nest/passphrase", SERIAL)).await.unwrap().json().unwrap();
    assert!(raw["expires"].is_i64());
    assert_eq!(raw["value"], code.as_str(), "the same code while it is valid");
    let legacy = app.device.send(&device_req("GET", "/passphrase", SERIAL)).await.unwrap().json().unwrap();
    assert_eq!(legacy["value"], code.as_str());

    let status = app.device.send(&device_req("GET", "/nest/passphrase/status", SERIAL)).await.unwrap().json().unwrap();
    assert_eq!(status["status"], "pending");
    assert_eq!(status["expiresAt"], expires);
    let r = app.device.send(&Request::get("/nest/passphrase")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json().unwrap(), json!({"error": "Device serial required"}));

    // The confirm-pairing dialog exists now.
    let list = app.device.send(&device_req("GET", &format!("/nest/transport/device/{SERIAL}"), SERIAL)).await.unwrap();
    assert!(keys_of(&list.json().unwrap()).contains(&format!("device_alert_dialog.{SERIAL}")));
}

#[tokio::test]
async fn short_entry_key_ttl_still_gives_30_minutes() {
    let app = TestApp::start(&["--entry-key-ttl-seconds=600"]).await;
    let now = roost::domain::time::now_ms();
    let (_, expires) = app.thermostat(SERIAL).passphrase().await.unwrap();
    assert!(expires >= now + 30 * 60 * 1000);
}

#[tokio::test]
async fn a_mac_username_is_never_a_device() {
    let app = TestApp::start(&[]).await;
    let mac_user = |path: &str| Request::post(path).basic_auth("18b430aabbcc", "pw");
    let body = json!({"session": format!("18b430aabbcc{SERIAL}"), "objects": [{"object_key": format!("device.{SERIAL}"), "value": {"a": 1}}]});
    let r = app.device.send(&mac_user("/nest/transport/put").json(&body)).await.unwrap();
    assert_eq!(r.status(), 200);
    let list = app.device.send(&device_req("GET", &format!("/nest/transport/device/{SERIAL}"), SERIAL)).await.unwrap();
    assert!(keys_of(&list.json().unwrap()).contains(&format!("device.{SERIAL}")));
    let list = app.device.send(&Request::get("/nest/transport/device/18B430AABBCC")).await.unwrap();
    assert_eq!(list.json().unwrap(), json!({"objects": []}), "nothing was stored under the MAC");
    // Without a session there is no serial at all.
    let r = app.device.send(&mac_user("/nest/transport/put").json(&json!({"objects": []}))).await.unwrap();
    assert_eq!(r.status(), 400);
}
