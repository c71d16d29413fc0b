//! A simulated thermostat on the v3 transport, behaving like firmware 4.3.3 or 4.0.6 as far as
//! `spec/v3-firmware.md` knows them: it boots through `/nest/entry` and the bucket listing,
//! PUTs nested bodies and keeps a bucket dirty until an acknowledgement it can read says
//! otherwise, subscribes with a `keys` list, applies one bucket per response from the
//! `X-nl-skv-*` headers and the bare value, and resubscribes after an empty body (the tickle).
//!
//! What a real unit would choke on is recorded as a fault (and the simulator carries on), so a
//! test can drive it through a scenario and assert that there were none.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::device::{Fields, SimBucket, Thermostat};
use super::http::{Client, Conn, Head, Request, Response};
use super::observe::Observed;

/// Which v3 firmware the simulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// 4.3.3 (Display-2.14): bare keys, flat acknowledgements, chunked subscribe answers.
    V43,
    /// 4.0.6 (Display-2.8): keys with versions, nested compact acknowledgements.
    V40,
}

impl Firmware {
    pub fn software_version(self) -> &'static str {
        match self {
            Firmware::V43 => "4.3.3",
            Firmware::V40 => "4.0.6",
        }
    }

    fn model(self) -> &'static str {
        match self {
            Firmware::V43 => "Display-2.14",
            Firmware::V40 => "Display-2.8",
        }
    }
}

/// 4.3.3 abandons a subscribe whose response head has not come after about 8 s.
const HEAD_PATIENCE_43: Duration = Duration::from_secs(8);
/// Both firmwares abandon an idle socket after about 360 s.
const IDLE_SOCKET: Duration = Duration::from_secs(360);
/// What 4.3.3 appends to its keys once it has corrupted them (spec §6.1).
const CORRUPTION: &str = " ._sync";
/// Subscribes that end at once with nothing new before the simulator backs off.
const FAST_EMPTY_LIMIT: u32 = 3;

/// One bucket received on a subscribe.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub key: String,
    pub revision: i64,
    pub timestamp: i64,
    /// The response carried `X-nl-disable-defer-window`.
    pub disable_defer: bool,
    /// Newer than the device's copy, so applied.
    pub applied: bool,
}

/// What a v3 thermostat holds and what it has seen, for tests to inspect.
#[derive(Debug, Clone, Default)]
pub struct V3State {
    pub transport: String,
    pub buckets: BTreeMap<String, SimBucket>,
    /// Buckets the server has given the device (inline in `/entry`, in the listing, or pushed):
    /// the firmware cannot apply an acknowledgement for any other (spec §6.6).
    pub received: BTreeSet<String>,
    /// Local changes not acknowledged yet, by key; they are PUT again until they are.
    pub dirty: BTreeMap<String, Fields>,
    pub pushes: Vec<Push>,
    /// Subscribes answered with an empty body.
    pub tickles: u64,
    pub subscribes: u64,
    /// Acknowledgements of a bucket the device had not received yet (retried later).
    pub rejected_acks: u64,
    /// PUTs answered with an acknowledgement naming no bucket (`{}`): nothing was accepted, so
    /// everything stays dirty and is sent again (a server waiting for pairing answers this way).
    pub unacknowledged: u64,
    /// Times the simulator backed off after subscribes that ended at once with nothing new.
    pub backoffs: u64,
    /// The last bucket listing the server answered.
    pub listing: Option<Value>,
    /// Response shapes the real firmware could not use.
    pub faults: Vec<String>,
    pub last_error: Option<String>,
}

impl V3State {
    pub fn field(&self, key: &str, field: &str) -> Option<&Value> {
        self.buckets.get(key)?.value.get(field)
    }

    pub fn pushed_keys(&self) -> Vec<&str> {
        self.pushes.iter().map(|p| p.key.as_str()).collect()
    }

    /// Holds `keys`, has nothing left to PUT: what a booted thermostat looks like.
    pub fn settled(&self, keys: &[String]) -> bool {
        self.dirty.is_empty() && keys.iter().all(|k| self.received.contains(k))
    }
}

/// How one subscribe ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// One bucket; `applied` when it was newer than the device's copy.
    Bucket { key: String, applied: bool },
    /// An empty body: resubscribe.
    Tickle,
    /// Something the firmware cannot use (recorded as a fault).
    Unusable,
}

/// A simulated v3 thermostat. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct V3Thermostat {
    pub serial: String,
    pub firmware: Firmware,
    wire: Thermostat,
    corrupt_keys: bool,
    base_revision_zero: bool,
    state: Arc<Observed<V3State>>,
}

fn obj(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        _ => Fields::new(),
    }
}

fn whole(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_i64)
}

fn header_int(head: &Head, name: &str) -> Option<i64> {
    head.header(name).and_then(|v| v.parse().ok())
}

impl V3Thermostat {
    pub fn new(client: Client, serial: &str, firmware: Firmware) -> Self {
        let state = V3State { transport: "/nest/transport".into(), ..Default::default() };
        Self {
            serial: serial.to_string(),
            firmware,
            wire: Thermostat::new(client, serial),
            corrupt_keys: false,
            base_revision_zero: false,
            state: Arc::new(Observed::new(state)),
        }
    }

    /// Sends its keys with 4.3.3's corrupted suffix (` ._sync`) in subscribes, PUT bodies and
    /// the listing path, whose request line then has four tokens.
    pub fn with_corrupted_keys(mut self) -> Self {
        self.corrupt_keys = true;
        self
    }

    /// Sends `base_object_revision: 0` in every bucket it PUTs, as some firmware and clients do.
    pub fn with_base_revision_zero(mut self) -> Self {
        self.base_revision_zero = true;
        self
    }

    /// The objects-dialect thermostat with the same serial and credentials (pairing codes).
    pub fn wire(&self) -> &Thermostat {
        &self.wire
    }

    pub fn state(&self) -> V3State {
        self.state.get()
    }

    pub async fn wait_for(&self, limit: Duration, what: &str, cond: impl Fn(&V3State) -> bool) -> io::Result<V3State> {
        self.state.wait_for(limit, &format!("{} {what}", self.serial), cond).await
    }

    pub fn key(&self, kind: &str) -> String {
        format!("{kind}.{}", self.serial)
    }

    /// A key or id as this firmware writes it on the wire.
    fn on_wire(&self, key: &str) -> String {
        if self.corrupt_keys { format!("{key}{CORRUPTION}") } else { key.to_string() }
    }

    fn path(&self, tail: &str) -> String {
        format!("{}/v3/{tail}", self.state.read(|s| s.transport.clone()))
    }

    fn fault(&self, what: String) {
        tracing::warn!(serial = %self.serial, firmware = self.firmware.software_version(), "{what}");
        self.state.update(|s| s.faults.push(what));
    }

    async fn send(&self, req: Request) -> io::Result<Response> {
        let resp = self.wire.client().send(&self.wire.authed(req)).await?;
        if resp.status() != 200 {
            return Err(io::Error::other(format!(
                "answered {}: {}",
                resp.status(),
                String::from_utf8_lossy(&resp.body)
            )));
        }
        Ok(resp)
    }

    /// Stores a bucket the server gave, if it is newer than the device's copy (the device's
    /// own rule: newer timestamp, or equal timestamp and higher revision).
    fn receive(s: &mut V3State, key: &str, revision: i64, timestamp: i64, value: Fields) -> bool {
        s.received.insert(key.to_string());
        let newer = s
            .buckets
            .get(key)
            .is_none_or(|b| timestamp > b.timestamp || (timestamp == b.timestamp && revision > b.revision));
        if newer {
            s.buckets.insert(key.to_string(), SimBucket { revision, timestamp, value });
        }
        newer
    }

    /// `POST /nest/entry` with this firmware's form; 4.3.3 takes the buckets it carries inline.
    pub async fn entry(&self) -> io::Result<Value> {
        let form = format!(
            "reset=FALSE&mac=18B430AABBCC&model={}&request_id=1&software_version={}",
            self.firmware.model(),
            self.firmware.software_version()
        );
        let req = Request::post("/nest/entry")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form.into_bytes());
        let doc = self.send(req).await?.json()?;
        self.state.update(|s| {
            if let Some(idx) = doc["transport_url"].as_str().and_then(|u| u.find("/nest/").map(|i| &u[i..])) {
                s.transport = idx.to_string();
            }
            if self.firmware != Firmware::V43 {
                return;
            }
            for (key, member) in doc.as_object().into_iter().flatten() {
                let (Some(rev), Some(ts), Some(value)) = (
                    whole(member.get("object_revision")),
                    whole(member.get("object_timestamp")),
                    member.get("value").and_then(Value::as_object),
                ) else {
                    continue;
                };
                Self::receive(s, key, rev, ts, value.clone());
            }
        });
        Ok(doc)
    }

    /// `GET {t}/v3/device/device.S`: 4.0.6 fills its store from the values; 4.3.3 only reads
    /// the metadata and crash-loops on `$version` members.
    pub async fn fetch_listing(&self) -> io::Result<Value> {
        let resp =
            self.send(Request::get(&self.path(&format!("device/{}", self.on_wire(&self.key("device")))))).await?;
        let text = String::from_utf8_lossy(&resp.body).to_string();
        let doc = resp.json()?;
        match self.firmware {
            Firmware::V43 => {
                if doc.get("objects").and_then(Value::as_array).is_none() {
                    self.fault(format!("listing is not an objects array: {text}"));
                }
                for banned in [r#""$version""#, r#""$timestamp""#, r#""key""#] {
                    if text.contains(banned) {
                        self.fault(format!("listing carries {banned}: 4.3.3 crash-loops nlclient"));
                    }
                }
            }
            Firmware::V40 => {
                if text.contains(": ") || text.contains(", ") {
                    self.fault(format!("whitespace in the listing: 4.0.6 cannot scan it: {text}"));
                }
                let mut buckets = Vec::new();
                for (kind, by_id) in doc.as_object().into_iter().flatten() {
                    for (id, item) in by_id.as_object().into_iter().flatten() {
                        let mut value = item.as_object().cloned().unwrap_or_default();
                        let (rev, ts) =
                            (whole(value.remove("$version").as_ref()), whole(value.remove("$timestamp").as_ref()));
                        match (rev, ts) {
                            (Some(rev), Some(ts)) => buckets.push((format!("{kind}.{id}"), rev, ts, value)),
                            _ => self.fault(format!("listing bucket {kind}.{id} without $version/$timestamp")),
                        }
                    }
                }
                self.state.update(|s| {
                    for (key, rev, ts, value) in buckets {
                        Self::receive(s, &key, rev, ts, value);
                    }
                });
            }
        }
        self.state.update(|s| s.listing = Some(doc.clone()));
        Ok(doc)
    }

    /// Boots like the firmware: entry, the listing, then a full-state PUT of its device and
    /// shared buckets (acknowledgements for buckets the server never gave it are rejected and
    /// retried after the next subscribe).
    pub async fn boot(&self, current_temperature: f64) -> io::Result<()> {
        self.entry().await?;
        self.fetch_listing().await?;
        let version = self.firmware.software_version();
        let device = json!({
            "model_version": self.firmware.model(), "current_version": version, "rssi": 56, "postal_code": "62170",
            "current_temperature": current_temperature, "current_humidity": 45, "temperature_scale": "C",
            "away_temperature_low": 12.0, "away_temperature_high": 28.0, "has_fan": false,
            "lower_safety_temp": 7.0, "upper_safety_temp": 35.0, "mac_address": "18b430aabbcc",
        });
        let shared = json!({
            "target_temperature": 20.0, "target_temperature_type": "heat", "target_change_pending": false,
            "current_temperature": current_temperature, "can_heat": true, "can_cool": false,
            "hvac_heater_state": false, "name": "",
        });
        self.put(vec![(self.key("device"), obj(device)), (self.key("shared"), obj(shared))]).await
    }

    /// Local changes (the dial, the device itself): stored, marked dirty, PUT.
    pub async fn put(&self, changes: Vec<(String, Fields)>) -> io::Result<()> {
        self.state.update(|s| {
            for (key, fields) in changes {
                let b = s.buckets.entry(key.clone()).or_insert_with(|| SimBucket {
                    revision: 0,
                    timestamp: 0,
                    value: Fields::new(),
                });
                b.value.extend(fields.clone());
                s.dirty.entry(key).or_default().extend(fields);
            }
        });
        self.flush().await
    }

    /// A local change of one bucket of this thermostat (`shared`, `device`, …).
    pub async fn set_local(&self, kind: &str, fields: Value) -> io::Result<()> {
        self.put(vec![(self.key(kind), obj(fields))]).await
    }

    /// PUTs every dirty bucket in one nested body and reads the acknowledgement.
    pub async fn flush(&self) -> io::Result<()> {
        let dirty = self.state.read(|s| s.dirty.clone());
        if dirty.is_empty() {
            return Ok(());
        }
        let mut body = Map::new();
        for (key, fields) in &dirty {
            let Some((kind, id)) = key.split_once('.') else { continue };
            let mut inner = fields.clone();
            if self.base_revision_zero {
                inner.insert("base_object_revision".into(), json!(0));
            }
            if let Value::Object(by_id) = body.entry(kind).or_insert_with(|| json!({})) {
                by_id.insert(self.on_wire(id), Value::Object(inner));
            }
        }
        let resp = self.send(Request::post(&self.path("put")).json(&Value::Object(body))).await?;
        self.read_ack(&dirty, &resp.body);
        Ok(())
    }

    /// Applies an acknowledgement the way this firmware reads it.
    fn read_ack(&self, sent: &BTreeMap<String, Fields>, body: &[u8]) {
        let text = String::from_utf8_lossy(body);
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
            return self.fault(format!("acknowledgement is not a JSON object: {text}"));
        };
        if doc.is_empty() {
            self.state.update(|s| s.unacknowledged += 1);
            return;
        }
        if !(text.contains(r#""$version":"#) && text.contains(r#""$timestamp":"#)) {
            return self.fault(format!(
                "acknowledgement without \"$version\":/\"$timestamp\": tokens (PUT re-sent forever): {text}"
            ));
        }
        let mut acked: Vec<(String, i64, i64, Option<Fields>)> = Vec::new();
        match self.firmware {
            Firmware::V43 => {
                for top in doc.keys() {
                    if !sent.contains_key(top) {
                        self.fault(format!("no bucket exists for payload: acknowledgement member {top:?}"));
                    }
                }
                for key in sent.keys() {
                    let Some(entry) = doc.get(key) else { continue };
                    if entry.get("$version").is_some() {
                        self.fault(format!("markers directly in {key}: 4.3.3 corrupts its key with ' .$version'"));
                    }
                    let sync = &entry["_sync"];
                    match (whole(sync.get("$version")), whole(sync.get("$timestamp"))) {
                        (Some(rev), Some(ts)) => {
                            acked.push((key.clone(), rev, ts, entry.get("value").and_then(Value::as_object).cloned()))
                        }
                        _ => self.fault(format!("acknowledgement of {key} without _sync markers: {text}")),
                    }
                }
            }
            Firmware::V40 => {
                if text.contains(": ") || text.contains(", ") {
                    return self.fault(format!("whitespace in a nested acknowledgement: 4.0.6 cannot scan it: {text}"));
                }
                for key in sent.keys() {
                    let Some((kind, id)) = key.split_once('.') else { continue };
                    let entry = &doc.get(kind).and_then(|by_id| by_id.get(id));
                    match entry.map(|e| (whole(e.get("$version")), whole(e.get("$timestamp")))) {
                        Some((Some(rev), Some(ts))) => acked.push((key.clone(), rev, ts, None)),
                        _ => self.fault(format!("acknowledgement misses {kind}/{id}: {text}")),
                    }
                }
            }
        }
        self.state.update(|s| {
            for (key, rev, ts, value) in acked {
                if !s.received.contains(&key) {
                    s.rejected_acks += 1;
                    continue;
                }
                if let Some(b) = s.buckets.get_mut(&key) {
                    b.revision = rev;
                    b.timestamp = ts;
                    if let Some(v) = value {
                        b.value = v;
                    }
                }
                // Clean unless it changed again meanwhile.
                if s.dirty.get(&key) == sent.get(&key) {
                    s.dirty.remove(&key);
                }
            }
        });
    }

    /// The subscribe body: 4.3.3 lists its device and shared keys bare; 4.0.6 lists every
    /// bucket it holds (and those two) with the version it holds.
    pub fn subscribe_body(&self) -> Value {
        let mine = [self.key("device"), self.key("shared")];
        let keys: Vec<Value> = match self.firmware {
            Firmware::V43 => mine.iter().map(|k| json!({"key": self.on_wire(k)})).collect(),
            Firmware::V40 => self.state.read(|s| {
                let mut keys: Vec<&String> = mine.iter().collect();
                keys.extend(s.buckets.keys().filter(|k| !mine.contains(k)));
                keys.into_iter()
                    .map(|k| {
                        let (rev, ts) = s.buckets.get(k).map_or((0, 0), |b| (b.revision, b.timestamp));
                        json!({"key": self.on_wire(k), "version": rev, "timestamp": ts})
                    })
                    .collect()
            }),
        };
        json!({ "keys": keys })
    }

    /// Opens a subscribe and returns the connection once the response head arrived (4.3.3
    /// gives up after 8 s without one).
    pub async fn open_subscribe(&self) -> io::Result<(Conn, Head)> {
        let mut req = self.wire.authed(Request::post(&self.path("subscribe"))).json(&self.subscribe_body());
        if self.firmware == Firmware::V40 {
            req = req.header("X-nl-session-id", format!("session-{}", self.serial));
        }
        let mut conn = self.wire.client().connect().await?;
        conn.send_request(&req).await?;
        let patience = match self.firmware {
            Firmware::V43 => HEAD_PATIENCE_43,
            Firmware::V40 => IDLE_SOCKET,
        };
        match tokio::time::timeout(patience, conn.read_head()).await {
            Ok(head) => Ok((conn, head?)),
            Err(_) => {
                self.fault(format!("no response head within {patience:?}: the firmware abandons the subscribe"));
                Err(io::Error::new(io::ErrorKind::TimedOut, "no response head"))
            }
        }
    }

    /// One subscribe: open, read the whole answer, apply it (acknowledging a pushed setpoint
    /// as the firmware does), then PUT what is still dirty.
    pub async fn subscribe_once(&self) -> io::Result<Answer> {
        let (mut conn, head) = self.open_subscribe().await?;
        let body = tokio::time::timeout(IDLE_SOCKET, conn.read_body(&head))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "subscribe body"))??;
        if head.status != 200 {
            return Err(io::Error::other(format!(
                "subscribe answered {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )));
        }
        let answer = self.apply(&head, &body);
        self.state.update(|s| s.subscribes += 1);
        if let Answer::Bucket { key, applied: true } = &answer {
            let pending = self.state.read(|s| s.field(key, "target_change_pending") == Some(&Value::Bool(true)));
            if *key == self.key("shared") && pending {
                self.set_local("shared", json!({"target_change_pending": false})).await?;
            }
        }
        self.flush().await?;
        Ok(answer)
    }

    /// Reads one subscribe answer: a bucket named by its `X-nl-skv-*` headers with the bare
    /// value as body, or an empty body.
    fn apply(&self, head: &Head, body: &[u8]) -> Answer {
        let Some(key) = head.header("x-nl-skv-key") else {
            if body.is_empty() {
                self.state.update(|s| s.tickles += 1);
                return Answer::Tickle;
            }
            self.fault(format!(
                "a body without X-nl-skv-* headers is dropped (bad header data): {}",
                String::from_utf8_lossy(body)
            ));
            return Answer::Unusable;
        };
        let (Some(rev), Some(ts)) = (header_int(head, "x-nl-skv-version"), header_int(head, "x-nl-skv-timestamp"))
        else {
            self.fault(format!("SKV push of {key} without a numeric version and timestamp"));
            return Answer::Unusable;
        };
        let value = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(v)) if !v.contains_key("objects") => v,
            _ => {
                self.fault(format!("SKV body of {key} is not the bare value: {}", String::from_utf8_lossy(body)));
                return Answer::Unusable;
            }
        };
        if key.contains(' ') {
            self.fault(format!("SKV key {key:?} is not canonical"));
        }
        let disable_defer = head.header("x-nl-disable-defer-window").is_some();
        let applied = self.state.update(|s| {
            let applied = Self::receive(s, key, rev, ts, value);
            s.pushes.push(Push { key: key.to_string(), revision: rev, timestamp: ts, disable_defer, applied });
            applied
        });
        Answer::Bucket { key: key.to_string(), applied }
    }

    /// Keeps subscribing until `stop`. Subscribes that end at once with nothing new (a server
    /// answering a listed bucket with an empty revision-0 value, or tickling without cause)
    /// back off instead of spinning.
    pub fn run(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut fast_empty = 0u32;
            while !stop.is_cancelled() {
                let started = Instant::now();
                let result = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = me.subscribe_once() => r,
                };
                let pause = match result {
                    Ok(answer) => {
                        let useful = matches!(answer, Answer::Bucket { applied: true, .. });
                        fast_empty =
                            if !useful && started.elapsed() < Duration::from_secs(1) { fast_empty + 1 } else { 0 };
                        (fast_empty >= FAST_EMPTY_LIMIT).then(|| {
                            me.state.update(|s| s.backoffs += 1);
                            Duration::from_secs(1 << (fast_empty - FAST_EMPTY_LIMIT).min(5))
                        })
                    }
                    Err(e) => {
                        me.state.update(|s| s.last_error = Some(e.to_string()));
                        Some(Duration::from_millis(200))
                    }
                };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::bucket::Bucket;
    use crate::domain::v3::json::{Spacing, to_vec};
    use crate::domain::v3::profile::{Profile, Shape, V40, V43};
    use crate::domain::v3::render::{self, Receipt};

    const S: &str = "02AA01AC12345678";

    fn sim(firmware: Firmware) -> V3Thermostat {
        V3Thermostat::new(Client::new("http://127.0.0.1:9").unwrap(), S, firmware)
    }

    fn shape(firmware: Firmware) -> &'static Shape {
        match firmware {
            Firmware::V43 => &V43,
            Firmware::V40 => &V40,
        }
    }

    /// A thermostat that received `shared.S` once and has a local change of it in flight.
    fn with_dirty_shared(firmware: Firmware) -> (V3Thermostat, BTreeMap<String, Fields>) {
        let t = sim(firmware);
        let key = t.key("shared");
        let change = obj(json!({"target_temperature": 21.5}));
        t.state.update(|s| {
            V3Thermostat::receive(s, &key, 1, 100, obj(json!({"target_temperature": 20.0})));
            s.buckets.get_mut(&key).unwrap().value.extend(change.clone());
            s.dirty.insert(key.clone(), change.clone());
        });
        (t, BTreeMap::from([(key, change)]))
    }

    fn ack(shape: &Shape, key: &str) -> Vec<u8> {
        let stored = obj(json!({"target_temperature": 21.5}));
        render::put_ack(shape, &[Receipt { key, revision: 2, timestamp: 200, changed: Some(&stored) }])
    }

    #[test]
    fn each_firmware_reads_roosts_acknowledgement_for_it() {
        for firmware in [Firmware::V43, Firmware::V40] {
            let (t, sent) = with_dirty_shared(firmware);
            t.read_ack(&sent, &ack(shape(firmware), &t.key("shared")));
            let s = t.state();
            assert!(s.faults.is_empty(), "{firmware:?}: {:?}", s.faults);
            assert!(s.dirty.is_empty(), "{firmware:?}: acknowledged");
            let b = &s.buckets[&t.key("shared")];
            assert_eq!((b.revision, b.timestamp), (2, 200));
            assert_eq!(b.value["target_temperature"], json!(21.5));
        }
    }

    #[test]
    fn shapes_a_firmware_cannot_read_are_faults_and_the_bucket_stays_dirty() {
        let (t, sent) = with_dirty_shared(Firmware::V43);
        t.read_ack(&sent, &ack(&V40, &t.key("shared")));
        let s = t.state();
        assert!(s.faults.iter().any(|f| f.contains("no bucket exists for payload")), "{:?}", s.faults);
        assert!(!s.dirty.is_empty());

        let (t, sent) = with_dirty_shared(Firmware::V40);
        let spaced = to_vec(&json!({"shared": {S: {"$version": 2, "$timestamp": 200}}}), Spacing::PySpaced);
        t.read_ack(&sent, &spaced);
        assert!(t.state().faults.iter().any(|f| f.contains("whitespace")), "{:?}", t.state().faults);

        for firmware in [Firmware::V43, Firmware::V40] {
            let (t, sent) = with_dirty_shared(firmware);
            t.read_ack(&sent, br#"{"objects": []}"#);
            let s = t.state();
            assert!(s.faults.iter().any(|f| f.contains("tokens")), "{firmware:?}: {:?}", s.faults);
            assert!(!s.dirty.is_empty());
        }

        let (t, sent) = with_dirty_shared(Firmware::V43);
        let direct = json!({t.key("shared"): {"$version": 2, "$timestamp": 200}}).to_string();
        t.read_ack(&sent, direct.as_bytes());
        assert!(t.state().faults.iter().any(|f| f.contains("corrupts its key")), "{:?}", t.state().faults);
    }

    #[test]
    fn an_acknowledgement_of_nothing_keeps_every_change_dirty_without_a_fault() {
        for firmware in [Firmware::V43, Firmware::V40] {
            let (t, sent) = with_dirty_shared(firmware);
            t.read_ack(&sent, b"{}");
            let s = t.state();
            assert!(s.faults.is_empty(), "{firmware:?}: {:?}", s.faults);
            assert_eq!(s.unacknowledged, 1);
            assert_eq!(s.dirty, sent, "sent again later");
        }
    }

    #[test]
    fn an_acknowledgement_of_a_bucket_never_received_is_rejected_and_retried() {
        let t = sim(Firmware::V43);
        let key = t.key("device");
        let change = obj(json!({"current_temperature": 20.0}));
        t.state.update(|s| {
            s.dirty.insert(key.clone(), change.clone());
        });
        t.read_ack(&BTreeMap::from([(key.clone(), change)]), &ack(&V43, &key));
        let s = t.state();
        assert!(s.faults.is_empty(), "{:?}", s.faults);
        assert_eq!(s.rejected_acks, 1);
        assert!(s.dirty.contains_key(&key), "re-sent after the next subscribe");
    }

    fn head(headers: &[(&str, String)]) -> Head {
        Head { status: 200, headers: headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    #[test]
    fn an_skv_answer_is_applied_and_an_empty_one_is_a_tickle() {
        for firmware in [Firmware::V43, Firmware::V40] {
            let t = sim(firmware);
            let key = t.key("shared");
            let bucket = Bucket {
                revision: 5,
                timestamp: 500,
                value: obj(json!({"target_temperature": 22.0, "target_change_pending": true})),
                updated_at: 0,
            };
            let skv = render::skv(Profile::V43.shape(), &key, &bucket).unwrap();
            let mut headers: Vec<(&str, String)> = skv.headers.to_vec();
            headers.push(("X-nl-disable-defer-window", "60".into()));
            let answer = t.apply(&head(&headers), &skv.body);
            assert_eq!(answer, Answer::Bucket { key: key.clone(), applied: true });
            assert_eq!(
                t.apply(&head(&headers), &skv.body),
                Answer::Bucket { key: key.clone(), applied: false },
                "same version"
            );
            assert_eq!(t.apply(&head(&[]), b""), Answer::Tickle);
            let s = t.state();
            assert!(s.faults.is_empty(), "{:?}", s.faults);
            assert_eq!(s.field(&key, "target_temperature"), Some(&json!(22.0)));
            assert_eq!(
                s.pushes[0],
                Push { key: key.clone(), revision: 5, timestamp: 500, disable_defer: true, applied: true }
            );
            assert_eq!(s.tickles, 1);
            assert!(s.received.contains(&key));
        }
    }

    #[test]
    fn an_answer_without_skv_headers_or_with_an_objects_body_is_unusable() {
        let t = sim(Firmware::V43);
        let objects = br#"{"objects":[{"object_key":"shared.S","object_revision":1,"object_timestamp":1,"value":{}}]}"#;
        assert_eq!(t.apply(&head(&[]), objects), Answer::Unusable);
        let skv = [
            ("X-nl-skv-key", "shared.S".to_string()),
            ("X-nl-skv-version", "1".into()),
            ("X-nl-skv-timestamp", "1".into()),
        ];
        assert_eq!(t.apply(&head(&skv), objects), Answer::Unusable);
        assert_eq!(t.apply(&head(&skv[..1]), b"{}"), Answer::Unusable);
        assert_eq!(t.state().faults.len(), 3);
    }

    #[test]
    fn subscribe_bodies_per_firmware() {
        let t = sim(Firmware::V43);
        assert_eq!(
            t.subscribe_body(),
            json!({"keys": [{"key": format!("device.{S}")}, {"key": format!("shared.{S}")}]})
        );
        let t = sim(Firmware::V43).with_corrupted_keys();
        assert_eq!(t.subscribe_body()["keys"][0], json!({"key": format!("device.{S} ._sync")}));
        let t = sim(Firmware::V40);
        t.state.update(|s| {
            V3Thermostat::receive(s, &format!("shared.{S}"), 3, 123, Fields::new());
            V3Thermostat::receive(s, "user.homeassistant", 1, 50, Fields::new());
        });
        assert_eq!(
            t.subscribe_body(),
            json!({"keys": [
                {"key": format!("device.{S}"), "version": 0, "timestamp": 0},
                {"key": format!("shared.{S}"), "version": 3, "timestamp": 123},
                {"key": "user.homeassistant", "version": 1, "timestamp": 50},
            ]})
        );
    }
}
