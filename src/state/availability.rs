//! When each thermostat was last heard from, whether it counts as online, and the password it
//! authenticates with.
//!
//! With PostgreSQL a thermostat may talk to any node, so whether it is online is decided in the
//! database (`roost_devices.online`, `last_seen_ms`): the node it reaches marks it online (the
//! node that flips it announces it), every node keeps the last-seen time of the subscribes it
//! holds fresh there, and only the leader marks thermostats offline. Each node's map below is
//! then what it has seen and heard announced.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::PgPool;

use super::store::StoreError;
use crate::domain::time::now_ms;

/// Bound on tracked serials, so requests with made-up serials cannot grow memory without end.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct Presence {
    pub last_seen_ms: i64,
    pub api_key: Option<String>,
    pub online: bool,
    /// When this node last stored the thermostat's presence (PostgreSQL).
    stored_ms: i64,
}

pub struct Availability {
    seen: Mutex<HashMap<String, Presence>>,
    timeout_ms: i64,
    shared: Option<PgPool>,
}

/// What a contact changed, and whether the database needs to hear of it.
struct Touched {
    came_online: bool,
    store: bool,
    password: Option<String>,
}

impl Availability {
    pub fn new(timeout_ms: i64, shared: Option<PgPool>) -> Self {
        Self { seen: Mutex::new(HashMap::new()), timeout_ms, shared }
    }

    /// Marks a serial as heard from now. Returns true when it was offline or unknown before
    /// (with PostgreSQL: for every node, so exactly one announces it).
    pub async fn touch(&self, serial: &str, password: Option<&str>) -> Result<bool, StoreError> {
        let now = now_ms();
        let Some(touched) = self.touch_here(serial, password, now) else { return Ok(false) };
        let Some(pool) = &self.shared else { return Ok(touched.came_online) };
        if !touched.store {
            return Ok(false);
        }
        let was_online: Option<bool> = sqlx::query_scalar(
            "WITH old AS (SELECT serial, online FROM roost_devices WHERE serial = $1 FOR UPDATE)
             UPDATE roost_devices d SET online = TRUE, last_seen_ms = $2, password = COALESCE($3, d.password)
             FROM old WHERE d.serial = old.serial RETURNING old.online",
        )
        .bind(serial)
        .bind(now)
        .bind(touched.password)
        .fetch_optional(pool)
        .await?;
        if let Ok(mut seen) = self.seen.lock() {
            if let Some(p) = seen.get_mut(serial) {
                p.stored_ms = now;
            }
        }
        Ok(was_online == Some(false))
    }

    fn touch_here(&self, serial: &str, password: Option<&str>, now: i64) -> Option<Touched> {
        let mut seen = self.seen.lock().ok()?;
        if !seen.contains_key(serial) && seen.len() >= MAX_TRACKED {
            let timeout = self.timeout_ms;
            seen.retain(|_, p| now - p.last_seen_ms < timeout);
            if seen.len() >= MAX_TRACKED {
                return None;
            }
        }
        let entry = seen.entry(serial.to_string()).or_default();
        let came_online = !entry.online;
        entry.online = true;
        entry.last_seen_ms = now;
        let mut new_password = None;
        if let Some(pw) = password.filter(|p| !p.is_empty()) {
            if entry.api_key.as_deref() != Some(pw) {
                entry.api_key = Some(pw.to_string());
                new_password = Some(pw.to_string());
            }
        }
        // The stored last-seen time only needs to stay well inside the offline timeout.
        let store = came_online || new_password.is_some() || now - entry.stored_ms >= self.timeout_ms / 4;
        Some(Touched { came_online, store, password: new_password })
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

    /// The serials this node has seen that hold a subscribe here.
    pub fn held_serials(&self, holds_subscribe: impl Fn(&str) -> bool) -> Vec<String> {
        let Ok(seen) = self.seen.lock() else { return Vec::new() };
        seen.keys().filter(|s| holds_subscribe(s)).cloned().collect()
    }

    /// PostgreSQL: stores that the serials holding a subscribe here were seen now, and, on the
    /// leader, marks offline (and returns) those no node has heard from within the timeout.
    pub async fn sweep_shared(&self, held: Vec<String>, leader: bool) -> Result<Vec<String>, StoreError> {
        let Some(pool) = &self.shared else { return Ok(Vec::new()) };
        let now = now_ms();
        if let Ok(mut seen) = self.seen.lock() {
            for serial in &held {
                if let Some(p) = seen.get_mut(serial) {
                    p.last_seen_ms = now;
                }
            }
        }
        if !held.is_empty() {
            sqlx::query("UPDATE roost_devices SET last_seen_ms = $1 WHERE serial = ANY($2)")
                .bind(now)
                .bind(&held)
                .execute(pool)
                .await?;
        }
        if !leader {
            return Ok(Vec::new());
        }
        let gone: Vec<(String, Option<i64>)> = sqlx::query_as(
            "UPDATE roost_devices SET online = FALSE WHERE online AND COALESCE(last_seen_ms, 0) <= $1
             RETURNING serial, last_seen_ms",
        )
        .bind(now - self.timeout_ms)
        .fetch_all(pool)
        .await?;
        for (serial, last_seen) in &gone {
            self.observe(serial, false, *last_seen);
        }
        Ok(gone.into_iter().map(|(serial, _)| serial).collect())
    }

    /// What another node saw or announced: online or not, and when it was last heard from.
    pub fn observe(&self, serial: &str, online: bool, last_seen_ms: Option<i64>) {
        let Ok(mut seen) = self.seen.lock() else { return };
        if !seen.contains_key(serial) && seen.len() >= MAX_TRACKED {
            return;
        }
        let entry = seen.entry(serial.to_string()).or_default();
        entry.online = online;
        if let Some(at) = last_seen_ms {
            entry.last_seen_ms = entry.last_seen_ms.max(at);
        }
    }

    /// Another node heard from `serial` at `at_ms` (without changing whether it is online).
    pub fn heard_elsewhere(&self, serial: &str, at_ms: i64) {
        if let Ok(mut seen) = self.seen.lock() {
            if let Some(p) = seen.get_mut(serial) {
                p.last_seen_ms = p.last_seen_ms.max(at_ms);
            }
        }
    }

    /// PostgreSQL: what the database holds about `serial` (another node may have seen it).
    pub async fn reload(&self, serial: &str) -> Result<(), StoreError> {
        let Some(pool) = &self.shared else { return Ok(()) };
        let row: Option<(bool, Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT online, last_seen_ms, password FROM roost_devices WHERE serial = $1")
                .bind(serial)
                .fetch_optional(pool)
                .await?;
        if let Some((online, last_seen, password)) = row {
            self.observe(serial, online, last_seen);
            if let (Some(pw), Ok(mut seen)) = (password, self.seen.lock()) {
                if let Some(p) = seen.get_mut(serial) {
                    p.api_key.get_or_insert(pw);
                }
            }
        }
        Ok(())
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
