//! The temperature lock (`set_lock`): the PIN hash and the range a locked thermostat allows,
//! written to the device bucket under the firmware's own field names.

use base64::Engine;
use serde_json::{Map, Value};

use super::command::{CommandError, DeviceView, Plan, Target, Write, celsius};

const FIELDS: [&str; 5] = ["enabled", "pin", "pin_hash", "temp_min", "temp_max"];
/// Longer than any Base64 digest, short enough that a stored hash cannot be used as storage.
const MAX_PIN_HASH: usize = 128;

/// The hash the hosted API documents for a lock PIN: Base64(SHA-1(PIN followed by the serial)).
/// Nothing public shows how the firmware checks it, so a client's own `pin_hash` is stored as
/// sent and only a plain PIN is hashed this way.
pub fn pin_hash(pin: &str, serial: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{pin}{serial}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::Invalid(message.into())
}

fn temperature(v: &Value, name: &str) -> Result<Option<f64>, CommandError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| invalid(format!("{name} must be a finite number of degrees Celsius"))),
        _ => Err(invalid(format!("{name} must be a number of degrees Celsius"))),
    }
}

/// `{"enabled": false}` always unlocks (and forgets the PIN). `{"enabled": true, ...}` locks with
/// `pin` (4 digits, hashed) or `pin_hash` (stored unchanged), or the stored hash when neither is
/// sent, between `temp_min` and `temp_max` (°C, within the device's safety range).
pub fn set_lock(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    let Value::Object(body) = value else {
        return Err(invalid(
            "set_lock value must be an object such as {\"enabled\": true, \"pin\": \"1234\", \"temp_min\": 18, \"temp_max\": 24}",
        ));
    };
    if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(format!("set_lock takes {}, not '{unknown}'", FIELDS.join(", "))));
    }
    let enabled = match body.get("enabled") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(invalid("set_lock needs \"enabled\": true or false")),
    };
    let mut fields = Map::new();
    if !enabled {
        fields.insert("temperature_lock".into(), Value::Bool(false));
        fields.insert("temperature_lock_pin_hash".into(), Value::from(""));
        return Ok(Plan { writes: vec![Write { target: Target::Device, fields, replace: false }] });
    }
    let stored = |key: &str| view.device.and_then(|d| d.get(key));
    let hash = match (body.get("pin").filter(|v| !v.is_null()), body.get("pin_hash").filter(|v| !v.is_null())) {
        (Some(_), Some(_)) => return Err(invalid("Send pin or pin_hash, not both")),
        (Some(Value::String(pin)), None) if pin.len() == 4 && pin.bytes().all(|b| b.is_ascii_digit()) => {
            if view.serial.is_empty() {
                return Err(invalid("The thermostat's serial is needed to hash a PIN"));
            }
            pin_hash(pin, view.serial)
        }
        (Some(_), None) => return Err(invalid("pin must be a string of 4 digits, such as \"0123\"")),
        (None, Some(Value::String(hash))) if !hash.trim().is_empty() && hash.len() <= MAX_PIN_HASH => hash.clone(),
        (None, Some(_)) => {
            return Err(invalid(format!("pin_hash must be a non-empty string of at most {MAX_PIN_HASH} characters")));
        }
        (None, None) => match stored("temperature_lock_pin_hash") {
            Some(Value::String(hash)) if !hash.is_empty() => hash.clone(),
            _ => return Err(invalid("Locking needs a pin (4 digits) or a pin_hash")),
        },
    };
    let (min, max) = view.safety_bounds();
    let low = temperature(body.get("temp_min").unwrap_or(&Value::Null), "temp_min")?.map(|t| t.clamp(min, max));
    let high = temperature(body.get("temp_max").unwrap_or(&Value::Null), "temp_max")?.map(|t| t.clamp(min, max));
    let stored_number = |key: &str| stored(key).and_then(Value::as_f64).filter(|f| f.is_finite());
    let effective_low = low.or_else(|| stored_number("temperature_lock_low_temp"));
    let effective_high = high.or_else(|| stored_number("temperature_lock_high_temp"));
    if let (Some(l), Some(h)) = (effective_low, effective_high) {
        if l >= h {
            return Err(invalid(format!("temp_min ({l}) must be below temp_max ({h})")));
        }
    }
    fields.insert("temperature_lock".into(), Value::Bool(true));
    fields.insert("temperature_lock_pin_hash".into(), Value::from(hash));
    if let Some(l) = low {
        fields.insert("temperature_lock_low_temp".into(), celsius(l));
    }
    if let Some(h) = high {
        fields.insert("temperature_lock_high_temp".into(), celsius(h));
    }
    Ok(Plan { writes: vec![Write { target: Target::Device, fields, replace: false }] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::command::plan;
    use serde_json::json;

    const SERIAL: &str = "02AA01AB01234567";

    fn view(device: Option<&Map<String, Value>>) -> DeviceView<'_> {
        DeviceView { device, serial: SERIAL, ..Default::default() }
    }

    fn written(value: Value, device: Option<&Map<String, Value>>) -> Result<Value, String> {
        match plan("set_lock", &value, view(device)) {
            Ok(p) => {
                assert_eq!(p.writes.len(), 1);
                assert_eq!(p.writes[0].target, Target::Device);
                Ok(Value::Object(p.writes[0].fields.clone()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn the_documented_pin_hash() {
        // The formula's value for the docs' example (the docs print a different, unexplained one).
        assert_eq!(pin_hash("0000", SERIAL), "kFRc/skLylZUKACup2bPzjQDUII=");
    }

    #[test]
    fn locking_hashes_a_pin_and_keeps_a_hash() {
        assert_eq!(
            written(json!({"enabled": true, "pin": "0000", "temp_min": 18, "temp_max": 24.5}), None).unwrap(),
            json!({"temperature_lock": true, "temperature_lock_pin_hash": "kFRc/skLylZUKACup2bPzjQDUII=",
                   "temperature_lock_low_temp": 18.0, "temperature_lock_high_temp": 24.5})
        );
        assert_eq!(
            written(json!({"enabled": true, "pin_hash": "client-made=="}), None).unwrap(),
            json!({"temperature_lock": true, "temperature_lock_pin_hash": "client-made=="})
        );
        // Re-locking without a PIN keeps the stored hash; one bound is checked against the other.
        let device = json!({"temperature_lock_pin_hash": "old=", "temperature_lock_low_temp": 17.0,
                            "temperature_lock_high_temp": 23.0});
        let device = device.as_object().unwrap();
        assert_eq!(
            written(json!({"enabled": true, "temp_max": 22}), Some(device)).unwrap(),
            json!({"temperature_lock": true, "temperature_lock_pin_hash": "old=", "temperature_lock_high_temp": 22.0})
        );
        assert_eq!(
            written(json!({"enabled": true, "temp_max": 16}), Some(device)).unwrap_err(),
            "temp_min (17) must be below temp_max (16)"
        );
        // Clamped to the safety range.
        assert_eq!(
            written(json!({"enabled": true, "pin": "1234", "temp_min": -40, "temp_max": 99}), None).unwrap()["temperature_lock_high_temp"],
            json!(35.0)
        );
    }

    #[test]
    fn unlocking_always_clears() {
        let unlock = json!({"temperature_lock": false, "temperature_lock_pin_hash": ""});
        assert_eq!(written(json!({"enabled": false}), None).unwrap(), unlock);
        assert_eq!(written(json!({"enabled": false, "pin": "bad"}), None).unwrap(), unlock, "no PIN needed");
    }

    #[test]
    fn rejections() {
        let cases = [
            (json!(true), "set_lock value must be an object"),
            (json!({"pin": "1234"}), "set_lock needs \"enabled\": true or false"),
            (json!({"enabled": "yes"}), "set_lock needs \"enabled\""),
            (json!({"enabled": true}), "Locking needs a pin (4 digits) or a pin_hash"),
            (json!({"enabled": true, "pin": 1234}), "pin must be a string of 4 digits"),
            (json!({"enabled": true, "pin": "12345"}), "pin must be a string of 4 digits"),
            (json!({"enabled": true, "pin": "12a4"}), "pin must be a string of 4 digits"),
            (json!({"enabled": true, "pin": "1234", "pin_hash": "x"}), "Send pin or pin_hash, not both"),
            (json!({"enabled": true, "pin_hash": ""}), "pin_hash must be a non-empty string"),
            (json!({"enabled": true, "pin_hash": "x".repeat(129)}), "pin_hash must be a non-empty string"),
            (json!({"enabled": true, "pin": "1234", "temp_min": "18"}), "temp_min must be a number"),
            (json!({"enabled": true, "pin": "1234", "temp_min": 24, "temp_max": 18}), "temp_min (24) must be below"),
            (
                json!({"enabled": true, "code": "1234"}),
                "set_lock takes enabled, pin, pin_hash, temp_min, temp_max, not 'code'",
            ),
        ];
        for (value, expected) in cases {
            let message = written(value.clone(), None).unwrap_err();
            assert!(message.starts_with(expected), "{value}: {message}");
        }
        let no_serial = DeviceView::default();
        assert!(plan("set_lock", &json!({"enabled": true, "pin": "1234"}), no_serial).is_err());
    }
}
