//! The hosted API's request bodies, as commands of the one command vocabulary. Lenient the way
//! the real clients need: `heatValue`/`coolValue` for `low`/`high`, `minTemp`/`maxTemp` and
//! `pin` on the lock, fan bodies with `mode`, `duration` or `enabled`, °F with `scale: "F"`.

use serde_json::{Map, Value, json};

/// A command for `commands::execute`.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: &'static str,
    pub value: Value,
}

fn command(name: &'static str, value: Value) -> Result<Command, String> {
    Ok(Command { name, value })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Celsius,
    Fahrenheit,
}

fn scale(body: &Map<String, Value>) -> Result<Scale, String> {
    match body.get("scale") {
        None | Some(Value::Null) => Ok(Scale::Celsius),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("c") => Ok(Scale::Celsius),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("f") => Ok(Scale::Fahrenheit),
        Some(_) => Err("scale must be \"C\" or \"F\"".into()),
    }
}

/// A temperature in the body's scale, as °C; `None` when absent.
fn degrees(body: &Map<String, Value>, names: &[&str], scale: Scale, message: &str) -> Result<Option<f64>, String> {
    let Some(v) = names.iter().find_map(|n| body.get(*n).filter(|v| !v.is_null())) else { return Ok(None) };
    let f = v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| message.to_string())?;
    Ok(Some(match scale {
        Scale::Celsius => f,
        Scale::Fahrenheit => (f - 32.0) * 5.0 / 9.0,
    }))
}

fn boolean(body: &Map<String, Value>, name: &str) -> Result<bool, String> {
    match body.get(name) {
        Some(Value::Bool(b)) => Ok(*b),
        _ => Err(format!("{name} must be true or false")),
    }
}

/// `{"value", "mode"?, "scale"?}`: `mode` is accepted for the clients that send it; the setpoint
/// applies to the thermostat's current mode.
pub fn temperature(body: &Map<String, Value>) -> Result<Command, String> {
    let scale = scale(body)?;
    const MESSAGE: &str = "Temperature value must be a number";
    let value = degrees(body, &["value"], scale, MESSAGE)?.ok_or(MESSAGE)?;
    if let Some(mode) = body.get("mode").filter(|m| !m.is_null()) {
        if !mode.is_string() {
            return Err("mode must be a string".into());
        }
    }
    command("set_temperature", json!(value))
}

/// `{"low", "high", "scale"?}` (or `heatValue`/`coolValue`), low below high.
pub fn range(body: &Map<String, Value>) -> Result<Command, String> {
    let scale = scale(body)?;
    let low = degrees(body, &["low", "heatValue"], scale, "low must be a number")?;
    let high = degrees(body, &["high", "coolValue"], scale, "high must be a number")?;
    let (Some(low), Some(high)) = (low, high) else {
        return Err("Send both low and high (or heatValue and coolValue)".into());
    };
    if low >= high {
        return Err("low must be below high".into());
    }
    command("set_temperature", json!({"low": low, "high": high}))
}

/// `{"mode": "heat" | "cool" | "heat-cool" | "auto" | "off"}` (`auto` is heat-cool).
pub fn mode(body: &Map<String, Value>) -> Result<Command, String> {
    match body.get("mode") {
        Some(Value::String(m)) => command("set_mode", json!(m)),
        _ => Err("mode must be one of: heat, cool, heat-cool, off".into()),
    }
}

/// `{"away": bool}`.
pub fn away(body: &Map<String, Value>) -> Result<Command, String> {
    command("set_away", json!(boolean(body, "away")?))
}

/// `{"enabled": bool}`: the eco preset (the same manual eco as away, remembered as eco).
pub fn eco(body: &Map<String, Value>) -> Result<Command, String> {
    command("set_preset", json!(if boolean(body, "enabled")? { "eco" } else { "home" }))
}

/// `{"mode": "on" | "auto" | "off", "duration"?}`, `{"duration": seconds}` or `{"enabled": bool}`.
pub fn fan(body: &Map<String, Value>) -> Result<Command, String> {
    let duration = body.get("duration").filter(|d| !d.is_null());
    if let Some(d) = duration {
        if !d.is_number() {
            return Err("duration must be a number of seconds".into());
        }
    }
    let stop = json!("auto");
    match (body.get("mode").filter(|m| !m.is_null()), body.get("enabled").filter(|e| !e.is_null())) {
        (Some(Value::String(m)), _) => match m.trim().to_ascii_lowercase().as_str() {
            "on" => command("set_fan", duration.cloned().unwrap_or_else(|| json!("on"))),
            "auto" | "off" => command("set_fan", stop),
            _ => Err(format!("Unknown fan mode '{m}' (use on, auto or off)")),
        },
        (Some(_), _) => Err("mode must be \"on\", \"auto\" or \"off\"".into()),
        (None, Some(Value::Bool(on))) => command("set_fan", if *on { json!("on") } else { stop }),
        (None, Some(_)) => Err("enabled must be true or false".into()),
        (None, None) => match duration {
            Some(d) if d.as_f64() == Some(0.0) => command("set_fan", stop),
            Some(d) => command("set_fan", d.clone()),
            None => Err("Send mode (on, auto or off), duration (seconds) or enabled".into()),
        },
    }
}

/// `{"enabled": true, "pin_hash" | "pin", "temp_min" | "minTemp", "temp_max" | "maxTemp", "scale"?}`
/// or `{"enabled": false}`.
pub fn lock(body: &Map<String, Value>) -> Result<Command, String> {
    let enabled = boolean(body, "enabled")?;
    if !enabled {
        return command("set_lock", json!({"enabled": false}));
    }
    let scale = scale(body)?;
    let mut value = Map::new();
    value.insert("enabled".into(), Value::Bool(true));
    for key in ["pin", "pin_hash"] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            value.insert(key.into(), v.clone());
        }
    }
    for (key, names) in [("temp_min", ["temp_min", "minTemp"]), ("temp_max", ["temp_max", "maxTemp"])] {
        if let Some(c) = degrees(body, &names, scale, &format!("{key} must be a number"))? {
            value.insert(key.into(), json!(c));
        }
    }
    command("set_lock", Value::Object(value))
}

/// `{"schedule": {...}}` or the schedule itself. Days are passed on as sent: the firmware's
/// numbering, Monday = 0.
pub fn schedule(body: &Map<String, Value>) -> Result<Command, String> {
    let wrapped = !body.contains_key("days") && body.get("schedule").is_some_and(Value::is_object);
    let schedule = if wrapped { body["schedule"].clone() } else { Value::Object(body.clone()) };
    command("set_schedule", schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn ok(f: fn(&Map<String, Value>) -> Result<Command, String>, v: Value) -> (&'static str, Value) {
        let c = f(&body(v)).unwrap();
        (c.name, c.value)
    }

    #[test]
    fn temperatures_in_either_scale() {
        assert_eq!(
            ok(temperature, json!({"value": 21.5, "mode": "heat", "scale": "C"})),
            ("set_temperature", json!(21.5))
        );
        assert_eq!(ok(temperature, json!({"value": 21})), ("set_temperature", json!(21.0)));
        assert_eq!(ok(temperature, json!({"value": 68, "scale": "F"})), ("set_temperature", json!(20.0)));
        assert_eq!(ok(temperature, json!({"value": 212, "scale": "f"})), ("set_temperature", json!(100.0)));
        assert_eq!(temperature(&body(json!({"value": "21"}))).unwrap_err(), "Temperature value must be a number");
        assert_eq!(temperature(&body(json!({}))).unwrap_err(), "Temperature value must be a number");
        assert_eq!(temperature(&body(json!({"value": 21, "scale": "K"}))).unwrap_err(), "scale must be \"C\" or \"F\"");
        assert_eq!(ok(range, json!({"low": 19, "high": 23})), ("set_temperature", json!({"low": 19.0, "high": 23.0})));
        assert_eq!(
            ok(range, json!({"heatValue": 50, "coolValue": 77, "scale": "F"})),
            ("set_temperature", json!({"low": 10.0, "high": 25.0}))
        );
        assert_eq!(range(&body(json!({"low": 23, "high": 19}))).unwrap_err(), "low must be below high");
        assert!(range(&body(json!({"low": 23}))).unwrap_err().starts_with("Send both"));
    }

    #[test]
    fn modes_away_and_eco() {
        assert_eq!(ok(mode, json!({"mode": "auto"})), ("set_mode", json!("auto")));
        assert!(mode(&body(json!({"mode": 1}))).is_err());
        assert_eq!(ok(away, json!({"away": true})), ("set_away", json!(true)));
        assert_eq!(away(&body(json!({"away": "yes"}))).unwrap_err(), "away must be true or false");
        assert_eq!(ok(eco, json!({"enabled": false})), ("set_preset", json!("home")));
        assert_eq!(ok(eco, json!({"enabled": true})), ("set_preset", json!("eco")));
    }

    #[test]
    fn every_fan_body_the_clients_send() {
        for (sent, value) in [
            (json!({"mode": "on"}), json!("on")),
            (json!({"mode": "auto"}), json!("auto")),
            (json!({"mode": "off"}), json!("auto")),
            (json!({"mode": "on", "duration": 900}), json!(900)),
            (json!({"mode": "off", "duration": 900}), json!("auto")),
            (json!({"duration": 43200}), json!(43200)),
            (json!({"duration": 0}), json!("auto")),
            (json!({"enabled": true}), json!("on")),
            (json!({"enabled": false}), json!("auto")),
        ] {
            assert_eq!(ok(fan, sent.clone()), ("set_fan", value), "{sent}");
        }
        for bad in [
            json!({}),
            json!({"mode": "turbo"}),
            json!({"enabled": "on"}),
            json!({"duration": "900"}),
            json!({"mode": 1}),
        ] {
            assert!(fan(&body(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn lock_bodies_of_the_docs_and_of_hanle() {
        assert_eq!(
            ok(lock, json!({"enabled": true, "pin_hash": "abc=", "temp_min": 18, "temp_max": 24})),
            ("set_lock", json!({"enabled": true, "pin_hash": "abc=", "temp_min": 18.0, "temp_max": 24.0}))
        );
        assert_eq!(
            ok(lock, json!({"enabled": true, "pin": "1234", "minTemp": 59, "maxTemp": 77, "scale": "F"})),
            ("set_lock", json!({"enabled": true, "pin": "1234", "temp_min": 15.0, "temp_max": 25.0}))
        );
        assert_eq!(ok(lock, json!({"enabled": false, "pin": "9999"})), ("set_lock", json!({"enabled": false})));
        assert!(lock(&body(json!({"pin": "1234"}))).is_err());
    }

    #[test]
    fn schedules_wrapped_or_not() {
        let s = json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": []}});
        assert_eq!(ok(schedule, json!({"schedule": s.clone()})), ("set_schedule", s.clone()));
        assert_eq!(ok(schedule, s.clone()), ("set_schedule", s));
    }
}
