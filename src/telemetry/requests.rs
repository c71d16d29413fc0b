//! Every request on both ports runs in a `request` span carrying its port, method and route
//! pattern (and the thermostat's serial once a handler knows it, see [`super::record_serial`]),
//! and is timed into a histogram per port, method, route and status.
//!
//! The route is the pattern the path matches (`/nest/transport/{version}/put`), never the
//! path itself: label values stay a fixed set whatever clients send, and no query string
//! (where `?token=` keys travel) reaches a log line. Each worker thread keeps its own maps from
//! path to pattern and from pattern and status to the shared series, so a request takes no lock
//! and, on a path seen before, finds its route without matching or allocating; the shared
//! registry is locked the first time a worker sees a series, and when `/metrics` is scraped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::Error;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::Method;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::exposition::{Exposition, Kind};
use super::series::{Histogram, LATENCY_NS, SECONDS};

/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";
pub const DURATION: &str = "roost_http_request_duration_seconds";

/// One combination of labels and its latency histogram.
struct Series {
    port: &'static str,
    method: &'static str,
    route: &'static str,
    status: u16,
    latency: Histogram<{ LATENCY_NS.len() }>,
}

/// Every series and route pattern seen by any worker. Both only grow, and both are bounded:
/// patterns come from the route table, methods from a fixed list, statuses from what roost
/// answers.
struct Registry {
    routes: Mutex<Vec<&'static str>>,
    series: Mutex<Vec<&'static Series>>,
}

static REGISTRY: Registry = Registry { routes: Mutex::new(Vec::new()), series: Mutex::new(Vec::new()) };

type Key = (&'static str, &'static str, u16);

impl Registry {
    fn intern(&self, pattern: &str) -> &'static str {
        let Ok(mut routes) = self.routes.lock() else { return UNMATCHED };
        if let Some(known) = routes.iter().find(|r| **r == pattern) {
            return known;
        }
        let leaked: &'static str = Box::leak(pattern.to_owned().into_boxed_str());
        routes.push(leaked);
        leaked
    }

    fn series(&self, port: &'static str, (method, route, status): Key) -> &'static Series {
        let mut all = match self.series.lock() {
            Ok(all) => all,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(s) = all.iter().find(|s| (s.port, s.method, s.route, s.status) == (port, method, route, status)) {
            return s;
        }
        let latency = Histogram::new(LATENCY_NS, SECONDS);
        let series: &'static Series = Box::leak(Box::new(Series { port, method, route, status, latency }));
        all.push(series);
        series
    }
}

/// Writes the request histograms, sorted so scrapes are stable.
pub fn render(out: &mut Exposition) {
    let mut all: Vec<&'static Series> = match REGISTRY.series.lock() {
        Ok(all) => all.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    all.sort_by_key(|s| (s.port, s.route, s.method, s.status));
    out.family(
        DURATION,
        Kind::Histogram,
        "Time from a request's arrival until its response head, by port, method, route pattern and status (the _count is the number of requests). Streamed bodies (held subscribes, event streams) are not included.",
    );
    for s in all {
        let status = s.status.to_string();
        let labels = [("port", s.port), ("method", s.method), ("route", s.route), ("status", status.as_str())];
        out.histogram(DURATION, &labels, &s.latency.snapshot());
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Paths a worker remembers the route of (forgotten all at once when full, so paths made up by
/// a client cannot grow it and the ones in use come back at once), and the longest remembered.
const PATHS_REMEMBERED: usize = 256;
const REMEMBERED_PATH_BYTES: usize = 256;

/// A worker's own view of the registry.
#[derive(Default)]
struct WorkerCache {
    /// The route each recently seen path matches: a thermostat's requests use a handful of
    /// paths, and matching one again runs the route table's regular expressions.
    paths: HashMap<Box<str>, &'static str>,
    routes: HashMap<Box<str>, &'static str>,
    series: HashMap<Key, &'static Series>,
}

impl WorkerCache {
    /// The route pattern of a request, matched against the route table before routing (the
    /// request must not be cloned across the call: actix records the routing in it).
    fn route(&mut self, req: &ServiceRequest) -> &'static str {
        if let Some(route) = self.paths.get(req.path()) {
            return route;
        }
        let route = match req.match_pattern() {
            None => UNMATCHED,
            Some(pattern) => match self.routes.get(pattern.as_str()) {
                Some(route) => route,
                None => {
                    let route = REGISTRY.intern(&pattern);
                    self.routes.insert(pattern.into_boxed_str(), route);
                    route
                }
            },
        };
        if req.path().len() <= REMEMBERED_PATH_BYTES {
            if self.paths.len() >= PATHS_REMEMBERED {
                self.paths.clear();
            }
            self.paths.insert(req.path().into(), route);
        }
        route
    }

    fn series(&mut self, port: &'static str, key: Key) -> &'static Series {
        self.series.entry(key).or_insert_with(|| REGISTRY.series(port, key))
    }
}

/// The middleware (`App::wrap(Requests::new("device"))`).
pub struct Requests {
    port: &'static str,
}

impl Requests {
    pub fn new(port: &'static str) -> Self {
        Self { port }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Requests
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = RequestsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestsService { service, port: self.port, local: Rc::new(RefCell::new(WorkerCache::default())) }))
    }
}

pub struct RequestsService<S> {
    service: S,
    port: &'static str,
    local: Rc<RefCell<WorkerCache>>,
}

impl<S, B> Service<ServiceRequest> for RequestsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Timed<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let method = method_label(req.method());
        let route = self.local.borrow_mut().route(&req);
        let span = tracing::info_span!("request", port = self.port, method, route, serial = tracing::field::Empty);
        let inner = span.in_scope(|| self.service.call(req));
        Timed { inner: inner.instrument(span), started, port: self.port, method, route, local: self.local.clone() }
    }
}

pin_project_lite::pin_project! {
    /// A request's future: instrumented with its span, timed until the response head.
    pub struct Timed<F> {
        #[pin]
        inner: Instrumented<F>,
        started: Instant,
        port: &'static str,
        method: &'static str,
        route: &'static str,
        local: Rc<RefCell<WorkerCache>>,
    }
}

impl<F, B> Future for Timed<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Poll::Ready(result) = this.inner.as_mut().poll(cx) else { return Poll::Pending };
        let took = this.started.elapsed();
        let status = match &result {
            Ok(res) => res.status(),
            Err(e) => e.as_response_error().status_code(),
        }
        .as_u16();
        this.local.borrow_mut().series(this.port, (this.method, this.route, status)).latency.observe_duration(took);
        this.inner
            .span()
            .in_scope(|| tracing::debug!(status, elapsed_us = took.as_micros() as u64, "request answered"));
        Poll::Ready(result)
    }
}
