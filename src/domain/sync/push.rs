//! Pushes: which committed change goes to which held subscribe.

use std::sync::Arc;
use std::time::Duration;

use super::plan::Origin;
use super::version::{Version, server_is_newer};
use crate::domain::bucket::Bucket;

/// After a push on a held objects-dialect response, further changes within this window go out
/// as more chunks of the same response, then it ends; the firmware closes the connection after
/// 5 s without data. (A v3 response carries one bucket and ends with it.)
pub const BATCH_WINDOW: Duration = Duration::from_secs(3);

/// What a held subscribe knows: the version of each bucket the device holds or was sent.
#[derive(Debug, Clone, Default)]
pub struct HoldState {
    /// Kept for as long as the subscribe is held, thousands at once: a device lists a few keys,
    /// and a small vector costs less than a map.
    known: Vec<(String, Version)>,
    /// Only the keys the device listed may be pushed (v3).
    listed_only: bool,
}

/// One committed change as a held subscribe sees it.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub origin: Origin,
    pub buckets: &'a [(String, Arc<Bucket>)],
}

impl HoldState {
    pub fn new(known: impl IntoIterator<Item = (String, Version)>, listed_only: bool) -> Self {
        let mut hold = Self { known: Vec::new(), listed_only };
        for (key, version) in known {
            hold.remember(&key, version);
        }
        hold
    }

    pub(crate) fn with_capacity(keys: usize, listed_only: bool) -> Self {
        Self { known: Vec::with_capacity(keys), listed_only }
    }

    /// Records what the device holds of `key`, unless already known (a key listed twice counts
    /// once, as first listed).
    pub(crate) fn remember(&mut self, key: &str, version: Version) {
        if self.known(key).is_none() {
            self.known.push((key.to_string(), version));
        }
    }

    /// The version the device holds of `key`, as far as this subscribe knows.
    pub fn known(&self, key: &str) -> Option<Version> {
        self.known.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub(crate) fn set_known(&mut self, key: &str, version: Version) {
        match self.known.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = version,
            None => self.known.push((key.to_string(), version)),
        }
    }

    /// The buckets of `changes` (oldest first) to push now: the newest copy of each bucket the
    /// device does not hold yet, in the order they were first changed; every bucket of a
    /// `/notify-device` change; never the device's own writes. Empty: nothing for this device.
    /// The pushed versions count as known from here on.
    pub fn push(&mut self, changes: &[Committed<'_>]) -> Vec<(String, Arc<Bucket>)> {
        let mut latest: Vec<(&str, &Arc<Bucket>, bool)> = Vec::new();
        for change in changes.iter().filter(|c| c.origin.wakes_device()) {
            let forced = change.origin == Origin::Notify;
            for (key, bucket) in change.buckets {
                if self.listed_only && self.known(key).is_none() {
                    continue;
                }
                match latest.iter_mut().find(|(k, ..)| *k == key) {
                    Some(slot) => *slot = (key, bucket, slot.2 || forced),
                    None => latest.push((key, bucket, forced)),
                }
            }
        }
        let mut out = Vec::with_capacity(latest.len());
        for (key, bucket, forced) in latest {
            let device = self.known(key).unwrap_or(Version::NONE);
            if forced || server_is_newer(Version::of(bucket), device) {
                self.set_known(key, Version::of(bucket));
                out.push((key.to_string(), bucket.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(rev: i64, ts: i64) -> Arc<Bucket> {
        Arc::new(Bucket {
            revision: rev,
            timestamp: ts,
            value: json!({"t": rev}).as_object().cloned().unwrap(),
            updated_at: 0,
        })
    }

    fn hold(listed_only: bool) -> HoldState {
        HoldState::new([("shared.S".to_string(), Version::new(5, 1000))], listed_only)
    }

    #[test]
    fn tv12_a_device_write_is_never_pushed_back() {
        let own = [("shared.S".to_string(), b(6, 2000))];
        assert!(hold(false).push(&[Committed { origin: Origin::Device, buckets: &own }]).is_empty());
    }

    #[test]
    fn tv08_a_command_reaches_the_held_subscribe_once() {
        let mut h = hold(false);
        let cmd = [("shared.S".to_string(), b(6, 2000))];
        let out = h.push(&[Committed { origin: Origin::Command, buckets: &cmd }]);
        assert_eq!(out.len(), 1);
        assert!(h.push(&[Committed { origin: Origin::Command, buckets: &cmd }]).is_empty(), "already sent");
        assert_eq!(h.known("shared.S"), Some(Version::new(6, 2000)));
    }

    #[test]
    fn queued_changes_collapse_to_the_newest_copy_of_each_bucket() {
        let mut h = hold(false);
        let a = [("shared.S".to_string(), b(6, 2000))];
        let both = [("structure.h".to_string(), b(1, 2100)), ("shared.S".to_string(), b(7, 2200))];
        let out = h.push(&[
            Committed { origin: Origin::Command, buckets: &a },
            Committed { origin: Origin::Pairing, buckets: &both },
        ]);
        let keys: Vec<(&str, i64)> = out.iter().map(|(k, b)| (k.as_str(), b.revision)).collect();
        assert_eq!(keys, [("shared.S", 7), ("structure.h", 1)]);
    }

    #[test]
    fn tv17_pairing_reaches_a_device_that_lists_only_its_own_buckets_but_not_on_v3() {
        let pairing = [("user.u1".to_string(), b(1, 3000)), ("structure.u1".to_string(), b(1, 3000))];
        let c = [Committed { origin: Origin::Pairing, buckets: &pairing }];
        assert_eq!(hold(false).push(&c).len(), 2, "same chunk");
        assert!(hold(true).push(&c).is_empty(), "v3 pushes listed keys only");
    }

    #[test]
    fn notify_pushes_even_what_the_device_holds() {
        let same = [("shared.S".to_string(), b(5, 1000))];
        assert!(hold(false).push(&[Committed { origin: Origin::Command, buckets: &same }]).is_empty());
        assert_eq!(hold(false).push(&[Committed { origin: Origin::Notify, buckets: &same }]).len(), 1);
    }
}
