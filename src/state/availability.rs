//! When each thermostat was last heard from, whether it counts as online, and the password it
//! authenticates with.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::time::now_ms;

/// Bound on tracked serials, so requests with made-up serials cannot grow memory without end.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct Presence {
    pub last_seen_ms: i64,
    pub api_key: Option<String>,
    pub online: bool,
}

pub struct Availability {
    seen: Mutex<HashMap<String, Presence>>,
    timeout_ms: i64,
}

impl Availability {
    pub fn new(timeout_ms: i64) -> Self {
        Self { seen: Mutex::new(HashMap::new()), timeout_ms }
    }

    /// Marks a serial as heard from now. Returns true when it was offline or unknown before.
    pub fn touch(&self, serial: &str, password: Option<&str>) -> bool {
        let now = now_ms();
        let Ok(mut seen) = self.seen.lock() else { return false };
        if !seen.contains_key(serial) && seen.len() >= MAX_TRACKED {
            let timeout = self.timeout_ms;
            seen.retain(|_, p| now - p.last_seen_ms < timeout);
            if seen.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = seen.entry(serial.to_string()).or_default();
        let came_online = !entry.online;
        entry.online = true;
        entry.last_seen_ms = now;
        if let Some(pw) = password.filter(|p| !p.is_empty()) {
            if entry.api_key.as_deref() != Some(pw) {
                entry.api_key = Some(pw.to_string());
            }
        }
        came_online
    }

    /// Refreshes serials that hold a subscribe and returns those that just went offline.
    pub fn sweep(&self, holds_subscribe: impl Fn(&str) -> bool) -> Vec<String> {
        let now = now_ms();
        let Ok(mut seen) = self.seen.lock() else { return Vec::new() };
        let mut gone = Vec::new();
        for (serial, p) in seen.iter_mut() {
            if holds_subscribe(serial) {
                p.last_seen_ms = now;
            } else if p.online && now - p.last_seen_ms >= self.timeout_ms {
                p.online = false;
                gone.push(serial.clone());
            }
        }
        gone
    }

    pub fn get(&self, serial: &str) -> Option<Presence> {
        self.seen.lock().ok()?.get(serial).cloned()
    }

    pub fn is_available(&self, serial: &str) -> bool {
        self.get(serial).is_some_and(|p| p.online)
    }

    pub fn forget(&self, serial: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(serial);
        }
    }
}
