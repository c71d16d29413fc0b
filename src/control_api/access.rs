//! Who is calling the control port and what they may do.
//!
//! One middleware turns each request into a [`Grant`]: the control key (`CONTROL_API_KEY`) and
//! trusted networks get everything; an `nle_` API key gets its scopes and device allow-list; a
//! request without a key gets read and write while no control key is set (clients that cannot
//! send a key keep working). It then enforces the route's level, rate-limits `/api/v1` per key,
//! and leaves the grant in the request for handlers that filter by device.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::hosts::{self, AllowedHosts};
use super::rate_limit::{RateLimiter, Verdict};
use crate::config::{Config, ConfigError};
use crate::device_api::query_param;
use crate::domain::access::{self, Cidr, LOCAL_NETWORKS, Level, Perms};
use crate::domain::time::{iso8601, now_ms};
use crate::error::ApiError;
use crate::state::keys::{ApiKeys, KeyRecord, KeyStatus};

pub const KEY_REQUIRED: &str = "API key required (Authorization: Bearer <key>, X-API-Key, or ?token=)";
pub const INVALID_KEY: &str = "Invalid API key";
pub const DEVICE_DENIED: &str = "Access denied to this device";
const ADMIN_ONLY: &str =
    "This needs the control key (CONTROL_API_KEY) or a trusted network (CONTROL_TRUSTED_NETWORKS); API keys cannot";
const ALL_DEVICES_ONLY: &str = "This API key is limited to some devices, and this route covers every device";
/// The hosted API's prefix, served on the control port.
pub const V1_PREFIX: &str = "/api/v1";

/// How a caller got its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ControlKey,
    ApiKey(i64),
    /// A network listed in `CONTROL_TRUSTED_NETWORKS`.
    TrustedNetwork,
    /// The home network, trusted while neither a key nor trusted networks are configured.
    LocalNetwork,
    /// No key, on a port without a control key.
    Open,
    Nobody,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::ControlKey => "control key",
            Via::ApiKey(_) => "api key",
            Via::TrustedNetwork => "trusted network",
            Via::LocalNetwork => "local network",
            Via::Open => "open",
            Via::Nobody => "none",
        }
    }
}

/// What one request may do.
#[derive(Debug, Clone)]
pub struct Grant {
    perms: Perms,
    /// Serials an API key is limited to; `None` = every device.
    devices: Option<Arc<[String]>>,
    via: Via,
}

impl Grant {
    fn new(perms: Perms, via: Via) -> Self {
        Self { perms, devices: None, via }
    }

    fn of_key(key: &KeyRecord) -> Self {
        Self { perms: key.perms, devices: key.devices.clone().map(Into::into), via: Via::ApiKey(key.id) }
    }

    pub fn nobody() -> Self {
        Self::new(Perms::NONE, Via::Nobody)
    }

    pub fn allows(&self, level: Level) -> bool {
        self.perms.allows(level)
    }

    pub fn may_reach(&self, serial: &str) -> bool {
        self.devices.as_ref().is_none_or(|d| d.iter().any(|s| s == serial))
    }

    /// 403 for a serial outside the key's allow-list.
    pub fn check_device(&self, serial: &str) -> Result<(), ApiError> {
        if self.may_reach(serial) { Ok(()) } else { Err(ApiError::new(StatusCode::FORBIDDEN, DEVICE_DENIED)) }
    }

    /// The serials of a list this caller may see.
    pub fn visible(&self, serials: Vec<String>) -> Vec<String> {
        serials.into_iter().filter(|s| self.may_reach(s)).collect()
    }

    /// An event stream's serial filter narrowed to the allow-list (403 for a foreign serial).
    pub fn limit_serials(&self, requested: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
        match (requested, &self.devices) {
            (requested, None) => Ok(requested),
            (None, Some(allowed)) => Ok(Some(allowed.to_vec())),
            (Some(requested), Some(_)) => {
                for serial in &requested {
                    self.check_device(serial)?;
                }
                Ok(Some(requested))
            }
        }
    }

    /// Thermostat passwords unlock their local settings API: only a caller who proved the
    /// control key or comes from a configured trusted network sees a status object's `api_key`.
    pub fn redact(&self, status: &mut Value) {
        if !matches!(self.via, Via::ControlKey | Via::TrustedNetwork) {
            if let Some(key) = status.get_mut("api_key") {
                *key = Value::Null;
            }
        }
    }

    /// Granted without a key: what a web page on a rebound DNS name would get from a browser on
    /// this network, so such a request must name roost by an allowed host (see `hosts`).
    fn keyless(&self) -> bool {
        matches!(self.via, Via::TrustedNetwork | Via::LocalNetwork | Via::Open)
    }

    fn level(&self) -> Option<Level> {
        [Level::Admin, Level::Write, Level::Read].into_iter().find(|l| self.perms.allows(*l))
    }
}

/// The grant the access middleware left in a request (none when it did not run).
pub fn grant(req: &HttpRequest) -> Grant {
    req.extensions().get::<Grant>().cloned().unwrap_or_else(Grant::nobody)
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Need {
    level: Level,
    /// Not about one device (or about every one): an allow-listed key may not use it.
    all_devices: bool,
}

/// What each control route needs; `None` for the open ones (health, the web UI, `/api/access`).
fn need(method: &Method, path: &str) -> Option<Need> {
    if matches!(path, "/health" | "/" | "/favicon.ico" | "/api/access") || path.starts_with("/ui/") {
        return None;
    }
    let admin = Need { level: Level::Admin, all_devices: true };
    let writes = !matches!(*method, Method::GET | Method::HEAD);
    let admin_route = path == "/api/keys"
        || path.starts_with("/api/keys/")
        || path == "/metrics"
        || (writes && matches!(path, "/api/scan-network" | "/api/configure-nest" | "/api/mqtt-config" | "/api/device"))
        || (*method == Method::DELETE && path.starts_with("/api/registered-devices/"));
    if admin_route {
        return Some(admin);
    }
    let all_devices = matches!(
        path,
        "/api/events/stats" | "/api/stats" | "/api/register" | "/api/registered-devices" | "/api/ensure-user"
    );
    Some(Need { level: if writes { Level::Write } else { Level::Read }, all_devices })
}

/// The access settings and the key repository, shared by every worker.
pub struct Policy {
    control_keys: Vec<String>,
    trusted: Option<Vec<Cidr>>,
    pub keys: Arc<ApiKeys>,
    limiter: RateLimiter,
    hosts: AllowedHosts,
    cors_origins: Vec<String>,
}

/// What a request presented.
enum Presented {
    None,
    ControlKey(usize),
    ApiKey(KeyRecord),
    /// An unknown, expired or revoked key.
    Invalid,
}

impl Policy {
    pub fn new(config: &Config, keys: Arc<ApiKeys>) -> Result<Self, ConfigError> {
        let api_host = crate::config::origin_parts(&config.api_origin).ok().map(|p| p.host);
        let machine = hosts::machine_hostname();
        let defaults = api_host.iter().chain(machine.iter()).map(String::as_str);
        Ok(Self {
            control_keys: config.api_keys(),
            trusted: config.trusted_networks()?,
            keys,
            limiter: RateLimiter::new(config.v1_rate_limit_per_minute),
            hosts: AllowedHosts::new(defaults, &config.allowed_host_list()),
            cors_origins: config.cors_origin_list(),
        })
    }

    fn open(&self) -> bool {
        self.control_keys.is_empty()
    }

    /// Networks trusted without a key: the configured ones; with none configured and no control
    /// key, the home network (the reference was open to the whole LAN).
    fn trusts(&self, peer: Option<IpAddr>) -> Option<Via> {
        let peer = access::canonical(peer?);
        match &self.trusted {
            Some(list) => list.iter().any(|c| c.contains(peer)).then_some(Via::TrustedNetwork),
            None if self.open() => LOCAL_NETWORKS.iter().any(|c| c.contains(peer)).then_some(Via::LocalNetwork),
            None => None,
        }
    }

    /// Compares in constant time against every control key.
    fn control_key_index(&self, token: &str) -> Option<usize> {
        let given = token.as_bytes();
        let mut found = None;
        for (i, key) in self.control_keys.iter().enumerate() {
            if bool::from(key.as_bytes().ct_eq(given)) {
                found = Some(i);
            }
        }
        found
    }

    async fn identify(&self, req: &ServiceRequest) -> Result<Presented, ApiError> {
        let Some(token) = presented_token(req) else { return Ok(Presented::None) };
        if let Some(i) = self.control_key_index(&token) {
            return Ok(Presented::ControlKey(i));
        }
        if !access::is_key_shaped(&token) {
            return Ok(Presented::Invalid);
        }
        let now = now_ms();
        match self.keys.find(&token).await? {
            Some(key) if key.status(now) == KeyStatus::Active => {
                if self.keys.due_for_touch(key.id, now) {
                    let keys = self.keys.clone();
                    let id = key.id;
                    tokio::spawn(async move { keys.touch(id, now).await });
                }
                Ok(Presented::ApiKey(key))
            }
            Some(key) => {
                tracing::info!(key_id = key.id, status = key.status(now).as_str(), "refused an API key");
                Ok(Presented::Invalid)
            }
            None => Ok(Presented::Invalid),
        }
    }

    /// The grant of a request that is not under `/api/v1`, or the 401 that refuses it.
    fn control_grant(&self, presented: Presented, peer: Option<IpAddr>) -> Result<Grant, &'static str> {
        let refusal = match presented {
            Presented::ControlKey(_) => return Ok(Grant::new(Perms::ALL, Via::ControlKey)),
            Presented::ApiKey(key) => return Ok(Grant::of_key(&key)),
            Presented::None => KEY_REQUIRED,
            Presented::Invalid => INVALID_KEY,
        };
        // Without a valid key (clients such as Homebridge send made-up tokens) a trusted network
        // or an open port still decides.
        if let Some(via) = self.trusts(peer) {
            return Ok(Grant::new(Perms::ALL, via));
        }
        if self.open() {
            return Ok(Grant::new(Perms::READ_WRITE, Via::Open));
        }
        Err(refusal)
    }
}

/// The key a request carries: `Authorization: Bearer <key>` (or the bare key, as one v1 client
/// sends it), `X-API-Key`, or `?token=` (for EventSource and images, which cannot set headers).
fn presented_token(req: &ServiceRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim) {
        match value.split_once(' ') {
            // The scheme name is case-insensitive (RFC 9110).
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => return Some(token.trim().to_string()),
            None if !value.is_empty() => return Some(value.to_string()),
            _ => {}
        }
    }
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_string());
    }
    query_param(req.request(), "token").map(|t| t.trim().to_string())
}

fn refuse(req: ServiceRequest, status: StatusCode, message: &str) -> ServiceResponse<BoxBody> {
    req.into_response(HttpResponse::build(status).json(json!({"error": message})))
}

/// The control port's access middleware (`actix_web::middleware::from_fn`).
pub async fn authorize<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(policy) = req.app_data::<web::Data<Policy>>().cloned() else {
        return Ok(refuse(req, StatusCode::INTERNAL_SERVER_ERROR, "Access policy missing"));
    };
    let path = req.path().to_string();
    let v1 = path == V1_PREFIX || path.starts_with("/api/v1/");
    let need = need(req.method(), &path);
    if need.is_none() && path != "/api/access" {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let presented = match policy.identify(&req).await {
        Ok(p) => p,
        Err(e) => return Ok(req.into_response(actix_web::ResponseError::error_response(&e))),
    };
    let peer = req.peer_addr().map(|a| a.ip());

    if v1 {
        return v1_request(&policy, presented, req, next).await;
    }
    let grant = match policy.control_grant(presented, peer) {
        Ok(grant) => grant,
        Err(_) if need.is_none() => Grant::nobody(),
        Err(message) => return Ok(refuse(req, StatusCode::UNAUTHORIZED, message)),
    };
    if grant.keyless() {
        if let Some(message) = policy.hosts.refusal(req.headers(), &policy.cors_origins) {
            return Ok(refuse(req, StatusCode::FORBIDDEN, &message));
        }
    }
    if let Some(need) = need {
        if !grant.allows(need.level) {
            let message = match need.level {
                Level::Admin => ADMIN_ONLY.to_string(),
                level => format!("This API key may not {} (its scopes: {})", level.as_str(), grant.perms.scopes()),
            };
            return Ok(refuse(req, StatusCode::FORBIDDEN, &message));
        }
        if need.all_devices && grant.devices.is_some() {
            return Ok(refuse(req, StatusCode::FORBIDDEN, ALL_DEVICES_ONLY));
        }
    }
    req.extensions_mut().insert(grant);
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// `/api/v1`: always a valid key (401 otherwise), counted against the key's rate limit, with
/// the hosted service's headers on every answer.
async fn v1_request<B: MessageBody + 'static>(
    policy: &Policy,
    presented: Presented,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let (grant, bucket) = match presented {
        Presented::ControlKey(i) => (Grant::new(Perms::ALL, Via::ControlKey), format!("control:{i}")),
        Presented::ApiKey(key) => (Grant::of_key(&key), format!("key:{}", key.id)),
        Presented::None | Presented::Invalid => return Ok(refuse(req, StatusCode::UNAUTHORIZED, "Unauthorized")),
    };
    let verdict = policy.limiter.check(&bucket, now_ms());
    let mut res = if !verdict.allowed {
        let retry_after = iso8601(verdict.reset_ms);
        let mut res = req.into_response(
            HttpResponse::TooManyRequests().json(json!({"error": "Rate limit exceeded", "retryAfter": retry_after})),
        );
        let seconds = ((verdict.reset_ms - now_ms()).max(0) + 999) / 1000;
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        res
    } else {
        let level = if matches!(*req.method(), Method::GET | Method::HEAD) { Level::Read } else { Level::Write };
        if grant.allows(level) {
            req.extensions_mut().insert(grant);
            next.call(req).await?.map_into_boxed_body()
        } else {
            refuse(req, StatusCode::FORBIDDEN, DEVICE_DENIED)
        }
    };
    add_rate_headers(res.headers_mut(), &verdict);
    Ok(res)
}

fn add_rate_headers(headers: &mut actix_web::http::header::HeaderMap, v: &Verdict) {
    headers.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(v.limit));
    headers.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(v.remaining));
    if let Ok(reset) = HeaderValue::from_str(&iso8601(v.reset_ms)) {
        headers.insert(HeaderName::from_static("x-ratelimit-reset"), reset);
    }
}

/// `GET /api/access`: which access mode is on and what this caller may do (open, so the web UI
/// can say so before it has a key).
pub async fn describe(req: HttpRequest, policy: web::Data<Policy>) -> HttpResponse {
    let grant = grant(&req);
    let admin = grant.allows(Level::Admin);
    let trusted: Option<Vec<String>> = match &policy.trusted {
        Some(list) => Some(list.iter().map(ToString::to_string).collect()),
        None if policy.open() => Some(LOCAL_NETWORKS.iter().map(ToString::to_string).collect()),
        None => Some(Vec::new()),
    };
    let caller_key = match grant.via {
        Via::ApiKey(id) => {
            json!({"id": id, "scopes": grant.perms.scopes().split(',').collect::<Vec<_>>(), "devices": grant.devices.as_deref()})
        }
        _ => Value::Null,
    };
    HttpResponse::Ok().json(json!({
        "mode": if policy.open() { "open" } else { "key" },
        "trusted_networks_configured": policy.trusted.is_some(),
        // The list itself is for administrators only.
        "trusted_networks": if admin { trusted.map(Value::from).unwrap_or(Value::Null) } else { Value::Null },
        "caller": {
            "address": req.peer_addr().map(|a| access::canonical(a.ip()).to_string()),
            "via": grant.via.as_str(),
            "level": grant.level().map(Level::as_str),
            "key": caller_key,
        },
        "v1_rate_limit_per_minute": policy.limiter.per_minute(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_levels() {
        let level = |m: Method, p: &str| need(&m, p).map(|n| (n.level, n.all_devices));
        assert_eq!(level(Method::GET, "/health"), None);
        assert_eq!(level(Method::GET, "/ui/app.js"), None);
        assert_eq!(level(Method::GET, "/status"), Some((Level::Read, false)));
        assert_eq!(level(Method::HEAD, "/api/devices"), Some((Level::Read, false)));
        assert_eq!(level(Method::POST, "/command"), Some((Level::Write, false)));
        assert_eq!(level(Method::POST, "/api/register"), Some((Level::Write, true)));
        assert_eq!(level(Method::GET, "/api/events/stats"), Some((Level::Read, true)));
        for (m, p) in [
            (Method::DELETE, "/api/device"),
            (Method::POST, "/api/mqtt-config"),
            (Method::POST, "/api/scan-network"),
            (Method::POST, "/api/configure-nest"),
            (Method::GET, "/api/keys"),
            (Method::DELETE, "/api/keys/3"),
            (Method::DELETE, "/api/registered-devices/02AA01AC12345678"),
            (Method::GET, "/metrics"),
        ] {
            assert_eq!(level(m.clone(), p), Some((Level::Admin, true)), "{m} {p}");
        }
    }
}
