//! The MQTT bridge against real brokers: rumqttd in this process always, and Mosquitto too when
//! its binary is installed (each scenario runs on both; the Mosquitto variant prints a note and
//! passes when it is absent). A recording client subscribed to `#` sees what Home Assistant
//! would see; commands are published the way Home Assistant publishes them.

use roost::sim::http::Request;
use roost::sim::{Thermostat, ThermostatState};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::mqtt_support::*;

const SERIAL2: &str = "02AA01AC87654321";
const PREFIX: &str = "nolongerevil";
const DISCOVERY: &str = "homeassistant";
const BRIDGE: &str = "nolongerevil/roost/availability";

/// `P/<serial>/<rest>`.
fn topic(serial: &str, rest: &str) -> String {
    format!("{PREFIX}/{serial}/{rest}")
}

fn ha(serial: &str, name: &str) -> String {
    topic(serial, &format!("ha/{name}"))
}

fn config(component: &str, serial: &str, suffix: &str) -> String {
    format!("{DISCOVERY}/{component}/nest_{serial}/{suffix}/config")
}

fn climate(serial: &str) -> String {
    config("climate", serial, "thermostat")
}

/// Every discovery config roost publishes for a thermostat with a fan.
const ENTITIES: [(&str, &str, &str); 22] = [
    ("sensor", "temperature", "current_temperature"),
    ("sensor", "humidity", "current_humidity"),
    ("sensor", "outdoor_temperature", "outdoor_temperature"),
    ("binary_sensor", "occupancy", "occupancy"),
    ("binary_sensor", "fan", "fan_running"),
    ("binary_sensor", "leaf", "eco"),
    ("sensor", "battery", "battery"),
    ("sensor", "rssi", "rssi"),
    ("binary_sensor", "filter_replacement", "filter_replacement_needed"),
    ("sensor", "filter_runtime", "filter_runtime_days"),
    ("sensor", "time_to_target", "time_to_target"),
    ("binary_sensor", "sunlight_correction", "sunlight_correction_active"),
    ("sensor", "compressor_lockout", "compressor_lockout_timeout"),
    ("binary_sensor", "learning_mode", "learning_mode"),
    ("binary_sensor", "heat_pump_ready", "heat_pump_ready"),
    ("sensor", "local_ip", "local_ip"),
    ("sensor", "fan_timer_remaining", "fan_timer_remaining"),
    ("sensor", "runtime_heat", "runtime_heat"),
    ("sensor", "runtime_cool", "runtime_cool"),
    ("sensor", "runtime_fan", "runtime_fan"),
    ("number", "fan_duration", "fan_duration"),
    ("switch", "eco_mode", "eco_mode"),
];

/// Runs a scenario once on rumqttd and once on Mosquitto (when installed).
macro_rules! on_both_brokers {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn rumqttd() {
                super::$scenario(crate::mqtt_support::Broker::rumqttd(None).await).await;
            }

            #[tokio::test]
            async fn mosquitto() {
                if let Some(broker) = crate::mqtt_support::Broker::mosquitto().await {
                    super::$scenario(broker).await;
                }
            }
        }
    )*};
}

on_both_brokers!(
    discovery_and_state_topics,
    discovery_follows_capabilities_and_name_only,
    home_assistant_commands_reach_the_thermostat,
    malformed_messages_are_ignored_and_the_next_one_works,
    retained_commands_are_not_replayed,
    broker_outage_while_thermostats_keep_working,
    availability_follows_the_thermostat_and_roost,
    delete_clears_retained_topics,
    messages_per_set_temperature_command,
    home_assistant_cases_from_the_first_hour,
    entities_for_what_the_thermostat_has,
    minimal_discovery_announces_the_climate_entity_only,
    a_pending_command_is_an_attribute_until_the_thermostat_confirms_it,
);

/// roost with MQTT pointed at `port`.
async fn roost(port: u16, extra: &[&str]) -> TestApp {
    let port = format!("--mqtt-port={port}");
    let mut args = vec!["--mqtt-host=127.0.0.1", port.as_str()];
    args.extend_from_slice(extra);
    TestApp::start(&args).await
}

async fn mqtt_stats(app: &TestApp) -> Value {
    let r = app.control.send(&Request::get("/api/stats")).await.expect("stats");
    assert_eq!(r.status(), 200);
    r.json().unwrap()["mqtt"].clone()
}

/// Waits until the thermostat holds `fields` in its shared bucket and has acknowledged them.
async fn sees_shared(t: &Thermostat, fields: Value) -> ThermostatState {
    let key = format!("shared.{}", t.serial);
    t.wait_for(WAIT, &format!("shared {fields}"), |s| {
        fields.as_object().unwrap().iter().all(|(k, v)| s.field(&key, k) == Some(v))
            && s.field(&key, "target_change_pending") == Some(&json!(false))
    })
    .await
    .unwrap()
}

/// A recorder that has seen the thermostat's discovery and first state.
async fn announced(rec: &Recorder, serial: &str) -> Log {
    rec.wait_for(&format!("{serial} announced"), |l| {
        l.json(&climate(serial)).is_some()
            && l.latest(&ha(serial, "mode")).is_some()
            && l.latest(&topic(serial, "availability")) == Some("online")
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Discovery and state

async fn discovery_and_state_topics(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    rec.wait_payload(BRIDGE, "online").await;
    let t = app.booted(SERIAL).await;
    let state = [
        ("current_temperature", "21.5"),
        ("current_humidity", "45"),
        ("mode", "heat"),
        ("target_temperature", "20.0"),
        ("action", "idle"),
        ("fan_mode", "auto"),
        ("preset", "home"),
        ("occupancy", "home"),
        ("fan_running", "false"),
        ("eco", "false"),
        ("battery", "84"),
        ("fan_timer_remaining", "0"),
        ("fan_duration", "60"),
        ("eco_mode", "OFF"),
        ("emergency_heat", "OFF"),
        ("runtime_heat", "0"),
        ("runtime_cool", "0"),
        ("runtime_fan", "0"),
    ];
    let log = rec
        .wait_for("discovery and first state", |l| {
            ENTITIES.iter().all(|(c, s, _)| l.json(&config(c, SERIAL, s)).is_some())
                && l.json(&climate(SERIAL)).is_some()
                && l.latest(&topic(SERIAL, "availability")) == Some("online")
                && l.json(&topic(SERIAL, "device")).is_some()
                && l.json(&topic(SERIAL, "shared")).is_some()
                && state.iter().all(|(name, value)| l.latest(&ha(SERIAL, name)) == Some(value))
        })
        .await;

    // The climate entity: everything Home Assistant needs to create it without YAML.
    let c = log.json(&climate(SERIAL)).unwrap();
    assert_eq!(c["unique_id"], format!("nolongerevil_{SERIAL}"));
    assert_eq!(c["default_entity_id"], format!("climate.nest_{SERIAL}"));
    assert_eq!(c["device"]["identifiers"], json!([format!("nolongerevil_{SERIAL}")]));
    assert_eq!(c["device"]["manufacturer"], "Google Nest");
    assert_eq!(c["device"]["model"], "Nest Thermostat");
    assert!(c["device"]["name"].as_str().is_some_and(|n| n.contains(SERIAL)), "a name for an unnamed device: {c}");
    let availability = c["availability"].as_array().expect("availability topics");
    let topics: Vec<&str> = availability.iter().filter_map(|a| a["topic"].as_str()).collect();
    assert_eq!(topics, [topic(SERIAL, "availability").as_str(), BRIDGE]);
    assert!(availability.iter().all(|a| a["payload_available"] == "online" && a["payload_not_available"] == "offline"));
    assert_eq!(c["availability_mode"], "all", "offline when the thermostat or roost is");
    assert_eq!(c["modes"], json!(["off", "heat", "cool", "heat_cool"]));
    assert_eq!(c["mode_command_topic"], ha(SERIAL, "mode/set"));
    assert_eq!(c["mode_state_topic"], ha(SERIAL, "mode"));
    assert_eq!(c["current_temperature_topic"], ha(SERIAL, "current_temperature"));
    assert_eq!(c["current_humidity_topic"], ha(SERIAL, "current_humidity"));
    assert_eq!(c["action_topic"], ha(SERIAL, "action"));
    assert_eq!(c["fan_modes"], json!(["auto", "on"]));
    assert_eq!(c["fan_mode_command_topic"], ha(SERIAL, "fan_mode/set"));
    assert_eq!(c["fan_mode_state_topic"], ha(SERIAL, "fan_mode"));
    assert_eq!(c["preset_modes"], json!(["home", "away", "eco"]));
    assert_eq!(c["preset_mode_command_topic"], ha(SERIAL, "preset/set"));
    // Every setpoint topic in every mode: the config never changes with the mode.
    for name in ["temperature", "temperature_low", "temperature_high"] {
        let topic = name.replace("temperature", "target_temperature");
        assert_eq!(c[format!("{name}_command_topic")], ha(SERIAL, &format!("{topic}/set")), "{c}");
        assert_eq!(c[format!("{name}_state_topic")], ha(SERIAL, &topic), "{c}");
    }
    assert_eq!((c["temperature_unit"].clone(), c["optimistic"].clone()), (json!("C"), json!(false)));
    assert!(c["min_temp"].is_number() && c["max_temp"].is_number() && c["temp_step"].is_number());

    // Sensors and binary sensors, on the same device, each reading a state topic that exists.
    for (component, suffix, state) in ENTITIES {
        let e = log.json(&config(component, SERIAL, suffix)).unwrap();
        assert_eq!(e["unique_id"], format!("nolongerevil_{SERIAL}_{suffix}"), "{component}/{suffix}");
        assert_eq!(e["default_entity_id"], format!("{component}.nest_{SERIAL}_{suffix}"));
        assert_eq!(e["device"]["identifiers"], c["device"]["identifiers"], "{suffix}");
        assert_eq!(e["availability"], c["availability"], "{suffix}");
        assert_eq!(e["state_topic"], ha(SERIAL, state), "{suffix}");
        assert!(e["name"].is_string(), "{suffix}: {e}");
    }
    let fan_duration = log.json(&config("number", SERIAL, "fan_duration")).unwrap();
    assert_eq!(fan_duration["command_topic"], ha(SERIAL, "fan_duration/set"));
    assert_eq!(log.json(&config("switch", SERIAL, "eco_mode")).unwrap()["command_topic"], ha(SERIAL, "eco_mode/set"));
    let runtime = log.json(&config("sensor", SERIAL, "runtime_heat")).unwrap();
    assert_eq!(
        (runtime["device_class"].clone(), runtime["unit_of_measurement"].clone()),
        (json!("duration"), json!("min"))
    );
    // What this thermostat does not have is not announced (an empty config removes it).
    for (component, suffix) in [("humidifier", "humidifier"), ("switch", "emergency_heat"), ("sensor", "runtime_aux")] {
        assert_eq!(log.latest(&config(component, SERIAL, suffix)), Some(""), "{suffix}");
    }
    assert_eq!((fan_duration["min"].clone(), fan_duration["max"].clone()), (json!(15), json!(1440)));
    let battery = log.json(&config("sensor", SERIAL, "battery")).unwrap();
    assert_eq!(
        (battery["device_class"].clone(), battery["unit_of_measurement"].clone()),
        (json!("battery"), json!("%"))
    );

    // Home Assistant state topics (all of `state` above), and the setpoints heat mode does not use.
    for unused in ["target_temperature_low", "target_temperature_high"] {
        assert_eq!(log.latest(&ha(SERIAL, unused)), Some("None"), "{unused} is hidden in heat mode");
    }

    // Raw topics: the whole bucket and each field, with JSON scalars.
    let shared = log.json(&topic(SERIAL, "shared")).expect("the shared bucket as JSON");
    assert_eq!(shared["target_temperature_type"], "heat");
    assert_eq!(log.json(&topic(SERIAL, "device")).unwrap()["has_fan"], true);
    assert_eq!(log.latest(&topic(SERIAL, "shared/can_heat")), Some("true"));
    assert_eq!(log.latest(&topic(SERIAL, "shared/hvac_heater_state")), Some("false"));
    assert_eq!(log.latest(&topic(SERIAL, "device/has_fan")), Some("true"));
    assert_eq!(log.latest(&topic(SERIAL, "shared/target_temperature")), Some("20.0"));
    assert_eq!(log.latest(&topic(SERIAL, "device/current_humidity")), Some("45"));
    assert_eq!(log.latest(&topic(SERIAL, "device/temperature_scale")), Some("C"));
    assert_eq!(log.json(&topic(SERIAL, "device/eco")), Some(json!({"mode": "schedule", "leaf": false})));
    for (t, p) in log.messages.iter().filter(|(t, _)| !t.contains("/ha/")) {
        assert!(!["True", "False", "None"].contains(&p.as_str()), "{t} = {p}: not a JSON scalar");
    }

    // A state change publishes what changed, and only that: no discovery, no unchanged topics.
    let before = rec.log();
    t.set_local("shared", json!({"current_temperature": 22.0})).await.unwrap();
    let after = rec.wait_payload(&ha(SERIAL, "current_temperature"), "22.0").await;
    let new: Vec<&str> = after.messages[before.messages.len()..].iter().map(|(t, _)| t.as_str()).collect();
    let mut expected =
        vec![topic(SERIAL, "shared"), topic(SERIAL, "shared/current_temperature"), ha(SERIAL, "current_temperature")];
    let mut got: Vec<String> = new.iter().map(|t| t.to_string()).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "only the changed values are published");
}

async fn discovery_follows_capabilities_and_name_only(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    let count = |l: &Log| l.count(&climate(SERIAL));
    let first = count(&rec.log());
    let original = rec.log().json(&climate(SERIAL)).unwrap();

    // Every mode and setpoint layout: the same config, never re-sent (Home Assistant resets an
    // entity, its preset included, whenever its config arrives again).
    t.set_local("shared", json!({"target_temperature_type": "cool"})).await.unwrap();
    let log = rec.wait_payload(&ha(SERIAL, "mode"), "cool").await;
    assert_eq!(log.latest(&ha(SERIAL, "target_temperature")), Some("20.0"));
    t.set_local("shared", json!({"target_temperature_type": "range"})).await.unwrap();
    let log = rec.wait_payload(&ha(SERIAL, "mode"), "heat_cool").await;
    assert_eq!(log.latest(&ha(SERIAL, "target_temperature_low")), Some("18.0"));
    assert_eq!(log.latest(&ha(SERIAL, "target_temperature_high")), Some("24.0"));
    assert_eq!(log.latest(&ha(SERIAL, "target_temperature")), Some("None"), "hidden outside heat/cool");
    t.set_local("shared", json!({"target_temperature_type": "off"})).await.unwrap();
    let log = rec.wait_payload(&ha(SERIAL, "mode"), "off").await;
    for name in ["target_temperature", "target_temperature_low", "target_temperature_high"] {
        assert_eq!(log.latest(&ha(SERIAL, name)), Some("None"), "{name} in off");
    }
    assert_eq!(count(&log), first, "no discovery for a change of mode or layout");
    assert_eq!(log.json(&climate(SERIAL)).unwrap(), original);

    // A capability goes away: modes shrink, and every state topic follows the new config.
    let position = rec.position();
    t.set_local("shared", json!({"can_cool": false, "target_temperature_type": "heat"})).await.unwrap();
    let log = rec
        .wait_for("modes without cooling, then the state again", |l| {
            l.json(&climate(SERIAL)).is_some_and(|c| c["modes"] == json!(["off", "heat"]))
                && l.seen_since(position, &ha(SERIAL, "preset"), "home")
                && l.seen_since(position, &ha(SERIAL, "current_temperature"), "21.5")
        })
        .await;
    assert_eq!(count(&log), first + 1);
    assert_state_follows_config(&log, position);
    assert_eq!(log.latest(&config("sensor", SERIAL, "runtime_cool")), Some(""), "no cooling runtime without cooling");

    // No fan: no fan modes, and the fan entities are removed.
    t.set_local("device", json!({"has_fan": false})).await.unwrap();
    let log = rec
        .wait_for("discovery without a fan", |l| {
            l.json(&climate(SERIAL)).is_some_and(|c| c.get("fan_modes").is_none())
                && l.latest(&config("binary_sensor", SERIAL, "fan")) == Some("")
                && l.latest(&config("number", SERIAL, "fan_duration")) == Some("")
                && count(l) == first + 2
        })
        .await;
    assert_eq!(log.latest(&ha(SERIAL, "mode")), Some("heat"));

    // A name appears: the device is renamed in Home Assistant.
    let position = rec.position();
    t.set_local("shared", json!({"name": "Hallway"})).await.unwrap();
    rec.wait_for("the new name", |l| {
        l.json(&climate(SERIAL)).is_some_and(|c| c["device"]["name"] == "Hallway")
            && l.json(&config("sensor", SERIAL, "battery")).is_some_and(|c| c["device"]["name"] == "Hallway")
    })
    .await;
    // Home Assistant resets the entity in a task of its own, possibly after the state sent right
    // after the config: the state goes out once more when that has settled.
    rec.wait_for("the preset sent twice after the config", |l| {
        let new = &l.messages[position..];
        new.iter()
            .rposition(|(t, _)| t == &climate(SERIAL))
            .is_some_and(|at| new[at..].iter().filter(|(t, _)| t == &ha(SERIAL, "preset")).count() >= 2)
    })
    .await;
}

/// After a re-sent climate config, every Home Assistant state topic went out again, after it.
fn assert_state_follows_config(log: &Log, since: usize) {
    let new = &log.messages[since..];
    let config_at = new.iter().rposition(|(t, _)| t == &climate(SERIAL)).expect("the config was re-sent");
    for name in ["mode", "preset", "action", "target_temperature", "target_temperature_low", "current_temperature"] {
        let at = new.iter().rposition(|(t, _)| t == &ha(SERIAL, name));
        assert!(at.is_some_and(|at| at > config_at), "{name} re-sent after the config");
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

async fn home_assistant_commands_reach_the_thermostat(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;

    // heat_cool from Home Assistant reaches a held subscribe as the reference's `range`.
    let (mut held, _) = t.open_subscribe().await.unwrap();
    rec.publish(&ha(SERIAL, "mode/set"), "heat_cool").await;
    let chunk = held.next_chunk_within(WAIT).await.unwrap().expect("a push for heat_cool");
    let doc = chunk_json(&chunk);
    let shared = doc["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object_key"] == format!("shared.{SERIAL}"))
        .expect("the shared bucket is pushed");
    assert_eq!(shared["value"]["target_temperature_type"], "range");
    t.apply_chunk(&chunk).await.unwrap();
    drop(held);
    let log = rec.wait_payload(&ha(SERIAL, "mode"), "heat_cool").await;
    assert!(log.json(&climate(SERIAL)).unwrap().get("temperature_low_command_topic").is_some());

    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());

    // Dual setpoints, one message each.
    rec.publish(&ha(SERIAL, "target_temperature_low/set"), "19.5").await;
    sees_shared(&t, json!({"target_temperature_low": 19.5, "target_temperature_high": 24.0})).await;
    rec.publish(&ha(SERIAL, "target_temperature_high/set"), "25").await;
    sees_shared(&t, json!({"target_temperature_low": 19.5, "target_temperature_high": 25.0})).await;
    rec.wait_payload(&ha(SERIAL, "target_temperature_high"), "25.0").await;
    rec.wait_payload(&ha(SERIAL, "target_temperature_low"), "19.5").await;

    // Back to one setpoint, then a setpoint.
    rec.publish(&ha(SERIAL, "mode/set"), "heat").await;
    sees_shared(&t, json!({"target_temperature_type": "heat"})).await;
    rec.publish(&ha(SERIAL, "target_temperature/set"), "22.5").await;
    sees_shared(&t, json!({"target_temperature": 22.5})).await;
    rec.wait_payload(&ha(SERIAL, "target_temperature"), "22.5").await;

    // Fan.
    let now = roost::domain::time::now_s();
    rec.publish(&ha(SERIAL, "fan_mode/set"), "on").await;
    t.wait_for(WAIT, "the fan timer", |s| {
        s.field(&format!("device.{SERIAL}"), "fan_timer_timeout").and_then(Value::as_i64).is_some_and(|t| t > now)
    })
    .await
    .unwrap();
    rec.wait_payload(&ha(SERIAL, "fan_mode"), "on").await;
    rec.publish(&ha(SERIAL, "fan_mode/set"), "auto").await;
    rec.wait_payload(&ha(SERIAL, "fan_mode"), "auto").await;
    rec.publish(&ha(SERIAL, "fan_duration/set"), "30").await;
    t.wait_for(WAIT, "the fan duration", |s| {
        s.field(&format!("device.{SERIAL}"), "fan_timer_duration_minutes") == Some(&json!(30))
    })
    .await
    .unwrap();
    rec.wait_payload(&ha(SERIAL, "fan_duration"), "30").await;
    // With the fan running, a new duration restarts the timer with it.
    rec.publish(&ha(SERIAL, "fan_mode/set"), "on").await;
    rec.wait_payload(&ha(SERIAL, "fan_mode"), "on").await;
    rec.publish(&ha(SERIAL, "fan_duration/set"), "120").await;
    t.wait_for(WAIT, "the fan timer restarted for 2 hours", |s| {
        let device = format!("device.{SERIAL}");
        s.field(&device, "fan_timer_duration") == Some(&json!(7200))
            && s.field(&device, "fan_timer_timeout").and_then(Value::as_i64).is_some_and(|t| t >= now + 7200)
    })
    .await
    .unwrap();

    // Presets: away and back home.
    let away = |on: bool| {
        move |s: &ThermostatState| {
            s.buckets
                .iter()
                .any(|(k, b)| k.starts_with("structure.") && b.value.get("manual_eco_all") == Some(&json!(on)))
        }
    };
    rec.publish(&ha(SERIAL, "preset/set"), "away").await;
    t.wait_for(WAIT, "away", away(true)).await.unwrap();
    rec.wait_payload(&ha(SERIAL, "preset"), "away").await;
    rec.publish(&ha(SERIAL, "preset/set"), "Home").await;
    t.wait_for(WAIT, "home", away(false)).await.unwrap();
    rec.wait_payload(&ha(SERIAL, "preset"), "home").await;

    // Raw `.../set` topics go through the same commands.
    rec.publish(&topic(SERIAL, "shared/target_temperature_type/set"), "cool").await;
    sees_shared(&t, json!({"target_temperature_type": "cool"})).await;
    rec.publish(&topic(SERIAL, "shared/target_temperature/set"), "23").await;
    sees_shared(&t, json!({"target_temperature": 23.0})).await;
    rec.wait_payload(&topic(SERIAL, "shared/target_temperature"), "23.0").await;
    rec.publish(&topic(SERIAL, "device/learning_mode/set"), "false").await;
    t.wait_for(WAIT, "learning off", |s| s.field(&format!("device.{SERIAL}"), "learning_mode") == Some(&json!(false)))
        .await
        .unwrap();

    let stats = mqtt_stats(&app).await;
    assert_eq!((stats["commands_received"].clone(), stats["commands_rejected"].clone()), (json!(15), json!(0)));
    assert_eq!(stats["connected"], true);
    stop.cancel();
    runner.await.unwrap();
}

async fn status(app: &TestApp, serial: &str) -> Value {
    let r = app.control.send(&Request::get(&format!("/status?serial={serial}"))).await.expect("status");
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn eco_mode(s: &ThermostatState) -> Option<String> {
    s.field(&format!("device.{SERIAL}"), "eco").and_then(|e| e["mode"].as_str()).map(String::from)
}

fn manual_eco(s: &ThermostatState) -> Option<bool> {
    s.buckets
        .iter()
        .find(|(k, _)| k.starts_with("structure."))
        .and_then(|(_, b)| b.value.get("manual_eco_all")?.as_bool())
}

/// The cases a Home Assistant user meets in the first hour, as Home Assistant publishes them:
/// each ends with the thermostat and Home Assistant's state topics showing what was asked.
async fn home_assistant_cases_from_the_first_hour(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    let configs = rec.log().count(&climate(SERIAL));
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());

    // Eco is eco (not away), on the thermostat and in Home Assistant.
    rec.publish(&ha(SERIAL, "preset/set"), "eco").await;
    t.wait_for(WAIT, "manual eco", |s| manual_eco(s) == Some(true) && eco_mode(s).as_deref() == Some("manual-eco"))
        .await
        .unwrap();
    rec.wait_for("preset eco, eco switch on", |l| {
        l.latest(&ha(SERIAL, "preset")) == Some("eco") && l.latest(&ha(SERIAL, "eco_mode")) == Some("ON")
    })
    .await;
    assert_eq!(status(&app, SERIAL).await["away"], false, "eco while someone is home is not away");

    // A change of setpoint layout keeps the preset: no config is re-sent, eco stays eco.
    for (mode, stored) in [("heat_cool", "range"), ("off", "off"), ("heat", "heat")] {
        rec.publish(&ha(SERIAL, "mode/set"), mode).await;
        sees_shared(&t, json!({"target_temperature_type": stored})).await;
        let log = rec.wait_payload(&ha(SERIAL, "mode"), mode).await;
        assert_eq!(log.latest(&ha(SERIAL, "preset")), Some("eco"), "after {mode}");
    }
    rec.publish(&ha(SERIAL, "mode/set"), "heat_cool").await;
    sees_shared(&t, json!({"target_temperature_type": "range"})).await;

    // A range moved up past its old high (18/24 → 25/28), low first as Home Assistant sends it.
    rec.publish(&ha(SERIAL, "target_temperature_low/set"), "25").await;
    rec.publish(&ha(SERIAL, "target_temperature_high/set"), "28").await;
    sees_shared(&t, json!({"target_temperature_low": 25.0, "target_temperature_high": 28.0})).await;
    rec.wait_for("range 25/28", |l| {
        l.latest(&ha(SERIAL, "target_temperature_low")) == Some("25.0")
            && l.latest(&ha(SERIAL, "target_temperature_high")) == Some("28.0")
    })
    .await;
    // And down past its old low, high first.
    rec.publish(&ha(SERIAL, "target_temperature_high/set"), "19").await;
    rec.publish(&ha(SERIAL, "target_temperature_low/set"), "16").await;
    sees_shared(&t, json!({"target_temperature_low": 16.0, "target_temperature_high": 19.0})).await;
    // A lone bound applies against the stored other one.
    rec.publish(&ha(SERIAL, "target_temperature_low/set"), "17").await;
    sees_shared(&t, json!({"target_temperature_low": 17.0, "target_temperature_high": 19.0})).await;
    rec.wait_payload(&ha(SERIAL, "target_temperature_low"), "17.0").await;

    // A temperature sent with a mode change from heat_cool: the mode, then the temperature.
    rec.publish(&ha(SERIAL, "mode/set"), "heat").await;
    rec.publish(&ha(SERIAL, "target_temperature/set"), "23").await;
    sees_shared(&t, json!({"target_temperature_type": "heat", "target_temperature": 23.0})).await;
    rec.wait_for("heat at 23", |l| {
        l.latest(&ha(SERIAL, "mode")) == Some("heat")
            && l.latest(&ha(SERIAL, "target_temperature")) == Some("23.0")
            && l.latest(&ha(SERIAL, "target_temperature_low")) == Some("None")
    })
    .await;

    // From off, to heat with a temperature and to heat_cool with a range.
    rec.publish(&ha(SERIAL, "mode/set"), "off").await;
    sees_shared(&t, json!({"target_temperature_type": "off"})).await;
    rec.publish(&ha(SERIAL, "mode/set"), "heat").await;
    rec.publish(&ha(SERIAL, "target_temperature/set"), "21.5").await;
    sees_shared(&t, json!({"target_temperature_type": "heat", "target_temperature": 21.5})).await;
    rec.wait_payload(&ha(SERIAL, "target_temperature"), "21.5").await;
    rec.publish(&ha(SERIAL, "mode/set"), "off").await;
    sees_shared(&t, json!({"target_temperature_type": "off"})).await;
    rec.publish(&ha(SERIAL, "mode/set"), "heat_cool").await;
    rec.publish(&ha(SERIAL, "target_temperature_low/set"), "20").await;
    rec.publish(&ha(SERIAL, "target_temperature_high/set"), "26").await;
    sees_shared(
        &t,
        json!({"target_temperature_type": "range", "target_temperature_low": 20.0, "target_temperature_high": 26.0}),
    )
    .await;
    rec.wait_payload(&ha(SERIAL, "target_temperature_high"), "26.0").await;

    // Away is away; Home Assistant's "none" is home.
    rec.publish(&ha(SERIAL, "preset/set"), "away").await;
    rec.wait_payload(&ha(SERIAL, "preset"), "away").await;
    assert_eq!(status(&app, SERIAL).await["away"], true);
    rec.publish(&ha(SERIAL, "preset/set"), "none").await;
    t.wait_for(WAIT, "eco left", |s| manual_eco(s) == Some(false) && eco_mode(s).as_deref() == Some("schedule"))
        .await
        .unwrap();
    rec.wait_for("preset home", |l| {
        l.latest(&ha(SERIAL, "preset")) == Some("home") && l.latest(&ha(SERIAL, "eco_mode")) == Some("OFF")
    })
    .await;
    assert_eq!(status(&app, SERIAL).await["away"], false);
    // The eco switch does the same as the eco preset.
    rec.publish(&ha(SERIAL, "eco_mode/set"), "ON").await;
    rec.wait_payload(&ha(SERIAL, "preset"), "eco").await;
    let from = rec.position();
    rec.publish(&ha(SERIAL, "eco_mode/set"), "OFF").await;
    rec.wait_payload(&ha(SERIAL, "preset"), "home").await;
    // The thermostat confirms eco off before it changes eco itself: a push still on its way
    // would otherwise land after its own change and undo it.
    rec.wait_for("eco off confirmed by the thermostat", |l| {
        let attributes = ha(SERIAL, "attributes");
        let pending_eco: Vec<bool> = l.messages[from..]
            .iter()
            .filter(|(topic, _)| *topic == attributes)
            .filter_map(|(_, payload)| serde_json::from_str::<serde_json::Value>(payload).ok())
            .map(|a| a["pending"]["fields"].get("eco").is_some())
            .collect();
        pending_eco.contains(&true) && pending_eco.last() == Some(&false)
    })
    .await;

    // Eco started on the thermostat: manual eco reads eco, auto-eco (nobody home) reads away.
    t.set_local("device", json!({"eco": {"mode": "auto-eco", "leaf": true}})).await.unwrap();
    rec.wait_payload(&ha(SERIAL, "preset"), "away").await;
    t.set_local("device", json!({"eco": {"mode": "manual-eco", "leaf": true}})).await.unwrap();
    rec.wait_payload(&ha(SERIAL, "preset"), "eco").await;

    let log = rec.log();
    assert_eq!(log.count(&climate(SERIAL)), configs, "the climate config was never re-sent");
    assert_eq!(mqtt_stats(&app).await["commands_rejected"], 0);
    stop.cancel();
    runner.await.unwrap();
}

/// Humidity, emergency heat and the fan timer, announced and working where the thermostat has them.
async fn entities_for_what_the_thermostat_has(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    t.set_local("device", json!({"has_humidifier": true, "has_emer_heat": true, "has_heat_pump": true})).await.unwrap();
    let log = rec
        .wait_for("the humidifier and emergency heat announced", |l| {
            l.json(&config("humidifier", SERIAL, "humidifier")).is_some()
                && l.json(&config("switch", SERIAL, "emergency_heat")).is_some()
                && l.json(&config("sensor", SERIAL, "runtime_aux")).is_some()
                && l.latest(&ha(SERIAL, "humidifier")) == Some("OFF")
        })
        .await;
    let h = log.json(&config("humidifier", SERIAL, "humidifier")).unwrap();
    assert_eq!(h["command_topic"], ha(SERIAL, "humidifier/set"));
    assert_eq!(h["target_humidity_state_topic"], ha(SERIAL, "target_humidity"));
    assert_eq!(h["device_class"], "humidifier");
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());
    let device = format!("device.{SERIAL}");

    // A humidity target turns humidity control on, the enable first.
    rec.publish(&ha(SERIAL, "target_humidity/set"), "40").await;
    let s = t
        .wait_for(WAIT, "humidity 40", |s| {
            s.field(&device, "target_humidity") == Some(&json!(40))
                && s.field(&device, "target_humidity_enabled") == Some(&json!(true))
        })
        .await
        .unwrap();
    let keys: Vec<&String> = s.buckets[&device].value.keys().collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert!(at("target_humidity_enabled") < at("target_humidity"), "the enable comes first: {keys:?}");
    rec.wait_for("humidifier on at 40", |l| {
        l.latest(&ha(SERIAL, "humidifier")) == Some("ON") && l.latest(&ha(SERIAL, "target_humidity")) == Some("40")
    })
    .await;
    rec.publish(&ha(SERIAL, "humidifier/set"), "OFF").await;
    t.wait_for(WAIT, "humidity off", |s| s.field(&device, "target_humidity_enabled") == Some(&json!(false)))
        .await
        .unwrap();
    rec.wait_payload(&ha(SERIAL, "humidifier_action"), "off").await;

    // Emergency heat on, and off again to heat; off does nothing outside emergency heat.
    rec.publish(&ha(SERIAL, "emergency_heat/set"), "ON").await;
    sees_shared(&t, json!({"target_temperature_type": "emergency"})).await;
    rec.wait_for("emergency heat on", |l| {
        l.latest(&ha(SERIAL, "emergency_heat")) == Some("ON") && l.latest(&ha(SERIAL, "mode")) == Some("heat")
    })
    .await;
    rec.publish(&ha(SERIAL, "emergency_heat/set"), "OFF").await;
    sees_shared(&t, json!({"target_temperature_type": "heat"})).await;
    rec.wait_payload(&ha(SERIAL, "emergency_heat"), "OFF").await;
    rec.publish(&ha(SERIAL, "mode/set"), "cool").await;
    sees_shared(&t, json!({"target_temperature_type": "cool"})).await;
    rec.publish(&ha(SERIAL, "emergency_heat/set"), "OFF").await;
    rec.publish(&ha(SERIAL, "target_temperature/set"), "24").await;
    sees_shared(&t, json!({"target_temperature_type": "cool", "target_temperature": 24.0})).await;

    // Runtime per stage: a heating stage that ran shows up as minutes (whole minutes; a short
    // test run may still read 0, so only the topic and its form are checked here).
    t.set_local("shared", json!({"hvac_heater_state": true, "hvac_aux_heater_state": true})).await.unwrap();
    let log = rec.wait_payload(&ha(SERIAL, "action"), "heating").await;
    for stage in ["heat", "cool", "fan", "aux"] {
        let minutes = log.latest(&ha(SERIAL, &format!("runtime_{stage}"))).unwrap_or_default();
        assert!(minutes.parse::<u64>().is_ok(), "runtime_{stage} = {minutes:?}");
    }
    assert_eq!(mqtt_stats(&app).await["commands_rejected"], 0);
    stop.cancel();
    runner.await.unwrap();
}

/// `MQTT_MINIMAL_DISCOVERY=true`: the climate entity only; every other entity is removed.
async fn minimal_discovery_announces_the_climate_entity_only(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &["--mqtt-minimal-discovery=true"]).await;
    app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    let log = rec
        .wait_for("every other config cleared", |l| {
            ENTITIES.iter().all(|(c, s, _)| l.latest(&config(c, SERIAL, s)) == Some(""))
        })
        .await;
    let configs: Vec<&String> =
        log.latest.iter().filter(|(t, p)| t.starts_with(DISCOVERY) && !p.is_empty()).map(|(t, _)| t).collect();
    assert_eq!(configs, [&climate(SERIAL)]);
    drop(app);
}

async fn malformed_messages_are_ignored_and_the_next_one_works(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());

    let bad: Vec<(String, Vec<u8>)> = vec![
        (ha(SERIAL, "target_temperature/set"), b"warm".to_vec()),
        (ha(SERIAL, "target_temperature/set"), b"NaN".to_vec()),
        (ha(SERIAL, "target_temperature/set"), b"".to_vec()),
        (ha(SERIAL, "target_temperature_low/set"), b"30".to_vec()), // above the high setpoint
        (ha(SERIAL, "mode/set"), b"sideways".to_vec()),
        (ha(SERIAL, "mode/set"), vec![0xff, 0xfe, 0x00]),
        (ha(SERIAL, "fan_mode/set"), b"turbo".to_vec()),
        (ha(SERIAL, "preset/set"), b"party".to_vec()),
        (ha(SERIAL, "fan_duration/set"), b"long".to_vec()),
        (ha(SERIAL, "self_destruct/set"), b"now".to_vec()),
        (topic(SERIAL, "device/away/set"), b"maybe".to_vec()),
        (topic(SERIAL, "device/current_temperature/set"), b"30".to_vec()), // written by the device only
        (topic(SERIAL, "structure/away/set"), b"true".to_vec()),
        (ha("02AA01AC00000000", "mode/set"), b"heat".to_vec()), // no such thermostat
        (ha("not-a-serial", "mode/set"), b"heat".to_vec()),
    ];
    for (topic, payload) in &bad {
        rec.publish(topic, payload.clone()).await;
    }
    rec.publish(&ha(SERIAL, "target_temperature/set"), "23").await;
    sees_shared(&t, json!({"target_temperature": 23.0, "target_temperature_type": "heat"})).await;
    rec.wait_payload(&ha(SERIAL, "target_temperature"), "23.0").await;
    let stats = mqtt_stats(&app).await;
    assert_eq!(stats["commands_received"], json!(bad.len() + 1));
    assert_eq!(stats["commands_rejected"], json!(bad.len()));
    assert_eq!(stats["connected"], true);
    let state = t.state();
    assert_eq!(state.field(&format!("device.{SERIAL}"), "current_temperature"), Some(&json!(21.5)));

    // What a thermostat sends is stored as sent, even field names that are not valid topic
    // names; they never stop publishing, and never turn into command topics.
    t.set_local("device", json!({"odd+name": 1, "odd#name": 2, "loop/set": 3, "nul\u{0}name": 4})).await.unwrap();
    t.set_local("shared", json!({"current_temperature": 19.0})).await.unwrap();
    let log = rec.wait_payload(&ha(SERIAL, "current_temperature"), "19.0").await;
    assert!(!log.latest.keys().any(|t| t.contains("loop")), "a field name with '/' makes no topic");

    // Fields too large for one MQTT message (a bucket over 1 MiB, grown by merges) are
    // skipped; the rest keeps flowing.
    let blob = "x".repeat(600_000);
    t.set_local("device", json!({ "blob_a": blob })).await.unwrap();
    t.set_local("device", json!({ "blob_b": blob })).await.unwrap();
    t.set_local("shared", json!({"current_temperature": 18.5})).await.unwrap();
    rec.wait_payload(&ha(SERIAL, "current_temperature"), "18.5").await;
    rec.publish(&ha(SERIAL, "target_temperature/set"), "21").await;
    sees_shared(&t, json!({"target_temperature": 21.0})).await;
    rec.wait_payload(&ha(SERIAL, "target_temperature"), "21.0").await;
    assert_eq!(mqtt_stats(&app).await["connections"], 1, "the connection never dropped");

    stop.cancel();
    runner.await.unwrap();
}

/// A command someone published retained is delivered again on every (re)subscribe: replaying
/// it would undo every newer change after each reconnect.
async fn retained_commands_are_not_replayed(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    rec.client
        .publish(ha(SERIAL, "target_temperature/set"), rumqttc::QoS::AtLeastOnce, true, "26")
        .await
        .expect("publish retained");
    rec.wait_payload(&ha(SERIAL, "target_temperature/set"), "26").await;
    let mut proxy = Proxy::new(broker.port);
    proxy.start().await;
    let app = roost(proxy.port, &[]).await;
    let t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());

    // Commands are handled in the order they arrive; the retained one came first.
    rec.publish(&ha(SERIAL, "target_temperature/set"), "22").await;
    sees_shared(&t, json!({"target_temperature": 22.0})).await;
    assert_eq!(mqtt_stats(&app).await["commands_received"], 1);

    // Nor after a reconnect.
    proxy.stop().await;
    rec.wait_payload(BRIDGE, "offline").await;
    proxy.start().await;
    rec.wait_payload(BRIDGE, "online").await;
    rec.publish(&ha(SERIAL, "target_temperature/set"), "22.5").await;
    sees_shared(&t, json!({"target_temperature": 22.5})).await;
    assert_eq!(mqtt_stats(&app).await["commands_received"], 2);
    rec.wait_payload(&ha(SERIAL, "target_temperature"), "22.5").await;
    stop.cancel();
    runner.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Broker faults

async fn broker_outage_while_thermostats_keep_working(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    // roost starts while its broker is unreachable, and serves thermostats all the same.
    let mut proxy = Proxy::new(broker.port);
    let app = roost(proxy.port, &[]).await;
    let t = app.booted(SERIAL).await;
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());
    let r = app.command(SERIAL, "set_temperature", json!(21.0)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    sees_shared(&t, json!({"target_temperature": 21.0})).await;
    let stats = mqtt_stats(&app).await;
    assert_eq!((stats["enabled"].clone(), stats["connected"].clone()), (json!(true), json!(false)));

    // The broker appears: everything is announced.
    proxy.start().await;
    let log = rec
        .wait_for("the first announcement", |l| {
            l.latest(BRIDGE) == Some("online")
                && l.json(&climate(SERIAL)).is_some()
                && l.latest(&ha(SERIAL, "target_temperature")) == Some("21.0")
        })
        .await;
    let announcements = log.count(&climate(SERIAL));

    // The broker goes away: roost's last will says so.
    proxy.stop().await;
    rec.wait_payload(BRIDGE, "offline").await;

    // Thermostats keep working: their changes are stored and commands reach them.
    let before = rec.log().count(&ha(SERIAL, "current_temperature"));
    let puts = 30;
    for i in 0..puts {
        t.set_local("shared", json!({"current_temperature": 15.0 + f64::from(i) * 0.5})).await.unwrap();
    }
    let last = format!("{:.1}", 15.0 + f64::from(puts - 1) * 0.5);
    let r = app.command(SERIAL, "set_temperature", json!(23.5)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    sees_shared(&t, json!({"target_temperature": 23.5})).await;

    // The broker comes back: roost reconnects, re-announces, publishes the latest values.
    proxy.start().await;
    let log = rec
        .wait_for("the state after the outage", |l| {
            l.latest(BRIDGE) == Some("online")
                && l.latest(&ha(SERIAL, "current_temperature")) == Some(last.as_str())
                && l.latest(&ha(SERIAL, "target_temperature")) == Some("23.5")
                && l.count(&climate(SERIAL)) > announcements
        })
        .await;
    let published = log.count(&ha(SERIAL, "current_temperature")) - before;
    assert!(
        published <= 2,
        "{puts} changes while the broker was away; only the latest waits for it, yet {published} were published"
    );
    assert_eq!(log.latest(&topic(SERIAL, "availability")), Some("online"));

    // Commands work again: roost subscribed anew.
    rec.publish(&ha(SERIAL, "target_temperature/set"), "20.5").await;
    sees_shared(&t, json!({"target_temperature": 20.5})).await;
    rec.wait_payload(&ha(SERIAL, "target_temperature"), "20.5").await;

    // Once more, to see the reconnect is not a one-off.
    proxy.stop().await;
    rec.wait_payload(BRIDGE, "offline").await;
    t.set_local("shared", json!({"current_temperature": 12.5})).await.unwrap();
    proxy.start().await;
    rec.wait_for("the second reconnect", |l| {
        l.latest(BRIDGE) == Some("online") && l.latest(&ha(SERIAL, "current_temperature")) == Some("12.5")
    })
    .await;
    rec.publish(&ha(SERIAL, "target_temperature/set"), "19").await;
    sees_shared(&t, json!({"target_temperature": 19.0})).await;

    let stats = mqtt_stats(&app).await;
    assert_eq!(stats["connected"], true);
    assert_eq!(stats["connections"], 3);
    stop.cancel();
    runner.await.unwrap();
}

async fn availability_follows_the_thermostat_and_roost(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &["--availability-timeout-seconds=0.5"]).await;
    let t = app.booted(SERIAL).await;
    // A thermostat that goes silent is offline for Home Assistant...
    rec.wait_for("the thermostat offline", |l| {
        l.json(&climate(SERIAL)).is_some() && l.latest(&topic(SERIAL, "availability")) == Some("offline")
    })
    .await;
    // ... and online again as soon as it talks to roost.
    let from = rec.position();
    t.set_local("device", json!({"current_humidity": 47})).await.unwrap();
    rec.wait_for("the thermostat online", |l| l.seen_since(from, &topic(SERIAL, "availability"), "online")).await;
    assert_eq!(rec.log().latest(BRIDGE), Some("online"));

    // roost stopping says so too (its last will covers a crash).
    app.stop().await;
    rec.wait_payload(BRIDGE, "offline").await;
}

/// Mosquitto is stopped and started again empty: roost restores every retained topic.
#[tokio::test]
async fn mosquitto_restart_restores_retained_state() {
    let Some(mut broker) = Broker::mosquitto().await else { return };
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    {
        let rec = Recorder::connect(broker.port, None).await;
        announced(&rec, SERIAL).await;
    }
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());

    broker.stop_mosquitto();
    t.set_local("shared", json!({"current_temperature": 17.5})).await.unwrap();
    let r = app.command(SERIAL, "set_temperature", json!(22.0)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    sees_shared(&t, json!({"target_temperature": 22.0})).await;

    broker.restart_mosquitto().await;
    let rec = Recorder::connect(broker.port, None).await;
    let log = rec
        .wait_for("everything retained again", |l| {
            ENTITIES.iter().all(|(c, s, _)| l.json(&config(c, SERIAL, s)).is_some())
                && l.json(&climate(SERIAL)).is_some()
                && l.latest(BRIDGE) == Some("online")
                && l.latest(&topic(SERIAL, "availability")) == Some("online")
                && l.latest(&ha(SERIAL, "current_temperature")) == Some("17.5")
                && l.latest(&ha(SERIAL, "target_temperature")) == Some("22.0")
                && l.latest(&ha(SERIAL, "mode")) == Some("heat")
        })
        .await;
    assert_eq!(log.json(&topic(SERIAL, "shared")).unwrap()["target_temperature"], 22.0);

    rec.publish(&ha(SERIAL, "mode/set"), "heat_cool").await;
    sees_shared(&t, json!({"target_temperature_type": "range"})).await;
    stop.cancel();
    runner.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Delete

async fn delete_clears_retained_topics(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let _t = app.booted(SERIAL).await;
    let _t2 = app.booted(SERIAL2).await;
    announced(&rec, SERIAL).await;
    announced(&rec, SERIAL2).await;

    let r = app
        .control
        .send(&Request::new("DELETE", "/api/device").json(&json!({"serial": SERIAL})))
        .await
        .expect("delete");
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    rec.wait_for("the deleted thermostat's topics cleared", |l| {
        [climate(SERIAL), ha(SERIAL, "mode"), topic(SERIAL, "shared"), topic(SERIAL, "availability")]
            .iter()
            .all(|t| l.latest(t) == Some(""))
    })
    .await;

    // A client subscribing now (Home Assistant after a restart) finds nothing of it.
    let fresh = Recorder::connect(broker.port, None).await;
    let log = fresh.barrier().await;
    let live = log.live_topics();
    let left: Vec<&&str> = live.iter().filter(|t| t.contains(SERIAL)).collect();
    assert!(left.is_empty(), "retained after delete: {left:?}");
    assert!(live.contains(&climate(SERIAL2).as_str()), "the other thermostat stays: {live:?}");
    assert!(live.contains(&ha(SERIAL2, "mode").as_str()));
}

// ---------------------------------------------------------------------------------------------
// Volume

async fn messages_per_set_temperature_command(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    // A second thermostat marks points in roost's publishing order.
    let marker = app.booted(SERIAL2).await;
    announced(&rec, SERIAL).await;
    announced(&rec, SERIAL2).await;
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());
    let mark = |humidity: i64| {
        let marker = marker.clone();
        let rec = &rec;
        async move {
            marker.set_local("device", json!({"current_humidity": humidity})).await.unwrap();
            rec.wait_payload(&topic(SERIAL2, "device/current_humidity"), &humidity.to_string()).await;
            rec.position()
        }
    };

    let start = mark(50).await;
    let r = app.command(SERIAL, "set_temperature", json!(23.0)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    sees_shared(&t, json!({"target_temperature": 23.0})).await; // pushed and acknowledged
    let end = mark(51).await;

    let log = rec.log();
    let produced: Vec<&(String, String)> =
        log.messages[start..end].iter().filter(|(topic, _)| topic.contains(SERIAL)).collect();
    println!(
        "[{}] one set_temperature command, with the thermostat's acknowledgement, produced {} MQTT messages \
         (the reference: about 60):",
        broker.name,
        produced.len()
    );
    for (topic, payload) in &produced {
        println!("  {topic} = {}", payload.chars().take(80).collect::<String>());
    }
    assert!(produced.iter().any(|(t, p)| *t == ha(SERIAL, "target_temperature") && p == "23.0"));
    assert!(produced.len() <= 12, "{} messages for one setpoint", produced.len());
    stop.cancel();
    runner.await.unwrap();
}

async fn a_pending_command_is_an_attribute_until_the_thermostat_confirms_it(broker: Broker) {
    let rec = Recorder::connect(broker.port, None).await;
    let app = roost(broker.port, &[]).await;
    let t = app.booted(SERIAL).await;
    let log = announced(&rec, SERIAL).await;
    assert_eq!(log.json(&climate(SERIAL)).unwrap()["json_attributes_topic"], ha(SERIAL, "attributes"));
    rec.wait_for("no pending command", |l| l.json(&ha(SERIAL, "attributes")) == Some(json!({"pending": null}))).await;
    // The thermostat is not subscribed: the command waits.
    assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    rec.wait_for("pending attribute", |l| {
        l.json(&ha(SERIAL, "attributes")).is_some_and(|a| a["pending"]["fields"] == json!({"target_temperature": 23.0}))
    })
    .await;
    let stop = CancellationToken::new();
    let runner = t.run(stop.clone());
    sees_shared(&t, json!({"target_temperature": 23.0})).await;
    rec.wait_for("confirmed", |l| l.json(&ha(SERIAL, "attributes")) == Some(json!({"pending": null}))).await;
    stop.cancel();
    runner.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Credentials

#[tokio::test]
async fn credentials_are_used_and_a_refused_login_does_not_stop_roost() {
    let broker = Broker::rumqttd(Some(("roost", "s3cret"))).await;
    let rec = Recorder::connect(broker.port, Some(("roost", "s3cret"))).await;
    let app = roost(broker.port, &["--mqtt-user=roost", "--mqtt-password=s3cret"]).await;
    let _t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    assert_eq!(mqtt_stats(&app).await["connected"], true);

    // Wrong password: the broker refuses roost, which keeps serving its thermostats.
    let refused = roost(broker.port, &["--mqtt-user=roost", "--mqtt-password=wrong"]).await;
    let t2 = refused.booted(SERIAL2).await;
    let r = refused.command(SERIAL2, "set_temperature", json!(22.0)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(t2.state().field(&format!("device.{SERIAL2}"), "current_temperature"), Some(&json!(21.5)));
    let stats = mqtt_stats(&refused).await;
    assert_eq!((stats["enabled"].clone(), stats["connected"].clone()), (json!(true), json!(false)));
    assert!(!stats.to_string().contains("s3cret") && !stats.to_string().contains("wrong"), "{stats}");
}

// ---------------------------------------------------------------------------------------------
// TLS

/// `mqtts://` to a broker whose certificate comes from a private CA given as `MQTT_CA_FILE`.
#[tokio::test]
async fn mqtts_with_a_private_ca() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let tls_port = free_port();
    let certs = tempfile::tempdir().unwrap();
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let Some(broker) = Broker::mosquitto_with(|dir| {
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        format!(
            "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        )
    })
    .await
    else {
        return;
    };
    let rec = Recorder::connect(broker.port, None).await;
    let host = format!("--mqtt-host=mqtts://localhost:{tls_port}");
    let ca = format!("--mqtt-ca-file={}", ca_file.display());
    let app = TestApp::start(&[&host, &ca]).await;
    let _t = app.booted(SERIAL).await;
    announced(&rec, SERIAL).await;
    assert_eq!(mqtt_stats(&app).await["connected"], true);

    // Without the CA the broker's certificate is not trusted: no connection, thermostats served.
    let untrusted = TestApp::start(&[&host]).await;
    let t2 = untrusted.booted(SERIAL2).await;
    assert_eq!(untrusted.command(SERIAL2, "set_temperature", json!(21.0)).await.status(), 200);
    drop(t2);
    let mut stats = mqtt_stats(&untrusted).await;
    for _ in 0..200 {
        if !stats["last_error"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        stats = mqtt_stats(&untrusted).await;
    }
    assert_eq!(stats["connected"], false);
    assert!(stats["last_error"].as_str().is_some_and(|e| !e.is_empty()), "the refused handshake is reported: {stats}");
}
