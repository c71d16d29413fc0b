//! `GET /api/events`: the live event stream. Compatible with the reference (one
//! `data: {"serial": ...}` message per state change), and resumable, filterable and bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::device_api::query_param;
use crate::domain::serial;
use crate::domain::time::{iso8601, now_ms};
use crate::error::ApiError;
use crate::state::repos::JournalRow;
use crate::state::{Change, StoreError};

/// Named events a client can opt in to with `?events=`.
pub const NAMED_EVENTS: [&str; 3] = ["command", "availability", "pairing"];
/// Events queued for one client; a client that falls this far behind is disconnected
/// (it resumes by id), so a stuck client never grows the server's memory.
const CLIENT_QUEUE: usize = 256;
/// The most events replayed to a resuming client; further behind, it is told to reset.
const MAX_REPLAY: i64 = 2_000;
/// How long the browser waits before reconnecting.
const RETRY_MS: u64 = 3000;

/// One journaled change as the event stream sees it.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub id: i64,
    pub serial: String,
    /// A change of the device's state: sent to every client as a plain message.
    pub message: bool,
    pub named: Option<(String, Value)>,
    pub at_ms: i64,
}

impl StreamEvent {
    pub fn from_change(c: &Change) -> Self {
        Self {
            id: c.id,
            serial: c.serial.clone(),
            message: c.is_state_change(),
            named: c.event.as_ref().map(|e| (e.kind.to_string(), e.detail.clone())),
            at_ms: c.at_ms,
        }
    }

    /// The frames this event becomes: the plain message, then the named event.
    fn frames(&self) -> Rendered {
        let message = self.message.then(|| {
            let data = json!({"serial": self.serial});
            Bytes::from(format!("id: {}\ndata: {}\n\n", self.id, data))
        });
        let named = self.named.as_ref().map(|(kind, detail)| {
            let mut data = Map::new();
            data.insert("type".into(), json!(kind));
            data.insert("timestamp".into(), json!(iso8601(self.at_ms)));
            data.insert("serial".into(), json!(self.serial));
            if let Value::Object(d) = detail {
                for (k, v) in d {
                    data.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            (kind.clone(), Bytes::from(format!("id: {}\nevent: {kind}\ndata: {}\n\n", self.id, Value::Object(data))))
        });
        Rendered { id: self.id, serial: self.serial.clone(), message, named }
    }
}

/// An event rendered once and shared by every client that wants it.
#[derive(Debug)]
struct Rendered {
    id: i64,
    serial: String,
    message: Option<Bytes>,
    named: Option<(String, Bytes)>,
}

#[derive(Debug, Clone, Default)]
struct Filter {
    serials: Option<Vec<String>>,
    named: Vec<String>,
}

impl Filter {
    fn wants(&self, r: &Rendered) -> bool {
        let serial_ok = self.serials.as_ref().is_none_or(|s| s.contains(&r.serial));
        let kind_ok = r.message.is_some() || r.named.as_ref().is_some_and(|(k, _)| self.named.contains(k));
        serial_ok && kind_ok
    }

    fn write(&self, r: &Rendered, out: &mut Vec<u8>) {
        if let Some(m) = &r.message {
            out.extend_from_slice(m);
        }
        if let Some((kind, frame)) = &r.named {
            if self.named.contains(kind) {
                out.extend_from_slice(frame);
            }
        }
    }
}

struct Client {
    filter: Filter,
    tx: mpsc::Sender<Arc<Rendered>>,
    connected_at_ms: i64,
    sent: Arc<AtomicU64>,
}

/// Every open event stream, and the task that fans committed changes out to them.
pub struct EventStreams {
    clients: Mutex<HashMap<u64, Client>>,
    /// Open responses, counted until each is dropped (a cut-off client still holds its socket
    /// until the connection goes), so `SSE_MAX_CLIENTS` bounds them all.
    open: std::sync::atomic::AtomicUsize,
    next_id: AtomicU64,
    max_clients: usize,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl EventStreams {
    pub fn new(max_clients: usize) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(HashMap::new()),
            open: std::sync::atomic::AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_clients,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Feeds every change to the clients that want it, until `shutdown`.
    pub fn spawn_fan_out(self: &Arc<Self>, mut feed: broadcast::Receiver<Arc<Change>>, shutdown: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = feed.recv() => c,
                };
                match change {
                    Ok(change) => me.dispatch(Arc::new(StreamEvent::from_change(&change).frames())),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Cannot happen unless the process is starved; clients resume by id.
                        tracing::warn!(missed = n, "event fan-out fell behind; disconnecting streams so they resume");
                        if let Ok(mut clients) = me.clients.lock() {
                            me.dropped.fetch_add(clients.len() as u64, Ordering::Relaxed);
                            clients.clear();
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    fn dispatch(&self, rendered: Arc<Rendered>) {
        let Ok(mut clients) = self.clients.lock() else { return };
        clients.retain(|id, c| {
            if !c.filter.wants(&rendered) {
                return true;
            }
            match c.tx.try_send(rendered.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        stream = id,
                        "event stream client is not reading; disconnected (it can resume by id)"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn register(self: &Arc<Self>, filter: Filter) -> Option<(Registration, mpsc::Receiver<Arc<Rendered>>)> {
        let mut clients = self.clients.lock().ok()?;
        if self.open.load(Ordering::SeqCst) >= self.max_clients {
            return None;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let sent = Arc::new(AtomicU64::new(0));
        clients.insert(id, Client { filter, tx, connected_at_ms: now_ms(), sent: sent.clone() });
        Some((Registration { id, streams: self.clone(), sent }, rx))
    }

    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// What `/metrics` reports: open streams, the limit, events sent and clients cut off.
    pub fn totals(&self) -> StreamTotals {
        StreamTotals {
            open: self.open_count(),
            max_clients: self.max_clients,
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    pub fn stats(&self) -> Value {
        let streams: Vec<Value> = self
            .clients
            .lock()
            .map(|clients| {
                let mut v: Vec<(u64, Value)> = clients
                    .iter()
                    .map(|(id, c)| {
                        (
                            *id,
                            json!({
                                "id": id,
                                "serials": c.filter.serials,
                                "events": c.filter.named,
                                "connected_at": iso8601(c.connected_at_ms),
                                "events_sent": c.sent.load(Ordering::Relaxed),
                            }),
                        )
                    })
                    .collect();
                v.sort_by_key(|(id, _)| *id);
                v.into_iter().map(|(_, s)| s).collect()
            })
            .unwrap_or_default();
        json!({
            "open_streams": self.open_count(),
            "max_clients": self.max_clients,
            "events_sent": self.sent.load(Ordering::Relaxed),
            "clients_dropped": self.dropped.load(Ordering::Relaxed),
            "streams": streams,
        })
    }
}

pub struct StreamTotals {
    pub open: usize,
    pub max_clients: usize,
    pub sent: u64,
    pub dropped: u64,
}

/// Unregisters a stream when its response is dropped (client gone, shutdown, or cut off).
struct Registration {
    id: u64,
    streams: Arc<EventStreams>,
    sent: Arc<AtomicU64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut clients) = self.streams.clients.lock() {
            clients.remove(&self.id);
        }
        self.streams.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn parse_filter(req: &HttpRequest) -> Result<Filter, ApiError> {
    let serials = match query_param(req, "serial").or_else(|| query_param(req, "serials")) {
        Some(list) => {
            let mut out = Vec::new();
            for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                out.push(
                    serial::sanitize(raw)
                        .ok_or_else(|| ApiError::bad_request(format!("'{raw}' is not a valid thermostat serial")))?,
                );
            }
            Some(out)
        }
        None => None,
    };
    let mut named = Vec::new();
    if let Some(list) = query_param(req, "events") {
        for kind in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !NAMED_EVENTS.contains(&kind) {
                return Err(ApiError::bad_request(format!(
                    "Unknown event type '{kind}'. Valid: {}",
                    NAMED_EVENTS.join(", ")
                )));
            }
            if !named.iter().any(|k| k == kind) {
                named.push(kind.to_string());
            }
        }
    }
    Ok(Filter { serials, named })
}

fn last_event_id(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let raw = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query_param(req, "lastEventId"));
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("Last-Event-ID '{text}' is not an event id"))),
    }
}

impl StreamEvent {
    fn from_journal(row: JournalRow) -> Self {
        let detail = row.detail.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()).unwrap_or(Value::Null);
        let deleted = row.event.as_deref() == Some("pairing") && detail.get("action") == Some(&json!("deleted"));
        let message = row.object_keys != "[]" || row.origin == "notify" || deleted;
        StreamEvent {
            id: row.id,
            serial: row.serial,
            message,
            named: row.event.map(|kind| (kind, detail)),
            at_ms: row.created_at,
        }
    }
}

/// What a resuming client missed: the events after `after`, or a reset when they are gone.
async fn replay(state: &AppState, after: i64) -> Result<Result<Vec<StreamEvent>, i64>, StoreError> {
    let journal = state.store.journal();
    let (min, max) = journal.bounds().await?;
    let max = max.unwrap_or(0);
    let too_old = min.is_some_and(|min| after < min.saturating_sub(1));
    if too_old || after > max || max.saturating_sub(after) > MAX_REPLAY {
        return Ok(Err(max));
    }
    Ok(Ok(journal.after(after).await?.into_iter().map(StreamEvent::from_journal).collect()))
}

pub async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut filter = parse_filter(&req)?;
    filter.serials = super::access::grant(&req).limit_serials(filter.serials)?;
    let resume_from = last_event_id(&req)?;
    // Registered before the journal is read, so nothing committed in between is missed.
    let Some((registration, rx)) = state.events.register(filter.clone()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Too many event streams (SSE_MAX_CLIENTS={})", state.events.max_clients),
        ));
    };
    let mut backlog: VecDeque<Bytes> = VecDeque::new();
    backlog.push_back(Bytes::from(format!("retry: {RETRY_MS}\n\n")));
    // Without `Last-Event-ID` a stream carries the changes committed after it connected: one
    // the hub delivered before (still on its way through the fan-out task) is not sent.
    let mut replayed_up_to = state.store.hub().last_delivered();
    if let Some(after) = resume_from {
        match replay(&state, after).await? {
            Ok(missed) => {
                for event in missed {
                    let rendered = event.frames();
                    replayed_up_to = rendered.id;
                    if filter.wants(&rendered) {
                        let mut out = Vec::new();
                        filter.write(&rendered, &mut out);
                        backlog.push_back(Bytes::from(out));
                    }
                }
            }
            Err(current) => {
                replayed_up_to = current;
                let data = json!({"type": "reset", "timestamp": iso8601(now_ms()), "reason": "the events since that id are no longer kept; re-read /api/devices"});
                backlog.push_back(Bytes::from(format!("id: {current}\nevent: reset\ndata: {data}\n\n")));
            }
        }
    }
    let mut keepalive =
        tokio::time::interval_at(Instant::now() + state.config.sse_keepalive(), state.config.sse_keepalive());
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = Stream {
        backlog,
        rx,
        filter,
        replayed_up_to,
        keepalive,
        shutdown: state.shutdown.clone(),
        registration,
        total_sent: state.events.clone(),
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    Ok(crate::conn::detach::respond(&req, response, futures_util::stream::unfold(stream, Stream::next)))
}

struct Stream {
    backlog: VecDeque<Bytes>,
    rx: mpsc::Receiver<Arc<Rendered>>,
    filter: Filter,
    replayed_up_to: i64,
    keepalive: tokio::time::Interval,
    shutdown: CancellationToken,
    registration: Registration,
    total_sent: Arc<EventStreams>,
}

impl Stream {
    async fn next(mut self) -> Option<(Bytes, Self)> {
        if let Some(frame) = self.backlog.pop_front() {
            return Some((frame, self));
        }
        loop {
            let rendered = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = self.keepalive.tick() => return Some((Bytes::from_static(b": keepalive\n\n"), self)),
                r = self.rx.recv() => r?,
            };
            if rendered.id <= self.replayed_up_to {
                continue;
            }
            // The common case, one plain message and nothing else queued: send the shared bytes.
            if self.rx.is_empty() && rendered.named.is_none() {
                if let Some(frame) = &rendered.message {
                    self.count_sent(1);
                    return Some((frame.clone(), self));
                }
            }
            let mut out = Vec::new();
            self.filter.write(&rendered, &mut out);
            let mut count = 1;
            // Batch whatever else is already queued into the same write.
            while let Ok(more) = self.rx.try_recv() {
                if more.id > self.replayed_up_to {
                    self.filter.write(&more, &mut out);
                    count += 1;
                }
            }
            if out.is_empty() {
                continue;
            }
            self.count_sent(count);
            return Some((Bytes::from(out), self));
        }
    }

    fn count_sent(&mut self, events: u64) {
        self.registration.sent.fetch_add(events, Ordering::Relaxed);
        self.total_sent.sent.fetch_add(events, Ordering::Relaxed);
    }
}

pub async fn stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.events.stats())
}
