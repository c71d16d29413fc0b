//! roost: a self-hosted server for flashed Nest thermostats, a drop-in replacement for
//! NoLongerEvil-SelfHosted. [`Application::build`] binds both ports so tests can start it on
//! port 0.

pub mod body;
pub mod commands;
pub mod config;
pub mod control_api;
pub mod device_api;
pub mod domain;
pub mod error;
pub mod hub;
pub mod server;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use server::{AppHandle, Application};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use state::Store;
use state::availability::Availability;
use state::pairing::Pairing;

/// Everything the handlers of both ports share.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub pairing: Arc<Pairing>,
    pub availability: Arc<Availability>,
    pub shutdown: CancellationToken,
    /// Serials that received their structure bucket since this process started: the first
    /// subscribe after a start always gets it, because the device may have reset its mode while
    /// its cached timestamp survived in flash.
    pub structure_sent: Mutex<HashSet<String>>,
}
