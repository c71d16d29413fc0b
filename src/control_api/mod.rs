//! The control port: what people and programs use to watch and steer thermostats.

mod admin;
pub mod auth;
mod command;
pub mod events;
mod registration;
mod status;

use actix_web::{HttpResponse, web};
use serde_json::json;

pub use status::status_object;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/status", web::get().to(status::status))
        .route("/api/devices", web::get().to(status::devices))
        .route("/command", web::post().to(command::command))
        .route("/notify-device", web::post().to(admin::notify_device))
        .route("/api/schedule", web::get().to(status::schedule))
        .route("/api/config", web::get().to(status::config))
        .route("/api/stats", web::get().to(status::stats))
        .route("/api/events", web::get().to(events::events))
        .route("/api/events/stats", web::get().to(events::stats))
        .route("/api/dismiss-pairing/{serial}", web::post().to(admin::dismiss_pairing))
        .route("/api/device", web::delete().to(admin::delete_device))
        .route("/api/register", web::post().to(registration::register))
        .route("/api/registered-devices", web::get().to(registration::registered_devices))
        .route("/api/registered-devices/{serial}", web::delete().to(registration::unregister_device))
        .route("/api/ensure-user", web::post().to(registration::ensure_user))
        .route("/api/mqtt-config", web::post().to(registration::mqtt_config));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}
