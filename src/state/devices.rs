//! The thermostats that count toward `MAX_DEVICES`. Checking for room and claiming it happen
//! under one lock, so a flood of new serials cannot overshoot the limit, and each costs O(1).
//! Which serials count is decided by the callers: in open mode every thermostat that syncs (it
//! gets state and an owner row on arrival); with `REQUIRE_DEVICE_PAIRING=true` the paired ones.
//! Pending pairing state (a code, the confirm-pairing dialog) never counts.
//!
//! With PostgreSQL the limit is shared by every node: a claim is decided in a transaction
//! under the serial's row lock and the limit's advisory lock (`state::pg`), and the set kept
//! here is only what this node has seen counted (for reads such as "is this a device").

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sqlx::PgConnection;

use super::pg::Cluster;
use super::store::StoreError;

/// Refusals remembered for logging once per serial (bounded like everything else strangers fill).
const REFUSALS_REMEMBERED: usize = 1024;

pub struct DeviceLimit {
    max: usize,
    counted: Mutex<HashSet<String>>,
    refused: Mutex<HashSet<String>>,
    shared: Option<Arc<Cluster>>,
}

impl DeviceLimit {
    pub fn new(max: usize, counted: impl IntoIterator<Item = String>, shared: Option<Arc<Cluster>>) -> Self {
        let counted: HashSet<String> = counted.into_iter().collect();
        if counted.len() > max {
            tracing::warn!(
                held = counted.len(),
                max,
                "more thermostats are stored than MAX_DEVICES allows; no new ones are accepted"
            );
        }
        Self { max, counted: Mutex::new(counted), refused: Mutex::new(HashSet::new()), shared }
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
    pub async fn claim(&self, serial: &str) -> Result<bool, StoreError> {
        let Some(cluster) = &self.shared else { return Ok(self.claim_here(serial)) };
        let claimed = cluster.claim_device(serial, self.max).await?;
        if claimed {
            self.learn(serial);
        } else {
            self.refused(serial);
        }
        Ok(claimed)
    }

    /// The claim when this process holds the limit alone (SQLite).
    pub(crate) fn claim_here(&self, serial: &str) -> bool {
        let claimed = self.counted.lock().is_ok_and(|mut counted| {
            counted.contains(serial) || (counted.len() < self.max && counted.insert(serial.to_string()))
        });
        if !claimed {
            self.refused(serial);
        }
        claimed
    }

    /// The claim inside a caller's PostgreSQL transaction (pairing); it counts once committed.
    pub(crate) async fn claim_in(&self, tx: &mut PgConnection, serial: &str) -> Result<bool, sqlx::Error> {
        let claimed = match &self.shared {
            Some(cluster) => cluster.claim_device_in(tx, serial, self.max).await?,
            None => self.claim_here(serial),
        };
        if !claimed {
            self.refused(serial);
        }
        Ok(claimed)
    }

    fn refused(&self, serial: &str) {
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

    /// Records that `serial` counts (decided elsewhere: in the database, or by another node).
    pub fn learn(&self, serial: &str) {
        if let Ok(mut counted) = self.counted.lock() {
            counted.insert(serial.to_string());
        }
    }

    /// `serial` no longer counts: its place is free for another thermostat.
    pub async fn release(&self, serial: &str) -> Result<(), StoreError> {
        if let Some(cluster) = &self.shared {
            cluster.release_device(serial).await?;
        }
        self.forget(serial);
        Ok(())
    }

    /// Drops what this process remembers of `serial` (released here or by another node).
    pub fn forget(&self, serial: &str) {
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
        let limit = DeviceLimit::new(2, ["A".to_string()], None);
        assert!(limit.claim_here("A"));
        assert!(limit.claim_here("B"));
        assert!(!limit.claim_here("C"));
        assert!(limit.claim_here("B"), "a counted serial keeps its place");
        limit.forget("A");
        assert!(limit.claim_here("C"));
        assert_eq!(limit.len(), 2);
    }

    #[test]
    fn concurrent_claims_never_overshoot() {
        let limit = std::sync::Arc::new(DeviceLimit::new(10, [], None));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let limit = limit.clone();
                std::thread::spawn(move || (0..100).filter(|i| limit.claim_here(&format!("{t}-{i}"))).count())
            })
            .collect();
        let claimed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!((claimed, limit.len()), (10, 10));
    }
}
