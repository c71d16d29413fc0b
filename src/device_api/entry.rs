//! Service discovery, ping, provisioning info and pairing codes.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{identify, query_param, serial_required, v3};
use crate::AppState;
use crate::body::read_truncated;
use crate::config::origin_parts;
use crate::domain::sync::DialogRequest;
use crate::domain::time::now_ms;
use crate::error::ApiError;
use crate::state::pairing::IssueError;

/// Largest entry form read (a real one is about 150 bytes); the rest is discarded.
const ENTRY_FORM_LIMIT: usize = 16 * 1024;

/// Service URLs. The form the thermostat posts only names its software; the reference changes
/// no state here. roost records that version, and that the thermostat restarted (what it was
/// given before is gone).
pub async fn entry(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let (form, _) = read_truncated(payload, ENTRY_FORM_LIMIT).await;
    let software_version = form_urlencoded::parse(&form)
        .find(|(k, _)| k == "software_version")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.trim().is_empty());
    let mut body = urls(&state);
    if let Some(caller) = identify(&req, None) {
        tracing::debug!(serial = %caller.serial, software_version = software_version.as_deref(), "entry");
        let members = v3::entry_members(&state, &req, &caller.serial, software_version.as_deref()).await;
        if let Value::Object(map) = &mut body {
            map.extend(members);
        }
    }
    HttpResponse::Ok().json(body)
}

fn urls(state: &AppState) -> Value {
    let origin = state.config.origin_with_port();
    let url = |path: &str| format!("{origin}{path}");
    json!({
        "czfe_url": url("/nest/transport"),
        "transport_url": url("/nest/transport"),
        "direct_transport_url": url("/nest/transport"),
        "passphrase_url": url("/nest/passphrase"),
        // As the reference advertises it: the firmware's use of this URL is undocumented.
        "ping_url": url("/nest/transport"),
        "pro_info_url": url("/nest/pro_info"),
        "weather_url": url("/nest/weather/v1?query="),
        "upload_url": url("/nest/upload"),
        "software_update_url": "",
        "server_version": "1.0.0",
        "tier_name": "local",
    })
}

pub async fn ping(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(caller) = identify(&req, None) {
        state.seen(&caller.serial, caller.password.as_deref()).await;
    }
    HttpResponse::Ok().json(json!({"status": "ok", "timestamp": now_ms()}))
}

/// Provisioning facts for installers. Reports the same explicit port that `/nest/entry` uses.
pub async fn info(state: web::Data<AppState>) -> HttpResponse {
    let origin = state.config.origin_with_port();
    let parts = origin_parts(&origin).ok();
    let https = parts.as_ref().is_some_and(|p| p.https);
    json_ok(json!({
        "server": "roost",
        "version": env!("CARGO_PKG_VERSION"),
        "api_origin": state.config.api_origin,
        "cloudregisterurl": format!("{origin}/entry"),
        "ip": parts.as_ref().map(|p| p.host.clone()),
        "port": parts.as_ref().and_then(|p| p.port).unwrap_or(if https { 443 } else { 80 }),
        "ssl": https,
        "require_device_pairing": state.config.require_device_pairing,
        "entry_key_ttl_seconds": state.config.entry_key_ttl_seconds,
    }))
}

fn json_ok(v: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok().json(v)
}

pub async fn pro_info(req: HttpRequest) -> HttpResponse {
    let code =
        req.match_info().get("code").map(String::from).or_else(|| query_param(&req, "entry_code")).unwrap_or_default();
    json_ok(json!({
        "id": 1,
        "pro_id": code,
        "dba": "roost",
        "locality": "A Self-Hosted Thermostat",
        "website": "",
        "rating": 5.0,
    }))
}

/// The pairing code shown on the thermostat. `expires` is a JSON number of milliseconds.
/// The same code is returned while it stays valid; new codes are rate-limited per client
/// address. A code and its confirm-pairing dialog are pending state: they do not count toward
/// `MAX_DEVICES`, they are bounded on their own and they expire, so a genuine thermostat can
/// always get a code.
pub async fn passphrase(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, None).ok_or_else(serial_required)?;
    state.seen(&caller.serial, caller.password.as_deref()).await;
    let ttl_ms = (state.config.entry_key_ttl_seconds as i64).saturating_mul(1000);
    let key = match state.pairing.usable_key(&caller.serial, ttl_ms).await? {
        Some(key) => key,
        None => {
            if let Some(wait) = req.peer_addr().and_then(|peer| state.pairing_throttle.take(peer.ip()).err()) {
                tracing::debug!(serial = %caller.serial, peer = ?req.peer_addr(), "pairing code refused: rate limit");
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("Too many new pairing codes from this address; try again in {wait} s"),
                ));
            }
            let issued = state.pairing.issue_key(&caller.serial, ttl_ms).await.map_err(|e| match e {
                IssueError::Storage(e) => ApiError::from(e),
                IssueError::NoRandomness => {
                    tracing::error!("no pairing code issued: the operating system's random source failed");
                    ApiError::unavailable("Entry key service unavailable")
                }
            })?;
            for serial in &issued.evicted {
                state.drop_pending(serial).await;
            }
            tracing::info!(serial = %caller.serial, "entry key issued");
            issued.key
        }
    };
    state.store.commit(&caller.serial, DialogRequest::Offer { serial: caller.serial.clone() }).await?;
    Ok(json_ok(json!({"value": key.code, "expires": key.expires_at})))
}

pub async fn passphrase_status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, None).ok_or_else(serial_required)?;
    let body = match state.pairing.latest_key(&caller.serial).await? {
        None => json!({"status": "no_key", "claimed": false, "message": "No entry key found for this device"}),
        Some(k) if k.claimed_by.is_some() => {
            json!({"status": "claimed", "claimed": true, "claimedBy": k.claimed_by, "claimedAt": k.claimed_at})
        }
        Some(k) => json!({"status": "pending", "claimed": false, "expiresAt": k.expires_at}),
    };
    Ok(json_ok(body))
}
