//! Setting up a thermostat from the control port: a fake thermostat settings API on loopback
//! is found by the scan and pointed at roost by configure-nest; targets outside private ranges,
//! second scans and callers without administration are refused.

use std::sync::Arc;

use roost::sim::http::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::helpers::*;

const ORIGIN: &str = "http://127.0.0.1:8000";

async fn post(app: &TestApp, path: &str, body: Value) -> Response {
    app.control_post(path, body).await
}

fn expect(r: &Response, status: u16, body: Value) {
    assert_eq!(r.status(), status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap(), body);
}

async fn start(fake: &FakeThermostat, extra: &[&str]) -> TestApp {
    let port = format!("--thermostat-api-port={}", fake.port);
    let origin = format!("--api-origin={ORIGIN}");
    let mut args = vec![port.as_str()];
    if !extra.iter().any(|a| a.starts_with("--api-origin")) {
        args.push(origin.as_str());
    }
    args.extend_from_slice(extra);
    TestApp::start(&args).await
}

#[tokio::test]
async fn the_scan_finds_a_thermostat_and_configure_points_it_here() {
    let fake = FakeThermostat::start().await;
    let app = start(&fake, &[]).await;

    // The /24 of API_ORIGIN (127.0.0.1): only the fake answers.
    let found = json!({"devices": [{"ip": "127.0.0.1", "device_name": "Hallway", "configured": false,
                                    "cloudregisterurl": "https://backdoor.nolongerevil.com/entry"}],
                       "subnet": "127.0.0.0/24"});
    let r = app.control.send(&Request::post("/api/scan-network")).await.unwrap();
    expect(&r, 200, found.clone());
    expect(&post(&app, "/api/scan-network", json!({"subnet": "127.0.0.0/24"})).await, 200, found);

    // Without the thermostat's password it asks for it; with it, the thermostat is pointed here.
    let r = post(&app, "/api/configure-nest", json!({"ip": "127.0.0.1"})).await;
    expect(&r, 401, json!({"success": false, "auth_required": true}));
    let r = post(&app, "/api/configure-nest", json!({"ip": "127.0.0.1", "api_key": THERMOSTAT_PASSWORD})).await;
    expect(&r, 200, json!({"success": true, "device_name": "Hallway"}));
    assert_eq!(
        fake.fake().posted.last().unwrap(),
        &json!({"endpoint": ORIGIN, "api_key": THERMOSTAT_PASSWORD}),
        "the key as given"
    );
    let r = post(&app, "/api/scan-network", json!({"subnet": "127.0.0.1/32"})).await;
    expect(
        &r,
        200,
        json!({"devices": [{"ip": "127.0.0.1", "device_name": "Hallway", "configured": true,
                            "cloudregisterurl": format!("{ORIGIN}/entry")}], "subnet": "127.0.0.1/32"}),
    );

    // Replies that are not a thermostat's are errors, redirects are not followed.
    fake.fake().reply = Reply::NotJson;
    let r = post(&app, "/api/configure-nest", json!({"ip": "127.0.0.1", "api_key": THERMOSTAT_PASSWORD})).await;
    expect(&r, 502, json!({"success": false, "error": "The thermostat's reply is not JSON"}));
    fake.fake().reply = Reply::Redirect;
    let posts = fake.fake().posted.len();
    let r = post(&app, "/api/configure-nest", json!({"ip": "127.0.0.1", "api_key": THERMOSTAT_PASSWORD})).await;
    expect(
        &r,
        502,
        json!({"success": false, "error": "The thermostat answered HTTP 302 (redirects are not followed)"}),
    );
    assert_eq!(fake.fake().posted.len(), posts + 1);
    let r = post(&app, "/api/configure-nest", json!({"ip": "127.0.0.3", "api_key": THERMOSTAT_PASSWORD})).await;
    assert_eq!(r.status(), 502);
    assert!(r.json().unwrap()["error"].as_str().unwrap().starts_with("Connection failed"));
}

#[tokio::test]
async fn targets_outside_private_ranges_are_refused() {
    let fake = FakeThermostat::start().await;
    let app = start(&fake, &[]).await;
    for (subnet, message) in [
        ("8.8.8.0/24", "8.8.8.0/24 is not a private or loopback network; roost only connects to those"),
        ("100.64.1.0/24", "100.64.1.0/24 is not a private or loopback network; roost only connects to those"),
        ("192.168.0.0/16", "192.168.0.0/16 is too large; a scan covers one /24 (254 addresses) at most"),
        ("fd00::/120", "Scans cover IPv4 networks such as 192.168.1.0/24"),
        ("my-lan", "'my-lan' is not an address or CIDR range"),
    ] {
        expect(&post(&app, "/api/scan-network", json!({"subnet": subnet})).await, 400, json!({"error": message}));
    }
    for (ip, message) in [
        ("8.8.8.8", "8.8.8.8 is not a private or loopback address; roost only connects to those"),
        ("169.254.1.1", "169.254.1.1 is not a private or loopback address; roost only connects to those"),
        ("thermostat.example", "'thermostat.example' is not an IP address"),
    ] {
        let r = post(&app, "/api/configure-nest", json!({"ip": ip, "api_key": THERMOSTAT_PASSWORD})).await;
        expect(&r, 400, json!({"success": false, "error": message}));
    }
    expect(&post(&app, "/api/configure-nest", json!({})).await, 400, json!({"success": false, "error": "Missing ip"}));
    assert!(fake.fake().posted.is_empty(), "nothing was sent anywhere");

    // An API_ORIGIN on a public address gives no subnet to scan.
    let public = start(&fake, &["--api-origin=http://203.0.113.9:8000"]).await;
    let r = public.control.send(&Request::post("/api/scan-network")).await.unwrap();
    expect(
        &r,
        400,
        json!({"error": "203.0.113.0/24 is not a private or loopback network; roost only connects to those"}),
    );
}

#[tokio::test]
async fn one_scan_at_a_time() {
    let fake = FakeThermostat::start().await;
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    fake.fake().hold = Some((arrived.clone(), release.clone()));
    let app = start(&fake, &[]).await;
    let first = {
        let client = app.control.clone();
        tokio::spawn(async move {
            client.send(&Request::post("/api/scan-network").json(&json!({"subnet": "127.0.0.0/29"}))).await.unwrap()
        })
    };
    tokio::time::timeout(WAIT, arrived.notified()).await.expect("the first scan reaches the thermostat");
    let r = post(&app, "/api/scan-network", json!({"subnet": "127.0.0.0/29"})).await;
    expect(&r, 409, json!({"error": "A scan is already running; try again when it ends"}));
    fake.fake().hold = None;
    release.notify_one();
    let r = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap()["devices"][0]["ip"], "127.0.0.1");
    // And the next scan may run.
    assert_eq!(post(&app, "/api/scan-network", json!({"subnet": "127.0.0.1/32"})).await.status(), 200);
}

#[tokio::test]
async fn setup_is_for_administrators() {
    let fake = FakeThermostat::start().await;
    let app = start(&fake, &["--control-api-key=k"]).await;
    let scan = Request::post("/api/scan-network").json(&json!({"subnet": "127.0.0.1/32"}));
    let configure =
        Request::post("/api/configure-nest").json(&json!({"ip": "127.0.0.1", "api_key": THERMOSTAT_PASSWORD}));
    for req in [&scan, &configure] {
        assert_eq!(app.control.send(req).await.unwrap().status(), 401);
    }
    let (key, _) = new_key(&app, Some("k"), json!({"scopes": ["read", "write"]})).await;
    for req in [&scan, &configure] {
        assert_eq!(app.control.send(&with_key(req.clone(), &key)).await.unwrap().status(), 403);
    }
    assert!(fake.fake().posted.is_empty());
    let r = app.control.send(&with_key(scan, "k")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap()["devices"][0]["configured"], false);
    assert_eq!(app.control.send(&with_key(configure, "k")).await.unwrap().status(), 200);
}
