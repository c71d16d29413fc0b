//! The control port's browser-facing guard: CORS for configured origins only, refusal of state
//! changes from foreign origins, and JSON-only bodies on routes that change state (so a
//! cross-site form post cannot). Who may do what (keys, trusted networks) is `access.rs`.

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{Error, HttpResponse};
use futures_util::future::LocalBoxFuture;
use serde_json::json;

/// What the access layer needs to know, built once from the configuration.
#[derive(Clone, Default)]
pub struct Access {
    origins: Vec<String>,
}

impl Access {
    pub fn new(origins: Vec<String>) -> Self {
        Self { origins }
    }

    /// A browser request from another site (its `Origin` is neither this host nor allowed).
    fn foreign_origin(&self, req: &ServiceRequest) -> bool {
        let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
        if self.origins.iter().any(|o| o == origin || o == "*") {
            return false;
        }
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        origin.split_once("://").map(|(_, authority)| authority) != Some(host)
    }

    fn allowed_origin(&self, req: &ServiceRequest) -> Option<HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins.iter().any(|o| o == text || o == "*").then(|| origin.clone())
    }
}

fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    let length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    chunked || length.is_some_and(|l| l > 0)
}

fn is_json(req: &ServiceRequest) -> bool {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(
        |mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        },
    )
}

fn reject(req: ServiceRequest, status: StatusCode, message: &str) -> ServiceResponse<BoxBody> {
    let response = HttpResponse::build(status).json(json!({"error": message}));
    req.into_response(response)
}

fn add_cors(res: &mut ServiceResponse<BoxBody>, origin: HeaderValue) {
    let headers = res.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization, X-API-Key, Last-Event-ID"),
    );
}

/// The control port's access middleware (used with `App::wrap_fn`).
pub fn guard<S>(
    access: &Access,
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error>,
    S::Future: 'static,
{
    let origin = access.allowed_origin(&req);
    if req.method() == Method::OPTIONS {
        let res = match origin {
            Some(origin) => {
                let mut res = req.into_response(HttpResponse::NoContent().finish());
                add_cors(&mut res, origin);
                res
            }
            None => reject(req, StatusCode::FORBIDDEN, "Origin not allowed (set CORS_ORIGINS)"),
        };
        return Box::pin(async move { Ok(res) });
    }
    let changes_state = matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE | Method::PATCH);
    if changes_state && access.foreign_origin(&req) {
        // Another web page trying to change a thermostat. A page on a rebound DNS name passes
        // this check (its origin is the Host it names); `access` refuses it by that Host.
        let res = reject(req, StatusCode::FORBIDDEN, "Origin not allowed (set CORS_ORIGINS)");
        return Box::pin(async move { Ok(res) });
    }
    if changes_state && has_body(&req) && !is_json(&req) {
        let res = reject(req, StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
        return Box::pin(async move { Ok(res) });
    }
    let fut = srv.call(req);
    Box::pin(async move {
        let mut res = fut.await?;
        if let Some(origin) = origin {
            add_cors(&mut res, origin);
        }
        Ok(res)
    })
}
