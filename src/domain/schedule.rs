//! Weekly schedules (`schedule.<serial>`): validation of what a client sends and the canonical,
//! device-native form that replaces the bucket.
//!
//! Canonical form: `{"ver": 2, "name": "...", "schedule_mode": "HEAT", "days": {"0": {...}, ..., "6": {...}}}`
//! with the days that were sent (0 = Monday) in day order and each day's setpoints keyed `"0"`,
//! `"1"`, ... in ascending time order. Days not sent are not added: the device replaces the whole
//! schedule either way, and clients read a cleared schedule (`"days": {}`) back as sent.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::bucket::Fields;
use super::command::{celsius, whole};

/// Schedule modes, upper case as the device writes them.
pub const MODES: [&str; 3] = ["HEAT", "COOL", "RANGE"];
/// The device keeps at most this many setpoints per day.
pub const MAX_SETPOINTS_PER_DAY: usize = 96;
/// Setpoint range the firmware recommends for schedule entries, °C.
pub const MIN_SETPOINT_C: f64 = 4.5;
pub const MAX_SETPOINT_C: f64 = 32.0;
/// Last second of a day a setpoint may start at.
pub const LAST_SECOND: i64 = 86_399;

/// Entry keys the device itself adds, kept as sent after the canonical ones.
const KEPT_ENTRY_KEYS: [&str; 3] = ["touched_at", "touched_by", "touched_tzo"];

/// The message for a missing or unknown schedule mode.
pub fn mode_error() -> String {
    format!("schedule_mode must be one of: {}", MODES.join(", "))
}

/// The schedule mode a value names (`"heat"`, `" Range "`), in upper case.
pub fn parse_mode(value: &Value) -> Option<&'static str> {
    let name = value.as_str()?.trim();
    MODES.into_iter().find(|m| m.eq_ignore_ascii_case(name))
}

/// The mode a schedule declares: `schedule_mode`, or `mode` when that is absent or empty.
pub fn declared_mode(schedule: &Fields) -> Option<&'static str> {
    declared(schedule).and_then(parse_mode)
}

fn declared(schedule: &Fields) -> Option<&Value> {
    schedule.get("schedule_mode").filter(|v| !v.is_null() && v.as_str() != Some("")).or_else(|| schedule.get("mode"))
}

/// Validate a schedule a client sent and return the canonical bucket value.
/// The first problem found is returned as a message for the client.
pub fn normalize(value: &Value) -> Result<Fields, String> {
    let Value::Object(schedule) = value else {
        return Err("Schedule must be a JSON object".into());
    };
    if schedule.get("ver").and_then(Value::as_f64) != Some(2.0) {
        return Err("Schedule ver must be 2".into());
    }
    let mode = declared_mode(schedule).ok_or_else(mode_error)?;
    let Some(Value::Object(days)) = schedule.get("days") else {
        return Err("Schedule must contain a 'days' object".into());
    };
    let mut normalized: [Option<Fields>; 7] = Default::default();
    for (key, day) in days {
        let index =
            day_index(key).ok_or_else(|| format!("Invalid day key '{key}' (must be '0'-'6', Monday-Sunday)"))?;
        normalized[index] = Some(normalize_day(key, day, mode)?);
    }

    let mut out = Map::new();
    out.insert("ver".into(), Value::from(2));
    let name = schedule.get("name").and_then(Value::as_str).unwrap_or_default();
    out.insert("name".into(), Value::from(name));
    out.insert("schedule_mode".into(), Value::from(mode));
    let days: Fields =
        normalized.into_iter().enumerate().filter_map(|(i, day)| Some((i.to_string(), Value::Object(day?)))).collect();
    out.insert("days".into(), Value::Object(days));
    Ok(out)
}

fn day_index(key: &str) -> Option<usize> {
    match key.as_bytes() {
        [digit @ b'0'..=b'6'] => Some(usize::from(digit - b'0')),
        _ => None,
    }
}

/// The setpoints of one day, sorted by time and keyed `"0"`, `"1"`, ...
fn normalize_day(key: &str, day: &Value, mode: &'static str) -> Result<Fields, String> {
    // (label used in messages, entry), in the order the client meant them.
    let entries: Vec<(String, &Value)> = match day {
        Value::Array(list) => list.iter().enumerate().map(|(i, entry)| (i.to_string(), entry)).collect(),
        Value::Object(map) => {
            let mut indexed = Vec::with_capacity(map.len());
            for (entry_key, entry) in map {
                let index = entry_index(entry_key)
                    .ok_or_else(|| format!("Day '{key}' entry key '{entry_key}' must be an index ('0', '1', ...)"))?;
                indexed.push((index, entry_key.clone(), entry));
            }
            indexed.sort_by_key(|(index, _, _)| *index);
            indexed.into_iter().map(|(_, label, entry)| (label, entry)).collect()
        }
        _ => return Err(format!("Day '{key}' must be a list or dict of setpoints")),
    };
    if entries.len() > MAX_SETPOINTS_PER_DAY {
        return Err(format!(
            "Day '{key}' has {} setpoints; at most {MAX_SETPOINTS_PER_DAY} are allowed",
            entries.len()
        ));
    }
    let mut by_time = BTreeMap::new();
    for (label, entry) in entries {
        let (time, fields) = normalize_entry(entry, mode).map_err(|e| format!("Day '{key}' entry {label}: {e}"))?;
        if by_time.contains_key(&time) {
            return Err(format!("Day '{key}' entry {label}: another setpoint of this day is already at time {time}"));
        }
        by_time.insert(time, fields);
    }
    Ok(by_time.into_values().enumerate().map(|(i, entry)| (i.to_string(), Value::Object(entry))).collect())
}

fn entry_index(key: &str) -> Option<usize> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok()
}

fn normalize_entry(entry: &Value, mode: &'static str) -> Result<(i64, Fields), String> {
    let Value::Object(entry) = entry else {
        return Err("must be an object".into());
    };
    let time = entry.get("time").ok_or("missing 'time'")?;
    let time = whole(time).filter(|t| (0..=LAST_SECOND).contains(t)).ok_or("time must be 0-86399")?;
    let kind = entry.get("type").ok_or("missing 'type'")?;
    if !kind.as_str().is_some_and(|k| k.trim().eq_ignore_ascii_case(mode)) {
        let shown = kind.as_str().map_or_else(|| kind.to_string(), str::to_string);
        return Err(format!("invalid type '{shown}' (this is a {mode} schedule)"));
    }
    let entry_type = match entry.get("entry_type") {
        None | Some(Value::Null) => "setpoint",
        Some(v) => match v.as_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("setpoint") => "setpoint",
            Some("continuation") => "continuation",
            _ => return Err("entry_type must be 'setpoint' or 'continuation'".into()),
        },
    };

    let mut out = Map::new();
    out.insert("type".into(), Value::from(mode));
    out.insert("time".into(), Value::from(time));
    out.insert("entry_type".into(), Value::from(entry_type));
    if mode == "RANGE" {
        let min = setpoint(entry, "temp-min", mode)?;
        let max = setpoint(entry, "temp-max", mode)?;
        if min >= max {
            return Err(format!("temp-min ({min:?}) must be below temp-max ({max:?})"));
        }
        out.insert("temp-min".into(), celsius(min));
        out.insert("temp-max".into(), celsius(max));
    } else {
        out.insert("temp".into(), celsius(setpoint(entry, "temp", mode)?));
    }
    for key in KEPT_ENTRY_KEYS {
        if let Some(v) = entry.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    Ok((time, out))
}

fn setpoint(entry: &Fields, name: &str, mode: &str) -> Result<f64, String> {
    let value = entry.get(name).ok_or_else(|| format!("{mode} requires '{name}'"))?;
    let t = value
        .as_f64()
        .filter(|t| t.is_finite())
        .ok_or_else(|| format!("{name} must be a number of degrees Celsius"))?;
    if !(MIN_SETPOINT_C..=MAX_SETPOINT_C).contains(&t) {
        return Err(format!("{name}={t:?} outside {MIN_SETPOINT_C:?}-{MAX_SETPOINT_C:?}C"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn heat(time: i64, temp: f64) -> Value {
        json!({"type": "HEAT", "time": time, "temp": temp})
    }

    fn err(v: Value) -> String {
        normalize(&v).unwrap_err()
    }

    #[test]
    fn list_days_are_sorted_keyed_and_only_the_days_sent_kept() {
        let out = normalize(&json!({
            "ver": 2, "name": "Week", "schedule_mode": "heat", "extra": 1,
            "days": {"2": [heat(64800, 18.5), {"type": "heat", "time": 25200, "temp": 21}]}
        }))
        .unwrap();
        assert_eq!(
            Value::Object(out.clone()),
            json!({"ver": 2, "name": "Week", "schedule_mode": "HEAT", "days": {
                "2": {
                    "0": {"type": "HEAT", "time": 25200, "entry_type": "setpoint", "temp": 21.0},
                    "1": {"type": "HEAT", "time": 64800, "entry_type": "setpoint", "temp": 18.5}
                }
            }})
        );
        // Key order and float temperatures on the wire.
        let text = serde_json::to_string(&out).unwrap();
        assert!(text.starts_with(r#"{"ver":2,"name":"Week","schedule_mode":"HEAT","days":{"2":{"0":{"type":"HEAT","time":25200,"entry_type":"setpoint","temp":21.0}"#), "{text}");
    }

    #[test]
    fn dict_days_are_read_in_numeric_key_order_and_keep_device_keys() {
        let out = normalize(&json!({
            "ver": 2, "mode": "COOL",
            "days": {"6": {
                "10": {"type": "COOL", "time": 3600, "temp": 26.0},
                "2": {"type": "COOL", "time": 7200, "entry_type": "continuation", "temp": 25.25,
                      "touched_by": 1, "touched_at": 1700000000, "touched_tzo": -18000, "junk": true},
                "0": {"type": "COOL", "time": 0, "temp": 24.1234}
            }}
        }))
        .unwrap();
        assert_eq!(out["name"], json!(""));
        assert_eq!(out["schedule_mode"], json!("COOL"));
        assert_eq!(
            out["days"]["6"],
            json!({
                "0": {"type": "COOL", "time": 0, "entry_type": "setpoint", "temp": 24.123},
                "1": {"type": "COOL", "time": 3600, "entry_type": "setpoint", "temp": 26.0},
                "2": {"type": "COOL", "time": 7200, "entry_type": "continuation", "temp": 25.25,
                      "touched_at": 1700000000, "touched_by": 1, "touched_tzo": -18000}
            })
        );
        // Extra keys come after the canonical ones, in a fixed order.
        let keys: Vec<&str> = out["days"]["6"]["2"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["type", "time", "entry_type", "temp", "touched_at", "touched_by", "touched_tzo"]);
        assert_eq!(
            err(json!({"ver": 2, "mode": "COOL", "days": {"0": {"a": {"type": "COOL", "time": 0, "temp": 25}}}})),
            "Day '0' entry key 'a' must be an index ('0', '1', ...)"
        );
    }

    #[test]
    fn a_cleared_schedule_stays_as_sent() {
        let out = normalize(&json!({"ver": 2, "schedule_mode": "HEAT", "days": {}})).unwrap();
        assert_eq!(out["days"], json!({}));
        let out = normalize(&json!({"ver": 2.0, "schedule_mode": "", "mode": "range", "days": {"3": []}})).unwrap();
        assert_eq!(out["schedule_mode"], json!("RANGE"));
        assert_eq!(out["days"]["3"], json!({}));
    }

    #[test]
    fn range_entries_need_an_ordered_pair_within_bounds() {
        let days = |entry: Value| json!({"ver": 2, "schedule_mode": "RANGE", "days": {"1": [entry]}});
        let out = normalize(&days(json!({"type": "range", "time": 100, "temp-min": 19, "temp-max": 24.5}))).unwrap();
        assert_eq!(
            out["days"]["1"]["0"],
            json!({"type": "RANGE", "time": 100, "entry_type": "setpoint", "temp-min": 19.0, "temp-max": 24.5})
        );
        assert_eq!(
            err(days(json!({"type": "RANGE", "time": 1, "temp-max": 24}))),
            "Day '1' entry 0: RANGE requires 'temp-min'"
        );
        assert_eq!(
            err(days(json!({"type": "RANGE", "time": 1, "temp-min": 20}))),
            "Day '1' entry 0: RANGE requires 'temp-max'"
        );
        assert_eq!(
            err(days(json!({"type": "RANGE", "time": 1, "temp-min": 40, "temp-max": 41}))),
            "Day '1' entry 0: temp-min=40.0 outside 4.5-32.0C"
        );
        assert_eq!(
            err(days(json!({"type": "RANGE", "time": 1, "temp-min": 22, "temp-max": 20}))),
            "Day '1' entry 0: temp-min (22.0) must be below temp-max (20.0)"
        );
        assert_eq!(
            err(days(json!({"type": "RANGE", "time": 1, "temp": 21}))),
            "Day '1' entry 0: RANGE requires 'temp-min'"
        );
        assert_eq!(err(days(heat(1, 20.0))), "Day '1' entry 0: invalid type 'HEAT' (this is a RANGE schedule)");
    }

    #[test]
    fn at_most_96_setpoints_a_day() {
        let full: Vec<Value> = (0..96).map(|i| heat(i * 900, 20.0)).collect();
        let out = normalize(&json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": full}})).unwrap();
        assert_eq!(out["days"]["0"].as_object().unwrap().len(), 96);
        let too_many: Vec<Value> = (0..97).map(|i| heat(i * 890, 20.0)).collect();
        assert_eq!(
            err(json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": too_many}})),
            "Day '0' has 97 setpoints; at most 96 are allowed"
        );
    }

    #[test]
    fn every_rejection_names_the_problem() {
        let with_entry =
            |entry: Value| json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": [heat(0, 20.0), entry]}});
        let cases = [
            (json!([1]), "Schedule must be a JSON object"),
            (json!("x"), "Schedule must be a JSON object"),
            (json!({"days": {}}), "Schedule ver must be 2"),
            (json!({"ver": "2", "days": {}}), "Schedule ver must be 2"),
            (json!({"ver": 2, "days": {}}), "schedule_mode must be one of: HEAT, COOL, RANGE"),
            (json!({"ver": 2, "schedule_mode": "ECO", "days": {}}), "schedule_mode must be one of: HEAT, COOL, RANGE"),
            (json!({"ver": 2, "schedule_mode": 3, "days": {}}), "schedule_mode must be one of: HEAT, COOL, RANGE"),
            (json!({"ver": 2, "schedule_mode": "HEAT"}), "Schedule must contain a 'days' object"),
            (json!({"ver": 2, "schedule_mode": "HEAT", "days": []}), "Schedule must contain a 'days' object"),
            (
                json!({"ver": 2, "schedule_mode": "HEAT", "days": {"7": []}}),
                "Invalid day key '7' (must be '0'-'6', Monday-Sunday)",
            ),
            (
                json!({"ver": 2, "schedule_mode": "HEAT", "days": {"mon": []}}),
                "Invalid day key 'mon' (must be '0'-'6', Monday-Sunday)",
            ),
            (
                json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": 5}}),
                "Day '0' must be a list or dict of setpoints",
            ),
            (with_entry(json!(3)), "Day '0' entry 1: must be an object"),
            (with_entry(json!({"type": "HEAT", "temp": 20})), "Day '0' entry 1: missing 'time'"),
            (with_entry(heat(86400, 20.0)), "Day '0' entry 1: time must be 0-86399"),
            (with_entry(heat(-1, 20.0)), "Day '0' entry 1: time must be 0-86399"),
            (with_entry(json!({"type": "HEAT", "time": 10.5, "temp": 20})), "Day '0' entry 1: time must be 0-86399"),
            (with_entry(json!({"type": "HEAT", "time": "10", "temp": 20})), "Day '0' entry 1: time must be 0-86399"),
            (with_entry(json!({"time": 10, "temp": 20})), "Day '0' entry 1: missing 'type'"),
            (
                with_entry(json!({"type": "COOL", "time": 10, "temp": 20})),
                "Day '0' entry 1: invalid type 'COOL' (this is a HEAT schedule)",
            ),
            (
                with_entry(json!({"type": 1, "time": 10, "temp": 20})),
                "Day '0' entry 1: invalid type '1' (this is a HEAT schedule)",
            ),
            (with_entry(json!({"type": "HEAT", "time": 10})), "Day '0' entry 1: HEAT requires 'temp'"),
            (
                with_entry(json!({"type": "HEAT", "time": 10, "temp": "20"})),
                "Day '0' entry 1: temp must be a number of degrees Celsius",
            ),
            (with_entry(heat(10, 40.0)), "Day '0' entry 1: temp=40.0 outside 4.5-32.0C"),
            (with_entry(heat(10, 4.4)), "Day '0' entry 1: temp=4.4 outside 4.5-32.0C"),
            (
                with_entry(json!({"type": "HEAT", "time": 10, "temp": 20, "entry_type": "hold"})),
                "Day '0' entry 1: entry_type must be 'setpoint' or 'continuation'",
            ),
            (with_entry(heat(0, 22.0)), "Day '0' entry 1: another setpoint of this day is already at time 0"),
        ];
        for (value, message) in cases {
            assert_eq!(normalize(&value).unwrap_err(), message, "{value}");
        }
    }

    #[test]
    fn bounds_are_inclusive_and_first_failure_wins() {
        let ok = json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": [heat(0, 4.5), heat(86399, 32.0)]}});
        assert!(normalize(&ok).is_ok());
        // Mixed types: the first wrong entry is reported.
        let mixed = json!({"ver": 2, "schedule_mode": "HEAT", "days": {"0": [
            heat(0, 20.0),
            {"type": "COOL", "time": 100, "temp": 25},
            {"type": "RANGE", "time": 200, "temp-min": 18, "temp-max": 24}
        ]}});
        assert_eq!(normalize(&mixed).unwrap_err(), "Day '0' entry 1: invalid type 'COOL' (this is a HEAT schedule)");
    }

    #[test]
    fn modes_are_parsed_case_insensitively() {
        assert_eq!(parse_mode(&json!(" range ")), Some("RANGE"));
        assert_eq!(parse_mode(&json!("Heat")), Some("HEAT"));
        assert_eq!(parse_mode(&json!("eco")), None);
        assert_eq!(parse_mode(&json!(1)), None);
        let stored = json!({"schedule_mode": "cool"});
        assert_eq!(declared_mode(stored.as_object().unwrap()), Some("COOL"));
    }
}
