//! A real thermostat's post-boot upload (tests/fixtures/full_state.json: a device bucket of 239
//! fields, shared, schedule, link and where; about 12 KB of JSON), for benchmarks that need
//! state of the size real devices keep.

use serde_json::Value;

const FULL_STATE: &str = include_str!("../../tests/fixtures/full_state.json");
/// The serial the recorded upload was made with.
const RECORDED_SERIAL: &str = "02AA01AC12345678";

/// The recorded upload as `serial` would send it: each object's key and value.
pub fn full_state(serial: &str) -> Vec<(String, Value)> {
    let text = FULL_STATE.replace(RECORDED_SERIAL, serial);
    let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    doc["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["object_key"].as_str()?.to_string(), o["value"].clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_upload_is_rewritten_for_another_serial() {
        let objects = full_state("SIM0000000000007");
        let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"device.SIM0000000000007") && keys.contains(&"shared.SIM0000000000007"));
        let device = &objects.iter().find(|(k, _)| k.starts_with("device.")).unwrap().1;
        assert!(device.as_object().unwrap().len() >= 200, "real-size device bucket");
        assert!(!serde_json::to_string(&objects).unwrap().contains(RECORDED_SERIAL));
    }
}
