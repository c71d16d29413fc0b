//! Subscribe (the long-poll that carries server → device data), PUT (device → server) and the
//! bucket listing.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::held::Held;
use super::{Admission, Caller, Gated, admit, arrived, header, identify, serial_required, transport_ok};
use crate::AppState;
use crate::body::{MAX_BODY, read_limited};
use crate::domain::bucket::{Entry, WireObject, carries_setpoint, objects_document};
use crate::domain::device_body;
use crate::domain::key;
use crate::domain::sync::{
    BATCH_WINDOW, Batch, Buckets, ListingRequest, Outcome, PutReply, PutRequest, Scope, SentRequest, SubscribeReply,
    SubscribeRequest,
};
use crate::error::ApiError;
use crate::state::Store;

/// The header 4.0.6 may name its session in instead of the body.
const SESSION_HEADER: &str = "x-nl-session-id";

/// A subscribe body and who sent it (the body's `session`, else `X-nl-session-id`, names the
/// device when the Basic user is a MAC).
/// A subscribe body read, its sender admitted and recorded as arrived: the plan request both
/// dialects start from (each sets its own scope and batch), and whether it asked to be held.
pub(super) async fn admitted_subscribe(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    scope: Scope,
    batch: Batch,
) -> Result<(SubscribeRequest, bool), ApiError> {
    let body = read_limited(payload, MAX_BODY).await?;
    let parsed = device_body::subscribe(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let caller = identify(req, parsed.session(header(req, SESSION_HEADER))).ok_or_else(serial_required)?;
    let admission = admit(state, &caller, Gated::Subscribe).await?;
    let owner = arrived(state, &caller).await?;
    let long_poll = parsed.long_poll();
    let request = SubscribeRequest {
        serial: caller.serial,
        listed: parsed.listed,
        owner,
        read_only: matches!(admission, Admission::ReadOnly),
        weave_device_id: weave_id(req),
        scope,
        batch,
    };
    Ok((request, long_poll))
}

/// A PUT body's entries and who sent them.
pub(super) async fn read_put(req: &HttpRequest, payload: web::Payload) -> Result<(Vec<Entry>, Caller), ApiError> {
    let body = read_limited(payload, MAX_BODY).await?;
    let (root, entries) = device_body::put(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let caller = identify(req, device_body::session(&root, header(req, SESSION_HEADER))).ok_or_else(serial_required)?;
    Ok((entries, caller))
}

/// The sync engine's PUT request for `entries` of `serial`.
pub(super) fn put_request(req: &HttpRequest, serial: &str, entries: Vec<Entry>) -> PutRequest {
    for e in entries.iter().filter(|e| e.base_revision.is_some()) {
        // Informational only (§8.4); firmware and other clients send 0 or stale values here.
        tracing::trace!(serial, object_key = %e.key, base_object_revision = e.base_revision, "put");
    }
    PutRequest { entries, weave_device_id: weave_id(req) }
}

pub(super) fn weave_id(req: &HttpRequest) -> Option<Value> {
    header(req, "x-nl-weave-device-id").map(|s| Value::String(s.to_string()))
}

/// Who a bucket listing is for: the serial its path names (`…/device/device.S`, repaired
/// suffixes removed), else the caller's.
pub(super) fn listing_caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    match key::listing_serial(req.path()) {
        Some(serial) => {
            crate::telemetry::record_serial(&serial);
            Ok(Caller { serial, password: None })
        }
        None => identify(req, None).ok_or_else(|| ApiError::bad_request("Serial required")),
    }
}

/// Every bucket of the device a listing is for (counted as sent when the listing carries
/// values), after the pairing gate.
pub(super) async fn listed_buckets(state: &AppState, caller: &Caller, values: bool) -> Result<Buckets, ApiError> {
    admit(state, caller, Gated::Listing).await?;
    // Made-up serials get nothing, and no state is created for them.
    if !state.store.exists(&caller.serial) {
        return Ok(Buckets::new());
    }
    Ok(state.store.commit(&caller.serial, ListingRequest { values }).await?.reply)
}

pub async fn subscribe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (request, long_poll) = admitted_subscribe(&req, payload, &state, Scope::WithPairing, Batch::All).await?;
    let serial = request.serial.clone();

    // Registered before the state is read, so a change committed from here on is not missed.
    let subscription = long_poll.then(|| state.store.hub().subscribe(&serial));
    let SubscribeReply { send, hold, .. } = state.store.commit(&serial, request).await?.reply;

    let objects: Vec<WireObject<'_>> = send.iter().map(|(k, b)| WireObject::full(k, b)).collect();
    let mut response = transport_ok(&state);
    if objects.iter().any(|o| o.value.is_some_and(carries_setpoint)) {
        response.insert_header(("X-nl-disable-defer-window", state.config.disable_defer_window.to_string()));
    }
    if !send.is_empty() {
        tracing::debug!(%serial, keys = ?send.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), "subscribe answered with newer data");
    }
    let Some(subscription) = subscription else {
        return Ok(response.content_type("application/json").body(objects_document(&objects)));
    };
    let first = (!objects.is_empty()).then(|| Bytes::from(objects_document(&objects)));
    drop(objects);
    let held = Chunks {
        held: Held::new(subscription, hold, state.shutdown.clone()),
        store: state.store.clone(),
        first,
        deadline: Instant::now() + state.config.hold_timeout(),
        batch_until: None,
        answered: false,
    };
    response.content_type("application/json").force_close();
    Ok(crate::conn::detach::respond(&req, response, futures_util::stream::unfold(held, Chunks::next_chunk)))
}

/// A held objects-dialect subscribe: one chunk per push.
struct Chunks {
    held: Held,
    store: Arc<Store>,
    first: Option<Bytes>,
    deadline: Instant,
    batch_until: Option<Instant>,
    answered: bool,
}

impl Chunks {
    /// The next chunk, or `None` to end the response with the terminal chunk: right after an
    /// immediate answer (the device resubscribes with its new timestamps at once), at the hold
    /// timeout, 3 s after the last push, at shutdown, or when the hub ended this subscribe.
    async fn next_chunk(mut self) -> Option<(Bytes, Self)> {
        if let Some(first) = self.first.take() {
            self.answered = true;
            return Some((first, self));
        }
        if self.answered {
            return None;
        }
        let until = self.batch_until.unwrap_or(self.deadline).min(self.deadline);
        // Boxed: the wait and the commit would otherwise enlarge every held response's state.
        let pushed = Box::pin(self.held.next_push(until)).await?;
        let serial = self.held.serial();
        if let Err(e) = Box::pin(self.store.commit(serial, SentRequest::of(&pushed))).await {
            tracing::warn!(%serial, error = %e, "could not record a push");
        }
        let objects: Vec<WireObject<'_>> = pushed.iter().map(|(k, b)| WireObject::full(k, b)).collect();
        let chunk = Bytes::from(objects_document(&objects));
        self.batch_until = Some(Instant::now() + BATCH_WINDOW);
        Some((chunk, self))
    }
}

pub async fn put(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (entries, caller) = read_put(&req, payload).await?;
    if let Admission::DropPut = admit(&state, &caller, Gated::Put).await? {
        return Ok(HttpResponse::Ok().json(serde_json::json!({"objects": []})));
    }
    arrived(&state, &caller).await?;
    let serial = caller.serial.as_str();
    let reply = state.store.commit(serial, put_request(&req, serial, entries)).await?.reply;
    let objects: Vec<WireObject<'_>> =
        reply.receipts.iter().map(|r| WireObject::receipt(&r.key, r.version.revision, r.version.timestamp)).collect();
    log_put(serial, &reply);
    Ok(transport_ok(&state).content_type("application/json").body(objects_document(&objects)))
}

pub(super) fn log_put(serial: &str, reply: &PutReply) {
    let conflicts = reply.receipts.iter().filter(|r| r.outcome == Outcome::Conflict).count();
    let behind: Vec<&str> = reply.behind().collect();
    tracing::debug!(serial, receipts = reply.receipts.len(), conflicts, ?behind, "put");
}

/// Revision, timestamp and key of every bucket of the device, no values.
pub async fn listing(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = listing_caller(&req)?;
    let buckets = listed_buckets(&state, &caller, false).await?;
    let objects: Vec<WireObject<'_>> =
        buckets.iter().map(|(k, b)| WireObject::receipt(k, b.revision, b.timestamp)).collect();
    Ok(transport_ok(&state).content_type("application/json").body(objects_document(&objects)))
}
