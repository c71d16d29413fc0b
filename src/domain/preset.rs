//! Presets (home, away, eco) as Home Assistant and the web UI show them, derived from what the
//! thermostat reports and what was last asked.
//!
//! On a Nest, roost starts and ends eco through the structure's `manual_eco_all`
//! (nest-protocol-reference §9.4). Away and eco both enter that same manual eco, so the buckets
//! alone cannot tell which one a person chose: roost remembers the asked preset per structure
//! and reports it while that eco lasts. Eco started on the thermostat itself shows up in the
//! device's `eco.mode`: `manual-eco` (the person pressed eco) or `auto-eco` (nobody is home).

use serde_json::Value;

use super::bucket::{Fields, truthy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Home,
    Away,
    Eco,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Home => "home",
            Preset::Away => "away",
            Preset::Eco => "eco",
        }
    }

    /// A preset name as clients send it; Home Assistant's own `none` means home.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "home" | "none" => Some(Preset::Home),
            "away" => Some(Preset::Away),
            "eco" => Some(Preset::Eco),
            _ => None,
        }
    }

    /// The preset a command asks for, if it asks for one: `set_preset`, and `set_away` as the
    /// existing clients use it (true is away).
    pub fn asked_by(command: &str, value: &Value) -> Option<Self> {
        match (command, value) {
            ("set_preset", Value::String(s)) => Preset::parse(s),
            ("set_away", Value::Bool(true)) => Some(Preset::Away),
            ("set_away", Value::Bool(false)) => Some(Preset::Home),
            _ => None,
        }
    }
}

fn number(fields: Option<&Fields>, key: &str) -> Option<f64> {
    fields.and_then(|f| f.get(key)).and_then(Value::as_f64).filter(|f| f.is_finite())
}

/// The preset in force. `asked` is what was last asked for the thermostat's structure.
pub fn current(device: Option<&Fields>, structure: Option<&Fields>, asked: Option<Preset>) -> Preset {
    let eco = device.and_then(|d| d.get("eco")).and_then(Value::as_object);
    let eco_mode = eco.and_then(|e| e.get("mode")).and_then(Value::as_str);
    if structure.and_then(|s| s.get("manual_eco_all")).is_some_and(truthy) {
        // The person may have left eco on the thermostat since roost started it: the device then
        // reports `schedule` with a later time than roost's request.
        let asked_at = number(structure, "manual_eco_timestamp").unwrap_or(0.0);
        let left_at = eco.and_then(|e| e.get("mode_update_timestamp")).and_then(Value::as_f64).unwrap_or(0.0);
        if eco_mode == Some("schedule") && left_at > asked_at {
            return Preset::Home;
        }
        return match asked {
            Some(Preset::Eco) => Preset::Eco,
            // `set_away` from the existing clients, or nothing remembered.
            _ => Preset::Away,
        };
    }
    match eco_mode {
        Some("manual-eco") => Preset::Eco,
        Some("auto-eco") => Preset::Away,
        _ => Preset::Home,
    }
}

/// `away` as the status clients read it: the structure is away, or the thermostat is in eco
/// because nobody is home.
pub fn is_away(device: Option<&Fields>, structure: Option<&Fields>, asked: Option<Preset>) -> bool {
    structure.and_then(|s| s.get("away")).is_some_and(truthy) || current(device, structure, asked) == Preset::Away
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(Preset::parse(" None "), Some(Preset::Home));
        assert_eq!(Preset::parse("ECO"), Some(Preset::Eco));
        assert_eq!(Preset::parse("sleep"), None);
        assert_eq!(Preset::asked_by("set_away", &json!(true)), Some(Preset::Away));
        assert_eq!(Preset::asked_by("set_preset", &json!("eco")), Some(Preset::Eco));
        assert_eq!(Preset::asked_by("set_temperature", &json!(21)), None);
    }

    #[test]
    fn roost_started_eco_reports_what_was_asked() {
        let structure = f(json!({"manual_eco_all": true, "manual_eco_timestamp": 1000}));
        let device = f(json!({"eco": {"mode": "schedule", "mode_update_timestamp": 900}}));
        assert_eq!(current(Some(&device), Some(&structure), Some(Preset::Eco)), Preset::Eco);
        assert_eq!(current(Some(&device), Some(&structure), Some(Preset::Away)), Preset::Away);
        assert_eq!(current(Some(&device), Some(&structure), None), Preset::Away);
        let entered = f(json!({"eco": {"mode": "manual-eco", "mode_update_timestamp": 1001}}));
        assert_eq!(current(Some(&entered), Some(&structure), Some(Preset::Eco)), Preset::Eco);
        assert!(!is_away(Some(&entered), Some(&structure), Some(Preset::Eco)));
        assert!(is_away(Some(&entered), Some(&structure), Some(Preset::Away)));
    }

    #[test]
    fn eco_left_on_the_thermostat_is_home() {
        let structure = f(json!({"manual_eco_all": true, "manual_eco_timestamp": 1000}));
        let left = f(json!({"eco": {"mode": "schedule", "mode_update_timestamp": 1200}}));
        assert_eq!(current(Some(&left), Some(&structure), Some(Preset::Eco)), Preset::Home);
    }

    #[test]
    fn eco_started_on_the_thermostat() {
        let home = f(json!({"manual_eco_all": false}));
        let manual = f(json!({"eco": {"mode": "manual-eco"}}));
        let auto = f(json!({"eco": {"mode": "auto-eco"}}));
        assert_eq!(current(Some(&manual), Some(&home), Some(Preset::Away)), Preset::Eco);
        assert_eq!(current(Some(&auto), Some(&home), None), Preset::Away);
        assert_eq!(current(None, None, Some(Preset::Eco)), Preset::Home, "remembered only while eco lasts");
        assert!(is_away(Some(&auto), None, None));
        assert!(is_away(None, Some(&f(json!({"away": true}))), None));
        assert!(!is_away(Some(&manual), Some(&home), None));
    }
}
