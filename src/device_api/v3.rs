//! The v3 transport of firmware 4.3.3 and 4.0.6 on the device port (`POST {t}/v3/subscribe`,
//! `POST {t}/v3/put`, `GET {t}/v3/device/device.S`, and what `/nest/entry` adds): the profile
//! of the calling thermostat, then parse → one store call → render in that profile's shapes
//! (`domain::v3`). The sync rules are the engine's, as for the objects dialect.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use tokio::time::Instant;

use super::held::Held;
use super::transport::{admitted_subscribe, listed_buckets, listing_caller, log_put, put_request, read_put};
use super::{Admission, Gated, admit, arrived, header, transport_ok};
use crate::AppState;
use crate::domain::bucket::{Bucket, Fields};
use crate::domain::sync::{Batch, EntryRequest, Outcome, Scope, SentRequest, SubscribeReply};
use crate::domain::v3::profile::{Hold, ListingShape, VersionSource, speaks_v3};
use crate::domain::v3::render::{self, Receipt};
use crate::domain::v3::{Profile, Shape};
use crate::error::ApiError;

const SWVERSION_HEADER: &str = "x-nl-device-swversion";

/// The v3 profile of the calling thermostat (recording a version its request header reports).
async fn profile_of(state: &AppState, req: &HttpRequest, serial: &str) -> Profile {
    let live = header(req, SWVERSION_HEADER);
    if let Some(version) = live {
        if let Err(e) = state.firmware.report(serial, version, VersionSource::Header).await {
            tracing::warn!(%serial, error = %e, "could not store the reported software version");
        }
    }
    let device = state.store.get(serial, &format!("device.{serial}"));
    let bucket_version = device.as_ref().and_then(|b| b.value.get("current_version")).and_then(|v| v.as_str());
    state.firmware.profile(serial, live, bucket_version)
}

/// What `/nest/entry` adds to its body for a thermostat that identified itself (a paired 4.3.3
/// gets its `user.*` and `structure.*` buckets inline), recording the restart with the engine.
/// The URLs matter more than these: a storage failure leaves them out.
pub(super) async fn entry_members(
    state: &AppState,
    req: &HttpRequest,
    serial: &str,
    software_version: Option<&str>,
) -> Fields {
    if let Some(version) = software_version {
        if let Err(e) = state.firmware.report(serial, version, VersionSource::Entry).await {
            tracing::warn!(%serial, error = %e, "could not store the reported software version");
        }
    }
    // Made-up serials get nothing, and no state is created for them.
    if !state.store.exists(serial) {
        return Fields::new();
    }
    let known = state.firmware.reported(serial).map(|r| r.version);
    let objects_firmware = speaks_v3(known.as_deref().or(header(req, SWVERSION_HEADER))) == Some(false);
    let shape = profile_of(state, req, serial).await.shape();
    let request = EntryRequest {
        owner: state.pairing.owner(serial),
        inline_pairing: !objects_firmware && shape.entry_inlines_pairing_buckets,
    };
    let inline = match state.store.commit(serial, request).await {
        Ok(done) => done.reply,
        Err(e) => {
            tracing::warn!(%serial, error = %e, "could not record a thermostat restart");
            return Fields::new();
        }
    };
    let shown: Vec<(&str, &Bucket)> = inline.iter().map(|(k, b)| (k.as_str(), b.as_ref())).collect();
    let members = render::entry_members(shape, &shown);
    if !members.is_empty() {
        tracing::debug!(%serial, keys = ?members.keys().collect::<Vec<_>>(), "entry carries the pairing buckets");
    }
    members
}

/// `200` with the `X-nl-*` timing headers and the profile's content type.
fn v3_ok(state: &AppState, shape: &Shape) -> HttpResponseBuilder {
    let mut b = transport_ok(state);
    b.content_type(shape.content_type);
    b
}

pub async fn put(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (entries, caller) = read_put(&req, payload).await?;
    let serial = caller.serial.as_str();
    if let Admission::DropPut = admit(&state, &caller, Gated::Put).await? {
        // Waiting for pairing: an acknowledgement of nothing (no `$version` markers), so the
        // thermostat keeps its changes and sends them again; once paired they are stored.
        let shape = profile_of(&state, &req, serial).await.shape();
        return Ok(HttpResponse::Ok().content_type(shape.content_type).body(render::put_ack(shape, &[])));
    }
    arrived(&state, &caller).await?;
    let shape = profile_of(&state, &req, serial).await.shape();
    let reply = state.store.commit(serial, put_request(&req, serial, entries)).await?.reply;
    log_put(serial, &reply);
    let receipts: Vec<Receipt<'_>> = reply
        .receipts
        .iter()
        .map(|r| Receipt {
            key: &r.key,
            revision: r.version.revision,
            timestamp: r.version.timestamp,
            changed: r.bucket.as_deref().filter(|_| r.outcome == Outcome::Changed).map(|b| &b.value),
        })
        .collect();
    Ok(v3_ok(&state, shape).body(render::put_ack(shape, &receipts)))
}

/// `GET {t}/v3/device/device.S`: every bucket of the device in the profile's listing shape.
pub async fn listing(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = listing_caller(&req)?;
    let shape = profile_of(&state, &req, &caller.serial).await.shape();
    let buckets = listed_buckets(&state, &caller, shape.listing == ListingShape::NestedValues).await?;
    let shown: Vec<(&str, &Bucket)> = buckets.iter().map(|(k, b)| (k.as_str(), b.as_ref())).collect();
    Ok(v3_ok(&state, shape).body(render::listing(shape, &shown)))
}

/// `POST {t}/v3/subscribe`: one bucket per answer, named in `X-nl-skv-*` headers with its bare
/// value as the body; nothing newer → held in the profile's way (spec §3.4).
pub async fn subscribe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (mut request, _) = admitted_subscribe(&req, payload, &state, Scope::Listed, Batch::One).await?;
    // A key that cannot be a header value could never be answered.
    request.listed.retain(|l| render::fits_header(&l.key));
    let serial = request.serial.clone();
    let shape = profile_of(&state, &req, &serial).await.shape();

    // Registered before the state is read, so a change committed from here on is not missed.
    let subscription = state.store.hub().subscribe(&serial);
    let SubscribeReply { send, more, hold } = state.store.commit(&serial, request).await?.reply;
    if let Some((key, bucket)) = send.first() {
        tracing::debug!(%serial, object_key = %key, more, "v3 subscribe answered with a bucket");
        return Ok(answer(&state, shape, key, bucket));
    }
    let held = Held::new(subscription, hold, state.shutdown.clone());
    let deadline = Instant::now() + state.config.hold_timeout();
    match shape.hold {
        Hold::HeadersFirst => {
            // Headers at once; a change can no longer carry its SKV headers, so it ends the
            // response with an empty body (the tickle) and records nothing: the device
            // resubscribes and gets the bucket as an immediate answer.
            let body = futures_util::stream::unfold(Some(held), move |held| async move {
                let mut held = held?;
                if Box::pin(held.next_push(deadline)).await.is_some() {
                    tracing::debug!(serial = %held.serial(), "v3 hold woken: empty body");
                }
                None::<(Bytes, _)>
            });
            // Written by the connection layer once the headers are out (src/conn/detach.rs).
            let mut response = v3_ok(&state, shape);
            response.force_close();
            Ok(crate::conn::detach::respond(&req, response, body))
        }
        Hold::Withheld => {
            let mut held = held;
            match held.next_push(deadline).await {
                Some(pushed) => {
                    let first = &pushed[..1];
                    // Recorded before the body goes out, so its acknowledgement is counted.
                    state.store.commit(&serial, SentRequest::of(first)).await?;
                    tracing::debug!(%serial, object_key = %first[0].0, "v3 hold answered with a bucket");
                    Ok(answer(&state, shape, &first[0].0, &first[0].1))
                }
                None => Ok(v3_ok(&state, shape).force_close().body(Bytes::new())),
            }
        }
    }
}

/// The answer carrying one bucket: its identity in `X-nl-skv-*` headers, its value as the body;
/// one chunk after headers sent at once (4.3) or one complete response (4.0). Only keys that fit
/// a header are listed to the planner, so `skv` always renders.
fn answer(state: &AppState, shape: &Shape, key: &str, bucket: &Arc<Bucket>) -> HttpResponse {
    let mut response = v3_ok(state, shape);
    response.force_close();
    let Some(skv) = render::skv(shape, key, bucket) else {
        return response.body(Bytes::new());
    };
    for (name, value) in skv.headers {
        response.insert_header((name, value));
    }
    if skv.disable_defer {
        response.insert_header(("X-nl-disable-defer-window", state.config.disable_defer_window.to_string()));
    }
    let body = Bytes::from(skv.body);
    match shape.hold {
        Hold::HeadersFirst => {
            response.streaming(futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) }))
        }
        Hold::Withheld => response.body(body),
    }
}
