//! `roost sim fleet`: a whole fleet against a running roost for minutes. Each thermostat boots
//! with a real thermostat's state, holds its subscribe (listing the versions it really has),
//! PUTs on its own timer (spread like real devices), and acknowledges what is pushed to it; a
//! steady rate of commands and a number of event streams run beside it. Every minute it prints
//! the server's memory and the minute's PUT and push latencies; errors must stay 0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::bench::{ProcStatus, boot_request, command_request, device_client, percentile, rss_kib};
use super::cli::sim_serial;
use super::http::{Client, Conn, Request};

#[derive(Args)]
pub struct FleetArgs {
    /// Device port URL (`https://` speaks TLS 1.2, trusting any certificate).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub control_url: String,
    #[arg(long, default_value_t = 10_000)]
    pub thermostats: usize,
    /// Event-stream clients on the control port.
    #[arg(long, default_value_t = 200)]
    pub streams: usize,
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Each thermostat PUTs a changed temperature about this often (±10 %, first one at a
    /// random point of the first period).
    #[arg(long, default_value_t = 60.0)]
    pub put_every_seconds: f64,
    /// Commands per second over the whole fleet (`set_temperature`, each to one thermostat).
    #[arg(long, default_value_t = 5.0)]
    pub commands_per_second: f64,
    /// Keep-alive connections the thermostats' PUTs share.
    #[arg(long, default_value_t = 64)]
    pub put_connections: usize,
    /// The simulator's few fields instead of a real thermostat's full state.
    #[arg(long)]
    pub small_state: bool,
    /// The server's process id, to read its resident memory from /proc.
    #[arg(long)]
    pub server_pid: u32,
}

/// What every task reports into.
#[derive(Default)]
struct Tally {
    errors: AtomicU64,
    puts: Mutex<Vec<Duration>>,
    pushes: Mutex<Vec<Duration>>,
    commands: AtomicU64,
    events: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, what: impl FnOnce() -> String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            if let Ok(mut first) = self.first_error.lock() {
                *first = Some(what());
            }
        }
    }

    fn record(list: &Mutex<Vec<Duration>>, d: Duration) {
        if let Ok(mut l) = list.lock() {
            l.push(d);
        }
    }

    fn take(list: &Mutex<Vec<Duration>>) -> Vec<Duration> {
        list.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }
}

/// Per thermostat: when a command for it was sent and not yet pushed (nanoseconds since the
/// start, plus one; 0 for none).
struct Pending(Vec<AtomicU64>, Instant);

impl Pending {
    fn mark(&self, i: usize) -> bool {
        let at = self.1.elapsed().as_nanos() as u64 + 1;
        self.0[i].compare_exchange(0, at, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    fn take(&self, i: usize) -> Option<Duration> {
        let at = self.0[i].swap(0, Ordering::AcqRel);
        (at != 0).then(|| self.1.elapsed().saturating_sub(Duration::from_nanos(at - 1)))
    }

    fn outstanding(&self) -> usize {
        self.0.iter().filter(|a| a.load(Ordering::Relaxed) != 0).count()
    }
}

/// The PUT connections the fleet shares (a thermostat PUTs on `slot(i)`).
struct PutPool(Vec<tokio::sync::Mutex<Option<Conn>>>, Client);

impl PutPool {
    async fn send(&self, i: usize, req: &Request) -> anyhow::Result<Value> {
        let mut slot = self.0[i % self.0.len()].lock().await;
        if slot.is_none() {
            *slot = Some(self.1.connect().await?);
        }
        let conn = slot.as_mut().context("no PUT connection")?;
        let r = match conn.roundtrip(req).await {
            Ok(r) => r,
            Err(e) => {
                *slot = None;
                return Err(e.into());
            }
        };
        anyhow::ensure!(r.status() == 200, "PUT answered {}: {}", r.status(), String::from_utf8_lossy(&r.body));
        Ok(r.json()?)
    }
}

/// The versions a thermostat has, as its subscribe lists them.
#[derive(Default)]
struct Versions(HashMap<String, (i64, i64)>);

impl Versions {
    /// Takes the versions of a PUT's or subscribe's objects; returns the `shared` revision
    /// when it carries a pending setpoint (which the thermostat acknowledges).
    fn note(&mut self, doc: &Value) -> Option<i64> {
        let mut ack = None;
        for o in doc["objects"].as_array().into_iter().flatten() {
            let (Some(key), Some(rev), Some(ts)) =
                (o["object_key"].as_str(), o["object_revision"].as_i64(), o["object_timestamp"].as_i64())
            else {
                continue;
            };
            self.0.insert(key.to_string(), (rev, ts));
            if key.starts_with("shared.") && o["value"]["target_change_pending"] == json!(true) {
                ack = Some(rev);
            }
        }
        ack
    }

    fn subscribe(&self, serial: &str, chunked: bool) -> Request {
        let objects: Vec<Value> = self
            .0
            .iter()
            .map(|(k, (rev, ts))| json!({"object_key": k, "object_revision": rev, "object_timestamp": ts}))
            .collect();
        let body = json!({"chunked": chunked, "session": session(serial), "objects": objects});
        authed(Request::post("/nest/transport/v7/subscribe"), serial).json(&body)
    }
}

fn session(serial: &str) -> String {
    format!("18b430aabbcc{serial}")
}

fn authed(req: Request, serial: &str) -> Request {
    req.basic_auth(&format!("d.{serial}.fleet"), "pw")
}

fn put(serial: &str, key: &str, base: i64, value: Value) -> Request {
    let body = json!({"session": session(serial), "objects": [{"object_key": key, "base_object_revision": base, "value": value}]});
    authed(Request::post("/nest/transport/v7/put"), serial).header("Connection", "keep-alive").json(&body)
}

pub async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    let client = device_client(&args.url)?;
    let control = Client::new(&args.control_url)?;
    let full = !args.small_state;
    let n = args.thermostats.max(1);
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let pending = Arc::new(Pending((0..n).map(|_| AtomicU64::new(0)).collect(), Instant::now()));
    let pool =
        Arc::new(PutPool((0..args.put_connections.max(1)).map(|_| Default::default()).collect(), client.clone()));
    let empty = rss_kib(args.server_pid)?;

    // Boot: each thermostat uploads its state and takes its first answer, a few at a time.
    let started = Instant::now();
    let booting = Arc::new(Semaphore::new(16));
    let (booted_tx, mut booted_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(n);
    let mut fleet = Vec::with_capacity(n);
    for i in 0..n {
        let t = Thermostat {
            i,
            serial: sim_serial(i + 1),
            client: client.clone(),
            pool: pool.clone(),
            tally: tally.clone(),
            pending: pending.clone(),
            stop: stop.clone(),
            put_every: Duration::from_secs_f64(args.put_every_seconds.max(0.1)),
        };
        let (booting, booted_tx) = (booting.clone(), booted_tx.clone());
        fleet.push(tokio::spawn(async move {
            let permit = booting.acquire_owned().await;
            let versions = t.boot(full).await;
            drop(permit);
            match versions {
                Ok(v) => {
                    let _ = booted_tx.send(Ok(())).await;
                    t.run(v).await;
                }
                Err(e) => {
                    let _ = booted_tx.send(Err(e)).await;
                }
            }
        }));
    }
    drop(booted_tx);
    for _ in 0..n {
        booted_rx.recv().await.context("a thermostat task ended")?.context("booting the fleet")?;
    }
    let booted = rss_kib(args.server_pid)?;
    println!(
        "fleet: {n} thermostats ({} state) booted in {:.1} s; server RSS {empty} KiB -> {booted} KiB",
        if full { "real-size" } else { "small" },
        started.elapsed().as_secs_f64()
    );

    let mut streams = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        streams.push(tokio::spawn(event_stream(control.clone(), tally.clone(), stop.clone())));
    }
    let stop_commands = CancellationToken::new();
    let commander = tokio::spawn(commands(
        control.clone(),
        args.commands_per_second,
        n,
        pending.clone(),
        tally.clone(),
        stop_commands.clone(),
    ));

    // Let every subscribe be held, then report each minute.
    let start = Instant::now();
    let (mut all_puts, mut all_pushes) = (Vec::new(), Vec::new());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for minute in 1..=args.minutes {
        tokio::time::sleep_until((start + Duration::from_secs(60 * minute)).into()).await;
        let (mut puts, mut pushes) = (Tally::take(&tally.puts), Tally::take(&tally.pushes));
        puts.sort();
        pushes.sort();
        let held = held_subscribes(&control).await.unwrap_or(-1);
        let memory = ProcStatus::read(args.server_pid)?;
        println!(
            "fleet: minute {minute:>2}: server RSS {} KiB (heap {} KiB, files {} KiB), {held} held; {} PUTs p50 {:.1} ms p99 {:.1} ms; {} pushes p50 {:.1} ms p99 {:.1} ms; {} stream events; errors {}",
            memory.kib("VmRSS")?,
            memory.kib("RssAnon")?,
            memory.kib("RssFile")? + memory.kib("RssShmem")?,
            puts.len(),
            ms(percentile(&puts, 0.5)),
            ms(percentile(&puts, 0.99)),
            pushes.len(),
            ms(percentile(&pushes, 0.5)),
            ms(percentile(&pushes, 0.99)),
            tally.events.swap(0, Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
        );
        all_puts.extend(puts);
        all_pushes.extend(pushes);
    }
    stop_commands.cancel();
    let _ = commander.await;
    // The last commands' pushes get a moment to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    all_pushes.extend(Tally::take(&tally.pushes));
    let unpushed = pending.outstanding();
    let dropped = control
        .send(&Request::get("/api/events/stats"))
        .await
        .ok()
        .and_then(|r| r.json().ok())
        .and_then(|s| s["clients_dropped"].as_u64())
        .unwrap_or(0);
    for t in fleet.into_iter().chain(streams) {
        t.abort();
    }
    all_puts.sort();
    all_pushes.sort();
    let errors = tally.errors.load(Ordering::Relaxed) + unpushed as u64 + dropped;
    println!(
        "fleet: {} minutes: {} PUTs p50 {:.1} ms p99 {:.1} ms; {} commands, {} pushes p50 {:.1} ms p99 {:.1} ms; errors {errors} ({} requests failed, {unpushed} commands never pushed, {dropped} event streams cut off)",
        args.minutes,
        all_puts.len(),
        ms(percentile(&all_puts, 0.5)),
        ms(percentile(&all_puts, 0.99)),
        tally.commands.load(Ordering::Relaxed),
        all_pushes.len(),
        ms(percentile(&all_pushes, 0.5)),
        ms(percentile(&all_pushes, 0.99)),
        tally.errors.load(Ordering::Relaxed),
    );
    if let Some(first) = tally.first_error.lock().ok().and_then(|f| f.clone()) {
        println!("fleet: first error: {first}");
    }
    anyhow::ensure!(errors == 0, "{errors} errors");
    Ok(())
}

async fn held_subscribes(control: &Client) -> anyhow::Result<i64> {
    let stats = control.send(&Request::get("/api/stats")).await?.json()?;
    Ok(stats["subscriptions"]["total_subscriptions"].as_i64().unwrap_or(0))
}

struct Thermostat {
    i: usize,
    serial: String,
    client: Client,
    pool: Arc<PutPool>,
    tally: Arc<Tally>,
    pending: Arc<Pending>,
    stop: CancellationToken,
    put_every: Duration,
}

impl Thermostat {
    /// Uploads the state and takes the first answer (user and structure).
    async fn boot(&self, full: bool) -> anyhow::Result<Versions> {
        let mut versions = Versions::default();
        let up = self.pool.send(self.i, &boot_request(&self.serial, full)).await?;
        versions.note(&up);
        let mut conn = self.client.connect().await?;
        let r = conn.roundtrip(&versions.subscribe(&self.serial, false)).await?;
        anyhow::ensure!(r.status() == 200, "first subscribe of {} answered {}", self.serial, r.status());
        versions.note(&r.json()?);
        Ok(versions)
    }

    /// Holds a subscribe, PUTs on its timer and acknowledges pushes until stopped.
    async fn run(self, mut versions: Versions) {
        // Spread like a real fleet: a pseudo-random start within the first period.
        let spread = (self.i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1000;
        let mut next_put = Instant::now() + self.put_every.mul_f64(spread as f64 / 1000.0);
        let mut n = 0u64;
        while !self.stop.is_cancelled() {
            let mut conn = match self.client.connect().await {
                Ok(c) => c,
                Err(e) => {
                    self.tally.error(|| format!("{}: connecting: {e}", self.serial));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let opened = async {
                conn.send_request(&versions.subscribe(&self.serial, true)).await?;
                conn.read_head().await
            };
            match opened.await {
                Ok(head) if head.status == 200 => {}
                other => {
                    self.tally.error(|| format!("{}: subscribe: {:?}", self.serial, other.map(|h| h.status)));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let read = conn.next_chunk();
            tokio::pin!(read);
            let pushed = loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    chunk = &mut read => break chunk,
                    _ = tokio::time::sleep_until(next_put.into()) => {
                        n += 1;
                        let temperature = 18.0 + ((self.i as u64 + n) % 80) as f64 / 10.0;
                        let key = format!("device.{}", self.serial);
                        let base = versions.0.get(&key).map_or(0, |v| v.0);
                        let sent = Instant::now();
                        match self.pool.send(self.i, &put(&self.serial, &key, base, json!({"current_temperature": temperature}))).await {
                            Ok(r) => {
                                Tally::record(&self.tally.puts, sent.elapsed());
                                versions.note(&r);
                            }
                            Err(e) => self.tally.error(|| format!("{}: PUT: {e}", self.serial)),
                        }
                        let jitter = 0.9 + ((self.i as u64 + n).wrapping_mul(2_654_435_761) % 200) as f64 / 1000.0;
                        next_put += self.put_every.mul_f64(jitter);
                    }
                }
            };
            match pushed {
                Ok(Some(chunk)) => {
                    let latency = self.pending.take(self.i);
                    let Ok(doc) = serde_json::from_slice::<Value>(&chunk) else {
                        self.tally.error(|| format!("{}: a push that is not JSON", self.serial));
                        continue;
                    };
                    if let Some(d) = latency {
                        Tally::record(&self.tally.pushes, d);
                    }
                    // Apply and acknowledge, as the firmware does; then subscribe again.
                    if let Some(rev) = versions.note(&doc) {
                        let key = format!("shared.{}", self.serial);
                        match self
                            .pool
                            .send(self.i, &put(&self.serial, &key, rev, json!({"target_change_pending": false})))
                            .await
                        {
                            Ok(r) => {
                                versions.note(&r);
                            }
                            Err(e) => self.tally.error(|| format!("{}: acknowledging: {e}", self.serial)),
                        }
                    }
                }
                // The hold ended (its timeout): subscribe again.
                Ok(None) => {}
                Err(e) => self.tally.error(|| format!("{}: held subscribe: {e}", self.serial)),
            }
        }
    }
}

/// A steady rate of commands, each to a thermostat with none outstanding.
async fn commands(
    control: Client,
    per_second: f64,
    n: usize,
    pending: Arc<Pending>,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let every = Duration::from_secs_f64(1.0 / per_second.max(0.01));
    let mut tick = tokio::time::interval(every);
    let mut k = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        k += 1;
        let mut i = (k.wrapping_mul(0x9E37_79B9) % n as u64) as usize;
        while !pending.mark(i) {
            i = (i + 1) % n;
        }
        let target = 16.0 + (k % 60) as f64 / 10.0;
        match control.send(&command_request(&sim_serial(i + 1), target)).await {
            Ok(r) if r.status() == 200 => {
                tally.commands.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                pending.take(i);
                tally.error(|| format!("command: {:?}", other.map(|r| r.status())));
            }
        }
    }
}

/// One event-stream client: counts the events; its end before the stop is an error.
async fn event_stream(control: Client, tally: Arc<Tally>, stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        r = count_events(&control, &tally) => if let Err(e) = r { tally.error(|| format!("event stream: {e}")) },
    }
}

async fn count_events(control: &Client, tally: &Tally) -> anyhow::Result<()> {
    let mut conn = control.connect().await?;
    conn.send_request(&Request::get("/api/events")).await?;
    anyhow::ensure!(conn.read_head().await?.status == 200, "stream refused");
    while let Some(chunk) = conn.next_chunk().await? {
        let events = chunk.windows(5).filter(|w| w == b"data:").count();
        tally.events.fetch_add(events as u64, Ordering::Relaxed);
    }
    anyhow::bail!("the stream ended")
}
