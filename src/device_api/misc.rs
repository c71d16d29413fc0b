//! Log upload.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{Gated, admit, identify};
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
