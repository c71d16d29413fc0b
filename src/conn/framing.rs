//! Follows HTTP/1.1 request framing on a connection's incoming bytes (heads, `Content-Length`
//! and chunked bodies), so the connection layer knows where each request starts and ends: to
//! repair request lines, to time each request, and to see a malformed head before the HTTP
//! parser does. The checks mirror the ones actix's parser applies, so what is malformed here is
//! what actix would refuse.

use actix_web::http::{Method, Uri};

use super::request_line;

/// Longest head followed; a longer one is passed on for actix to refuse (431).
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed per head (actix's own limit).
const MAX_HEADERS: usize = 96;
/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes of the input are complete (part of) a request: pass them on.
    Forward(usize),
    /// The input ends inside a head or a chunk line: more bytes are needed.
    NeedMore,
    /// The head at the front of the input would be refused; the reason. Nothing after it can
    /// be followed.
    Malformed(&'static str),
    /// The request line at the front (its first `len` bytes, line ending excluded) must be
    /// replaced with `with` before the parser sees it; then step again.
    Rewrite { len: usize, with: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    /// Bytes that cannot be followed: after an upgrade, a malformed head or odd chunking.
    Opaque,
}

#[derive(Debug)]
pub struct Framing {
    state: State,
    repair_lines: bool,
    heads: u64,
}

impl Framing {
    /// `repair_lines`: repair four-token request lines (the device port, for firmware 4.x).
    pub fn new(repair_lines: bool) -> Self {
        Self { state: State::Head, repair_lines, heads: 0 }
    }

    /// Complete request heads seen so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Whether a request has begun and not fully arrived, given the bytes not yet passed on.
    pub fn mid_request(&self, pending: &[u8]) -> bool {
        match self.state {
            State::Head => pending.iter().any(|b| !matches!(b, b'\r' | b'\n')),
            State::Opaque => false,
            _ => true,
        }
    }

    /// Stops following (everything from here on is passed on as it is).
    pub fn give_up(&mut self) {
        self.state = State::Opaque;
    }

    /// Advances over `input` (bytes not yet passed on).
    pub fn step(&mut self, input: &[u8]) -> Step {
        if input.is_empty() {
            return Step::NeedMore;
        }
        match self.state {
            State::Opaque => Step::Forward(input.len()),
            State::Head => self.head(input),
            State::Body(left) => {
                let n = left.min(input.len() as u64);
                self.state = if n == left { State::Head } else { State::Body(left - n) };
                Step::Forward(n as usize)
            }
            State::ChunkSize => match line(input) {
                None if input.len() > MAX_LINE => self.opaque(input),
                None => Step::NeedMore,
                Some(len) => {
                    let text = String::from_utf8_lossy(&input[..len]);
                    let size = text.trim_end().split(';').next().map(str::trim).unwrap_or_default();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => self.state = State::Trailers,
                        Ok(n) => self.state = State::ChunkData(n),
                        Err(_) => return self.opaque(input),
                    }
                    Step::Forward(len)
                }
            },
            State::ChunkData(left) => {
                let n = left.min(input.len() as u64);
                self.state = if n == left { State::ChunkEnd } else { State::ChunkData(left - n) };
                Step::Forward(n as usize)
            }
            State::ChunkEnd => match line(input) {
                None if input.len() > 2 => self.opaque(input),
                None => Step::NeedMore,
                Some(len) if input[..len].iter().all(|b| matches!(b, b'\r' | b'\n')) => {
                    self.state = State::ChunkSize;
                    Step::Forward(len)
                }
                Some(_) => self.opaque(input),
            },
            State::Trailers => match line(input) {
                None if input.len() > MAX_LINE => self.opaque(input),
                None => Step::NeedMore,
                Some(len) => {
                    if input[..len].iter().all(|b| matches!(b, b'\r' | b'\n')) {
                        self.state = State::Head;
                    }
                    Step::Forward(len)
                }
            },
        }
    }

    fn opaque(&mut self, input: &[u8]) -> Step {
        self.state = State::Opaque;
        Step::Forward(input.len())
    }

    fn head(&mut self, input: &[u8]) -> Step {
        let blank = input.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        if blank > 0 {
            return Step::Forward(blank);
        }
        if self.repair_lines {
            // The parser would refuse a four-token line before its end: wait for all of it.
            let Some(len) = line(input) else {
                return if input.len() > MAX_HEAD { self.opaque(input) } else { Step::NeedMore };
            };
            let len = len - if input[..len].ends_with(b"\r\n") { 2 } else { 1 };
            if let Some(with) = request_line::repair(&input[..len]) {
                return Step::Rewrite { len, with };
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => return self.opaque(input),
            Ok(httparse::Status::Partial) => return Step::NeedMore,
            Err(httparse::Error::TooManyHeaders) => return Step::Malformed("too many headers"),
            Err(_) => return Step::Malformed("not an HTTP/1.x request head"),
        };
        match body_framing(&request) {
            Ok(next) => {
                self.heads += 1;
                self.state = next;
                Step::Forward(len)
            }
            Err(reason) => Step::Malformed(reason),
        }
    }
}

/// The length of the first line of `input`, line ending included, if it is complete.
fn line(input: &[u8]) -> Option<usize> {
    input.iter().position(|b| *b == b'\n').map(|i| i + 1)
}

/// What follows a well-formed head, with the checks actix's parser makes.
fn body_framing(request: &httparse::Request<'_, '_>) -> Result<State, &'static str> {
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes()).map_err(|_| "bad method")?;
    Uri::try_from(request.path.unwrap_or_default()).map_err(|_| "bad request target")?;
    let http11 = request.version == Some(1);
    let (mut length, mut chunked, mut te, mut host, mut websocket) = (None, false, false, false, false);
    for h in request.headers.iter() {
        let value = std::str::from_utf8(h.value).map(str::trim);
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = value.ok().filter(|v| !v.starts_with('+')).and_then(|v| v.parse::<u64>().ok());
            if length.is_some() || parsed.is_none() {
                return Err("bad or repeated Content-Length");
            }
            length = parsed;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te || !http11 {
                return Err("repeated Transfer-Encoding, or one in HTTP/1.0");
            }
            te = true;
            chunked = value.is_ok_and(|v| v.eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err("Transfer-Encoding other than chunked");
            }
        } else if h.name.eq_ignore_ascii_case("host") {
            if host {
                return Err("repeated Host");
            }
            host = true;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            websocket |= value.is_ok_and(|v| v.eq_ignore_ascii_case("websocket"));
        }
    }
    if http11 && !host {
        return Err("HTTP/1.1 without Host");
    }
    if te && length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if !http11 && method == Method::POST && length.is_none() {
        return Err("HTTP/1.0 POST without Content-Length");
    }
    Ok(match length {
        _ if chunked => State::ChunkSize,
        // The rest of the connection belongs to the upgrade (refused at once by roost).
        _ if websocket || method == Method::CONNECT => State::Opaque,
        Some(n) if n > 0 => State::Body(n),
        _ => State::Head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes; returns what was passed on and the last step.
    fn run(framing: &mut Framing, input: &[u8], piece: usize) -> (Vec<u8>, Step) {
        let mut pending: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut last = Step::NeedMore;
        for chunk in input.chunks(piece.max(1)) {
            pending.extend_from_slice(chunk);
            loop {
                last = framing.step(&pending);
                match &last {
                    Step::Forward(n) => out.extend(pending.drain(..*n)),
                    Step::Rewrite { len, with } => drop(pending.splice(..*len, with.iter().copied())),
                    _ => break,
                }
            }
            if matches!(last, Step::Malformed(_)) {
                break;
            }
        }
        (out, last)
    }

    const PIPELINE: &[u8] = b"POST /nest/transport/put HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n\r\nhello\
GET /nest/entry HTTP/1.1\r\nHost: r\r\n\r\n\
POST /x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n0\r\nTrailer: t\r\n\r\n\
\r\nGET /y HTTP/1.1\r\nHost: r\r\n\r\n";

    #[test]
    fn pipelined_requests_are_followed_in_any_pieces() {
        for piece in [1, 2, 7, 64, PIPELINE.len()] {
            let mut f = Framing::new(false);
            let (out, last) = run(&mut f, PIPELINE, piece);
            assert_eq!(out, PIPELINE, "piece {piece}");
            assert_eq!(last, Step::NeedMore);
            assert_eq!(f.heads(), 4, "piece {piece}");
            assert!(!f.mid_request(b""), "everything arrived");
        }
    }

    #[test]
    fn a_request_in_progress_is_noticed() {
        let mut f = Framing::new(false);
        let head = b"POST /p HTTP/1.1\r\nHost: r\r\nContent-Length: 10\r\n\r\nab";
        let (out, _) = run(&mut f, head, head.len());
        assert_eq!(out, head);
        assert!(f.mid_request(b""), "eight body bytes are missing");
        let mut f = Framing::new(false);
        assert!(!f.mid_request(b"\r\n"));
        assert_eq!(f.step(b"GET / HT"), Step::NeedMore);
        assert!(f.mid_request(b"GET / HT"), "a partial head");
    }

    #[test]
    fn malformed_heads_are_recognised_after_good_ones() {
        let bad_heads: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: r\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.0\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: r\r\n\r\n",
        ];
        for bad in bad_heads {
            let mut input = b"GET /ok HTTP/1.1\r\nHost: r\r\n\r\n".to_vec();
            input.extend_from_slice(bad);
            let mut f = Framing::new(false);
            let (out, last) = run(&mut f, &input, input.len());
            assert!(matches!(last, Step::Malformed(_)), "{}", String::from_utf8_lossy(bad));
            assert_eq!(out, b"GET /ok HTTP/1.1\r\nHost: r\r\n\r\n");
            assert_eq!(f.heads(), 1);
        }
    }

    #[test]
    fn four_token_request_lines_are_repaired_on_every_request_of_a_connection() {
        let input = b"GET /nest/transport/device/device.S ._sync HTTP/1.1\r\nHost: r\r\n\r\n\
PUT /p HTTP/1.1\r\nHost: r\r\nContent-Length: 31\r\n\r\nGET /body/not a line HTTP/1.1\r\n\
GET /d/device.S .$version .$version HTTP/1.1\r\nHost: r\r\n\r\n";
        for piece in [1, 5, input.len()] {
            let mut f = Framing::new(true);
            let (out, last) = run(&mut f, input, piece);
            assert_eq!(last, Step::NeedMore);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "GET /nest/transport/device/device.S%20._sync HTTP/1.1\r\nHost: r\r\n\r\n\
PUT /p HTTP/1.1\r\nHost: r\r\nContent-Length: 31\r\n\r\nGET /body/not a line HTTP/1.1\r\n\
GET /d/device.S%20.$version%20.$version HTTP/1.1\r\nHost: r\r\n\r\n",
                "piece {piece}: bodies are left alone"
            );
        }
        let mut f = Framing::new(false);
        let (_, last) = run(&mut f, input, input.len());
        assert!(matches!(last, Step::Malformed(_)), "without repair the line is refused");
    }

    #[test]
    fn upgrades_and_odd_chunking_stop_the_following() {
        let mut f = Framing::new(false);
        let upgrade = b"POST / HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhiGARBAGE";
        let (out, last) = run(&mut f, upgrade, upgrade.len());
        assert_eq!((out.as_slice(), last), (&upgrade[..], Step::NeedMore));
        assert!(!f.mid_request(b""));
        let mut f = Framing::new(false);
        let odd = b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        let (out, _) = run(&mut f, odd, odd.len());
        assert_eq!(out, odd);
    }
}
