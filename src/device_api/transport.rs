//! Subscribe (the long-poll that carries server → device data), PUT (device → server) and the
//! bucket listing.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Admission, Caller, Gated, admit, arrived, identify, serial_required, transport_ok};
use crate::AppState;
use crate::body::{MAX_BODY, read_limited};
use crate::domain::bucket::{self, Entry, Fields, WireObject, carries_setpoint, objects_document};
use crate::domain::sync::{
    Batch, Committed, HoldState, Listed, Outcome, PutRequest, Scope, SentRequest, SubscribeReply, SubscribeRequest,
    Version,
};
use crate::error::ApiError;
use crate::hub::Subscription;
use crate::state::Store;

/// After a push, further changes within this window go out as more chunks on the same
/// response; the firmware closes the connection after 5 s without data.
pub const BATCH_WINDOW: Duration = Duration::from_secs(3);

/// The body of a subscribe or PUT, its entries, and who sent it (the body's `session` names
/// the device when the Basic user is a MAC).
async fn read_request(
    req: &HttpRequest,
    payload: web::Payload,
    put: bool,
) -> Result<(Fields, Vec<Entry>, Caller), ApiError> {
    let body = read_limited(payload, MAX_BODY).await?;
    let (root, entries) = bucket::parse_entries(&body, put).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let session = root.get("session").and_then(Value::as_str);
    let caller = identify(req, session).ok_or_else(serial_required)?;
    Ok((root, entries, caller))
}

fn weave_id(req: &HttpRequest) -> Option<Value> {
    req.headers().get("x-nl-weave-device-id").and_then(|v| v.to_str().ok()).map(|s| Value::String(s.to_string()))
}

/// `chunked` as the firmware sends it (`true`); strings and numbers are read by meaning,
/// so `"false"` is not chunked.
fn wants_chunked(root: &Fields) -> bool {
    match root.get("chunked") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        _ => false,
    }
}

pub async fn subscribe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (root, entries, caller) = read_request(&req, payload, false).await?;
    let admission = admit(&state, &caller, Gated::Subscribe).await?;
    let owner = arrived(&state, &caller).await?;
    let serial = caller.serial;
    let chunked = wants_chunked(&root);

    // Registered before the state is read, so a change committed from here on is not missed.
    let subscription = chunked.then(|| state.store.hub().subscribe(&serial));
    let request = SubscribeRequest {
        serial: serial.clone(),
        listed: entries.into_iter().map(listed).collect(),
        owner,
        read_only: matches!(admission, Admission::ReadOnly),
        weave_device_id: weave_id(&req),
        scope: Scope::WithPairing,
        batch: Batch::All,
    };
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
    let hold = Held {
        subscription,
        hold,
        store: state.store.clone(),
        first,
        deadline: Instant::now() + state.config.hold_timeout(),
        batch_until: None,
        answered: false,
        shutdown: state.shutdown.clone(),
    };
    Ok(response
        .content_type("application/json")
        .force_close()
        .streaming(futures_util::stream::unfold(hold, Held::next_chunk)))
}

/// An objects-dialect entry as the engine sees a listed bucket: the objects dialect always
/// gives a version (a missing one is 0, "I have nothing").
fn listed(e: Entry) -> Listed {
    Listed { key: e.key, version: Some(Version::new(e.revision, e.timestamp)), value: e.value }
}

/// One held subscribe response.
struct Held {
    subscription: Subscription,
    hold: HoldState,
    store: Arc<Store>,
    first: Option<Bytes>,
    deadline: Instant,
    batch_until: Option<Instant>,
    answered: bool,
    shutdown: CancellationToken,
}

impl Held {
    /// The next chunk, or `None` to end the response with the terminal chunk: right after an
    /// immediate answer (the device resubscribes with its new timestamps at once), at the hold
    /// timeout, 3 s after the last push, at shutdown, or when the hub ended this subscribe.
    async fn next_chunk(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Self)> {
        if let Some(first) = self.first.take() {
            self.answered = true;
            return Some((Ok(first), self));
        }
        if self.answered {
            return None;
        }
        loop {
            let until = self.batch_until.unwrap_or(self.deadline).min(self.deadline);
            let change = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep_until(until) => return None,
                change = self.subscription.rx.recv() => change?,
            };
            let pushed = {
                let mut changes = vec![change];
                while let Ok(more) = self.subscription.rx.try_recv() {
                    changes.push(more);
                }
                let committed: Vec<Committed<'_>> =
                    changes.iter().map(|c| Committed { origin: c.origin, buckets: &c.buckets }).collect();
                self.hold.push(&committed)
            };
            if pushed.is_empty() {
                continue;
            }
            let serial = self.subscription.serial();
            // Boxed: the commit's future would otherwise enlarge every held response's state.
            if let Err(e) = Box::pin(self.store.commit(serial, SentRequest::of(&pushed))).await {
                tracing::warn!(%serial, error = %e, "could not record a push");
            }
            let objects: Vec<WireObject<'_>> = pushed.iter().map(|(k, b)| WireObject::full(k, b)).collect();
            let chunk = Bytes::from(objects_document(&objects));
            self.batch_until = Some(Instant::now() + BATCH_WINDOW);
            return Some((Ok(chunk), self));
        }
    }
}

pub async fn put(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, entries, caller) = read_request(&req, payload, true).await?;
    if let Admission::DropPut = admit(&state, &caller, Gated::Put).await? {
        return Ok(HttpResponse::Ok().json(serde_json::json!({"objects": []})));
    }
    arrived(&state, &caller).await?;
    let serial = caller.serial.as_str();
    for e in entries.iter().filter(|e| e.base_revision.is_some()) {
        // Informational only (§8.4); firmware and other clients send 0 or stale values here.
        tracing::trace!(serial, object_key = %e.key, base_object_revision = e.base_revision, "put");
    }
    let request = PutRequest { entries, weave_device_id: weave_id(&req) };
    let reply = state.store.commit(serial, request).await?.reply;
    let objects: Vec<WireObject<'_>> =
        reply.receipts.iter().map(|r| WireObject::receipt(&r.key, r.version.revision, r.version.timestamp)).collect();
    let conflicts = reply.receipts.iter().filter(|r| r.outcome == Outcome::Conflict).count();
    let behind: Vec<&str> = reply.behind().collect();
    tracing::debug!(serial, objects = objects.len(), conflicts, ?behind, "put");
    Ok(transport_ok(&state).content_type("application/json").body(objects_document(&objects)))
}

/// Revision, timestamp and key of every bucket of the device, no values.
pub async fn listing(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let from_path = req
        .match_info()
        .get("tail")
        .and_then(|tail| tail.rsplit_once("device/").map(|(_, s)| s.trim_start_matches("device.").to_string()))
        .and_then(|s| crate::domain::serial::sanitize(&s));
    let caller = match from_path {
        Some(serial) => Caller { serial, password: None },
        None => identify(&req, None).ok_or_else(|| ApiError::bad_request("Serial required"))?,
    };
    admit(&state, &caller, Gated::Listing).await?;
    let snapshot = state.store.snapshot(&caller.serial);
    let objects: Vec<WireObject<'_>> =
        snapshot.iter().map(|(k, b)| WireObject::receipt(k, b.revision, b.timestamp)).collect();
    Ok(transport_ok(&state).content_type("application/json").body(objects_document(&objects)))
}
