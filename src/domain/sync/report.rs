//! Announcing what happened to pending commands on the event stream (a named `command` event
//! with a `state`).

use serde_json::{Map, Value, json};

use super::delivery::Report;
use super::plan::Event;
use crate::domain::bucket::Fields;

/// How one bucket's pending command was resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub key: String,
    /// `confirmed`, `overridden` or `expired`.
    pub state: &'static str,
    /// Confirmed or overridden: the values the thermostat now holds; expired: the commanded ones.
    pub fields: Fields,
    /// Expired: the thermostat's values written back.
    pub restored: Option<Fields>,
}

impl Resolution {
    pub fn of(key: &str, report: &Report) -> Vec<Resolution> {
        let mut out = Vec::new();
        for (state, fields) in [("confirmed", &report.confirmed), ("overridden", &report.overridden)] {
            if !fields.is_empty() {
                out.push(Resolution { key: key.to_string(), state, fields: fields.clone(), restored: None });
            }
        }
        out
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("object_key".into(), json!(self.key));
        m.insert("state".into(), json!(self.state));
        m.insert("fields".into(), Value::Object(self.fields.clone()));
        if let Some(restored) = &self.restored {
            m.insert("restored".into(), Value::Object(restored.clone()));
        }
        Value::Object(m)
    }
}

/// `{"state": …, "objects": [{"object_key", "state", "fields"[, "restored"]}]}`; the top-level
/// state is the first object's.
pub fn announce(resolutions: &[Resolution]) -> Option<Event> {
    let first = resolutions.first()?;
    let objects: Vec<Value> = resolutions.iter().map(Resolution::to_json).collect();
    Some(Event { kind: "command", detail: json!({"state": first.state, "objects": objects}) })
}
