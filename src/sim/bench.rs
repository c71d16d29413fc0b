//! Load benchmarks against a running roost (loopback only, bounded in time and count).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::cli::sim_serial;
use super::http::{Client, Request};
use super::stamped::StampedStream;

#[derive(Args)]
pub struct PutArgs {
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    #[arg(long, default_value_t = 200)]
    pub serials: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

#[derive(Args)]
pub struct HoldArgs {
    /// Device port URL (`https://` speaks TLS 1.2 as the firmware does, trusting any certificate).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Subscribes held at once.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Thermostats the subscribes belong to (default: one per subscribe, as in a real fleet).
    #[arg(long)]
    pub serials: Option<usize>,
    /// State of the simulator's few fields instead of a real thermostat's full upload.
    #[arg(long)]
    pub small_state: bool,
    /// The server's process id, to read its resident memory from /proc.
    #[arg(long)]
    pub server_pid: u32,
    /// Control port URL, to confirm through /api/stats that the subscribes are held.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub control_url: String,
}

/// A client for a device-port URL: TLS 1.2 for `https://` (any certificate), else plain.
pub fn device_client(url: &str) -> anyhow::Result<Client> {
    Ok(Client::for_url(url, || crate::http_client::trust_any_server_with(&[&rustls::version::TLS12]))?)
}

/// A subscribe listing `keys` as already known (far-future timestamps), so the server holds it
/// instead of answering.
fn held_subscribe(serial: &str, keys: &[String], chunked: bool) -> Request {
    let far = 9_999_999_999_999i64;
    let objects: Vec<serde_json::Value> =
        keys.iter().map(|k| json!({"object_key": k, "object_revision": 1, "object_timestamp": far})).collect();
    let body = json!({"chunked": chunked, "session": format!("18b430aabbcc{serial}"), "objects": objects});
    Request::post("/nest/transport/v7/subscribe").basic_auth(&format!("d.{serial}.bench"), "pw").json(&body)
}

/// What a thermostat of the benchmark holds: its own buckets, and the user and structure an
/// open-mode server gives it.
fn bench_keys(serial: &str, full: bool) -> Vec<String> {
    let mut keys: Vec<String> = if full {
        super::fixture::full_state(serial).into_iter().map(|(k, _)| k).collect()
    } else {
        vec![format!("device.{serial}")]
    };
    keys.extend(["user.homeassistant".to_string(), "structure.homeassistant".to_string()]);
    keys
}

/// The boot upload of a benchmark thermostat: the recorded full state, or one small bucket.
pub(super) fn boot_request(serial: &str, full: bool) -> Request {
    if !full {
        return put_request(serial, 0);
    }
    let objects: Vec<serde_json::Value> = super::fixture::full_state(serial)
        .into_iter()
        .map(|(k, v)| json!({"object_key": k, "base_object_revision": 0, "value": v}))
        .collect();
    Request::post("/nest/transport/v7/put")
        .basic_auth(&format!("d.{serial}.bench"), "pw")
        .header("Connection", "keep-alive")
        .json(&json!({"session": format!("18b430aabbcc{serial}"), "objects": objects}))
}

/// Boots `serials` thermostats (their upload, then the first subscribe that carries user and
/// structure) over a few keep-alive connections.
async fn boot_fleet(client: &Client, serials: usize, full: bool) -> anyhow::Result<()> {
    const CONNECTIONS: usize = 16;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS.min(serials) {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= serials {
                    return anyhow::Ok(());
                }
                let serial = sim_serial(i + 1);
                let r = conn.roundtrip(&boot_request(&serial, full)).await?;
                anyhow::ensure!(
                    r.status() == 200,
                    "the upload of {serial} was answered {} (is MAX_DEVICES at least {serials}?): {}",
                    r.status(),
                    String::from_utf8_lossy(&r.body)
                );
                conn.roundtrip(&held_subscribe(&serial, &bench_keys(&serial, full), false)).await?;
            }
        }));
    }
    for t in tasks {
        t.await.context("boot task")??;
    }
    Ok(())
}

fn put_request(serial: &str, n: u64) -> Request {
    let body = json!({
        "session": format!("18b430aabbcc{serial}"),
        "objects": [{"object_key": format!("device.{serial}"), "value": {"current_temperature": 18.0 + (n % 100) as f64 / 10.0, "seq": n}}],
    });
    Request::post("/nest/transport/v7/put")
        .basic_auth(&format!("d.{serial}.bench"), "pw")
        .header("Connection", "keep-alive")
        .json(&body)
}

/// PUTs as fast as `connections` keep-alive connections allow; prints requests per second.
pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.url)?;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (client, ok, errors, serials) = (client.clone(), ok.clone(), errors.clone(), args.serials.max(1));
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            let mut n = c as u64;
            while Instant::now() < deadline {
                if conn.is_none() {
                    conn = client.connect().await.ok();
                }
                let Some(open) = conn.as_mut() else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let serial = sim_serial((n as usize % serials) + 1);
                match open.roundtrip(&put_request(&serial, n)).await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
                n += args.connections as u64;
            }
        }));
    }
    for t in tasks {
        t.await.context("bench task")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "bench-put: {} connections, {} serials, {:.1} s: {} ok, {} errors, {:.0} PUT/s",
        args.connections,
        args.serials,
        elapsed,
        ok,
        errors,
        ok as f64 / elapsed
    );
    Ok(())
}

pub(super) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    ProcStatus::read(pid)?.kib("VmRSS")
}

/// `/proc/<pid>/status`, read once so that the figures taken from it belong together.
pub(super) struct ProcStatus(String);

impl ProcStatus {
    pub(super) fn read(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        Ok(Self(status))
    }

    /// One of its memory figures (`VmRSS`, `RssAnon`, `RssFile`, ...), in KiB.
    pub(super) fn kib(&self, field: &str) -> anyhow::Result<u64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {field} in /proc status"))
    }
}

/// Opens `count` subscribes that the server holds, then prints the server's memory per hold
/// (and, apart, what the thermostats' state costs).
pub async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let client = device_client(&args.url)?;
    let full = !args.small_state;
    let serials = args.serials.unwrap_or(args.count).clamp(1, args.count.max(1));
    let empty = rss_kib(args.server_pid)?;
    boot_fleet(&client, serials, full).await?;
    let before = rss_kib(args.server_pid)?;
    let started = Instant::now();
    // A few at a time: a TLS handshake costs the server far more than a plain connect.
    const OPENING: usize = 32;
    let mut tasks = Vec::new();
    for w in 0..OPENING.min(args.count) {
        let client = client.clone();
        let (count, full) = (args.count, full);
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for i in (w..count).step_by(OPENING) {
                let serial = sim_serial((i % serials) + 1);
                let mut c = client.connect().await.with_context(|| format!("opening connection {i}"))?;
                c.send_request(&held_subscribe(&serial, &bench_keys(&serial, full), true)).await?;
                let head = c.read_head().await?;
                anyhow::ensure!(head.status == 200, "subscribe {i} answered {}", head.status);
                held.push(c);
            }
            anyhow::Ok(held)
        }));
    }
    let mut held = Vec::with_capacity(args.count);
    for t in tasks {
        held.extend(t.await.context("hold task")??);
    }
    let opened = started.elapsed();
    let stats = Client::new(&args.control_url)?.send(&Request::get("/api/stats")).await?.json()?;
    let held_now = stats["subscriptions"]["total_subscriptions"].as_u64().unwrap_or(0);
    anyhow::ensure!(held_now as usize >= args.count, "only {held_now} of {} subscribes are held", args.count);
    let after = rss_kib(args.server_pid)?;
    let per = (after.saturating_sub(before)) as f64 / args.count as f64;
    let state = (before.saturating_sub(empty)) as f64 / serials as f64;
    println!(
        "bench-hold: {serials} thermostats ({} state) took {empty} KiB -> {before} KiB of server RSS: {state:.2} KiB each",
        if full { "real-size" } else { "small" },
    );
    println!(
        "bench-hold: {} held subscribes ({held_now} confirmed held{}) opened in {:.1} s; server RSS {} KiB -> {} KiB: {:.2} KiB per held subscribe",
        args.count,
        if client.is_tls() { ", TLS" } else { "" },
        opened.as_secs_f64(),
        before,
        after,
        per
    );
    drop(held);
    Ok(())
}

#[derive(Args)]
pub struct SseArgs {
    /// Device port URL (to create the thermostat that is commanded).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub control_url: String,
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    #[arg(long, default_value_t = 20)]
    pub commands: usize,
    /// The server's process id, to report its memory per stream.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(super) fn command_request(serial: &str, target: f64) -> Request {
    Request::post("/command").json(&json!({"serial": serial, "command": "set_temperature", "value": target}))
}

/// Fan-out latency from one command to many event streams, and command-to-held-subscribe latency.
pub async fn sse(args: SseArgs) -> anyhow::Result<()> {
    let device = Client::new(&args.url)?;
    let control = Client::new(&args.control_url)?;
    let serial = sim_serial(1);
    device.connect().await?.roundtrip(&put_request(&serial, 0)).await?;
    // The first subscribe after a start carries user and structure; take it.
    device.connect().await?.roundtrip(&held_subscribe(&serial, &bench_keys(&serial, false), false)).await?;

    // Command to held subscribe.
    let mut to_subscribe = Vec::new();
    for i in 0..args.commands {
        let mut held = device.connect().await?;
        held.send_request(&held_subscribe(&serial, &bench_keys(&serial, false), true)).await?;
        anyhow::ensure!(held.read_head().await?.status == 200, "subscribe refused");
        let sent = Instant::now();
        let r = control.send(&command_request(&serial, 15.0 + i as f64 / 10.0)).await?;
        anyhow::ensure!(r.status() == 200, "command answered {}", r.status());
        held.next_chunk_within(Duration::from_secs(5)).await?.context("no push")?;
        to_subscribe.push(sent.elapsed());
    }

    let before = args.server_pid.map(rss_kib).transpose()?;
    let addr = args.control_url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.streams);
    let delivered = Arc::new(AtomicU64::new(0));
    // Every stream stays open until the last command is done: one that closed as soon as it
    // had its events would put its disconnection on the server's core during the last sweep.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        let (addr, ready_tx, expected, delivered) = (addr.clone(), ready_tx.clone(), args.commands, delivered.clone());
        let mut done = done_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = StampedStream::open(&addr, "/api/events").await?;
            let _ = ready_tx.send(()).await;
            let mut arrivals = Vec::with_capacity(expected);
            while arrivals.len() < expected {
                let Some(arrival) = stream.next(Duration::from_secs(30)).await? else { break };
                arrivals.extend(std::iter::repeat_n(arrival, arrival.events));
                delivered.fetch_add(arrival.events as u64, Ordering::Relaxed);
            }
            let _ = done.wait_for(|done| *done).await;
            drop(stream);
            anyhow::Ok(arrivals)
        }));
    }
    drop(ready_tx);
    for _ in 0..args.streams {
        ready_rx.recv().await.context("a stream failed to open")?;
    }
    let after = args.server_pid.map(rss_kib).transpose()?;
    let sweeps_before = fan_out_sweeps(&control).await?;
    let mut sent_at = Vec::with_capacity(args.commands);
    let mut answered = Vec::with_capacity(args.commands);
    for i in 0..args.commands {
        sent_at.push(SystemTime::now());
        let r = control.send(&command_request(&serial, 20.0 + i as f64 / 10.0)).await?;
        answered.push(sent_at[i].elapsed().unwrap_or_default());
        anyhow::ensure!(r.status() == 200, "command answered {}", r.status());
        // The next command once every stream has read this one's event (or after 10 s), so
        // that one read never holds two commands' events and stamps the first one late.
        let all = ((i + 1) * args.streams) as u64;
        let waited = Instant::now();
        while delivered.load(Ordering::Relaxed) < all && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = done_tx.send(true);
    let (mut at_socket, mut at_reader) = (Vec::new(), Vec::new());
    // Per command: the first and the last arrival at a socket.
    let mut spread = vec![(Duration::MAX, Duration::ZERO); sent_at.len()];
    for t in tasks {
        let arrivals = t.await.context("stream task")??;
        for (k, a) in arrivals.iter().enumerate().take(sent_at.len()) {
            let kernel = a.kernel.duration_since(sent_at[k]).unwrap_or_default();
            spread[k] = (spread[k].0.min(kernel), spread[k].1.max(kernel));
            at_socket.push(kernel);
            at_reader.push(a.read.duration_since(sent_at[k]).unwrap_or_default());
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // Where a slow command's time went: before the first stream had it (the command's own
    // path: request, commit, hand-over to the fan-out) or between its first and last stream.
    let mut slowest: Vec<usize> = (0..spread.len()).filter(|&k| spread[k].0 != Duration::MAX).collect();
    slowest.sort_by_key(|&k| std::cmp::Reverse(spread[k].1));
    let worst: Vec<String> = slowest
        .iter()
        .take(4)
        .map(|&k| {
            let (first, last) = spread[k];
            format!("#{k}: answered {:.1}, first {:.1}, last {:.1} ms", ms(answered[k]), ms(first), ms(last))
        })
        .collect();
    println!("bench-sse: slowest commands at the socket: {}", worst.join("; "));
    for (label, mut figures) in [("at the socket (kernel receive stamp)", at_socket), ("at the reader", at_reader)] {
        figures.sort();
        println!(
            "bench-sse: {} streams x {} commands ({} deliveries): fan-out {label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            args.streams,
            args.commands,
            figures.len(),
            ms(percentile(&figures, 0.5)),
            ms(percentile(&figures, 0.99)),
            ms(percentile(&figures, 1.0)),
        );
    }
    if let (Some(after), Some(before)) = (fan_out_sweeps(&control).await?, sweeps_before) {
        let sweeps = after.since(&before);
        let within: Vec<String> =
            sweeps.buckets.iter().map(|(le, n)| format!("<= {:.0} ms: {n}", le * 1000.0)).collect();
        println!(
            "bench-sse: the server's own figure (a change reaching the fan-out to the last stream written), {} changes: mean {:.1} ms; {}",
            sweeps.count,
            sweeps.sum * 1000.0 / sweeps.count.max(1.0),
            within.join(", "),
        );
    }
    to_subscribe.sort();
    println!(
        "bench-sse: command to held subscribe ({} samples): p50 {:.1} ms, p99 {:.1} ms",
        to_subscribe.len(),
        ms(percentile(&to_subscribe, 0.5)),
        ms(percentile(&to_subscribe, 0.99)),
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "bench-sse: server RSS {before} KiB -> {after} KiB with the streams open: {:.2} KiB per stream",
            after.saturating_sub(before) as f64 / args.streams as f64
        );
    }
    Ok(())
}

/// The server's fan-out histogram, from `/metrics` (10 ms to 250 ms buckets).
struct Sweeps {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

impl Sweeps {
    fn since(&self, before: &Sweeps) -> Sweeps {
        let buckets =
            self.buckets.iter().zip(&before.buckets).map(|((le, now), (_, then))| (*le, now - then)).collect();
        Sweeps { count: self.count - before.count, sum: self.sum - before.sum, buckets }
    }
}

/// `None` from a server without the histogram (an older baseline).
async fn fan_out_sweeps(control: &Client) -> anyhow::Result<Option<Sweeps>> {
    const NAME: &str = "roost_event_stream_fanout_seconds";
    let text = control.send(&Request::get("/metrics")).await?.body;
    let text = String::from_utf8_lossy(&text);
    let mut sweeps = Sweeps { count: 0.0, sum: 0.0, buckets: Vec::new() };
    for line in text.lines().filter(|l| l.starts_with(NAME)) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let value: f64 = value.parse().unwrap_or(0.0);
        match series.strip_prefix(NAME) {
            Some("_count") => sweeps.count = value,
            Some("_sum") => sweeps.sum = value,
            Some(bucket) => {
                let le = bucket.trim_start_matches("_bucket{le=\"").trim_end_matches("\"}");
                if let Ok(le) = le.parse::<f64>() {
                    if (0.01..=0.25).contains(&le) {
                        sweeps.buckets.push((le, value));
                    }
                }
            }
            None => {}
        }
    }
    Ok((!sweeps.buckets.is_empty()).then_some(sweeps))
}
