//! `POST /command`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use crate::AppState;
use crate::body::{MAX_BODY, read_limited};
use crate::commands::{ExecError, execute};
use crate::error::ApiError;

fn fail(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::failure(status, message)
}

/// Parses a JSON object body for a command-style route (`{"success": false, ...}` errors).
pub(super) async fn json_object(payload: web::Payload) -> Result<serde_json::Map<String, Value>, ApiError> {
    let body = read_limited(payload, MAX_BODY)
        .await
        .map_err(|e| fail(e.status, e.body["error"].as_str().unwrap_or("Bad body")))?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(fail(StatusCode::BAD_REQUEST, "JSON body must be an object")),
        Err(_) => Err(fail(StatusCode::BAD_REQUEST, "Invalid JSON")),
    }
}

fn non_empty_str<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

pub async fn command(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload).await?;
    let serial = non_empty_str(&body, "serial").ok_or_else(|| fail(StatusCode::BAD_REQUEST, "Serial required"))?;
    if crate::domain::serial::sanitize(serial).is_some_and(|s| !super::access::grant(&req).may_reach(&s)) {
        return Err(fail(StatusCode::FORBIDDEN, super::access::DEVICE_DENIED));
    }
    let name = non_empty_str(&body, "command").ok_or_else(|| fail(StatusCode::BAD_REQUEST, "Command required"))?;
    let value = body.get("value").unwrap_or(&Value::Null);
    match execute(&state, serial, name, value).await {
        Ok(done) => Ok(HttpResponse::Ok().json(done.to_json())),
        Err(ExecError::NoSerial) => {
            Err(fail(StatusCode::BAD_REQUEST, format!("'{serial}' is not a valid thermostat serial")))
        }
        Err(ExecError::NotFound) => Err(fail(StatusCode::NOT_FOUND, "Device not found")),
        Err(ExecError::Command(e)) => Err(fail(StatusCode::BAD_REQUEST, e.to_string())),
        Err(ExecError::Store(e)) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}
