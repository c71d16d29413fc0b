//! Buckets ("objects") and the rules the thermostat applies to them.

use serde::Serialize;
use serde_json::{Map, Value};

pub type Fields = Map<String, Value>;

/// One stored bucket of one thermostat.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub revision: i64,
    pub timestamp: i64,
    pub value: Fields,
    /// Server wall-clock of the last write, ms.
    pub updated_at: i64,
}

/// The wire form of a bucket. Field order matters to the firmware: revision and timestamp
/// must come before the key, and the key before the value.
#[derive(Debug, Serialize)]
pub struct WireObject<'a> {
    pub object_revision: i64,
    pub object_timestamp: i64,
    pub object_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a Fields>,
}

impl<'a> WireObject<'a> {
    pub fn full(key: &'a str, bucket: &'a Bucket) -> Self {
        Self {
            object_revision: bucket.revision,
            object_timestamp: bucket.timestamp,
            object_key: key,
            value: Some(&bucket.value),
        }
    }

    /// Revision, timestamp and key only: PUT receipts and listings never carry a value.
    pub fn receipt(key: &'a str, revision: i64, timestamp: i64) -> Self {
        Self { object_revision: revision, object_timestamp: timestamp, object_key: key, value: None }
    }
}

#[derive(Serialize)]
struct Objects<'a> {
    objects: &'a [WireObject<'a>],
}

/// `{"objects": [...]}`, one complete document (one chunk on a subscribe).
pub fn objects_document(objects: &[WireObject<'_>]) -> Vec<u8> {
    // Serialising plain structs and JSON values cannot fail.
    serde_json::to_vec(&Objects { objects }).unwrap_or_else(|_| b"{\"objects\":[]}".to_vec())
}

/// Python truthiness: the reference's `a or b` fallbacks and flag reads rely on it.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Bucket type of an object key (`shared.02AA…` → `shared`).
pub fn bucket_type(key: &str) -> &str {
    key.split_once('.').map_or(key, |(t, _)| t)
}

/// Shallow merge of `update` over `base` (none: a new bucket): existing keys keep their
/// position, new keys are appended in `update`'s order. The result is [`compact`].
pub fn merged(base: Option<&Fields>, update: &Fields) -> Fields {
    let Some(base) = base else { return compact(update) };
    let added = update.keys().filter(|k| !base.contains_key(*k)).count();
    let mut out = Fields::with_capacity(base.len() + added);
    for (k, v) in base {
        out.insert(k.clone(), compact_value(update.get(k).unwrap_or(v)));
    }
    for (k, v) in update.iter().filter(|(k, _)| !base.contains_key(*k)) {
        out.insert(k.clone(), compact_value(v));
    }
    out
}

/// A deep copy whose maps and arrays hold exactly their entries. A thermostat's buckets live
/// as long as it does, and a plain clone (or a parse) leaves each map's entries at its hash
/// table's capacity, which indexmap reserves up to: up to 75 % more entries, of 112 bytes each.
pub fn compact(fields: &Fields) -> Fields {
    let mut out = Fields::with_capacity(fields.len());
    for (k, v) in fields {
        out.insert(k.clone(), compact_value(v));
    }
    out
}

fn compact_value(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(compact(map)),
        Value::Array(items) => Value::Array(items.iter().map(compact_value).collect()),
        other => other.clone(),
    }
}

/// Fields whose presence in an immediate reply asks the device to confirm at once.
pub fn carries_setpoint(value: &Fields) -> bool {
    ["target_temperature", "target_temperature_high", "target_temperature_low", "target_temperature_type", "hvac_mode"]
        .iter()
        .any(|k| value.contains_key(*k))
}

pub const MAX_OBJECT_KEY_LEN: usize = 256;

/// One bucket entry of a subscribe or PUT body.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub revision: i64,
    pub timestamp: i64,
    pub value: Option<Fields>,
    pub if_revision: Option<i64>,
    /// The revision the device based a PUT on (`base_object_revision`).
    pub base_revision: Option<i64>,
}

impl Entry {
    /// The revision the device says it holds, if it says.
    pub fn device_revision(&self) -> Option<i64> {
        self.if_revision.or(self.base_revision)
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("Invalid JSON")]
    NotJson,
    #[error("JSON body must be an object")]
    NotObject,
    #[error("{0}")]
    BadEntry(String),
}

/// Parses a device body. Accepts the `objects` array and the bucket-keyed form (members that are
/// objects carrying `object_key`). In the bucket-keyed form of a PUT, the fields next to
/// `object_key` are the value.
pub fn parse_entries(body: &[u8], put: bool) -> Result<(Fields, Vec<Entry>), BodyError> {
    let json: Value = serde_json::from_slice(body).map_err(|_| BodyError::NotJson)?;
    let Value::Object(root) = json else {
        return Err(BodyError::NotObject);
    };
    let mut entries = Vec::new();
    if let Some(Value::Array(objects)) = root.get("objects") {
        for (i, item) in objects.iter().enumerate() {
            let Value::Object(obj) = item else {
                return Err(BodyError::BadEntry(format!("objects[{i}] must be an object")));
            };
            if let Some(entry) = entry_from(obj, false, &format!("objects[{i}]"))? {
                entries.push(entry);
            }
        }
    } else {
        for (name, item) in &root {
            if name == "session" || name == "chunked" || name == "objects" {
                continue;
            }
            if let Value::Object(obj) = item {
                if obj.contains_key("object_key") {
                    if let Some(entry) = entry_from(obj, put, name)? {
                        entries.push(entry);
                    }
                }
            }
        }
    }
    Ok((root, entries))
}

/// One entry from an object carrying `object_key`; with `inline_fields` the value is the
/// object's other fields (the bucket-keyed form), else its `value` member.
pub(crate) fn entry_from(obj: &Fields, inline_fields: bool, at: &str) -> Result<Option<Entry>, BodyError> {
    let key = match obj.get("object_key") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        None | Some(Value::Null) => return Ok(None),
        Some(_) => return Err(BodyError::BadEntry(format!("{at}.object_key must be a non-empty string"))),
    };
    if key.len() > MAX_OBJECT_KEY_LEN {
        return Err(BodyError::BadEntry(format!("{at}.object_key is longer than {MAX_OBJECT_KEY_LEN} characters")));
    }
    let int = |name: &str| -> Result<Option<i64>, BodyError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| BodyError::BadEntry(format!("{at}.{name} must be an integer"))),
            Some(_) => Err(BodyError::BadEntry(format!("{at}.{name} must be a number"))),
        }
    };
    // Stored and looked up only under the canonical key (a corrupted copy would be a new bucket).
    let key = crate::domain::key::canonical(&key).to_string();
    if key.is_empty() {
        return Ok(None);
    }
    let revision = int("object_revision")?.unwrap_or(0);
    let timestamp = int("object_timestamp")?.unwrap_or(0);
    let if_revision = int("if_object_revision")?;
    let base_revision = int("base_object_revision")?;
    let value = if inline_fields {
        let fields: Fields = obj
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "object_key"
                        | "base_object_revision"
                        | "if_object_revision"
                        | "object_revision"
                        | "object_timestamp"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!fields.is_empty()).then_some(fields)
    } else {
        match obj.get("value") {
            None | Some(Value::Null) => None,
            Some(Value::Object(v)) => Some(v.clone()),
            Some(_) => return Err(BodyError::BadEntry(format!("{at}.value must be an object"))),
        }
    };
    Ok(Some(Entry { key, revision, timestamp, value, if_revision, base_revision }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn a_merge_keeps_places_appends_new_keys_and_copies_deeply_as_written() {
        let base = fields(json!({"a": 1, "b": {"x": [1, 2.0, {"y": "z"}]}, "c": 21.0}));
        let update = fields(json!({"d": [], "c": 21, "e": {"f": null}}));
        let out = merged(Some(&base), &update);
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"a":1,"b":{"x":[1,2.0,{"y":"z"}]},"c":21,"d":[],"e":{"f":null}}"#
        );
        assert_eq!(merged(None, &update), update);
        assert_eq!(compact(&base), base);
    }

    #[test]
    fn wire_order_and_number_forms_are_kept() {
        let mut value = Fields::new();
        value.insert("z".into(), json!(21.0));
        value.insert("a".into(), json!(21));
        let b = Bucket { revision: 3, timestamp: 17, value, updated_at: 0 };
        let doc = objects_document(&[WireObject::full("shared.X", &b)]);
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            r#"{"objects":[{"object_revision":3,"object_timestamp":17,"object_key":"shared.X","value":{"z":21.0,"a":21}}]}"#
        );
        let doc = objects_document(&[WireObject::receipt("shared.X", 3, 17)]);
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            r#"{"objects":[{"object_revision":3,"object_timestamp":17,"object_key":"shared.X"}]}"#
        );
    }

    #[test]
    fn both_body_forms_parse() {
        let body =
            br#"{"session":"s","objects":[{"object_key":"device.A","base_object_revision":1,"value":{"h":45}}]}"#;
        let (_, e) = parse_entries(body, true).unwrap();
        assert_eq!(e[0].value.as_ref().unwrap()["h"], json!(45));
        let body = br#"{"session":"s","shared.A":{"object_key":"shared.A","if_object_revision":4,"t":19.5}}"#;
        let (_, e) = parse_entries(body, true).unwrap();
        assert_eq!(e[0].if_revision, Some(4));
        assert_eq!(serde_json::to_string(e[0].value.as_ref().unwrap()).unwrap(), r#"{"t":19.5}"#);
        let (_, e) = parse_entries(br#"{"objects":5}"#, true).unwrap();
        assert!(e.is_empty());
    }

    #[test]
    fn bad_bodies_are_named() {
        assert_eq!(parse_entries(b"nope", true).unwrap_err(), BodyError::NotJson);
        assert_eq!(parse_entries(b"[1]", true).unwrap_err(), BodyError::NotObject);
        let err = parse_entries(br#"{"objects":[{"object_key":"a.b","value":3}]}"#, true).unwrap_err();
        assert_eq!(err.to_string(), "objects[0].value must be an object");
        let err = parse_entries(br#"{"objects":[{"object_key":"a.b","object_timestamp":"x"}]}"#, false).unwrap_err();
        assert_eq!(err.to_string(), "objects[0].object_timestamp must be a number");
    }
}
