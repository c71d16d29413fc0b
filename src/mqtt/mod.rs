//! MQTT: each thermostat published to a broker for Home Assistant (discovery, state topics,
//! availability) and for the raw-topic clients of the reference, and commands taken back
//! through the shared command module. The broker being down never slows the device port:
//! publishing runs off the request path, and what waits for the broker is one latest value
//! per topic.

mod commands;
pub mod topics;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use indexmap::IndexMap;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::domain::sync::delivery::Summary;
use crate::domain::time::now_s;
use crate::runtime::Stages;
use crate::state::{Change, Origin};
use crate::{AppState, Config};
use topics::{Naming, View};

/// The largest payload roost publishes. A bucket can outgrow any one message (merged PUTs of
/// up to 1 MiB each); a larger payload would make the client drop the connection, and every
/// reconnect would try it again.
const MAX_PAYLOAD: usize = 256 * 1024;

/// Where the broker is and what to publish.
#[derive(Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM certificates to trust for `mqtts://` instead of the system's CA bundle.
    pub ca_file: Option<std::path::PathBuf>,
    pub naming: Naming,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never logged.
        f.debug_struct("Settings").field("host", &self.host).field("port", &self.port).field("tls", &self.tls).finish()
    }
}

impl Settings {
    /// From `MQTT_HOST` (a host name, or `mqtt://` / `mqtts://` URL) and the other `MQTT_*`.
    pub fn from_config(c: &Config) -> Option<Self> {
        let text = c.mqtt_host.as_deref().filter(|h| !h.trim().is_empty())?;
        let Some(broker) = Broker::parse(text) else {
            tracing::error!(MQTT_HOST = %without_credentials(text), "MQTT_HOST is not a broker address (host, host:port or mqtt[s]://host[:port]); MQTT is off");
            return None;
        };
        // `MQTT_PORT` defaults to 1883; with `mqtts://` and no port anywhere, TLS's 8883 is meant.
        let port = broker.port.unwrap_or(if broker.tls && c.mqtt_port == 1883 { 8883 } else { c.mqtt_port });
        let username = c.mqtt_user.clone().filter(|u| !u.is_empty());
        let password = c.mqtt_password.clone().filter(|p| !p.is_empty());
        let (username, password) = if username.is_some() { (username, password) } else { broker.credentials };
        Some(Self {
            host: broker.host,
            port,
            tls: broker.tls,
            username,
            password,
            ca_file: c.mqtt_ca_file.clone(),
            naming: Naming {
                prefix: c.mqtt_topic_prefix.clone(),
                discovery: c.mqtt_discovery_prefix.clone(),
                publish_raw: true,
                ha_discovery: true,
                minimal: c.mqtt_minimal_discovery,
            },
        })
    }

    /// From an enabled `integrations` row written by `POST /api/mqtt-config`.
    /// From the configuration a client stored with `/api/mqtt-config` (JSON text).
    pub fn from_stored(config: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(config).ok()?;
        let broker = Broker::parse(v["brokerUrl"].as_str()?)?;
        let text = |k: &str, d: &str| v[k].as_str().unwrap_or(d).to_string();
        let username = v["username"].as_str().filter(|u| !u.is_empty()).map(String::from);
        let password = v["password"].as_str().filter(|p| !p.is_empty()).map(String::from);
        let (username, password) = if username.is_some() { (username, password) } else { broker.credentials };
        Some(Self {
            host: broker.host,
            port: broker.port.unwrap_or(if broker.tls { 8883 } else { 1883 }),
            tls: broker.tls,
            username,
            password,
            ca_file: None,
            naming: Naming {
                prefix: text("topicPrefix", "nolongerevil"),
                discovery: text("discoveryPrefix", "homeassistant"),
                publish_raw: v["publishRaw"].as_bool().unwrap_or(true),
                ha_discovery: v["homeAssistantDiscovery"].as_bool().unwrap_or(true),
                minimal: false,
            },
        })
    }
}

/// A broker address: `host`, `host:port`, `[v6]:port`, a bare IPv6 address, or a
/// `mqtt://` / `mqtts://` URL (optionally with `user:password@`).
#[derive(Debug, PartialEq)]
struct Broker {
    host: String,
    port: Option<u16>,
    tls: bool,
    credentials: (Option<String>, Option<String>),
}

/// A broker address as it may be logged: a `user:password@` in it becomes `***@`.
pub fn without_credentials(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..].find('/').map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}

/// Whether `text` is a broker address roost can connect to (checked at start-up).
pub fn is_broker_address(text: &str) -> bool {
    Broker::parse(text).is_some()
}

impl Broker {
    fn parse(text: &str) -> Option<Broker> {
        let text = text.trim();
        let (tls, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme.eq_ignore_ascii_case("mqtts"), rest),
            None => (false, text),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((user, password)) if !user.is_empty() => {
                (Some(user.to_string()), Some(password.to_string()).filter(|p| !p.is_empty()))
            }
            _ => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else if hostport.matches(':').count() == 1 {
            let (host, port) = hostport.split_once(':')?;
            (host, Some(port))
        } else {
            (hostport, None)
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
            None => None,
        };
        (!host.is_empty()).then(|| Broker { host: host.to_string(), port, tls, credentials })
    }
}

/// What `/api/stats` reports about MQTT.
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub enabled: bool,
    pub connected: bool,
    pub published: u64,
    pub commands: u64,
    pub rejected: u64,
    pub connects: u64,
    pub last_error: Option<String>,
    /// Messages waiting for the broker (the latest per topic).
    pub queued: usize,
}

impl Status {
    pub fn to_json(&self) -> Value {
        json!({
            "enabled": self.enabled, "connected": self.connected, "messages_published": self.published,
            "commands_received": self.commands, "commands_rejected": self.rejected, "connections": self.connects,
            "last_error": self.last_error,
        })
    }
}

pub type SharedStatus = Arc<Mutex<Status>>;

fn update(status: &SharedStatus, f: impl FnOnce(&mut Status)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

enum Link {
    Up,
    Down(String),
}

/// Starts the MQTT bridge; the task ends when it has stopped (at `stop`). The bridge is
/// announced offline only when roost itself stops, not when another node takes it over.
pub fn spawn(state: web::Data<AppState>, settings: Settings, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    update(&state.mqtt, |s| s.enabled = true);
    tracing::info!(host = %settings.host, port = settings.port, tls = settings.tls, prefix = %settings.naming.prefix, "MQTT enabled");
    // Unique per bridge started: nodes sharing a broker, or a bridge started again after a
    // takeover, must not disconnect one another.
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let client_id = format!("roost-{}-{}", std::process::id(), STARTED.fetch_add(1, Ordering::Relaxed));
    let mut options = MqttOptions::new(client_id, settings.host.clone(), settings.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    options.set_last_will(LastWill::new(settings.naming.bridge_availability(), "offline", QoS::AtLeastOnce, true));
    if let (Some(user), password) = (&settings.username, &settings.password) {
        options.set_credentials(user.clone(), password.clone().unwrap_or_default());
    }
    if settings.tls {
        options
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls_config(settings.ca_file.as_deref())))));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let (link_tx, mut link_rx) = mpsc::channel::<Link>(16);
    // Cleared the moment the connection fails, before the publisher hears of it, so nothing
    // more is handed to the client for a connection that is gone.
    let link_up = Arc::new(AtomicBool::new(false));
    let (command_tx, command_rx) = mpsc::channel::<(String, String)>(256);
    let shutdown = stop.clone();

    // The connection: rumqttc reconnects on the next poll after an error; the backoff is ours.
    let connection = tokio::spawn({
        let shutdown = shutdown.clone();
        let link_up = link_up.clone();
        async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let event = tokio::select! {
                    e = eventloop.poll() => e,
                    _ = shutdown.cancelled() => {
                        // Let the last will's counterpart (`offline`) and the disconnect go out.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async { while eventloop.poll().await.is_ok() {} }).await;
                        break;
                    }
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(500);
                        link_up.store(true, Ordering::SeqCst);
                        let _ = link_tx.send(Link::Up).await;
                    }
                    // A retained command is an old one the broker replays on every (re)subscribe;
                    // applying it would undo whatever changed since. Live messages never carry
                    // the retain flag.
                    Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                        tracing::info!(topic = %p.topic, "retained MQTT command ignored; commands must not be retained");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload = String::from_utf8_lossy(&p.payload).to_string();
                        if command_tx.try_send((p.topic.clone(), payload)).is_err() {
                            tracing::warn!(topic = %p.topic, "MQTT command queue full; command dropped");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        link_up.store(false, Ordering::SeqCst);
                        let _ = link_tx.send(Link::Down(e.to_string())).await;
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    });
    tokio::spawn(run_commands(state.clone(), settings.naming.prefix.clone(), command_rx));

    let feed = state.store.hub().feed();
    let (runtime_tx, mut runtime_rx) = mpsc::channel(256);
    tokio::spawn(run_runtime(state.clone(), runtime_tx, stop.clone()));
    tokio::spawn(async move {
        let mut publisher = Publisher::new(settings.naming.clone(), state.clone(), link_up);
        publisher.run(&client, feed, &mut link_rx, &mut runtime_rx, &stop).await;
        if state.shutdown.is_cancelled() {
            let _ = client.try_publish(settings.naming.bridge_availability(), QoS::AtLeastOnce, true, "offline");
        }
        let _ = client.try_disconnect();
        let _ = connection.await;
    })
}

/// Trust for `mqtts://`: the system's CA bundle.
/// Trust for `mqtts://`: `MQTT_CA_FILE` when set (a broker with its own CA), else the system's
/// CA bundle.
fn tls_config(ca_file: Option<&std::path::Path>) -> rustls::ClientConfig {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
    let bundles: Vec<&std::path::Path> = match ca_file {
        Some(file) => vec![file],
        None => system.iter().map(std::path::Path::new).collect(),
    };
    for bundle in bundles {
        if let Ok(certs) = CertificateDer::pem_file_iter(bundle) {
            for cert in certs.flatten() {
                let _ = roots.add(cert);
            }
            break;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots.clone()).with_no_client_auth())
        .unwrap_or_else(|_| rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// How long a lone range bound waits for its partner. Home Assistant publishes the two bounds
/// of one `set_temperature` back to back, milliseconds apart.
const PAIR_WINDOW: Duration = Duration::from_millis(1000);

async fn run_commands(state: web::Data<AppState>, prefix: String, mut rx: mpsc::Receiver<(String, String)>) {
    // A lone low or high, waiting for its partner: (topic, payload, serial, value).
    let mut held: Option<(String, String, String, Value)> = None;
    loop {
        let message = match held {
            Some(_) => match tokio::time::timeout(PAIR_WINDOW, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    // No partner came: the bound alone, checked against the stored other one.
                    if let Some((topic, payload, serial, value)) = held.take() {
                        run_command(&state, &topic, &payload, Ok((serial, "set_temperature", value))).await;
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some((topic, payload)) = message else {
            if let Some((topic, payload, serial, value)) = held.take() {
                run_command(&state, &topic, &payload, Ok((serial, "set_temperature", value))).await;
            }
            break;
        };
        update(&state.mqtt, |s| s.commands += 1);
        let parsed = commands::parse(&prefix, &topic, &payload);
        let bound = parsed.as_ref().ok().and_then(|(_, name, value)| commands::lone_bound(name, value));
        match (held.take(), parsed) {
            (Some((_, _, held_serial, held_value)), Ok((serial, _, value)))
                if serial == held_serial
                    && bound.is_some_and(|b| !held_value.as_object().is_some_and(|h| h.contains_key(b))) =>
            {
                // The partner: both bounds in one command, valid in any order and direction.
                let mut range = held_value.as_object().cloned().unwrap_or_default();
                range.extend(value.as_object().cloned().unwrap_or_default());
                run_command(&state, &topic, &payload, Ok((serial, "set_temperature", Value::Object(range)))).await;
            }
            (earlier, parsed) => {
                if let Some((t, p, serial, value)) = earlier {
                    run_command(&state, &t, &p, Ok((serial, "set_temperature", value))).await;
                }
                match parsed {
                    Ok((serial, _, value)) if bound.is_some() => held = Some((topic, payload, serial, value)),
                    parsed => run_command(&state, &topic, &payload, parsed).await,
                }
            }
        }
    }
}

async fn run_command(state: &AppState, topic: &str, payload: &str, parsed: commands::Parsed) {
    let outcome = match parsed {
        // Emergency heat switched off goes back to heat, and only from emergency heat.
        Ok((serial, "set_mode", value))
            if topic.ends_with("/ha/emergency_heat/set") && value == "heat" && !in_emergency(state, &serial) =>
        {
            tracing::debug!(%serial, "emergency heat is not on; nothing to switch off");
            Ok(())
        }
        Ok((serial, name, value)) => {
            let done = crate::commands::execute(state, &serial, name, &value).await.map_err(|e| e.to_string());
            match (done, value.get("fan_timer_duration_minutes").and_then(serde_json::Value::as_i64)) {
                // A new fan duration from Home Assistant also restarts a running fan timer.
                (Ok(done), Some(minutes)) if fan_running(state, &done.serial) => {
                    let seconds = json!((minutes * 60).clamp(60, 43_200));
                    crate::commands::execute(state, &done.serial, "set_fan", &seconds)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                (done, _) => done.map(|_| ()),
            }
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => tracing::info!(%topic, "MQTT command applied"),
        Err(reason) => {
            update(&state.mqtt, |s| s.rejected += 1);
            // A bad payload is logged and ignored; the next message is handled as usual.
            tracing::warn!(%topic, payload = %payload.chars().take(100).collect::<String>(), %reason, "MQTT command ignored");
        }
    }
}

fn in_emergency(state: &AppState, serial: &str) -> bool {
    let serial = crate::domain::serial::sanitize(serial).unwrap_or_default();
    state
        .store
        .get(&serial, &format!("shared.{serial}"))
        .is_some_and(|b| b.value.get("target_temperature_type").and_then(Value::as_str) == Some("emergency"))
}

fn fan_running(state: &AppState, serial: &str) -> bool {
    state
        .store
        .get(serial, &format!("device.{serial}"))
        .and_then(|b| b.value.get("fan_timer_timeout").and_then(Value::as_i64))
        .is_some_and(|t| t > now_s())
}

/// Runtime per stage over the last 24 hours for every thermostat: every minute, and right after
/// a change of a thermostat's shared bucket (where the HVAC stages are).
async fn run_runtime(state: web::Data<AppState>, tx: mpsc::Sender<(String, Stages)>, stop: CancellationToken) {
    let mut feed = state.store.hub().feed();
    let mut minute = tokio::time::interval(Duration::from_secs(60));
    loop {
        let serials = tokio::select! {
            _ = stop.cancelled() => return,
            _ = minute.tick() => state.store.serials(),
            c = feed.recv() => match c {
                Ok(change) if change.buckets.iter().any(|(k, _)| k.starts_with("shared.")) => vec![change.serial.clone()],
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        for serial in serials {
            match crate::runtime::last_day(&state.store, &serial).await {
                Ok(stages) => {
                    if tx.send((serial, stages)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::debug!(%serial, error = %e, "runtime not computed"),
            }
        }
    }
}

/// How long after a re-sent discovery config a thermostat's state is sent once more.
const RESETTLE: Duration = Duration::from_secs(2);

/// Decides what to publish and holds what is waiting for the broker.
struct Publisher {
    naming: Naming,
    state: web::Data<AppState>,
    /// What the broker holds (retained), per topic; an empty payload is a cleared topic.
    published: HashMap<String, String>,
    /// Waiting to go out; latest value per topic wins.
    pending: IndexMap<String, (String, QoS)>,
    signatures: HashMap<String, String>,
    /// Runtime per stage over the last 24 hours, per serial.
    runtime: HashMap<String, Stages>,
    /// Topics whose payload was too large, warned about once.
    oversized: HashSet<String>,
    /// Thermostats whose discovery config was re-sent, and when their state goes out once more.
    resettle: HashMap<String, tokio::time::Instant>,
    connected: bool,
    link_up: Arc<AtomicBool>,
    /// The queue length last written to the shared status.
    reported_queue: usize,
}

impl Publisher {
    fn new(naming: Naming, state: web::Data<AppState>, link_up: Arc<AtomicBool>) -> Self {
        Self {
            naming,
            state,
            published: HashMap::new(),
            pending: IndexMap::new(),
            signatures: HashMap::new(),
            runtime: HashMap::new(),
            oversized: HashSet::new(),
            resettle: HashMap::new(),
            connected: false,
            link_up,
            reported_queue: 0,
        }
    }

    async fn run(
        &mut self,
        client: &AsyncClient,
        mut feed: broadcast::Receiver<Arc<Change>>,
        link: &mut mpsc::Receiver<Link>,
        runtime: &mut mpsc::Receiver<(String, Stages)>,
        shutdown: &CancellationToken,
    ) {
        let mut retry = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                l = link.recv() => match l {
                    Some(Link::Up) => self.connected(client).await,
                    Some(Link::Down(e)) => {
                        if self.connected {
                            tracing::warn!(error = %e, "MQTT broker connection lost; retrying with backoff");
                        }
                        self.connected = false;
                        update(&self.state.mqtt, |s| { s.connected = false; s.last_error = Some(e); });
                    }
                    None => return,
                },
                c = feed.recv() => match c {
                    Ok(change) => self.on_change(&change),
                    // Fell behind the change feed: republish everything (latest values win).
                    Err(broadcast::error::RecvError::Lagged(_)) => self.queue_everything(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some((serial, stages)) = runtime.recv() => {
                    if self.runtime.insert(serial.clone(), stages) != Some(stages) {
                        self.announce(&serial);
                    }
                }
                _ = retry.tick() => self.resettled(),
            }
            self.flush(client);
        }
    }

    async fn connected(&mut self, client: &AsyncClient) {
        self.connected = true;
        update(&self.state.mqtt, |s| {
            s.connected = true;
            s.connects += 1;
        });
        tracing::info!("MQTT connected; subscribing and announcing every thermostat");
        if let Err(e) = client.subscribe(format!("{}/+/+/+/set", self.naming.prefix), QoS::AtLeastOnce).await {
            tracing::warn!(error = %e, "MQTT subscribe failed");
        }
        self.queue_everything();
    }

    /// After every (re)connect: the broker may have lost its retained messages.
    fn queue_everything(&mut self) {
        self.published.clear();
        self.signatures.clear();
        self.queue(self.naming.bridge_availability(), "online".into(), QoS::AtLeastOnce);
        let serials = self.state.store.serials();
        for serial in serials {
            self.announce(&serial);
        }
    }

    /// Thermostats whose config went out [`RESETTLE`] ago get their state once more.
    fn resettled(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self.resettle.iter().filter(|(_, at)| **at <= now).map(|(s, _)| s.clone()).collect();
        for serial in due {
            self.resettle.remove(&serial);
            self.publish_state(&serial, true);
        }
    }

    /// Everything for one thermostat: discovery (when it changed), availability, raw and HA state.
    fn announce(&mut self, serial: &str) {
        self.publish_state(serial, false);
    }

    /// [`Self::announce`]; with `force`, every state topic goes out even if the broker holds it.
    fn publish_state(&mut self, serial: &str, force: bool) {
        let buckets = self.state.store.snapshot(serial);
        let structure_key = self.state.structure_key(serial);
        let device = buckets.get(&format!("device.{serial}"));
        let shared = buckets.get(&format!("shared.{serial}"));
        let structure = buckets.get(&structure_key);
        let view = View {
            device: device.map(|b| &b.value),
            shared: shared.map(|b| &b.value),
            structure: structure.map(|b| &b.value),
            asked: self.state.presets.asked(&structure_key),
            runtime: self.runtime.get(serial).copied(),
            now_s: now_s(),
        };
        let mut messages = Vec::new();
        let signature = view.discovery_signature(serial);
        let first = !self.signatures.contains_key(serial);
        let mut rediscovered = false;
        if view.device.is_some() && view.shared.is_some() && self.signatures.get(serial) != Some(&signature) {
            messages.extend(topics::discovery(&self.naming, serial, view).into_iter().map(|m| (m, QoS::AtLeastOnce)));
            rediscovered = self.signatures.insert(serial.to_string(), signature).is_some();
        }
        if first || rediscovered {
            let online = if self.state.availability.is_available(serial) { "online" } else { "offline" };
            messages.push(((self.naming.availability(serial), online.into()), QoS::AtLeastOnce));
        }
        for (kind, bucket) in [("device", device), ("shared", shared)] {
            if let Some(b) = bucket {
                let raw = topics::raw_topics(&self.naming, serial, kind, &b.value, view);
                messages.extend(raw.into_iter().map(|m| (m, QoS::AtMostOnce)));
            }
        }
        messages.extend(topics::ha_state(&self.naming, serial, view).into_iter().map(|m| (m, QoS::AtMostOnce)));
        if self.naming.ha_discovery && view.device.is_some() && view.shared.is_some() {
            let store = &self.state.store;
            let pending = Summary::of(&store.pending(serial), &store.settings().expiry).to_json();
            let attributes = json!({ "pending": pending }).to_string();
            messages.push(((self.naming.ha(serial, "attributes"), attributes), QoS::AtMostOnce));
        }
        if rediscovered {
            // Home Assistant applies a re-sent config in a task of its own, resetting the
            // entity (the preset to none, setpoints to defaults) without getting the retained
            // state again; state sent right after the config can be applied before that reset.
            // So the state goes out right after the config and once more when it has settled.
            self.resettle.insert(serial.to_string(), tokio::time::Instant::now() + RESETTLE);
        }
        for ((topic, payload), qos) in messages {
            if rediscovered || force {
                self.published.remove(&topic);
                self.pending.shift_remove(&topic);
            }
            self.queue(topic, payload, qos);
        }
    }

    fn on_change(&mut self, change: &Change) {
        let serial = change.serial.as_str();
        if change.deleted {
            self.clear(serial);
            return;
        }
        if let Some(event) = change.event.as_ref().filter(|e| e.kind == "availability") {
            let online = event.detail["online"].as_bool().unwrap_or(false);
            self.queue(
                self.naming.availability(serial),
                if online { "online" } else { "offline" }.into(),
                QoS::AtLeastOnce,
            );
        }
        let relevant = change
            .buckets
            .iter()
            .any(|(k, _)| k.starts_with("device.") || k.starts_with("shared.") || k.starts_with("structure."));
        if (relevant || !change.pending.is_empty()) && change.origin != Origin::Notify {
            self.announce(serial);
        }
    }

    /// A deleted device: empty retained payloads remove its entities and state from the broker.
    /// Topics still waiting to go out are cleared too: the broker may hold them from before.
    fn clear(&mut self, serial: &str) {
        let owned = |t: &&String| self.naming.owns(serial, t);
        let mut topics: Vec<String> = self.published.keys().filter(owned).cloned().collect();
        topics.extend(self.pending.keys().filter(owned).cloned());
        topics.extend(topics::discovery_topics(&self.naming, serial));
        topics.push(self.naming.availability(serial));
        for topic in topics {
            self.queue(topic, String::new(), QoS::AtLeastOnce);
        }
        self.signatures.remove(serial);
        self.resettle.remove(serial);
    }

    /// Queues a retained message unless the broker already holds exactly this payload.
    fn queue(&mut self, topic: String, mut payload: String, qos: QoS) {
        if !topics::valid_topic(&topic) {
            tracing::debug!(%topic, "not a valid MQTT topic; not published");
            return;
        }
        if payload.len() > MAX_PAYLOAD {
            if self.oversized.insert(topic.clone()) {
                tracing::warn!(%topic, bytes = payload.len(), limit = MAX_PAYLOAD, "MQTT payload too large; topic cleared instead");
            }
            // What the broker holds for it is stale: clear it.
            payload = String::new();
        }
        if self.published.get(&topic) == Some(&payload) {
            self.pending.shift_remove(&topic);
            return;
        }
        self.pending.insert(topic, (payload, qos));
    }

    fn flush(&mut self, client: &AsyncClient) {
        let sent = if self.connected && self.link_up.load(Ordering::SeqCst) { self.send_pending(client) } else { 0 };
        let queued = self.pending.len();
        if sent > 0 || queued != self.reported_queue {
            self.reported_queue = queued;
            update(&self.state.mqtt, |s| {
                s.published += sent;
                s.queued = queued;
            });
        }
    }

    /// Hands waiting messages to the client until its queue is full; returns how many.
    fn send_pending(&mut self, client: &AsyncClient) -> u64 {
        let mut sent = 0;
        while let Some((topic, (payload, qos))) = self.pending.shift_remove_index(0) {
            match client.try_publish(topic.clone(), qos, true, payload.clone().into_bytes()) {
                Ok(()) => {
                    sent += 1;
                    self.published.insert(topic, payload);
                }
                Err(_) => {
                    // The client's queue is full: keep it for the next round.
                    self.pending.shift_insert(0, topic, (payload, qos));
                    break;
                }
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(host: &str, port: Option<u16>, tls: bool) -> Option<Broker> {
        Some(Broker { host: host.into(), port, tls, credentials: (None, None) })
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(Broker::parse("mqtt.local"), broker("mqtt.local", None, false));
        assert_eq!(Broker::parse(" 10.0.0.5:1884 "), broker("10.0.0.5", Some(1884), false));
        assert_eq!(Broker::parse("mqtt://broker:1883/"), broker("broker", Some(1883), false));
        assert_eq!(Broker::parse("mqtts://broker"), broker("broker", None, true));
        assert_eq!(Broker::parse("MQTTS://broker:8884"), broker("broker", Some(8884), true));
        assert_eq!(Broker::parse("::1"), broker("::1", None, false));
        assert_eq!(Broker::parse("mqtt://[fd00::2]:1885"), broker("fd00::2", Some(1885), false));
        assert_eq!(
            Broker::parse("mqtts://ha:pa:ss@broker:8883"),
            Some(Broker {
                host: "broker".into(),
                port: Some(8883),
                tls: true,
                credentials: (Some("ha".into()), Some("pa:ss".into()))
            })
        );
        for bad in ["", "mqtt://", "broker:port", "broker:0", "broker:70000", "[::1"] {
            assert_eq!(Broker::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn logged_broker_addresses_leave_credentials_out() {
        assert_eq!(without_credentials("mqtt://ha:s3cret@broker:x/y@z"), "mqtt://***@broker:x/y@z");
        assert_eq!(without_credentials("ha:s3cret@broker:99999"), "***@broker:99999");
        assert_eq!(without_credentials("mqtt://broker:x"), "mqtt://broker:x");
    }

    #[test]
    fn settings_from_the_environment() {
        let settings = |args: &[&str]| {
            let config = crate::config::from_args(args).unwrap();
            Settings::from_config(&config).map(|s| (s.host, s.port, s.tls, s.username, s.password))
        };
        assert!(settings(&[]).is_none());
        assert!(settings(&["--mqtt-host= "]).is_none());
        assert_eq!(settings(&["--mqtt-host=broker"]), Some(("broker".into(), 1883, false, None, None)));
        assert_eq!(settings(&["--mqtt-host=broker", "--mqtt-port=1999"]).unwrap().1, 1999);
        assert_eq!(settings(&["--mqtt-host=mqtts://broker"]).unwrap().1, 8883);
        assert_eq!(settings(&["--mqtt-host=mqtts://broker", "--mqtt-port=9883"]).unwrap().1, 9883);
        assert_eq!(settings(&["--mqtt-host=mqtts://broker:8000", "--mqtt-port=9883"]).unwrap().1, 8000);
        assert_eq!(
            settings(&["--mqtt-host=broker", "--mqtt-user=u", "--mqtt-password=p"]),
            Some(("broker".into(), 1883, false, Some("u".into()), Some("p".into())))
        );
        let debug = format!(
            "{:?}",
            Settings::from_config(&crate::config::from_args(["--mqtt-host=b", "--mqtt-password=hunter2"]).unwrap())
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
