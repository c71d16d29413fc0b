//! Pushing, dismissing and deleting: `/notify-device`, `/api/dismiss-pairing/{serial}` and
//! `DELETE /api/device`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::command::json_object;
use super::status::parse_serial;
use crate::AppState;
use crate::domain::sync::{DeleteRequest, DialogRequest, NotifyRequest};
use crate::error::ApiError;
use crate::state::Event;

fn error_body(e: ApiError) -> ApiError {
    // These routes answer `{"error": ...}` like the reference, not `{"success": false, ...}`.
    let message = e.body.get("message").and_then(Value::as_str).map(String::from);
    match message {
        Some(m) => ApiError::new(e.status, m),
        None => e,
    }
}

/// The `serial` of a JSON body, normalised; the reference's message when it is missing.
fn body_serial(body: &serde_json::Map<String, Value>) -> Result<String, ApiError> {
    parse_serial(body.get("serial").and_then(Value::as_str)).map_err(|e| match e.body["error"].as_str() {
        Some("Serial parameter required") => ApiError::bad_request("Serial required"),
        _ => e,
    })
}

pub async fn notify_device(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload).await.map_err(error_body)?;
    let serial = body_serial(&body)?;
    super::access::grant(&req).check_device(&serial)?;
    if !state.store.commit(&serial, NotifyRequest).await?.reply {
        return Err(ApiError::not_found("Device not found"));
    }
    let held = state.store.hub().held_count(&serial);
    tracing::info!(%serial, held, "notify-device: all buckets pushed");
    Ok(HttpResponse::Ok().json(json!({"success": true, "subscribers_notified": held})))
}

pub async fn dismiss_pairing(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = parse_serial(req.match_info().get("serial"))?;
    super::access::grant(&req).check_device(&serial)?;
    if !state.store.commit(&serial, DialogRequest::Dismiss { serial: serial.clone() }).await?.reply {
        return Ok(HttpResponse::Ok()
            .json(json!({"success": true, "message": format!("No pairing dialog to dismiss for {serial}")})));
    }
    Ok(HttpResponse::Ok().json(json!({"success": true, "message": format!("Pairing dialog dismissed for {serial}")})))
}

/// Removes everything roost holds about a device: buckets, owner, entry keys, availability
/// and held subscribes. A thermostat that is still running recreates its state on its next PUT.
pub async fn delete_device(payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload).await.map_err(error_body)?;
    let serial = body_serial(&body)?;
    let deleted = remove_device(&state, &serial).await?;
    Ok(HttpResponse::Ok().json(json!({"success": true, "serial": serial, "objects_deleted": deleted})))
}

/// Deletes a device (see [`delete_device`]); the number of buckets removed.
pub(super) async fn remove_device(state: &AppState, serial: &str) -> Result<usize, ApiError> {
    let serial = serial.to_string();
    let owned = state.pairing.owner(&serial).is_some();
    if !state.store.exists(&serial) && !owned {
        return Err(ApiError::not_found("Device not found"));
    }
    let event = Event { kind: "pairing", detail: json!({"action": "deleted"}) };
    let deleted = state.store.commit(&serial, DeleteRequest { event, only_pending_pairing: false }).await?.reply;
    state.pairing.forget(&serial).await?;
    state.devices.release(&serial).await?;
    state.availability.forget(&serial);
    state.firmware.forget(&serial).await?;
    state.store.hub().end_serial(&serial);
    tracing::info!(%serial, buckets = deleted, "device deleted");
    Ok(deleted)
}
