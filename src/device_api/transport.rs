//! Subscribe (the long-poll that carries server → device data), PUT (device → server) and the
//! bucket listing.

use std::collections::HashMap;
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
use crate::domain::bucket::{
    self, Bucket, Entry, Fields, WireObject, carries_setpoint, objects_document, server_is_newer,
};
use crate::error::ApiError;
use crate::hub::Subscription;
use crate::state::pairing::structure_id;
use crate::state::{Change, Op, Origin, Outcome};

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

fn with_weave(mut fields: Fields, weave: &Option<Value>) -> Fields {
    if let Some(w) = weave {
        fields.insert("weave_device_id".into(), w.clone());
    }
    fields
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
    let serial = caller.serial.as_str();
    let chunked = wants_chunked(&root);

    // Registered before the state is read, so a change committed from here on is not missed.
    let subscription = chunked.then(|| state.store.hub().subscribe(serial));

    if !matches!(admission, Admission::ReadOnly) {
        apply_device_values(&state, serial, &entries, &weave_id(&req)).await?;
    }
    let owned_keys = match &owner {
        Some(owner) => ensure_pairing_buckets(&state, serial, owner).await?,
        None => Vec::new(),
    };

    // What the device holds, by key: only newer server data goes out.
    let mut known: HashMap<String, i64> = HashMap::new();
    for e in &entries {
        known.entry(e.key.clone()).or_insert(e.timestamp);
    }
    let snapshot = state.store.snapshot(serial);
    for e in &entries {
        if snapshot.get(&e.key).is_some_and(|b| b.unconfirmed && e.timestamp >= b.timestamp) {
            // The device lists the current version: it holds the server's change.
            state.store.confirm(serial, &e.key, e.timestamp).await;
        }
    }
    let mut outgoing: Vec<(String, Arc<Bucket>)> = Vec::new();
    for e in &entries {
        if outgoing.iter().any(|(k, _)| k == &e.key) {
            continue;
        }
        if let Some(b) = snapshot.get(&e.key).filter(|b| server_is_newer(b.timestamp, e.timestamp)) {
            outgoing.push((e.key.clone(), b.clone()));
        }
    }
    let first_since_start = state.structure_sent.lock().map(|mut s| s.insert(serial.to_string())).unwrap_or(false);
    for key in owned_keys {
        if outgoing.iter().any(|(k, _)| k == &key) {
            continue;
        }
        let Some(b) = snapshot.get(&key) else { continue };
        let forced = first_since_start && key.starts_with("structure.");
        if forced || server_is_newer(b.timestamp, known.get(&key).copied().unwrap_or(0)) {
            outgoing.push((key, b.clone()));
        }
    }
    for (k, b) in &outgoing {
        known.insert(k.clone(), b.timestamp);
    }
    let objects: Vec<WireObject<'_>> = outgoing.iter().map(|(k, b)| WireObject::full(k, b)).collect();
    let mut response = transport_ok(&state);
    if objects.iter().any(|o| o.value.is_some_and(carries_setpoint)) {
        response.insert_header(("X-nl-disable-defer-window", state.config.disable_defer_window.to_string()));
    }
    if !outgoing.is_empty() {
        tracing::debug!(serial, keys = ?outgoing.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), "subscribe answered with newer data");
    }

    let Some(subscription) = subscription else {
        return Ok(response.content_type("application/json").body(objects_document(&objects)));
    };
    let first = (!objects.is_empty()).then(|| Bytes::from(objects_document(&objects)));
    drop(objects);
    let hold = Hold {
        subscription,
        first,
        known,
        deadline: Instant::now() + state.config.hold_timeout(),
        batch_until: None,
        answered: false,
        shutdown: state.shutdown.clone(),
    };
    Ok(response
        .content_type("application/json")
        .force_close()
        .streaming(futures_util::stream::unfold(hold, Hold::next_chunk)))
}

/// Applies what the device reported inside its subscribe: inline updates (value with revision
/// and timestamp 0), the `target_change_pending: false` acknowledgement, and values it holds
/// newer than the server.
async fn apply_device_values(
    state: &AppState,
    serial: &str,
    entries: &[Entry],
    weave: &Option<Value>,
) -> Result<(), ApiError> {
    let with_values: Vec<&Entry> = entries.iter().filter(|e| e.value.as_ref().is_some_and(|v| !v.is_empty())).collect();
    if with_values.is_empty() {
        return Ok(());
    }
    state
        .store
        .plan(
            serial,
            Origin::Device,
            false,
            |current| {
                let mut ops = Vec::new();
                for e in with_values {
                    let fields = e.value.clone().unwrap_or_default();
                    let server_ts = current.get(&e.key).map_or(0, |b| b.timestamp);
                    if e.revision == 0 && e.timestamp == 0 {
                        ops.push(Op::Merge {
                            key: e.key.clone(),
                            fields: with_weave(fields, weave),
                            if_revision: None,
                        });
                    } else if fields.get("target_change_pending") == Some(&Value::Bool(false))
                        && e.key.starts_with("shared.")
                    {
                        // Only an acknowledgement of the current version clears the flag; an older
                        // one gets the newer bucket in the reply.
                        if e.timestamp >= server_ts {
                            ops.push(Op::ClearPending { key: e.key.clone() });
                        }
                    } else if e.timestamp > server_ts {
                        ops.push(Op::Adopt {
                            key: e.key.clone(),
                            fields,
                            revision: e.revision,
                            timestamp: e.timestamp,
                        });
                    }
                }
                ops
            },
            None,
        )
        .await?;
    Ok(())
}

/// A paired device gets `user.<owner>` (whose `name` completes pairing) and
/// `structure.<id>`. Creates them when missing; returns their keys.
pub(crate) async fn ensure_pairing_buckets(
    state: &AppState,
    serial: &str,
    owner: &str,
) -> Result<Vec<String>, ApiError> {
    let user_key = format!("user.{owner}");
    let structure_key = format!("structure.{}", structure_id(owner));
    if state.store.get(serial, &user_key).is_none() || state.store.get(serial, &structure_key).is_none() {
        let ops = pairing_buckets(serial, owner)
            .into_iter()
            .map(|(key, fields)| Op::CreateIfMissing { key, fields })
            .collect();
        state.store.apply(serial, Origin::Pairing, false, ops).await?;
    }
    Ok(vec![user_key, structure_key])
}

/// The user bucket (its `name` completes pairing on the device) and the structure bucket that
/// pair a device to `owner`.
pub(crate) fn pairing_buckets(serial: &str, owner: &str) -> [(String, Fields); 2] {
    let mut user = Fields::new();
    user.insert("name".into(), Value::String(owner.to_string()));
    let mut structure = Fields::new();
    structure.insert("name".into(), "Home".into());
    structure.insert("devices".into(), Value::Array(vec![Value::String(format!("device.{serial}"))]));
    [(format!("user.{owner}"), user), (format!("structure.{}", structure_id(owner)), structure)]
}

/// The state of one held subscribe response.
struct Hold {
    subscription: Subscription,
    first: Option<Bytes>,
    /// Newest timestamp the device holds (or was sent) per key.
    known: HashMap<String, i64>,
    deadline: Instant,
    batch_until: Option<Instant>,
    answered: bool,
    shutdown: CancellationToken,
}

impl Hold {
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
            let mut changes = vec![change];
            while let Ok(more) = self.subscription.rx.try_recv() {
                changes.push(more);
            }
            if let Some(chunk) = self.render(&changes) {
                self.batch_until = Some(Instant::now() + BATCH_WINDOW);
                return Some((Ok(chunk), self));
            }
        }
    }

    /// One document with every pushed bucket the device does not already hold (all of them
    /// for `/notify-device`).
    fn render(&mut self, changes: &[Arc<Change>]) -> Option<Bytes> {
        let forced = changes.iter().any(|c| c.origin == Origin::Notify);
        let mut latest: Vec<(&str, &Bucket)> = Vec::new();
        for change in changes {
            for (key, b) in &change.buckets {
                match latest.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = b,
                    None => latest.push((key, b)),
                }
            }
        }
        if !forced {
            latest.retain(|(k, b)| server_is_newer(b.timestamp, self.known.get(*k).copied().unwrap_or(0)));
        }
        if latest.is_empty() {
            return None;
        }
        for (k, b) in &latest {
            self.known.insert((*k).to_string(), b.timestamp);
        }
        let objects: Vec<WireObject<'_>> = latest.iter().map(|(k, b)| WireObject::full(k, b)).collect();
        Some(Bytes::from(objects_document(&objects)))
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
    let weave = weave_id(&req);
    // Keys holding a server change (a command, pairing) that this PUT was not based on: the
    // device has not applied it yet, so its flag stays and the receipt must not claim it.
    let mut behind: Vec<String> = Vec::new();
    let applied = state
        .store
        .plan(
            &caller.serial,
            Origin::Device,
            false,
            |current| {
                let mut ops = Vec::new();
                for e in entries {
                    let Some(fields) = e.value.filter(|v| !v.is_empty()) else { continue };
                    let server = current.get(&e.key);
                    let unseen = e.if_revision.is_none()
                        && server
                            .is_some_and(|b| b.unconfirmed && e.base_revision.is_some_and(|base| base != b.revision));
                    let acknowledges =
                        fields.len() == 1 && fields.get("target_change_pending") == Some(&Value::Bool(false));
                    if unseen {
                        behind.push(e.key.clone());
                    }
                    ops.push(match (acknowledges, unseen) {
                        // Acknowledging an older push must not clear the flag of a newer one.
                        (true, true) => Op::MergeUnseen { key: e.key, fields: Fields::new() },
                        (true, false) if e.if_revision.is_none() => Op::ClearPending { key: e.key },
                        (false, true) => Op::MergeUnseen { key: e.key, fields: with_weave(fields, &weave) },
                        _ => Op::Merge { key: e.key, fields: with_weave(fields, &weave), if_revision: e.if_revision },
                    });
                }
                ops
            },
            None,
        )
        .await?;
    let objects: Vec<WireObject<'_>> = applied
        .written
        .iter()
        .map(|w| {
            let (rev, ts) = w.bucket.as_ref().map_or((0, 0), |b| (b.revision, b.timestamp));
            // Just below the server's timestamp, so the server's copy stays newer for the device
            // and the pending change reaches it (on the held subscribe or the next one).
            let ts = if behind.contains(&w.key) { ts.saturating_sub(1) } else { ts };
            WireObject::receipt(&w.key, rev, ts)
        })
        .collect();
    let conflicts = applied.written.iter().filter(|w| w.outcome == Outcome::Conflict).count();
    tracing::debug!(serial = %caller.serial, objects = objects.len(), conflicts, changed = applied.change.is_some(), "put");
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
