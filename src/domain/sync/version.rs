//! Revisions and timestamps: which copy of a bucket is newer, and what a write does to them
//! (`spec/nest-protocol-reference.md` §8).

use serde_json::Value;

use crate::domain::bucket::{Bucket, Fields};
use crate::domain::time::next_timestamp;

/// A bucket's `object_revision` and `object_timestamp` (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Version {
    pub revision: i64,
    pub timestamp: i64,
}

impl Version {
    pub const NONE: Version = Version { revision: 0, timestamp: 0 };

    pub fn new(revision: i64, timestamp: i64) -> Self {
        Self { revision, timestamp }
    }

    pub fn of(bucket: &Bucket) -> Self {
        Self { revision: bucket.revision, timestamp: bucket.timestamp }
    }

    /// What a receipt tells a device that is behind on a bucket: just below the server's
    /// timestamp, so the server's copy stays newer for the device and still reaches it.
    pub fn just_below(self) -> Self {
        Self { revision: self.revision, timestamp: self.timestamp.saturating_sub(1).max(0) }
    }
}

/// Whether the server's copy must go to a device that holds `device` (§8.3):
/// the server has nothing (timestamp 0) → no; the device has nothing (0) → yes; otherwise the
/// newer timestamp wins, and on equal timestamps the higher revision — when the device gives
/// one. A device that lists revision 0 with a timestamp says nothing about revisions, so the
/// timestamps alone decide (equal is in sync).
pub fn server_is_newer(server: Version, device: Version) -> bool {
    if server.timestamp == 0 {
        return false;
    }
    if device.timestamp == 0 || server.timestamp > device.timestamp {
        return true;
    }
    server.timestamp == device.timestamp && device.revision != 0 && server.revision > device.revision
}

/// How a write treats revision and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bump {
    /// A new revision and timestamp only when the value changes (§8.4: an identical PUT keeps
    /// both, or the bucket would be pushed back and revert the device).
    IfChanged,
    /// Always a new revision and timestamp: a server change that must reach the device even if
    /// the value is already stored (a command repeated).
    Always,
}

/// The bucket after storing `value` over `existing`; `None` when nothing changes.
///
/// A new version is `revision + 1` (1 for a new bucket) and `max(now, previous + 1)`, so
/// timestamps strictly increase per bucket. A change that only clears
/// `target_change_pending` (the device acknowledging a push) keeps revision and timestamp:
/// a bump would push the bucket back to the device (§8.4).
pub fn write(existing: Option<&Bucket>, value: Fields, now: i64, bump: Bump) -> Option<Bucket> {
    if let Some(e) = existing.filter(|_| bump == Bump::IfChanged) {
        if e.value == value {
            return None;
        }
        if only_clears_pending(&e.value, &value) {
            return Some(Bucket { value, updated_at: now, ..e.clone() });
        }
    }
    Some(Bucket {
        revision: existing.map_or(1, |e| e.revision.saturating_add(1)),
        timestamp: next_timestamp(existing.map_or(0, |e| e.timestamp), now),
        value,
        updated_at: now,
    })
}

/// The device holds a newer copy than the server (its timestamp is later): the server takes
/// its fields with its revision and timestamp. `None` when that changes nothing.
pub fn adopt(existing: Option<&Bucket>, value: Fields, device: Version, now: i64) -> Option<Bucket> {
    if existing.is_some_and(|e| e.value == value && e.timestamp >= device.timestamp) {
        return None;
    }
    Some(Bucket { revision: device.revision, timestamp: device.timestamp, value, updated_at: now })
}

const PENDING_FLAG: &str = "target_change_pending";

/// `after` differs from `before` only by `target_change_pending` going from true to false.
fn only_clears_pending(before: &Fields, after: &Fields) -> bool {
    if before.get(PENDING_FLAG) != Some(&Value::Bool(true)) || after.get(PENDING_FLAG) != Some(&Value::Bool(false)) {
        return false;
    }
    before.len() == after.len() && before.iter().all(|(k, v)| k == PENDING_FLAG || after.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    fn bucket(rev: i64, ts: i64, v: Value) -> Bucket {
        Bucket { revision: rev, timestamp: ts, value: f(v), updated_at: 0 }
    }

    #[test]
    fn tv10_equal_timestamps_are_broken_by_revision() {
        let server = Version::new(9, 1_760_000_000_000);
        assert!(server_is_newer(server, Version::new(8, 1_760_000_000_000)), "rev 8 → push rev 9");
        assert!(!server_is_newer(server, Version::new(9, 1_760_000_000_000)), "rev 9 → hold");
        assert!(!server_is_newer(server, Version::new(12, 1_760_000_000_000)), "rev 12 → hold");
    }

    #[test]
    fn tv11_a_device_ahead_gets_nothing() {
        let server = Version::new(9, 1_760_000_000_000);
        assert!(!server_is_newer(server, Version::new(3, 1_760_000_500_000)));
    }

    #[test]
    fn tv06_cold_device_gets_what_the_server_has_and_never_a_placeholder() {
        assert!(server_is_newer(Version::new(5, 1_760_000_000_000), Version::NONE));
        assert!(!server_is_newer(Version::NONE, Version::NONE), "the server has nothing: no placeholder");
        assert!(!server_is_newer(Version::NONE, Version::new(1, 1000)));
    }

    #[test]
    fn timestamps_decide_and_a_device_without_revisions_is_in_sync_on_equal_timestamps() {
        assert!(server_is_newer(Version::new(1, 2001), Version::new(1, 2000)));
        assert!(!server_is_newer(Version::new(1, 2000), Version::new(1, 2001)));
        assert!(!server_is_newer(Version::new(1, 5000), Version::new(0, 5000)), "revision 0 says nothing");
        assert!(server_is_newer(Version::new(1, 1_770_147_852_122), Version::new(1, 1_770_146_554_007)));
        assert!(server_is_newer(Version::new(1, 5000), Version::new(-23671, 5000)), "revisions may be negative");
    }

    #[test]
    fn tv15_an_identical_write_keeps_revision_and_timestamp() {
        let e = bucket(4, 1000, json!({"a": 1}));
        assert_eq!(write(Some(&e), f(json!({"a": 1})), 5000, Bump::IfChanged), None);
        let forced = write(Some(&e), f(json!({"a": 1})), 5000, Bump::Always).unwrap();
        assert_eq!(Version::of(&forced), Version::new(5, 5000));
    }

    #[test]
    fn tv12_a_change_bumps_by_one_and_timestamps_never_go_back() {
        let e = bucket(4, 9000, json!({"a": 1}));
        let b = write(Some(&e), f(json!({"a": 1, "b": 2})), 5000, Bump::IfChanged).unwrap();
        assert_eq!(Version::of(&b), Version::new(5, 9001));
        let new = write(None, f(json!({"a": 1})), 5000, Bump::IfChanged).unwrap();
        assert_eq!(Version::of(&new), Version::new(1, 5000));
    }

    #[test]
    fn tv16_clearing_target_change_pending_keeps_revision_and_timestamp() {
        let e = bucket(7, 1000, json!({"target_change_pending": true, "t": 20.0}));
        let b = write(Some(&e), f(json!({"target_change_pending": false, "t": 20.0})), 9000, Bump::IfChanged).unwrap();
        assert_eq!(Version::of(&b), Version::new(7, 1000));
        assert_eq!(b.value["target_change_pending"], json!(false));
        let b = write(Some(&e), f(json!({"target_change_pending": false, "t": 21.0})), 9000, Bump::IfChanged).unwrap();
        assert_eq!(Version::of(&b), Version::new(8, 9000), "with another change it is a new version");
    }

    #[test]
    fn adopting_a_newer_device_copy_takes_its_version() {
        let e = bucket(4, 1000, json!({"a": 1}));
        let b = adopt(Some(&e), f(json!({"a": 2})), Version::new(17, 2000), 3000).unwrap();
        assert_eq!(Version::of(&b), Version::new(17, 2000));
        assert_eq!(adopt(Some(&b), f(json!({"a": 2})), Version::new(17, 2000), 4000), None);
    }

    #[test]
    fn just_below_keeps_the_revision() {
        assert_eq!(Version::new(6, 1000).just_below(), Version::new(6, 999));
        assert_eq!(Version::NONE.just_below(), Version::new(0, 0));
    }
}
