//! Detached responses: long-lived streaming bodies (held subscribes, event streams) that roost
//! writes itself once actix has sent the response head. The connection's HTTP/1 dispatcher (its
//! 8 KiB read and write buffers, the request, the service's state) is dropped at that point, so
//! a held connection keeps only its socket and the body's own state, and each chunk costs one
//! vectored write instead of a pass through the dispatcher.
//!
//! A handler returns [`respond`]; the body's first poll hands the stream to the connection,
//! which takes the IO back as soon as the dispatcher has flushed the head (see `connection` in
//! the parent module). The connection closes after the body ends (terminal chunk, FIN).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::body::{BodySize, MessageBody};
use actix_web::http::{Method, Version};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{LocalBoxStream, Stream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::Shared;
use super::outlet::{Lend, Next, Outlet};

/// A body to be written by the connection itself: its chunks, how they are framed, and the
/// outlet other threads send through, if it has one.
pub struct Detached {
    pub framing: Framing,
    pub body: LocalBoxStream<'static, Bytes>,
    pub outlet: Option<Arc<Outlet>>,
}

/// Answers with `builder`'s head and `body`, written by roost once the head is out; the
/// connection closes after it (the head says so). HTTP/1.1 gets a chunked body; HTTP/1.0 a body
/// that ends with the connection (actix would send it chunked, which HTTP/1.0 does not know).
/// Without roost's connection layer, or for HEAD (no body), actix streams it as usual.
pub fn respond(
    req: &HttpRequest,
    builder: HttpResponseBuilder,
    body: impl Stream<Item = Bytes> + 'static,
) -> HttpResponse {
    respond_with_outlet(req, builder, body, None)
}

/// Like [`respond`], with `outlet`'s chunks interleaved with `body`'s; the body ends when
/// either does. A plain connection lends the outlet its socket while it waits.
pub fn respond_with_outlet(
    req: &HttpRequest,
    mut builder: HttpResponseBuilder,
    body: impl Stream<Item = Bytes> + 'static,
    outlet: Option<Arc<Outlet>>,
) -> HttpResponse {
    let framing = match req.version() {
        Version::HTTP_11 => Framing::Chunked,
        Version::HTTP_10 => Framing::UntilClose,
        _ => return streamed(builder, body, outlet),
    };
    let shared = req.conn_data::<Rc<Shared>>().filter(|_| req.method() != Method::HEAD);
    let Some(shared) = shared else {
        return streamed(builder, body, outlet);
    };
    let mut response = builder
        .force_close()
        .body(Handover { shared: shared.clone(), body: Some(Detached { framing, body: body.boxed_local(), outlet }) });
    response.head_mut().no_chunking(framing == Framing::UntilClose);
    response
}

/// The body streamed by actix (no connection layer to detach it).
fn streamed(
    mut builder: HttpResponseBuilder,
    body: impl Stream<Item = Bytes> + 'static,
    outlet: Option<Arc<Outlet>>,
) -> HttpResponse {
    let chunks = Merged { body: body.boxed_local(), outlet }.map(Ok::<_, std::convert::Infallible>);
    builder.streaming(chunks)
}

/// `body` and the outlet's chunks as one stream, ending when either ends.
struct Merged {
    body: LocalBoxStream<'static, Bytes>,
    outlet: Option<Arc<Outlet>>,
}

impl Stream for Merged {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(outlet) = &self.outlet {
            match outlet.poll_next(cx, None) {
                Poll::Ready(Some(Next::Chunk(chunk) | Next::Wire(chunk))) => return Poll::Ready(Some(chunk)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        self.body.poll_next_unpin(cx)
    }
}

/// How a detached body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    /// The body ends when the connection does (HTTP/1.0).
    UntilClose,
}

/// The body actix sees: on its first poll it hands the real body to the connection and never
/// yields (the connection drops the dispatcher, and this with it, once the head is flushed).
struct Handover {
    shared: Rc<Shared>,
    body: Option<Detached>,
}

impl MessageBody for Handover {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if let Some(body) = this.body.take() {
            this.shared.detach(body);
        }
        Poll::Pending
    }
}

/// Closes the outlet when the connection stops writing, however it stops.
struct CloseOnDrop(Option<Arc<Outlet>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(outlet) = &self.0 {
            outlet.close();
        }
    }
}

/// Writes the body on `io` as its framing says (chunked: then the terminal chunk); stops early
/// when the peer closes or a write fails. What the peer sends meanwhile is read and discarded.
/// `socket` (plain TCP) is lent to the outlet while nothing is being written.
///
/// Flushed at the start and after each chunk: a TLS stream accepts bytes it cannot send yet
/// (the head, when the dispatcher's flush was still pending, or a chunk) and sends them only
/// when written to or flushed again, and a held body may not write again for minutes.
pub(super) async fn stream<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    detached: Detached,
    socket: Option<Arc<TcpStream>>,
) -> io::Result<()> {
    let Detached { framing, mut body, outlet } = detached;
    let closing = CloseOnDrop(outlet);
    let lend = socket.map(|socket| Lend::new(socket, framing));
    let from_outlet = || {
        std::future::poll_fn(|cx| match &closing.0 {
            Some(outlet) => outlet.poll_next(cx, lend.as_ref()),
            None => Poll::Pending,
        })
    };
    io.flush().await?;
    loop {
        let next = tokio::select! {
            biased;
            next = from_outlet() => next,
            next = body.next() => next.map(Next::Chunk),
            gone = peer_gone(io) => return gone,
        };
        if let Some(outlet) = &closing.0 {
            outlet.reclaim();
        }
        match next {
            Some(Next::Chunk(chunk)) if chunk.is_empty() => continue,
            Some(Next::Wire(bytes)) => io.write_all(&bytes).await?,
            Some(Next::Chunk(chunk)) => match framing {
                Framing::UntilClose => io.write_all(&chunk).await?,
                Framing::Chunked => write_chunk(io, &chunk).await?,
            },
            None if framing == Framing::UntilClose => return Ok(()),
            None => {
                io.write_all(b"0\r\n\r\n").await?;
                return Ok(());
            }
        }
        io.flush().await?;
    }
}

/// One chunk in one vectored write when the socket takes it whole: size line, data, CRLF.
async fn write_chunk<T: AsyncWrite + Unpin>(io: &mut T, data: &[u8]) -> io::Result<()> {
    let mut line = [0u8; 18];
    let len = size_line(data.len(), &mut line);
    let mut parts = [IoSlice::new(&line[..len]), IoSlice::new(data), IoSlice::new(b"\r\n")];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        let n = io.write_vectored(parts).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// `len` in hex followed by CRLF, into `out`; returns the length written.
pub(super) fn size_line(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        *slot = HEX[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Resolves when the peer has closed (or the connection failed); discards what it sends.
async fn peer_gone<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<()> {
    let mut scratch = [0u8; 32];
    std::future::poll_fn(|cx| {
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;

    fn chunked(body: impl Stream<Item = Bytes> + 'static) -> Detached {
        Detached { framing: Framing::Chunked, body: body.boxed_local(), outlet: None }
    }

    #[test]
    fn size_lines_are_lower_case_hex() {
        let mut out = [0u8; 18];
        for (len, text) in
            [(0, "0\r\n"), (9, "9\r\n"), (26, "1a\r\n"), (4096, "1000\r\n"), (usize::MAX, "ffffffffffffffff\r\n")]
        {
            let n = size_line(len, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), text);
        }
    }

    #[tokio::test]
    async fn chunks_then_the_terminal_chunk() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let body =
            futures_util::stream::iter([Bytes::from_static(b"hello"), Bytes::new(), Bytes::from(vec![b'x'; 17])]);
        stream(&mut server, chunked(body), None).await.unwrap();
        drop(server);
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        assert_eq!(seen, format!("5\r\nhello\r\n11\r\n{}\r\n0\r\n\r\n", "x".repeat(17)));
    }

    #[tokio::test]
    async fn until_close_framing_writes_the_bytes_alone() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let body = futures_util::stream::iter([Bytes::from_static(b"{\"a\":"), Bytes::from_static(b"1}")]);
        stream(&mut server, Detached { framing: Framing::UntilClose, body: body.boxed_local(), outlet: None }, None)
            .await
            .unwrap();
        drop(server);
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        assert_eq!(seen, "{\"a\":1}");
    }

    /// A writer like a TLS stream: what is written is only sent when flushed.
    #[derive(Default)]
    struct Buffering {
        unsent: Vec<u8>,
        sent: Vec<u8>,
    }

    impl AsyncRead for Buffering {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Buffering {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().unsent.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.sent.append(&mut this.unsent);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn what_was_written_before_and_each_chunk_are_flushed_while_the_body_waits() {
        let mut io = Buffering { unsent: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), sent: Vec::new() };
        let body = futures_util::stream::iter([Bytes::from_static(b"push")]).chain(futures_util::stream::pending());
        let waiting = stream(&mut io, chunked(body), None).now_or_never();
        assert!(waiting.is_none(), "the body is still open");
        assert_eq!(io.sent, b"HTTP/1.1 200 OK\r\n\r\n4\r\npush\r\n");
        assert!(io.unsent.is_empty());
    }

    #[tokio::test]
    async fn a_peer_that_closes_ends_the_body_early() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let forever = futures_util::stream::pending::<Bytes>();
        stream(&mut server, chunked(forever), None).await.unwrap();
    }
}
