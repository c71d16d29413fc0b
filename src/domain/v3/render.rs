//! v3 response bodies and headers, per profile [`Shape`]. Pure: the handlers decide what to
//! send (from the sync engine's plans) and frame it; these functions say how it looks.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::json;
use super::profile::{AckEnvelope, ListingShape, Shape};
use crate::domain::bucket::{Bucket, Fields, WireObject, carries_setpoint};
use crate::domain::key;

pub const SKV_KEY: &str = "X-nl-skv-key";
pub const SKV_VERSION: &str = "X-nl-skv-version";
pub const SKV_TIMESTAMP: &str = "X-nl-skv-timestamp";

/// What a PUT acknowledgement says about one bucket it wrote (or refused).
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    pub key: &'a str,
    pub revision: i64,
    pub timestamp: i64,
    /// The stored value, when this PUT changed the bucket.
    pub changed: Option<&'a Fields>,
}

/// A JSON object written from pairs in their order.
struct Pairs<K, V>(Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Pairs<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// `{"<type>":{"<id>":item}}`, types in order of first appearance. A key without a dot has no
/// place in this shape and the firmware could not look it up: it is left out.
fn nested<'a, T>(items: impl IntoIterator<Item = (&'a str, T)>) -> Pairs<&'a str, Pairs<&'a str, T>> {
    let mut groups: Vec<(&'a str, Pairs<&'a str, T>)> = Vec::new();
    for (k, item) in items {
        let Some((kind, id)) = key::split(k) else { continue };
        match groups.iter_mut().find(|(t, _)| *t == kind) {
            Some((_, g)) => g.0.push((id, item)),
            None => groups.push((kind, Pairs(vec![(id, item)]))),
        }
    }
    Pairs(groups)
}

#[derive(serde::Serialize)]
struct Markers {
    #[serde(rename = "$version")]
    version: i64,
    #[serde(rename = "$timestamp")]
    timestamp: i64,
}

/// A 4.3 acknowledgement entry: markers under `_sync`, the value only when it changed.
#[derive(serde::Serialize)]
struct FlatAck<'a> {
    #[serde(rename = "_sync")]
    sync: Markers,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Fields>,
}

/// A nested bucket: its value fields, then `$version` and `$timestamp` (a stored field of
/// that name is dropped rather than written twice).
struct Marked<'a> {
    value: Option<&'a Fields>,
    revision: i64,
    timestamp: i64,
}

impl Serialize for Marked<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.value.into_iter().flatten() {
            if k != "$version" && k != "$timestamp" {
                map.serialize_entry(k, v)?;
            }
        }
        map.serialize_entry("$version", &self.revision)?;
        map.serialize_entry("$timestamp", &self.timestamp)?;
        map.end()
    }
}

/// The body acknowledging a PUT. Both shapes keep the literal `"$version":` and
/// `"$timestamp":` tokens: 4.3.3 searches the text for them and otherwise re-sends the PUT.
pub fn put_ack<'a>(shape: &Shape, receipts: &[Receipt<'a>]) -> Vec<u8> {
    let value = |r: &Receipt<'a>| if shape.ack_echoes_changed_value { r.changed } else { None };
    match shape.ack {
        AckEnvelope::Flat => json::to_vec(
            &Pairs(
                receipts
                    .iter()
                    .map(|r| {
                        let sync = Markers { version: r.revision, timestamp: r.timestamp };
                        (r.key, FlatAck { sync, value: value(r) })
                    })
                    .collect(),
            ),
            shape.spacing,
        ),
        AckEnvelope::Nested => json::to_vec(
            &nested(
                receipts
                    .iter()
                    .map(|r| (r.key, Marked { value: value(r), revision: r.revision, timestamp: r.timestamp })),
            ),
            shape.spacing,
        ),
    }
}

/// One bucket pushed on a subscribe ("SKV"): its identity in headers, its value as the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skv {
    pub headers: [(&'static str, String); 3],
    /// The value holds target fields: the device should confirm without its defer window.
    pub disable_defer: bool,
    pub body: Vec<u8>,
}

/// Whether a key can travel in the `X-nl-skv-key` header (only made-up keys with spaces,
/// control or non-ASCII characters cannot).
pub fn fits_header(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The SKV response for a bucket; `None` when its key cannot travel in a header.
pub fn skv(shape: &Shape, key: &str, bucket: &Bucket) -> Option<Skv> {
    if !fits_header(key) {
        return None;
    }
    Some(Skv {
        headers: [
            (SKV_KEY, key.to_string()),
            (SKV_VERSION, bucket.revision.to_string()),
            (SKV_TIMESTAMP, bucket.timestamp.to_string()),
        ],
        // The union of both forks' lists: 4.0.6's includes `target_change_pending`, 4.3.3's `hvac_mode`.
        disable_defer: carries_setpoint(&bucket.value) || bucket.value.contains_key("target_change_pending"),
        body: json::to_vec(&bucket.value, shape.spacing),
    })
}

/// The answer to `GET {t}/v3/device/device.S`: every bucket of the device.
pub fn listing(shape: &Shape, buckets: &[(&str, &Bucket)]) -> Vec<u8> {
    match shape.listing {
        ListingShape::ObjectsMetadata => {
            #[derive(serde::Serialize)]
            struct Objects<'a> {
                objects: Vec<WireObject<'a>>,
            }
            let objects = buckets.iter().map(|(k, b)| WireObject::receipt(k, b.revision, b.timestamp)).collect();
            json::to_vec(&Objects { objects }, shape.spacing)
        }
        ListingShape::NestedValues => {
            json::to_vec(
                &nested(buckets.iter().map(|(k, b)| {
                    (*k, Marked { value: Some(&b.value), revision: b.revision, timestamp: b.timestamp })
                })),
                shape.spacing,
            )
        }
    }
}

/// Members `/nest/entry` adds for a paired device: each given bucket (its `user.*` and
/// `structure.*`) as `{"object_revision","object_timestamp","value"}` under its key.
pub fn entry_members(shape: &Shape, buckets: &[(&str, &Bucket)]) -> Fields {
    if !shape.entry_inlines_pairing_buckets {
        return Fields::new();
    }
    buckets
        .iter()
        .map(|(k, b)| {
            let mut member = Fields::new();
            member.insert("object_revision".into(), b.revision.into());
            member.insert("object_timestamp".into(), b.timestamp.into());
            member.insert("value".into(), Value::Object(b.value.clone()));
            ((*k).to_string(), Value::Object(member))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::v3::profile::{Profile, V40, V43};
    use serde_json::json;

    const S: &str = "02AA01AC12345678";

    fn bucket(revision: i64, timestamp: i64, value: Value) -> Bucket {
        let Value::Object(value) = value else { panic!("object") };
        Bucket { revision, timestamp, value, updated_at: 0 }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    fn parsed(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    // spec v3-firmware §7 vector 5
    #[test]
    fn the_4_0_ack_is_nested_compact_metadata() {
        let changed = bucket(6, 1795324142247, json!({"target_temperature": 21.5}));
        let (dk, sk) = (format!("device.{S}"), format!("shared.{S}"));
        let receipts = [
            Receipt { key: &dk, revision: 2, timestamp: 1795324142247, changed: None },
            Receipt { key: &sk, revision: 6, timestamp: 1795324142247, changed: Some(&changed.value) },
        ];
        let body = text(put_ack(&V40, &receipts));
        assert_eq!(
            body,
            format!(
                r#"{{"device":{{"{S}":{{"$version":2,"$timestamp":1795324142247}}}},"shared":{{"{S}":{{"$version":6,"$timestamp":1795324142247}}}}}}"#
            )
        );
        assert!(!body.contains(": ") && !body.contains(", "));
    }

    // spec v3-firmware §7 vectors 6 and 7
    #[test]
    fn the_4_3_ack_is_flat_with_markers_under_sync_and_the_changed_value() {
        let stored = bucket(6, 1795324142247, json!({"target_temperature": 21.5}));
        let sk = format!("shared.{S}");
        let first =
            put_ack(&V43, &[Receipt { key: &sk, revision: 6, timestamp: 1795324142247, changed: Some(&stored.value) }]);
        let doc = parsed(&first);
        let entry = &doc[&sk];
        assert_eq!(doc.as_object().unwrap().len(), 1);
        assert!(entry.get("$version").is_none());
        assert_eq!(entry["_sync"], json!({"$version": 6, "$timestamp": 1795324142247i64}));
        assert_eq!(entry["value"], json!({"target_temperature": 21.5}));
        let raw = text(first);
        assert!(raw.contains(r#""$version":"#) && raw.contains(r#""$timestamp":"#));
        // An identical re-PUT (or a CAS conflict) changes nothing: markers only.
        let again =
            parsed(&put_ack(&V43, &[Receipt { key: &sk, revision: 6, timestamp: 1795324142247, changed: None }]));
        assert_eq!(again, json!({sk.clone(): {"_sync": {"$version": 6, "$timestamp": 1795324142247i64}}}));
        for top in ["shared", "device", "objects"] {
            assert!(again.get(top).is_none());
        }
    }

    #[test]
    fn an_empty_ack_is_an_empty_object() {
        assert_eq!(put_ack(&V43, &[]), b"{}");
        assert_eq!(put_ack(&V40, &[]), b"{}");
    }

    // spec v3-firmware §7 vector 13 (the body and headers of one SKV push)
    #[test]
    fn skv_names_the_bucket_in_headers_and_sends_the_bare_value() {
        let b = bucket(5, 1795324039323, json!({"target_temperature": 22.0, "target_change_pending": true}));
        let sk = format!("shared.{S}");
        for profile in [Profile::V43, Profile::V40] {
            let skv = skv(profile.shape(), &sk, &b).unwrap();
            assert_eq!(
                skv.headers,
                [(SKV_KEY, sk.clone()), (SKV_VERSION, "5".into()), (SKV_TIMESTAMP, "1795324039323".into())]
            );
            assert_eq!(skv.body, br#"{"target_temperature":22.0,"target_change_pending":true}"#);
            assert!(skv.disable_defer);
        }
        let device = bucket(1, 2, json!({"current_temperature": 20.1}));
        assert!(!skv(&V43, "device.S", &device).unwrap().disable_defer);
        assert!(skv(&V43, "odd key", &device).is_none());
        assert!(skv(&V43, "", &device).is_none());
    }

    // spec v3-firmware §7 vectors 21 and 22
    #[test]
    fn listings_per_profile() {
        let shared = bucket(3, 123, json!({"target_temperature": 22.0}));
        let device = bucket(4, 456, json!({"current_temperature": 20.5, "$version": 99}));
        let (sk, dk) = (format!("shared.{S}"), format!("device.{S}"));
        let all = [(sk.as_str(), &shared), (dk.as_str(), &device), ("nodot", &device)];
        let v40 = text(listing(&V40, &all));
        assert_eq!(
            v40,
            format!(
                r#"{{"shared":{{"{S}":{{"target_temperature":22.0,"$version":3,"$timestamp":123}}}},"device":{{"{S}":{{"current_temperature":20.5,"$version":4,"$timestamp":456}}}}}}"#
            )
        );
        let v43 = parsed(&listing(&V43, &all[..2]));
        assert_eq!(
            v43,
            json!({"objects": [
                {"object_revision": 3, "object_timestamp": 123, "object_key": sk},
                {"object_revision": 4, "object_timestamp": 456, "object_key": dk},
            ]})
        );
        let raw = text(listing(&V43, &all[..2]));
        for banned in [r#""$version""#, r#""$timestamp""#, r#""key""#] {
            assert!(!raw.contains(banned), "{raw}");
        }
    }

    // spec v3-firmware §7 vector 25 (the members; which buckets is the handler's choice)
    #[test]
    fn entry_inlines_pairing_buckets_for_4_3_only() {
        let user = bucket(7, 1795324183466, json!({"name": "test_user"}));
        let members = entry_members(&V43, &[("user.test_user", &user)]);
        assert_eq!(
            Value::Object(members),
            json!({"user.test_user": {"object_revision": 7, "object_timestamp": 1795324183466i64, "value": {"name": "test_user"}}})
        );
        assert!(entry_members(&V40, &[("user.test_user", &user)]).is_empty());
    }
}
