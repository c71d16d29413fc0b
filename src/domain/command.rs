//! The command vocabulary shared by `/command`, MQTT and the web UI: pure validation that turns
//! a command and the device's current buckets into the fields to write.

use serde_json::{Map, Number, Value};

use super::bucket::Fields;

/// Setpoint bounds when the device reports none (45 °F and 95 °F).
pub const DEFAULT_MIN_C: f64 = 7.222;
pub const DEFAULT_MAX_C: f64 = 35.0;

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("Unknown command: {0}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

/// The buckets of one device that commands read.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeviceView<'a> {
    pub device: Option<&'a Fields>,
    pub shared: Option<&'a Fields>,
    pub schedule: Option<&'a Fields>,
    pub structure: Option<&'a Fields>,
    /// Unix seconds now (eco and fan fields are in seconds).
    pub now_s: i64,
}

impl DeviceView<'_> {
    /// A field from `shared`, falling back to `device`.
    fn get(&self, key: &str) -> Option<&Value> {
        self.shared.and_then(|s| s.get(key)).or_else(|| self.device.and_then(|d| d.get(key)))
    }

    fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64).filter(|f| f.is_finite())
    }

    /// The setpoint range the device allows: its own safety temperatures when it reports them.
    pub fn safety_bounds(&self) -> (f64, f64) {
        let device_number =
            |key: &str| self.device.and_then(|d| d.get(key)).and_then(Value::as_f64).filter(|f| f.is_finite());
        let low =
            device_number("lower_safety_temp").or_else(|| self.number("safety_temp_min")).unwrap_or(DEFAULT_MIN_C);
        let high =
            device_number("upper_safety_temp").or_else(|| self.number("safety_temp_max")).unwrap_or(DEFAULT_MAX_C);
        if low < high { (low, high) } else { (DEFAULT_MIN_C, DEFAULT_MAX_C) }
    }
}

/// Which bucket of the device a command writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Shared,
    Device,
    Schedule,
    /// The owner's structure (`structure.<id>`), resolved by the caller.
    Structure,
}

impl Target {
    pub fn key(self, serial: &str, structure_id: &str) -> String {
        match self {
            Target::Shared => format!("shared.{serial}"),
            Target::Device => format!("device.{serial}"),
            Target::Schedule => format!("schedule.{serial}"),
            Target::Structure => format!("structure.{structure_id}"),
        }
    }
}

/// One bucket write of a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub target: Target,
    pub fields: Fields,
    /// Replace the whole value instead of merging fields into it.
    pub replace: bool,
}

/// What a validated command writes: one or more buckets, committed and pushed together.
/// The first write is the one the reply echoes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
}

impl Plan {
    fn merge(target: Target, fields: Fields) -> Self {
        Self { writes: vec![Write { target, fields, replace: false }] }
    }
}

pub fn plan(command: &str, value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    match command {
        "set_temperature" => set_temperature(value, view),
        other => Err(CommandError::Unknown(other.to_string())),
    }
}

fn temperature(value: &Value, what: &str) -> Result<f64, CommandError> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| CommandError::Invalid(format!("{what} must be a finite number of degrees Celsius"))),
        other => Err(CommandError::Invalid(format!("{what} must be a number of degrees Celsius, got {}", kind(other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn celsius(f: f64) -> Value {
    // Rounded to what the device can show; a whole number still travels as a float (21.0).
    let rounded = (f * 1000.0).round() / 1000.0;
    Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

fn set_temperature(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    let (min, max) = view.safety_bounds();
    let clamp = |t: f64| t.clamp(min, max);
    let mut fields = Map::new();
    match value {
        Value::Object(range) => {
            let low = range.get("low").filter(|v| !v.is_null()).map(|v| temperature(v, "low")).transpose()?;
            let high = range.get("high").filter(|v| !v.is_null()).map(|v| temperature(v, "high")).transpose()?;
            if let Some(unknown) = range.keys().find(|k| *k != "low" && *k != "high") {
                return Err(CommandError::Invalid(format!("set_temperature takes 'low' and 'high', not '{unknown}'")));
            }
            if low.is_none() && high.is_none() {
                return Err(CommandError::Invalid("set_temperature needs 'low', 'high' or both".into()));
            }
            let low = low.map(clamp);
            let high = high.map(clamp);
            let effective_low = low.or_else(|| view.number("target_temperature_low"));
            let effective_high = high.or_else(|| view.number("target_temperature_high"));
            if let (Some(l), Some(h)) = (effective_low, effective_high) {
                if l >= h {
                    return Err(CommandError::Invalid(format!(
                        "low ({l}) must be below high ({h}); send both to move the range"
                    )));
                }
            }
            if let Some(h) = high {
                fields.insert("target_temperature_high".into(), celsius(h));
            }
            if let Some(l) = low {
                fields.insert("target_temperature_low".into(), celsius(l));
            }
        }
        other => {
            let t = temperature(other, "set_temperature value").map_err(|_| {
                CommandError::Invalid(format!(
                    "set_temperature value must be a number of degrees Celsius or {{\"low\": n, \"high\": n}}, got {}",
                    kind(other)
                ))
            })?;
            fields.insert("target_temperature".into(), celsius(clamp(t)));
        }
    }
    fields.insert("target_change_pending".into(), Value::Bool(true));
    Ok(Plan::merge(Target::Shared, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn scalar_setpoint_is_clamped_and_marks_pending() {
        let p = plan("set_temperature", &json!(50), DeviceView::default()).unwrap();
        assert_eq!(
            Value::Object(p.writes[0].fields.clone()),
            json!({"target_temperature": 35.0, "target_change_pending": true})
        );
        let p = plan("set_temperature", &json!(21), DeviceView::default()).unwrap();
        assert_eq!(
            serde_json::to_string(&p.writes[0].fields).unwrap(),
            r#"{"target_temperature":21.0,"target_change_pending":true}"#
        );
    }

    #[test]
    fn device_safety_temperatures_bound_the_setpoint() {
        let device = fields(json!({"lower_safety_temp": 10.0, "upper_safety_temp": 30.0}));
        let view = DeviceView { device: Some(&device), ..Default::default() };
        let p = plan("set_temperature", &json!(5), view).unwrap();
        assert_eq!(p.writes[0].fields["target_temperature"], json!(10.0));
    }

    #[test]
    fn invalid_values_are_rejected_with_a_reason() {
        for bad in [
            json!(null),
            json!("abc"),
            json!("21"),
            json!(true),
            json!([1]),
            json!({}),
            json!({"low": "x"}),
            json!({"mid": 3}),
        ] {
            let err = plan("set_temperature", &bad, DeviceView::default()).unwrap_err();
            assert!(matches!(err, CommandError::Invalid(_)), "{bad}");
        }
        assert_eq!(plan("nope", &json!(1), DeviceView::default()).unwrap_err(), CommandError::Unknown("nope".into()));
    }

    #[test]
    fn one_bound_is_checked_against_the_stored_other() {
        let shared = fields(json!({"target_temperature_low": 19.0, "target_temperature_high": 24.0}));
        let view = DeviceView { shared: Some(&shared), ..Default::default() };
        assert!(plan("set_temperature", &json!({"high": 18.0}), view).is_err());
        let p = plan("set_temperature", &json!({"high": 25.5}), view).unwrap();
        assert_eq!(
            Value::Object(p.writes[0].fields.clone()),
            json!({"target_temperature_high": 25.5, "target_change_pending": true})
        );
        assert!(plan("set_temperature", &json!({"low": 22, "high": 21}), DeviceView::default()).is_err());
    }
}
