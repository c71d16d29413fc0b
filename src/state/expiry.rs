//! Expiring commands that never reached their thermostat (see `domain::sync::delivery`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;
use crate::domain::sync::ExpireRequest;
use crate::domain::time::now_ms;

/// Checks for expired commands a few times per expiry period (at most every 30 s) until
/// `shutdown`; each device's expiry is one write through the write path.
pub fn spawn(store: Arc<Store>, shutdown: CancellationToken) {
    let expiry = store.settings().expiry;
    let shortest = expiry.setpoint_ms.min(expiry.other_ms).max(1) as f64 / 1000.0;
    let period = Duration::from_secs_f64((shortest / 4.0).clamp(0.05, 30.0));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            for serial in store.serials_with_expired_commands(now_ms()) {
                match store.commit(&serial, ExpireRequest).await {
                    Ok(done) => {
                        tracing::info!(%serial, fields = done.reply, "commands never sent expired; the thermostat's values were restored")
                    }
                    Err(e) => tracing::warn!(%serial, error = %e, "could not expire commands"),
                }
            }
        }
    });
}
