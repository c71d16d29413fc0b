//! The command vocabulary shared by `/command`, MQTT and the web UI: pure validation that turns
//! a command and the device's current buckets into the fields to write.

use serde_json::{Map, Number, Value};

use super::bucket::Fields;
use super::schedule;

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
    /// The thermostat's serial (a lock PIN is hashed with it).
    pub serial: &'a str,
}

impl DeviceView<'_> {
    /// A field from `shared`, falling back to `device`.
    fn get(&self, key: &str) -> Option<&Value> {
        self.shared.and_then(|s| s.get(key)).or_else(|| self.device.and_then(|d| d.get(key)))
    }

    fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64).filter(|f| f.is_finite())
    }

    /// A capability flag from `shared`, falling back to `device`; `default` when neither has it.
    fn flag(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
            _ => default,
        }
    }

    /// A field of the `device` bucket only.
    fn device_field(&self, key: &str) -> Option<&Value> {
        self.device.and_then(|d| d.get(key))
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

    fn and_merge(mut self, target: Target, fields: Fields) -> Self {
        self.writes.push(Write { target, fields, replace: false });
        self
    }
}

pub fn plan(command: &str, value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    match command {
        "set_temperature" => set_temperature(value, view),
        "set_mode" => set_mode(value, view),
        "set_away" => set_away(value, view),
        "set_preset" => set_preset(value, view),
        "set_fan" => set_fan(value, view),
        "set_eco_temperatures" => set_eco_temperatures(value, view),
        "set_schedule" => set_schedule(value),
        "set_schedule_mode" => set_schedule_mode(value, view),
        "set_device_setting" => set_device_setting(value),
        "set_lock" => super::lock::set_lock(value, view),
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

/// A number as shown in a message: the number itself, otherwise what kind of value it was.
fn shown(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

/// A whole number (`30` or `30.0`), as an integer.
pub(crate) fn whole(v: &Value) -> Option<i64> {
    let Value::Number(n) = v else { return None };
    n.as_i64()
        .or_else(|| n.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
}

pub(crate) fn celsius(f: f64) -> Value {
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

const MODE_NAMES: &str = "off, heat, cool, heat-cool, heat_cool, range, auto, emergency";

fn set_mode(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    let Value::String(raw) = value else {
        return Err(CommandError::Invalid(format!(
            "set_mode value must be a string, one of: {MODE_NAMES}; got {}",
            kind(value)
        )));
    };
    let mode = match raw.trim().to_ascii_lowercase().as_str() {
        "off" => "off",
        "heat" => "heat",
        "cool" => "cool",
        "heat-cool" | "heat_cool" | "range" | "auto" => "range",
        "emergency" => "emergency",
        "eco" => {
            return Err(CommandError::Invalid(
                "Use set_away to control eco mode. 'eco' is not a valid target_temperature_type \u{2014} \
                 use manual_eco_all in the structure bucket instead."
                    .into(),
            ));
        }
        _ => return Err(CommandError::Invalid(format!("Unknown mode '{raw}'. Valid modes: {MODE_NAMES}"))),
    };
    let can_heat = view.flag("can_heat", true);
    let can_cool = view.flag("can_cool", true);
    let refusal = match mode {
        "heat" if !can_heat => Some("Device does not support heating (can_heat=false)"),
        "cool" if !can_cool => Some("Device does not support cooling (can_cool=false)"),
        "range" if !(can_heat && can_cool) => Some("Range mode requires both heating and cooling capability"),
        "emergency" if !view.flag("has_emer_heat", false) => {
            Some("Device does not have emergency heat (has_emer_heat=false)")
        }
        _ => None,
    };
    if let Some(message) = refusal {
        return Err(CommandError::Invalid(message.into()));
    }
    let mut fields = Map::new();
    fields.insert("target_temperature_type".into(), Value::from(mode));
    Ok(Plan::merge(Target::Shared, fields))
}

/// Eco ("away") is driven by `manual_eco_all`; leaving it also resets the device's eco state,
/// otherwise a stale `eco.mode: "manual-eco"` puts the thermostat straight back into eco.
fn set_away(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    let Value::Bool(enter) = value else {
        return Err(CommandError::Invalid(format!(
            "set_away value must be true (enter eco) or false (leave eco), got {}",
            kind(value)
        )));
    };
    let mut structure = Map::new();
    structure.insert("manual_eco_all".into(), Value::Bool(*enter));
    structure.insert("manual_eco_timestamp".into(), Value::from(view.now_s));
    if *enter {
        return Ok(Plan::merge(Target::Structure, structure));
    }
    structure.insert("away".into(), Value::Bool(false));
    let mut eco = view.device_field("eco").and_then(Value::as_object).cloned().unwrap_or_default();
    eco.insert("mode".into(), Value::from("schedule"));
    eco.insert("touched_by".into(), Value::from(3));
    eco.insert("mode_update_timestamp".into(), Value::from(view.now_s));
    let mut device = Map::new();
    device.insert("eco".into(), Value::Object(eco));
    Ok(Plan::merge(Target::Structure, structure).and_merge(Target::Device, device))
}

/// Home, away or eco (`none` is home). Away and eco enter the same manual eco as `set_away`;
/// which one was asked is remembered by the caller (`domain::preset`).
fn set_preset(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    let preset = value.as_str().and_then(super::preset::Preset::parse).ok_or_else(|| {
        CommandError::Invalid(format!(
            "set_preset value must be one of: home, away, eco, none; got {}",
            match value {
                Value::String(s) => format!("'{s}'"),
                other => kind(other).to_string(),
            }
        ))
    })?;
    set_away(&Value::Bool(preset != super::preset::Preset::Home), view)
}

const FAN_TIMER_SECONDS: std::ops::RangeInclusive<i64> = 60..=43_200;
const DEFAULT_FAN_MINUTES: f64 = 60.0;
const MAX_FAN_MINUTES: f64 = 1440.0;

fn set_fan(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    if !view.flag("has_fan", false) {
        return Err(CommandError::Invalid("Device does not have a fan (has_fan=false)".into()));
    }
    let invalid = || {
        CommandError::Invalid(format!(
            "set_fan value must be \"on\", \"auto\", \"off\" or a whole number of seconds from {} to {}, got {}",
            FAN_TIMER_SECONDS.start(),
            FAN_TIMER_SECONDS.end(),
            match value {
                Value::String(s) => format!("'{s}'"),
                other => shown(other),
            }
        ))
    };
    let mut fields = Map::new();
    match value {
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" => {
                let minutes = view
                    .device_field("fan_timer_duration_minutes")
                    .and_then(Value::as_f64)
                    .filter(|m| *m > 0.0 && *m <= MAX_FAN_MINUTES)
                    .unwrap_or(DEFAULT_FAN_MINUTES);
                let seconds = (minutes * 60.0).round() as i64;
                // The firmware starts a timer from both fields.
                fields.insert("fan_timer_timeout".into(), Value::from(view.now_s + seconds));
                fields.insert("fan_timer_duration".into(), Value::from(seconds));
            }
            "auto" | "off" => {
                fields.insert("fan_timer_timeout".into(), Value::from(0));
            }
            _ => return Err(invalid()),
        },
        Value::Number(_) => {
            let seconds = whole(value).filter(|n| FAN_TIMER_SECONDS.contains(n)).ok_or_else(invalid)?;
            fields.insert("fan_timer_timeout".into(), Value::from(view.now_s + seconds));
            fields.insert("fan_timer_duration".into(), Value::from(seconds));
        }
        _ => return Err(invalid()),
    }
    Ok(Plan::merge(Target::Device, fields))
}

fn set_eco_temperatures(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    let Value::Object(range) = value else {
        return Err(CommandError::Invalid(format!(
            "set_eco_temperatures value must be an object {{\"low\": n, \"high\": n}} in degrees Celsius, got {}",
            kind(value)
        )));
    };
    if let Some(unknown) = range.keys().find(|k| *k != "low" && *k != "high") {
        return Err(CommandError::Invalid(format!("set_eco_temperatures takes 'low' and 'high', not '{unknown}'")));
    }
    let low = range.get("low").filter(|v| !v.is_null()).map(|v| temperature(v, "low")).transpose()?;
    let high = range.get("high").filter(|v| !v.is_null()).map(|v| temperature(v, "high")).transpose()?;
    if low.is_none() && high.is_none() {
        return Err(CommandError::Invalid("set_eco_temperatures needs 'low', 'high' or both".into()));
    }
    let (min, max) = view.safety_bounds();
    let low = low.map(|t| t.clamp(min, max));
    let high = high.map(|t| t.clamp(min, max));
    let stored = |key: &str| view.device_field(key).and_then(Value::as_f64).filter(|f| f.is_finite());
    let effective_low = low.or_else(|| stored("away_temperature_low"));
    let effective_high = high.or_else(|| stored("away_temperature_high"));
    if let (Some(l), Some(h)) = (effective_low, effective_high) {
        if l >= h {
            return Err(CommandError::Invalid(format!(
                "eco low ({l}) must be below eco high ({h}); send both to move the range"
            )));
        }
    }
    let mut fields = Map::new();
    if let Some(l) = low {
        fields.insert("away_temperature_low".into(), celsius(l));
    }
    if let Some(h) = high {
        fields.insert("away_temperature_high".into(), celsius(h));
    }
    Ok(Plan::merge(Target::Device, fields))
}

/// Replaces the whole schedule and makes `shared.schedule_mode` agree with it: the device ignores
/// a schedule whose mode differs from the active one.
fn set_schedule(value: &Value) -> Result<Plan, CommandError> {
    let normalized = schedule::normalize(value).map_err(CommandError::Invalid)?;
    let mut shared = Map::new();
    if let Some(mode) = normalized.get("schedule_mode") {
        shared.insert("schedule_mode".into(), mode.clone());
    }
    Ok(Plan {
        writes: vec![
            Write { target: Target::Schedule, fields: normalized, replace: true },
            Write { target: Target::Shared, fields: shared, replace: false },
        ],
    })
}

fn set_schedule_mode(value: &Value, view: DeviceView<'_>) -> Result<Plan, CommandError> {
    let mode = schedule::parse_mode(value).ok_or_else(|| CommandError::Invalid(schedule::mode_error()))?;
    if let Some(stored) = view.schedule.and_then(schedule::declared_mode) {
        if stored != mode {
            return Err(CommandError::Invalid(format!(
                "The stored schedule is a {stored} schedule and the thermostat ignores a schedule whose mode \
                 differs from schedule_mode; push a {mode} schedule with set_schedule first"
            )));
        }
    }
    let mut fields = Map::new();
    fields.insert("schedule_mode".into(), Value::from(mode));
    Ok(Plan::merge(Target::Shared, fields))
}

/// How a cloud-writable device field is checked.
#[derive(Debug, Clone, Copy)]
enum Setting {
    Flag,
    /// Degrees Celsius, written as a float.
    Temperature,
    /// A whole number within `min..=max`; `unit` is only for messages.
    Whole {
        min: i64,
        max: i64,
        unit: &'static str,
    },
    /// One of these strings (any case), written as listed.
    Choice(&'static [&'static str]),
    Text,
    /// `"on"`/`"off"` (firmware writes a string) or a boolean, stored as sent.
    ClickSound,
}

/// Device-bucket fields the cloud may write (nest-protocol-reference §9.2), by firmware name.
const DEVICE_SETTINGS: &[(&str, Setting)] = &[
    ("away_temperature_high_enabled", Setting::Flag),
    ("away_temperature_low_enabled", Setting::Flag),
    ("upper_safety_temp_enabled", Setting::Flag),
    ("lower_safety_temp_enabled", Setting::Flag),
    ("temperature_lock", Setting::Flag),
    ("fan_cooling_enabled", Setting::Flag),
    ("auto_away_enable", Setting::Flag),
    ("learning_mode", Setting::Flag),
    ("preconditioning_enabled", Setting::Flag),
    ("sunlight_correction_enabled", Setting::Flag),
    ("target_humidity_enabled", Setting::Flag),
    ("filter_reminder_enabled", Setting::Flag),
    ("heat_pump_aux_threshold_enabled", Setting::Flag),
    ("heat_pump_comp_threshold_enabled", Setting::Flag),
    ("hot_water_active", Setting::Flag),
    ("should_wake_on_approach", Setting::Flag),
    ("radiant_control_enabled", Setting::Flag),
    ("away_temperature_high", Setting::Temperature),
    ("away_temperature_low", Setting::Temperature),
    ("upper_safety_temp", Setting::Temperature),
    ("lower_safety_temp", Setting::Temperature),
    ("temperature_lock_high_temp", Setting::Temperature),
    ("temperature_lock_low_temp", Setting::Temperature),
    ("heat_pump_aux_threshold", Setting::Temperature),
    ("heat_pump_comp_threshold", Setting::Temperature),
    ("target_humidity", Setting::Whole { min: 10, max: 60, unit: "percent" }),
    ("fan_duty_cycle", Setting::Whole { min: 0, max: 3600, unit: "seconds" }),
    ("fan_duty_start_time", Setting::Whole { min: 0, max: 86_400, unit: "seconds after midnight" }),
    ("fan_duty_end_time", Setting::Whole { min: 0, max: 86_400, unit: "seconds after midnight" }),
    ("fan_timer_duration", Setting::Whole { min: 0, max: 43_200, unit: "seconds" }),
    ("max_nighttime_preconditioning_seconds", Setting::Whole { min: 0, max: 86_400, unit: "seconds" }),
    ("filter_reminder_level", Setting::Whole { min: 0, max: 100, unit: "percent" }),
    ("hot_water_boost_time_to_end", Setting::Whole { min: 0, max: i64::MAX, unit: "Unix seconds" }),
    ("fan_timer_duration_minutes", Setting::Whole { min: 1, max: 1440, unit: "minutes" }),
    ("temperature_scale", Setting::Choice(&["C", "F"])),
    ("fan_mode", Setting::Choice(&["off", "auto", "duty-cycle"])),
    ("temperature_lock_pin_hash", Setting::Text),
    ("where_id", Setting::Text),
    ("click_sound", Setting::ClickSound),
];

/// Names the reference server accepts for lock fields, and the firmware names written instead.
const SETTING_ALIASES: &[(&str, &str)] = &[
    ("temp_lock_on", "temperature_lock"),
    ("temp_lock_pin_hash", "temperature_lock_pin_hash"),
    ("temp_lock_high_temp", "temperature_lock_high_temp"),
    ("temp_lock_low_temp", "temperature_lock_low_temp"),
];

/// The firmware name of a field a client may set, and how it is checked.
fn device_setting(name: &str) -> Option<(&'static str, Setting)> {
    let firmware = SETTING_ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, firmware)| *firmware);
    DEVICE_SETTINGS.iter().find(|(field, _)| *field == firmware).copied()
}

fn set_device_setting(value: &Value) -> Result<Plan, CommandError> {
    let settings = match value {
        Value::Object(settings) if !settings.is_empty() => settings,
        _ => {
            return Err(CommandError::Invalid(
                "set_device_setting value must be a JSON object of {field: value} pairs".into(),
            ));
        }
    };
    let mut refused: Vec<&str> =
        settings.keys().map(String::as_str).filter(|name| device_setting(name).is_none()).collect();
    if !refused.is_empty() {
        refused.sort_unstable();
        let accepted: Vec<&str> = DEVICE_SETTINGS.iter().map(|(field, _)| *field).collect();
        return Err(CommandError::Invalid(format!(
            "Fields not cloud-writable: {}. Device-only fields such as time_to_target and current_temperature \
             are written by the thermostat itself. Accepted fields: {}",
            refused.join(", "),
            accepted.join(", ")
        )));
    }
    let mut fields = Map::new();
    for (name, v) in settings {
        let Some((field, setting)) = device_setting(name) else { continue };
        if fields.contains_key(field) {
            let first = settings
                .keys()
                .find(|other| device_setting(other).is_some_and(|(f, _)| f == field))
                .map_or(field, String::as_str);
            return Err(CommandError::Invalid(format!("{first} and {name} both set {field}; send only {field}")));
        }
        fields.insert(field.into(), setting_value(name, setting, v)?);
    }
    Ok(Plan::merge(Target::Device, fields))
}

fn setting_value(name: &str, setting: Setting, v: &Value) -> Result<Value, CommandError> {
    let invalid = |expected: String| CommandError::Invalid(format!("{name} must be {expected}"));
    match setting {
        Setting::Flag => match v {
            Value::Bool(_) => Ok(v.clone()),
            other => Err(invalid(format!("true or false, got {}", kind(other)))),
        },
        Setting::Temperature => temperature(v, name).map(celsius),
        Setting::Whole { min, max, unit } => {
            whole(v).filter(|n| (min..=max).contains(n)).map(Value::from).ok_or_else(|| {
                if max == i64::MAX {
                    invalid(format!("a whole number of {unit}, {min} or more, got {}", shown(v)))
                } else {
                    invalid(format!("a whole number of {unit} from {min} to {max}, got {}", shown(v)))
                }
            })
        }
        Setting::Choice(options) => v
            .as_str()
            .and_then(|s| options.iter().find(|o| o.eq_ignore_ascii_case(s.trim())))
            .map(|o| Value::from(*o))
            .ok_or_else(|| invalid(format!("one of: {}", options.join(", ")))),
        Setting::Text => match v {
            Value::String(_) => Ok(v.clone()),
            other => Err(invalid(format!("a string, got {}", kind(other)))),
        },
        Setting::ClickSound => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::String(s) if matches!(s.trim().to_ascii_lowercase().as_str(), "on" | "off") => {
                Ok(Value::from(s.trim().to_ascii_lowercase()))
            }
            _ => Err(invalid("\"on\", \"off\", true or false".into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    const NOW: i64 = 1_750_000_000;

    fn view<'a>(device: Option<&'a Fields>, shared: Option<&'a Fields>) -> DeviceView<'a> {
        DeviceView { device, shared, now_s: NOW, ..Default::default() }
    }

    fn only(p: &Plan) -> (Target, Value) {
        assert_eq!(p.writes.len(), 1, "{p:?}");
        assert!(!p.writes[0].replace);
        (p.writes[0].target, Value::Object(p.writes[0].fields.clone()))
    }

    fn invalid(command: &str, value: Value, view: DeviceView<'_>) -> String {
        match plan(command, &value, view) {
            Err(CommandError::Invalid(message)) => message,
            other => panic!("{command} {value}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn set_mode_accepts_aliases_and_writes_the_stored_form() {
        for (sent, stored) in [
            ("off", "off"),
            ("HEAT", "heat"),
            (" cool ", "cool"),
            ("heat-cool", "range"),
            ("heat_cool", "range"),
            ("Range", "range"),
            ("auto", "range"),
        ] {
            let p = plan("set_mode", &json!(sent), DeviceView::default()).unwrap();
            assert_eq!(only(&p), (Target::Shared, json!({"target_temperature_type": stored})), "{sent}");
        }
        let device = fields(json!({"has_emer_heat": true}));
        let p = plan("set_mode", &json!("emergency"), view(Some(&device), None)).unwrap();
        assert_eq!(only(&p), (Target::Shared, json!({"target_temperature_type": "emergency"})));
    }

    #[test]
    fn set_mode_rejections() {
        assert_eq!(
            invalid("set_mode", json!("Eco"), DeviceView::default()),
            "Use set_away to control eco mode. 'eco' is not a valid target_temperature_type \u{2014} use \
             manual_eco_all in the structure bucket instead."
        );
        assert_eq!(
            invalid("set_mode", json!("warm"), DeviceView::default()),
            "Unknown mode 'warm'. Valid modes: off, heat, cool, heat-cool, heat_cool, range, auto, emergency"
        );
        for bad in [json!(null), json!(1), json!(true), json!(["heat"])] {
            assert!(invalid("set_mode", bad, DeviceView::default()).starts_with("set_mode value must be a string"));
        }
        let cool_only = fields(json!({"can_heat": false, "can_cool": true}));
        let v = view(None, Some(&cool_only));
        assert_eq!(invalid("set_mode", json!("heat"), v), "Device does not support heating (can_heat=false)");
        assert_eq!(invalid("set_mode", json!("auto"), v), "Range mode requires both heating and cooling capability");
        assert!(plan("set_mode", &json!("cool"), v).is_ok());
        assert!(plan("set_mode", &json!("off"), v).is_ok());
        // Shared wins over device; device is the fallback.
        let device = fields(json!({"can_cool": false, "can_heat": false}));
        let shared = fields(json!({"can_heat": true}));
        let v = view(Some(&device), Some(&shared));
        assert!(plan("set_mode", &json!("heat"), v).is_ok());
        assert_eq!(invalid("set_mode", json!("cool"), v), "Device does not support cooling (can_cool=false)");
        assert_eq!(
            invalid("set_mode", json!("emergency"), DeviceView::default()),
            "Device does not have emergency heat (has_emer_heat=false)"
        );
    }

    #[test]
    fn set_away_enters_eco_on_the_structure() {
        let p = plan("set_away", &json!(true), view(None, None)).unwrap();
        assert_eq!(only(&p), (Target::Structure, json!({"manual_eco_all": true, "manual_eco_timestamp": NOW})));
        for bad in [json!("true"), json!(1), json!(null), json!({})] {
            assert!(invalid("set_away", bad, DeviceView::default()).starts_with("set_away value must be true"));
        }
    }

    #[test]
    fn set_preset_enters_and_leaves_manual_eco_like_set_away() {
        let device = fields(json!({"eco": {"mode": "manual-eco"}}));
        let v = view(Some(&device), None);
        for preset in ["away", "eco", "ECO"] {
            assert_eq!(plan("set_preset", &json!(preset), v), plan("set_away", &json!(true), v), "{preset}");
        }
        for preset in ["home", "none"] {
            assert_eq!(plan("set_preset", &json!(preset), v), plan("set_away", &json!(false), v), "{preset}");
        }
        assert_eq!(
            invalid("set_preset", json!("sleep"), v),
            "set_preset value must be one of: home, away, eco, none; got 'sleep'"
        );
        assert!(invalid("set_preset", json!(true), v).ends_with("got a boolean"));
    }

    #[test]
    fn leaving_eco_writes_structure_and_device_in_one_plan() {
        let device = fields(json!({"eco": {"mode": "manual-eco", "leaf": true, "touched_by": 1}}));
        let p = plan("set_away", &json!(false), view(Some(&device), None)).unwrap();
        assert_eq!(p.writes.len(), 2);
        assert_eq!(p.writes[0].target, Target::Structure);
        assert_eq!(
            Value::Object(p.writes[0].fields.clone()),
            json!({"manual_eco_all": false, "manual_eco_timestamp": NOW, "away": false})
        );
        assert_eq!(p.writes[1].target, Target::Device);
        assert!(!p.writes[0].replace && !p.writes[1].replace);
        assert_eq!(
            serde_json::to_string(&p.writes[1].fields).unwrap(),
            format!(r#"{{"eco":{{"mode":"schedule","leaf":true,"touched_by":3,"mode_update_timestamp":{NOW}}}}}"#)
        );
        // No stored eco object (or a malformed one): start from an empty one.
        for device in [fields(json!({})), fields(json!({"eco": "manual-eco"}))] {
            let p = plan("set_away", &json!(false), view(Some(&device), None)).unwrap();
            assert_eq!(
                Value::Object(p.writes[1].fields.clone()),
                json!({"eco": {"mode": "schedule", "touched_by": 3, "mode_update_timestamp": NOW}})
            );
        }
    }

    #[test]
    fn set_fan_timers() {
        let device = fields(json!({"has_fan": true}));
        let v = view(Some(&device), None);
        let p = plan("set_fan", &json!("ON"), v).unwrap();
        assert_eq!(only(&p), (Target::Device, json!({"fan_timer_timeout": NOW + 3600, "fan_timer_duration": 3600})));
        for stop in ["auto", "Off"] {
            let p = plan("set_fan", &json!(stop), v).unwrap();
            assert_eq!(only(&p), (Target::Device, json!({"fan_timer_timeout": 0})));
        }
        let p = plan("set_fan", &json!(900), v).unwrap();
        assert_eq!(only(&p), (Target::Device, json!({"fan_timer_timeout": NOW + 900, "fan_timer_duration": 900})));
        let p = plan("set_fan", &json!(43200.0), v).unwrap();
        assert_eq!(only(&p), (Target::Device, json!({"fan_timer_timeout": NOW + 43200, "fan_timer_duration": 43200})));
        assert!(plan("set_fan", &json!(60), v).is_ok());

        // The preferred duration, when sane.
        let device = fields(json!({"has_fan": true, "fan_timer_duration_minutes": 15}));
        let p = plan("set_fan", &json!("on"), view(Some(&device), None)).unwrap();
        assert_eq!(only(&p).1, json!({"fan_timer_timeout": NOW + 900, "fan_timer_duration": 900}));
        for odd in [json!(0), json!(-5), json!(2000), json!("15")] {
            let device = fields(json!({"has_fan": true, "fan_timer_duration_minutes": odd}));
            let p = plan("set_fan", &json!("on"), view(Some(&device), None)).unwrap();
            assert_eq!(only(&p).1, json!({"fan_timer_timeout": NOW + 3600, "fan_timer_duration": 3600}), "{odd}");
        }
    }

    #[test]
    fn set_fan_rejections() {
        assert_eq!(
            invalid("set_fan", json!("on"), DeviceView::default()),
            "Device does not have a fan (has_fan=false)"
        );
        let no_fan = fields(json!({"has_fan": false}));
        let has_fan = fields(json!({"has_fan": true}));
        assert_eq!(
            invalid("set_fan", json!("on"), view(Some(&has_fan), Some(&no_fan))),
            "Device does not have a fan (has_fan=false)"
        );
        let v = view(Some(&has_fan), None);
        assert_eq!(
            invalid("set_fan", json!(59), v),
            "set_fan value must be \"on\", \"auto\", \"off\" or a whole number of seconds from 60 to 43200, got 59"
        );
        for bad in [
            json!(true),
            json!(false),
            json!(90.5),
            json!(43201),
            json!(-60),
            json!("start"),
            json!("900"),
            json!(null),
            json!({}),
        ] {
            assert!(invalid("set_fan", bad.clone(), v).starts_with("set_fan value must be"), "{bad}");
        }
    }

    #[test]
    fn set_eco_temperatures_clamps_and_checks_order() {
        let device = fields(json!({"away_temperature_low": 10.0, "away_temperature_high": 28.0}));
        let v = view(Some(&device), None);
        let p = plan("set_eco_temperatures", &json!({"low": 12, "high": 27.5}), v).unwrap();
        assert_eq!(only(&p), (Target::Device, json!({"away_temperature_low": 12.0, "away_temperature_high": 27.5})));
        assert_eq!(
            serde_json::to_string(&p.writes[0].fields).unwrap(),
            r#"{"away_temperature_low":12.0,"away_temperature_high":27.5}"#
        );
        let p = plan("set_eco_temperatures", &json!({"high": 99}), v).unwrap();
        assert_eq!(only(&p).1, json!({"away_temperature_high": 35.0}));
        let p = plan("set_eco_temperatures", &json!({"low": -10}), v).unwrap();
        assert_eq!(only(&p).1, json!({"away_temperature_low": DEFAULT_MIN_C}));
        // The missing bound comes from the stored one.
        assert_eq!(
            invalid("set_eco_temperatures", json!({"low": 29}), v),
            "eco low (29) must be below eco high (28); send both to move the range"
        );
        assert!(invalid("set_eco_temperatures", json!({"high": 9}), v).starts_with("eco low (10)"));
        // Both clamped to the same bound.
        assert!(plan("set_eco_temperatures", &json!({"low": 40, "high": 50}), v).is_err());
    }

    #[test]
    fn set_eco_temperatures_rejections() {
        let d = DeviceView::default();
        assert_eq!(
            invalid("set_eco_temperatures", json!(20), d),
            "set_eco_temperatures value must be an object {\"low\": n, \"high\": n} in degrees Celsius, got a number"
        );
        assert!(invalid("set_eco_temperatures", json!("low"), d).ends_with("got a string"));
        assert_eq!(invalid("set_eco_temperatures", json!({}), d), "set_eco_temperatures needs 'low', 'high' or both");
        assert_eq!(
            invalid("set_eco_temperatures", json!({"low": 10, "mid": 3}), d),
            "set_eco_temperatures takes 'low' and 'high', not 'mid'"
        );
        assert_eq!(
            invalid("set_eco_temperatures", json!({"low": "10"}), d),
            "low must be a number of degrees Celsius, got a string"
        );
    }

    #[test]
    fn set_schedule_replaces_the_bucket_and_aligns_shared() {
        let sent = json!({"ver": 2, "schedule_mode": "cool", "name": "Summer",
                          "days": {"0": [{"type": "COOL", "time": 3600, "temp": 25}]}});
        let p = plan("set_schedule", &sent, DeviceView::default()).unwrap();
        assert_eq!(p.writes.len(), 2);
        assert_eq!(p.writes[0].target, Target::Schedule);
        assert!(p.writes[0].replace);
        assert_eq!(p.writes[0].fields["schedule_mode"], json!("COOL"));
        assert_eq!(
            p.writes[0].fields["days"]["0"],
            json!({"0": {"type": "COOL", "time": 3600, "entry_type": "setpoint", "temp": 25.0}})
        );
        assert_eq!(p.writes[1].target, Target::Shared);
        assert!(!p.writes[1].replace);
        assert_eq!(Value::Object(p.writes[1].fields.clone()), json!({"schedule_mode": "COOL"}));
        assert_eq!(invalid("set_schedule", json!(1), DeviceView::default()), "Schedule must be a JSON object");
        assert_eq!(
            invalid(
                "set_schedule",
                json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": [{"type": "COOL", "time": 0, "temp": 20}]}}),
                DeviceView::default()
            ),
            "Day '0' entry 0: invalid type 'COOL' (this is a HEAT schedule)"
        );
    }

    #[test]
    fn set_schedule_mode_must_match_the_stored_schedule() {
        let p = plan("set_schedule_mode", &json!("range"), DeviceView::default()).unwrap();
        assert_eq!(only(&p), (Target::Shared, json!({"schedule_mode": "RANGE"})));
        for bad in [json!("eco"), json!(1), json!(null)] {
            assert_eq!(
                invalid("set_schedule_mode", bad, DeviceView::default()),
                "schedule_mode must be one of: HEAT, COOL, RANGE"
            );
        }
        let stored = fields(json!({"ver": 2, "schedule_mode": "HEAT", "days": {}}));
        let v = DeviceView { schedule: Some(&stored), ..Default::default() };
        assert!(plan("set_schedule_mode", &json!("heat"), v).is_ok());
        assert_eq!(
            invalid("set_schedule_mode", json!("COOL"), v),
            "The stored schedule is a HEAT schedule and the thermostat ignores a schedule whose mode differs \
             from schedule_mode; push a COOL schedule with set_schedule first"
        );
    }

    #[test]
    fn set_device_setting_writes_checked_firmware_fields() {
        let p = plan(
            "set_device_setting",
            &json!({
                "temp_lock_on": true, "temp_lock_pin_hash": "abc", "temp_lock_high_temp": 24,
                "temp_lock_low_temp": 18.5, "target_humidity": 45, "temperature_scale": "f",
                "fan_mode": "Duty-Cycle", "click_sound": "off", "fan_duty_cycle": 1800.0,
                "hot_water_boost_time_to_end": 1750003600_i64, "fan_timer_duration_minutes": 30,
                "where_id": "00000000-0000-0000-0000-000100000006", "learning_mode": false
            }),
            DeviceView::default(),
        )
        .unwrap();
        let (target, written) = only(&p);
        assert_eq!(target, Target::Device);
        assert_eq!(
            written,
            json!({
                "temperature_lock": true, "temperature_lock_pin_hash": "abc", "temperature_lock_high_temp": 24.0,
                "temperature_lock_low_temp": 18.5, "target_humidity": 45, "temperature_scale": "F",
                "fan_mode": "duty-cycle", "click_sound": "off", "fan_duty_cycle": 1800,
                "hot_water_boost_time_to_end": 1750003600_i64, "fan_timer_duration_minutes": 30,
                "where_id": "00000000-0000-0000-0000-000100000006", "learning_mode": false
            })
        );
        let keys: Vec<&String> = p.writes[0].fields.keys().collect();
        assert_eq!(keys[0], "temperature_lock");
        let p =
            plan("set_device_setting", &json!({"click_sound": true, "upper_safety_temp": 35}), DeviceView::default())
                .unwrap();
        assert_eq!(
            serde_json::to_string(&p.writes[0].fields).unwrap(),
            r#"{"click_sound":true,"upper_safety_temp":35.0}"#
        );
    }

    #[test]
    fn set_device_setting_rejections() {
        let d = DeviceView::default();
        for bad in [json!({}), json!([]), json!("learning_mode"), json!(null)] {
            assert_eq!(
                invalid("set_device_setting", bad, d),
                "set_device_setting value must be a JSON object of {field: value} pairs"
            );
        }
        let message = invalid(
            "set_device_setting",
            json!({"time_to_target": 5, "learning_mode": true, "current_temperature": 3}),
            d,
        );
        assert!(
            message.starts_with(
                "Fields not cloud-writable: current_temperature, time_to_target. Device-only fields such as \
                 time_to_target and current_temperature are written by the thermostat itself. Accepted fields: \
                 away_temperature_high_enabled, "
            ),
            "{message}"
        );
        let cases = [
            (json!({"learning_mode": "yes"}), "learning_mode must be true or false, got a string"),
            (json!({"temp_lock_on": 1}), "temp_lock_on must be true or false, got a number"),
            (
                json!({"upper_safety_temp": "hot"}),
                "upper_safety_temp must be a number of degrees Celsius, got a string",
            ),
            (json!({"target_humidity": 70}), "target_humidity must be a whole number of percent from 10 to 60, got 70"),
            (
                json!({"target_humidity": 40.5}),
                "target_humidity must be a whole number of percent from 10 to 60, got 40.5",
            ),
            (
                json!({"fan_duty_cycle": 3601}),
                "fan_duty_cycle must be a whole number of seconds from 0 to 3600, got 3601",
            ),
            (
                json!({"fan_duty_end_time": -1}),
                "fan_duty_end_time must be a whole number of seconds after midnight from 0 to 86400, got -1",
            ),
            (
                json!({"fan_timer_duration": 43201}),
                "fan_timer_duration must be a whole number of seconds from 0 to 43200, got 43201",
            ),
            (
                json!({"max_nighttime_preconditioning_seconds": true}),
                "max_nighttime_preconditioning_seconds must be a whole number of seconds from 0 to 86400, got a boolean",
            ),
            (
                json!({"filter_reminder_level": 101}),
                "filter_reminder_level must be a whole number of percent from 0 to 100, got 101",
            ),
            (
                json!({"hot_water_boost_time_to_end": -5}),
                "hot_water_boost_time_to_end must be a whole number of Unix seconds, 0 or more, got -5",
            ),
            (
                json!({"fan_timer_duration_minutes": 0}),
                "fan_timer_duration_minutes must be a whole number of minutes from 1 to 1440, got 0",
            ),
            (json!({"temperature_scale": "K"}), "temperature_scale must be one of: C, F"),
            (json!({"fan_mode": "on"}), "fan_mode must be one of: off, auto, duty-cycle"),
            (json!({"where_id": 5}), "where_id must be a string, got a number"),
            (json!({"temp_lock_pin_hash": null}), "temp_lock_pin_hash must be a string, got null"),
            (json!({"click_sound": "loud"}), "click_sound must be \"on\", \"off\", true or false"),
            (
                json!({"temp_lock_on": true, "temperature_lock": false}),
                "temp_lock_on and temperature_lock both set temperature_lock; send only temperature_lock",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(invalid("set_device_setting", value.clone(), d), expected, "{value}");
        }
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
