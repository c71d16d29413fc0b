//! Real MQTT brokers for the MQTT tests: rumqttd in-process (always), Mosquitto when its binary
//! is installed; a recording client subscribed to `#`; and a TCP proxy that can be dropped and
//! restarted on the same port to take the broker away from roost and give it back.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that must happen before it gives up (a hang guard,
/// not a performance limit: reconnects back off for up to a few seconds).
pub const LIMIT: Duration = Duration::from_secs(30);

static CLIENTS: AtomicU64 = AtomicU64::new(0);

/// A port nothing listens on right now, for a broker or proxy that binds it later (or binds
/// it again after a stop). It comes from below the kernel's ephemeral range, so the port-0
/// binds of roost instances in concurrent tests cannot take it in the meantime, and it is never
/// handed out twice in this process.
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut it = r.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    // Below the ephemeral range when there is room, else above it.
    let (start, end) = if low > 12_000 { (10_000, low) } else { (high + 1, 65_536) };
    let mut next = NEXT.lock().unwrap();
    // Concurrent test processes start at different places.
    let seed =
        std::process::id() ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut candidate = next.unwrap_or(start + seed % (end - start));
    for _ in start..end {
        if candidate >= end {
            candidate = start;
        }
        let port = candidate as u16;
        candidate += 1;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(candidate);
            return port;
        }
    }
    panic!("no free port between {start} and {end}");
}

/// Waits until something accepts TCP connections on `port` (a broker started by another
/// thread or process gives no other signal on every platform).
async fn until_listening(port: u16) {
    let wait = async {
        let mut delay = Duration::from_millis(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    };
    tokio::time::timeout(LIMIT, wait).await.unwrap_or_else(|_| panic!("no broker listening on port {port}"));
}

// ---------------------------------------------------------------------------------------------
// Brokers

pub struct Broker {
    pub name: &'static str,
    pub port: u16,
    mosquitto: Option<Mosquitto>,
}

struct Mosquitto {
    binary: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// rumqttd, in this process, on a free port. `auth`: the only user allowed to connect.
    pub async fn rumqttd(auth: Option<(&str, &str)>) -> Broker {
        let port = free_port();
        let auth = auth.map(|(user, password)| serde_json::json!({ user: password }));
        let config = serde_json::json!({
            "id": 0,
            "router": {
                "max_connections": 100,
                "max_outgoing_packet_count": 1000,
                "max_segment_size": 104_857_600,
                "max_segment_count": 10,
            },
            "v4": {
                "1": {
                    "name": "v4-1",
                    "listen": format!("127.0.0.1:{port}"),
                    "next_connection_delay_ms": 0,
                    "connections": {
                        "connection_timeout_ms": 60_000,
                        "max_payload_size": 4 * 1024 * 1024,
                        "max_inflight_count": 500,
                        "dynamic_filters": true,
                        "auth": auth,
                    },
                },
            },
        });
        let config: rumqttd::Config = serde_json::from_value(config).expect("rumqttd config");
        std::thread::Builder::new()
            .name(format!("rumqttd-{port}"))
            .spawn(move || {
                // rumqttd cannot be stopped: the broker lives until the test process ends.
                if let Err(e) = rumqttd::Broker::new(config).start() {
                    eprintln!("rumqttd on port {port} stopped: {e}");
                }
            })
            .expect("rumqttd thread");
        until_listening(port).await;
        Broker { name: "rumqttd", port, mosquitto: None }
    }

    /// Mosquitto on a free port with a temporary configuration, when its binary is installed.
    pub async fn mosquitto() -> Option<Broker> {
        Self::mosquitto_with(|_| String::new()).await
    }

    /// Mosquitto with extra configuration (written with the broker's temporary directory).
    pub async fn mosquitto_with(extra: impl FnOnce(&std::path::Path) -> String) -> Option<Broker> {
        let Some(binary) = find_mosquitto() else {
            println!("note: mosquitto is not installed (not on PATH); the Mosquitto variant of this test is skipped");
            return None;
        };
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlistener {port} 127.0.0.1\n{}",
            extra(dir.path())
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("mosquitto.conf");
        let mut broker = Broker { name: "mosquitto", port, mosquitto: Some(Mosquitto { binary, dir, child: None }) };
        broker.start_mosquitto().await;
        Some(broker)
    }

    async fn start_mosquitto(&mut self) {
        let port = self.port;
        let m = self.mosquitto.as_mut().expect("a Mosquitto broker");
        let mut child = Command::new(&m.binary)
            .arg("-c")
            .arg(m.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto starts");
        // Mosquitto says "... running" once its listener is open.
        let stderr = child.stderr.take().expect("mosquitto stderr");
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var("TEST_LOG").is_ok() {
                    eprintln!("mosquitto[{port}]: {line}");
                }
                if line.contains(" running") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        m.child = Some(child);
        tokio::time::timeout(LIMIT, ready_rx)
            .await
            .expect("mosquitto reports it is running")
            .expect("mosquitto exited before it was running");
        until_listening(port).await;
    }

    /// Stops Mosquitto (everything it held, retained messages included, is gone).
    pub fn stop_mosquitto(&mut self) {
        if let Some(mut child) = self.mosquitto.as_mut().and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Mosquitto again on the same port, empty.
    pub async fn restart_mosquitto(&mut self) {
        self.stop_mosquitto();
        self.start_mosquitto().await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_mosquitto();
    }
}

fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian installs the broker in /usr/sbin, which is not on every user's PATH.
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy between roost and the broker

/// Forwards 127.0.0.1:`port` to the broker. `stop` closes the listener and every forwarded
/// connection (roost sees its broker vanish); `start` listens on the same port again.
pub struct Proxy {
    pub port: u16,
    target: u16,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Proxy {
    /// A proxy for `target`, not yet listening.
    pub fn new(target: u16) -> Proxy {
        Proxy { port: free_port(), target, running: None }
    }

    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "the proxy is already running");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("proxy binds its port again");
        let stop = CancellationToken::new();
        let target = self.target;
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut connections = JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            connections.spawn(async move {
                                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                        }
                    }
                }
                drop(listener);
                // Every forwarded connection is closed before `stop` returns.
                connections.shutdown().await;
            }
        });
        self.running = Some((stop, task));
    }

    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = task.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A recording client

/// Every message the recorder received, in order, and the latest payload per topic.
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub messages: Vec<(String, String)>,
    pub latest: HashMap<String, String>,
    pub subacks: u64,
    /// Connection errors (the broker away, a refused login), for failure messages.
    pub errors: Vec<String>,
}

impl Log {
    /// The latest payload of a topic; an empty payload (a cleared retained topic) is `Some("")`.
    pub fn latest(&self, topic: &str) -> Option<&str> {
        self.latest.get(topic).map(String::as_str)
    }

    /// The latest payload as JSON.
    pub fn json(&self, topic: &str) -> Option<Value> {
        self.latest(topic).filter(|p| !p.is_empty()).and_then(|p| serde_json::from_str(p).ok())
    }

    pub fn count(&self, topic: &str) -> usize {
        self.messages.iter().filter(|(t, _)| t == topic).count()
    }

    /// Whether `topic` was received with `payload` at or after message number `from`.
    pub fn seen_since(&self, from: usize, topic: &str, payload: &str) -> bool {
        self.messages.iter().skip(from).any(|(t, p)| t == topic && p == payload)
    }

    /// Topics whose latest payload is not empty (what a client subscribing now would get).
    pub fn live_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> =
            self.latest.iter().filter(|(_, p)| !p.is_empty()).map(|(t, _)| t.as_str()).collect();
        topics.sort_unstable();
        topics
    }

    fn tail(&self) -> String {
        let start = self.messages.len().saturating_sub(40);
        let messages: String =
            self.messages[start..].iter().map(|(t, p)| format!("  {t} = {}\n", shorten(p))).collect();
        let errors = self.errors.len();
        let last_errors = &self.errors[errors.saturating_sub(3)..];
        format!("{messages}connection errors: {errors}, the last: {last_errors:?}")
    }
}

fn shorten(p: &str) -> String {
    if p.chars().count() > 120 { format!("{}…", p.chars().take(120).collect::<String>()) } else { p.to_string() }
}

/// A client subscribed to `#` (again after every reconnect) that records what it receives.
pub struct Recorder {
    pub client: AsyncClient,
    log: Arc<Mutex<Log>>,
    version: watch::Sender<u64>,
    task: JoinHandle<()>,
    barriers: AtomicU64,
}

impl Recorder {
    /// Connects and returns once the subscription to `#` is acknowledged (retained messages
    /// follow; use [`Recorder::barrier`] to know they have all arrived).
    pub async fn connect(port: u16, credentials: Option<(&str, &str)>) -> Recorder {
        let id = format!("roost-test-{}-{}", std::process::id(), CLIENTS.fetch_add(1, Ordering::Relaxed));
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let log = Arc::new(Mutex::new(Log::default()));
        let (version, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let (client, log, version) = (client.clone(), log.clone(), version.clone());
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe("#", QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            log.lock().unwrap().subacks += 1;
                            version.send_modify(|v| *v += 1);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let payload = String::from_utf8_lossy(&p.payload).to_string();
                            {
                                let mut log = log.lock().unwrap();
                                log.latest.insert(p.topic.clone(), payload.clone());
                                log.messages.push((p.topic.clone(), payload));
                            }
                            version.send_modify(|v| *v += 1);
                        }
                        Ok(_) => {}
                        // The broker is away (a restart test): rumqttc reconnects on the next poll.
                        Err(e) => {
                            log.lock().unwrap().errors.push(e.to_string());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
        let recorder = Recorder { client, log, version, task, barriers: AtomicU64::new(0) };
        recorder.wait_for("the subscription to #", |l| l.subacks > 0).await;
        recorder
    }

    pub fn log(&self) -> Log {
        self.log.lock().unwrap().clone()
    }

    /// Messages received so far (a position for [`Log::seen_since`]).
    pub fn position(&self) -> usize {
        self.log.lock().unwrap().messages.len()
    }

    /// Waits until `cond` holds for what was received; panics with the last messages if it
    /// does not within [`LIMIT`].
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Log) -> bool) -> Log {
        let mut rx = self.version.subscribe();
        let wait = async {
            loop {
                {
                    let log = self.log.lock().unwrap();
                    if cond(&log) {
                        return log.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    return self.log();
                }
            }
        };
        match tokio::time::timeout(LIMIT, wait).await {
            Ok(log) => log,
            Err(_) => panic!("MQTT: did not see {what} within {LIMIT:?}; last messages:\n{}", self.log().tail()),
        }
    }

    /// Waits until `topic` holds `payload`.
    pub async fn wait_payload(&self, topic: &str, payload: &str) -> Log {
        self.wait_for(&format!("{topic} = {payload}"), |l| l.latest(topic) == Some(payload)).await
    }

    /// Publishes (QoS 1, not retained); returns once the message is queued for the broker.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.expect("publish");
    }

    /// Publishes a message to itself and waits for it: everything the broker had queued for
    /// this client before (retained messages after subscribing included) has arrived.
    pub async fn barrier(&self) -> Log {
        let n = self.barriers.fetch_add(1, Ordering::Relaxed).to_string();
        let topic = format!("roost-test/barrier/{}", self.task.id());
        self.publish(&topic, n.clone()).await;
        let since = 0;
        self.wait_for("the barrier", |l| l.seen_since(since, &topic, &n)).await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
