//! The thermostats that count toward `MAX_DEVICES`. Checking for room and claiming it happen
//! under one lock, so a flood of new serials cannot overshoot the limit, and each costs O(1).
//! Which serials count is decided by the callers: in open mode every thermostat that syncs (it
//! gets state and an owner row on arrival); with `REQUIRE_DEVICE_PAIRING=true` the paired ones.
//! Pending pairing state (a code, the confirm-pairing dialog) never counts.

use std::collections::HashSet;
use std::sync::Mutex;

/// Refusals remembered for logging once per serial (bounded like everything else strangers fill).
const REFUSALS_REMEMBERED: usize = 1024;

pub struct DeviceLimit {
    max: usize,
    counted: Mutex<HashSet<String>>,
    refused: Mutex<HashSet<String>>,
}

impl DeviceLimit {
    pub fn new(max: usize, counted: impl IntoIterator<Item = String>) -> Self {
        let counted: HashSet<String> = counted.into_iter().collect();
        if counted.len() > max {
            tracing::warn!(
                held = counted.len(),
                max,
                "more thermostats are stored than MAX_DEVICES allows; no new ones are accepted"
            );
        }
        Self { max, counted: Mutex::new(counted), refused: Mutex::new(HashSet::new()) }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.counted.lock().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counts(&self, serial: &str) -> bool {
        self.counted.lock().is_ok_and(|c| c.contains(serial))
    }

    /// Counts `serial` if it counts already or there is room. Refusals are logged once per serial.
    pub fn claim(&self, serial: &str) -> bool {
        let claimed = self.counted.lock().is_ok_and(|mut counted| {
            counted.contains(serial) || (counted.len() < self.max && counted.insert(serial.to_string()))
        });
        if !claimed {
            let first = self.refused.lock().is_ok_and(|mut refused| {
                if refused.len() >= REFUSALS_REMEMBERED {
                    refused.clear();
                }
                refused.insert(serial.to_string())
            });
            if first {
                tracing::warn!(%serial, max = self.max, "refused a new thermostat: MAX_DEVICES reached");
            }
        }
        claimed
    }

    pub fn release(&self, serial: &str) {
        if let Ok(mut counted) = self.counted.lock() {
            counted.remove(serial);
        }
        if let Ok(mut refused) = self.refused.lock() {
            refused.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stop_at_the_limit_and_known_serials_always_pass() {
        let limit = DeviceLimit::new(2, ["A".to_string()]);
        assert!(limit.claim("A"));
        assert!(limit.claim("B"));
        assert!(!limit.claim("C"));
        assert!(limit.claim("B"), "a counted serial keeps its place");
        limit.release("A");
        assert!(limit.claim("C"));
        assert_eq!(limit.len(), 2);
    }

    #[test]
    fn concurrent_claims_never_overshoot() {
        let limit = std::sync::Arc::new(DeviceLimit::new(10, []));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let limit = limit.clone();
                std::thread::spawn(move || (0..100).filter(|i| limit.claim(&format!("{t}-{i}"))).count())
            })
            .collect();
        let claimed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!((claimed, limit.len()), (10, 10));
    }
}
