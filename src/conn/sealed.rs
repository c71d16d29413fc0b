//! A TLS connection reduced to its sending half, for a detached response (a held subscribe or
//! an event stream). Once such a response's head is out, roost only writes to the connection
//! and watches for its end. So it takes the send key out of rustls, as a kernel-TLS offload
//! would, and drops the rest. rustls would otherwise keep a 4 KiB receive buffer, the keys of
//! both directions and its session state (about 7 KiB) for every held connection; the one key
//! kept here is about 600 bytes.
//!
//! Records are sealed with ring's AEAD, the primitive rustls itself uses, in the formats of
//! RFC 5288 (TLS 1.2, AES-GCM, explicit nonce), RFC 7905 (TLS 1.2, ChaCha20-Poly1305) and
//! RFC 8446 §5.2 (TLS 1.3). The receive key goes too: the response said `Connection: close`,
//! so the peer has nothing left to send but its goodbye, and any bytes it sends end the
//! connection, as its FIN does.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Largest plaintext in one record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const MAX_FRAGMENT: usize = 16 * 1024;
/// Plaintext taken by one write: a large chunk leaves in a few system calls, and a peer that
/// stops reading leaves at most this much sealed and waiting.
const MAX_PER_WRITE: usize = 4 * MAX_FRAGMENT;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
/// `close_notify` at warning level.
const CLOSE_NOTIFY: [u8; 2] = [1, 0];
const TAG_LEN: usize = 16;
const EXPLICIT_NONCE_LEN: usize = 8;
/// Records sealed under one key before the connection is ended rather than rekeyed (this end
/// cannot send a TLS 1.3 `KeyUpdate`): below AES-GCM's limit of 2^24.5 full records (RFC 8446
/// §5.5). An event stream that reaches it reconnects and resumes by id.
const RECORD_LIMIT: u64 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// TLS 1.2 AES-GCM: the record carries the nonce's last 8 bytes.
    Tls12ExplicitNonce,
    /// TLS 1.2 ChaCha20-Poly1305.
    Tls12,
    /// TLS 1.3: the content type is sealed inside, the header says application data.
    Tls13,
}

/// Brings rustls up to date before its send key is taken: records it has read are processed,
/// and an answer it parks until the next write (to a TLS 1.3 `KeyUpdate`, sealed under the key
/// being replaced) is queued to be sent. False when the connection must not be sealed: the
/// peer has closed, or rustls has failed.
pub fn settle(conn: &mut ServerConnection) -> bool {
    match conn.process_new_packets() {
        Ok(state) if !state.peer_has_closed() => {}
        _ => return false,
    }
    // An empty write adds no record, but queues a parked KeyUpdate answer.
    io::Write::write(&mut conn.writer(), &[]).is_ok()
}

/// Why a TLS stream was not sealed.
pub enum Unsealed {
    /// Not ready ([`settle`] refused, or records are still to be sent): here it is back.
    Kept(Box<TlsStream<TcpStream>>),
    /// rustls gave no send key; the connection is gone.
    Failed(rustls::Error),
}

/// Reduces `tls` to its send key, once [`settle`]d and flushed.
pub fn seal(mut tls: Box<TlsStream<TcpStream>>) -> Result<Sealed, Unsealed> {
    let conn = tls.get_mut().1;
    if !settle(conn) || conn.wants_write() {
        return Err(Unsealed::Kept(tls));
    }
    let (tcp, conn) = tls.into_inner();
    let sealer = Sealer::take(conn).map_err(Unsealed::Failed)?;
    Ok(Sealed::new(tcp, sealer))
}

/// The send key of a TLS connection and its record sequence number.
struct Sealer {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    format: Format,
}

impl Sealer {
    /// Takes the send key out of `conn`, whose handshake is done and whose records are all
    /// sent; the rest of `conn` is dropped.
    fn take(conn: ServerConnection) -> Result<Self, rustls::Error> {
        let unsupported = |what: &str| rustls::Error::General(format!("cannot seal records of {what}"));
        let version = conn.protocol_version();
        let (seq, secrets) = conn.dangerous_extract_secrets()?.tx;
        let (algorithm, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv, false),
            _ => return Err(unsupported("this cipher")),
        };
        let format = match (version, gcm) {
            (Some(ProtocolVersion::TLSv1_3), _) => Format::Tls13,
            (Some(ProtocolVersion::TLSv1_2), true) => Format::Tls12ExplicitNonce,
            (Some(ProtocolVersion::TLSv1_2), false) => Format::Tls12,
            _ => return Err(unsupported("this protocol version")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| unsupported("this key length"))?;
        let iv = iv.as_ref().try_into().map_err(|_| unsupported("this IV length"))?;
        Ok(Self { key: LessSafeKey::new(key), iv, seq, format })
    }

    /// Appends `plaintext` to `out` as records of content type `typ`.
    fn seal(&mut self, typ: u8, plaintext: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        plaintext.chunks(MAX_FRAGMENT).try_for_each(|fragment| self.seal_record(typ, fragment, out))
    }

    fn seal_record(&mut self, typ: u8, fragment: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        // The last record of the key is kept for close_notify.
        let limit = if typ == ALERT { RECORD_LIMIT } else { RECORD_LIMIT - 1 };
        if self.seq >= limit {
            return Err(io::Error::other("TLS record limit of this key reached"));
        }
        let seq = self.seq;
        self.seq += 1;
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let (outer, len) = match self.format {
            Format::Tls12ExplicitNonce => (typ, EXPLICIT_NONCE_LEN + fragment.len() + TAG_LEN),
            Format::Tls12 => (typ, fragment.len() + TAG_LEN),
            Format::Tls13 => (APPLICATION_DATA, fragment.len() + 1 + TAG_LEN),
        };
        // At most 16 KiB + 1 + 16 + 8, so it fits the header's two bytes.
        let header = [outer, 3, 3, (len >> 8) as u8, len as u8];
        out.reserve(header.len() + len);
        out.extend_from_slice(&header);
        if self.format == Format::Tls12ExplicitNonce {
            out.extend_from_slice(&nonce[4..]);
        }
        let sealed_from = out.len();
        out.extend_from_slice(fragment);
        let aad12;
        let aad: &[u8] = if self.format == Format::Tls13 {
            out.push(typ);
            &header
        } else {
            aad12 = tls12_aad(seq, typ, fragment.len());
            &aad12
        };
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[sealed_from..])
            .map_err(|_| io::Error::other("could not seal a TLS record"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// TLS 1.2's additional data: sequence number, content type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&[3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// The socket of a TLS connection that only sends from now on.
pub struct Sealed {
    tcp: TcpStream,
    sealer: Sealer,
    /// Sealed bytes the socket has not taken yet (their plaintext was reported written).
    unsent: Vec<u8>,
    sent: usize,
    close_notify_sealed: bool,
}

impl Sealed {
    fn new(tcp: TcpStream, sealer: Sealer) -> Self {
        Self { tcp, sealer, unsent: Vec::new(), sent: 0, close_notify_sealed: false }
    }

    /// Writes what is sealed and waiting; frees its buffer once it is all out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.unsent.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.unsent[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.unsent = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Sealed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Seals up to [`MAX_PER_WRITE`] of `bufs` at once (a chunk's size line, data and CRLF
    /// become one record, not three).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut plaintext = Vec::with_capacity(total.min(MAX_PER_WRITE));
        for buf in bufs {
            let room = MAX_PER_WRITE - plaintext.len();
            plaintext.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        if plaintext.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.sealer.seal(APPLICATION_DATA, &plaintext, &mut this.unsent)?;
        // What the socket does not take now goes before the next write, or at the flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(plaintext.len()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Sends `close_notify`, then the FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sealed {
            this.close_notify_sealed = true;
            this.sealer.seal(ALERT, &CLOSE_NOTIFY, &mut this.unsent)?;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for Sealed {
    /// Before the close, reads nothing, ever: the end of the connection, or bytes this end can
    /// no longer open (most likely the peer's `close_notify`), are both its end. Those bytes
    /// are read and dropped first, as far as they have arrived. After `close_notify` is sent,
    /// the peer's bytes are passed on as they are, for the closing drain to discard up to the
    /// peer's FIN (unread bytes would turn the close into a reset).
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.close_notify_sealed {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        }
        let mut scratch = [0u8; 1024];
        // Bounded, so a peer that keeps sending cannot keep this end reading.
        for round in 0..16 {
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.tcp).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => {}
                Poll::Pending if round == 0 => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::SupportedProtocolVersion;
    use rustls::crypto::CryptoProvider;
    use rustls::crypto::ring::cipher_suite;
    use rustls_pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    type Server = Box<TlsStream<TcpStream>>;
    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A real handshake over loopback with one protocol version and cipher suite, and two
    /// records sealed by rustls, so the sequence number carried over is not 0.
    async fn tls_pair(
        version: &'static SupportedProtocolVersion,
        suite: rustls::SupportedCipherSuite,
    ) -> (Server, Client) {
        let cert = rcgen::generate_simple_self_signed(vec!["roost.test".to_string()]).unwrap();
        let provider =
            Arc::new(CryptoProvider { cipher_suites: vec![suite], ..rustls::crypto::ring::default_provider() });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )
            .unwrap();
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connecting = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("roost.test").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = Box::new(tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(tcp).await.unwrap());
        let mut client = connecting.await.unwrap();
        for word in [&b"one "[..], b"two "] {
            tls.write_all(word).await.unwrap();
            tls.flush().await.unwrap();
        }
        let mut first = [0u8; 8];
        client.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"one two ");
        (tls, client)
    }

    /// What the connection does with a detached response's TLS: settle, flush, seal.
    async fn settled_and_sealed(mut tls: Server) -> Result<Sealed, Unsealed> {
        if settle(tls.get_mut().1) {
            tls.flush().await.unwrap();
        }
        seal(tls)
    }

    async fn sealed_pair(
        version: &'static SupportedProtocolVersion,
        suite: rustls::SupportedCipherSuite,
    ) -> (Sealed, Client) {
        let (tls, client) = tls_pair(version, suite).await;
        let Ok(sealed) = settled_and_sealed(tls).await else { panic!("not sealed") };
        (sealed, client)
    }

    #[tokio::test]
    async fn every_record_format_is_opened_by_rustls_and_ends_with_close_notify() {
        use rustls::version::{TLS12, TLS13};
        let cases = [
            (&TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, Format::Tls12ExplicitNonce),
            (&TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, Format::Tls12ExplicitNonce),
            (&TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, Format::Tls12),
            (&TLS13, cipher_suite::TLS13_AES_128_GCM_SHA256, Format::Tls13),
            (&TLS13, cipher_suite::TLS13_AES_256_GCM_SHA384, Format::Tls13),
            (&TLS13, cipher_suite::TLS13_CHACHA20_POLY1305_SHA256, Format::Tls13),
        ];
        for (version, suite, format) in cases {
            let (mut sealed, mut client) = sealed_pair(version, suite).await;
            assert_eq!(sealed.sealer.format, format, "{suite:?}");
            // Larger than one record and than one write, in three slices as a chunk is written.
            let big: Vec<u8> = (0..MAX_PER_WRITE + 3 * MAX_FRAGMENT / 2).map(|i| (i % 251) as u8).collect();
            let writer = tokio::spawn(async move {
                let mut parts = [IoSlice::new(b"size\r\n"), IoSlice::new(&big), IoSlice::new(b"\r\n")];
                let mut parts = &mut parts[..];
                while !parts.is_empty() {
                    let n = sealed.write_vectored(parts).await.unwrap();
                    IoSlice::advance_slices(&mut parts, n);
                }
                sealed.write_all(b"last").await.unwrap();
                sealed.shutdown().await.unwrap();
                big
            });
            let mut seen = Vec::new();
            // An error here is a record rustls could not open, or an end without close_notify.
            client.read_to_end(&mut seen).await.unwrap_or_else(|e| panic!("{suite:?}: {e}"));
            let big = writer.await.unwrap();
            let expected = [&b"size\r\n"[..], &big, b"\r\n", b"last"].concat();
            assert!(seen == expected, "{suite:?}: {} bytes read, {} expected", seen.len(), expected.len());
        }
    }

    #[tokio::test]
    async fn the_peers_close_notify_reads_as_the_end() {
        use rustls::version::TLS12;
        let (mut sealed, mut client) = sealed_pair(&TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).await;
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), sealed.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 0);
    }

    /// After roost's `close_notify`, the closing drain must read the peer's bytes up to its FIN
    /// (reporting the end at its first bytes would leave the rest unread, and the close would
    /// be a reset).
    #[tokio::test]
    async fn after_close_notify_the_peers_bytes_are_read_up_to_its_fin() {
        let (mut sealed, mut client) =
            sealed_pair(&rustls::version::TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).await;
        sealed.shutdown().await.unwrap();
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        // The peer answers with its own close_notify (a 31-byte record here), then its FIN.
        client.shutdown().await.unwrap();
        let mut drained = 0;
        let mut buf = [0u8; 8];
        loop {
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(10), sealed.read(&mut buf)).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            drained += n;
        }
        assert!(drained > buf.len(), "the peer's close_notify was read whole before its FIN: {drained} bytes");
    }

    /// rustls answers a TLS 1.3 `KeyUpdate` only with its next write, under the key it then
    /// replaces; sealing without sending that answer first would seal with a key the peer does
    /// not have yet.
    #[tokio::test]
    async fn a_key_update_answered_before_the_seal_keeps_the_peer_in_step() {
        let (mut tls, mut client) = tls_pair(&rustls::version::TLS13, cipher_suite::TLS13_AES_128_GCM_SHA256).await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await.unwrap();
        let Ok(mut sealed) = settled_and_sealed(tls).await else { panic!("not sealed") };
        sealed.write_all(b"after the key update").await.unwrap();
        sealed.shutdown().await.unwrap();
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"after the key update");
    }

    /// A peer whose `close_notify` rustls has already read is not sealed: rustls reports the end.
    #[tokio::test]
    async fn a_connection_the_peer_has_closed_is_left_to_rustls() {
        let (mut tls, mut client) =
            tls_pair(&rustls::version::TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).await;
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(tls.read(&mut buf).await.unwrap(), 0);
        assert!(matches!(settled_and_sealed(tls).await, Err(Unsealed::Kept(_))));
    }

    #[test]
    fn the_sequence_number_is_xored_into_the_nonce_and_the_key_stops_at_its_limit() {
        let key = LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &[7; 16]).unwrap());
        let mut sealer = Sealer { key, iv: [0; 12], seq: RECORD_LIMIT - 2, format: Format::Tls12ExplicitNonce };
        let mut out = Vec::new();
        sealer.seal(APPLICATION_DATA, b"x", &mut out).unwrap();
        assert_eq!(&out[..5], &[23, 3, 3, 0, 25]);
        assert_eq!(&out[5..13], &(RECORD_LIMIT - 2).to_be_bytes());
        // The key's last record is close_notify's.
        assert!(sealer.seal(APPLICATION_DATA, b"y", &mut out).is_err());
        sealer.seal(ALERT, &CLOSE_NOTIFY, &mut out).unwrap();
        assert!(sealer.seal(ALERT, &CLOSE_NOTIFY, &mut out).is_err());
    }
}
