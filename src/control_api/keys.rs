//! Managing API keys over HTTP (administrators only, see `access.rs`): `GET /api/keys`,
//! `POST /api/keys` (the key is in this one answer only) and `DELETE /api/keys/{id}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::access::Policy;
use crate::body::{MAX_BODY, read_limited};
use crate::domain::time::now_ms;
use crate::error::ApiError;
use crate::state::keys::NewKey;

/// A list given as a JSON array of strings or one comma-separated string.
fn string_list(value: &Value, what: &str) -> Result<Vec<String>, ApiError> {
    match value {
        Value::String(s) => Ok(s.split(',').map(str::to_string).collect()),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| ApiError::bad_request(format!("{what} must be strings")))
            })
            .collect(),
        _ => Err(ApiError::bad_request(format!("{what} must be a list of strings"))),
    }
}

pub async fn list(policy: web::Data<Policy>) -> Result<HttpResponse, ApiError> {
    let now = now_ms();
    let keys: Vec<Value> = policy.keys.list().await?.iter().map(|k| k.to_json(now)).collect();
    Ok(HttpResponse::Ok().json(json!({"keys": keys})))
}

/// `{"name"?, "scopes": ["read", "write"], "devices"?: [serials], "expires"?: RFC 3339}`.
pub async fn create(payload: web::Payload, policy: web::Data<Policy>) -> Result<HttpResponse, ApiError> {
    let body = read_limited(payload, MAX_BODY).await?;
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return Err(ApiError::bad_request("Body must be a JSON object"));
    };
    let text = |key: &str| -> Result<Option<String>, ApiError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
        }
    };
    let name = text("name")?.unwrap_or_default();
    let scopes = match body.get("scopes") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("scopes required: [\"read\"], [\"write\"] or both"));
        }
        Some(v) => string_list(v, "scopes")?.join(","),
    };
    let devices = match body.get("devices") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_list(v, "devices")?),
    };
    let expires = text("expires")?;
    let new = NewKey::parse(&name, &scopes, devices.as_deref(), expires.as_deref()).map_err(ApiError::bad_request)?;
    let (key, record) = policy.keys.create(&new).await.map_err(|e| {
        tracing::error!(error = %e, "could not create an API key");
        ApiError::unavailable("Storage unavailable, try again")
    })?;
    tracing::info!(key_id = record.id, scopes = %record.perms.scopes(), "API key created");
    let mut answer = record.to_json(now_ms());
    if let Value::Object(map) = &mut answer {
        map.insert("key".into(), Value::from(key));
    }
    Ok(HttpResponse::Created().json(answer))
}

pub async fn revoke(req: HttpRequest, policy: web::Data<Policy>) -> Result<HttpResponse, ApiError> {
    let raw = req.match_info().get("id").unwrap_or_default();
    let id: i64 = raw.parse().map_err(|_| ApiError::bad_request(format!("'{raw}' is not a key id")))?;
    match policy.keys.revoke(id).await? {
        Some(record) => {
            tracing::info!(key_id = id, "API key revoked");
            Ok(HttpResponse::Ok().json(json!({"success": true, "key": record.to_json(now_ms())})))
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("No API key with id {id}"))),
    }
}
