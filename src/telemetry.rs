//! Logging setup.

use tracing_subscriber::EnvFilter;

pub fn init(json: bool, debug: bool) {
    let default = if debug { "roost=debug,info" } else { "info,sqlx=warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let result = if json { builder.json().try_init() } else { builder.try_init() };
    let _ = result;
}
