//! `POST /command` end to end: each command's accepted values reach a running simulated
//! thermostat, and each rejected value is a 400 with a message that changes nothing.

use roost::sim::http::Request;
use roost::sim::{Thermostat, ThermostatState};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const STRUCTURE: &str = "structure.homeassistant";

fn shared() -> String {
    format!("shared.{SERIAL}")
}

fn device() -> String {
    format!("device.{SERIAL}")
}

fn schedule() -> String {
    format!("schedule.{SERIAL}")
}

/// A booted thermostat kept subscribed (applying pushes, acknowledging setpoints) until `finish`.
struct Running {
    app: TestApp,
    t: Thermostat,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn start() -> Running {
        let app = TestApp::start(&[]).await;
        let t = app.booted(SERIAL).await;
        let stop = CancellationToken::new();
        let task = t.run(stop.clone());
        Running { app, t, stop, task }
    }

    /// Runs a command that must succeed; returns the fields it wrote (`data.values`).
    async fn ok(&self, command: &str, value: Value) -> Value {
        let r = self.app.command(SERIAL, command, value.clone()).await;
        assert_eq!(r.status(), 200, "{command} {value}: {}", String::from_utf8_lossy(&r.body));
        let body = r.json().unwrap();
        assert_eq!(body["success"], true);
        body["data"]["values"].clone()
    }

    /// Runs a command that must be refused with a 400; returns the message.
    async fn refused(&self, command: &str, value: Value) -> String {
        let r = self.app.command(SERIAL, command, value.clone()).await;
        assert_eq!(r.status(), 400, "{command} {value} must be refused: {}", String::from_utf8_lossy(&r.body));
        let body = r.json().unwrap();
        assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["success", "message"]);
        assert_eq!(body["success"], false);
        body["message"].as_str().expect("a message").to_string()
    }

    async fn see(&self, what: &str, cond: impl Fn(&ThermostatState) -> bool) -> ThermostatState {
        self.t.wait_for(WAIT, what, cond).await.unwrap()
    }

    /// Waits until the thermostat holds these setpoint fields and has acknowledged them (its
    /// acknowledgement PUT has returned), so the next command cannot race it.
    async fn see_acked(&self, what: &str, fields: Value) -> ThermostatState {
        self.see(what, |s| {
            fields.as_object().unwrap().iter().all(|(k, v)| field(s, &shared(), k) == Some(v))
                && field(s, &shared(), "target_change_pending") == Some(&json!(false))
        })
        .await
    }

    /// The server's current value of a bucket.
    async fn server_bucket(&self, key: &str) -> Value {
        let list = self.app.listing_of(SERIAL).await;
        list["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == key).cloned().unwrap_or(Value::Null)
    }

    async fn status(&self) -> Value {
        let r = self.app.control.send(&roost::sim::http::Request::get(&format!("/status?serial={SERIAL}"))).await;
        r.unwrap().json().unwrap()
    }

    async fn finish(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        assert!(self.t.state().last_error.is_none(), "{:?}", self.t.state().last_error);
    }
}

fn field<'a>(s: &'a ThermostatState, key: &str, name: &str) -> Option<&'a Value> {
    s.field(key, name)
}

// ---------------------------------------------------------------------------------------------
// set_temperature

#[tokio::test]
async fn set_temperature_scalar_and_range_reach_the_thermostat() {
    let r = Running::start().await;
    let values = r.ok("set_temperature", json!(22.5)).await;
    assert_eq!(values, json!({"target_temperature": 22.5, "target_change_pending": true}));
    r.see_acked("22.5", json!({"target_temperature": 22.5})).await;
    // Whole numbers travel as floats.
    let values = r.ok("set_temperature", json!(21)).await;
    assert_eq!(serde_json::to_string(&values).unwrap(), r#"{"target_temperature":21.0,"target_change_pending":true}"#);
    r.see_acked("21.0", json!({"target_temperature": 21.0})).await;

    let values = r.ok("set_temperature", json!({"low": 19, "high": 25.5})).await;
    assert_eq!(
        serde_json::to_string(&values).unwrap(),
        r#"{"target_temperature_high":25.5,"target_temperature_low":19.0,"target_change_pending":true}"#
    );
    r.see_acked("the range", json!({"target_temperature_low": 19.0, "target_temperature_high": 25.5})).await;
    let status = r.status().await;
    assert_eq!(
        (status["target_temperature_low"].clone(), status["target_temperature_high"].clone()),
        (json!(19.0), json!(25.5))
    );
    r.finish().await;
}

#[tokio::test]
async fn set_temperature_one_bound_is_checked_against_the_stored_other() {
    let r = Running::start().await;
    // Booted with low 18, high 24.
    let values = r.ok("set_temperature", json!({"low": 20})).await;
    assert_eq!(values, json!({"target_temperature_low": 20.0, "target_change_pending": true}));
    r.see_acked("low 20", json!({"target_temperature_low": 20.0})).await;
    assert_eq!(
        r.refused("set_temperature", json!({"low": 24.5})).await,
        "low (24.5) must be below high (24); send both to move the range"
    );
    assert_eq!(
        r.refused("set_temperature", json!({"low": 24})).await,
        "low (24) must be below high (24); send both to move the range"
    );
    assert_eq!(
        r.refused("set_temperature", json!({"high": 19.5})).await,
        "low (20) must be below high (19.5); send both to move the range"
    );
    let values = r.ok("set_temperature", json!({"high": 26, "low": null})).await;
    assert_eq!(values, json!({"target_temperature_high": 26.0, "target_change_pending": true}));
    r.see_acked("high 26", json!({"target_temperature_high": 26.0})).await;
    // Sending both moves the range past the stored bounds.
    r.ok("set_temperature", json!({"low": 27, "high": 29})).await;
    let s =
        r.see_acked("the moved range", json!({"target_temperature_low": 27.0, "target_temperature_high": 29.0})).await;
    assert_eq!(field(&s, &shared(), "target_temperature"), Some(&json!(20.0)), "the scalar setpoint is untouched");
    r.finish().await;
}

#[tokio::test]
async fn set_temperature_is_clamped_to_the_device_safety_temperatures() {
    let r = Running::start().await;
    // The simulator reports lower_safety_temp 7.0 and upper_safety_temp 35.0.
    assert_eq!(r.ok("set_temperature", json!(50)).await["target_temperature"], 35.0);
    r.see_acked("clamped high", json!({"target_temperature": 35.0})).await;
    assert_eq!(r.ok("set_temperature", json!(-3.5)).await["target_temperature"], 7.0);
    r.see_acked("clamped low", json!({"target_temperature": 7.0})).await;
    let values = r.ok("set_temperature", json!({"low": 2, "high": 99})).await;
    assert_eq!(
        values,
        json!({"target_temperature_high": 35.0, "target_temperature_low": 7.0, "target_change_pending": true})
    );
    r.see_acked("clamped range", json!({"target_temperature_low": 7.0, "target_temperature_high": 35.0})).await;
    // Both bounds clamped onto the same limit is not a range.
    assert_eq!(
        r.refused("set_temperature", json!({"low": 40, "high": 50})).await,
        "low (35) must be below high (35); send both to move the range"
    );
    // The device's own limits, when it changes them.
    r.t.set_local("device", json!({"upper_safety_temp": 30.0, "lower_safety_temp": 10.0})).await.unwrap();
    assert_eq!(r.ok("set_temperature", json!(31)).await["target_temperature"], 30.0);
    r.see_acked("the device's upper limit", json!({"target_temperature": 30.0})).await;
    assert_eq!(r.ok("set_temperature", json!(9)).await["target_temperature"], 10.0);
    r.see_acked("the device's lower limit", json!({"target_temperature": 10.0})).await;
    r.finish().await;
}

#[tokio::test]
async fn set_temperature_rejections_change_nothing() {
    let r = Running::start().await;
    let before = r.server_bucket(&shared()).await;
    let scalar = |got: &str| {
        format!("set_temperature value must be a number of degrees Celsius or {{\"low\": n, \"high\": n}}, got {got}")
    };
    let cases = [
        (json!(null), scalar("null")),
        (json!("abc"), scalar("a string")),
        (json!("21"), scalar("a string")),
        (json!(true), scalar("a boolean")),
        (json!([21]), scalar("an array")),
        (json!({}), "set_temperature needs 'low', 'high' or both".to_string()),
        (json!({"low": null, "high": null}), "set_temperature needs 'low', 'high' or both".to_string()),
        (json!({"low": "x"}), "low must be a number of degrees Celsius, got a string".to_string()),
        (json!({"high": [1]}), "high must be a number of degrees Celsius, got an array".to_string()),
        (json!({"mid": 3}), "set_temperature takes 'low' and 'high', not 'mid'".to_string()),
        (
            json!({"low": 18, "high": 22, "target": 20}),
            "set_temperature takes 'low' and 'high', not 'target'".to_string(),
        ),
        (json!({"low": 22, "high": 21}), "low (22) must be below high (21); send both to move the range".to_string()),
    ];
    for (value, message) in cases {
        assert_eq!(r.refused("set_temperature", value.clone()).await, message, "{value}");
    }
    // No revision was spent and nothing was pushed.
    assert_eq!(r.server_bucket(&shared()).await, before);
    assert_eq!(r.t.state().chunks.len(), 1, "only the boot chunk: {:?}", r.t.state().chunks);
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// set_mode

#[tokio::test]
async fn set_mode_accepts_every_name_and_stores_the_nest_value() {
    let r = Running::start().await;
    for (sent, stored) in [
        ("off", "off"),
        ("cool", "cool"),
        ("heat-cool", "range"),
        ("heat", "heat"),
        ("heat_cool", "range"),
        ("off", "off"),
        ("range", "range"),
        (" Cool ", "cool"),
        ("auto", "range"),
        ("HEAT", "heat"),
    ] {
        let values = r.ok("set_mode", json!(sent)).await;
        assert_eq!(values, json!({"target_temperature_type": stored}), "{sent}");
        r.see(stored, |s| field(s, &shared(), "target_temperature_type") == Some(&json!(stored))).await;
        assert_eq!(r.status().await["mode"], stored);
    }
    let modes = "off, heat, cool, heat-cool, heat_cool, range, auto, emergency";
    assert_eq!(r.refused("set_mode", json!("dry")).await, format!("Unknown mode 'dry'. Valid modes: {modes}"));
    assert_eq!(r.refused("set_mode", json!("")).await, format!("Unknown mode ''. Valid modes: {modes}"));
    assert_eq!(
        r.refused("set_mode", json!(null)).await,
        format!("set_mode value must be a string, one of: {modes}; got null")
    );
    assert_eq!(
        r.refused("set_mode", json!(1)).await,
        format!("set_mode value must be a string, one of: {modes}; got a number")
    );
    assert_eq!(
        r.refused("set_mode", json!("eco")).await,
        "Use set_away to control eco mode. 'eco' is not a valid target_temperature_type \u{2014} use manual_eco_all \
         in the structure bucket instead."
    );
    assert_eq!(
        r.refused("set_mode", json!("emergency")).await,
        "Device does not have emergency heat (has_emer_heat=false)"
    );
    assert_eq!(r.status().await["mode"], "heat", "refusals changed nothing");
    r.finish().await;
}

#[tokio::test]
async fn set_mode_follows_the_device_capabilities() {
    let r = Running::start().await;
    r.t.set_local("shared", json!({"can_cool": false})).await.unwrap();
    assert_eq!(r.refused("set_mode", json!("cool")).await, "Device does not support cooling (can_cool=false)");
    for range in ["heat-cool", "range", "auto", "heat_cool"] {
        assert_eq!(
            r.refused("set_mode", json!(range)).await,
            "Range mode requires both heating and cooling capability",
            "{range}"
        );
    }
    assert_eq!(r.ok("set_mode", json!("off")).await, json!({"target_temperature_type": "off"}));
    r.see("off", |s| field(s, &shared(), "target_temperature_type") == Some(&json!("off"))).await;

    r.t.set_local("shared", json!({"can_cool": true, "can_heat": false})).await.unwrap();
    assert_eq!(r.refused("set_mode", json!("heat")).await, "Device does not support heating (can_heat=false)");
    assert_eq!(r.refused("set_mode", json!("auto")).await, "Range mode requires both heating and cooling capability");
    r.ok("set_mode", json!("cool")).await;
    r.see("cool", |s| field(s, &shared(), "target_temperature_type") == Some(&json!("cool"))).await;

    // Emergency heat, once the device reports it.
    r.t.set_local("shared", json!({"can_heat": true})).await.unwrap();
    r.t.set_local("device", json!({"has_emer_heat": true})).await.unwrap();
    assert_eq!(r.ok("set_mode", json!("emergency")).await, json!({"target_temperature_type": "emergency"}));
    r.see("emergency", |s| field(s, &shared(), "target_temperature_type") == Some(&json!("emergency"))).await;
    let status = r.status().await;
    assert_eq!(status["capabilities"]["has_emer_heat"], true);
    assert_eq!(status["mode"], "emergency");
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// set_away

#[tokio::test]
async fn set_away_enters_eco_and_leaving_resets_the_device_in_one_chunk() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let before = roost::domain::time::now_s();

    let (mut held, _) = t.open_subscribe().await.unwrap();
    let r = app.command(SERIAL, "set_away", json!(true)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json().unwrap();
    assert_eq!(body["data"]["object_key"], STRUCTURE);
    let values = &body["data"]["values"];
    assert_eq!(values.as_object().unwrap().keys().collect::<Vec<_>>(), ["manual_eco_all", "manual_eco_timestamp"]);
    assert_eq!(values["manual_eco_all"], true);
    assert!(values["manual_eco_timestamp"].as_i64().unwrap() >= before);
    let chunk = held.next_chunk_within(WAIT).await.unwrap().expect("the structure");
    let doc = chunk_json(&chunk);
    assert_eq!(keys_of(&doc), vec![STRUCTURE.to_string()]);
    assert_eq!(doc["objects"][0]["value"]["manual_eco_all"], true);
    assert_eq!(doc["objects"][0]["value"]["name"], "Home", "the whole structure bucket");
    t.apply_chunk(&chunk).await.unwrap();
    drop(held);

    // The thermostat goes into eco, as it reports.
    t.set_local("device", json!({"eco": {"mode": "manual-eco", "leaf": false}})).await.unwrap();
    let (mut held, _) = t.open_subscribe().await.unwrap();
    let r = app.command(SERIAL, "set_away", json!(false)).await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    let values = r.json().unwrap()["data"]["values"].clone();
    assert_eq!(
        values.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["manual_eco_all", "manual_eco_timestamp", "away"]
    );
    assert_eq!((values["manual_eco_all"].clone(), values["away"].clone()), (json!(false), json!(false)));

    let chunk = held.next_chunk_within(WAIT).await.unwrap().expect("leaving eco");
    let doc = chunk_json(&chunk);
    let mut pushed = keys_of(&doc);
    pushed.sort();
    assert_eq!(pushed, vec![device(), STRUCTURE.to_string()], "structure and device together, in one chunk");
    let object =
        |key: &str| doc["objects"].as_array().unwrap().iter().find(|o| o["object_key"] == key).unwrap().clone();
    let structure = object(STRUCTURE);
    assert_eq!(structure["value"]["manual_eco_all"], false);
    assert_eq!(structure["value"]["away"], false);
    let eco = &object(&device())["value"]["eco"];
    assert_eq!(eco["mode"], "schedule");
    assert_eq!(eco["leaf"], false, "the rest of eco is kept");
    assert_eq!(eco["touched_by"], 3);
    assert!(eco["mode_update_timestamp"].as_i64().unwrap() >= before);
    assert_eq!(object(&device())["value"]["current_temperature"], 21.5, "the whole device bucket");
    // Nothing follows in a second chunk: the response ends after its batch window.
    assert_eq!(held.next_chunk_within(WAIT).await.unwrap(), None);

    t.apply_chunk(&chunk).await.unwrap();
    let s = t.state();
    assert_eq!(s.field(STRUCTURE, "manual_eco_all"), Some(&json!(false)));
    assert_eq!(s.field(&device(), "eco").unwrap()["mode"], "schedule");
    let status = app.control.send(&roost::sim::http::Request::get(&format!("/status?serial={SERIAL}"))).await;
    assert_eq!(status.unwrap().json().unwrap()["eco_mode"], "schedule");
}

#[tokio::test]
async fn set_away_reaches_a_running_thermostat_and_takes_only_booleans() {
    let r = Running::start().await;
    r.ok("set_away", json!(true)).await;
    r.see("eco on", |s| field(s, STRUCTURE, "manual_eco_all") == Some(&json!(true))).await;
    r.ok("set_away", json!(false)).await;
    r.see("eco off", |s| {
        field(s, STRUCTURE, "manual_eco_all") == Some(&json!(false))
            && field(s, &device(), "eco").is_some_and(|e| e["mode"] == "schedule")
    })
    .await;
    for (bad, got) in
        [(json!("banana"), "a string"), (json!("true"), "a string"), (json!(1), "a number"), (json!(null), "null")]
    {
        assert_eq!(
            r.refused("set_away", bad).await,
            format!("set_away value must be true (enter eco) or false (leave eco), got {got}")
        );
    }
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// set_fan

#[tokio::test]
async fn set_fan_starts_and_stops_the_timer() {
    let r = Running::start().await;
    let now = roost::domain::time::now_s();
    let values = r.ok("set_fan", json!("on")).await;
    assert_eq!(values.as_object().unwrap().keys().collect::<Vec<_>>(), ["fan_timer_timeout", "fan_timer_duration"]);
    assert_eq!(values["fan_timer_duration"], 3600, "the default hour");
    let timeout = values["fan_timer_timeout"].as_i64().unwrap();
    assert!(timeout >= now + 3600, "{timeout} vs now {now}");
    r.see("the fan timer", |s| field(s, &device(), "fan_timer_timeout") == Some(&json!(timeout))).await;
    let status = r.status().await;
    assert_eq!(
        (status["fan_timer_active"].clone(), status["fan_timer_timeout"].clone()),
        (json!(true), json!(timeout))
    );

    assert_eq!(r.ok("set_fan", json!("auto")).await, json!({"fan_timer_timeout": 0}));
    r.see("fan stopped", |s| field(s, &device(), "fan_timer_timeout") == Some(&json!(0))).await;
    assert_eq!(r.status().await["fan_timer_active"], false);

    let values = r.ok("set_fan", json!(900)).await;
    assert_eq!(values["fan_timer_duration"], 900);
    let timeout = values["fan_timer_timeout"].as_i64().unwrap();
    r.see("a 15-minute timer", |s| {
        field(s, &device(), "fan_timer_timeout") == Some(&json!(timeout))
            && field(s, &device(), "fan_timer_duration") == Some(&json!(900))
    })
    .await;
    assert_eq!(r.ok("set_fan", json!("OFF")).await, json!({"fan_timer_timeout": 0}));
    r.see("fan off", |s| field(s, &device(), "fan_timer_timeout") == Some(&json!(0))).await;

    // The preferred duration the user set on the device.
    r.ok("set_device_setting", json!({"fan_timer_duration_minutes": 15})).await;
    assert_eq!(r.ok("set_fan", json!("on")).await["fan_timer_duration"], 900);
    r.see("the 15-minute preference", |s| field(s, &device(), "fan_timer_duration") == Some(&json!(900))).await;
    r.finish().await;
}

#[tokio::test]
async fn set_fan_rejections() {
    let r = Running::start().await;
    let message = |got: &str| {
        format!(
            "set_fan value must be \"on\", \"auto\", \"off\" or a whole number of seconds from 60 to 43200, got {got}"
        )
    };
    let cases = [
        (json!("start"), "'start'"),
        (json!("900"), "'900'"),
        (json!(59), "59"),
        (json!(43201), "43201"),
        (json!(-60), "-60"),
        (json!(90.5), "90.5"),
        (json!(true), "a boolean"),
        (json!(null), "null"),
        (json!({"mode": "on"}), "an object"),
    ];
    for (value, got) in cases {
        assert_eq!(r.refused("set_fan", value.clone()).await, message(got), "{value}");
    }
    assert_eq!(r.status().await["fan_timer_timeout"], 0, "nothing written");
    // A device without a fan refuses everything.
    r.t.set_local("device", json!({"has_fan": false})).await.unwrap();
    for value in [json!("on"), json!("auto"), json!(600)] {
        assert_eq!(r.refused("set_fan", value).await, "Device does not have a fan (has_fan=false)");
    }
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// set_eco_temperatures

#[tokio::test]
async fn set_eco_temperatures_reach_the_thermostat_clamped_and_ordered() {
    let r = Running::start().await;
    // Booted with away_temperature_low 12, high 28.
    let values = r.ok("set_eco_temperatures", json!({"low": 10, "high": 30})).await;
    assert_eq!(
        serde_json::to_string(&values).unwrap(),
        r#"{"away_temperature_low":10.0,"away_temperature_high":30.0}"#
    );
    r.see("eco 10-30", |s| {
        field(s, &device(), "away_temperature_low") == Some(&json!(10.0))
            && field(s, &device(), "away_temperature_high") == Some(&json!(30.0))
    })
    .await;
    assert_eq!(r.status().await["eco_temperatures"], json!({"high": 30.0, "low": 10.0}));
    assert_eq!(
        r.refused("set_eco_temperatures", json!({"low": 31})).await,
        "eco low (31) must be below eco high (30); send both to move the range"
    );
    assert_eq!(
        r.refused("set_eco_temperatures", json!({"high": 9.5})).await,
        "eco low (10) must be below eco high (9.5); send both to move the range"
    );
    assert_eq!(r.ok("set_eco_temperatures", json!({"high": 99})).await, json!({"away_temperature_high": 35.0}));
    r.see("eco high clamped", |s| field(s, &device(), "away_temperature_high") == Some(&json!(35.0))).await;
    assert_eq!(r.ok("set_eco_temperatures", json!({"low": -10})).await, json!({"away_temperature_low": 7.0}));
    r.see("eco low clamped", |s| field(s, &device(), "away_temperature_low") == Some(&json!(7.0))).await;

    let cases = [
        (
            json!(20),
            "set_eco_temperatures value must be an object {\"low\": n, \"high\": n} in degrees Celsius, got a number",
        ),
        (
            json!("low"),
            "set_eco_temperatures value must be an object {\"low\": n, \"high\": n} in degrees Celsius, got a string",
        ),
        (json!({}), "set_eco_temperatures needs 'low', 'high' or both"),
        (json!({"low": 10, "mid": 3}), "set_eco_temperatures takes 'low' and 'high', not 'mid'"),
        (json!({"low": "10"}), "low must be a number of degrees Celsius, got a string"),
        (json!({"low": 40, "high": 50}), "eco low (35) must be below eco high (35); send both to move the range"),
    ];
    for (value, message) in cases {
        assert_eq!(r.refused("set_eco_temperatures", value.clone()).await, message, "{value}");
    }
    assert_eq!(r.status().await["eco_temperatures"], json!({"high": 35.0, "low": 7.0}));
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// set_schedule and set_schedule_mode

#[tokio::test]
async fn set_schedule_reaches_the_thermostat_as_sent() {
    let r = Running::start().await;
    let sent = json!({
        "ver": 2, "name": "Week", "schedule_mode": "heat", "unknown_key": 1,
        "days": {
            "0": [{"type": "HEAT", "time": 79200, "temp": 18}, {"type": "heat", "time": 25200, "temp": 21.5}],
            "4": {"0": {"type": "HEAT", "time": 28800, "temp": 20, "touched_by": 1}}
        }
    });
    let expected = json!({"ver": 2, "name": "Week", "schedule_mode": "HEAT", "days": {
        "0": {"0": {"type": "HEAT", "time": 25200, "entry_type": "setpoint", "temp": 21.5},
              "1": {"type": "HEAT", "time": 79200, "entry_type": "setpoint", "temp": 18.0}},
        "4": {"0": {"type": "HEAT", "time": 28800, "entry_type": "setpoint", "temp": 20.0, "touched_by": 1}}
    }});
    let resp = r.app.command(SERIAL, "set_schedule", sent).await;
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&resp.body));
    let body = resp.json().unwrap();
    assert_eq!(body["data"]["object_key"], schedule());
    assert_eq!(body["data"]["values"], expected);
    let s = r
        .see("the schedule and its mode", |s| {
            s.buckets.get(&schedule()).is_some_and(|b| Value::Object(b.value.clone()) == expected)
                && field(s, &shared(), "schedule_mode") == Some(&json!("HEAT"))
        })
        .await;
    let days = s.buckets[&schedule()].value["days"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(days, ["0", "4"], "the days sent, in day order");
    assert_eq!(r.status().await["schedule_mode"], "HEAT");

    // `days: {}` clears the schedule, and reads back as sent (Homebridge's Smart Schedule
    // switch reads seven empty days as a schedule).
    let cleared = r.ok("set_schedule", json!({"ver": 2, "schedule_mode": "HEAT", "days": {}})).await;
    assert_eq!(cleared, json!({"ver": 2, "name": "", "schedule_mode": "HEAT", "days": {}}));
    r.see("an empty week", |s| {
        s.buckets.get(&schedule()).is_some_and(|b| b.value["days"] == json!({}) && b.value["name"] == "")
    })
    .await;
    let r2 = r.app.control.send(&Request::get(&format!("/api/schedule?serial={SERIAL}"))).await.unwrap();
    assert_eq!(r2.json().unwrap()["schedule"]["days"], json!({}));

    // A schedule of another mode moves shared.schedule_mode with it.
    let range = json!({"ver": 2, "mode": "range",
                       "days": {"2": [{"type": "RANGE", "time": 3600, "temp-min": 19, "temp-max": 24.5}]}});
    r.ok("set_schedule", range).await;
    let s = r
        .see("a RANGE schedule", |s| {
            field(s, &shared(), "schedule_mode") == Some(&json!("RANGE"))
                && field(s, &schedule(), "schedule_mode") == Some(&json!("RANGE"))
        })
        .await;
    assert_eq!(
        s.buckets[&schedule()].value["days"]["2"],
        json!({"0": {"type": "RANGE", "time": 3600, "entry_type": "setpoint", "temp-min": 19.0, "temp-max": 24.5}})
    );
    r.finish().await;
}

#[tokio::test]
async fn invalid_schedules_are_refused_and_keep_the_stored_one() {
    let r = Running::start().await;
    r.ok(
        "set_schedule",
        json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": [{"type": "HEAT", "time": 0, "temp": 20}]}}),
    )
    .await;
    r.see("the schedule", |s| s.buckets.contains_key(&schedule())).await;
    let stored = r.server_bucket(&schedule()).await;
    let heat = |entries: Value| json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": entries}});
    let cases = [
        (json!([1]), "Schedule must be a JSON object"),
        (json!("weekly"), "Schedule must be a JSON object"),
        (json!({"days": {}}), "Schedule ver must be 2"),
        (json!({"ver": 1, "schedule_mode": "HEAT", "days": {}}), "Schedule ver must be 2"),
        (json!({"ver": 2, "days": {}}), "schedule_mode must be one of: HEAT, COOL, RANGE"),
        (json!({"ver": 2, "schedule_mode": "ECO", "days": {}}), "schedule_mode must be one of: HEAT, COOL, RANGE"),
        (json!({"ver": 2, "schedule_mode": "HEAT"}), "Schedule must contain a 'days' object"),
        (json!({"ver": 2, "schedule_mode": "HEAT", "days": []}), "Schedule must contain a 'days' object"),
        (
            json!({"ver": 2, "schedule_mode": "HEAT", "days": {"7": []}}),
            "Invalid day key '7' (must be '0'-'6', Monday-Sunday)",
        ),
        (json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": 5}}), "Day '0' must be a list or dict of setpoints"),
        (
            heat(json!([{"type": "COOL", "time": 0, "temp": 25}])),
            "Day '0' entry 0: invalid type 'COOL' (this is a HEAT schedule)",
        ),
        (heat(json!([{"type": "HEAT", "time": 86400, "temp": 20}])), "Day '0' entry 0: time must be 0-86399"),
        (heat(json!([{"type": "HEAT", "temp": 20}])), "Day '0' entry 0: missing 'time'"),
        (heat(json!([{"type": "HEAT", "time": 10, "temp": 40}])), "Day '0' entry 0: temp=40.0 outside 4.5-32.0C"),
        (heat(json!([{"type": "HEAT", "time": 10}])), "Day '0' entry 0: HEAT requires 'temp'"),
        (
            heat(json!([{"type": "HEAT", "time": 0, "temp": 20}, {"type": "HEAT", "time": 0, "temp": 21}])),
            "Day '0' entry 1: another setpoint of this day is already at time 0",
        ),
        (
            json!({"ver": 2, "schedule_mode": "RANGE", "days": {"1": [{"type": "RANGE", "time": 1, "temp-min": 22, "temp-max": 20}]}}),
            "Day '1' entry 0: temp-min (22.0) must be below temp-max (20.0)",
        ),
    ];
    for (value, message) in cases {
        assert_eq!(r.refused("set_schedule", value.clone()).await, message, "{value}");
    }
    assert_eq!(r.server_bucket(&schedule()).await, stored, "the stored schedule is untouched");
    r.finish().await;
}

#[tokio::test]
async fn set_schedule_mode_must_agree_with_the_stored_schedule() {
    let r = Running::start().await;
    // No schedule yet: any of the three.
    assert_eq!(r.ok("set_schedule_mode", json!("range")).await, json!({"schedule_mode": "RANGE"}));
    r.see("RANGE", |s| field(s, &shared(), "schedule_mode") == Some(&json!("RANGE"))).await;
    for bad in [json!("eco"), json!("auto"), json!(1), json!(null)] {
        assert_eq!(r.refused("set_schedule_mode", bad).await, "schedule_mode must be one of: HEAT, COOL, RANGE");
    }
    r.ok("set_schedule", json!({"ver": 2, "schedule_mode": "HEAT", "days": {}})).await;
    r.see("HEAT", |s| field(s, &shared(), "schedule_mode") == Some(&json!("HEAT"))).await;
    assert_eq!(
        r.refused("set_schedule_mode", json!("cool")).await,
        "The stored schedule is a HEAT schedule and the thermostat ignores a schedule whose mode differs from \
         schedule_mode; push a COOL schedule with set_schedule first"
    );
    assert_eq!(r.ok("set_schedule_mode", json!(" heat ")).await, json!({"schedule_mode": "HEAT"}));
    assert_eq!(r.status().await["schedule_mode"], "HEAT");
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// set_device_setting

#[tokio::test]
async fn set_device_setting_writes_whitelisted_fields_under_firmware_names() {
    let r = Running::start().await;
    let values = r
        .ok(
            "set_device_setting",
            json!({"learning_mode": false, "temp_lock_on": true, "temperature_scale": "f", "target_humidity": 45,
                   "temp_lock_high_temp": 24, "click_sound": "OFF"}),
        )
        .await;
    assert_eq!(
        values,
        json!({"learning_mode": false, "temperature_lock": true, "temperature_scale": "F", "target_humidity": 45,
               "temperature_lock_high_temp": 24.0, "click_sound": "off"})
    );
    let s = r
        .see("the settings", |s| {
            field(s, &device(), "temperature_lock") == Some(&json!(true))
                && field(s, &device(), "learning_mode") == Some(&json!(false))
                && field(s, &device(), "temperature_scale") == Some(&json!("F"))
        })
        .await;
    assert_eq!(field(&s, &device(), "temp_lock_on"), None, "the alias is not written");
    assert_eq!(field(&s, &device(), "temperature_lock_high_temp"), Some(&json!(24.0)));
    assert_eq!(field(&s, &device(), "target_humidity"), Some(&json!(45)));
    assert_eq!(field(&s, &device(), "current_temperature"), Some(&json!(21.5)), "merged into the bucket");
    let status = r.status().await;
    assert_eq!((status["learning_mode"].clone(), status["temperature_scale"].clone()), (json!(false), json!("F")));
    assert_eq!(status["target_humidity"], 45);

    // The firmware name works too.
    assert_eq!(
        r.ok("set_device_setting", json!({"temperature_lock": false})).await,
        json!({"temperature_lock": false})
    );
    r.see("unlocked", |s| field(s, &device(), "temperature_lock") == Some(&json!(false))).await;
    r.finish().await;
}

#[tokio::test]
async fn set_device_setting_rejections_write_nothing() {
    let r = Running::start().await;
    let before = r.server_bucket(&device()).await;
    let message = r.refused("set_device_setting", json!({"time_to_target": 5})).await;
    assert!(
        message.starts_with(
            "Fields not cloud-writable: time_to_target. Device-only fields such as time_to_target and \
             current_temperature are written by the thermostat itself. Accepted fields: "
        ),
        "{message}"
    );
    assert!(message.contains("learning_mode") && message.contains("temperature_lock"), "{message}");
    // One refused field refuses the whole command.
    let message =
        r.refused("set_device_setting", json!({"learning_mode": true, "time_to_target": 5, "has_fan": false})).await;
    assert!(message.starts_with("Fields not cloud-writable: has_fan, time_to_target."), "{message}");
    let not_an_object = "set_device_setting value must be a JSON object of {field: value} pairs";
    let cases = [
        (json!({}), not_an_object),
        (json!([["learning_mode", true]]), not_an_object),
        (json!("learning_mode"), not_an_object),
        (json!(null), not_an_object),
        (json!({"learning_mode": "yes"}), "learning_mode must be true or false, got a string"),
        (json!({"target_humidity": 70}), "target_humidity must be a whole number of percent from 10 to 60, got 70"),
        (json!({"temperature_scale": "K"}), "temperature_scale must be one of: C, F"),
        (
            json!({"temp_lock_on": true, "temperature_lock": false}),
            "temp_lock_on and temperature_lock both set temperature_lock; send only temperature_lock",
        ),
        (
            json!({"learning_mode": true, "upper_safety_temp": "hot"}),
            "upper_safety_temp must be a number of degrees Celsius, got a string",
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(r.refused("set_device_setting", value.clone()).await, expected, "{value}");
    }
    assert_eq!(r.server_bucket(&device()).await, before, "no field written, no revision spent");
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Serials

#[tokio::test]
async fn commands_address_known_serials_only() {
    let r = Running::start().await;
    for unknown in ["02AA01AC00000000", "02aa-01ac-0000-0000"] {
        let resp = r.app.command(unknown, "set_temperature", json!(21)).await;
        assert_eq!(resp.status(), 404, "{unknown}");
        assert_eq!(resp.json().unwrap(), json!({"success": false, "message": "Device not found"}));
    }
    let resp = r.app.command("02AA01AC00000000", "set_mode", json!("bogus")).await;
    assert_eq!(resp.status(), 404, "existence is checked before the value");
    // No phantom device appeared.
    let devices = r.app.control.send(&roost::sim::http::Request::get("/api/devices")).await.unwrap().json().unwrap();
    assert_eq!(devices["total"], 1, "{devices}");
    let status = r.app.control.send(&roost::sim::http::Request::get("/status?serial=02AA01AC00000000")).await.unwrap();
    assert_eq!(status.status(), 404);

    // A known serial typed in lower case with dashes is the same thermostat.
    let resp = r.app.command("02aa-01ac-1234-5678", "set_temperature", json!(23)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json().unwrap()["data"]["object_key"], shared());
    r.see_acked("23", json!({"target_temperature": 23.0})).await;
    r.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements racing newer commands

#[tokio::test]
async fn a_setpoint_committed_before_the_previous_one_is_acknowledged_still_reaches_the_thermostat() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let (mut held, _) = t.open_subscribe().await.unwrap();
    // A is pushed; before the thermostat has applied and acknowledged it, B is committed.
    assert_eq!(app.command(SERIAL, "set_temperature", json!(22.0)).await.status(), 200);
    let chunk_a = held.next_chunk_within(WAIT).await.unwrap().expect("A");
    assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    // The thermostat applies A and acknowledges it (a PUT of target_change_pending: false), then
    // applies what arrived on the subscribe meanwhile, as the firmware does after a PUT.
    t.apply_chunk(&chunk_a).await.unwrap();
    let chunk_b = held.next_chunk_within(WAIT).await.unwrap().expect("B");
    assert_eq!(chunk_json(&chunk_b)["objects"][0]["value"]["target_temperature"], json!(23.0));
    t.apply_chunk(&chunk_b).await.unwrap();
    drop(held);
    let stop = CancellationToken::new();
    let task = t.run(stop.clone());
    let seen = t.wait_for(WAIT, "B", |s| s.field(&shared(), "target_temperature") == Some(&json!(23.0))).await;
    stop.cancel();
    task.await.unwrap();
    let server = app.control.send(&roost::sim::http::Request::get(&format!("/status?serial={SERIAL}"))).await;
    assert_eq!(server.unwrap().json().unwrap()["target_temperature"], 23.0);
    seen.expect("the thermostat ends up with the newest setpoint");
}
