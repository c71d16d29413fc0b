//! `GET /api/events`: the live event stream. Compatible with the reference (one
//! `data: {"serial": ...}` message per state change), and resumable, filterable and bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::conn::outlet::{Chunk, Outlet, Refused};
use crate::device_api::query_param;
use crate::domain::serial;
use crate::domain::time::{iso8601, now_ms};
use crate::error::ApiError;
use crate::state::repos::JournalRow;
use crate::state::{Change, StoreError};
use crate::telemetry::series::{Histogram, LATENCY_NS, SECONDS, Snapshot};

/// Named events a client can opt in to with `?events=`.
pub const NAMED_EVENTS: [&str; 3] = ["command", "availability", "pairing"];
/// Chunks queued for one client; a client that falls this far behind is disconnected
/// (it resumes by id), so a stuck client never grows the server's memory.
const CLIENT_QUEUE: usize = 256;
/// Most changes sent to the streams in one write each.
const MAX_BATCH: usize = 64;
/// Batches waiting for the fan-out thread; past this, streams are cut and resume by id.
const FEED_BATCHES: usize = 64;
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
            Chunk::new(Bytes::from(format!("id: {}\ndata: {}\n\n", self.id, data)))
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
            let frame = format!("id: {}\nevent: {kind}\ndata: {}\n\n", self.id, Value::Object(data));
            (kind.clone(), Chunk::new(Bytes::from(frame)))
        });
        Rendered { id: self.id, serial: self.serial.clone(), message, named }
    }
}

/// An event rendered once and shared by every client that wants it.
#[derive(Debug)]
struct Rendered {
    id: i64,
    serial: String,
    message: Option<Chunk>,
    named: Option<(String, Chunk)>,
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

    /// What this client gets of `r`: the shared chunk when it is one frame, a copy when two.
    fn frames(&self, r: &Rendered) -> Option<Chunk> {
        let named = r.named.as_ref().filter(|(kind, _)| self.named.contains(kind)).map(|(_, frame)| frame);
        match (&r.message, named) {
            (Some(message), None) => Some(message.clone()),
            (None, Some(named)) => Some(named.clone()),
            (Some(message), Some(named)) => Some(Chunk::new([&message.data()[..], &named.data()[..]].concat().into())),
            (None, None) => None,
        }
    }

    /// What this client gets of `batch` above `floor`, as one chunk: the highest id in it, how
    /// many events it holds, and the chunk.
    fn chunk(&self, batch: &[Arc<Rendered>], floor: i64) -> Option<(i64, u64, Chunk)> {
        let mut wanted =
            batch.iter().filter(|r| r.id > floor && self.wants(r)).filter_map(|r| Some((r.id, self.frames(r)?)));
        let (id, first) = wanted.next()?;
        let Some((next_id, second)) = wanted.next() else { return Some((id, 1, first)) };
        let mut all = first.data().to_vec();
        all.extend_from_slice(second.data());
        let (mut last, mut count) = (next_id, 2);
        for (id, more) in wanted {
            all.extend_from_slice(more.data());
            (last, count) = (id, count + 1);
        }
        Some((last, count, Chunk::new(all.into())))
    }
}

/// One open stream, as the fan-out sees it.
struct Client {
    id: u64,
    filter: Filter,
    outlet: Arc<Outlet>,
    connected_at_ms: i64,
    sent: AtomicU64,
}

/// Every open event stream, and the thread that fans committed changes out to them.
pub struct EventStreams {
    clients: Mutex<Clients>,
    /// Open responses, counted until each is dropped (a cut-off client still holds its socket
    /// until the connection goes), so `SSE_MAX_CLIENTS` bounds them all.
    open: std::sync::atomic::AtomicUsize,
    next_id: AtomicU64,
    max_clients: usize,
    sent: AtomicU64,
    dropped: AtomicU64,
    /// From a change reaching the fan-out to the last stream written.
    fan_out_seconds: Histogram<{ LATENCY_NS.len() }>,
}

impl EventStreams {
    pub fn new(max_clients: usize) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(Clients::default()),
            open: std::sync::atomic::AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_clients,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            fan_out_seconds: Histogram::new(LATENCY_NS, SECONDS),
        })
    }

    /// Feeds every change to the clients that want it, until `shutdown`. The writes happen on
    /// a thread of their own: at 10,000 streams one change is 10,000 system calls, which would
    /// otherwise hold up every other task of the runtime for as long.
    pub fn spawn_fan_out(
        self: &Arc<Self>,
        mut feed: broadcast::Receiver<Arc<Change>>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let (batches, next_batch) =
            std::sync::mpsc::sync_channel::<(Vec<Arc<Rendered>>, std::time::Instant)>(FEED_BATCHES);
        let me = self.clone();
        std::thread::Builder::new().name("roost-fan-out".into()).spawn(move || {
            while let Ok((batch, received)) = next_batch.recv() {
                me.dispatch(&batch);
                me.fan_out_seconds.observe_duration(received.elapsed());
            }
        })?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = feed.recv() => c,
                };
                match change {
                    Ok(change) => {
                        // Changes that arrived meanwhile go out with it, one write per stream.
                        let received = std::time::Instant::now();
                        let mut batch = vec![Arc::new(StreamEvent::from_change(&change).frames())];
                        while batch.len() < MAX_BATCH {
                            let Ok(more) = feed.try_recv() else { break };
                            batch.push(Arc::new(StreamEvent::from_change(&more).frames()));
                        }
                        match batches.try_send((batch, received)) {
                            Ok(()) => {}
                            // The writes fell this far behind: like a lagging feed, the
                            // streams are cut and resume by id (nothing queues unbounded).
                            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                                tracing::warn!("event fan-out fell behind; disconnecting streams so they resume");
                                me.cut_all();
                            }
                            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Cannot happen unless the process is starved; clients resume by id.
                        tracing::warn!(missed = n, "event fan-out fell behind; disconnecting streams so they resume");
                        me.cut_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cut_all(&self) {
        let mut clients = self.lock_clients();
        self.dropped.fetch_add(clients.by_id.len() as u64, Ordering::Relaxed);
        for client in clients.take_all() {
            client.outlet.close();
        }
    }

    /// Sends `batch` to every client that wants any of it: one chunk per client. The sweep
    /// runs over the client list as it was when it began, so streams open and close meanwhile.
    fn dispatch(&self, batch: &[Arc<Rendered>]) {
        let targets = self.lock_clients().list();
        let mut gone = Vec::new();
        for client in targets.iter().filter(|c| batch.iter().any(|r| c.filter.wants(r))) {
            let id = client.id;
            let mut events = 0;
            let sent = client.outlet.send(|floor| {
                let (id, count, chunk) = client.filter.chunk(batch, floor)?;
                events = count;
                Some((id, chunk))
            });
            match sent {
                Ok(()) => {
                    client.sent.fetch_add(events, Ordering::Relaxed);
                    self.sent.fetch_add(events, Ordering::Relaxed);
                }
                Err(refused) => {
                    if refused == Refused::Full {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            stream = id,
                            "event stream client is not reading; disconnected (it can resume by id)"
                        );
                    }
                    client.outlet.close();
                    gone.push(id);
                }
            }
        }
        if !gone.is_empty() {
            let mut clients = self.lock_clients();
            for id in gone {
                clients.remove(&id);
            }
        }
    }

    fn register(self: &Arc<Self>, filter: Filter) -> Option<(Registration, Arc<Outlet>)> {
        let mut clients = self.lock_clients();
        if self.open.load(Ordering::SeqCst) >= self.max_clients {
            return None;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outlet = Outlet::new(CLIENT_QUEUE);
        let client = Client { id, filter, outlet: outlet.clone(), connected_at_ms: now_ms(), sent: AtomicU64::new(0) };
        clients.insert(Arc::new(client));
        Some((Registration { id, streams: self.clone() }, outlet))
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
            fan_out: self.fan_out_seconds.snapshot(),
        }
    }

    pub fn stats(&self) -> Value {
        let mut streams: Vec<(u64, Value)> = self
            .lock_clients()
            .by_id
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
        streams.sort_by_key(|(id, _)| *id);
        let streams: Vec<Value> = streams.into_iter().map(|(_, s)| s).collect();
        json!({
            "open_streams": self.open_count(),
            "max_clients": self.max_clients,
            "events_sent": self.sent.load(Ordering::Relaxed),
            "clients_dropped": self.dropped.load(Ordering::Relaxed),
            "streams": streams,
        })
    }
}

/// The open streams by id, and the same as one list for the fan-out's sweeps: made again only
/// after a stream opens or closes, so a sweep copies nothing per stream.
#[derive(Default)]
struct Clients {
    by_id: HashMap<u64, Arc<Client>>,
    list: Option<Arc<[Arc<Client>]>>,
}

impl Clients {
    fn insert(&mut self, client: Arc<Client>) {
        self.by_id.insert(client.id, client);
        self.list = None;
    }

    fn remove(&mut self, id: &u64) -> Option<Arc<Client>> {
        self.list = None;
        self.by_id.remove(id)
    }

    fn take_all(&mut self) -> Vec<Arc<Client>> {
        self.list = None;
        self.by_id.drain().map(|(_, c)| c).collect()
    }

    fn list(&mut self) -> Arc<[Arc<Client>]> {
        self.list.get_or_insert_with(|| self.by_id.values().cloned().collect()).clone()
    }
}

pub struct StreamTotals {
    pub open: usize,
    pub max_clients: usize,
    pub sent: u64,
    pub dropped: u64,
    pub fan_out: Snapshot,
}

/// Unregisters a stream when its response is dropped (client gone, shutdown, or cut off).
struct Registration {
    id: u64,
    streams: Arc<EventStreams>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(client) = self.streams.lock_clients().remove(&self.id) {
            client.outlet.close();
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
    let Some((registration, outlet)) = state.events.register(filter.clone()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Too many event streams (SSE_MAX_CLIENTS={})", state.events.max_clients),
        ));
    };
    let mut backlog = vec![Bytes::from(format!("retry: {RETRY_MS}\n\n"))];
    // Without `Last-Event-ID` a stream carries the changes committed after it connected: one
    // the hub delivered before (still on its way through the fan-out) is not sent.
    let mut replayed_up_to = state.store.hub().last_delivered();
    if let Some(after) = resume_from {
        match replay(&state, after).await? {
            Ok(missed) => {
                for event in missed {
                    let rendered = event.frames();
                    replayed_up_to = rendered.id;
                    if filter.wants(&rendered) {
                        backlog.extend(filter.frames(&rendered).map(|chunk| chunk.data().clone()));
                    }
                }
            }
            Err(current) => {
                replayed_up_to = current;
                let data = json!({"type": "reset", "timestamp": iso8601(now_ms()), "reason": "the events since that id are no longer kept; re-read /api/devices"});
                backlog.push(Bytes::from(format!("id: {current}\nevent: reset\ndata: {data}\n\n")));
            }
        }
    }
    outlet.start(backlog, replayed_up_to);
    let mut keepalive =
        tokio::time::interval_at(Instant::now() + state.config.sse_keepalive(), state.config.sse_keepalive());
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = Keepalive { keepalive, shutdown: state.shutdown.clone(), _registration: registration };
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    let body = futures_util::stream::unfold(stream, Keepalive::next);
    Ok(crate::conn::detach::respond_with_outlet(&req, response, body, Some(outlet)))
}

/// The stream's own part of its body (the events come through its outlet): a comment now and
/// then, so proxies keep the connection open, until the server shuts down.
struct Keepalive {
    keepalive: tokio::time::Interval,
    shutdown: CancellationToken,
    _registration: Registration,
}

impl Keepalive {
    async fn next(mut self) -> Option<(Bytes, Self)> {
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            _ = self.keepalive.tick() => Some((Bytes::from_static(b": keepalive\n\n"), self)),
        }
    }
}

pub async fn stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.events.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: u64) -> Arc<Client> {
        let outlet = Outlet::new(1);
        Arc::new(Client { id, filter: Filter::default(), outlet, connected_at_ms: 0, sent: AtomicU64::new(0) })
    }

    fn ids(list: &[Arc<Client>]) -> Vec<u64> {
        let mut ids: Vec<u64> = list.iter().map(|c| c.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn the_sweep_list_follows_every_open_and_close_and_is_not_rebuilt_in_between() {
        let mut clients = Clients::default();
        clients.insert(client(1));
        clients.insert(client(2));
        let first = clients.list();
        assert_eq!(ids(&first), [1, 2]);
        assert!(Arc::ptr_eq(&first, &clients.list()), "no change, same list");

        clients.insert(client(3));
        assert_eq!(ids(&clients.list()), [1, 2, 3]);
        assert!(clients.remove(&2).is_some());
        assert_eq!(ids(&clients.list()), [1, 3]);
        assert_eq!(ids(&first), [1, 2], "a sweep that began before keeps its own list");

        assert_eq!(clients.take_all().len(), 2);
        assert!(clients.list().is_empty());
    }
}
