//! Clock helpers. Bucket timestamps are milliseconds; eco and fan fields are seconds.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn now_s() -> i64 {
    now_ms() / 1000
}

/// The next timestamp of a bucket: never equal to or older than the previous one, so two
/// writes in one millisecond or a clock step backwards never make newer data look older.
pub fn next_timestamp(previous: i64, now: i64) -> i64 {
    now.max(previous.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_strictly_increase() {
        assert_eq!(next_timestamp(0, 1000), 1000);
        assert_eq!(next_timestamp(1000, 1000), 1001);
        assert_eq!(next_timestamp(5000, 1000), 5001);
    }
}
