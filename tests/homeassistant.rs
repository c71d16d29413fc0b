//! roost in a real Home Assistant: Home Assistant 2024.3.3 (pip-installed into a virtual
//! environment by `.ci/run`, pinned by `.ci/homeassistant/constraints.txt`), Mosquitto, roost
//! and simulated thermostats. Home Assistant's REST API is driven the way a person or an
//! automation would; each case ends with Home Assistant's state and the thermostat's held
//! subscribe both showing what was asked, and Home Assistant's log must hold no warning or
//! error. `.ci/run` runs it with `ROOST_HA_VENV` set; plain `cargo test` lists it as ignored.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "api/mqtt_support.rs"]
mod mqtt_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helpers::*;
use roost::http_client::{Client, Request};
use roost::sim::{Thermostat, ThermostatState};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const BASEMENT: &str = "02AA01AC00000002";
/// Home Assistant handles MQTT messages and service calls asynchronously; a case that has not
/// settled by then has failed (a hang guard, not a performance limit).
const SETTLE: Duration = Duration::from_secs(20);

/// Home Assistant's log lines that say nothing about roost.
const UNRELATED: [&str; 3] = [
    "Skipping pip installation of required modules",
    "Support for the running Python version",
    "Waiting on integrations to complete setup",
];

struct HomeAssistant {
    child: Child,
    client: Client,
    token: String,
    dir: PathBuf,
}

impl HomeAssistant {
    async fn start(venv: &Path, mqtt_port: u16, dir: PathBuf) -> HomeAssistant {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let prepare = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/homeassistant/prepare.py");
        let out = Command::new(venv.join("bin/python"))
            .arg(prepare)
            .arg(&dir)
            .arg(mqtt_port.to_string())
            .arg(port.to_string())
            .output()
            .expect("run prepare.py with the Home Assistant virtual environment's Python");
        assert!(out.status.success(), "prepare.py: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        // `--skip-pip`: everything Home Assistant needs was installed, pinned, by `.ci/run`;
        // nothing is fetched at run time.
        let child = Command::new(venv.join("bin/hass"))
            .args(["--skip-pip", "-c"])
            .arg(&dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start Home Assistant");
        let ha = HomeAssistant { child, client: Client::new(&format!("http://127.0.0.1:{port}")).unwrap(), token, dir };
        let started = Instant::now();
        ha.until("the REST API answers", Duration::from_secs(180), || async {
            match ha.client.send(&ha.req(Request::get("/api/"))).await {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        println!("Home Assistant answered after {:.1} s", started.elapsed().as_secs_f64());
        ha
    }

    fn req(&self, r: Request) -> Request {
        r.header("Authorization", format!("Bearer {}", self.token))
    }

    /// Polls `probe` until it yields `Ok` (Home Assistant's REST API cannot wait for a state); a
    /// failure says what the last probe saw.
    async fn until<T, F, Fut>(&self, what: &str, limit: Duration, probe: F) -> T
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            let seen = match probe().await {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            if Instant::now() > deadline {
                panic!("Home Assistant: {what} did not happen within {limit:?} ({seen})\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn states(&self) -> Vec<Value> {
        let r = self.client.send(&self.req(Request::get("/api/states"))).await.unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap().as_array().cloned().unwrap_or_default()
    }

    /// The entity of a domain with this friendly name, once Home Assistant has it.
    async fn entity(&self, domain: &str, name: &str) -> String {
        self.until(&format!("{domain} '{name}' appears"), SETTLE, || async {
            let states = self.states().await;
            let found = states.iter().find_map(|s| {
                let id = s["entity_id"].as_str()?;
                (id.starts_with(&format!("{domain}.")) && s["attributes"]["friendly_name"] == name)
                    .then(|| id.to_string())
            });
            found.ok_or_else(|| format!("{} entities", states.len()))
        })
        .await
    }

    async fn state(&self, entity: &str) -> Value {
        let r = self.client.send(&self.req(Request::get(&format!("/api/states/{entity}")))).await.unwrap();
        assert_eq!(r.status(), 200, "{entity}");
        r.json().unwrap()
    }

    /// Waits until `entity`'s state satisfies `cond`; returns it (a failure shows the last one).
    async fn wait(&self, entity: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        self.until(&format!("{entity}: {what}"), SETTLE, || async {
            let s = self.state(entity).await;
            if cond(&s) { Ok(s) } else { Err(format!("last state: {s}")) }
        })
        .await
    }

    async fn call(&self, domain: &str, service: &str, data: Value) {
        let r = self
            .client
            .send(&self.req(Request::post(&format!("/api/services/{domain}/{service}")).json(&data)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{domain}.{service} {data}: {}", String::from_utf8_lossy(&r.body));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("home-assistant.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Warnings and errors in Home Assistant's log, with what follows them (tracebacks).
    fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut in_problem = false;
        for line in self.log().lines() {
            let level = line.split_whitespace().nth(2).unwrap_or_default();
            if line.starts_with("20") && line.len() > 24 {
                in_problem =
                    matches!(level, "WARNING" | "ERROR" | "CRITICAL") && !UNRELATED.iter().any(|u| line.contains(u));
                if in_problem {
                    out.push(line.to_string());
                }
            } else if in_problem {
                if let Some(last) = out.last_mut() {
                    last.push('\n');
                    last.push_str(line);
                }
            }
        }
        out
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attr<'a>(s: &'a Value, name: &str) -> &'a Value {
    &s["attributes"][name]
}

fn shared(s: &ThermostatState, serial: &str, field: &str) -> Option<Value> {
    s.field(&format!("shared.{serial}"), field).cloned()
}

fn manual_eco(s: &ThermostatState) -> Option<bool> {
    s.buckets
        .iter()
        .find(|(k, _)| k.starts_with("structure."))
        .and_then(|(_, b)| b.value.get("manual_eco_all")?.as_bool())
}

/// Waits until the thermostat's held subscribe delivered what `cond` looks for.
async fn thermostat(t: &Thermostat, what: &str, cond: impl Fn(&ThermostatState) -> bool) -> ThermostatState {
    t.wait_for(SETTLE, what, cond).await.unwrap_or_else(|e| panic!("the thermostat: {e}"))
}

#[tokio::test]
#[ignore = "needs Home Assistant (ROOST_HA_VENV) and Mosquitto; .ci/run installs and runs it"]
async fn home_assistant_shows_and_controls_every_thermostat_as_set() {
    let Some(venv) = std::env::var_os("ROOST_HA_VENV").map(PathBuf::from) else {
        println!("skipped: ROOST_HA_VENV is not set (.ci/run installs Home Assistant and sets it)");
        return;
    };
    let started = Instant::now();
    let broker = mqtt_support::Broker::mosquitto().await.expect("Mosquitto is needed (apt-get install mosquitto)");
    let app = TestApp::start(&["--mqtt-host=127.0.0.1", &format!("--mqtt-port={}", broker.port)]).await;
    let t = app.booted(SERIAL).await;
    t.set_local("shared", json!({"name": "Hallway"})).await.unwrap();
    let b = app.booted(BASEMENT).await;
    b.set_local("shared", json!({"name": "Basement"})).await.unwrap();
    b.set_local("device", json!({"has_humidifier": true, "has_emer_heat": true, "has_heat_pump": true})).await.unwrap();
    let stop = CancellationToken::new();
    let runners = [t.run(stop.clone()), b.run(stop.clone())];

    let dir = tempfile::tempdir().unwrap();
    let ha = HomeAssistant::start(&venv, broker.port, dir.path().to_path_buf()).await;
    let climate = ha.entity("climate", "Hallway").await;

    // The climate entity: modes, setpoints, fan modes and presets as the thermostat has them.
    let s =
        ha.wait(&climate, "the thermostat's state", |s| s["state"] == "heat" && attr(s, "temperature") == 20.0).await;
    assert_eq!(attr(&s, "hvac_modes"), &json!(["off", "heat", "cool", "heat_cool"]));
    assert_eq!(attr(&s, "fan_modes"), &json!(["auto", "on"]));
    assert_eq!(attr(&s, "preset_modes"), &json!(["none", "home", "away", "eco"]));
    assert_eq!(attr(&s, "preset_mode"), "home");
    assert_eq!(attr(&s, "current_temperature"), 21.5);
    assert!(attr(&s, "target_temp_low").is_null() && attr(&s, "target_temp_high").is_null(), "{s}");

    // Eco is eco, and stays eco through changes of setpoint layout.
    ha.call("climate", "set_preset_mode", json!({"entity_id": climate, "preset_mode": "eco"})).await;
    thermostat(&t, "manual eco", |s| manual_eco(s) == Some(true)).await;
    ha.wait(&climate, "preset eco", |s| attr(s, "preset_mode") == "eco").await;
    for (mode, stored) in [("heat_cool", "range"), ("off", "off"), ("heat", "heat"), ("heat_cool", "range")] {
        ha.call("climate", "set_hvac_mode", json!({"entity_id": climate, "hvac_mode": mode})).await;
        thermostat(&t, mode, |s| shared(s, SERIAL, "target_temperature_type") == Some(json!(stored))).await;
        let s = ha.wait(&climate, mode, |s| s["state"] == mode).await;
        assert_eq!(attr(&s, "preset_mode"), "eco", "after {mode}");
    }

    // A range moved up past its old high (18/24 → 25/28).
    ha.call("climate", "set_temperature", json!({"entity_id": climate, "target_temp_low": 25, "target_temp_high": 28}))
        .await;
    thermostat(&t, "range 25/28", |s| {
        shared(s, SERIAL, "target_temperature_low") == Some(json!(25.0))
            && shared(s, SERIAL, "target_temperature_high") == Some(json!(28.0))
    })
    .await;
    ha.wait(&climate, "range 25/28", |s| attr(s, "target_temp_low") == 25.0 && attr(s, "target_temp_high") == 28.0)
        .await;

    // A temperature with a mode change from heat_cool.
    ha.call("climate", "set_temperature", json!({"entity_id": climate, "hvac_mode": "heat", "temperature": 23})).await;
    thermostat(&t, "heat at 23", |s| {
        shared(s, SERIAL, "target_temperature_type") == Some(json!("heat"))
            && shared(s, SERIAL, "target_temperature") == Some(json!(23.0))
    })
    .await;
    let s = ha.wait(&climate, "heat at 23", |s| s["state"] == "heat" && attr(s, "temperature") == 23.0).await;
    assert!(attr(&s, "target_temp_low").is_null(), "one setpoint in heat: {s}");

    // From off: to heat with a temperature, and to heat_cool with a range.
    ha.call("climate", "set_hvac_mode", json!({"entity_id": climate, "hvac_mode": "off"})).await;
    ha.wait(&climate, "off", |s| s["state"] == "off").await;
    ha.call("climate", "set_temperature", json!({"entity_id": climate, "hvac_mode": "heat", "temperature": 21.5}))
        .await;
    thermostat(&t, "heat at 21.5", |s| {
        shared(s, SERIAL, "target_temperature_type") == Some(json!("heat"))
            && shared(s, SERIAL, "target_temperature") == Some(json!(21.5))
    })
    .await;
    ha.wait(&climate, "heat at 21.5", |s| s["state"] == "heat" && attr(s, "temperature") == 21.5).await;
    ha.call("climate", "set_hvac_mode", json!({"entity_id": climate, "hvac_mode": "off"})).await;
    ha.wait(&climate, "off", |s| s["state"] == "off").await;
    ha.call(
        "climate",
        "set_temperature",
        json!({"entity_id": climate, "hvac_mode": "heat_cool", "target_temp_low": 19, "target_temp_high": 24}),
    )
    .await;
    thermostat(&t, "heat_cool 19/24", |s| {
        shared(s, SERIAL, "target_temperature_type") == Some(json!("range"))
            && shared(s, SERIAL, "target_temperature_low") == Some(json!(19.0))
            && shared(s, SERIAL, "target_temperature_high") == Some(json!(24.0))
    })
    .await;
    let s = ha
        .wait(&climate, "heat_cool 19/24", |s| {
            s["state"] == "heat_cool" && attr(s, "target_temp_low") == 19.0 && attr(s, "target_temp_high") == 24.0
        })
        .await;
    assert_eq!(attr(&s, "preset_mode"), "eco", "eco through every change above");

    // Away is away; Home Assistant's own "none" is home.
    ha.call("climate", "set_preset_mode", json!({"entity_id": climate, "preset_mode": "away"})).await;
    ha.wait(&climate, "preset away", |s| attr(s, "preset_mode") == "away").await;
    ha.call("climate", "set_preset_mode", json!({"entity_id": climate, "preset_mode": "none"})).await;
    thermostat(&t, "eco left", |s| manual_eco(s) == Some(false)).await;
    ha.wait(&climate, "preset home", |s| attr(s, "preset_mode") == "home").await;

    // A change on the thermostat shows in Home Assistant.
    t.set_local(
        "shared",
        json!({"current_temperature": 19.5, "target_temperature_high": 25.0, "hvac_heater_state": true}),
    )
    .await
    .unwrap();
    ha.wait(&climate, "the thermostat's own change", |s| {
        attr(s, "current_temperature") == 19.5
            && attr(s, "target_temp_high") == 25.0
            && attr(s, "hvac_action") == "heating"
    })
    .await;

    // A renamed thermostat: its config changes, and its state (eco) is shown again after it.
    ha.call("climate", "set_preset_mode", json!({"entity_id": climate, "preset_mode": "eco"})).await;
    ha.wait(&climate, "preset eco", |s| attr(s, "preset_mode") == "eco").await;
    t.set_local("shared", json!({"name": "Hall"})).await.unwrap();
    ha.wait(&climate, "the new name", |s| attr(s, "friendly_name") == "Hall").await;
    ha.wait(&climate, "eco after the new config", |s| {
        attr(s, "preset_mode") == "eco" && s["state"] == "heat_cool" && attr(s, "target_temp_low") == 19.0
    })
    .await;

    // What only some thermostats have: a humidifier and emergency heat.
    let humidifier = ha.entity("humidifier", "Basement Humidifier").await;
    ha.call("humidifier", "set_humidity", json!({"entity_id": humidifier, "humidity": 40})).await;
    thermostat(&b, "humidity 40", |s| {
        let device = format!("device.{BASEMENT}");
        s.field(&device, "target_humidity") == Some(&json!(40))
            && s.field(&device, "target_humidity_enabled") == Some(&json!(true))
    })
    .await;
    ha.wait(&humidifier, "on at 40 %", |s| s["state"] == "on" && attr(s, "humidity") == 40).await;
    let emergency = ha.entity("switch", "Basement Emergency Heat").await;
    ha.call("switch", "turn_on", json!({"entity_id": emergency})).await;
    thermostat(&b, "emergency heat", |s| shared(s, BASEMENT, "target_temperature_type") == Some(json!("emergency")))
        .await;
    ha.wait(&emergency, "on", |s| s["state"] == "on").await;
    let basement = ha.entity("climate", "Basement").await;
    ha.wait(&basement, "heat", |s| s["state"] == "heat").await;

    // Nothing in Home Assistant's log about roost's payloads (or anything else).
    let problems = ha.problems();
    println!("Home Assistant's log: {} lines", ha.log().lines().count());
    if std::env::var_os("ROOST_HA_KEEP_LOG").is_some() {
        std::fs::copy(ha.dir.join("home-assistant.log"), "target/home-assistant.log").unwrap();
    }
    assert!(problems.is_empty(), "Home Assistant logged:\n{}", problems.join("\n"));
    println!("Home Assistant test: {:.1} s in all", started.elapsed().as_secs_f64());
    stop.cancel();
    for r in runners {
        r.await.unwrap();
    }
}
