//! An outlet: the way into a detached response body for writers on other threads (the event
//! streams' fan-out). While its connection waits with nothing to write, the connection lends
//! the outlet its plain socket, and a chunk is written straight to it: one system call, no task
//! woken. Otherwise (TLS, a socket that is full, a connection busy writing) the chunk is queued
//! and the connection writes it. Chunks leave in the order they were sent either way.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use nix::sys::socket::{MsgFlags, send};
use tokio::net::TcpStream;

use super::detach::{Framing, size_line};

/// Why a chunk was not taken; the sender stops sending to this outlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The connection has fallen `limit` chunks behind.
    Full,
    /// The connection is gone (or was cut off).
    Closed,
}

/// What the connection writes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Bytes already framed for the wire: what a direct write left unsent.
    Wire(Bytes),
    /// A chunk of the body.
    Chunk(Bytes),
}

/// The plain socket a waiting connection lends, and how its body is framed.
#[derive(Clone)]
pub struct Lend {
    /// Keeps `fd` open while it is lent.
    _socket: Arc<TcpStream>,
    /// The socket's descriptor, kept beside the lock the sweep takes anyway: reaching it
    /// through the `TcpStream` would cost the sweep another cache miss per stream.
    fd: RawFd,
    framing: Framing,
}

impl Lend {
    pub fn new(socket: Arc<TcpStream>, framing: Framing) -> Self {
        Self { fd: socket.as_raw_fd(), _socket: socket, framing }
    }
}

pub struct Outlet {
    state: Mutex<State>,
    limit: usize,
}

#[derive(Default)]
struct State {
    /// Chunks for the connection to write, each with the highest id it carries.
    queue: VecDeque<(i64, Bytes)>,
    /// Items with ids at or below this were sent another way (a replay): they are dropped.
    floor: i64,
    lent: Option<Lend>,
    /// The tail of a direct write the socket took only in part; goes before anything else.
    unsent: Option<Bytes>,
    waker: Option<Waker>,
    closed: bool,
}

impl State {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Outlet {
    /// An outlet whose connection may fall at most `limit` chunks behind.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::default()), limit })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves nothing half-done that matters: carry on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends the chunk `build` makes, given the floor (it leaves out what is at or below it,
    /// and returns the highest id the chunk carries, 0 for none; `None` when nothing is left).
    pub fn send(&self, build: impl FnOnce(i64) -> Option<(i64, Chunk)>) -> Result<(), Refused> {
        let mut state = self.state();
        if state.closed {
            return Err(Refused::Closed);
        }
        let Some((id, chunk)) = build(state.floor) else { return Ok(()) };
        if state.queue.is_empty() && state.unsent.is_none() {
            if let Some(lend) = &state.lent {
                match write_direct(lend, &chunk) {
                    Direct::Whole => return Ok(()),
                    Direct::Part(tail) => {
                        state.unsent = Some(tail);
                        state.lent = None;
                        state.wake();
                        return Ok(());
                    }
                    Direct::Blocked => state.lent = None,
                    Direct::Failed => {
                        state.closed = true;
                        state.lent = None;
                        state.wake();
                        return Err(Refused::Closed);
                    }
                }
            }
        }
        if state.queue.len() >= self.limit {
            return Err(Refused::Full);
        }
        state.queue.push_back((id, chunk.data));
        state.wake();
        Ok(())
    }

    /// Puts `backlog` before everything queued and drops what is queued at or below `floor`.
    pub fn start(&self, backlog: Vec<Bytes>, floor: i64) {
        let mut state = self.state();
        state.floor = floor;
        state.queue.retain(|(id, _)| *id == 0 || *id > floor);
        for chunk in backlog.into_iter().rev() {
            state.queue.push_front((0, chunk));
        }
        state.wake();
    }

    /// Ends the outlet: nothing more is taken, and its connection finishes the body.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.lent = None;
        state.wake();
    }

    /// The connection's side: what to write next, or (when there is nothing) lends `lend` and
    /// waits. `None` once the outlet is closed and drained.
    pub fn poll_next(&self, cx: &mut Context<'_>, lend: Option<&Lend>) -> Poll<Option<Next>> {
        let mut state = self.state();
        if let Some(wire) = state.unsent.take() {
            state.lent = None;
            return Poll::Ready(Some(Next::Wire(wire)));
        }
        if let Some((_, chunk)) = state.queue.pop_front() {
            state.lent = None;
            return Poll::Ready(Some(Next::Chunk(chunk)));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        if state.lent.is_none() {
            state.lent = lend.cloned();
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The connection takes its socket back before writing anything itself.
    pub fn reclaim(&self) {
        self.state().lent = None;
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.state().queue.len()
    }
}

enum Direct {
    Whole,
    /// Written in part: the rest, framed.
    Part(Bytes),
    /// Nothing written: the socket is full.
    Blocked,
    Failed,
}

/// One send: a plain socket's `send` of bytes framed in advance (no iovec to copy in, no
/// file position to take). It goes past tokio's cached readiness, which it leaves as it is:
/// after a socket refused a send, the connection writes the chunk itself, and its own
/// write finds the socket full and waits for it as usual.
fn write_direct(lend: &Lend, chunk: &Chunk) -> Direct {
    let wire = match lend.framing {
        Framing::Chunked => &chunk.wire,
        Framing::UntilClose => &chunk.data,
    };
    let sent = send(lend.fd, wire, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from);
    match sent {
        Ok(n) if n == wire.len() => Direct::Whole,
        Ok(0) => Direct::Failed,
        Ok(n) => Direct::Part(wire.slice(n..)),
        // Interrupted too: the connection then writes the chunk itself.
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Direct::Blocked,
        Err(_) => Direct::Failed,
    }
}

/// A body chunk, with its chunked framing made once (it is shared by every stream it goes to).
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    data: Bytes,
    wire: Bytes,
}

impl Chunk {
    pub fn new(data: Bytes) -> Self {
        let mut line = [0u8; 18];
        let len = size_line(data.len(), &mut line);
        let mut wire = BytesMut::with_capacity(len + data.len() + 2);
        wire.extend_from_slice(&line[..len]);
        wire.extend_from_slice(&data);
        wire.extend_from_slice(b"\r\n");
        Self { data, wire: wire.freeze() }
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker;
    use tokio::io::AsyncReadExt;

    fn next(outlet: &Outlet, lend: Option<&Lend>) -> Poll<Option<Next>> {
        let waker = noop_waker();
        outlet.poll_next(&mut Context::from_waker(&waker), lend)
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// Sends `data` carrying `id`, as the event fan-out does.
    fn send(outlet: &Outlet, id: i64, data: Bytes) -> Result<(), Refused> {
        outlet.send(|floor| (id > floor).then(|| (id, Chunk::new(data))))
    }

    async fn pair() -> (TcpStream, Arc<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Arc::new(server))
    }

    #[test]
    fn without_a_socket_chunks_queue_in_order_and_the_backlog_goes_first() {
        let outlet = Outlet::new(8);
        send(&outlet, 3, b("three")).unwrap();
        send(&outlet, 5, b("fourfive")).unwrap();
        outlet.start(vec![b("retry"), b("replayed")], 3);
        send(&outlet, 3, b("late duplicate")).unwrap();
        let mut seen = Vec::new();
        while let Poll::Ready(Some(Next::Chunk(c))) = next(&outlet, None) {
            seen.push(c);
        }
        assert_eq!(seen, [b("retry"), b("replayed"), b("fourfive")]);
    }

    #[test]
    fn a_connection_that_falls_behind_is_refused_and_a_closed_one_too() {
        let outlet = Outlet::new(2);
        send(&outlet, 1, b("a")).unwrap();
        send(&outlet, 2, b("b")).unwrap();
        assert_eq!(send(&outlet, 3, b("c")), Err(Refused::Full));
        outlet.close();
        assert_eq!(send(&outlet, 4, b("d")), Err(Refused::Closed));
        // What was queued is still written, then the body ends.
        assert_eq!(next(&outlet, None), Poll::Ready(Some(Next::Chunk(b("a")))));
        assert_eq!(next(&outlet, None), Poll::Ready(Some(Next::Chunk(b("b")))));
        assert_eq!(next(&outlet, None), Poll::Ready(None));
    }

    #[tokio::test]
    async fn a_waiting_connection_lends_its_socket_and_chunks_go_straight_to_it() {
        let (mut client, server) = pair().await;
        let outlet = Outlet::new(8);
        let lend = Lend::new(server, Framing::Chunked);
        assert!(next(&outlet, Some(&lend)).is_pending());
        send(&outlet, 1, b("hello")).unwrap();
        send(&outlet, 2, b("0123456789abcdef!")).unwrap();
        assert_eq!(outlet.queued(), 0, "written directly");
        let mut seen = vec![0u8; 33];
        client.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, b"5\r\nhello\r\n11\r\n0123456789abcdef!\r\n");
        // Once the connection writes itself, chunks queue until it waits again.
        outlet.reclaim();
        send(&outlet, 3, b("later")).unwrap();
        assert_eq!(outlet.queued(), 1);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_rest_to_the_connection() {
        let (_client, server) = pair().await;
        socket2::SockRef::from(&*server).set_send_buffer_size(4096).unwrap();
        let outlet = Outlet::new(1_000);
        let lend = Lend::new(server, Framing::UntilClose);
        assert!(next(&outlet, Some(&lend)).is_pending());
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0;
        while outlet.queued() == 0 && sent < 200 {
            send(&outlet, sent + 1, big.clone()).unwrap();
            sent += 1;
        }
        assert!(outlet.queued() > 0, "the kernel took {sent} × 64 KiB");
        // The part-written chunk's tail comes first, then the queue, in order.
        let mut kinds = Vec::new();
        while let Poll::Ready(Some(item)) = next(&outlet, None) {
            kinds.push(matches!(item, Next::Wire(_)));
        }
        assert!(!kinds.is_empty());
        assert!(kinds.iter().skip(1).all(|wire| !wire), "only the first item can be a tail");
    }
}
