//! The accept path of both ports. roost owns each connection instead of handing the listener
//! to actix-web's `HttpServer`: actix-server accepts at most `max_connections` per port (the
//! rest wait in the kernel's backlog, costing no file descriptor), TLS is terminated here, and
//! [`Guarded`] sits between the socket and actix's HTTP/1 dispatcher (see its module for what
//! it adds). Each request is answered by the port's actix-web `App`; the answer is counted when
//! its response body is done, which is what lets a malformed pipelined request wait its turn.
//! `Upgrade: websocket` and `CONNECT` requests are refused at once (actix would otherwise read
//! their body until the connection closes).

pub mod detach;
mod framing;
mod guarded;
pub mod outlet;
mod request_line;
mod sealed;

use std::cell::RefCell;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::Codec;
use actix_http::{HttpService, Request, Response};
use actix_server::Server;
use actix_service::{
    IntoServiceFactory, Service, ServiceFactory, apply_fn_factory, fn_factory, fn_service, map_config,
};
use actix_web::dev::AppConfig;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub use guarded::{Guarded, Shared};

/// Worker threads per port.
const WORKERS: usize = 2;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// At most one warning about malformed or timed-out requests per this interval.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// How one port accepts and treats its connections.
pub struct Port {
    pub name: &'static str,
    pub listener: std::net::TcpListener,
    pub max_connections: usize,
    pub settings: Settings,
}

#[derive(Clone)]
pub struct Settings {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Repair four-token request lines (the device port, for firmware 4.x).
    pub repair_request_lines: bool,
    /// Time a new connection has to send its first request head (later ones are timed by
    /// [`Guarded`] with `request_timeout`).
    pub first_head_timeout: Duration,
    /// Longest a request's head and body may take to arrive.
    pub request_timeout: Duration,
    pub keep_alive: Duration,
    pub shutdown_grace_secs: u64,
    /// Socket options for each accepted connection.
    pub tune: fn(&TcpStream),
    /// Counts held TLS responses sealed or not.
    pub sealing: Arc<crate::telemetry::tls::Sealing>,
}

/// Serves `app` on `port`.
pub fn serve<F, I, S, B>(port: Port, app: F) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig, Error = actix_web::Error, InitError = ()> + 'static,
    S::Response: Into<Response<B>> + 'static,
    S::Service: 'static,
    <S::Service as Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    let Port { name, listener, max_connections, settings } = port;
    let builder = Server::build()
        .workers(WORKERS)
        .disable_signals()
        .shutdown_timeout(settings.shutdown_grace_secs)
        .max_concurrent_connections(max_connections.div_ceil(WORKERS).max(1));
    let draining = builder.graceful_shutdown_signal();
    let builder = builder.listen(name, listener, move || {
        let settings = settings.clone();
        let draining = draining.clone();
        let app = apply_fn_factory(map_config(app(), |_: ()| AppConfig::default()), answer::<S::Service, B>);
        let h1 = HttpService::<Lent, _, _>::build()
            .keep_alive(settings.keep_alive)
            .client_request_timeout(settings.first_head_timeout)
            // Guarded closes properly (FIN at once, then a short drain); actix's own linger
            // would keep the FIN back for its whole disconnect timeout.
            .client_disconnect_timeout(Duration::ZERO)
            .h1_allow_half_closed(false)
            .graceful_shutdown_signal(move || {
                let draining = draining.clone();
                async move { draining.notified().await }
            })
            .on_connect_ext(|io: &Lent, data: &mut actix_http::Extensions| {
                if let Some(shared) = io.shared() {
                    data.insert(shared);
                }
            })
            .upgrade(fn_service(refuse_upgrade))
            .h1(app);
        let settings = Rc::new(settings);
        fn_factory(move || {
            let h1 = h1.new_service(());
            let settings = settings.clone();
            async move {
                let h1 = Rc::new(h1.await?);
                // Boxed: actix-server's task keeps the future it awaits twice over, and this one
                // holds the whole HTTP/1 dispatcher.
                Ok::<_, ()>(fn_service(move |tcp: TcpStream| {
                    Box::pin(connection(tcp, h1.clone(), settings.clone())) as LocalBoxFuture<'static, _>
                }))
            }
        })
    })?;
    Ok(builder.run())
}

/// One accepted connection, from TLS to the end of its last request (or of a detached response).
///
/// Two phases, each in a box of its own: a held subscribe or event stream keeps only the
/// second (its writer, about a third of the first phase's state) for as long as it is held.
async fn connection<H>(tcp: TcpStream, h1: Rc<H>, settings: Rc<Settings>) -> Result<(), ()>
where
    H: Service<(Lent, Option<SocketAddr>), Response = (), Error = actix_http::error::DispatchError>,
{
    if let Some(detached) = Box::pin(dispatch(tcp, h1, settings)).await {
        Box::pin(detached.write()).await;
    }
    Ok(())
}

/// A response body detached from its dispatcher, with what writing it needs.
struct DetachedResponse {
    io: Rc<RefCell<Guarded<Stream>>>,
    shared: Rc<Shared>,
    body: detach::Detached,
    peer: Option<SocketAddr>,
    settings: Rc<Settings>,
}

/// The connection's requests up to its end, or up to a detached response (returned).
async fn dispatch<H>(tcp: TcpStream, h1: Rc<H>, settings: Rc<Settings>) -> Option<DetachedResponse>
where
    H: Service<(Lent, Option<SocketAddr>), Response = (), Error = actix_http::error::DispatchError>,
{
    // Every answer is written whole, or as one chunk per event: Nagle's algorithm would only
    // hold a small write back until the peer's (possibly delayed) ACK of the one before.
    let _ = tcp.set_nodelay(true);
    (settings.tune)(&tcp);
    let peer = tcp.peer_addr().ok();
    let stream = match &settings.tls {
        None => Stream::Plain(tcp),
        // Boxed: the handshake's state is large and must not stay in every connection's task.
        Some(acceptor) => match Box::pin(handshake(acceptor, tcp)).await {
            Ok(tls) => Stream::Tls(tls),
            Err(e) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                return None;
            }
        },
    };
    let io = Guarded::new(stream, settings.repair_request_lines, settings.request_timeout);
    let shared = io.shared();
    let io = Rc::new(RefCell::new(io));
    // Boxed, so that the dispatcher's memory is returned when a response is detached.
    match until_detached(Box::pin(h1.call((Lent(io.clone()), peer))), &shared).await {
        Ok(result) => {
            report(peer, &shared, &result);
            None
        }
        Err(body) => Some(DetachedResponse { io, shared, body, peer, settings }),
    }
}

impl DetachedResponse {
    async fn write(self) {
        let DetachedResponse { io, shared, body, peer, settings } = self;
        let mut io = Lent(io);
        io.seal(&settings.sealing).await;
        drop(settings); // not kept for as long as the body is written
        // An outlet's writers on other threads need a socket they can share.
        let socket = body.outlet.as_ref().and_then(|_| io.with_stream(Stream::share)?);
        let written = detach::stream(&mut io, body, socket).await;
        if let Err(e) = written.and(io.shutdown().await) {
            tracing::debug!(?peer, error = %e, "detached response ended with an error");
        }
        report(peer, &shared, &Ok(()));
    }
}

/// Logs how a connection ended and counts what it did wrong.
fn report(peer: Option<SocketAddr>, shared: &Shared, result: &Result<(), actix_http::error::DispatchError>) {
    let incidents = shared.incidents();
    let malformed = incidents.malformed.map(String::from).or_else(|| match result {
        Err(actix_http::error::DispatchError::Parse(e)) => Some(e.to_string()),
        _ => None,
    });
    if let Some(reason) = &malformed {
        tracing::debug!(?peer, %reason, "malformed request refused");
    }
    if let Err(e) = result {
        tracing::debug!(?peer, error = %e, "connection ended with an error");
    }
    NOISE.count(malformed.is_some(), incidents.timed_out);
}

/// Runs the dispatcher until it finishes, or until a response body was detached and the
/// dispatcher has flushed the head; then the dispatcher is dropped and the body returned.
async fn until_detached<F: Future>(dispatch: Pin<Box<F>>, shared: &Shared) -> Result<F::Output, detach::Detached> {
    let mut dispatch = Some(dispatch);
    std::future::poll_fn(|cx| {
        let Some(running) = dispatch.as_mut() else { return Poll::Pending };
        if let Poll::Ready(out) = running.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match shared.take_detached() {
            Some(body) => {
                dispatch = None;
                Poll::Ready(Err(body))
            }
            None => Poll::Pending,
        }
    })
    .await
}

async fn handshake(acceptor: &tokio_rustls::TlsAcceptor, tcp: TcpStream) -> std::io::Result<Box<TlsStream<TcpStream>>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(tls) => tls.map(Box::new),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// Counts the answer to one request: done when its response body is (sent or dropped).
fn answer<S, B>(
    req: Request,
    app: &S,
) -> impl std::future::Future<Output = Result<Response<BoxBody>, actix_web::Error>> + use<S, B>
where
    S: Service<Request, Error = actix_web::Error>,
    S::Response: Into<Response<B>>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let done = req.conn_data::<Rc<Shared>>().map(Shared::on_drop);
    let call = app.call(req);
    async move {
        let response: Response<BoxBody> = match call.await {
            Ok(r) => r.into().map_into_boxed_body(),
            Err(e) => e.error_response().into(),
        };
        Ok(response.map_body(|_, body| BoxBody::new(Answered { body, _done: done })))
    }
}

struct Answered {
    body: BoxBody,
    _done: Option<guarded::AnsweredOnDrop>,
}

impl MessageBody for Answered {
    type Error = Box<dyn StdError>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// `Upgrade: websocket` or `CONNECT`: neither port speaks anything but HTTP, so the answer is
/// a 400 at once and the connection closes. (Boxed, so the dispatcher does not grow by its size.)
fn refuse_upgrade(
    (_, framed): (Request, actix_codec::Framed<Lent, Codec>),
) -> LocalBoxFuture<'static, Result<(), actix_web::Error>> {
    Box::pin(async move {
        let body = br#"{"error":"Upgrade is not supported"}"#;
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut io = framed.into_parts().io;
        let written = async {
            io.write_all(head.as_bytes()).await?;
            io.write_all(body).await?;
            io.shutdown().await
        };
        if let Err(e) = written.await {
            tracing::debug!(error = %e, "could not refuse an upgrade");
        }
        NOISE.count(true, false);
        Ok(())
    })
}

/// Counts malformed and timed-out requests; warns at most once per [`SUMMARY_EVERY`] (each is
/// logged at debug), so a fuzzer or a broken client cannot flood the log.
struct Noise {
    malformed: AtomicU64,
    timed_out: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

static NOISE: Noise =
    Noise { malformed: AtomicU64::new(0), timed_out: AtomicU64::new(0), last_warning: Mutex::new(None) };

impl Noise {
    fn count(&self, malformed: bool, timed_out: bool) {
        if !malformed && !timed_out {
            return;
        }
        self.malformed.fetch_add(u64::from(malformed), Ordering::Relaxed);
        self.timed_out.fetch_add(u64::from(timed_out), Ordering::Relaxed);
        let Ok(mut last) = self.last_warning.lock() else { return };
        if last.is_some_and(|at| at.elapsed() < SUMMARY_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let malformed = self.malformed.swap(0, Ordering::Relaxed);
        let timed_out = self.timed_out.swap(0, Ordering::Relaxed);
        tracing::warn!(
            malformed,
            timed_out,
            "refused malformed requests and requests that did not arrive in time (each is logged at debug; this summary at most once a minute)"
        );
    }
}

/// A connection's IO as actix's dispatcher sees it: lent, so the connection can take it back
/// for a detached response.
pub struct Lent(Rc<RefCell<Guarded<Stream>>>);

impl Lent {
    fn shared(&self) -> Option<Rc<Shared>> {
        self.0.try_borrow().ok().map(|io| io.shared())
    }

    fn with_stream<R>(&self, f: impl FnOnce(&mut Stream) -> R) -> Option<R> {
        self.0.try_borrow_mut().ok().map(|mut io| f(io.get_mut()))
    }

    /// TLS keeps only its sending half from here on ([`sealed`]): settled, flushed (the head
    /// and anything rustls queued go out under its own keys), then sealed.
    async fn seal(&mut self, sealing: &crate::telemetry::tls::Sealing) {
        let Some(settled) = self.with_stream(Stream::settle).flatten() else { return };
        if settled && self.flush().await.is_ok() && self.with_stream(Stream::seal) == Some(true) {
            sealing.sealed();
        } else {
            sealing.skipped();
        }
    }

    fn with<R>(
        &self,
        f: impl FnOnce(Pin<&mut Guarded<Stream>>) -> Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match self.0.try_borrow_mut() {
            Ok(mut io) => f(Pin::new(&mut *io)),
            Err(_) => Poll::Ready(Err(std::io::Error::other("connection IO in use"))),
        }
    }
}

impl AsyncRead for Lent {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.with(|io| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Lent {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.with(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.with(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.0.try_borrow().is_ok_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|io| io.poll_shutdown(cx))
    }
}

/// A connection's stream: plain TCP or TLS.
pub enum Stream {
    Plain(TcpStream),
    /// A plain socket shared with writers on other threads (a detached body's outlet).
    Shared(Arc<TcpStream>),
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS that only sends from now on (a detached response).
    Sealed(Box<sealed::Sealed>),
    /// Only while a plain socket becomes a shared one or TLS a sealed one (or when that failed).
    Closed,
}

impl Stream {
    /// Readies TLS for [`Stream::seal`] (see [`sealed::settle`]); false when it will not be
    /// sealed, `None` when it is not TLS.
    fn settle(&mut self) -> Option<bool> {
        match self {
            Stream::Tls(tls) => Some(sealed::settle(tls.get_mut().1)),
            _ => None,
        }
    }

    /// TLS reduced to its sending half ([`sealed`]) once settled and flushed; otherwise left
    /// as it is. True when sealed.
    fn seal(&mut self) -> bool {
        let Stream::Tls(_) = self else { return false };
        let Stream::Tls(tls) = std::mem::replace(self, Stream::Closed) else { return false };
        match sealed::seal(tls) {
            Ok(sealed) => {
                *self = Stream::Sealed(Box::new(sealed));
                true
            }
            Err(sealed::Unsealed::Kept(tls)) => {
                *self = Stream::Tls(tls);
                false
            }
            // Not expected (extraction is enabled for every suite offered); the connection ends.
            Err(sealed::Unsealed::Failed(e)) => {
                tracing::warn!(error = %e, "could not take a TLS connection's send key");
                false
            }
        }
    }

    /// The socket, shared from now on; `None` for TLS.
    fn share(&mut self) -> Option<Arc<TcpStream>> {
        if let Stream::Plain(_) = self {
            if let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) {
                *self = Stream::Shared(Arc::new(tcp));
            }
        }
        match self {
            Stream::Shared(tcp) => Some(tcp.clone()),
            _ => None,
        }
    }
}

fn closed() -> std::io::Error {
    std::io::ErrorKind::NotConnected.into()
}

/// Reads from a shared socket (tokio offers `AsyncRead` only on an owned one).
fn poll_read_shared(tcp: &TcpStream, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
    loop {
        std::task::ready!(tcp.poll_read_ready(cx))?;
        match tcp.try_read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

fn poll_write_shared(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write_vectored(bufs) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Shared(s) => poll_read_shared(s, cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Sealed(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Shared(s) => poll_write_shared(s, cx, &[std::io::IoSlice::new(buf)]),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Sealed(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Shared(s) => poll_write_shared(s, cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Sealed(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Shared(_) | Stream::Sealed(_) => true,
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Shared(_) | Stream::Closed => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Sealed(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Shared(s) => Poll::Ready(socket2::SockRef::from(&**s).shutdown(std::net::Shutdown::Write)),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Sealed(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// The TLS acceptor for a server configuration (HTTP/1.1 only).
pub fn tls_acceptor(config: rustls::ServerConfig) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
