//! One simulated thermostat.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::http::{Client, Conn, Head, Request};

pub type Fields = Map<String, Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct SimBucket {
    pub revision: i64,
    pub timestamp: i64,
    pub value: Fields,
}

/// What the thermostat holds and what it has seen, for tests to inspect.
#[derive(Debug, Default, Clone)]
pub struct ThermostatState {
    pub buckets: BTreeMap<String, SimBucket>,
    /// Every chunk received on a subscribe, as the list of object keys it carried.
    pub chunks: Vec<Vec<String>>,
    /// Subscribes completed (each ended by the server).
    pub subscribes: u64,
    pub last_error: Option<String>,
    /// The server's `X-nl-defer-device-window`: how long local changes wait before a PUT.
    pub defer_window: Duration,
    /// Until when `X-nl-disable-defer-window` asks for changes to go out at once.
    pub defer_disabled_until: Option<tokio::time::Instant>,
    /// Keys the server answered with the empty revision-0 object ("I have nothing"): not listed
    /// again until the server sends data for them, or every subscribe is answered at once.
    pub server_lacks: BTreeSet<String>,
}

impl ThermostatState {
    pub fn field(&self, key: &str, field: &str) -> Option<&Value> {
        self.buckets.get(key)?.value.get(field)
    }
}

/// A simulated thermostat. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Thermostat {
    pub serial: String,
    password: String,
    client: Client,
    transport: String,
    state: Arc<Mutex<ThermostatState>>,
    version: Arc<watch::Sender<u64>>,
    /// PUT with `base_object_revision: 0`, as some clients do (the revision is informational).
    base_revision_zero: bool,
}

fn lock(state: &Mutex<ThermostatState>) -> std::sync::MutexGuard<'_, ThermostatState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Thermostat {
    pub fn new(client: Client, serial: &str) -> Self {
        let (version, _) = watch::channel(0);
        Self {
            serial: serial.to_string(),
            password: format!("pw-{}", serial.to_ascii_lowercase()),
            client,
            transport: "/nest/transport".into(),
            state: Arc::new(Mutex::new(ThermostatState::default())),
            version: Arc::new(version),
            base_revision_zero: false,
        }
    }

    /// This thermostat sends `base_object_revision: 0` on every PUT.
    pub fn with_base_revision_zero(mut self) -> Self {
        self.base_revision_zero = true;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same thermostat (sharing its state) reaching the server through `client`: another
    /// node behind a load balancer.
    pub fn via(&self, client: Client) -> Self {
        Self { client, ..self.clone() }
    }

    /// The Basic-auth user production firmware sends: `d.<serial>.<suffix>`.
    pub fn authed(&self, req: Request) -> Request {
        req.basic_auth(&format!("d.{}.5a1e", self.serial), &self.password).header("X-nl-protocol-version", "1")
    }

    fn session(&self) -> String {
        format!("18b430aabbcc{}", self.serial)
    }

    pub fn state(&self) -> ThermostatState {
        lock(&self.state).clone()
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Waits until `cond` holds for the thermostat's state, or fails after `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        cond: impl Fn(&ThermostatState) -> bool,
    ) -> io::Result<ThermostatState> {
        let mut rx = self.version.subscribe();
        let wait = async {
            loop {
                {
                    let s = lock(&self.state);
                    if cond(&s) {
                        return s.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    return lock(&self.state).clone();
                }
            }
        };
        tokio::time::timeout(limit, wait).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not see {what} within {limit:?}: {:?}", self.serial, self.state()),
            )
        })
    }

    /// `POST /nest/entry`: learns the transport URL.
    pub async fn entry(&mut self) -> io::Result<Value> {
        let body = b"reset=FALSE&mac=18B430AABBCC&model=Display-2.12&request_id=1&software_version=5.9.4-5".to_vec();
        let req = self
            .authed(Request::post("/nest/entry"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        let resp = self.client.send(&req).await?;
        let json = resp.json()?;
        if let Some(url) = json["transport_url"].as_str() {
            if let Some(idx) = url.find("/nest/") {
                self.transport = url[idx..].to_string();
            }
        }
        Ok(json)
    }

    /// `GET /nest/passphrase`: the pairing code the display would show.
    pub async fn passphrase(&self) -> io::Result<(String, i64)> {
        let resp = self.client.send(&self.authed(Request::get("/nest/passphrase"))).await?;
        let json = resp.json()?;
        let code = json["value"].as_str().ok_or_else(|| io::Error::other(format!("no code in {json}")))?;
        Ok((code.to_string(), json["expires"].as_i64().unwrap_or(0)))
    }

    /// Boots like a real device: entry, then a full-state upload of its device and shared buckets.
    pub async fn boot(&mut self, current_temperature: f64) -> io::Result<()> {
        self.entry().await?;
        let device = json!({
            "current_temperature": current_temperature, "current_humidity": 45, "temperature_scale": "C",
            "fan_timer_timeout": 0, "has_fan": true, "away_temperature_low": 12.0, "away_temperature_high": 28.0,
            "lower_safety_temp": 7.0, "upper_safety_temp": 35.0, "eco": {"mode": "schedule", "leaf": false},
            "current_version": "5.9.4-5", "mac_address": "18b430aabbcc", "battery_level": 3.92,
        });
        let shared = json!({
            "target_temperature": 20.0, "target_temperature_low": 18.0, "target_temperature_high": 24.0,
            "target_temperature_type": "heat", "target_change_pending": false, "current_temperature": current_temperature,
            "can_heat": true, "can_cool": true, "hvac_heater_state": false, "hvac_ac_state": false, "name": "",
        });
        let s = &self.serial;
        self.put(vec![(format!("device.{s}"), obj(device)), (format!("shared.{s}"), obj(shared))]).await?;
        Ok(())
    }

    /// PUTs changed fields (objects-array form) and records the receipts.
    pub async fn put(&self, changes: Vec<(String, Fields)>) -> io::Result<Value> {
        let objects: Vec<Value> = {
            let s = lock(&self.state);
            changes
                .iter()
                .map(|(key, value)| {
                    let base = if self.base_revision_zero { 0 } else { s.buckets.get(key).map_or(0, |b| b.revision) };
                    json!({"object_key": key, "base_object_revision": base, "value": value})
                })
                .collect()
        };
        let body = json!({"session": self.session(), "objects": objects});
        let req = self.authed(Request::post(&format!("{}/v7/put", self.transport))).json(&body);
        let resp = self.client.send(&req).await?;
        if resp.status() != 200 {
            return Err(io::Error::other(format!(
                "PUT answered {}: {}",
                resp.status(),
                String::from_utf8_lossy(&resp.body)
            )));
        }
        let json = resp.json()?;
        {
            let mut s = lock(&self.state);
            for (key, value) in &changes {
                let b = s.buckets.entry(key.clone()).or_insert_with(|| SimBucket {
                    revision: 0,
                    timestamp: 0,
                    value: Fields::new(),
                });
                for (k, v) in value {
                    b.value.insert(k.clone(), v.clone());
                }
            }
            for receipt in json["objects"].as_array().into_iter().flatten() {
                if let (Some(key), Some(rev), Some(ts)) = (
                    receipt["object_key"].as_str(),
                    receipt["object_revision"].as_i64(),
                    receipt["object_timestamp"].as_i64(),
                ) {
                    if let Some(b) = s.buckets.get_mut(key) {
                        b.revision = rev;
                        b.timestamp = ts;
                    }
                }
            }
        }
        self.changed();
        Ok(json)
    }

    /// A local change (someone turned the dial): PUT it.
    pub async fn set_local(&self, key_type: &str, fields: Value) -> io::Result<Value> {
        self.put(vec![(format!("{key_type}.{}", self.serial), obj(fields))]).await
    }

    /// The subscribe body listing every bucket the thermostat holds.
    pub fn subscribe_body(&self) -> Value {
        let s = lock(&self.state);
        let mut objects: Vec<Value> = s
            .buckets
            .iter()
            .map(|(k, b)| json!({"object_key": k, "object_revision": b.revision, "object_timestamp": b.timestamp}))
            .collect();
        for kind in ["device", "shared", "schedule"] {
            let key = format!("{kind}.{}", self.serial);
            if !s.buckets.contains_key(&key) && !s.server_lacks.contains(&key) {
                objects.push(json!({"object_key": key, "object_revision": 0, "object_timestamp": 0}));
            }
        }
        json!({"chunked": true, "session": self.session(), "objects": objects})
    }

    /// Opens a subscribe and returns the connection after the response head arrived.
    pub async fn open_subscribe(&self) -> io::Result<(Conn, Head)> {
        let req = self.authed(Request::post(&format!("{}/v7/subscribe", self.transport))).json(&self.subscribe_body());
        let mut conn = self.client.connect().await?;
        conn.send_request(&req).await?;
        let head = conn.read_head().await?;
        self.note_timing(&head);
        Ok((conn, head))
    }

    /// Remembers the timing hints the server sends with transport replies.
    fn note_timing(&self, head: &Head) {
        let seconds = |name: &str| head.header(name).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
        let mut s = lock(&self.state);
        if let Some(window) = seconds("x-nl-defer-device-window") {
            s.defer_window = window;
        }
        if let Some(disable) = seconds("x-nl-disable-defer-window") {
            s.defer_disabled_until = Some(tokio::time::Instant::now() + disable);
        }
    }

    /// Someone turned the dial: like the firmware, the change waits out the defer window
    /// (batching further turns) unless the server asked for immediate confirmation, and a
    /// change of `shared` says who made it and when (`touched_by` 2, the dial).
    pub fn turn_dial(&self, key_type: &str, fields: Value) -> tokio::task::JoinHandle<io::Result<Value>> {
        let me = self.clone();
        let key_type = key_type.to_string();
        let mut fields = obj(fields);
        if key_type == "shared" {
            let now_s = crate::domain::time::now_s();
            fields.insert("touched_by".into(), json!({"touched_by": 2, "touched_at": now_s, "touched_tzo": 0}));
        }
        let fields = Value::Object(fields);
        tokio::spawn(async move {
            let wait = {
                let s = lock(&me.state);
                let disabled = s.defer_disabled_until.is_some_and(|until| until > tokio::time::Instant::now());
                if disabled { Duration::ZERO } else { s.defer_window }
            };
            tokio::time::sleep(wait).await;
            me.set_local(&key_type, fields).await
        })
    }

    /// Applies one chunk of pushed objects; acknowledges a pushed setpoint as the firmware does.
    /// Returns whether anything in it was new to the thermostat.
    pub async fn apply_chunk(&self, chunk: &[u8]) -> io::Result<bool> {
        let doc: Value = serde_json::from_slice(chunk)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("chunk is not one JSON document: {e}")))?;
        let mut keys = Vec::new();
        let mut ack = false;
        // Eco as the firmware reports it once the structure's manual eco changes.
        let mut eco: Option<bool> = None;
        let mut applied = false;
        {
            let mut s = lock(&self.state);
            for o in doc["objects"].as_array().into_iter().flatten() {
                let (Some(key), Some(rev), Some(ts)) =
                    (o["object_key"].as_str(), o["object_revision"].as_i64(), o["object_timestamp"].as_i64())
                else {
                    continue;
                };
                keys.push(key.to_string());
                let value = o["value"].as_object().cloned().unwrap_or_default();
                if rev == 0 && ts == 0 && value.is_empty() {
                    s.server_lacks.insert(key.to_string());
                    continue;
                }
                s.server_lacks.remove(key);
                let local_ts = s.buckets.get(key).map_or(0, |b| b.timestamp);
                if ts > local_ts {
                    applied = true;
                    if key.starts_with("shared.") && value.get("target_change_pending") == Some(&Value::Bool(true)) {
                        ack = true;
                    }
                    if key.starts_with("structure.") {
                        let before = s.buckets.get(key).and_then(|b| b.value.get("manual_eco_all").cloned());
                        eco = value
                            .get("manual_eco_all")
                            .and_then(Value::as_bool)
                            .filter(|now| before != Some(json!(now)));
                    }
                    s.buckets.insert(key.to_string(), SimBucket { revision: rev, timestamp: ts, value });
                }
            }
            s.chunks.push(keys);
        }
        self.changed();
        if ack {
            self.set_local("shared", json!({"target_change_pending": false})).await?;
        }
        if let Some(on) = eco {
            let at = crate::domain::time::now_s();
            let mode = if on { "manual-eco" } else { "schedule" };
            self.set_local("device", json!({"eco": {"mode": mode, "leaf": on, "mode_update_timestamp": at}})).await?;
        }
        Ok(applied)
    }

    /// One subscribe cycle: open, apply every chunk, return when the server ends the response.
    /// Returns whether the server answered with data that was already known (a server that
    /// does that on every subscribe would make a thermostat spin).
    pub async fn subscribe_once(&self) -> io::Result<bool> {
        let (mut conn, head) = self.open_subscribe().await?;
        if head.status != 200 {
            let body = conn.read_body(&head).await.unwrap_or_default();
            return Err(io::Error::other(format!(
                "subscribe answered {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )));
        }
        let mut chunks = 0;
        let mut applied = false;
        while let Some(chunk) = conn.next_chunk().await? {
            chunks += 1;
            applied |= self.apply_chunk(&chunk).await?;
        }
        lock(&self.state).subscribes += 1;
        self.changed();
        Ok(chunks > 0 && !applied)
    }

    /// Keeps a subscribe open until `stop`, resubscribing whenever the server ends one.
    pub fn run(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let result = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = me.subscribe_once() => r,
                };
                // Nothing new in an immediate answer: wait a little rather than ask again at once.
                let pause = match &result {
                    Ok(true) => Some(Duration::from_millis(500)),
                    Ok(false) => None,
                    Err(_) => Some(Duration::from_millis(200)),
                };
                if let Err(e) = result {
                    lock(&me.state).last_error = Some(e.to_string());
                    me.changed();
                }
                if let Some(pause) = pause {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        })
    }
}

fn obj(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        _ => Fields::new(),
    }
}
