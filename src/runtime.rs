//! How long each HVAC stage ran (heat, cool, fan, aux), from the recorded history: per day for
//! the web UI (`GET /api/runtime`) and over the last 24 hours for Home Assistant's sensors.
//! Each history sample holds until the next one; the newest holds until now.

use serde::Serialize;

use crate::domain::time::{iso8601, now_ms};
use crate::history::{Point, sample};
use crate::state::{Store, StoreError};

pub const DAY_MS: i64 = 86_400_000;
/// Longest span `GET /api/runtime` reports (history is kept 30 days by default).
pub const MAX_DAYS: i64 = 90;

/// Seconds each stage ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stages {
    pub heat: i64,
    pub cool: i64,
    pub fan: i64,
    pub aux: i64,
}

impl Stages {
    fn add(&mut self, p: &Point, ms: i64) {
        let s = ms / 1000;
        for (on, total) in
            [(p.heating, &mut self.heat), (p.cooling, &mut self.cool), (p.fan, &mut self.fan), (p.aux, &mut self.aux)]
        {
            if on {
                *total += s;
            }
        }
    }
}

/// One day of runtime, starting at local midnight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD` in the requested time zone.
    pub date: String,
    /// Unix ms of the day's start.
    pub start: i64,
    /// Seconds per stage.
    #[serde(flatten)]
    pub seconds: Stages,
}

/// Seconds each stage ran in `[from, to)`. `points` are oldest first; one before `from` says
/// what held when the window opened.
pub fn totals(points: &[Point], from: i64, to: i64) -> Stages {
    let mut out = Stages::default();
    for (i, p) in points.iter().enumerate() {
        let end = points.get(i + 1).map_or(to, |n| n.at).min(to);
        let start = p.at.max(from);
        if end > start {
            out.add(p, end - start);
        }
    }
    out
}

/// `days` whole local days ending with today, for a zone `offset_min` minutes east of UTC.
pub fn by_day(points: &[Point], now: i64, days: i64, offset_min: i64) -> Vec<Day> {
    let offset = offset_min * 60_000;
    let today = (now + offset).div_euclid(DAY_MS) * DAY_MS - offset;
    (0..days)
        .rev()
        .map(|back| {
            let start = today - back * DAY_MS;
            let end = (start + DAY_MS).min(now);
            Day { date: iso8601(start + offset)[..10].to_string(), start, seconds: totals(points, start, end) }
        })
        .collect()
}

/// The history from `from` to now, with the sample that held at `from`.
pub async fn window(store: &Store, serial: &str, from: i64) -> Result<Vec<Point>, StoreError> {
    let history = store.history();
    let mut out: Vec<Point> = history.point_before(serial, from).await?.into_iter().collect();
    out.extend(history.points(serial, from).await?);
    Ok(out)
}

/// Runtime over the last 24 hours. The live state counts from its last change on, whether or
/// not the history recorder has stored it yet.
pub async fn last_day(store: &Store, serial: &str) -> Result<Stages, StoreError> {
    let now = now_ms();
    let mut points = window(store, serial, now - DAY_MS).await?;
    let device = store.get(serial, &format!("device.{serial}"));
    let shared = store.get(serial, &format!("shared.{serial}"));
    if let Some(changed) = shared.as_ref().map(|b| b.updated_at).filter(|at| points.last().is_none_or(|p| p.at < *at)) {
        points.push(sample(changed, device.as_ref().map(|b| &b.value), shared.as_ref().map(|b| &b.value)));
    }
    Ok(totals(&points, now - DAY_MS, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at: i64, heating: bool, cooling: bool, fan: bool, aux: bool) -> Point {
        Point {
            at,
            current_temperature: None,
            target_temperature: None,
            target_temperature_low: None,
            target_temperature_high: None,
            humidity: None,
            mode: None,
            heating,
            cooling,
            fan,
            aux,
        }
    }

    #[test]
    fn each_sample_holds_until_the_next() {
        let points = [
            p(0, true, false, true, false),
            p(600_000, false, false, false, false),
            p(900_000, true, false, false, true),
        ];
        assert_eq!(totals(&points, 0, 1_200_000), Stages { heat: 900, cool: 0, fan: 600, aux: 300 });
        // A window that opens inside the first sample counts only its part.
        assert_eq!(totals(&points, 300_000, 1_200_000), Stages { heat: 600, cool: 0, fan: 300, aux: 300 });
        assert_eq!(totals(&[], 0, 1_000), Stages::default());
    }

    #[test]
    fn days_split_at_local_midnight() {
        // 2026-01-02 00:00 UTC.
        let midnight = 1_767_312_000_000;
        let points =
            [p(midnight - 3_600_000, false, true, false, false), p(midnight + 1_800_000, false, false, false, false)];
        let days = by_day(&points, midnight + 7_200_000, 2, 0);
        assert_eq!(days.len(), 2);
        assert_eq!((days[0].date.as_str(), days[0].seconds.cool), ("2026-01-01", 3600));
        assert_eq!((days[1].date.as_str(), days[1].seconds.cool, days[1].start), ("2026-01-02", 1800, midnight));
        // An hour east of UTC, local midnight is 23:00 UTC: all 90 minutes fall on the 2nd.
        let days = by_day(&points, midnight + 7_200_000, 2, 60);
        assert_eq!((days[1].date.as_str(), days[1].seconds.cool), ("2026-01-02", 5400));
    }
}
