//! The hosted NoLongerEvil API (`/api/v1`) on the control port, so its clients (the Home
//! Assistant integration's cloud mode, Homebridge's hosted mode, phone apps, scripts) work
//! against roost with only a new base URL and key. Keys, scopes, device allow-lists and the rate
//! limit are applied by `access.rs`; every write goes through the command module like `/command`.
//!
//! A device's `id` is its serial (one client assumes so).

mod translate;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::access::{self, V1_PREFIX};
use super::status::{known_serials, status_object};
use crate::AppState;
use crate::body::{MAX_BODY, read_limited};
use crate::commands::{ExecError, execute};
use crate::domain::access::Level;
use crate::domain::bucket::{Fields, truthy};
use crate::domain::serial;
use crate::error::ApiError;
use crate::state::pairing::structure_id;
use translate::Command;

/// Buckets the hosted status answer carries.
const STATUS_BUCKETS: [&str; 5] = ["shared.", "device.", "user.", "structure.", "schedule."];

pub fn routes(cfg: &mut web::ServiceConfig) {
    let thermostat = |path: &str| format!("/thermostat/{{id}}{path}");
    cfg.service(
        web::scope(V1_PREFIX)
            .service(resource("/devices").route(web::get().to(devices)).route(web::head().to(devices)))
            .service(resource(&thermostat("/status")).route(web::get().to(status)).route(web::head().to(status)))
            .service(resource(&thermostat("/temperature")).route(web::post().to(set_temperature)))
            .service(resource(&thermostat("/temperature/range")).route(web::post().to(set_range)))
            .service(resource(&thermostat("/mode")).route(web::post().to(set_mode)))
            .service(resource(&thermostat("/away")).route(web::post().to(set_away)))
            .service(resource(&thermostat("/eco")).route(web::post().to(set_eco)))
            .service(resource(&thermostat("/fan")).route(web::post().to(set_fan)))
            .service(resource(&thermostat("/lock")).route(web::post().to(set_lock)))
            .service(
                resource(&thermostat("/schedule"))
                    .route(web::get().to(schedule))
                    .route(web::head().to(schedule))
                    .route(web::put().to(put_schedule)),
            )
            .service(resource(&thermostat("")).route(web::delete().to(delete)))
            .default_service(web::to(|| async { HttpResponse::NotFound().json(json!({"error": "Not found"})) })),
    );
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async {
        HttpResponse::MethodNotAllowed().json(json!({"error": "Method not allowed"}))
    }))
}

/// The device a path names: 403 outside the key's allow-list, 404 when roost does not know it.
fn device(req: &HttpRequest, state: &AppState) -> Result<String, ApiError> {
    let raw = req.match_info().get("id").unwrap_or_default();
    let serial = serial::sanitize(raw).ok_or_else(|| ApiError::not_found("Device not found"))?;
    crate::telemetry::record_serial(&serial);
    access::grant(req).check_device(&serial)?;
    if !known_serials(state).contains(&serial) {
        return Err(ApiError::not_found("Device not found"));
    }
    Ok(serial)
}

/// The display name, or null when the thermostat has none (the hosted API's `name`).
fn name_of(state: &AppState, serial: &str) -> Value {
    match status_object(state, serial).get("name") {
        Some(Value::String(name)) if name != serial => Value::from(name.as_str()),
        _ => Value::Null,
    }
}

fn device_json(state: &AppState, serial: &str) -> Value {
    json!({"id": serial, "serial": serial, "name": name_of(state, serial)})
}

async fn devices(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let grant = access::grant(&req);
    let devices: Vec<Value> = grant
        .visible(known_serials(&state))
        .iter()
        .map(|serial| {
            let mut d = device_json(&state, serial);
            if let Value::Object(map) = &mut d {
                map.insert("accessType".into(), Value::from("owner"));
            }
            d
        })
        .collect();
    HttpResponse::Ok().json(json!({"devices": devices}))
}

/// What the hosted clients read besides the raw buckets, derived when reading (never stored):
/// `auto_away` 2 when away and 0 when home, `eco_mode_enabled`, `temperature_lock_enabled`.
fn derived(shared: &mut Fields, device: &mut Fields, structure: Option<&Fields>) {
    let eco_mode = device.get("eco").and_then(|e| e.get("mode")).and_then(Value::as_str).unwrap_or_default();
    let device_eco = matches!(eco_mode, "manual-eco" | "auto-eco");
    let structure_away = structure.is_some_and(|s| {
        s.get("manual_eco_all").is_some_and(truthy) || s.get("away").is_some_and(|a| a == &Value::Bool(true))
    });
    let away = device_eco || structure_away;
    shared.insert("auto_away".into(), Value::from(if away { 2 } else { 0 }));
    device.insert("eco_mode_enabled".into(), Value::Bool(away));
    let locked = device.get("temperature_lock").is_some_and(truthy);
    device.insert("temperature_lock_enabled".into(), Value::Bool(locked));
}

async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = device(&req, &state)?;
    let buckets = state.store.snapshot(&serial);
    // The structure commands write: the owner's, or `structure.default` for a device without one.
    let owner = state.pairing.owner(&serial);
    let structure_key = format!("structure.{}", owner.as_deref().map_or("default", structure_id));
    let mut values: Map<String, Value> = Map::new();
    let mut shared = buckets.get(&format!("shared.{serial}")).map(|b| b.value.clone()).unwrap_or_default();
    let mut device_fields = buckets.get(&format!("device.{serial}")).map(|b| b.value.clone()).unwrap_or_default();
    derived(&mut shared, &mut device_fields, buckets.get(&structure_key).map(|b| &b.value));
    for (key, bucket) in buckets.iter().filter(|(k, _)| STATUS_BUCKETS.iter().any(|p| k.starts_with(p))) {
        let value = if *key == format!("shared.{serial}") {
            shared.clone()
        } else if *key == format!("device.{serial}") {
            device_fields.clone()
        } else {
            bucket.value.clone()
        };
        values.insert(
            key.clone(),
            json!({"object_revision": bucket.revision, "object_timestamp": bucket.timestamp, "value": value}),
        );
    }
    Ok(HttpResponse::Ok().json(json!({"device": device_json(&state, &serial), "state": values})))
}

async fn schedule(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = device(&req, &state)?;
    let schedule = state.store.get(&serial, &format!("schedule.{serial}")).map(|b| Value::Object(b.value.clone()));
    Ok(HttpResponse::Ok().json(json!({"device": device_json(&state, &serial), "schedule": schedule})))
}

async fn body_object(payload: web::Payload) -> Result<Map<String, Value>, ApiError> {
    let body = read_limited(payload, MAX_BODY).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("Body must be a JSON object")),
        Err(_) if body.is_empty() => Err(ApiError::bad_request("Body must be a JSON object")),
        Err(_) => Err(ApiError::bad_request("Invalid JSON")),
    }
}

/// Runs one translated command and answers like the hosted service.
async fn run(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    translate: fn(&Map<String, Value>) -> Result<Command, String>,
) -> Result<HttpResponse, ApiError> {
    let serial = device(&req, &state)?;
    let body = body_object(payload).await?;
    let command = translate(&body).map_err(ApiError::bad_request)?;
    let done = execute(&state, &serial, command.name, &command.value).await.map_err(|e| match e {
        ExecError::NoSerial | ExecError::NotFound => ApiError::not_found("Device not found"),
        ExecError::Command(e) => ApiError::bad_request(e.to_string()),
        ExecError::Store(e) => ApiError::from(e),
    })?;
    let (revision, timestamp) = state
        .store
        .get(&serial, &done.object_key)
        .map_or((Value::Null, Value::Null), |b| (Value::from(b.revision), Value::from(b.timestamp)));
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "message": "Command handled",
        "device": serial,
        "object": done.object_key,
        "revision": revision,
        "timestamp": timestamp,
    })))
}

async fn set_temperature(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::temperature).await
}

async fn set_range(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::range).await
}

async fn set_mode(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::mode).await
}

async fn set_away(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::away).await
}

async fn set_eco(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::eco).await
}

async fn set_fan(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::fan).await
}

async fn set_lock(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::lock).await
}

async fn put_schedule(req: HttpRequest, p: web::Payload, s: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    run(req, p, s, translate::schedule).await
}

/// Deleting is for administrators (the control key); an API key is told what the hosted
/// service tells a non-owner.
async fn delete(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = device(&req, &state)?;
    if !access::grant(&req).allows(Level::Admin) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Only device owners can delete devices"));
    }
    super::admin::remove_device(&state, &serial).await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "message": "Device deleted successfully"})))
}
