//! Bounds on what strangers can make roost hold: thermostats, bytes of state, connections and
//! request time. Each is a setting (flattened into [`crate::Config`]); the README's "Security
//! and limits" section lists them.

use std::time::Duration;

use clap::Args;

/// File descriptors kept out of the connection budget: the database (and its WAL), the runtime,
/// MQTT, the weather client, logs.
pub const RESERVED_FDS: u64 = 64;
/// Smallest connection limit a port may be given.
const MIN_CONNECTIONS: u64 = 4;

#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Thermostats roost holds state for; with `REQUIRE_DEVICE_PAIRING=true` only paired ones count.
    #[arg(long, env = "MAX_DEVICES", value_name = "MAX_DEVICES", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_devices: u64,

    #[arg(long, env = "MAX_BUCKETS_PER_DEVICE", value_name = "MAX_BUCKETS_PER_DEVICE", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_buckets_per_device: u64,

    #[arg(long, env = "MAX_FIELDS_PER_BUCKET", value_name = "MAX_FIELDS_PER_BUCKET", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_fields_per_bucket: u64,

    /// Largest stored bucket, as JSON bytes.
    #[arg(long, env = "MAX_BUCKET_BYTES", value_name = "MAX_BUCKET_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_bucket_bytes: u64,

    /// Largest total of one thermostat's buckets, as JSON bytes.
    #[arg(long, env = "MAX_DEVICE_BYTES", value_name = "MAX_DEVICE_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_device_bytes: u64,

    /// Seconds a request's head and body may take to arrive, from its first byte.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", value_name = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_seconds: u64,

    /// Open connections the device port serves at once (default: most of the file-descriptor limit).
    #[arg(long, env = "SERVER_MAX_CONNECTIONS", value_name = "SERVER_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(MIN_CONNECTIONS..))]
    pub server_max_connections: Option<u64>,

    /// Open connections the control port serves at once (default: `SSE_MAX_CLIENTS` + 256,
    /// within the file-descriptor limit).
    #[arg(long, env = "CONTROL_MAX_CONNECTIONS", value_name = "CONTROL_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(MIN_CONNECTIONS..))]
    pub control_max_connections: Option<u64>,
}

/// How many connections each port may hold open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    pub device: usize,
    pub control: usize,
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    /// Splits the file descriptors roost may open between the two ports, keeping
    /// [`RESERVED_FDS`] for everything else, so a flood on the device port can never leave the
    /// control port (or the database) without a descriptor. Explicit settings that do not fit
    /// are an error naming them.
    pub fn connection_budget(&self, fd_limit: u64, sse_max_clients: u64) -> Result<ConnectionBudget, String> {
        let usable = fd_limit.saturating_sub(RESERVED_FDS);
        if usable < 2 * MIN_CONNECTIONS {
            return Err(format!("the file-descriptor limit ({fd_limit}) is too low to serve; raise it (ulimit -n)"));
        }
        let control = self.control_max_connections.unwrap_or_else(|| {
            let wanted = sse_max_clients.saturating_add(256);
            // Without an explicit setting the control port gets at most a quarter.
            wanted.min(usable / 4).max(MIN_CONNECTIONS)
        });
        let device = self.server_max_connections.unwrap_or_else(|| usable.saturating_sub(control));
        if device.saturating_add(control) > usable {
            return Err(format!(
                "SERVER_MAX_CONNECTIONS ({device}) + CONTROL_MAX_CONNECTIONS ({control}) exceed the {usable} file descriptors available ({fd_limit} minus {RESERVED_FDS} kept for the database and the rest); lower them or raise the limit (ulimit -n)"
            ));
        }
        if device < MIN_CONNECTIONS {
            return Err(format!("CONTROL_MAX_CONNECTIONS ({control}) leaves the device port no connections"));
        }
        Ok(ConnectionBudget { device: device as usize, control: control as usize })
    }
}

/// Raises the soft limit on open files to the hard limit (a Linux default soft limit of 1024 is
/// far below what a fleet of held subscribes needs) and returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let soft = current.unwrap_or(u64::MAX);
    match maximum {
        Some(hard) if hard > soft => {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
                Ok(()) => hard,
                Err(_) => soft,
            }
        }
        _ => soft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(device: Option<u64>, control: Option<u64>) -> Limits {
        let mut l = crate::config::from_args(["--server-port=0"]).unwrap().limits;
        l.server_max_connections = device;
        l.control_max_connections = control;
        l
    }

    #[test]
    fn the_budget_keeps_descriptors_for_the_control_port_and_the_database() {
        let b = limits(None, None).connection_budget(1024, 1000).unwrap();
        assert_eq!(b.control, (1024 - RESERVED_FDS as usize) / 4);
        assert_eq!(b.device + b.control, 1024 - RESERVED_FDS as usize);
        let b = limits(None, None).connection_budget(1_048_576, 1000).unwrap();
        assert_eq!(b.control, 1256);
        let b = limits(Some(100), Some(20)).connection_budget(1024, 1000).unwrap();
        assert_eq!(b, ConnectionBudget { device: 100, control: 20 });
        let err = limits(Some(2000), None).connection_budget(1024, 1000).unwrap_err();
        assert!(err.contains("SERVER_MAX_CONNECTIONS"), "{err}");
        assert!(limits(None, None).connection_budget(40, 1000).is_err());
    }
}
