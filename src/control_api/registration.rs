//! Pairing thermostats to users, and the user and integration records clients manage.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::command::json_object;
use crate::AppState;
use crate::device_api::query_param;
use crate::domain::serial;
use crate::domain::sync::{PairRequest, RecordRequest};
use crate::error::ApiError;
use crate::state::pairing::DEFAULT_USER;
use crate::state::{Event, Origin};

fn fail(message: impl Into<String>) -> ApiError {
    ApiError::failure(StatusCode::BAD_REQUEST, message)
}

/// `POST /api/register {"code": "123ABCD", "userId": "homeassistant"}`. On success the user and
/// structure buckets go to the thermostat together, in one chunk.
pub async fn register(payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload).await?;
    let code =
        body.get("code").and_then(Value::as_str).map(|c| c.trim().to_ascii_uppercase()).filter(|c| !c.is_empty());
    let user = body.get("userId").and_then(Value::as_str).map(str::trim).filter(|u| !u.is_empty());
    let (Some(code), Some(user)) = (code, user) else {
        return Err(fail("Missing required fields: code, userId"));
    };
    let code: String = code.chars().filter(|c| *c != '-').collect();
    if code.len() != 7 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(fail("Invalid entry code format. Must be exactly 7 alphanumeric characters."));
    }
    // Pairing is where a thermostat takes its place under MAX_DEVICES when pairing is required.
    let serial = match state.pairing.claim(&code, user, &state.devices).await? {
        Ok(serial) => serial,
        Err(e) => return Ok(HttpResponse::Ok().json(json!({"success": false, "message": e.to_string()}))),
    };
    state.store.commit(&serial, PairRequest { serial: serial.clone(), owner: user.to_string() }).await?;
    tracing::info!(%serial, user, "thermostat paired");
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "serial": serial,
        "message": format!("Device {serial} registered to {user}"),
    })))
}

fn user_param(req: &HttpRequest) -> String {
    query_param(req, "userId")
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_USER.into())
}

pub async fn registered_devices(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let devices: Vec<Value> = state
        .pairing
        .devices_of(&user_param(&req))
        .await?
        .into_iter()
        .map(|(serial, created)| json!({"serial": serial, "createdAt": created}))
        .collect();
    Ok(HttpResponse::Ok().json(devices))
}

pub async fn unregister_device(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raw = req.match_info().get("serial").unwrap_or_default();
    if raw.is_empty() || !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(fail("Invalid device serial format"));
    }
    let Some(serial) = serial::sanitize(raw) else { return Err(fail("Invalid device serial format")) };
    crate::telemetry::record_serial(&serial);
    let user = user_param(&req);
    if !state.pairing.unregister(&serial, &user).await? {
        return Ok(HttpResponse::Ok().json(json!({"success": false, "message": format!("Device {serial} not found")})));
    }
    if state.config.require_device_pairing {
        // No longer paired: it no longer counts as a device.
        state.devices.release(&serial).await?;
    }
    let event = Event { kind: "pairing", detail: json!({"action": "unpaired", "user": user}) };
    state.store.commit(&serial, RecordRequest { origin: Origin::Pairing, event }).await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "message": format!("Device {serial} deleted")})))
}

pub async fn ensure_user(payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload).await?;
    let Some(user) = body.get("userId").and_then(Value::as_str).map(str::trim).filter(|u| !u.is_empty()) else {
        return Err(fail("Missing required field: userId"));
    };
    let email = body.get("email").and_then(Value::as_str).map_or_else(|| format!("{user}@local"), String::from);
    let created = state.pairing.ensure_user(user, &email).await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "created": created})))
}

/// Stores the MQTT broker settings a client hands over (the `integrations` row the reference
/// keeps). `MQTT_HOST` in the environment takes precedence at start-up.
pub async fn mqtt_config(payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload).await?;
    let Some(broker) = body.get("brokerUrl").and_then(Value::as_str).map(str::trim).filter(|b| !b.is_empty()) else {
        return Err(fail("Missing required field: brokerUrl"));
    };
    if !(broker.starts_with("mqtt://") || broker.starts_with("mqtts://")) {
        return Err(fail("brokerUrl must start with mqtt:// or mqtts://"));
    }
    let text = |key: &str, default: &str| -> Result<Value, ApiError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(json!(default)),
            Some(Value::String(s)) => Ok(json!(s)),
            Some(_) => Err(fail(format!("{key} must be a string"))),
        }
    };
    let flag = |key: &str| -> Result<Value, ApiError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(json!(true)),
            Some(Value::Bool(b)) => Ok(json!(b)),
            Some(_) => Err(fail(format!("{key} must be true or false"))),
        }
    };
    let mut config = Map::new();
    config.insert("brokerUrl".into(), json!(broker));
    for key in ["username", "password"] {
        if let Some(Value::String(s)) = body.get(key) {
            config.insert(key.into(), json!(s));
        }
    }
    config.insert("clientId".into(), text("clientId", "nolongerevil-homeassistant")?);
    config.insert("topicPrefix".into(), text("topicPrefix", "nolongerevil")?);
    config.insert("discoveryPrefix".into(), text("discoveryPrefix", "homeassistant")?);
    config.insert("publishRaw".into(), flag("publishRaw")?);
    config.insert("homeAssistantDiscovery".into(), flag("homeAssistantDiscovery")?);
    let created = state.store.integrations().set_mqtt(DEFAULT_USER, &Value::Object(config).to_string()).await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "created": created})))
}
