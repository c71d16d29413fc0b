//! Logs, traces and metrics: the `tracing` subscriber, the request span of both ports
//! ([`requests`]), and the series `/metrics` exposes in Prometheus' text format.

pub mod database;
pub mod exposition;
pub mod process;
pub mod requests;
pub mod series;
pub mod tls;

use tracing_subscriber::EnvFilter;

/// actix's HTTP/1 dispatcher logs every malformed request at ERROR; roost logs them itself at
/// debug, with a rate-limited warning (see `conn`), unless `RUST_LOG` asks for actix's own.
const QUIET_DISPATCHER: &str = "actix_http::h1::dispatcher=off";

/// Installs the global subscriber: pretty, or one JSON object per line whose `span` (the
/// request: port, method, route, serial) and `spans` hold the fields of the spans it ran in.
pub fn init(json: bool, debug: bool) {
    let default = if debug { "roost=debug,info" } else { "info,sqlx=warn" };
    let filter = match std::env::var("RUST_LOG") {
        Ok(own) if own.contains("actix_http") => EnvFilter::new(own),
        Ok(own) => EnvFilter::new(format!("{own},{QUIET_DISPATCHER}")),
        Err(_) => EnvFilter::new(format!("{default},{QUIET_DISPATCHER}")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let result =
        if json { builder.json().with_current_span(true).with_span_list(true).try_init() } else { builder.try_init() };
    let _ = result;
}

/// Names the thermostat the current request is about in its span, so every later log line of
/// the request carries it (a no-op outside a request).
pub fn record_serial(serial: &str) {
    tracing::Span::current().record("serial", serial);
}
