//! The device port: what a flashed thermostat talks to, route for route as the Nest cloud and
//! the reference server answer it.

mod entry;
mod held;
mod legacy;
mod misc;
pub mod throttle;
mod transport;
mod v3;
mod weather;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};

use crate::AppState;
use crate::control_api::get;
use crate::domain::serial::{Identity, basic_credentials};
use crate::domain::time::now_ms;
use crate::error::ApiError;
use crate::state::pairing::{DEFAULT_USER, Tier};

pub use legacy::rewrite_legacy_path;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/info", entry::info))
        .service(get("/nest/entry", entry::entry).route(web::post().to(entry::entry)))
        .service(get("/nest/ping", entry::ping))
        .service(get("/nest/passphrase", entry::passphrase))
        .service(get("/nest/passphrase/status", entry::passphrase_status))
        .service(get("/nest/pro_info", entry::pro_info))
        .service(get("/nest/pro_info/{code}", entry::pro_info))
        // v3 (firmware 4.x) is chosen by the path (spec v3-firmware §1), ahead of the generic routes.
        .route("/nest/transport/v3/subscribe", web::post().to(v3::subscribe))
        .route("/nest/transport/v3/put", web::post().to(v3::put))
        .service(get("/nest/transport/v3/device/{tail:.*}", v3::listing))
        .route("/nest/transport/", web::post().to(transport::subscribe))
        .route("/nest/transport/subscribe", web::post().to(transport::subscribe))
        .route("/nest/transport/put", web::post().to(transport::put))
        .route("/nest/transport/{version}/subscribe", web::post().to(transport::subscribe))
        .route("/nest/transport/{version}/put", web::post().to(transport::put))
        .service(get("/nest/transport", entry::ping).route(web::post().to(transport::subscribe)))
        .service(get("/nest/transport/device/{serial}", transport::listing))
        .service(get("/nest/transport/{tail:.*}", transport::listing))
        .route("/nest/upload", web::post().to(misc::upload))
        .service(get("/nest/weather/v1", weather::weather))
        .service(get("/nest/weather/{tail:.*}", weather::weather));
}

/// The serial and Basic-auth password a request identifies itself with.
pub(crate) struct Caller {
    pub serial: String,
    pub password: Option<String>,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Finds the serial as the reference does (Basic user, `X-nl-client-id`, `X-nl-device-id`,
/// `X-NL-Device-Serial`, `?serial=`, path), with the body's `session` for MAC usernames.
pub(crate) fn identify(req: &HttpRequest, session: Option<&str>) -> Option<Caller> {
    let basic = header(req, "authorization").and_then(basic_credentials);
    let query_serial = query_param(req, "serial");
    let identity = Identity {
        basic_user: basic.as_ref().map(|(u, _)| u.as_str()),
        client_id: header(req, "x-nl-client-id"),
        device_id: header(req, "x-nl-device-id"),
        device_serial: header(req, "x-nl-device-serial"),
        query_serial: query_serial.as_deref(),
        path_serial: req.match_info().get("serial"),
        session,
    };
    let serial = identity.serial()?;
    crate::telemetry::record_serial(&serial);
    Some(Caller { serial, password: basic.map(|(_, p)| p) })
}

pub(crate) fn too_many_devices(state: &AppState) -> ApiError {
    ApiError::unavailable(format!("roost already holds {} thermostats (MAX_DEVICES)", state.devices.max()))
}

pub(crate) fn serial_required() -> ApiError {
    ApiError::bad_request("Device serial required")
}

/// Which device routes the pairing gate covers, and how a pending device is treated there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gated {
    Subscribe,
    Put,
    Upload,
    Listing,
}

/// What the pairing gate decided for a request.
pub(crate) enum Admission {
    Proceed,
    /// A pending device's PUT: answered `200 {"objects": []}` and dropped.
    DropPut,
    /// A pending device's subscribe: held so pairing can complete, but it writes nothing.
    ReadOnly,
}

/// With `REQUIRE_DEVICE_PAIRING=true`: paired devices proceed; a device with a pending entry
/// key may subscribe (so pairing can complete) but its PUTs are dropped; others get 401.
pub(crate) async fn admit(state: &AppState, caller: &Caller, route: Gated) -> Result<Admission, ApiError> {
    if !state.config.require_device_pairing {
        return Ok(Admission::Proceed);
    }
    match state.pairing.tier(&caller.serial).await? {
        Tier::Paired => Ok(Admission::Proceed),
        Tier::Pending => match route {
            Gated::Subscribe => Ok(Admission::ReadOnly),
            Gated::Listing => Ok(Admission::Proceed),
            Gated::Put => Ok(Admission::DropPut),
            Gated::Upload => Err(ApiError::new(StatusCode::UNAUTHORIZED, "Not authorized")),
        },
        Tier::Unknown => Err(ApiError::new(StatusCode::UNAUTHORIZED, "Device not authorized. Complete pairing first.")),
    }
}

/// Records contact and, in open mode, adopts an unowned device for the default user so it
/// receives a user and a structure bucket (without them the firmware cannot do away/eco). In open
/// mode this is where a new thermostat takes its place under `MAX_DEVICES`, before it gets any
/// state or owner row; with pairing required it took its place when it was paired.
pub(crate) async fn arrived(state: &AppState, caller: &Caller) -> Result<Option<String>, ApiError> {
    if !state.config.require_device_pairing && !state.devices.claim(&caller.serial).await? {
        return Err(too_many_devices(state));
    }
    let owner = match state.pairing.owner(&caller.serial) {
        Some(owner) => Some(owner),
        None if state.config.require_device_pairing => None,
        None => {
            let owner = state.pairing.set_owner_if_absent(&caller.serial, DEFAULT_USER).await?;
            tracing::info!(serial = %caller.serial, owner = %owner, "adopted an unpaired thermostat (REQUIRE_DEVICE_PAIRING=false)");
            Some(owner)
        }
    };
    state.seen(&caller.serial, caller.password.as_deref()).await;
    Ok(owner)
}

/// `200` with the `X-nl-*` timing headers every transport reply carries.
pub(crate) fn transport_ok(state: &AppState) -> HttpResponseBuilder {
    let mut b = HttpResponse::Ok();
    b.insert_header(("X-nl-service-timestamp", now_ms().to_string()))
        .insert_header(("X-nl-suspend-time-max", state.config.suspend_time_max.to_string()))
        .insert_header(("X-nl-defer-device-window", state.config.defer_device_window.to_string()));
    b
}
