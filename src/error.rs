//! Errors that become JSON responses, in one place.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Value, json};

/// An error answered as JSON. The body shape follows the route family: device routes and most
/// control routes use `{"error": ...}`, command-style routes `{"success": false, "message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, body: json!({ "error": message.into() }) }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// `{"success": false, "message": ...}`
    pub fn failure(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, body: json!({ "success": false, "message": message.into() }) }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(&self.body)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Self::unavailable("Storage unavailable, try again")
    }
}

impl From<crate::state::CommitError<std::convert::Infallible>> for ApiError {
    fn from(e: crate::state::CommitError<std::convert::Infallible>) -> Self {
        crate::state::StoreError::from(e).into()
    }
}

impl From<crate::state::StoreError> for ApiError {
    fn from(e: crate::state::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        Self::unavailable("Storage unavailable, try again")
    }
}
