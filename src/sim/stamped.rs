//! An event-stream reader that knows when each event reached this machine's kernel, not only
//! when the benchmark got round to reading it: with 10,000 streams on one core the reader's
//! own backlog would otherwise be counted as the server's latency. Linux stamps each received
//! packet (`SO_TIMESTAMPING`, software receive stamps); `recvmsg` hands the stamp of the last
//! packet read back with the bytes.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::cmsg_space;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, TimestampingFlag, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// When the events of one read arrived: in the kernel, and in the reader.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub kernel: SystemTime,
    pub read: SystemTime,
    pub events: usize,
}

pub struct StampedStream {
    tcp: TcpStream,
    /// The end of the last read, so a `data:` split between two reads is still counted.
    tail: Vec<u8>,
}

impl StampedStream {
    /// Opens `GET path` on `addr` with receive stamps on, and reads the response head.
    pub async fn open(addr: &str, path: &str) -> anyhow::Result<Self> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let flags = TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE;
        setsockopt(&tcp, sockopt::Timestamping, &flags)?;
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
            .await?;
        let stream = Self { tcp, tail: Vec::new() };
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            anyhow::ensure!(head.len() < 64 * 1024, "response head too large");
            let (bytes, _) = stream.read().await?;
            anyhow::ensure!(!bytes.is_empty(), "closed before the response head");
            head.extend_from_slice(&bytes);
        }
        anyhow::ensure!(head.starts_with(b"HTTP/1.1 200"), "stream refused: {}", String::from_utf8_lossy(&head));
        // Whatever followed the head (the retry hint) carries no event.
        Ok(stream)
    }

    /// The next read that carries events, or `None` when the stream ends or `limit` passes.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Option<Arrival>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Ok(read) = tokio::time::timeout_at(deadline, self.read()).await else { return Ok(None) };
            let (bytes, kernel) = read?;
            if bytes.is_empty() {
                return Ok(None);
            }
            let read = SystemTime::now();
            // The kept tail (4 bytes) cannot hold a whole `data:`: nothing is counted twice.
            self.tail.extend_from_slice(&bytes);
            let events = self.tail.windows(5).filter(|w| w == b"data:").count();
            self.tail.drain(..self.tail.len().saturating_sub(4));
            if events > 0 {
                return Ok(Some(Arrival { kernel: kernel.unwrap_or(read), read, events }));
            }
        }
    }

    async fn read(&self) -> io::Result<(Vec<u8>, Option<SystemTime>)> {
        loop {
            self.tcp.readable().await?;
            match self.tcp.try_io(Interest::READABLE, || receive(&self.tcp)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
        }
    }
}

fn receive(tcp: &TcpStream) -> io::Result<(Vec<u8>, Option<SystemTime>)> {
    let mut data = vec![0u8; 16 * 1024];
    let mut control = cmsg_space!(nix::sys::socket::Timestamps);
    let mut iov = [IoSliceMut::new(&mut data)];
    let msg = recvmsg::<SockaddrStorage>(tcp.as_raw_fd(), &mut iov, Some(&mut control), MsgFlags::MSG_DONTWAIT)?;
    let mut stamp = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampsns(stamps) = cmsg {
            stamp = Some(system_time(stamps.system));
        }
    }
    let n = msg.bytes;
    data.truncate(n);
    Ok((data, stamp))
}

fn system_time(t: TimeSpec) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().clamp(0, 999_999_999) as u32)
}
