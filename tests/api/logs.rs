//! The real binary's `LOG_FORMAT=json` output: every request's lines carry its span (port,
//! method, route pattern, serial), so one thermostat can be followed; and no secret (device
//! password, control key, API key, MQTT password, Basic credentials) appears in any line.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use roost::sim::Thermostat;
use roost::sim::http::{Client, Request};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::mqtt_support::free_port;

const CONTROL_KEY: &str = "ctl-key-5e9b1f0c7a2d4e68";
const MQTT_PASSWORD: &str = "mqtt-pw-93c1d7aa";

/// Reads a child's pipe to the end on its own thread (a full pipe would stall the server).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    })
}

async fn send(client: &Client, req: Request) -> u16 {
    client.send(&req).await.expect("control request").status()
}

#[tokio::test]
async fn json_lines_follow_a_thermostat_and_hold_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let (device_port, control_port, closed_port) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .env_remove("RUST_LOG")
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", device_port.to_string())
        .env("CONTROL_HOST", "127.0.0.1")
        .env("CONTROL_PORT", control_port.to_string())
        .env("SQLITE3_DB_PATH", tmp.path().join("db.sqlite"))
        .env("WEATHER_UPSTREAM_URL", "http://127.0.0.1:9/weather/v1")
        .env("LOG_FORMAT", "json")
        .env("DEBUG_LOGGING", "true")
        .env("CONTROL_API_KEY", CONTROL_KEY)
        // A broker that is not there, with credentials both in the URL and in the variables.
        .env("MQTT_HOST", format!("mqtt://roost:{MQTT_PASSWORD}@127.0.0.1:{closed_port}"))
        .env("MQTT_USER", "roost")
        .env("MQTT_PASSWORD", MQTT_PASSWORD)
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roost");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());

    let control = Client::new(&format!("http://127.0.0.1:{control_port}")).unwrap();
    let ready = async {
        while control.send(&Request::get("/health")).await.map(|r| r.status()).ok() != Some(200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ready).await.expect("roost became healthy");

    // A thermostat boots and PUTs, with Basic credentials as the firmware sends them.
    let device = Client::new(&format!("http://127.0.0.1:{device_port}")).unwrap();
    let mut t = Thermostat::new(device, SERIAL);
    t.boot(21.0).await.unwrap();
    t.set_local("shared", json!({"current_temperature": 20.5})).await.unwrap();
    let device_password = format!("pw-{}", SERIAL.to_ascii_lowercase());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("d.{SERIAL}.5a1e:{device_password}"));

    // The control key in each place a client may carry it, an API key, and a made-up one.
    let command = json!({"serial": SERIAL, "command": "set_temperature", "value": 22.0});
    assert_eq!(send(&control, with_key(Request::post("/command").json(&command), CONTROL_KEY)).await, 200);
    assert_eq!(send(&control, Request::get("/metrics").header("X-API-Key", CONTROL_KEY)).await, 200);
    assert_eq!(send(&control, Request::get(&format!("/status?serial={SERIAL}&token={CONTROL_KEY}"))).await, 200);
    let created = control
        .send(&with_key(Request::post("/api/keys").json(&json!({"scopes": ["read"]})), CONTROL_KEY))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let api_key = created.json().unwrap()["key"].as_str().unwrap().to_string();
    assert_eq!(send(&control, Request::get(&format!("/api/devices?token={api_key}"))).await, 200);
    let made_up = format!("nle_{}", "7".repeat(40));
    assert_eq!(send(&control, with_key(Request::get("/api/devices"), &made_up)).await, 401);

    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    let exited = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(exited.success(), "roost stopped cleanly: {exited}");
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());

    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let in_span = |route: &str| {
        lines.iter().filter(move |l| l["span"]["route"] == route && l["span"]["serial"] == SERIAL).collect::<Vec<_>>()
    };
    let put = in_span("/nest/transport/{version}/put");
    assert!(!put.is_empty(), "no line of a PUT carries the serial in its span:\n{stdout}");
    assert_eq!((&put[0]["span"]["port"], &put[0]["span"]["method"]), (&json!("device"), &json!("POST")));
    assert!(
        in_span("/command").iter().any(|l| l["fields"]["message"] == "command applied"),
        "the command's line carries the serial in its span:\n{stdout}"
    );
    assert!(!in_span("/status").is_empty(), "a control request about one thermostat names it:\n{stdout}");

    let output = format!("{stdout}\n{stderr}");
    for secret in [CONTROL_KEY, api_key.as_str(), made_up.as_str(), &device_password, &basic, MQTT_PASSWORD] {
        assert!(!output.contains(secret), "'{secret}' appears in the log:\n{output}");
    }
}

#[tokio::test]
async fn a_bad_broker_address_is_refused_without_printing_its_password() {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_roost"))
        .current_dir(tmp.path())
        .env("MQTT_HOST", format!("mqtt://roost:{MQTT_PASSWORD}@broker:notaport"))
        .env("SQLITE3_DB_PATH", "/nonexistent/never-opened.sqlite")
        .output()
        .expect("run roost");
    assert!(!output.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("MQTT_HOST") && text.contains("mqtt://***@broker:notaport"), "{text}");
    assert!(!text.contains(MQTT_PASSWORD), "{text}");
}
