//! Device request bodies of every dialect → the sync engine's requests. Both known v3
//! implementations accept every body shape on every path (only the response follows the path),
//! so one parser per request kind takes the objects dialect's shapes (`objects` array, named
//! buckets) as well as v3's (`keys` list, members named after bucket types).

use serde_json::Value;

use crate::domain::bucket::{self, BodyError, Entry, Fields, MAX_OBJECT_KEY_LEN};
use crate::domain::key;
use crate::domain::sync::{Listed, Version};

/// A parsed subscribe body.
#[derive(Debug)]
pub struct Subscribe {
    pub root: Fields,
    /// What the device lists, in request order, each key once.
    pub listed: Vec<Listed>,
    /// The body is a v3 `keys` list (no `objects` array).
    keys: bool,
}

impl Subscribe {
    /// Whether the device waits for an answer (a long-poll): a v3 `keys` body always does,
    /// whatever `chunked` says; an objects body when `chunked` is true.
    pub fn long_poll(&self) -> bool {
        self.keys || wants_chunked(&self.root)
    }

    /// The body's `session`, else the `X-nl-session-id` header 4.0.6 may send instead.
    pub fn session<'a>(&'a self, header: Option<&'a str>) -> Option<&'a str> {
        session(&self.root, header)
    }
}

/// The body's `session`, else the `X-nl-session-id` header (it names the device when the Basic
/// user is a MAC).
pub fn session<'a>(root: &'a Fields, header: Option<&'a str>) -> Option<&'a str> {
    root.get("session").and_then(Value::as_str).or(header).filter(|s| !s.is_empty())
}

/// `chunked` as the firmware sends it (`true`); strings and numbers are read by meaning, so
/// `"false"` is not chunked.
fn wants_chunked(root: &Fields) -> bool {
    match root.get("chunked") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        _ => false,
    }
}

/// A whole number, or `None` for anything else (a v3 key list is read leniently: a thermostat
/// is never refused for it).
fn whole(v: Option<&Value>) -> Option<i64> {
    let n = v?.as_number()?;
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
}

/// An objects-dialect entry as a listed bucket: it always gives a version (a missing one is 0,
/// "I have nothing") and may carry values.
fn from_entry(e: Entry) -> Listed {
    Listed { key: e.key, version: Some(Version::new(e.revision, e.timestamp)), value: e.value }
}

/// `{"keys":[{"key":K,"version":V,"timestamp":T}, …]}`: entries that are objects with a string
/// key are kept (canonical), anything else is dropped. 4.0.6 says which version it holds;
/// 4.3.3 sends bare keys (version `None`): what it holds is what it was given, which the sync
/// engine keeps.
fn listed_keys(items: &[Value], out: &mut Vec<Listed>) {
    for item in items {
        let Some(Value::String(raw)) = item.get("key") else { continue };
        let canonical = key::canonical(raw);
        if canonical.is_empty() || canonical.len() > MAX_OBJECT_KEY_LEN || out.iter().any(|l| l.key == canonical) {
            continue;
        }
        let (revision, timestamp) = (whole(item.get("version")), whole(item.get("timestamp")));
        let version = (revision.is_some() || timestamp.is_some())
            .then(|| Version::new(revision.unwrap_or(0), timestamp.unwrap_or(0)));
        out.push(Listed { key: canonical.to_string(), version, value: None });
    }
}

/// A subscribe body: the objects array, named buckets, or the v3 `keys` list.
pub fn subscribe(body: &[u8]) -> Result<Subscribe, BodyError> {
    let (root, entries) = bucket::parse_entries(body, false)?;
    let mut listed: Vec<Listed> = Vec::with_capacity(entries.len());
    for e in entries {
        if !listed.iter().any(|l| l.key == e.key) {
            listed.push(from_entry(e));
        }
    }
    let keys = match (root.get("objects"), root.get("keys")) {
        (Some(Value::Array(_)), _) => false,
        (_, Some(Value::Array(items))) => {
            listed_keys(items, &mut listed);
            true
        }
        _ => false,
    };
    Ok(Subscribe { root, listed, keys })
}

/// A PUT body: the objects array (which wins when present), bucket-keyed members, or v3
/// members named after a bucket type holding buckets by id
/// (`{"shared":{"S":{"target_temperature":21.5}}}`).
pub fn put(body: &[u8]) -> Result<(Fields, Vec<Entry>), BodyError> {
    let (root, mut entries) = bucket::parse_entries(body, true)?;
    if matches!(root.get("objects"), Some(Value::Array(_))) {
        return Ok((root, entries));
    }
    for (kind, member) in &root {
        let Value::Object(by_id) = member else { continue };
        if !key::is_known_type(kind) || by_id.contains_key("object_key") {
            continue;
        }
        for (id, inner) in by_id {
            let (Value::Object(fields), id) = (inner, key::canonical(id)) else { continue };
            if id.is_empty() {
                continue;
            }
            // The position names the bucket; metadata fields inside it are read as in the
            // bucket-keyed form (stripped from the value, `if_object_revision` honoured).
            let mut obj = fields.clone();
            obj.insert("object_key".into(), Value::String(format!("{kind}.{id}")));
            if let Some(entry) = bucket::entry_from(&obj, true, &format!("{kind}.{id}"))? {
                entries.push(entry);
            }
        }
    }
    Ok((root, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: &str = "02AA01AC12345678";

    fn put_json(v: Value) -> Vec<Entry> {
        put(v.to_string().as_bytes()).unwrap().1
    }

    fn value(e: &Entry) -> Value {
        Value::Object(e.value.clone().unwrap_or_default())
    }

    // spec v3-firmware §7 vector 1
    #[test]
    fn nested_put_becomes_one_entry_per_bucket() {
        let e = put_json(json!({
            "shared": {S: {"target_temperature": 21.5, "current_humidity": 45}},
            "device": {S: {"away": false}},
        }));
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].key, format!("shared.{S}"));
        assert_eq!(value(&e[0]), json!({"target_temperature": 21.5, "current_humidity": 45}));
        assert_eq!(e[1].key, format!("device.{S}"));
        assert_eq!(value(&e[1]), json!({"away": false}));
        assert_eq!((e[0].revision, e[0].timestamp, e[0].if_revision), (0, 0, None));
    }

    // spec v3-firmware §7 vector 2
    #[test]
    fn session_unknown_types_and_non_objects_are_skipped() {
        let e = put_json(json!({
            "session": "abc",
            "nonsense": {S: {"x": 1}},
            "shared": {S: {"target_temperature": 20.0}, "invalid": 1},
            "device": 5,
        }));
        assert_eq!(e.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), vec![format!("shared.{S}")]);
    }

    // spec v3-firmware §7 vector 3
    #[test]
    fn metadata_inside_a_nested_bucket_is_not_value() {
        let e = put_json(json!({"shared": {S: {
            "object_key": "shared.OTHER", "base_object_revision": 7, "if_object_revision": 7, "target_temperature": 19.0,
        }}}));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, format!("shared.{S}"), "the position names the bucket");
        assert_eq!(value(&e[0]), json!({"target_temperature": 19.0}));
        assert_eq!(e[0].if_revision, Some(7));
        assert_eq!(e[0].base_revision, Some(7));
    }

    #[test]
    fn an_empty_nested_bucket_carries_no_value() {
        let e = put_json(json!({"shared": {S: {}}}));
        assert!(e.iter().all(|e| e.value.is_none()), "{e:?}");
    }

    // spec v3-firmware §2.1: the objects array wins
    #[test]
    fn the_objects_array_wins_over_nested_members() {
        let e = put_json(json!({
            "objects": [{"object_key": format!("device.{S}"), "value": {"a": 1}}],
            "shared": {S: {"target_temperature": 20.0}},
        }));
        assert_eq!(e.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), vec![format!("device.{S}")]);
    }

    // spec v3-firmware §7 vector 9
    #[test]
    fn corrupted_keys_are_canonical_in_every_put_shape() {
        let e = put_json(json!({"objects": [{"object_key": format!("shared.{S} ._sync"), "value": {"a": 1}}]}));
        assert_eq!(e[0].key, format!("shared.{S}"));
        let e = put_json(json!({"shared": {format!("{S} ._sync"): {"a": 1}}}));
        assert_eq!(e[0].key, format!("shared.{S}"));
        let e = put_json(json!({"x": {"object_key": format!("device.{S} .$version .$version"), "a": 1}}));
        assert_eq!(e[0].key, format!("device.{S}"));
        assert!(put_json(json!({"shared": {" ._sync": {"a": 1}}})).is_empty());
    }

    #[test]
    fn bad_metadata_in_a_nested_bucket_is_named() {
        let err = put(json!({"shared": {S: {"if_object_revision": "x"}}}).to_string().as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), format!("shared.{S}.if_object_revision must be a number"));
    }

    fn bare(key: &str) -> Listed {
        Listed { key: key.into(), version: None, value: None }
    }

    // spec v3-firmware §7 vector 11
    #[test]
    fn keys_with_version_and_timestamp() {
        let k = format!("shared.{S}");
        let s =
            subscribe(json!({"keys": [{"key": k, "version": 3, "timestamp": 123}]}).to_string().as_bytes()).unwrap();
        assert!(s.long_poll(), "a keys body is a long-poll without `chunked`");
        assert_eq!(s.session(None), None);
        assert_eq!(s.listed, vec![Listed { key: k, version: Some(Version::new(3, 123)), value: None }]);
    }

    // spec v3-firmware §7 vector 12
    #[test]
    fn only_objects_with_a_string_key_count() {
        let body = json!({"keys": [{"key": format!("device.{S}")}, {"not_a_key": "x"}, "str", {"key": 42},
            {"key": format!("device.{S} ._sync"), "version": 1}, {"key": ""}, {"key": "user.x", "version": 2.0, "timestamp": "7"}]});
        let s = subscribe(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            s.listed,
            vec![
                bare(&format!("device.{S}")),
                Listed { key: "user.x".into(), version: Some(Version::new(2, 0)), value: None }
            ]
        );
    }

    #[test]
    fn session_comes_from_the_body_then_the_header() {
        let s = subscribe(br#"{"keys":[],"session":"b"}"#).unwrap();
        assert_eq!(s.session(Some("h")), Some("b"));
        let s = subscribe(br#"{"keys":[]}"#).unwrap();
        assert_eq!(s.session(Some("h")), Some("h"));
        assert_eq!(s.session(Some("")), None);
    }

    #[test]
    fn objects_bodies_list_versions_and_values_and_win_over_keys() {
        let body = json!({"chunked": true, "objects": [
                {"object_key": "device.A", "object_revision": 2, "object_timestamp": 5},
                {"object_key": "shared.A", "value": {"t": 1}},
                {"object_key": "device.A ._sync", "object_revision": 9}],
            "keys": [{"key": "user.A"}]});
        let s = subscribe(body.to_string().as_bytes()).unwrap();
        assert!(s.long_poll());
        let device = Listed { key: "device.A".into(), version: Some(Version::new(2, 5)), value: None };
        let inline = Listed {
            key: "shared.A".into(),
            version: Some(Version::NONE),
            value: Some(json!({"t": 1}).as_object().cloned().unwrap()),
        };
        assert_eq!(s.listed, vec![device, inline], "the objects array wins; a key listed twice counts once");
        assert!(!subscribe(br#"{"objects":[]}"#).unwrap().long_poll());
        assert_eq!(subscribe(b"[]").unwrap_err(), BodyError::NotObject);
    }

    #[test]
    fn chunked_is_read_by_meaning() {
        for (chunked, long) in
            [(json!(true), true), (json!("true"), true), (json!(1), true), (json!("false"), false), (json!(0), false)]
        {
            let s = subscribe(json!({"chunked": chunked, "objects": []}).to_string().as_bytes()).unwrap();
            assert_eq!(s.long_poll(), long, "{chunked}");
        }
    }
}
