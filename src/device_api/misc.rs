//! Log upload and weather.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{Gated, admit, identify, query_param};
use crate::AppState;
use crate::body::{MAX_BODY, read_truncated};
use crate::error::ApiError;

/// Device logs: always `200 {"status": "ok"}` (the firmware treats upload as fire-and-forget).
/// With `STORE_DEVICE_LOGS=true` the body is kept as sent (`.log.gz` when gzip-compressed).
pub async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = identify(&req, None);
    if let Some(caller) = &caller {
        admit(&state, caller, Gated::Upload).await?;
        state.seen(&caller.serial, caller.password.as_deref()).await;
    } else if state.config.require_device_pairing {
        return Err(super::serial_required());
    }
    let (body, truncated) = read_truncated(payload, MAX_BODY).await;
    if state.config.store_device_logs && !truncated && !body.is_empty() {
        let serial = caller.map_or_else(|| "unknown".to_string(), |c| c.serial);
        let gz = body.starts_with(&[0x1f, 0x8b]);
        let dir = state.config.device_logs_dir.join(&serial);
        let name = format!("{}.{}", crate::domain::time::now_ms(), if gz { "log.gz" } else { "log" });
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(dir.join(&name), &body).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%serial, error = %e, "could not store a device log upload");
        }
    } else if truncated {
        tracing::warn!(bytes_limit = MAX_BODY, "device log upload too large, discarded");
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ok"})))
}

/// The weather the thermostat shows. Served from the `weather` table cache; with no cached
/// entry for the location the answer is the reference's 502.
pub async fn weather(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let query = query_param(&req, "query");
    let (postal, country) = match &query {
        Some(q) => match q.split_once(',') {
            Some((p, c)) => (p.trim().to_string(), c.trim().to_string()),
            None => (q.trim().to_string(), "US".to_string()),
        },
        None => (
            query_param(&req, "postal_code").unwrap_or_else(|| "ip".into()),
            query_param(&req, "country").unwrap_or_else(|| "auto".into()),
        ),
    };
    let cached: Option<String> = sqlx::query_scalar(
        "SELECT data FROM weather WHERE \"postalCode\" = ? AND country = ? ORDER BY \"fetchedAt\" DESC LIMIT 1",
    )
    .bind(&postal)
    .bind(&country)
    .fetch_optional(state.store.pool())
    .await?
    .flatten();
    match cached.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()) {
        Some(data) => Ok(HttpResponse::Ok().json(data)),
        None => Err(ApiError::new(actix_web::http::StatusCode::BAD_GATEWAY, "Weather service unavailable")),
    }
}
