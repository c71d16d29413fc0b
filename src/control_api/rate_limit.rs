//! Requests per minute per API key on `/api/v1`, in fixed one-minute windows that start with a
//! key's first request. Counted per process: behind several nodes each node allows the limit.

use std::collections::HashMap;
use std::sync::Mutex;

const WINDOW_MS: i64 = 60_000;
/// Past this many tracked keys, finished windows are dropped.
const PRUNE_ABOVE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When the current window ends (Unix ms).
    pub reset_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: i64,
    count: u32,
}

pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<String, Window>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute.max(1), windows: Mutex::new(HashMap::new()) }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Counts one request of `bucket` at `now_ms`; refused requests are not counted.
    pub fn check(&self, bucket: &str, now_ms: i64) -> Verdict {
        let limit = self.per_minute;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, w| now_ms - w.start_ms < WINDOW_MS);
        }
        let window = windows.entry(bucket.to_string()).or_insert(Window { start_ms: now_ms, count: 0 });
        if now_ms - window.start_ms >= WINDOW_MS || now_ms < window.start_ms {
            *window = Window { start_ms: now_ms, count: 0 };
        }
        let allowed = window.count < limit;
        if allowed {
            window.count += 1;
        }
        Verdict { allowed, limit, remaining: limit - window.count, reset_ms: window.start_ms + WINDOW_MS }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_allows_the_limit_then_resets() {
        let limiter = RateLimiter::new(3);
        let t0 = 1_000_000;
        let seen: Vec<(bool, u32)> =
            (0..5).map(|i| limiter.check("k1", t0 + i * 1000)).map(|v| (v.allowed, v.remaining)).collect();
        assert_eq!(seen, [(true, 2), (true, 1), (true, 0), (false, 0), (false, 0)]);
        assert_eq!(limiter.check("k1", t0 + 59_999).reset_ms, t0 + 60_000);
        // Another key has its own window.
        assert_eq!(
            limiter.check("k2", t0 + 5000),
            Verdict { allowed: true, limit: 3, remaining: 2, reset_ms: t0 + 65_000 }
        );
        // The window ends a minute after its first request.
        let next = limiter.check("k1", t0 + 60_000);
        assert_eq!(next, Verdict { allowed: true, limit: 3, remaining: 2, reset_ms: t0 + 120_000 });
        // A clock stepping backwards starts a fresh window rather than locking the key out.
        assert!(limiter.check("k1", t0).allowed);
    }

    #[test]
    fn finished_windows_are_pruned() {
        let limiter = RateLimiter::new(1);
        for i in 0..=PRUNE_ABOVE {
            limiter.check(&format!("k{i}"), 0);
        }
        limiter.check("late", WINDOW_MS * 2);
        assert_eq!(limiter.windows.lock().unwrap().len(), 1);
    }
}
