//! Who may do what on the control port: trusted networks next to the control key, keys created
//! with the CLI while the server runs, and the open port that keyless clients rely on.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use roost::sim::http::{Client, Request, Response};
use serde_json::{Value, json};

use crate::helpers::*;

const KEY_REQUIRED: &str = "API key required (Authorization: Bearer <key>, X-API-Key, or ?token=)";
const ADMIN_ONLY: &str =
    "This needs the control key (CONTROL_API_KEY) or a trusted network (CONTROL_TRUSTED_NETWORKS); API keys cannot";

/// A client of the control port connecting from 127.0.0.2: "another machine" on loopback.
fn from_elsewhere(app: &TestApp) -> Client {
    Client::new(&format!("http://127.0.0.1:{}", app.control_port()))
        .unwrap()
        .bind_to(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
}

async fn send(client: &Client, req: Request) -> Response {
    client.send(&req).await.expect("control request")
}

fn set_mode(value: &str) -> Request {
    Request::post("/command").json(&json!({"serial": SERIAL, "command": "set_mode", "value": value}))
}

async fn access(client: &Client, req: Request) -> Value {
    let r = send(client, req).await;
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

#[tokio::test]
async fn a_trusted_network_needs_no_key_and_another_address_gets_401() {
    let app = TestApp::start(&["--control-api-key=k", "--control-trusted-networks=127.0.0.1/32"]).await;
    app.booted(SERIAL).await;
    let here = &app.control;
    let elsewhere = from_elsewhere(&app);

    // From the trusted address: reads, commands and administration, without a key.
    assert_eq!(send(here, Request::get("/api/devices")).await.status(), 200);
    assert_eq!(send(here, set_mode("cool")).await.status(), 200);
    let (key, _) = new_key(&app, None, json!({"scopes": ["read", "write"]})).await;
    let me = access(here, Request::get("/api/access")).await;
    assert_eq!(me["mode"], "key");
    assert_eq!(me["trusted_networks"], json!(["127.0.0.1/32"]));
    assert_eq!(me["caller"], json!({"address": "127.0.0.1", "via": "trusted network", "level": "admin", "key": null}));
    // A made-up token from a trusted address is ignored, as without a key.
    assert_eq!(send(here, Request::get("/api/devices").header("Authorization", "Bearer dummy")).await.status(), 200);

    // The same requests from another address need a key.
    for req in [Request::get("/api/devices"), set_mode("heat"), Request::get("/api/keys")] {
        let r = send(&elsewhere, req.clone()).await;
        assert_eq!(r.status(), 401, "{} {}", req.method, req.path);
        assert_eq!(r.json().unwrap(), json!({"error": KEY_REQUIRED}));
    }
    let r = send(&elsewhere, Request::get("/api/devices").header("Authorization", "Bearer dummy")).await;
    assert_eq!((r.status(), r.json().unwrap()), (401, json!({"error": "Invalid API key"})));
    let status = send(here, Request::get(&format!("/status?serial={SERIAL}"))).await.json().unwrap();
    assert_eq!(status["mode"], "cool", "the refused command did nothing");
    assert_eq!(send(&elsewhere, with_key(set_mode("heat"), "k")).await.status(), 200);
    assert_eq!(send(&elsewhere, with_key(set_mode("heat"), &key)).await.status(), 200);
    let r = send(&elsewhere, with_key(Request::get("/api/keys"), &key)).await;
    assert_eq!((r.status(), r.json().unwrap()), (403, json!({"error": ADMIN_ONLY})));
    assert_eq!(send(&elsewhere, with_key(Request::get("/api/keys"), "k")).await.status(), 200);
    let them = access(&elsewhere, Request::get("/api/access")).await;
    assert_eq!(them["caller"], json!({"address": "127.0.0.2", "via": "none", "level": null, "key": null}));
    assert_eq!(them["trusted_networks"], Value::Null, "the list is for administrators");
    let keyed = access(&elsewhere, with_key(Request::get("/api/access"), &key)).await;
    assert_eq!(keyed["caller"]["via"], "api key");
    assert_eq!(keyed["caller"]["level"], "write");
    assert_eq!(keyed["caller"]["key"]["scopes"], json!(["read", "write"]));
}

#[tokio::test]
async fn keys_never_lock_out_keyless_clients_of_an_open_port() {
    // No control key: the Matterbridge plugin and the Home Assistant integration send nothing.
    let app = TestApp::start(&["--control-trusted-networks=127.0.0.1/32"]).await;
    app.booted(SERIAL).await;
    let (key, _) = new_key(&app, None, json!({"scopes": ["read"]})).await;
    let elsewhere = from_elsewhere(&app);
    for client in [&app.control, &elsewhere] {
        assert_eq!(send(client, Request::get("/api/devices")).await.status(), 200);
        assert_eq!(send(client, set_mode("cool")).await.status(), 200);
        let r = send(client, Request::get("/api/devices").header("Authorization", "Bearer nlapi_anything")).await;
        assert_eq!(r.status(), 200, "made-up tokens are ignored, as the reference did");
    }
    // A key, when sent, still narrows what its holder may do.
    assert_eq!(send(&elsewhere, with_key(set_mode("heat"), &key)).await.status(), 403);
    // Administration stays with the trusted network.
    let me = access(&elsewhere, Request::get("/api/access")).await;
    assert_eq!(
        (me["mode"].clone(), me["caller"]["via"].clone(), me["caller"]["level"].clone()),
        (json!("open"), json!("open"), json!("write"))
    );
    for req in [
        Request::get("/api/keys"),
        Request::new("DELETE", "/api/device").json(&json!({"serial": SERIAL})),
        Request::post("/api/mqtt-config").json(&json!({"brokerUrl": "mqtt://b"})),
        Request::post("/api/scan-network").json(&json!({"subnet": "127.0.0.0/30"})),
    ] {
        let r = send(&elsewhere, req.clone()).await;
        assert_eq!((r.status(), r.json().unwrap()), (403, json!({"error": ADMIN_ONLY})), "{} {}", req.method, req.path);
    }
    assert_eq!(send(&app.control, Request::get("/api/keys")).await.status(), 200);
    assert_eq!(send(&app.control, Request::get(&format!("/status?serial={SERIAL}"))).await.status(), 200);
}

#[tokio::test]
async fn an_open_port_trusts_its_local_network_for_administration() {
    // Neither setting: loopback and private addresses may administer (as the reference's LAN).
    let app = TestApp::start(&[]).await;
    let me = access(&from_elsewhere(&app), Request::get("/api/access")).await;
    assert_eq!(me["caller"]["via"], "local network");
    assert_eq!(me["caller"]["level"], "admin");
    assert!(me["trusted_networks"].as_array().unwrap().contains(&json!("192.168.0.0/16")));
    assert_eq!(me["v1_rate_limit_per_minute"], 240);
    assert_eq!(send(&from_elsewhere(&app), Request::get("/api/keys")).await.status(), 200);
}

#[tokio::test]
async fn keys_are_checked_when_they_are_created() {
    let app = TestApp::start(&[]).await;
    for (body, message) in [
        (json!({}), "scopes required: [\"read\"], [\"write\"] or both"),
        (json!({"scopes": ["admin"]}), "scopes: unknown scope 'admin' (use read, write or read,write)"),
        (json!({"scopes": "read", "devices": ["??"]}), "devices: '??' is not a thermostat serial"),
        (
            json!({"scopes": "read", "devices": []}),
            "devices: list at least one serial, or leave devices out for every device",
        ),
        (
            json!({"scopes": "read", "expires": "soon"}),
            "expires: 'soon' is not an RFC 3339 time such as 2027-01-31T18:00:00Z",
        ),
        (
            json!({"scopes": "read", "expires": "2001-01-01T00:00:00Z"}),
            "expires: 2001-01-01T00:00:00Z has already passed",
        ),
        (json!({"scopes": "read", "name": 5}), "name must be a string"),
        (json!([1]), "Body must be a JSON object"),
    ] {
        let r = send(&app.control, Request::post("/api/keys").json(&body)).await;
        assert_eq!((r.status(), r.json().unwrap()), (400, json!({"error": message})), "{body}");
    }
    let r = send(
        &app.control,
        Request::post("/api/keys").json(&json!({"scopes": "read", "devices": "02aa01ac12345678", "name": "phone"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let created = r.json().unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("nle_") && key.len() == 68 && key[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(created["devices"], json!([SERIAL]));
    assert_eq!(created["status"], "active");
    assert_eq!(created["preview"], format!("{}…{}", &key[..10], &key[64..]));
    assert_eq!(send(&app.control, Request::new("DELETE", "/api/keys/x")).await.status(), 400);
}

/// Runs the real `roost` binary with the server's database.
async fn roost_keys(db: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .envs(db_env(db).await)
        .arg("keys")
        .args(args)
        .output()
        .expect("run roost keys");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn keys_made_with_the_cli_work_at_once_on_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("roost.sqlite");
    let app = TestApp::start_in(dir.path().to_path_buf(), &["--control-api-key=k"]).await;
    app.booted(SERIAL).await;

    let (ok, key, err) =
        roost_keys(&db, &["create", "--scopes", "read,write", "--devices", SERIAL, "--name", "phone"]).await;
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    assert!(key.starts_with("nle_") && key.len() == 68, "{key}");
    assert!(err.contains("shown only this once"), "{err}");
    let r = app.control.send(&with_key(Request::get("/api/v1/devices"), &key)).await.unwrap();
    assert_eq!(r.status(), 200, "honoured at once: {}", String::from_utf8_lossy(&r.body));
    let r = app.control.send(&with_key(Request::get(&format!("/status?serial={SERIAL}")), &key)).await.unwrap();
    assert_eq!(r.status(), 200, "and on the rest of the control port");

    let (ok, list, _) = roost_keys(&db, &["list"]).await;
    assert!(ok);
    assert!(list.contains("phone") && list.contains(&key[..10]) && list.contains("active"), "{list}");
    assert!(!list.contains(&key), "the list never shows a key");

    let (ok, _, err) = roost_keys(&db, &["revoke", "1"]).await;
    assert!(ok, "{err}");
    let r = app.control.send(&with_key(Request::get("/api/v1/devices"), &key)).await.unwrap();
    assert_eq!(r.status(), 401, "revoked at once");
    let r = app.control.send(&with_key(Request::get("/api/devices"), &key)).await.unwrap();
    assert_eq!(r.status(), 401);
    let (ok, list, _) = roost_keys(&db, &["list"]).await;
    assert!(ok && list.contains("revoked"), "{list}");

    let (ok, _, err) = roost_keys(&db, &["revoke", "7"]).await;
    assert!(!ok && err.contains("no API key with id 7"), "{err}");
    let (ok, _, err) = roost_keys(&db, &["create", "--scopes", "read", "--expires", "yesterday"]).await;
    assert!(!ok && err.contains("expires:"), "{err}");
}
