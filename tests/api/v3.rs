//! Thermostats on the v3 transport (firmware 4.3.3 and 4.0.6, spec `v3-firmware.md`).

use roost::sim::http::{Conn, Head, Request, Response};
use serde_json::{Value, json};

use crate::helpers::*;

const URL_KEYS: [&str; 11] = [
    "czfe_url",
    "transport_url",
    "direct_transport_url",
    "passphrase_url",
    "ping_url",
    "pro_info_url",
    "weather_url",
    "upload_url",
    "software_update_url",
    "server_version",
    "tier_name",
];

async fn entry(app: &TestApp, serial: Option<&str>, software_version: &str) -> Value {
    let form =
        format!("reset=FALSE&mac=18B430AABBCC&model=Display-2.14&request_id=1&software_version={software_version}");
    let req = match serial {
        Some(s) => device_req("POST", "/nest/entry", s),
        None => Request::post("/nest/entry"),
    };
    let req = req.header("Content-Type", "application/x-www-form-urlencoded").body(form.into_bytes());
    let r = app.device.send(&req).await.expect("entry");
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn member_keys(doc: &Value) -> Vec<&str> {
    doc.as_object().unwrap().keys().map(String::as_str).collect()
}

// spec v3-firmware §7 vector 25
#[tokio::test]
async fn entry_carries_the_pairing_buckets_for_a_paired_4_3_thermostat_only() {
    let app = TestApp::start(&[]).await;
    let unpaired = entry(&app, Some(SERIAL), "4.3.3").await;
    assert_eq!(member_keys(&unpaired), URL_KEYS, "unpaired: the plain body");

    // Booting (and subscribing once) adopts it for the default user, which creates its buckets.
    app.booted(SERIAL).await;
    let doc = entry(&app, Some(SERIAL), "4.3.3").await;
    let mut expected: Vec<&str> = URL_KEYS.to_vec();
    expected.extend(["user.homeassistant", "structure.homeassistant"]);
    assert_eq!(member_keys(&doc), expected);
    let user = &doc["user.homeassistant"];
    assert_eq!(user["value"], json!({"name": "homeassistant"}));
    assert!(user["object_revision"].as_i64().unwrap() >= 1);
    assert!(user["object_timestamp"].as_i64().unwrap() > 0);
    assert_eq!(doc["structure.homeassistant"]["value"]["devices"], json!([format!("device.{SERIAL}")]));

    for other in ["4.0.6", "5.9.4-5"] {
        assert_eq!(member_keys(&entry(&app, Some(SERIAL), other).await), URL_KEYS, "{other}");
    }
    assert_eq!(member_keys(&entry(&app, None, "4.3.3").await), URL_KEYS, "unidentified");
}

#[tokio::test]
async fn a_forced_or_overridden_profile_decides_what_entry_carries() {
    let app = TestApp::start(&["--v3-dialect=4.0", "--v3-dialect-overrides=SIM0000000000001:4.3"]).await;
    app.booted(SERIAL).await;
    app.booted("SIM0000000000001").await;
    assert_eq!(member_keys(&entry(&app, Some(SERIAL), "4.3.3").await), URL_KEYS, "forced 4.0");
    assert!(entry(&app, Some("SIM0000000000001"), "4.0.6").await.get("user.homeassistant").is_some(), "override 4.3");
}

// spec v3-firmware §7 vector 10
#[tokio::test]
async fn buckets_stored_under_corrupted_keys_are_purged_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    app.booted(SERIAL).await;
    app.stop().await;

    let db = TestDb::open(&tmp.path().join("roost.sqlite")).await;
    for key in [format!("device.{SERIAL} ._sync"), format!("device.{SERIAL} .$version .$version")] {
        db.execute(
            "INSERT INTO states (serial, object_key, object_revision, object_timestamp, value, \"updatedAt\") VALUES ($1, $2, 1, 1, '{}', 1)",
            &[SERIAL, &key],
        )
        .await;
    }
    db.close().await;

    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    let keys: Vec<String> = keys_of(&app.listing_of(SERIAL).await);
    assert!(keys.contains(&format!("device.{SERIAL}")), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains(' ')), "{keys:?}");
    app.stop().await;
    let db = TestDb::open(&tmp.path().join("roost.sqlite")).await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM states WHERE object_key LIKE '% %'").await,
        0,
        "removed from storage too"
    );
}

// ---------------------------------------------------------------------------------------------
// The wire over HTTP (spec v3-firmware §7), per profile.

const V43: &str = "4.3.3";
const V40: &str = "4.0.6";

/// A device request reporting `software_version` in `X-nl-device-swversion`.
fn v3_req(method: &str, path: &str, software_version: &str) -> Request {
    device_req(method, path, SERIAL).header("X-nl-device-swversion", software_version)
}

async fn v3_put(app: &TestApp, path: &str, software_version: &str, body: Value) -> Response {
    let r = app.device.send(&v3_req("POST", path, software_version).json(&body)).await.unwrap();
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    r
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

fn shared_key() -> String {
    format!("shared.{SERIAL}")
}

// spec v3-firmware §7 vectors 4, 6
#[tokio::test]
async fn a_nested_put_is_stored_on_every_path_and_acknowledged_in_the_paths_dialect() {
    let app = TestApp::start(&[]).await;
    let body = json!({"shared": {SERIAL: {"target_temperature": 21.5}}, "device": {SERIAL: {"away": false}}});
    let v3 = v3_put(&app, "/nest/transport/v3/put", V43, body.clone()).await;
    let ack = v3.json().unwrap();
    assert_eq!(member_keys(&ack), [shared_key(), format!("device.{SERIAL}")], "flat: whole keys on top");
    assert_eq!(ack[shared_key()]["value"], json!({"target_temperature": 21.5}), "first PUT: the value");
    assert!(ack[shared_key()].get("$version").is_none());
    assert!(text(&v3).contains(r#""$version":"#) && text(&v3).contains(r#""$timestamp":"#));
    let sync = ack[shared_key()]["_sync"].clone();

    // An identical re-PUT changes nothing: markers only, the same version.
    let again = v3_put(&app, "/nest/transport/v3/put", V43, body.clone()).await.json().unwrap();
    assert_eq!(again[shared_key()], json!({"_sync": sync}));

    let v7 = put(&app.device, SERIAL, json!({"shared": {SERIAL: {"target_temperature": 22.0}}})).await;
    assert_eq!(keys_of(&v7), [shared_key()]);
    assert!(v7["objects"][0].get("value").is_none(), "{v7}");
    assert_eq!(v7["objects"][0]["object_revision"], sync["$version"].as_i64().unwrap() + 1, "stored too");
    let s = app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap();
    assert_eq!(s["target_temperature"], json!(22.0));
}

// spec v3-firmware §7 vectors 5, 7
#[tokio::test]
async fn the_4_0_acknowledgement_is_nested_compact_metadata_and_a_conflict_carries_the_stored_version() {
    let app = TestApp::start(&[]).await;
    let first = json!({"shared": {SERIAL: {"target_temperature": 21.5}}});
    v3_put(&app, "/nest/transport/v3/put", V40, first).await;
    let r = v3_put(
        &app,
        "/nest/transport/v3/put",
        V40,
        json!({"shared": {SERIAL: {"target_temperature": 22.5}}, "device": {SERIAL: {"rssi": 56}}}),
    )
    .await;
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
    let raw = text(&r);
    assert!(!raw.contains(": ") && !raw.contains(", "), "{raw}");
    let ack = r.json().unwrap();
    let stored = ack["shared"][SERIAL].clone();
    assert_eq!(member_keys(&stored), ["$version", "$timestamp"], "metadata only: {raw}");
    assert_eq!(stored["$version"], 2);
    assert_eq!(member_keys(&ack["device"][SERIAL]), ["$version", "$timestamp"]);

    let cas = json!({"shared": {SERIAL: {"if_object_revision": 1, "target_temperature": 30.0}},
        "device": {SERIAL: {"rssi": 60}}});
    let ack = v3_put(&app, "/nest/transport/v3/put", V40, cas).await.json().unwrap();
    assert_eq!(ack["shared"][SERIAL], stored, "the stored version, nothing written");
    assert_eq!(ack["device"][SERIAL]["$version"], 2, "the other bucket is written");
    let s = app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap();
    assert_eq!(s["target_temperature"], json!(22.5));
}

// spec v3-firmware §7 vector 9
#[tokio::test]
async fn corrupted_keys_in_a_v3_put_are_stored_under_the_canonical_key() {
    let app = TestApp::start(&[]).await;
    let objects = json!({"objects": [{"object_key": format!("shared.{SERIAL} ._sync"), "value": {"a": 1}}]});
    v3_put(&app, "/nest/transport/v3/put", V43, objects).await;
    let nested = json!({"device": {format!("{SERIAL} .$version .$version"): {"b": 2}}});
    let ack = v3_put(&app, "/nest/transport/v3/put", V43, nested).await.json().unwrap();
    assert_eq!(member_keys(&ack), [format!("device.{SERIAL}")], "acknowledged under the canonical key");
    let keys = keys_of(&app.listing_of(SERIAL).await);
    assert_eq!(keys, [shared_key(), format!("device.{SERIAL}")]);
}

/// Opens a v3 subscribe with `body`; returns the connection once the head arrived.
async fn v3_subscribe(app: &TestApp, software_version: &str, body: Value) -> (Conn, Head) {
    v3_subscribe_at(app, "/nest/transport/v3/subscribe", software_version, body).await
}

async fn v3_subscribe_at(app: &TestApp, path: &str, software_version: &str, body: Value) -> (Conn, Head) {
    let mut conn = app.device.connect().await.unwrap();
    conn.send_request(&v3_req("POST", path, software_version).json(&body)).await.unwrap();
    let head = tokio::time::timeout(WAIT, conn.read_head()).await.expect("head in time").unwrap();
    (conn, head)
}

// spec v3-firmware §7 vectors 13, 14 (4.3.3: headers at once, the hold ends with the terminal chunk)
#[tokio::test]
async fn a_bare_key_subscribe_gets_the_bucket_once_then_is_held_until_an_empty_end() {
    let app = TestApp::start(&["--connection-hold-timeout=0.3"]).await;
    let stored = v3_put(&app, "/nest/transport/v3/put", V43, json!({"shared": {SERIAL: {"target_temperature": 21.5}}}))
        .await
        .json()
        .unwrap();
    let sync = &stored[shared_key()]["_sync"];
    let keys = json!({"keys": [{"key": "shared.Küche"}, {"key": shared_key()}]});
    let (mut conn, head) = v3_subscribe(&app, V43, keys.clone()).await;
    assert_eq!(head.header("x-nl-skv-key"), Some(shared_key().as_str()), "a key that fits no header is skipped");
    assert_eq!(head.header("x-nl-skv-version"), Some(sync["$version"].to_string().as_str()));
    assert_eq!(head.header("x-nl-skv-timestamp"), Some(sync["$timestamp"].to_string().as_str()));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert!(head.header("x-nl-disable-defer-window").is_some(), "a setpoint");
    let body = conn.read_body(&head).await.unwrap();
    assert_eq!(&body[..], br#"{"target_temperature":21.5}"#, "the bare value");

    let (mut conn, head) = v3_subscribe(&app, V43, keys).await;
    assert!(head.header("x-nl-skv-key").is_none());
    assert_eq!(head.header("transfer-encoding"), Some("chunked"), "headers at once");
    assert!(conn.read_body(&head).await.unwrap().is_empty(), "the hold ends with an empty body");
}

// spec v3-firmware §7 vectors 14, 19 (4.0.6: headers withheld, Content-Length: 0 at the end)
#[tokio::test]
async fn a_versioned_subscribe_is_withheld_until_an_empty_answer_and_released_when_the_peer_leaves() {
    let app = TestApp::start(&["--connection-hold-timeout=0.3"]).await;
    let ack = v3_put(&app, "/nest/transport/v3/put", V40, json!({"shared": {SERIAL: {"target_temperature": 21.5}}}))
        .await
        .json()
        .unwrap();
    let v = &ack["shared"][SERIAL];
    let keys = json!({"keys": [{"key": shared_key(), "version": v["$version"], "timestamp": v["$timestamp"]}]});
    let (mut conn, head) = v3_subscribe(&app, V40, keys.clone()).await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("0")));
    assert!(head.header("x-nl-skv-key").is_none());
    assert!(conn.read_body(&head).await.unwrap().is_empty());

    let app = TestApp::start(&[]).await;
    v3_put(&app, "/nest/transport/v3/put", V40, json!({"shared": {SERIAL: {"target_temperature": 21.5}}})).await;
    let mut conn = app.device.connect().await.unwrap();
    let held = json!({"keys": [{"key": shared_key(), "version": 1, "timestamp": i64::MAX / 2}]});
    conn.send_request(&v3_req("POST", "/nest/transport/v3/subscribe", V40).json(&held)).await.unwrap();
    app.wait_held(1).await;
    drop(conn);
    app.wait_held(0).await;
}

// spec v3-firmware §7 vector 20, and §1: the answer follows the path
#[tokio::test]
async fn the_path_chooses_the_dialect_whatever_the_body() {
    let app = TestApp::start(&[]).await;
    put(&app.device, SERIAL, json!({"objects": [{"object_key": shared_key(), "value": {"a": 1}}]})).await;
    let objects = json!({"objects": [{"object_key": shared_key(), "object_revision": 0, "object_timestamp": 0}]});
    let r = app.device.send(&device_req("POST", "/nest/transport/v7/subscribe", SERIAL).json(&objects)).await.unwrap();
    assert!(r.header("x-nl-skv-key").is_none());
    assert_eq!(keys_of(&r.json().unwrap())[0], shared_key(), "objects, with user and structure");
    for path in ["/nest/transport/v3/subscribe", "/transport/v3/subscribe", "/czfe/v3/subscribe"] {
        let (mut conn, head) = v3_subscribe_at(&app, path, V43, objects.clone()).await;
        assert_eq!(head.header("x-nl-skv-key"), Some(shared_key().as_str()), "{path}");
        assert_eq!(&conn.read_body(&head).await.unwrap()[..], br#"{"a":1}"#);
    }
}

// spec v3-firmware §7 vectors 21, 22, 23 (and 24 end to end: the four-token request line)
#[tokio::test]
async fn the_listing_per_profile_and_with_a_corrupted_key_in_the_request_line() {
    let app = TestApp::start(&[]).await;
    v3_put(&app, "/nest/transport/v3/put", V40, json!({"shared": {SERIAL: {"target_temperature": 22.0}}})).await;
    let stored = app.listing_of(SERIAL).await["objects"][0].clone();
    let (rev, ts) = (stored["object_revision"].clone(), stored["object_timestamp"].clone());
    let mut conn = app.device.connect().await.unwrap();
    for path in [
        format!("/nest/transport/v3/device/device.{SERIAL}"),
        format!("/nest/transport/v3/device/device.{SERIAL} ._sync"),
    ] {
        let r = conn.roundtrip(&v3_req("GET", &path, V40)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            text(&r),
            format!(r#"{{"shared":{{"{SERIAL}":{{"target_temperature":22.0,"$version":{rev},"$timestamp":{ts}}}}}}}"#),
            "{path}"
        );
        let r = conn.roundtrip(&v3_req("GET", &path, V43)).await.unwrap();
        let raw = text(&r);
        assert_eq!(
            r.json().unwrap(),
            json!({"objects": [{"object_revision": rev, "object_timestamp": ts, "object_key": shared_key()}]})
        );
        for banned in [r#""$version""#, r#""$timestamp""#, r#""key""#] {
            assert!(!raw.contains(banned), "{raw}");
        }
    }
    let legacy = app.device.send(&v3_req("GET", &format!("/czfe/v3/device/device.{SERIAL}"), V43)).await.unwrap();
    assert_eq!(legacy.json().unwrap()["objects"][0]["object_key"], shared_key());
    let unknown =
        app.device.send(&v3_req("GET", "/nest/transport/v3/device/device.02AA01AC00000000", V40)).await.unwrap();
    assert_eq!(text(&unknown), "{}");
}
