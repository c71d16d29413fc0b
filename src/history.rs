//! Temperature and heating history for charts: sampled from committed changes of each
//! thermostat's device and shared buckets, kept `HISTORY_DAYS`, pruned hourly.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::domain::bucket::Fields;
use crate::state::{Change, Store, StoreError};

pub use crate::state::repos::{MAX_POINTS, Point};
/// Readings a thermostat can physically report or be set to; anything else stays on the bucket
/// as sent but is not charted (a chart scaled to ±1.7e308 cannot be drawn).
pub const TEMPERATURES_C: RangeInclusive<f64> = -50.0..=80.0;
pub const HUMIDITY_PERCENT: RangeInclusive<f64> = 0.0..=100.0;

fn temperature(v: Option<&Value>) -> Option<f64> {
    within(v.and_then(Value::as_f64), &TEMPERATURES_C)
}

fn within(v: Option<f64>, range: &RangeInclusive<f64>) -> Option<f64> {
    v.filter(|v| range.contains(v))
}

impl Point {
    /// The point with every reading outside [`TEMPERATURES_C`] / [`HUMIDITY_PERCENT`] left out.
    pub fn plausible(self) -> Self {
        Self {
            current_temperature: within(self.current_temperature, &TEMPERATURES_C),
            target_temperature: within(self.target_temperature, &TEMPERATURES_C),
            target_temperature_low: within(self.target_temperature_low, &TEMPERATURES_C),
            target_temperature_high: within(self.target_temperature_high, &TEMPERATURES_C),
            humidity: within(self.humidity, &HUMIDITY_PERCENT),
            ..self
        }
    }
}

fn on(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool).unwrap_or(false)
}

/// The sample for a device's current buckets (shared values win where both carry one).
pub fn sample(at: i64, device: Option<&Fields>, shared: Option<&Fields>) -> Point {
    let s = |k: &str| shared.and_then(|f| f.get(k));
    let d = |k: &str| device.and_then(|f| f.get(k));
    let mode =
        s("target_temperature_type").or_else(|| d("target_temperature_type")).and_then(Value::as_str).map(String::from);
    let any = |keys: &[&str]| keys.iter().any(|k| on(s(k)));
    Point {
        at,
        current_temperature: temperature(s("current_temperature")).or_else(|| temperature(d("current_temperature"))),
        target_temperature: temperature(s("target_temperature")).or_else(|| temperature(d("target_temperature"))),
        target_temperature_low: temperature(s("target_temperature_low")),
        target_temperature_high: temperature(s("target_temperature_high")),
        humidity: within(d("current_humidity").and_then(Value::as_f64), &HUMIDITY_PERCENT),
        mode,
        heating: any(&[
            "hvac_heater_state",
            "hvac_heat_x2_state",
            "hvac_heat_x3_state",
            "hvac_aux_heater_state",
            "hvac_alt_heat_state",
            "hvac_emer_heat_state",
        ]),
        cooling: any(&["hvac_ac_state", "hvac_cool_x2_state", "hvac_cool_x3_state"]),
        fan: on(s("hvac_fan_state")),
        aux: any(&["hvac_aux_heater_state", "hvac_emer_heat_state"]),
    }
}

fn same_reading(a: &Point, b: &Point) -> bool {
    Point { at: 0, ..a.clone() } == Point { at: 0, ..b.clone() }
}

/// Records a sample whenever a thermostat's charted values change, and prunes old history.
pub fn spawn(store: Arc<Store>, days: f64, shutdown: CancellationToken) {
    let mut feed = store.hub().feed();
    let recorder_shutdown = shutdown.clone();
    let recorder_store = store.clone();
    tokio::spawn(async move {
        let mut last: HashMap<String, Point> = HashMap::new();
        loop {
            let change = tokio::select! {
                _ = recorder_shutdown.cancelled() => break,
                c = feed.recv() => c,
            };
            match change {
                Ok(change) => record(&recorder_store, &mut last, &change).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "history recorder fell behind")
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = hourly.tick() => {}
            }
            if let Err(e) = store.history().prune(days).await {
                tracing::warn!(error = %e, "pruning history failed");
            }
        }
    });
}

async fn record(store: &Store, last: &mut HashMap<String, Point>, change: &Change) {
    let serial = &change.serial;
    if change.deleted {
        last.remove(serial);
        return;
    }
    let relevant =
        change.buckets.iter().any(|(k, _)| k == &format!("device.{serial}") || k == &format!("shared.{serial}"));
    if !relevant {
        return;
    }
    let device = store.get(serial, &format!("device.{serial}"));
    let shared = store.get(serial, &format!("shared.{serial}"));
    let point = sample(change.at_ms, device.as_ref().map(|b| &b.value), shared.as_ref().map(|b| &b.value));
    if last.get(serial).is_some_and(|p| same_reading(p, &point)) {
        return;
    }
    let result = store.history().record(serial, &point).await;
    match result {
        Ok(_) => {
            last.insert(serial.clone(), point);
        }
        Err(e) => tracing::warn!(%serial, error = %e, "could not record history"),
    }
}

/// Points of a serial since `since` (ms), oldest first; readings recorded before they were
/// checked are checked here.
pub async fn points(store: &Store, serial: &str, since: i64) -> Result<Vec<Point>, StoreError> {
    Ok(store.history().points(serial, since).await?.into_iter().map(Point::plausible).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn samples_prefer_shared_values_and_read_hvac_flags() {
        let device = json!({"current_temperature": 19.0, "current_humidity": 40}).as_object().cloned().unwrap();
        let shared = json!({"current_temperature": 19.5, "target_temperature": 21.0, "hvac_heater_state": true, "target_temperature_type": "heat"})
            .as_object()
            .cloned()
            .unwrap();
        let p = sample(5, Some(&device), Some(&shared));
        assert_eq!(p.current_temperature, Some(19.5));
        assert_eq!(p.humidity, Some(40.0));
        assert!(p.heating && !p.cooling);
        assert!(same_reading(&p, &sample(9, Some(&device), Some(&shared))));
    }

    #[test]
    fn readings_outside_physical_bounds_are_not_charted() {
        let shared =
            json!({"current_temperature": 1.7e308, "target_temperature": -1.7e308, "target_temperature_low": 10.0})
                .as_object()
                .cloned()
                .unwrap();
        let device = json!({"current_humidity": 140}).as_object().cloned().unwrap();
        let p = sample(5, Some(&device), Some(&shared));
        assert_eq!((p.current_temperature, p.target_temperature, p.humidity), (None, None, None));
        assert_eq!(p.target_temperature_low, Some(10.0));
    }
}
