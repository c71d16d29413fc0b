//! Access to the control port: the optional API key, CORS for configured origins only, and
//! JSON-only bodies on routes that change state (so a cross-site form post cannot).

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{Error, HttpResponse};
use futures_util::future::LocalBoxFuture;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::device_api::query_param;

/// What the access layer needs to know, built once from the configuration.
#[derive(Clone, Default)]
pub struct Access {
    keys: Vec<String>,
    origins: Vec<String>,
}

impl Access {
    pub fn new(keys: Vec<String>, origins: Vec<String>) -> Self {
        Self { keys, origins }
    }

    pub fn requires_key(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Compares in constant time against every configured key.
    fn key_matches(&self, given: &str) -> bool {
        let given = given.trim().as_bytes();
        self.keys.iter().fold(false, |found, key| found | bool::from(key.as_bytes().ct_eq(given)))
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

/// Paths open without a key: the health probe and the web UI's own page and assets (the page
/// asks for the key itself).
fn is_public(path: &str) -> bool {
    path == "/health" || path == "/" || path.starts_with("/ui/") || path == "/favicon.ico"
}

fn presented_key(req: &ServiceRequest) -> Option<String> {
    let headers = req.headers();
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some((scheme, token)) = authorization.and_then(|v| v.split_once(' ')) {
        // The scheme name is case-insensitive (RFC 9110).
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(token.trim().to_string());
        }
    }
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.to_string());
    }
    query_param(req.request(), "token")
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
    if access.requires_key() && !is_public(req.path()) {
        let verdict = match presented_key(&req) {
            None => Some("API key required (Authorization: Bearer <key>, X-API-Key, or ?token=)"),
            Some(key) if !access.key_matches(&key) => Some("Invalid API key"),
            Some(_) => None,
        };
        if let Some(message) = verdict {
            let mut res = reject(req, StatusCode::UNAUTHORIZED, message);
            if let Some(origin) = origin {
                add_cors(&mut res, origin);
            }
            return Box::pin(async move { Ok(res) });
        }
    }
    let changes_state = matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE | Method::PATCH);
    if changes_state && access.foreign_origin(&req) {
        // Another web page (or a DNS-rebinding attack) trying to change a thermostat.
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
