//! Several nodes on one PostgreSQL database (see `state::pg`): what a node does when another
//! node's change arrives, and the work that runs on one node only (the leader): the MQTT
//! bridge, the history recorder and marking thermostats offline. With SQLite the one node
//! always leads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use serde_json::Value;
use tokio::sync::watch;

use crate::AppState;
use crate::domain::time::parse_rfc3339;
use crate::state::pg::follow::RemoteObserver;
use crate::state::{Change, Origin};

/// How long a bridge that stops gets to say goodbye to its broker.
const BRIDGE_STOP: Duration = Duration::from_secs(2);
/// Serials whose per-device memory this node has read from the database (bounded: cleared
/// and read again when full).
const MAX_KNOWN: usize = 100_000;

/// Keeps what this node remembers beside the buckets current with other nodes' changes.
pub fn observer(state: web::Data<AppState>) -> RemoteObserver {
    let known = Arc::new(Mutex::new(HashSet::<String>::new()));
    Arc::new(move |change: Arc<Change>| {
        let state = state.clone();
        let known = known.clone();
        Box::pin(async move { remote_change(&state, &known, &change).await })
    })
}

async fn remote_change(state: &AppState, known: &Mutex<HashSet<String>>, change: &Change) {
    let serial = change.serial.as_str();
    if change.deleted {
        state.pairing.forget_cached(serial);
        state.devices.forget(serial);
        state.availability.forget(serial);
        state.firmware.forget_cached(serial);
        state.store.hub().end_serial(serial);
        if let Ok(mut k) = known.lock() {
            k.remove(serial);
        }
        return;
    }
    let kind = change.event.as_ref().map(|e| e.kind);
    let first = known.lock().is_ok_and(|mut k| {
        if k.len() >= MAX_KNOWN {
            k.clear();
        }
        k.insert(serial.to_string())
    });
    // A thermostat first seen through another node, or paired, unpaired or adopted there:
    // its owner, its place under MAX_DEVICES, its firmware and presence come from the database.
    if first || kind == Some("pairing") {
        if let Err(e) = refresh(state, serial).await {
            tracing::warn!(%serial, error = %e, "could not read what another node stored about a thermostat");
        }
    }
    let detail = change.event.as_ref().map(|e| &e.detail);
    match kind {
        Some("command") => {
            if let Err(e) = state.presets.reload().await {
                tracing::warn!(error = %e, "could not read the presets another node stored");
            }
        }
        Some("availability") => {
            let online = detail.and_then(|d| d.get("online")).and_then(Value::as_bool).unwrap_or(false);
            let last_seen = detail.and_then(|d| d.get("last_seen")).and_then(Value::as_str).and_then(parse_rfc3339);
            state.availability.observe(serial, online, last_seen);
        }
        _ => {}
    }
    if change.origin == Origin::Device {
        state.availability.heard_elsewhere(serial, change.at_ms);
    }
}

async fn refresh(state: &AppState, serial: &str) -> anyhow::Result<()> {
    state.pairing.reload_owner(serial).await?;
    if let Some(cluster) = state.store.cluster() {
        if cluster.counts(serial).await? {
            state.devices.learn(serial);
        } else {
            state.devices.forget(serial);
        }
    }
    state.firmware.reload(serial).await?;
    state.availability.reload(serial).await?;
    Ok(())
}

/// Runs the leader's work whenever this node leads, until shutdown: the history recorder and
/// the MQTT bridge (`mqtt`), so each change is recorded and published once, not once per node.
pub async fn lead(state: web::Data<AppState>, mqtt: Option<crate::mqtt::Settings>) {
    let mut leading: watch::Receiver<bool> = state.leading.clone();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            led = leading.wait_for(|l| *l) => if led.is_err() { return },
        }
        let stop = state.shutdown.child_token();
        crate::history::spawn(state.store.clone(), state.config.history_days, stop.clone());
        let bridge = mqtt.clone().map(|settings| crate::mqtt::spawn(state.clone(), settings, stop.clone()));
        tokio::select! {
            _ = state.shutdown.cancelled() => {}
            _ = leading.wait_for(|l| !*l) => {}
        }
        stop.cancel();
        if let Some(bridge) = bridge {
            let _ = tokio::time::timeout(BRIDGE_STOP, bridge).await;
        }
        if state.shutdown.is_cancelled() {
            return;
        }
    }
}
