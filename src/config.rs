//! Configuration from the environment (and a `.env` file), each setting also a `--flag`.
//! The reference's variable names and defaults are kept so an existing `.env` works unchanged.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::domain::v3::profile::{Forced, Overrides};

/// Largest suspend time a thermostat tolerates before it opens overlapping subscriptions.
pub const SUSPEND_TIME_MAX_LIMIT: u64 = 350;
/// Below this, `expires` would be less than 30 minutes ahead and the thermostat rejects the code.
pub const MIN_ENTRY_KEY_TTL_SECONDS: u64 = 1800;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Base URL the thermostats use to reach the device port.
    #[arg(long, env = "API_ORIGIN", value_name = "API_ORIGIN", default_value = "http://localhost:8000")]
    pub api_origin: String,

    #[arg(long, env = "SERVER_HOST", value_name = "SERVER_HOST", default_value = "0.0.0.0")]
    pub server_host: IpAddr,

    #[arg(long, env = "SERVER_PORT", value_name = "SERVER_PORT", default_value_t = 8000)]
    pub server_port: u16,

    #[arg(long, env = "CONTROL_HOST", value_name = "CONTROL_HOST", default_value = "0.0.0.0")]
    pub control_host: IpAddr,

    #[arg(long, env = "CONTROL_PORT", value_name = "CONTROL_PORT", default_value_t = 8082)]
    pub control_port: u16,

    /// Directory holding `fullchain.pem` and `privkey.pem`; when set the device port serves HTTPS.
    #[arg(long, env = "CERT_DIR", value_name = "CERT_DIR")]
    pub cert_dir: Option<PathBuf>,

    #[arg(long, env = "ENTRY_KEY_TTL_SECONDS", value_name = "ENTRY_KEY_TTL_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(60..=30 * 24 * 3600))]
    pub entry_key_ttl_seconds: u64,

    #[arg(long, env = "REQUIRE_DEVICE_PAIRING", value_name = "REQUIRE_DEVICE_PAIRING", default_value = "false",
          value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub require_device_pairing: bool,

    #[arg(long, env = "WEATHER_CACHE_TTL_MS", value_name = "WEATHER_CACHE_TTL_MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(0..=30 * 86_400_000))]
    pub weather_cache_ttl_ms: u64,

    /// Where weather is fetched from (the firmware's own weather service by default).
    #[arg(
        long,
        env = "WEATHER_UPSTREAM_URL",
        value_name = "WEATHER_UPSTREAM_URL",
        default_value = "https://weather.nest.com/weather/v1"
    )]
    pub weather_upstream_url: String,

    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_DEVICE", value_name = "MAX_SUBSCRIPTIONS_PER_DEVICE", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_subscriptions_per_device: u64,

    #[arg(long, env = "SUSPEND_TIME_MAX", value_name = "SUSPEND_TIME_MAX", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(5..=SUSPEND_TIME_MAX_LIMIT))]
    pub suspend_time_max: u64,

    #[arg(long, env = "DEFER_DEVICE_WINDOW", value_name = "DEFER_DEVICE_WINDOW", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(0..=3599))]
    pub defer_device_window: u64,

    #[arg(long, env = "DISABLE_DEFER_WINDOW", value_name = "DISABLE_DEFER_WINDOW", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=3599))]
    pub disable_defer_window: u64,

    /// Seconds a subscribe is held before it is ended with the terminal chunk
    /// (default `SUSPEND_TIME_MAX - 10`).
    #[arg(long, env = "CONNECTION_HOLD_TIMEOUT", value_name = "CONNECTION_HOLD_TIMEOUT")]
    pub connection_hold_timeout: Option<f64>,

    #[arg(long, env = "SQLITE3_DB_PATH", value_name = "SQLITE3_DB_PATH", default_value = "./data/database.sqlite")]
    pub sqlite3_db_path: PathBuf,

    /// `postgres://user:password@host:port/database`: store everything in PostgreSQL instead of
    /// SQLite (several roost nodes may share it). Unset: SQLite at `SQLITE3_DB_PATH`.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[arg(long, env = "DEBUG_LOGGING", value_name = "DEBUG_LOGGING", default_value = "false",
          value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub debug_logging: bool,

    #[arg(long, env = "DEBUG_LOGS_DIR", value_name = "DEBUG_LOGS_DIR", default_value = "./data/debug-logs")]
    pub debug_logs_dir: PathBuf,

    #[arg(long, env = "STORE_DEVICE_LOGS", value_name = "STORE_DEVICE_LOGS", default_value = "false",
          value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub store_device_logs: bool,

    #[arg(long, env = "DEVICE_LOGS_DIR", value_name = "DEVICE_LOGS_DIR", default_value = "./data/device-logs")]
    pub device_logs_dir: PathBuf,

    #[arg(long, env = "MQTT_HOST", value_name = "MQTT_HOST")]
    pub mqtt_host: Option<String>,

    #[arg(long, env = "MQTT_PORT", value_name = "MQTT_PORT", default_value_t = 1883)]
    pub mqtt_port: u16,

    #[arg(long, env = "MQTT_USER", value_name = "MQTT_USER")]
    pub mqtt_user: Option<String>,

    #[arg(long, env = "MQTT_PASSWORD", value_name = "MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,

    /// PEM file of the CA(s) to trust for `mqtts://` (default: the system's CA bundle).
    #[arg(long, env = "MQTT_CA_FILE", value_name = "MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,

    #[arg(long, env = "MQTT_TOPIC_PREFIX", value_name = "MQTT_TOPIC_PREFIX", default_value = "nolongerevil")]
    pub mqtt_topic_prefix: String,

    #[arg(long, env = "MQTT_DISCOVERY_PREFIX", value_name = "MQTT_DISCOVERY_PREFIX", default_value = "homeassistant")]
    pub mqtt_discovery_prefix: String,

    /// Announce only the climate entity to Home Assistant (no sensors, switches or humidifier).
    #[arg(long, env = "MQTT_MINIMAL_DISCOVERY", value_name = "MQTT_MINIMAL_DISCOVERY", default_value = "false",
          value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub mqtt_minimal_discovery: bool,

    /// One key or a comma-separated list; when set, the control port requires it.
    #[arg(long, env = "CONTROL_API_KEY", value_name = "CONTROL_API_KEY", hide_env_values = true)]
    pub control_api_key: Option<String>,

    /// Networks (CIDR list) whose clients may read, command and manage without a key.
    #[arg(long, env = "CONTROL_TRUSTED_NETWORKS", value_name = "CONTROL_TRUSTED_NETWORKS")]
    pub control_trusted_networks: Option<String>,

    /// Requests per minute each key may make on `/api/v1`.
    #[arg(long, env = "V1_RATE_LIMIT_PER_MINUTE", value_name = "V1_RATE_LIMIT_PER_MINUTE", default_value_t = 240,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub v1_rate_limit_per_minute: u32,

    /// Port of the flashed thermostat's own settings API (used by the network scan).
    #[arg(long, env = "THERMOSTAT_API_PORT", value_name = "THERMOSTAT_API_PORT", default_value_t = 8080)]
    pub thermostat_api_port: u16,

    /// Browser origins allowed on the control port (comma-separated); none by default.
    #[arg(long, env = "CORS_ORIGINS", value_name = "CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Extra host names browsers may use for the control port (comma-separated; `*.domain`, or
    /// `*` for any), besides addresses, localhost, API_ORIGIN's host, the hostname and `*.local`.
    #[arg(long, env = "ALLOWED_HOSTS", value_name = "ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,

    #[arg(long, env = "SSE_KEEPALIVE_SECONDS", value_name = "SSE_KEEPALIVE_SECONDS", default_value_t = 15.0)]
    pub sse_keepalive_seconds: f64,

    #[arg(long, env = "SSE_MAX_CLIENTS", value_name = "SSE_MAX_CLIENTS", default_value_t = 1000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000))]
    pub sse_max_clients: usize,

    /// A thermostat not heard from for this long (and holding no subscribe) is offline.
    #[arg(
        long,
        env = "AVAILABILITY_TIMEOUT_SECONDS",
        value_name = "AVAILABILITY_TIMEOUT_SECONDS",
        default_value_t = 300.0
    )]
    pub availability_timeout_seconds: f64,

    /// Days of temperature history kept for the web UI's charts.
    #[arg(long, env = "HISTORY_DAYS", value_name = "HISTORY_DAYS", default_value_t = 30.0)]
    pub history_days: f64,

    /// A setpoint or mode command that never reached its thermostat is dropped after this long.
    #[arg(
        long,
        env = "PENDING_SETPOINT_EXPIRY_SECONDS",
        value_name = "PENDING_SETPOINT_EXPIRY_SECONDS",
        default_value_t = 1800.0
    )]
    pub pending_setpoint_expiry_seconds: f64,

    /// Any other command that never reached its thermostat is dropped after this long.
    #[arg(
        long,
        env = "PENDING_OTHER_EXPIRY_SECONDS",
        value_name = "PENDING_OTHER_EXPIRY_SECONDS",
        default_value_t = 21600.0
    )]
    pub pending_other_expiry_seconds: f64,

    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", default_value = "pretty",
          value_parser = ["pretty", "json"])]
    pub log_format: String,

    /// Response shapes for thermostats on the v3 transport: `auto` picks 4.3 or 4.0 per
    /// thermostat from the software version it reports; `4.3` or `4.0` forces one for all.
    #[arg(long, env = "V3_DIALECT", value_name = "V3_DIALECT", default_value = "auto")]
    pub v3_dialect: Forced,

    /// Per-thermostat v3 profiles for mixed households, `SERIAL:4.0,SERIAL:4.3`; they win over
    /// `V3_DIALECT`.
    #[arg(long, env = "V3_DIALECT_OVERRIDES", value_name = "V3_DIALECT_OVERRIDES", default_value = "")]
    pub v3_dialect_overrides: Overrides,
    #[command(flatten)]
    pub limits: crate::limits::Limits,
}

/// Booleans as the reference accepts them.
fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => Err(format!("'{other}' is not a boolean (use true or false)")),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

impl Config {
    /// Cross-field checks that clap cannot express. Returns warnings worth logging.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let max_hold = self.suspend_time_max.saturating_sub(10) as f64;
        if let Some(hold) = self.connection_hold_timeout {
            if !hold.is_finite() || hold <= 0.0 {
                return Err(ConfigError {
                    name: "CONNECTION_HOLD_TIMEOUT",
                    message: format!("must be a positive number of seconds, got {hold}"),
                });
            }
            if hold > max_hold {
                return Err(ConfigError {
                    name: "CONNECTION_HOLD_TIMEOUT",
                    message: format!(
                        "{hold} s is above SUSPEND_TIME_MAX - 10 = {max_hold} s; the thermostat's own wake timer would fire first and open overlapping subscriptions"
                    ),
                });
            }
        } else if max_hold <= 0.0 {
            return Err(ConfigError {
                name: "SUSPEND_TIME_MAX",
                message: "must be above 10 s so that a subscribe can be held".into(),
            });
        }
        origin_parts(&self.api_origin).map_err(|message| ConfigError { name: "API_ORIGIN", message })?;
        origin_parts(&self.weather_upstream_url)
            .map_err(|message| ConfigError { name: "WEATHER_UPSTREAM_URL", message })?;
        within("SSE_KEEPALIVE_SECONDS", self.sse_keepalive_seconds, 3600.0, "seconds")?;
        within("AVAILABILITY_TIMEOUT_SECONDS", self.availability_timeout_seconds, 30.0 * 86_400.0, "seconds")?;
        within("HISTORY_DAYS", self.history_days, 36_500.0, "days")?;
        if let Some(host) = self.mqtt_host.as_deref().filter(|h| !h.trim().is_empty()) {
            if !crate::mqtt::is_broker_address(host) {
                return Err(ConfigError {
                    name: "MQTT_HOST",
                    message: format!(
                        "'{}' is not a broker address (host, host:port or mqtt[s]://host[:port])",
                        crate::mqtt::without_credentials(host)
                    ),
                });
            }
        }
        if let Some(file) = &self.mqtt_ca_file {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(file).map(|i| i.flatten().count()).unwrap_or(0);
            if certs == 0 {
                return Err(ConfigError {
                    name: "MQTT_CA_FILE",
                    message: format!("{} holds no readable PEM certificate", file.display()),
                });
            }
        }
        if let Some(url) = self.postgres_url() {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError {
                    name: "DATABASE_URL",
                    message: "must be a postgres:// or postgresql:// URL (SQLite is set with SQLITE3_DB_PATH)".into(),
                });
            }
        }
        self.trusted_networks()?;
        within("PENDING_SETPOINT_EXPIRY_SECONDS", self.pending_setpoint_expiry_seconds, 30.0 * 86_400.0, "seconds")?;
        within("PENDING_OTHER_EXPIRY_SECONDS", self.pending_other_expiry_seconds, 30.0 * 86_400.0, "seconds")?;
        if self.entry_key_ttl_seconds < MIN_ENTRY_KEY_TTL_SECONDS {
            warnings.push(format!(
                "ENTRY_KEY_TTL_SECONDS={} is below {MIN_ENTRY_KEY_TTL_SECONDS}: thermostats reject codes that expire within 30 minutes, so every poll gets a fresh code",
                self.entry_key_ttl_seconds
            ));
        }
        Ok(warnings)
    }

    /// `DATABASE_URL` when it selects PostgreSQL (a blank value leaves SQLite in use).
    pub fn postgres_url(&self) -> Option<&str> {
        self.database_url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    /// How long commands that never reached their thermostat stay pending.
    pub fn expiry(&self) -> crate::domain::sync::Expiry {
        let ms = |secs: f64| (secs * 1000.0).min(i64::MAX as f64) as i64;
        crate::domain::sync::Expiry {
            setpoint_ms: ms(self.pending_setpoint_expiry_seconds),
            other_ms: ms(self.pending_other_expiry_seconds),
        }
    }

    pub fn hold_timeout(&self) -> Duration {
        let secs = self.connection_hold_timeout.unwrap_or(self.suspend_time_max.saturating_sub(10) as f64);
        Duration::from_secs_f64(secs)
    }

    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_secs_f64(self.sse_keepalive_seconds)
    }

    /// `API_ORIGIN` with an explicit port: the thermostat's Wi-Fi offload needs one in every URL.
    pub fn origin_with_port(&self) -> String {
        match origin_parts(&self.api_origin) {
            Ok(parts) => match parts.port {
                Some(_) => parts.origin,
                None => format!("{}:{}", parts.origin, self.server_port),
            },
            Err(_) => self.api_origin.trim_end_matches('/').to_string(),
        }
    }

    pub fn api_keys(&self) -> Vec<String> {
        split_list(self.control_api_key.as_deref())
    }

    /// `CONTROL_TRUSTED_NETWORKS`, parsed; `None` when it is not set.
    pub fn trusted_networks(&self) -> Result<Option<Vec<crate::domain::access::Cidr>>, ConfigError> {
        let Some(raw) = self.control_trusted_networks.as_deref().filter(|r| !r.trim().is_empty()) else {
            return Ok(None);
        };
        crate::domain::access::parse_networks(raw)
            .map(Some)
            .map_err(|message| ConfigError { name: "CONTROL_TRUSTED_NETWORKS", message })
    }

    pub fn cors_origin_list(&self) -> Vec<String> {
        split_list(self.cors_origins.as_deref())
    }

    pub fn allowed_host_list(&self) -> Vec<String> {
        split_list(self.allowed_hosts.as_deref())
    }
}

/// A number of `unit` above zero and at most `max`: anything larger would overflow a timer
/// later (an `Instant` plus a huge `Duration` panics).
fn within(name: &'static str, value: f64, max: f64, unit: &str) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= max {
        return Ok(());
    }
    Err(ConfigError { name, message: format!("must be a positive number of {unit}, at most {max}, got {value}") })
}

fn split_list(raw: Option<&str>) -> Vec<String> {
    raw.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The pieces of an origin URL that roost needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginParts {
    /// Scheme and authority, no trailing slash or path.
    pub origin: String,
    pub https: bool,
    pub host: String,
    pub port: Option<u16>,
}

pub fn origin_parts(raw: &str) -> Result<OriginParts, String> {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, rest) =
        raw.split_once("://").ok_or_else(|| format!("'{raw}' needs a scheme, like http://192.168.1.50"))?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        other => return Err(format!("scheme '{other}' is not http or https")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("'{raw}' has no host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if host.is_empty() {
                return Err(format!("'{raw}' has no host"));
            }
            let port = port.parse::<u16>().map_err(|_| format!("'{port}' in '{raw}' is not a port number"))?;
            (host.to_string(), Some(port))
        }
        _ => (authority.to_string(), None),
    };
    Ok(OriginParts { origin: format!("{scheme}://{authority}"), https, host, port })
}

/// Builds a configuration from command-line style arguments (environment variables still
/// fill what the arguments leave out). Used by tests and tools.
pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    #[derive(clap::Parser)]
    struct Only {
        #[command(flatten)]
        config: Config,
    }
    use clap::Parser;
    let all = std::iter::once(std::ffi::OsString::from("roost")).chain(args.into_iter().map(Into::into));
    Only::try_parse_from(all).map(|o| o.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        from_args(args)
    }

    #[test]
    fn origin_gets_the_server_port_when_it_has_none() {
        let c = parse(&["--api-origin", "http://192.168.1.50", "--server-port", "8000"]).unwrap();
        assert_eq!(c.origin_with_port(), "http://192.168.1.50:8000");
        let c = parse(&["--api-origin", "https://nest.lan:443/"]).unwrap();
        assert_eq!(c.origin_with_port(), "https://nest.lan:443");
    }

    #[test]
    fn hold_above_suspend_minus_ten_is_refused() {
        let c = parse(&["--suspend-time-max", "300", "--connection-hold-timeout", "295"]).unwrap();
        let err = c.validate().unwrap_err();
        assert_eq!(err.name, "CONNECTION_HOLD_TIMEOUT");
        let c = parse(&["--suspend-time-max", "300"]).unwrap();
        assert_eq!(c.hold_timeout(), Duration::from_secs(290));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = parse(&["--suspend-time-max", "600"]).err().unwrap().to_string();
        assert!(err.contains("SUSPEND_TIME_MAX"), "{err}");
        let err = parse(&["--require-device-pairing", "maybe"]).err().unwrap().to_string();
        assert!(err.contains("REQUIRE_DEVICE_PAIRING"), "{err}");
        let c = parse(&["--api-origin", "ftp://x"]).unwrap();
        assert_eq!(c.validate().unwrap_err().name, "API_ORIGIN");
        let c = parse(&["--mqtt-host", "mqtt://"]).unwrap();
        assert_eq!(c.validate().unwrap_err().name, "MQTT_HOST");
        let c = parse(&["--control-trusted-networks", "192.168.1.0/24,lan"]).unwrap();
        assert_eq!(c.validate().unwrap_err().name, "CONTROL_TRUSTED_NETWORKS");
        let err = parse(&["--v1-rate-limit-per-minute", "0"]).err().unwrap().to_string();
        assert!(err.contains("V1_RATE_LIMIT_PER_MINUTE"), "{err}");
    }

    #[test]
    fn v3_profiles_are_read_and_bad_ones_name_the_variable() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.v3_dialect, Forced::Auto);
        assert!(c.v3_dialect_overrides.is_empty());
        let c = parse(&["--v3-dialect", "4.0", "--v3-dialect-overrides", "SIM0000000000001:4.3"]).unwrap();
        assert_eq!(c.v3_dialect, Forced::All(crate::domain::v3::Profile::V40));
        assert_eq!(c.v3_dialect_overrides.get("SIM0000000000001"), Some(crate::domain::v3::Profile::V43));
        let err = parse(&["--v3-dialect", "5"]).err().unwrap().to_string();
        assert!(err.contains("V3_DIALECT"), "{err}");
        let err = parse(&["--v3-dialect-overrides", "SIM0000000000001=4.0"]).err().unwrap().to_string();
        assert!(err.contains("V3_DIALECT_OVERRIDES") && err.contains("SERIAL:4.3"), "{err}");
    }

    #[test]
    fn settings_that_would_overflow_a_timer_are_refused() {
        for (flag, name) in [
            ("--sse-keepalive-seconds=1e19", "SSE_KEEPALIVE_SECONDS"),
            ("--sse-keepalive-seconds=0", "SSE_KEEPALIVE_SECONDS"),
            ("--availability-timeout-seconds=1e300", "AVAILABILITY_TIMEOUT_SECONDS"),
            ("--history-days=NaN", "HISTORY_DAYS"),
        ] {
            let c = parse(&[flag]).unwrap();
            assert_eq!(c.validate().unwrap_err().name, name, "{flag}");
        }
        let err = parse(&["--weather-cache-ttl-ms=18446744073709551615"]).err().unwrap().to_string();
        assert!(err.contains("WEATHER_CACHE_TTL_MS"), "{err}");
        let err = parse(&["--max-devices=0"]).err().unwrap().to_string();
        assert!(err.contains("MAX_DEVICES"), "{err}");
        let err = parse(&["--sse-max-clients=99999999999"]).err().unwrap().to_string();
        assert!(err.contains("SSE_MAX_CLIENTS"), "{err}");
    }

    #[test]
    fn short_entry_key_ttl_warns() {
        let c = parse(&["--entry-key-ttl-seconds", "600"]).unwrap();
        assert_eq!(c.validate().unwrap().len(), 1);
    }
}
