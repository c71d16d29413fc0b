//! Turning an incoming `.../set` message into a command of the shared vocabulary. Nothing
//! received over MQTT writes a bucket any other way.

use serde_json::{Value, json};

/// A command for `commands::execute`, or why the message is ignored.
pub type Parsed = Result<(String, &'static str, Value), String>;

/// The payload as JSON, else as a number, else as text.
fn parse_value(payload: &str) -> Value {
    let text = payload.trim();
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn number(payload: &str) -> Result<Value, String> {
    payload
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(|f| json!(f))
        .ok_or_else(|| format!("'{}' is not a number", payload.trim()))
}

fn boolean(payload: &str) -> Result<bool, String> {
    match payload.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        other => Err(format!("'{other}' is not true or false")),
    }
}

/// A lone bound of a range (`{"low": n}` or `{"high": n}`): Home Assistant sends a range as two
/// messages, so a lone bound waits briefly for its partner.
pub fn lone_bound(command: &str, value: &Value) -> Option<&'static str> {
    let range = value.as_object().filter(|_| command == "set_temperature")?;
    match (range.len(), range.contains_key("low"), range.contains_key("high")) {
        (1, true, _) => Some("low"),
        (1, _, true) => Some("high"),
        _ => None,
    }
}

/// `P/S/ha/<cmd>/set` and `P/S/<bucket>/<field>/set` → (serial, command, value).
pub fn parse(prefix: &str, topic: &str, payload: &str) -> Parsed {
    let rest = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')).ok_or("not under the topic prefix")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [serial, group, name, "set"] = parts.as_slice() else {
        return Err(format!("unexpected command topic {topic}"));
    };
    let serial = serial.to_string();
    let command = match (*group, *name) {
        ("ha", "mode") => ("set_mode", json!(payload.trim())),
        ("ha", "target_temperature") | ("shared", "target_temperature") => ("set_temperature", number(payload)?),
        ("ha", "target_temperature_low") | ("shared", "target_temperature_low") => {
            ("set_temperature", json!({"low": number(payload)?}))
        }
        ("ha", "target_temperature_high") | ("shared", "target_temperature_high") => {
            ("set_temperature", json!({"high": number(payload)?}))
        }
        ("ha", "fan_mode") => ("set_fan", json!(payload.trim().to_ascii_lowercase())),
        // Home Assistant always offers `none` besides the listed presets: it means home.
        ("ha", "preset") => ("set_preset", json!(payload.trim().to_ascii_lowercase())),
        ("ha", "eco_mode") => ("set_preset", json!(if boolean(payload)? { "eco" } else { "home" })),
        ("ha", "emergency_heat") => ("set_mode", json!(if boolean(payload)? { "emergency" } else { "heat" })),
        ("ha", "humidifier") => ("set_device_setting", json!({"target_humidity_enabled": boolean(payload)?})),
        // The firmware applies a humidity target only while humidity control is enabled, so
        // the enable goes first.
        ("ha", "target_humidity") => {
            let percent = number(payload)?.as_f64().unwrap_or_default().round();
            ("set_device_setting", json!({"target_humidity_enabled": true, "target_humidity": percent}))
        }
        ("ha", "fan_duration") => {
            let minutes = number(payload)?.as_f64().unwrap_or(60.0).round().clamp(15.0, 1440.0) as i64;
            ("set_device_setting", json!({"fan_timer_duration_minutes": minutes}))
        }
        ("ha", other) => return Err(format!("unknown Home Assistant command '{other}'")),
        ("shared", "target_temperature_type") => ("set_mode", json!(payload.trim())),
        ("shared", "schedule_mode") => ("set_schedule_mode", json!(payload.trim())),
        ("device", "fan_timer_active") => ("set_fan", json!(if boolean(payload)? { "on" } else { "auto" })),
        ("device", "away") => ("set_away", json!(boolean(payload)?)),
        ("device", field) => ("set_device_setting", json!({ field: parse_value(payload) })),
        (bucket, field) => return Err(format!("{bucket}/{field} cannot be written over MQTT")),
    };
    Ok((serial, command.0, command.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_assistant_commands() {
        assert_eq!(parse("p", "p/S/ha/mode/set", "heat_cool"), Ok(("S".into(), "set_mode", json!("heat_cool"))));
        assert_eq!(
            parse("p", "p/S/ha/target_temperature_low/set", "19.5"),
            Ok(("S".into(), "set_temperature", json!({"low": 19.5})))
        );
        assert_eq!(parse("p", "p/S/ha/preset/set", "Eco"), Ok(("S".into(), "set_preset", json!("eco"))));
        assert_eq!(parse("p", "p/S/ha/preset/set", "none"), Ok(("S".into(), "set_preset", json!("none"))));
        assert_eq!(parse("p", "p/S/ha/eco_mode/set", "ON"), Ok(("S".into(), "set_preset", json!("eco"))));
        assert_eq!(parse("p", "p/S/ha/emergency_heat/set", "OFF"), Ok(("S".into(), "set_mode", json!("heat"))));
        assert_eq!(
            parse("p", "p/S/ha/target_humidity/set", "45"),
            Ok(("S".into(), "set_device_setting", json!({"target_humidity_enabled": true, "target_humidity": 45.0})))
        );
        assert_eq!(
            parse("p", "p/S/ha/humidifier/set", "OFF"),
            Ok(("S".into(), "set_device_setting", json!({"target_humidity_enabled": false})))
        );
        assert!(parse("p", "p/S/ha/humidifier/set", "maybe").is_err());
        assert_eq!(lone_bound("set_temperature", &json!({"low": 1.0})), Some("low"));
        assert_eq!(lone_bound("set_temperature", &json!({"high": 1.0})), Some("high"));
        assert_eq!(lone_bound("set_temperature", &json!({"low": 1.0, "high": 2.0})), None);
        assert_eq!(lone_bound("set_temperature", &json!(21.0)), None);
        assert_eq!(
            parse("p", "p/S/ha/fan_duration/set", "5"),
            Ok(("S".into(), "set_device_setting", json!({"fan_timer_duration_minutes": 15})))
        );
        assert!(parse("p", "p/S/ha/target_temperature/set", "warm").is_err());
        assert!(parse("p", "p/S/ha/target_temperature/set", "NaN").is_err());
    }

    #[test]
    fn raw_topics_map_to_commands() {
        assert_eq!(
            parse("p", "p/S/shared/target_temperature/set", "22"),
            Ok(("S".into(), "set_temperature", json!(22.0)))
        );
        assert_eq!(
            parse("p", "p/S/shared/target_temperature_type/set", "range"),
            Ok(("S".into(), "set_mode", json!("range")))
        );
        assert_eq!(parse("p", "p/S/device/fan_timer_active/set", "True"), Ok(("S".into(), "set_fan", json!("on"))));
        assert_eq!(
            parse("p", "p/S/device/learning_mode/set", "false"),
            Ok(("S".into(), "set_device_setting", json!({"learning_mode": false})))
        );
        assert!(parse("p", "p/S/structure/away/set", "true").is_err());
        assert!(parse("p", "p/S/device/set", "1").is_err());
    }
}
