//! Setting a thermostat up from the web UI: find flashed thermostats on the local network
//! (`POST /api/scan-network`) and point one at this server (`POST /api/configure-nest`), through
//! the settings API the NoLongerEvil firmware serves (`/cgi-bin/api/settings`).
//!
//! Both open connections from the server, so (besides being for administrators only, see
//! `access.rs`): targets are private or loopback addresses only, one scan runs at a time with
//! bounded concurrency, every connection has a short timeout, replies are capped in size, and
//! redirects are never followed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, Semaphore};

use crate::AppState;
use crate::body::{MAX_BODY, read_limited};
use crate::config::{Config, origin_parts};
use crate::domain::access::{Cidr, is_scan_target};
use crate::error::ApiError;
use crate::http_client::{Client, Request, Response};

const SETTINGS_PATH: &str = "/cgi-bin/api/settings";
/// Probes in flight at once during a scan.
const SCAN_CONCURRENCY: usize = 64;
/// Scans cover one /24 at most (254 addresses).
const MIN_SCAN_PREFIX: u8 = 24;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(5);
/// Configure requests in flight at once.
const CONFIGURE_CONCURRENCY: usize = 4;
/// A thermostat's settings reply is a few hundred bytes.
const MAX_REPLY: usize = 64 * 1024;

/// The scan's settings, its one-at-a-time lock and the configure bound, shared by all workers.
pub struct Scanner {
    port: u16,
    scanning: Mutex<()>,
    configuring: Semaphore,
}

impl Scanner {
    pub fn new(config: &Config) -> Self {
        Self {
            port: config.thermostat_api_port,
            scanning: Mutex::new(()),
            configuring: Semaphore::new(CONFIGURE_CONCURRENCY),
        }
    }

    fn client(&self, ip: IpAddr) -> Result<Client, std::io::Error> {
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        Ok(Client::new(&format!("http://{host}:{}", self.port))?.limit_body(MAX_REPLY))
    }
}

/// Why a thermostat could not be reached.
enum Failure {
    Timeout,
    Io(std::io::Error),
}

/// One request to a thermostat's settings API, with the connect and total time limits.
async fn exchange(client: &Client, req: &Request, total: Duration) -> Result<Response, Failure> {
    let attempt = async {
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, client.connect())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Io)?;
        conn.roundtrip(req).await.map_err(Failure::Io)
    };
    tokio::time::timeout(total, attempt).await.map_err(|_| Failure::Timeout)?
}

fn not_a_target(what: &str) -> ApiError {
    ApiError::bad_request(format!("{what} is not a private or loopback network; roost only connects to those"))
}

/// The body of an optional-JSON POST (empty means `{}`).
async fn optional_object(payload: web::Payload) -> Result<Map<String, Value>, ApiError> {
    let body = read_limited(payload, MAX_BODY).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("JSON body must be an object")),
        Err(_) => Err(ApiError::bad_request("Invalid JSON")),
    }
}

/// The /24 around `API_ORIGIN`'s address (what the reference scans).
async fn subnet_of_origin(config: &Config) -> Result<Cidr, ApiError> {
    let parts =
        origin_parts(&config.api_origin).map_err(|e| ApiError::bad_request(format!("Invalid api_origin: {e}")))?;
    let host = parts.host.trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() {
        return Err(ApiError::bad_request("Cannot derive subnet: api_origin has no hostname"));
    }
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        // A resolver that does not answer must not hold the request.
        Err(_) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host.as_str(), 0)))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|mut addrs| addrs.find(|a| a.is_ipv4()))
            .map(|a| a.ip()),
    };
    match ip {
        Some(IpAddr::V4(v4)) => parse_subnet(&format!("{v4}/24")),
        _ => Err(ApiError::bad_request(format!(
            "Cannot resolve '{host}' to an IP address. Set api_origin to use an IP address instead of a hostname."
        ))),
    }
}

fn parse_subnet(raw: &str) -> Result<Cidr, ApiError> {
    raw.parse::<Cidr>().map_err(ApiError::bad_request)
}

/// The addresses a scan may probe: an IPv4 range of at most 254 hosts, all private or loopback.
fn scan_hosts(subnet: &Cidr) -> Result<Vec<Ipv4Addr>, ApiError> {
    if !subnet.network().is_ipv4() {
        return Err(ApiError::bad_request("Scans cover IPv4 networks such as 192.168.1.0/24"));
    }
    if subnet.prefix() < MIN_SCAN_PREFIX {
        return Err(ApiError::bad_request(format!(
            "{subnet} is too large; a scan covers one /{MIN_SCAN_PREFIX} (254 addresses) at most"
        )));
    }
    let hosts = subnet.hosts_v4();
    if hosts.iter().any(|ip| !is_scan_target(IpAddr::V4(*ip))) {
        return Err(not_a_target(&subnet.to_string()));
    }
    Ok(hosts)
}

/// Whether a thermostat's `cloudregisterurl` points at this server (same scheme, host and port).
fn points_here(config: &Config, cloudregisterurl: &str) -> bool {
    let effective = |raw: &str| {
        origin_parts(raw).ok().map(|p| {
            let port = p.port.unwrap_or(if p.https { 443 } else { 80 });
            (p.https, p.host.to_ascii_lowercase(), port)
        })
    };
    match (effective(cloudregisterurl), effective(&config.origin_with_port())) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A settings reply, if the host answered like a flashed thermostat.
async fn probe(scanner: &Scanner, ip: Ipv4Addr) -> Option<Map<String, Value>> {
    let client = scanner.client(IpAddr::V4(ip)).ok()?;
    let req = Request::get(SETTINGS_PATH).header("Accept", "application/json").header("Connection", "close");
    let response = exchange(&client, &req, PROBE_TIMEOUT).await.ok()?;
    if response.status() != 200 {
        return None;
    }
    match response.json().ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// `POST /api/scan-network` with an optional `{"subnet": "192.168.1.0/24"}`.
pub async fn scan_network(
    payload: web::Payload,
    state: web::Data<AppState>,
    scanner: web::Data<Scanner>,
) -> Result<HttpResponse, ApiError> {
    let body = optional_object(payload).await?;
    let subnet = match body.get("subnet") {
        None | Some(Value::Null) => subnet_of_origin(&state.config).await?,
        Some(Value::String(s)) if !s.trim().is_empty() => parse_subnet(s)?,
        Some(_) => return Err(ApiError::bad_request("subnet must be a network such as \"192.168.1.0/24\"")),
    };
    let hosts = scan_hosts(&subnet)?;
    let Ok(_running) = scanner.scanning.try_lock() else {
        return Err(ApiError::new(StatusCode::CONFLICT, "A scan is already running; try again when it ends"));
    };
    tracing::info!(%subnet, port = scanner.port, "scanning for thermostats");
    let scanner: &Scanner = &scanner;
    let found: Vec<(Ipv4Addr, Map<String, Value>)> = futures_util::stream::iter(hosts)
        .map(|ip| async move { probe(scanner, ip).await.map(|reply| (ip, reply)) })
        .buffer_unordered(SCAN_CONCURRENCY)
        .filter_map(|found| async move { found })
        .collect()
        .await;
    let mut found = found;
    found.sort_by_key(|(ip, _)| *ip);
    let devices: Vec<Value> = found
        .into_iter()
        .map(|(ip, reply)| {
            let url = reply.get("cloudregisterurl").and_then(Value::as_str).unwrap_or_default().to_string();
            json!({
                "ip": ip.to_string(),
                "device_name": reply.get("device_name").cloned().unwrap_or(Value::Null),
                "configured": points_here(&state.config, &url),
                "cloudregisterurl": url,
            })
        })
        .collect();
    tracing::info!(%subnet, found = devices.len(), "scan finished");
    Ok(HttpResponse::Ok().json(json!({"devices": devices, "subnet": subnet.to_string()})))
}

fn configure_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError { status, body: json!({"success": false, "error": message.into()}) }
}

/// `POST /api/configure-nest` `{"ip": "192.168.1.x", "api_key"?: "<the thermostat's password>"}`:
/// asks the thermostat to use this server. The key is sent as given (it is case-sensitive).
pub async fn configure_nest(
    payload: web::Payload,
    state: web::Data<AppState>,
    scanner: web::Data<Scanner>,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(payload, MAX_BODY).await?;
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return Err(configure_error(StatusCode::BAD_REQUEST, "Invalid JSON"));
    };
    let raw_ip = match body.get("ip").and_then(Value::as_str).map(str::trim) {
        Some(ip) if !ip.is_empty() => ip,
        _ => return Err(configure_error(StatusCode::BAD_REQUEST, "Missing ip")),
    };
    let ip: IpAddr = raw_ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| configure_error(StatusCode::BAD_REQUEST, format!("'{raw_ip}' is not an IP address")))?;
    if !is_scan_target(ip) {
        return Err(configure_error(
            StatusCode::BAD_REQUEST,
            format!("{ip} is not a private or loopback address; roost only connects to those"),
        ));
    }
    let mut settings = Map::new();
    settings.insert("endpoint".into(), Value::from(state.config.origin_with_port()));
    match body.get("api_key") {
        None | Some(Value::Null) => {}
        Some(Value::String(key)) if !key.trim().is_empty() => {
            settings.insert("api_key".into(), Value::from(key.trim()));
        }
        Some(_) => return Err(configure_error(StatusCode::BAD_REQUEST, "api_key must be a non-empty string")),
    }
    let _permit = scanner
        .configuring
        .acquire()
        .await
        .map_err(|_| configure_error(StatusCode::SERVICE_UNAVAILABLE, "Shutting down"))?;
    let client = scanner.client(ip).map_err(|e| configure_error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let req = Request::post(SETTINGS_PATH).json(&Value::Object(settings)).header("Connection", "close");
    let response = match exchange(&client, &req, CONFIGURE_TIMEOUT).await {
        Ok(r) => r,
        Err(Failure::Timeout) => {
            return Err(configure_error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("The thermostat at {ip} did not answer within {} s", CONFIGURE_TIMEOUT.as_secs()),
            ));
        }
        Err(Failure::Io(e)) => return Err(configure_error(StatusCode::BAD_GATEWAY, format!("Connection failed: {e}"))),
    };
    let reply = response.json().ok();
    match response.status() {
        200 => {
            let Some(Value::Object(reply)) = reply else {
                return Err(configure_error(StatusCode::BAD_GATEWAY, "The thermostat's reply is not JSON"));
            };
            tracing::info!(%ip, endpoint = %state.config.origin_with_port(), "thermostat pointed at this server");
            let name = reply.get("device_name").cloned().unwrap_or(Value::Null);
            Ok(HttpResponse::Ok().json(json!({"success": true, "device_name": name})))
        }
        401 => Ok(HttpResponse::Unauthorized().json(json!({"success": false, "auth_required": true}))),
        status => {
            let detail =
                reply.as_ref().and_then(|r| r.get("status")).and_then(Value::as_str).map(String::from).unwrap_or_else(
                    || match status {
                        300..=399 => format!("The thermostat answered HTTP {status} (redirects are not followed)"),
                        _ => format!("The thermostat answered HTTP {status}"),
                    },
                );
            Err(configure_error(StatusCode::BAD_GATEWAY, detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origin: &str) -> Config {
        crate::config::from_args(["--api-origin", origin, "--server-port", "8000"]).unwrap()
    }

    #[test]
    fn which_thermostats_point_here() {
        let c = config("http://192.168.1.50:8000");
        assert!(points_here(&c, "http://192.168.1.50:8000/entry"));
        assert!(points_here(&c, "HTTP://192.168.1.50:8000"));
        assert!(!points_here(&c, "https://192.168.1.50:8000/entry"));
        assert!(!points_here(&c, "http://192.168.1.51:8000/entry"));
        assert!(!points_here(&c, "https://backdoor.nolongerevil.com/entry"));
        assert!(!points_here(&c, ""));
        // No port in API_ORIGIN: the server port is what thermostats are given.
        assert!(points_here(&config("http://nest.lan"), "http://nest.lan:8000/entry"));
    }

    #[test]
    fn scans_stay_small_and_private() {
        let hosts = scan_hosts(&"192.168.7.0/24".parse().unwrap()).unwrap();
        assert_eq!(hosts.len(), 254);
        assert_eq!(scan_hosts(&"127.0.0.0/30".parse().unwrap()).unwrap().len(), 2);
        for refused in ["192.168.0.0/16", "8.8.8.0/24", "100.64.0.0/24", "fd00::/120"] {
            assert!(scan_hosts(&refused.parse().unwrap()).is_err(), "{refused}");
        }
    }
}
