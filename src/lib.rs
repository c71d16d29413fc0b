//! roost: a self-hosted server for flashed Nest thermostats, a drop-in replacement for
//! NoLongerEvil-SelfHosted. [`Application::build`] binds both ports so tests can start it on
//! port 0.

pub mod body;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod conn;
pub mod control_api;
pub mod device_api;
pub mod domain;
pub mod error;
pub mod history;
pub mod http_client;
pub mod hub;
pub mod keys_cli;
pub mod limits;
pub mod mqtt;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use server::{AppHandle, Application};

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use state::Store;
use state::availability::Availability;
use state::devices::DeviceLimit;
use state::pairing::Pairing;

impl AppState {
    /// Records contact from a thermostat; a known device coming online is an availability event.
    pub async fn seen(&self, serial: &str, password: Option<&str>) {
        match self.availability.touch(serial, password).await {
            Ok(true) if self.is_known_device(serial) => {
                tracing::info!(%serial, "thermostat online");
                self.record_availability(serial, true).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%serial, error = %e, "could not record that a thermostat was seen"),
        }
    }

    /// A thermostat roost holds as a device (it counts toward `MAX_DEVICES`); a serial with only
    /// pending pairing state is not one.
    pub fn is_known_device(&self, serial: &str) -> bool {
        self.devices.counts(serial)
    }

    /// [`Self::is_known_device`], asking the database when this node has not heard of the
    /// thermostat yet (with PostgreSQL it may have arrived through another node a moment ago;
    /// what that node stored is read then, its owner included).
    pub async fn knows_device(&self, serial: &str) -> bool {
        if self.is_known_device(serial) {
            return true;
        }
        let Some(cluster) = self.store.cluster() else { return false };
        match cluster.counts(serial).await {
            Ok(true) => {
                self.devices.learn(serial);
                if let Err(e) = self.pairing.reload_owner(serial).await {
                    tracing::warn!(%serial, error = %e, "could not read the thermostat's owner");
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(%serial, error = %e, "could not ask the database about a thermostat");
                false
            }
        }
    }

    /// The structure bucket of a thermostat: its owner's, or `structure.default` while unowned.
    pub fn structure_key(&self, serial: &str) -> String {
        let owner = self.pairing.owner(serial);
        format!("structure.{}", owner.as_deref().map_or("default", state::pairing::structure_id))
    }

    /// The preset in force for a thermostat (see `domain::preset`).
    pub fn preset(&self, serial: &str) -> domain::preset::Preset {
        let structure = self.structure_key(serial);
        let device = self.store.get(serial, &format!("device.{serial}"));
        let structure_bucket = self.store.get(serial, &structure);
        domain::preset::current(
            device.as_ref().map(|b| &b.value),
            structure_bucket.as_ref().map(|b| &b.value),
            self.presets.asked(&structure),
        )
    }

    /// Removes the pending pairing state (the confirm-pairing dialog) of a serial that is not a
    /// device; its code is gone already.
    pub async fn drop_pending(&self, serial: &str) {
        if self.is_known_device(serial) || !self.store.exists(serial) {
            return;
        }
        let event = state::Event { kind: "pairing", detail: serde_json::json!({"action": "expired"}) };
        // Checked again under the device's write lock: it may have synced meanwhile.
        let request = domain::sync::DeleteRequest { event, only_pending_pairing: true };
        match self.store.commit(serial, request).await {
            Ok(done) if done.reply > 0 => tracing::debug!(%serial, "pending pairing state removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(%serial, error = %e, "could not remove pending pairing state"),
        }
    }

    pub async fn record_availability(&self, serial: &str, online: bool) {
        let last_seen = self.availability.get(serial).map(|p| domain::time::iso8601(p.last_seen_ms));
        let event = state::Event {
            kind: "availability",
            detail: serde_json::json!({"online": online, "last_seen": last_seen}),
        };
        let request = domain::sync::RecordRequest { origin: state::Origin::Server, event };
        if let Err(e) = self.store.commit(serial, request).await {
            tracing::warn!(%serial, error = %e, "could not record an availability change");
        }
    }
}

/// Everything the handlers of both ports share.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub pairing: Arc<Pairing>,
    /// The preset (away or eco) last asked per structure.
    pub presets: Arc<state::presets::Presets>,
    pub availability: Arc<Availability>,
    /// The thermostats that count toward `MAX_DEVICES`.
    pub devices: DeviceLimit,
    /// New pairing codes per client address.
    pub pairing_throttle: device_api::throttle::Throttle,
    pub shutdown: CancellationToken,
    pub events: Arc<control_api::events::EventStreams>,
    pub mqtt: mqtt::SharedStatus,
    /// Software versions the thermostats reported, and the v3 profile each selects.
    pub firmware: Arc<state::firmware::Firmware>,
    /// Whether this node runs what happens once per change, not once per node (MQTT, history,
    /// marking thermostats offline): always with SQLite; with PostgreSQL, the elected node.
    pub leading: tokio::sync::watch::Receiver<bool>,
    /// Held TLS responses sealed or not (the device port's connections count them).
    pub sealing: Arc<telemetry::tls::Sealing>,
}

/// Whether every bucket a serial holds is pending pairing state (the confirm-pairing dialog
/// a code request creates): such a serial is not a device.
pub fn holds_pending_only(buckets: &state::store::Buckets) -> bool {
    domain::sync::server::holds_pending_pairing_only(buckets)
}
