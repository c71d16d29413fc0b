//! `GET /api/runtime?serial=&days=&tz=`: how long heating, cooling, the fan and aux heat ran on
//! each of the last `days` days (seconds), for the web UI's runtime bars.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::status::parse_serial;
use crate::AppState;
use crate::device_api::query_param;
use crate::domain::time::now_ms;
use crate::error::ApiError;
use crate::runtime::{DAY_MS, MAX_DAYS, by_day, window};

/// A whole number parameter within bounds, or its default when absent.
fn bounded(req: &HttpRequest, name: &str, default: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64, ApiError> {
    let Some(raw) = query_param(req, name).filter(|s| !s.trim().is_empty()) else { return Ok(default) };
    raw.trim().parse::<i64>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{name} '{raw}' must be a whole number from {} to {}",
            range.start(),
            range.end()
        ))
    })
}

pub async fn runtime(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = parse_serial(query_param(&req, "serial").as_deref())?;
    super::access::grant(&req).check_device(&serial)?;
    if !state.is_known_device(&serial) {
        return Err(ApiError::not_found("Device not found"));
    }
    let days = bounded(&req, "days", 7, 1..=MAX_DAYS)?;
    // Minutes east of UTC (the browser's `-getTimezoneOffset()`); days start at local midnight.
    let tz = bounded(&req, "tz", 0, -14 * 60..=14 * 60)?;
    let now = now_ms();
    let from = now - days * DAY_MS - DAY_MS;
    let points = window(&state.store, &serial, from).await?;
    let days = by_day(&points, now, days, tz);
    Ok(HttpResponse::Ok().json(json!({"serial": serial, "tz": tz, "days": days})))
}
