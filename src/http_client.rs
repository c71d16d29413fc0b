//! A small HTTP/1.1 client that shows what a thermostat sees: the response head as soon as it
//! arrives, and the body chunk by chunk (chunk boundaries matter in this protocol). The
//! simulator, the benchmarks and the weather proxy use it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Largest response head and body this client accepts: a peer cannot make it allocate more.
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_BODY: usize = 8 * 1024 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Where requests go: `http://host:port` or `https://host:port`.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    /// Local address to connect from (tests use it to be "another machine" on loopback).
    bind: Option<std::net::IpAddr>,
    max_body: usize,
}

impl Client {
    pub fn new(base_url: &str) -> io::Result<Self> {
        let parts = crate::config::origin_parts(base_url).map_err(invalid)?;
        let port = parts.port.unwrap_or(if parts.https { 443 } else { 80 });
        let host = parts.host.trim_start_matches('[').trim_end_matches(']').to_string();
        if parts.https {
            return Err(invalid("https needs a TLS configuration: use Client::with_tls"));
        }
        Ok(Self { host, port, tls: None, bind: None, max_body: MAX_BODY })
    }

    /// Connects from `ip` (which must be an address of this machine).
    pub fn bind_to(mut self, ip: std::net::IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Refuses response bodies (and chunks) larger than `bytes`, below the default cap.
    pub fn limit_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes.min(MAX_BODY);
        self
    }

    /// A client for `base_url`, HTTPS with `tls` when the scheme asks for it.
    pub fn for_url(base_url: &str, tls: impl FnOnce() -> Arc<rustls::ClientConfig>) -> io::Result<Self> {
        let parts = crate::config::origin_parts(base_url).map_err(invalid)?;
        if parts.https {
            let host = parts.host.trim_start_matches('[').trim_end_matches(']').to_string();
            return Self::with_tls(base_url, tls(), &host);
        }
        Self::new(base_url)
    }

    /// An HTTPS client trusting `config`'s roots; `server_name` is checked against the certificate.
    pub fn with_tls(base_url: &str, config: Arc<rustls::ClientConfig>, server_name: &str) -> io::Result<Self> {
        let parts = crate::config::origin_parts(base_url).map_err(invalid)?;
        let name =
            rustls_pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            host: parts.host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: parts.port.unwrap_or(443),
            tls: Some((tokio_rustls::TlsConnector::from(config), name)),
            bind: None,
            max_body: MAX_BODY,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub async fn connect(&self) -> io::Result<Conn> {
        let tcp = match self.bind {
            None => TcpStream::connect((self.host.as_str(), self.port)).await?,
            Some(local) => {
                let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
                    .await?
                    .find(|a| a.is_ipv4() == local.is_ipv4())
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address of the bound family"))?;
                let socket =
                    if local.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                socket.bind(std::net::SocketAddr::new(local, 0))?;
                socket.connect(addr).await?
            }
        };
        self.wrap(tcp).await
    }

    /// A connection whose receive buffer is `bytes` (a client that reads slowly fills it fast).
    pub async fn connect_with_receive_buffer(&self, bytes: u32) -> io::Result<Conn> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_recv_buffer_size(bytes)?;
        let tcp = socket.connect(addr).await?;
        self.wrap(tcp).await
    }

    async fn wrap(&self, tcp: TcpStream) -> io::Result<Conn> {
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        Ok(Conn {
            io: BufReader::with_capacity(4096, io),
            host: format!("{}:{}", self.host, self.port),
            chunked: false,
            done: false,
            max_body: self.max_body,
        })
    }

    /// One request on a fresh connection, whole response.
    pub async fn send(&self, req: &Request) -> io::Result<Response> {
        let mut conn = self.connect().await?;
        conn.roundtrip(req).await
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self { method: method.into(), path: path.into(), headers: Vec::new(), body: Vec::new() }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", format!("Basic {token}"))
    }

    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("Content-Type", "application/json").body(value.to_string().into_bytes())
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Bytes,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| invalid(format!("response is not JSON ({e}): {}", String::from_utf8_lossy(&self.body))))
    }
}

/// One connection. Requests may be repeated on it while the server keeps it alive.
pub struct Conn {
    io: BufReader<Box<dyn Io>>,
    host: String,
    chunked: bool,
    done: bool,
    max_body: usize,
}

impl Conn {
    pub async fn send_request(&mut self, req: &Request) -> io::Result<()> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", req.method, req.path, self.host);
        for (k, v) in &req.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !req.body.is_empty() || req.method == "POST" || req.method == "PUT" {
            head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&req.body);
        self.io.get_mut().write_all(&out).await?;
        self.io.get_mut().flush().await
    }

    /// One line, refusing lines longer than the head limit.
    async fn line(&mut self, line: &mut String) -> io::Result<usize> {
        line.clear();
        let n = (&mut self.io).take(MAX_HEAD as u64).read_line(line).await?;
        if n >= MAX_HEAD {
            return Err(invalid("response line too long"));
        }
        Ok(n)
    }

    pub async fn read_head(&mut self) -> io::Result<Head> {
        let mut line = String::new();
        if self.line(&mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line: {line:?}")))?;
        let mut headers = Vec::new();
        let mut head_size = line.len();
        loop {
            head_size += self.line(&mut line).await?;
            if head_size > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let head = Head { status, headers };
        self.chunked = head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        self.done = false;
        Ok(head)
    }

    /// The next chunk of a chunked body; `None` after the terminal chunk.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.done || !self.chunked {
            return Ok(None);
        }
        let mut line = String::new();
        if self.line(&mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a chunked body"));
        }
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size > self.max_body {
            return Err(invalid(format!("chunk of {size} bytes is over the limit")));
        }
        if size == 0 {
            // Trailer section: lines until an empty one.
            loop {
                if self.line(&mut line).await? == 0 || line.trim().is_empty() {
                    break;
                }
            }
            self.done = true;
            return Ok(None);
        }
        let mut data = vec![0u8; size];
        self.io.read_exact(&mut data).await?;
        let mut crlf = [0u8; 2];
        self.io.read_exact(&mut crlf).await?;
        Ok(Some(Bytes::from(data)))
    }

    /// Like [`Conn::next_chunk`], failing with `TimedOut` when nothing arrives in time.
    pub async fn next_chunk_within(&mut self, limit: Duration) -> io::Result<Option<Bytes>> {
        tokio::time::timeout(limit, self.next_chunk())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no chunk in time"))?
    }

    pub async fn read_body(&mut self, head: &Head) -> io::Result<Bytes> {
        if self.chunked {
            let mut all = BytesMut::new();
            while let Some(chunk) = self.next_chunk().await? {
                if all.len() + chunk.len() > self.max_body {
                    return Err(invalid("response body over the limit"));
                }
                all.extend_from_slice(&chunk);
            }
            return Ok(all.freeze());
        }
        if let Some(len) = head.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if len > self.max_body {
                return Err(invalid(format!("response body of {len} bytes is over the limit")));
            }
            let mut data = vec![0u8; len];
            self.io.read_exact(&mut data).await?;
            return Ok(Bytes::from(data));
        }
        let mut data = Vec::new();
        (&mut self.io).take(self.max_body as u64 + 1).read_to_end(&mut data).await?;
        if data.len() > self.max_body {
            return Err(invalid("response body over the limit"));
        }
        Ok(Bytes::from(data))
    }

    /// Reads until the server closes the connection and returns what came after the last
    /// response. A TLS connection closed without `close_notify` is an error, not an end.
    pub async fn read_until_closed(&mut self) -> io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        (&mut self.io).take(self.max_body as u64).read_to_end(&mut rest).await?;
        Ok(rest)
    }

    pub async fn roundtrip(&mut self, req: &Request) -> io::Result<Response> {
        self.send_request(req).await?;
        let head = self.read_head().await?;
        let body = self.read_body(&head).await?;
        Ok(Response { head, body })
    }
}

/// A TLS client configuration that accepts any server certificate: the connection is encrypted
/// but not authenticated. Only for peers no public trust store vouches for (the Nest weather
/// service's private CA) and for the simulator against a test certificate.
pub fn trust_any_server() -> Arc<rustls::ClientConfig> {
    trust_any_server_with(rustls::DEFAULT_VERSIONS)
}

/// [`trust_any_server`] speaking only `versions` (the simulator speaks TLS 1.2 as the firmware does).
pub fn trust_any_server_with(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map(|b| b.dangerous().with_custom_certificate_verifier(Arc::new(AnyServer(provider))).with_no_client_auth());
    Arc::new(config.unwrap_or_else(|_| {
        rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
    }))
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
