//! What clients read: the device status object (`/status`, `/api/devices`), the schedule, the
//! configuration and statistics. Key order and names follow the reference exactly.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::device_api::query_param;
use crate::domain::bucket::{Fields, truthy};
use crate::domain::serial;
use crate::domain::sync::delivery::Summary;
use crate::domain::time::{iso8601, now_s};
use crate::error::ApiError;

/// Room names for the `where_id`s the firmware uses (`…-0001000000NN`).
fn room_name(where_id: &str) -> Option<&'static str> {
    let code = where_id.strip_prefix("00000000-0000-0000-0000-0001000000")?;
    Some(match code.to_ascii_lowercase().as_str() {
        "00" => "Entryway",
        "01" => "Basement",
        "02" => "Hallway",
        "03" => "Den",
        "04" => "Attic",
        "05" => "Master Bedroom",
        "06" => "Downstairs",
        "07" => "Garage",
        "09" => "Bathroom",
        "0a" => "Kitchen",
        "0b" => "Family Room",
        "0c" => "Living Room",
        "0d" => "Bedroom",
        "0e" => "Office",
        "0f" => "Upstairs",
        "10" => "Dining Room",
        "11" => "Backyard",
        "12" => "Driveway",
        "13" => "Front Yard",
        "14" => "Outside",
        "15" => "Guest House",
        "16" => "Shed",
        "17" => "Deck",
        "18" => "Patio",
        "1a" => "Guest Room",
        "1b" => "Front Door",
        "1c" => "Side Door",
        "1d" => "Back Door",
        _ => return None,
    })
}

struct View<'a> {
    device: &'a Fields,
    shared: &'a Fields,
}

impl View<'_> {
    fn d(&self, key: &str) -> Value {
        self.device.get(key).cloned().unwrap_or(Value::Null)
    }

    /// Shared value if truthy, else the device's.
    fn s_or_d(&self, key: &str) -> Value {
        match self.shared.get(key) {
            Some(v) if truthy(v) => v.clone(),
            _ => self.d(key),
        }
    }

    fn flag(&self, from_shared: bool, key: &str) -> Value {
        let source = if from_shared { self.shared } else { self.device };
        Value::Bool(source.get(key).is_some_and(truthy))
    }

    fn capability(&self, key: &str, default: bool) -> Value {
        self.shared.get(key).or_else(|| self.device.get(key)).cloned().unwrap_or(Value::Bool(default))
    }
}

/// The device status object. `None` when roost knows nothing about the serial.
pub fn status_object(state: &AppState, serial: &str) -> Value {
    let buckets = state.store.snapshot(serial);
    let empty = Fields::new();
    let device = buckets.get(&format!("device.{serial}")).map_or(&empty, |b| &b.value);
    let shared = buckets.get(&format!("shared.{serial}")).map_or(&empty, |b| &b.value);
    let v = View { device, shared };
    let presence = state.availability.get(serial);

    let name = [shared.get("label"), shared.get("name")]
        .into_iter()
        .flatten()
        .find(|x| truthy(x))
        .cloned()
        .or_else(|| device.get("where_id").and_then(Value::as_str).and_then(room_name).map(Value::from))
        .unwrap_or_else(|| Value::from(serial));
    let fan_timeout = device.get("fan_timer_timeout").cloned().unwrap_or(json!(0));
    let fan_active = match &fan_timeout {
        Value::Number(n) => n.as_f64().is_some_and(|t| t > now_s() as f64),
        Value::Bool(b) => (*b as i64) > now_s(),
        _ => false,
    };
    let mut out = Map::new();
    out.insert("serial".into(), json!(serial));
    // The thermostat's own password unlocks its local settings API: only shown to clients that
    // proved they hold the control port's key (the key, not openness, is the gate).
    let api_key =
        if state.config.api_keys().is_empty() { None } else { presence.as_ref().and_then(|p| p.api_key.clone()) };
    out.insert("api_key".into(), json!(api_key));
    out.insert("is_available".into(), json!(state.availability.is_available(serial)));
    out.insert("last_seen".into(), json!(presence.as_ref().map(|p| iso8601(p.last_seen_ms))));
    out.insert("name".into(), name);
    for key in ["current_temperature", "target_temperature", "target_temperature_high", "target_temperature_low"] {
        out.insert(key.into(), v.s_or_d(key));
    }
    out.insert("humidity".into(), v.d("current_humidity"));
    out.insert("target_humidity".into(), v.d("target_humidity"));
    out.insert("target_humidity_enabled".into(), v.flag(false, "target_humidity_enabled"));
    out.insert("mode".into(), v.s_or_d("target_temperature_type"));
    let hvac: Map<String, Value> = [
        ("heater", true, "hvac_heater_state"),
        ("heat_x2", true, "hvac_heat_x2_state"),
        ("heat_x3", true, "hvac_heat_x3_state"),
        ("ac", true, "hvac_ac_state"),
        ("cool_x2", true, "hvac_cool_x2_state"),
        ("cool_x3", true, "hvac_cool_x3_state"),
        ("fan", true, "hvac_fan_state"),
        ("aux_heat", true, "hvac_aux_heater_state"),
        ("emer_heat", true, "hvac_emer_heat_state"),
        ("alt_heat", true, "hvac_alt_heat_state"),
        ("humidifier", false, "humidifier_state"),
        ("dehumidifier", false, "dehumidifier_state"),
        ("auto_dehum", false, "auto_dehum_state"),
        ("fan_cooling", false, "fan_cooling_state"),
    ]
    .into_iter()
    .map(|(name, shared_field, key)| (name.to_string(), v.flag(shared_field, key)))
    .collect();
    out.insert("hvac".into(), Value::Object(hvac));
    out.insert("fan_timer_active".into(), json!(fan_active));
    out.insert("fan_timer_timeout".into(), fan_timeout);
    out.insert(
        "eco_temperatures".into(),
        json!({"high": v.d("away_temperature_high"), "low": v.d("away_temperature_low")}),
    );
    out.insert("is_online".into(), device.get("is_online").cloned().unwrap_or(json!(false)));
    out.insert("has_leaf".into(), device.get("leaf").cloned().unwrap_or(json!(false)));
    out.insert("software_version".into(), v.d("current_version"));
    out.insert("temperature_scale".into(), device.get("temperature_scale").cloned().unwrap_or(json!("C")));
    let capabilities: Map<String, Value> = [
        ("can_heat", true),
        ("can_cool", true),
        ("has_fan", false),
        ("has_emer_heat", false),
        ("has_humidifier", false),
        ("has_dehumidifier", false),
    ]
    .into_iter()
    .map(|(k, default)| (k.to_string(), v.capability(k, default)))
    .collect();
    out.insert("capabilities".into(), Value::Object(capabilities));
    out.insert("eco_mode".into(), device.get("eco").and_then(|e| e.get("mode")).cloned().unwrap_or(Value::Null));
    for key in [
        "time_to_target",
        "time_to_target_training_status",
        "safety_state",
        "safety_temp_activating_hvac",
        "learning_mode",
        "preconditioning_enabled",
        "backplate_temperature",
        "local_ip",
        "mac_address",
    ] {
        out.insert(key.into(), v.d(key));
    }
    if !shared.is_empty() {
        out.insert("structure_id".into(), shared.get("structure_id").cloned().unwrap_or(Value::Null));
        // Structure away, or eco because nobody is home (the clients' "away").
        let structure_key = state.structure_key(serial);
        let structure = buckets.get(&structure_key).map(|b| &b.value);
        let asked = state.presets.asked(&structure_key);
        out.insert("away".into(), json!(crate::domain::preset::is_away(Some(device), structure, asked)));
        out.insert("schedule_mode".into(), shared.get("schedule_mode").cloned().unwrap_or(Value::Null));
        // roost's own, after the reference's keys: home, away or eco, as Home Assistant shows it.
        out.insert("preset".into(), json!(crate::domain::preset::current(Some(device), structure, asked).as_str()));
    }
    // Read at the top level by a real client (the Matterbridge plugin).
    for key in ["can_heat", "can_cool", "has_fan"] {
        let value = out["capabilities"][key].clone();
        out.insert(key.into(), value);
    }
    // roost's own, present only while the thermostat has not confirmed a command (the fields
    // above already show the commanded values).
    if let Some(pending) = Summary::of(&state.store.pending(serial), &state.store.settings().expiry).to_json() {
        out.insert("pending".into(), pending);
    }
    Value::Object(out)
}

/// A serial from a control-port parameter, normalised like on the device port.
pub fn parse_serial(raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("Serial parameter required"))?;
    let serial = serial::sanitize(raw)
        .ok_or_else(|| ApiError::bad_request(format!("'{raw}' is not a valid thermostat serial")))?;
    crate::telemetry::record_serial(&serial);
    Ok(serial)
}

/// Known devices: with pairing required, the paired ones; otherwise every device with state.
pub fn known_serials(state: &AppState) -> Vec<String> {
    let mut serials: Vec<String> = state.store.serials().into_iter().filter(|s| state.is_known_device(s)).collect();
    if state.config.require_device_pairing {
        serials = state.pairing.owned_serials();
    } else {
        for s in state.pairing.owned_serials() {
            if !serials.contains(&s) && state.store.exists(&s) {
                serials.push(s);
            }
        }
    }
    serials.sort();
    serials
}

fn is_known(state: &AppState, serial: &str) -> bool {
    state.store.exists(serial) || (state.config.require_device_pairing && state.pairing.owner(serial).is_some())
}

pub async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = parse_serial(query_param(&req, "serial").as_deref())?;
    let grant = super::access::grant(&req);
    grant.check_device(&serial)?;
    if !is_known(&state, &serial) {
        return Err(ApiError::not_found("Device not found"));
    }
    let mut status = status_object(&state, &serial);
    grant.redact(&mut status);
    Ok(HttpResponse::Ok().json(status))
}

pub async fn devices(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let grant = super::access::grant(&req);
    let devices: Vec<Value> = grant
        .visible(known_serials(&state))
        .iter()
        .map(|serial| {
            let mut status = status_object(&state, serial);
            grant.redact(&mut status);
            if let Value::Object(map) = &mut status {
                map.insert("subscription_count".into(), json!(state.store.hub().held_count(serial)));
            }
            status
        })
        .collect();
    let total = devices.len();
    HttpResponse::Ok().json(json!({"devices": devices, "total": total}))
}

pub async fn schedule(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let serial = parse_serial(query_param(&req, "serial").as_deref())?;
    super::access::grant(&req).check_device(&serial)?;
    if !is_known(&state, &serial) {
        return Err(ApiError::not_found("Device not found"));
    }
    Ok(HttpResponse::Ok().json(match state.store.get(&serial, &format!("schedule.{serial}")) {
        Some(b) => json!({"serial": serial, "schedule": b.value, "object_revision": b.revision, "object_timestamp": b.timestamp}),
        None => json!({"serial": serial, "schedule": null}),
    }))
}

pub async fn config(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "api_origin": state.config.api_origin,
        "cloudregisterurl": format!("{}/entry", state.config.origin_with_port()),
        "require_device_pairing": state.config.require_device_pairing,
        "entry_key_ttl_seconds": state.config.entry_key_ttl_seconds,
    }))
}

pub async fn stats(state: web::Data<AppState>) -> HttpResponse {
    let serials = known_serials(&state);
    let available = serials.iter().filter(|s| state.availability.is_available(s)).count();
    let (held, with_held) = state.store.hub().held_totals();
    let availability: Map<String, Value> = serials
        .iter()
        .map(|s| {
            let last_seen = state.availability.get(s).map(|p| iso8601(p.last_seen_ms));
            (s.clone(), json!({"is_available": state.availability.is_available(s), "last_seen": last_seen}))
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "devices": {"total": serials.len(), "available": available, "serials": serials},
        "subscriptions": {"total_subscriptions": held, "devices_with_subscriptions": with_held},
        "availability": availability,
        "events": state.events.stats(),
        "mqtt": state.mqtt.lock().map(|s| s.to_json()).unwrap_or_default(),
        "storage": {
            "engine": if state.store.cluster().is_some() { "postgres" } else { "sqlite" },
            "leader": *state.leading.borrow(),
        },
    }))
}
