//! Reading request bodies with a size limit, so an oversized or endless body is a clear 413.

use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::error::ApiError;

/// Largest JSON body accepted on either port.
pub const MAX_BODY: usize = 1024 * 1024;

pub async fn read_limited(mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            // The connection layer ends a request whose body does not arrive in time.
            PayloadError::Incomplete(_) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "The request body did not arrive completely in time")
            }
            e => ApiError::bad_request(format!("Could not read the request body: {e}")),
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body is larger than {limit} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads up to `limit` bytes and drains (discards) the rest: for routes that must answer 200 to anything.
pub async fn read_truncated(mut payload: web::Payload, limit: usize) -> (Bytes, bool) {
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else { return (buf.freeze(), true) };
        if buf.len() + chunk.len() > limit {
            truncated = true;
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    (buf.freeze(), truncated)
}
