//! The layer between a client's socket (after TLS) and actix's HTTP/1 dispatcher. It follows the
//! request framing ([`Framing`]) and so can:
//! - repair four-token request lines (device port);
//! - end a request whose head and body do not arrive within the request timeout (actix times
//!   only the first head): the dispatcher sees the end of the stream, answers what it can and
//!   closes;
//! - hold back a malformed head until every request before it has been answered, so a bad
//!   request on a pipelined connection cannot take the good ones before it down with it (actix
//!   drops requests in flight when its parser fails);
//! - close properly: FIN at once when the dispatcher shuts the connection (actix would first
//!   wait up to its disconnect timeout for the peer), then a short drain so unread request bytes
//!   do not turn the close into a reset that loses the response.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::detach::Detached;
use super::framing::{Framing, Step};

/// How long a closing connection waits for the peer to close after our FIN, and how much of
/// what it still sends is read and discarded meanwhile.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// Room made for each read from the socket (a request head and small body fit).
const READ_CHUNK: usize = 4 * 1024;

/// What [`Guarded`] shares with the rest of its connection: how many requests the service has
/// answered (against the heads passed on), what happened that the operator may want to count,
/// and a response body the connection is to write itself ([`super::detach`]).
#[derive(Default)]
pub struct Shared {
    answered: Cell<u64>,
    waiting: Cell<Option<Waker>>,
    incidents: Cell<Incidents>,
    detached: Cell<Option<Detached>>,
    /// The last write was refused (the dispatcher still holds unwritten bytes).
    blocked: Cell<bool>,
}

impl Shared {
    /// Counts one request as answered when dropped (with its response body, once sent).
    pub fn on_drop(self: &Rc<Self>) -> AnsweredOnDrop {
        AnsweredOnDrop(self.clone())
    }

    fn answered(&self) -> u64 {
        self.answered.get()
    }

    pub fn incidents(&self) -> Incidents {
        self.incidents.get()
    }

    /// Hands a response body to the connection, to be written once the head is out.
    pub(super) fn detach(&self, body: Detached) {
        self.detached.set(Some(body));
    }

    /// The detached body, once the dispatcher has written everything it was given (the head).
    /// Valid right after a dispatcher poll: each one ends by flushing its buffer.
    pub(super) fn take_detached(&self) -> Option<Detached> {
        if self.blocked.get() {
            return None;
        }
        self.detached.take()
    }

    fn note(&self, change: impl FnOnce(&mut Incidents)) {
        let mut incidents = self.incidents.get();
        change(&mut incidents);
        self.incidents.set(incidents);
    }
}

pub struct AnsweredOnDrop(Rc<Shared>);

impl Drop for AnsweredOnDrop {
    fn drop(&mut self) {
        self.0.answered.set(self.0.answered.get() + 1);
        if let Some(waker) = self.0.waiting.take() {
            waker.wake();
        }
    }
}

/// What happened to a connection that the operator may want to count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Incidents {
    /// A malformed head arrived (its reason).
    pub malformed: Option<&'static str>,
    /// A request did not fully arrive in time.
    pub timed_out: bool,
}

struct Closing {
    deadline: Pin<Box<Sleep>>,
    fin_sent: bool,
    drained: usize,
}

pub struct Guarded<T> {
    io: T,
    framing: Framing,
    /// Read from the socket, not yet passed on (a partial head, or a withheld malformed one).
    inbound: BytesMut,
    /// Passed on, not yet read by the dispatcher.
    outbound: BytesMut,
    /// Requests passed on before a withheld malformed head.
    withheld_after: Option<u64>,
    shared: Rc<Shared>,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The dispatcher is shown the end of the stream (the peer closed, or the request timed out).
    ended: bool,
    closing: Option<Closing>,
}

impl<T> Guarded<T> {
    pub fn new(io: T, repair_lines: bool, timeout: Duration) -> Self {
        Self {
            io,
            framing: Framing::new(repair_lines),
            inbound: BytesMut::new(),
            outbound: BytesMut::new(),
            withheld_after: None,
            shared: Rc::default(),
            timeout,
            deadline: None,
            ended: false,
            closing: None,
        }
    }

    pub fn shared(&self) -> Rc<Shared> {
        self.shared.clone()
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T: AsyncRead + Unpin> Guarded<T> {
    /// Frames what arrived: complete parts move to `outbound`; a malformed head is held back
    /// while requests before it are unanswered.
    fn frame(&mut self) {
        while self.withheld_after.is_none() {
            match self.framing.step(&self.inbound) {
                Step::Forward(n) => {
                    let part = self.inbound.split_to(n);
                    self.outbound.extend_from_slice(&part);
                }
                Step::Rewrite { len, with } => {
                    let rest = self.inbound.split_off(len);
                    self.inbound.clear();
                    self.inbound.extend_from_slice(&with);
                    self.inbound.unsplit(rest);
                }
                Step::NeedMore => {
                    if self.inbound.is_empty() {
                        // An idle connection (a held subscribe) keeps no buffer.
                        self.inbound = BytesMut::new();
                    }
                    break;
                }
                Step::Malformed(reason) => {
                    self.shared.note(|i| i.malformed = Some(reason));
                    self.framing.give_up();
                    self.withheld_after = Some(self.framing.heads());
                }
            }
        }
    }

    /// Releases a withheld malformed head once every request before it was answered; the
    /// dispatcher then refuses it (400) and closes.
    fn release(&mut self, cx: &Context<'_>) {
        let Some(before) = self.withheld_after else { return };
        if self.shared.answered() >= before {
            self.withheld_after = None;
            let rest = self.inbound.split();
            self.outbound.extend_from_slice(&rest);
        } else {
            self.shared.waiting.set(Some(cx.waker().clone()));
        }
    }

    /// Runs the request timer while a request is partly here; true once it has run out.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let partial = self.framing.mid_request(&self.inbound) || self.withheld_after.is_some();
        if !partial {
            self.deadline = None;
            return false;
        }
        let timeout = self.timeout;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        deadline.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.outbound.is_empty() {
                let n = this.outbound.len().min(buf.remaining());
                buf.put_slice(&this.outbound.split_to(n));
                if this.outbound.is_empty() {
                    // An idle connection (a held subscribe) keeps no buffer.
                    this.outbound = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            this.release(cx);
            if !this.outbound.is_empty() {
                continue;
            }
            if this.timed_out(cx) {
                tracing::debug!(timeout = ?this.timeout, "a request did not arrive in time; ending the connection");
                this.shared.note(|i| i.timed_out = true);
                this.ended = true;
                continue;
            }
            if this.inbound.is_empty() && this.withheld_after.is_none() {
                return this.read_through(cx, buf);
            }
            if this.withheld_after.is_some() && this.inbound.len() >= LINGER_BYTES {
                // Waiting for answers; what a peer sends meanwhile waits in the kernel.
                return Poll::Pending;
            }
            this.inbound.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.inbound) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    // The peer closed: pass on whatever arrived, then the end.
                    let rest = this.inbound.split();
                    this.outbound.extend_from_slice(&rest);
                    this.withheld_after = None;
                    this.ended = true;
                }
                Poll::Ready(Ok(_)) => this.frame(),
            }
        }
    }
}

impl<T: AsyncRead + Unpin> Guarded<T> {
    /// The usual case, without a copy: reads straight into the dispatcher's buffer and follows
    /// the framing there. What cannot pass as it is (a partial head, a line to repair, a
    /// malformed head) is taken back into `inbound` for [`Guarded::frame`].
    fn read_through(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let end = buf.filled().len();
        if end == start {
            self.ended = true;
            return Poll::Ready(Ok(()));
        }
        let mut passed = start;
        while passed < end {
            match self.framing.step(&buf.filled()[passed..end]) {
                Step::Forward(n) => passed += n,
                _ => break,
            }
        }
        if passed < end {
            self.inbound.extend_from_slice(&buf.filled()[passed..end]);
            buf.set_filled(passed);
            self.frame();
        }
        if passed == start {
            // Nothing could pass yet: the dispatcher must not take this for the end.
            return self.poll_read_again(cx, buf);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read_again(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.shared.blocked.set(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.shared.blocked.set(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// FIN (TLS close_notify first) at once, then up to [`LINGER`] reading and discarding what
    /// the peer still sends, so the close does not reset the connection before it read the
    /// response.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let closing = this.closing.get_or_insert_with(|| Closing {
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + LINGER)),
            fin_sent: false,
            drained: 0,
        });
        if closing.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if !closing.fin_sent {
            match Pin::new(&mut this.io).poll_shutdown(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => closing.fin_sent = true,
            }
        }
        let mut chunk = [0u8; 1024];
        loop {
            if closing.drained >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !read.filled().is_empty() => closing.drained += read.filled().len(),
                Poll::Ready(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads what the dispatcher would see until the stream pauses (nothing more is ready).
    async fn readable(io: &mut Guarded<tokio::io::DuplexStream>) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    }

    #[tokio::test]
    async fn requests_pass_in_any_pieces_with_their_lines_repaired() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Guarded::new(server, true, Duration::from_secs(60));
        let sent = b"GET /d/device.S ._sync HTTP/1.1\r\nHost: r\r\n\r\nPOST /p HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\n\r\nabc";
        let writer = tokio::spawn(async move {
            for byte in sent {
                client.write_all(&[*byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut seen = Vec::new();
        let mut buf = [0u8; 16];
        while seen.len() < sent.len() + 2 {
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0, "no early end");
            seen.extend_from_slice(&buf[..n]);
        }
        drop(writer.await.unwrap());
        assert_eq!(
            String::from_utf8(seen).unwrap(),
            "GET /d/device.S%20._sync HTTP/1.1\r\nHost: r\r\n\r\nPOST /p HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\n\r\nabc"
        );
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "the peer's close passes on");
    }

    #[tokio::test]
    async fn a_malformed_head_waits_until_the_requests_before_it_are_answered() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Guarded::new(server, false, Duration::from_secs(60));
        let shared = io.shared();
        let good = b"GET /a HTTP/1.1\r\nHost: r\r\n\r\n".as_slice();
        client.write_all(good).await.unwrap();
        client.write_all(b"GET /b HTTP/1.1\r\nHost: r\r\nno colon here\r\n\r\n").await.unwrap();
        assert_eq!(readable(&mut io).await, good, "the bad head is held back");
        assert_eq!(shared.incidents().malformed, Some("not an HTTP/1.x request head"));
        drop(shared.on_drop());
        assert_eq!(readable(&mut io).await, b"GET /b HTTP/1.1\r\nHost: r\r\nno colon here\r\n\r\n");
    }
}
