//! When each thermostat was last heard from, and the password it authenticates with.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::time::now_ms;

/// A thermostat not heard from for this long is offline (it subscribes at least every 5 minutes).
pub const OFFLINE_AFTER_MS: i64 = 300_000;
/// Bound on tracked serials, so requests with made-up serials cannot grow memory without end.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct Presence {
    pub last_seen_ms: i64,
    pub api_key: Option<String>,
}

#[derive(Default)]
pub struct Availability {
    seen: Mutex<HashMap<String, Presence>>,
}

impl Availability {
    /// Marks a serial as heard from now. Returns true when it was offline or unknown before.
    pub fn touch(&self, serial: &str, password: Option<&str>) -> bool {
        let now = now_ms();
        let Ok(mut seen) = self.seen.lock() else { return false };
        if !seen.contains_key(serial) && seen.len() >= MAX_TRACKED {
            seen.retain(|_, p| now - p.last_seen_ms < OFFLINE_AFTER_MS);
            if seen.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = seen.entry(serial.to_string()).or_default();
        let came_online = now - entry.last_seen_ms >= OFFLINE_AFTER_MS;
        entry.last_seen_ms = now;
        if let Some(pw) = password.filter(|p| !p.is_empty()) {
            if entry.api_key.as_deref() != Some(pw) {
                entry.api_key = Some(pw.to_string());
            }
        }
        came_online
    }

    pub fn get(&self, serial: &str) -> Option<Presence> {
        self.seen.lock().ok()?.get(serial).cloned()
    }

    pub fn is_available(&self, serial: &str) -> bool {
        self.get(serial).is_some_and(|p| now_ms() - p.last_seen_ms < OFFLINE_AFTER_MS)
    }

    pub fn forget(&self, serial: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(serial);
        }
    }
}
