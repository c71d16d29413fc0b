//! `GET /metrics`: Prometheus text for operators (administrators only: the control key or a
//! trusted network). Counters and histograms come from `telemetry`; gauges are read from the
//! running server now, so nothing on the request path keeps them up to date.

use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::telemetry::exposition::{CONTENT_TYPE, Exposition, Kind};
use crate::telemetry::{database, process, requests};

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut out = Exposition::new();
    process::render(&mut out);
    requests::render(&mut out);
    thermostats(&state, &mut out);
    event_streams(&state, &mut out);
    database::WRITES.render(&mut out);
    state.sealing.render(&mut out);
    mqtt(&state, &mut out);
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(out.finish())
}

fn thermostats(state: &AppState, out: &mut Exposition) {
    let devices: Vec<String> = state.store.serials().into_iter().filter(|s| state.is_known_device(s)).collect();
    let online = devices.iter().filter(|s| state.availability.is_available(s)).count();
    let (mut pending_devices, mut pending_fields) = (0, 0);
    for serial in &devices {
        let fields: usize = state.store.pending(serial).values().map(|p| p.fields.len()).sum();
        pending_devices += usize::from(fields > 0);
        pending_fields += fields;
    }
    out.single(
        "roost_devices",
        Kind::Gauge,
        "Thermostats that count toward MAX_DEVICES (with REQUIRE_DEVICE_PAIRING=true, the paired ones).",
        state.devices.len() as f64,
    );
    out.single("roost_devices_max", Kind::Gauge, "MAX_DEVICES.", state.devices.max() as f64);
    out.single(
        "roost_thermostats_online",
        Kind::Gauge,
        "Known thermostats heard from within the availability timeout or holding a subscribe.",
        online as f64,
    );
    let (held, holding) = state.store.hub().held_totals();
    out.single("roost_held_subscribes", Kind::Gauge, "Subscribes (long-polls) held open now.", held as f64);
    out.single(
        "roost_held_subscribe_thermostats",
        Kind::Gauge,
        "Thermostats holding at least one subscribe.",
        holding as f64,
    );
    out.single(
        "roost_pending_command_thermostats",
        Kind::Gauge,
        "Thermostats with a command they have not confirmed yet.",
        pending_devices as f64,
    );
    out.single(
        "roost_pending_command_fields",
        Kind::Gauge,
        "Commanded fields the thermostats have not confirmed yet, over all thermostats.",
        pending_fields as f64,
    );
}

fn event_streams(state: &AppState, out: &mut Exposition) {
    let totals = state.events.totals();
    out.single("roost_event_stream_clients", Kind::Gauge, "Open /api/events streams.", totals.open as f64);
    out.single("roost_event_stream_clients_max", Kind::Gauge, "SSE_MAX_CLIENTS.", totals.max_clients as f64);
    out.single(
        "roost_event_stream_events_sent_total",
        Kind::Counter,
        "Events written to event-stream clients.",
        totals.sent as f64,
    );
    out.single(
        "roost_event_stream_clients_dropped_total",
        Kind::Counter,
        "Event-stream clients cut off because they stopped reading (they resume by id).",
        totals.dropped as f64,
    );
    out.family(
        "roost_event_stream_fanout_seconds",
        Kind::Histogram,
        "From a committed change reaching the event fan-out to the last stream written.",
    );
    out.histogram("roost_event_stream_fanout_seconds", &[], &totals.fan_out);
}

fn mqtt(state: &AppState, out: &mut Exposition) {
    let status = state.mqtt.lock().map(|s| s.clone()).unwrap_or_default();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    out.single("roost_mqtt_enabled", Kind::Gauge, "1 when a broker is configured.", flag(status.enabled));
    out.single("roost_mqtt_connected", Kind::Gauge, "1 while connected to the broker.", flag(status.connected));
    out.single(
        "roost_mqtt_connections_total",
        Kind::Counter,
        "Successful connections to the broker (reconnects included).",
        status.connects as f64,
    );
    out.single(
        "roost_mqtt_queued_messages",
        Kind::Gauge,
        "Messages waiting for the broker (the latest per topic).",
        status.queued as f64,
    );
    out.single(
        "roost_mqtt_messages_published_total",
        Kind::Counter,
        "Messages handed to the broker connection.",
        status.published as f64,
    );
    out.single(
        "roost_mqtt_commands_received_total",
        Kind::Counter,
        "Messages received on command topics.",
        status.commands as f64,
    );
    out.single(
        "roost_mqtt_commands_rejected_total",
        Kind::Counter,
        "Command messages ignored as invalid.",
        status.rejected as f64,
    );
}
