//! Logs and metrics: the `tracing` subscriber, and the series `/metrics` exposes in
//! Prometheus' text format.

pub mod database;
pub mod exposition;
pub mod process;
pub mod series;

use tracing_subscriber::EnvFilter;

/// actix's HTTP/1 dispatcher logs every malformed request at ERROR; roost logs them itself at
/// debug, with a rate-limited warning (see `conn`), unless `RUST_LOG` asks for actix's own.
const QUIET_DISPATCHER: &str = "actix_http::h1::dispatcher=off";

pub fn init(json: bool, debug: bool) {
    let default = if debug { "roost=debug,info" } else { "info,sqlx=warn" };
    let filter = match std::env::var("RUST_LOG") {
        Ok(own) if own.contains("actix_http") => EnvFilter::new(own),
        Ok(own) => EnvFilter::new(format!("{own},{QUIET_DISPATCHER}")),
        Err(_) => EnvFilter::new(format!("{default},{QUIET_DISPATCHER}")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let result = if json { builder.json().try_init() } else { builder.try_init() };
    let _ = result;
}
