//! The control port: what people and programs use to watch and steer thermostats.

pub mod access;
mod admin;
pub mod auth;
mod command;
pub mod events;
mod history;
pub mod hosts;
mod keys;
mod metrics;
mod rate_limit;
mod registration;
mod runtime;
pub mod setup;
mod status;
mod ui;
mod v1;

use actix_web::{HttpResponse, web};
use serde_json::json;

pub use status::status_object;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/", ui::index))
        .service(get("/ui/app.js", ui::app_js))
        .service(get("/ui/style.css", ui::style))
        .service(get("/health", health))
        .service(get("/status", status::status))
        .service(get("/api/devices", status::devices))
        .route("/command", web::post().to(command::command))
        .route("/notify-device", web::post().to(admin::notify_device))
        .service(get("/api/schedule", status::schedule))
        .service(get("/api/config", status::config))
        .service(get("/api/stats", status::stats))
        .service(get("/api/events", events::events))
        .service(get("/api/events/stats", events::stats))
        .service(get("/api/history", history::history))
        .service(get("/api/history/chart.svg", history::chart))
        .service(get("/api/runtime", runtime::runtime))
        .route("/api/dismiss-pairing/{serial}", web::post().to(admin::dismiss_pairing))
        .route("/api/device", web::delete().to(admin::delete_device))
        .route("/api/register", web::post().to(registration::register))
        .service(get("/api/registered-devices", registration::registered_devices))
        .route("/api/registered-devices/{serial}", web::delete().to(registration::unregister_device))
        .route("/api/ensure-user", web::post().to(registration::ensure_user))
        .route("/api/mqtt-config", web::post().to(registration::mqtt_config))
        .service(get("/api/access", access::describe))
        .service(web::resource("/api/keys").route(web::get().to(keys::list)).route(web::post().to(keys::create)))
        .route("/api/keys/{id}", web::delete().to(keys::revoke))
        .route("/api/scan-network", web::post().to(setup::scan_network))
        .route("/api/configure-nest", web::post().to(setup::configure_nest))
        .service(get("/ui/admin.js", ui::admin_js))
        .service(get("/metrics", metrics::metrics))
        .configure(v1::routes);
}

/// A GET route that also answers HEAD (health checks such as `wget --spider` send HEAD).
pub fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path).route(web::get().to(handler.clone())).route(web::head().to(handler))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}
