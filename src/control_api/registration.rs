//! Pairing a thermostat to a user with the code it shows.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use super::command::json_object;
use crate::AppState;
use crate::device_api::pairing_buckets;
use crate::error::ApiError;
use crate::state::pairing::ClaimError;
use crate::state::{Op, Origin};

/// `POST /api/register {"code": "123ABCD", "userId": "homeassistant"}`. On success the user and
/// structure buckets go to the thermostat together, in one chunk.
pub async fn register(payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload).await?;
    let code =
        body.get("code").and_then(Value::as_str).map(|c| c.trim().to_ascii_uppercase()).filter(|c| !c.is_empty());
    let user = body.get("userId").and_then(Value::as_str).map(str::trim).filter(|u| !u.is_empty());
    let (Some(code), Some(user)) = (code, user) else {
        return Err(ApiError::failure(StatusCode::BAD_REQUEST, "Missing required fields: code, userId"));
    };
    let code: String = code.chars().filter(|c| *c != '-').collect();
    if code.len() != 7 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::failure(
            StatusCode::BAD_REQUEST,
            "Invalid entry code format. Must be exactly 7 alphanumeric characters.",
        ));
    }
    let serial = match state.pairing.claim(&code, user).await? {
        Ok(serial) => serial,
        Err(e @ ClaimError::Invalid) => {
            return Ok(HttpResponse::Ok().json(json!({"success": false, "message": e.to_string()})));
        }
    };
    // Forced, so both buckets get fresh timestamps and travel together even if they existed.
    let ops = pairing_buckets(&serial, user)
        .into_iter()
        .map(|(key, fields)| Op::Merge { key, fields, if_revision: None })
        .collect();
    state.store.apply(&serial, Origin::Pairing, true, ops).await?;
    tracing::info!(%serial, user, "thermostat paired");
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "serial": serial,
        "message": format!("Device {serial} registered to {user}"),
    })))
}
