//! The control port: what people and programs use to watch and steer thermostats.

mod command;
mod registration;

use actix_web::{HttpResponse, web};
use serde_json::json;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/command", web::post().to(command::command))
        .route("/api/register", web::post().to(registration::register));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}
