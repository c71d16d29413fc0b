//! What roost publishes for a thermostat, as pure functions of its buckets: raw per-field
//! topics, Home Assistant state topics, and discovery configs. Payloads are JSON scalars
//! (`true`, `21.5`, `null`); strings go out as their text.

use serde_json::{Map, Value, json};

use crate::domain::bucket::Fields;
use crate::domain::preset::{self, Preset};
use crate::runtime::Stages;

/// Topic prefixes and switches, from `MQTT_TOPIC_PREFIX` / `MQTT_DISCOVERY_PREFIX`.
#[derive(Debug, Clone)]
pub struct Naming {
    pub prefix: String,
    pub discovery: String,
    pub publish_raw: bool,
    pub ha_discovery: bool,
    /// `MQTT_MINIMAL_DISCOVERY`: announce the climate entity only.
    pub minimal: bool,
}

impl Naming {
    /// roost's own availability (last will: `offline`).
    pub fn bridge_availability(&self) -> String {
        format!("{}/roost/availability", self.prefix)
    }

    pub fn availability(&self, serial: &str) -> String {
        format!("{}/{serial}/availability", self.prefix)
    }

    pub(crate) fn ha(&self, serial: &str, name: &str) -> String {
        format!("{}/{serial}/ha/{name}", self.prefix)
    }

    /// Every topic that holds state or discovery for a serial (to clear them on delete).
    pub fn owns(&self, serial: &str, topic: &str) -> bool {
        topic.starts_with(&format!("{}/{serial}/", self.prefix)) || topic.contains(&format!("/nest_{serial}/"))
    }
}

/// Whether a broker accepts `topic` for a publish: no wildcards, no NUL, at most 65535 bytes.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

/// A field name that can be one topic level: a thermostat stores whatever names it sends, and
/// a `/` would add levels (and could end in `/set`, a command topic).
fn valid_level(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#', '\0'])
}

/// A value as an MQTT payload: strings as their text, everything else as JSON.
pub fn payload(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The buckets of one thermostat that publishing reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct View<'a> {
    pub device: Option<&'a Fields>,
    pub shared: Option<&'a Fields>,
    pub structure: Option<&'a Fields>,
    /// The preset last asked for the thermostat's structure.
    pub asked: Option<Preset>,
    /// Runtime per stage over the last 24 hours, once computed.
    pub runtime: Option<Stages>,
    pub now_s: i64,
}

fn truthy(v: Option<&Value>) -> bool {
    v.is_some_and(crate::domain::bucket::truthy)
}

impl<'a> View<'a> {
    fn d(&self, key: &str) -> Option<&'a Value> {
        self.device.and_then(|d| d.get(key)).filter(|v| !v.is_null())
    }

    fn s(&self, key: &str) -> Option<&'a Value> {
        self.shared.and_then(|s| s.get(key)).filter(|v| !v.is_null())
    }

    /// A capability: shared wins over device.
    fn capability(&self, key: &str, default: bool) -> bool {
        match self.shared.and_then(|s| s.get(key)).or_else(|| self.device.and_then(|d| d.get(key))) {
            Some(v) => truthy(Some(v)),
            None => default,
        }
    }

    pub fn has_fan(&self) -> bool {
        self.capability("has_fan", false)
    }

    pub fn modes(&self) -> Vec<&'static str> {
        let (heat, cool) = (self.capability("can_heat", true), self.capability("can_cool", true));
        let mut modes = vec!["off"];
        if heat {
            modes.push("heat");
        }
        if cool {
            modes.push("cool");
        }
        if heat && cool {
            modes.push("heat_cool");
        }
        modes
    }

    /// The Home Assistant mode for the Nest `target_temperature_type`.
    pub fn ha_mode(&self) -> &'static str {
        match self.s("target_temperature_type").and_then(Value::as_str) {
            Some("heat") | Some("emergency") => "heat",
            Some("cool") => "cool",
            Some("range") | Some("heat-cool") => "heat_cool",
            _ => "off",
        }
    }

    fn fan_timer_active(&self) -> bool {
        let timer = self.d("fan_timer_timeout").and_then(Value::as_f64).is_some_and(|t| t > self.now_s as f64);
        timer || truthy(self.d("fan_control_state"))
    }

    pub fn preset(&self) -> Preset {
        preset::current(self.device, self.structure, self.asked)
    }

    pub fn has_humidifier(&self) -> bool {
        self.capability("has_humidifier", false)
    }

    pub fn has_emergency_heat(&self) -> bool {
        self.capability("has_emer_heat", false)
    }

    /// A heat pump with a second heat source (aux or emergency heat).
    pub fn has_aux_heat(&self) -> bool {
        ["has_heat_pump", "has_aux_heat", "has_emer_heat"].iter().any(|k| self.capability(k, false))
    }

    pub fn can_cool(&self) -> bool {
        self.capability("can_cool", true)
    }

    fn action(&self) -> &'static str {
        if self.ha_mode() == "off" && self.s("target_temperature_type").is_none_or(|t| t == "off") {
            return "off";
        }
        let any = |keys: &[&str]| keys.iter().any(|k| truthy(self.s(k)));
        if any(&[
            "hvac_heater_state",
            "hvac_heat_x2_state",
            "hvac_heat_x3_state",
            "hvac_aux_heater_state",
            "hvac_alt_heat_state",
        ]) {
            "heating"
        } else if any(&["hvac_ac_state", "hvac_cool_x2_state", "hvac_cool_x3_state"]) {
            "cooling"
        } else if self.fan_timer_active() {
            "fan"
        } else {
            "idle"
        }
    }

    pub fn name(&self, serial: &str) -> String {
        [self.s("label"), self.s("name")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|s| !s.is_empty())
            .map_or_else(|| format!("Nest {serial}"), String::from)
    }

    /// What discovery depends on (capabilities and name): republished only when this changes,
    /// never with the mode, because Home Assistant resets an entity whose config is re-sent.
    pub fn discovery_signature(&self, serial: &str) -> String {
        format!(
            "{:?}|{}|{}|{}|{}|{}",
            self.modes(),
            self.has_fan(),
            self.has_humidifier(),
            self.has_emergency_heat(),
            self.has_aux_heat(),
            self.name(serial)
        )
    }
}

/// Raw topics for one bucket: the whole value, each field, and the derived fields the MQTT
/// clients of the reference subscribe to (`device/away`, `device/fan_timer_active`).
pub fn raw_topics(naming: &Naming, serial: &str, kind: &str, value: &Fields, view: View<'_>) -> Vec<(String, String)> {
    if !naming.publish_raw || (kind != "device" && kind != "shared") {
        return Vec::new();
    }
    let base = format!("{}/{serial}/{kind}", naming.prefix);
    let mut out = vec![(base.clone(), Value::Object(value.clone()).to_string())];
    for (field, v) in value.iter().filter(|(field, _)| valid_level(field)) {
        out.push((format!("{base}/{field}"), payload(v)));
    }
    if kind == "device" {
        out.push((format!("{base}/fan_timer_active"), view.fan_timer_active().to_string()));
        out.push((format!("{base}/away"), (view.preset() != Preset::Home).to_string()));
    }
    out
}

/// Home Assistant's payload that clears a value (shown as unknown, or hidden for setpoints).
const NONE: &str = "None";

fn on_off(on: bool) -> String {
    if on { "ON" } else { "OFF" }.into()
}

/// Home Assistant state topics, in a fixed order. Setpoints the current mode does not use are
/// `None`, so Home Assistant shows the single setpoint or the range, never both.
pub fn ha_state(naming: &Naming, serial: &str, view: View<'_>) -> Vec<(String, String)> {
    if !naming.ha_discovery || view.device.is_none() || view.shared.is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut put = |name: &str, value: String| out.push((naming.ha(serial, name), value));
    if let Some(t) = view.s("current_temperature").filter(|v| truthy(Some(v))).or_else(|| view.d("current_temperature"))
    {
        put("current_temperature", payload(t));
    }
    if let Some(h) = view.d("current_humidity") {
        put("current_humidity", payload(h));
    }
    let mode = view.ha_mode();
    let used: &[&str] = match mode {
        "heat" | "cool" => &["target_temperature"],
        "heat_cool" => &["target_temperature_low", "target_temperature_high"],
        _ => &[],
    };
    for name in ["target_temperature", "target_temperature_low", "target_temperature_high"] {
        let value = view.s(name).filter(|_| used.contains(&name)).map_or_else(|| NONE.into(), payload);
        put(name, value);
    }
    put("mode", mode.into());
    put("action", view.action().into());
    if view.has_fan() {
        put("fan_mode", if view.fan_timer_active() { "on" } else { "auto" }.into());
    }
    let preset = view.preset();
    put("preset", preset.as_str().into());
    put("eco_mode", on_off(preset != Preset::Home));
    put("emergency_heat", on_off(view.s("target_temperature_type").and_then(Value::as_str) == Some("emergency")));
    if view.has_humidifier() {
        let enabled = truthy(view.d("target_humidity_enabled"));
        put("humidifier", on_off(enabled));
        let target = view.d("target_humidity").and_then(Value::as_f64).filter(|h| (10.0..=60.0).contains(h));
        put("target_humidity", target.map_or_else(|| NONE.into(), |h| h.round().to_string()));
        let action = match (enabled, truthy(view.d("humidifier_state"))) {
            (false, _) => "off",
            (true, true) => "humidifying",
            (true, false) => "idle",
        };
        put("humidifier_action", action.into());
    }
    if let Some(r) = view.runtime {
        // The stages this thermostat has, as its entities.
        for (name, seconds, has) in [
            ("runtime_heat", r.heat, true),
            ("runtime_cool", r.cool, view.can_cool()),
            ("runtime_fan", r.fan, view.has_fan()),
            ("runtime_aux", r.aux, view.has_aux_heat()),
        ] {
            if has {
                put(name, (seconds / 60).to_string());
            }
        }
    }
    if let Some(t) = view
        .d("outdoor_temperature")
        .or_else(|| view.s("outside_temperature"))
        .or_else(|| view.d("outside_temperature"))
    {
        put("outdoor_temperature", payload(t));
    }
    let away = view.d("auto_away").and_then(Value::as_f64).is_some_and(|a| a > 0.0) || truthy(view.d("away"));
    put("occupancy", if away { "away" } else { "home" }.into());
    put("fan_running", truthy(view.s("hvac_fan_state")).to_string());
    let leaf = truthy(view.d("eco").and_then(|e| e.get("leaf"))) || truthy(view.d("leaf"));
    put("eco", leaf.to_string());
    if let Some(volts) = view.d("battery_level").and_then(Value::as_f64) {
        put("battery", (((volts - 3.5) / 0.5 * 100.0).round().clamp(0.0, 100.0) as i64).to_string());
    }
    if let Some(rssi) = view.d("rssi").and_then(Value::as_f64) {
        put("rssi", format!("{:.1}", -rssi.abs()));
    }
    for (name, key) in [
        ("filter_replacement_needed", "filter_replacement_needed"),
        ("sunlight_correction_active", "sunlight_correction_active"),
        ("learning_mode", "learning_mode"),
        ("heat_pump_ready", "heatpump_ready"),
    ] {
        if let Some(v) = view.d(key) {
            put(name, payload(v).to_ascii_lowercase());
        }
    }
    if let Some(sec) = view.d("filter_runtime_sec").and_then(Value::as_f64) {
        put("filter_runtime_days", format!("{:.1}", sec / 86_400.0));
    }
    if let Some(t) = view.d("time_to_target").and_then(Value::as_i64).filter(|t| *t != 0) {
        put("time_to_target", (t.saturating_sub(view.now_s).max(0) / 60).to_string());
    }
    for name in ["compressor_lockout_timeout", "local_ip"] {
        if let Some(v) = view.d(name) {
            put(name, payload(v));
        }
    }
    let remaining =
        view.d("fan_timer_timeout").and_then(Value::as_i64).map_or(0, |t| t.saturating_sub(view.now_s).max(0) / 60);
    put("fan_timer_remaining", remaining.to_string());
    put("fan_duration", view.d("fan_timer_duration_minutes").map_or_else(|| "60".into(), payload));
    out
}

/// What a thermostat must have for an entity to be announced.
#[derive(Debug, Clone, Copy)]
enum Need {
    Nothing,
    Fan,
    Cooling,
    Humidifier,
    EmergencyHeat,
    AuxHeat,
}

impl Need {
    fn met(self, view: &View<'_>) -> bool {
        match self {
            Need::Nothing => true,
            Need::Fan => view.has_fan(),
            Need::Cooling => view.can_cool(),
            Need::Humidifier => view.has_humidifier(),
            Need::EmergencyHeat => view.has_emergency_heat(),
            Need::AuxHeat => view.has_aux_heat(),
        }
    }
}

/// (component, suffix, name, state topic, extra fields, what the thermostat needs)
type Sensor = (&'static str, &'static str, &'static str, &'static str, fn() -> Value, Need);

fn config_topic(naming: &Naming, serial: &str, component: &str, suffix: &str) -> String {
    format!("{}/{component}/nest_{serial}/{suffix}/config", naming.discovery)
}

/// Every discovery config topic roost may publish for a serial (to clear them).
pub fn discovery_topics(naming: &Naming, serial: &str) -> Vec<String> {
    let mut topics = vec![config_topic(naming, serial, "climate", "thermostat")];
    for (component, suffix, ..) in SENSORS.iter().chain(&CONTROLS) {
        topics.push(config_topic(naming, serial, component, suffix));
    }
    topics.push(config_topic(naming, serial, "humidifier", "humidifier"));
    topics
}

const SENSORS: [Sensor; 21] = [
    (
        "sensor",
        "temperature",
        "Temperature",
        "current_temperature",
        || json!({"unit_of_measurement": "°C", "device_class": "temperature", "state_class": "measurement"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "humidity",
        "Humidity",
        "current_humidity",
        || json!({"unit_of_measurement": "%", "device_class": "humidity", "state_class": "measurement"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "outdoor_temperature",
        "Outdoor Temperature",
        "outdoor_temperature",
        || json!({"unit_of_measurement": "°C", "device_class": "temperature", "state_class": "measurement"}),
        Need::Nothing,
    ),
    (
        "binary_sensor",
        "occupancy",
        "Occupancy",
        "occupancy",
        || json!({"payload_on": "home", "payload_off": "away", "device_class": "occupancy"}),
        Need::Nothing,
    ),
    (
        "binary_sensor",
        "fan",
        "Fan",
        "fan_running",
        || json!({"payload_on": "true", "payload_off": "false", "device_class": "running"}),
        Need::Fan,
    ),
    (
        "binary_sensor",
        "leaf",
        "Eco Mode",
        "eco",
        || json!({"payload_on": "true", "payload_off": "false", "device_class": "power"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "battery",
        "Battery",
        "battery",
        || json!({"unit_of_measurement": "%", "device_class": "battery", "state_class": "measurement"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "rssi",
        "WiFi Signal",
        "rssi",
        || json!({"unit_of_measurement": "dBm", "device_class": "signal_strength", "state_class": "measurement", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "binary_sensor",
        "filter_replacement",
        "Filter Replacement Needed",
        "filter_replacement_needed",
        || json!({"payload_on": "true", "payload_off": "false", "device_class": "problem", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "filter_runtime",
        "Filter Runtime",
        "filter_runtime_days",
        || json!({"unit_of_measurement": "d", "icon": "mdi:air-filter", "state_class": "total_increasing", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "time_to_target",
        "Time to Target",
        "time_to_target",
        || json!({"unit_of_measurement": "min", "icon": "mdi:clock-outline", "state_class": "measurement"}),
        Need::Nothing,
    ),
    (
        "binary_sensor",
        "sunlight_correction",
        "Sunlight Correction Active",
        "sunlight_correction_active",
        || json!({"payload_on": "true", "payload_off": "false", "icon": "mdi:weather-sunny", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "compressor_lockout",
        "Compressor Lockout",
        "compressor_lockout_timeout",
        || json!({"unit_of_measurement": "s", "icon": "mdi:timer-lock", "state_class": "measurement", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "binary_sensor",
        "learning_mode",
        "Learning Mode",
        "learning_mode",
        || json!({"payload_on": "true", "payload_off": "false", "icon": "mdi:school", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "binary_sensor",
        "heat_pump_ready",
        "Heat Pump Ready",
        "heat_pump_ready",
        || json!({"payload_on": "true", "payload_off": "false", "icon": "mdi:heat-pump", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "local_ip",
        "Local IP",
        "local_ip",
        || json!({"icon": "mdi:ip-network", "entity_category": "diagnostic"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "fan_timer_remaining",
        "Fan Timer Remaining",
        "fan_timer_remaining",
        || json!({"unit_of_measurement": "min", "icon": "mdi:fan-clock", "state_class": "measurement"}),
        Need::Fan,
    ),
    (
        "sensor",
        "runtime_heat",
        "Heating Runtime (24 h)",
        "runtime_heat",
        || json!({"unit_of_measurement": "min", "device_class": "duration", "state_class": "measurement", "icon": "mdi:fire"}),
        Need::Nothing,
    ),
    (
        "sensor",
        "runtime_cool",
        "Cooling Runtime (24 h)",
        "runtime_cool",
        || json!({"unit_of_measurement": "min", "device_class": "duration", "state_class": "measurement", "icon": "mdi:snowflake"}),
        Need::Cooling,
    ),
    (
        "sensor",
        "runtime_fan",
        "Fan Runtime (24 h)",
        "runtime_fan",
        || json!({"unit_of_measurement": "min", "device_class": "duration", "state_class": "measurement", "icon": "mdi:fan"}),
        Need::Fan,
    ),
    (
        "sensor",
        "runtime_aux",
        "Aux Heat Runtime (24 h)",
        "runtime_aux",
        || json!({"unit_of_measurement": "min", "device_class": "duration", "state_class": "measurement", "icon": "mdi:heat-wave"}),
        Need::AuxHeat,
    ),
];

/// Entities that also take commands: (component, suffix, name, state and command topic, extra
/// fields, what the thermostat needs).
const CONTROLS: [Sensor; 3] = [
    (
        "number",
        "fan_duration",
        "Fan Duration",
        "fan_duration",
        || json!({"unit_of_measurement": "min", "icon": "mdi:fan-clock", "min": 15, "max": 1440, "step": 15, "mode": "slider"}),
        Need::Fan,
    ),
    (
        "switch",
        "eco_mode",
        "Eco",
        "eco_mode",
        || json!({"payload_on": "ON", "payload_off": "OFF", "icon": "mdi:leaf"}),
        Need::Nothing,
    ),
    (
        "switch",
        "emergency_heat",
        "Emergency Heat",
        "emergency_heat",
        || json!({"payload_on": "ON", "payload_off": "OFF", "icon": "mdi:heat-wave"}),
        Need::EmergencyHeat,
    ),
];

fn common(naming: &Naming, serial: &str, name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "device".into(),
        json!({"identifiers": [format!("nolongerevil_{serial}")], "name": name, "model": "Nest Thermostat", "manufacturer": "Google Nest", "sw_version": "roost"}),
    );
    m.insert(
        "availability".into(),
        json!([
            {"topic": naming.availability(serial), "payload_available": "online", "payload_not_available": "offline"},
            {"topic": naming.bridge_availability(), "payload_available": "online", "payload_not_available": "offline"},
        ]),
    );
    m.insert("availability_mode".into(), json!("all"));
    m
}

/// Discovery configs: (topic, payload). The climate entity's config depends only on what the
/// thermostat can do and its name. A topic with an empty payload removes an entity that does not
/// apply (a fan entity without a fan; everything but the climate entity with
/// `MQTT_MINIMAL_DISCOVERY`).
pub fn discovery(naming: &Naming, serial: &str, view: View<'_>) -> Vec<(String, String)> {
    if !naming.ha_discovery {
        return Vec::new();
    }
    let name = view.name(serial);
    let t = |n: &str| naming.ha(serial, n);
    let mut climate = Map::new();
    climate.insert("unique_id".into(), json!(format!("nolongerevil_{serial}")));
    climate.insert("name".into(), Value::Null);
    climate.insert("default_entity_id".into(), json!(format!("climate.nest_{serial}")));
    climate.extend(common(naming, serial, &name));
    climate.insert("temperature_unit".into(), json!("C"));
    climate.insert("precision".into(), json!(0.5));
    climate.insert("temp_step".into(), json!(0.5));
    climate.insert("current_temperature_topic".into(), json!(t("current_temperature")));
    climate.insert("current_humidity_topic".into(), json!(t("current_humidity")));
    climate.insert("mode_command_topic".into(), json!(t("mode/set")));
    climate.insert("mode_state_topic".into(), json!(t("mode")));
    climate.insert("modes".into(), json!(view.modes()));
    climate.insert("action_topic".into(), json!(t("action")));
    // Commands the thermostat has not confirmed yet (roost's own).
    climate.insert("json_attributes_topic".into(), json!(t("attributes")));
    if view.has_fan() {
        climate.insert("fan_mode_command_topic".into(), json!(t("fan_mode/set")));
        climate.insert("fan_mode_state_topic".into(), json!(t("fan_mode")));
        climate.insert("fan_modes".into(), json!(["auto", "on"]));
    }
    climate.insert("preset_mode_command_topic".into(), json!(t("preset/set")));
    climate.insert("preset_mode_state_topic".into(), json!(t("preset")));
    climate.insert("preset_modes".into(), json!(["home", "away", "eco"]));
    climate.insert("min_temp".into(), json!(9));
    climate.insert("max_temp".into(), json!(32));
    climate.insert("optimistic".into(), json!(false));
    climate.insert("qos".into(), json!(1));
    // Every setpoint topic in every mode: a temperature sent with a mode change (or in off)
    // always has a topic, and a mode change never changes the config.
    for (key, topic) in [
        ("temperature", "target_temperature"),
        ("temperature_low", "target_temperature_low"),
        ("temperature_high", "target_temperature_high"),
    ] {
        climate.insert(format!("{key}_command_topic"), json!(t(&format!("{topic}/set"))));
        climate.insert(format!("{key}_state_topic"), json!(t(topic)));
    }
    let mut out = vec![(config_topic(naming, serial, "climate", "thermostat"), Value::Object(climate).to_string())];
    let announced = |need: Need| !naming.minimal && need.met(&view);
    for (controls, list) in [(false, &SENSORS[..]), (true, &CONTROLS[..])] {
        for (component, suffix, label, state, extra, need) in list {
            let topic = config_topic(naming, serial, component, suffix);
            if !announced(*need) {
                out.push((topic, String::new()));
                continue;
            }
            let mut m = entity(naming, serial, &name, component, suffix, label);
            m.insert("state_topic".into(), json!(t(state)));
            if controls {
                m.insert("command_topic".into(), json!(t(&format!("{state}/set"))));
            }
            if let Value::Object(e) = extra() {
                m.extend(e);
            }
            if controls {
                m.insert("qos".into(), json!(1));
            }
            out.push((topic, Value::Object(m).to_string()));
        }
    }
    let topic = config_topic(naming, serial, "humidifier", "humidifier");
    if announced(Need::Humidifier) {
        let mut m = entity(naming, serial, &name, "humidifier", "humidifier", "Humidifier");
        m.insert("device_class".into(), json!("humidifier"));
        m.insert("state_topic".into(), json!(t("humidifier")));
        m.insert("command_topic".into(), json!(t("humidifier/set")));
        m.insert("target_humidity_state_topic".into(), json!(t("target_humidity")));
        m.insert("target_humidity_command_topic".into(), json!(t("target_humidity/set")));
        m.insert("current_humidity_topic".into(), json!(t("current_humidity")));
        m.insert("action_topic".into(), json!(t("humidifier_action")));
        m.insert("min_humidity".into(), json!(10));
        m.insert("max_humidity".into(), json!(60));
        m.insert("qos".into(), json!(1));
        out.push((topic, Value::Object(m).to_string()));
    } else {
        out.push((topic, String::new()));
    }
    out
}

/// The fields every entity but the climate one starts with.
fn entity(
    naming: &Naming,
    serial: &str,
    device_name: &str,
    component: &str,
    suffix: &str,
    label: &str,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("unique_id".into(), json!(format!("nolongerevil_{serial}_{suffix}")));
    m.insert("name".into(), json!(label));
    m.insert("default_entity_id".into(), json!(format!("{component}.nest_{serial}_{suffix}")));
    m.extend(common(naming, serial, device_name));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> Naming {
        Naming {
            prefix: "nolongerevil".into(),
            discovery: "homeassistant".into(),
            publish_raw: true,
            ha_discovery: true,
            minimal: false,
        }
    }

    fn f(v: Value) -> Fields {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn raw_payloads_are_json_scalars() {
        let device = f(json!({"has_fan": false, "current_temperature": 20.5, "where_id": "x", "n": null}));
        let view = View { device: Some(&device), ..Default::default() };
        let topics = raw_topics(&naming(), "S", "device", &device, view);
        let get = |t: &str| topics.iter().find(|(k, _)| k == t).map(|(_, v)| v.as_str());
        assert_eq!(get("nolongerevil/S/device/has_fan"), Some("false"));
        assert_eq!(get("nolongerevil/S/device/current_temperature"), Some("20.5"));
        assert_eq!(get("nolongerevil/S/device/where_id"), Some("x"));
        assert_eq!(get("nolongerevil/S/device/n"), Some("null"));
        assert_eq!(get("nolongerevil/S/device/fan_timer_active"), Some("false"));
        assert_eq!(get("nolongerevil/S/device/away"), Some("false"));
    }

    #[test]
    fn field_names_that_are_not_one_topic_level_are_skipped() {
        let device = f(json!({"a+b": 1, "c#": 2, "x/set": 3, "n\u{0}ul": 4, "": 5, "ok": 6}));
        let view = View { device: Some(&device), ..Default::default() };
        let topics = raw_topics(&naming(), "S", "device", &device, view);
        let fields: Vec<&str> = topics.iter().filter_map(|(t, _)| t.strip_prefix("nolongerevil/S/device/")).collect();
        assert_eq!(fields, ["ok", "fan_timer_active", "away"]);
        assert!(topics.iter().all(|(t, _)| valid_topic(t)));
        assert!(!valid_topic("a/+/b") && !valid_topic("a/#") && !valid_topic("") && valid_topic("a/b"));
    }

    #[test]
    fn discovery_signature_follows_capabilities_not_mode() {
        let device = f(json!({"has_fan": true}));
        let sig = |mode: &str, can_cool: bool| {
            let shared = f(json!({"target_temperature_type": mode, "can_cool": can_cool}));
            View { device: Some(&device), shared: Some(&shared), ..Default::default() }.discovery_signature("S")
        };
        for mode in ["cool", "emergency", "range", "off"] {
            assert_eq!(sig("heat", true), sig(mode, true), "{mode}");
        }
        assert_ne!(sig("heat", true), sig("heat", false));
    }

    #[test]
    fn the_climate_config_is_the_same_in_every_mode() {
        let device = f(json!({"has_fan": true}));
        let config = |mode: &str| {
            let shared = f(json!({"target_temperature_type": mode}));
            let view = View { device: Some(&device), shared: Some(&shared), ..Default::default() };
            discovery(&naming(), "S", view)
        };
        let heat = config("heat");
        for mode in ["cool", "range", "off", "emergency"] {
            assert_eq!(heat, config(mode), "{mode}");
        }
        let climate: Value = serde_json::from_str(&heat[0].1).unwrap();
        for key in ["temperature", "temperature_low", "temperature_high"] {
            assert!(climate[format!("{key}_command_topic")].is_string(), "{key}");
            assert!(climate[format!("{key}_state_topic")].is_string(), "{key}");
        }
    }

    #[test]
    fn entities_follow_what_the_thermostat_has() {
        let config = |device: Value, naming: &Naming| {
            let device = f(device);
            let shared = f(json!({"target_temperature_type": "heat"}));
            let view = View { device: Some(&device), shared: Some(&shared), ..Default::default() };
            discovery(naming, "S", view)
        };
        let announced = |configs: &[(String, String)], part: &str| {
            configs.iter().find(|(t, _)| t.contains(part)).map(|(_, p)| !p.is_empty()).unwrap()
        };
        let plain = config(json!({}), &naming());
        let full = config(json!({"has_fan": true, "has_humidifier": true, "has_emer_heat": true}), &naming());
        for part in [
            "/humidifier/nest_S/",
            "/switch/nest_S/emergency_heat/",
            "/sensor/nest_S/runtime_aux/",
            "/sensor/nest_S/runtime_fan/",
        ] {
            assert!(!announced(&plain, part), "{part}");
            assert!(announced(&full, part), "{part}");
        }
        for part in ["/switch/nest_S/eco_mode/", "/sensor/nest_S/runtime_heat/"] {
            assert!(announced(&plain, part), "{part}");
        }
        let humidifier: Value =
            serde_json::from_str(&full.iter().find(|(t, _)| t.contains("/humidifier/")).unwrap().1).unwrap();
        assert_eq!(humidifier["target_humidity_command_topic"], "nolongerevil/S/ha/target_humidity/set");
        assert_eq!((humidifier["min_humidity"].as_i64(), humidifier["max_humidity"].as_i64()), (Some(10), Some(60)));
        let minimal = config(json!({"has_fan": true, "has_humidifier": true}), &Naming { minimal: true, ..naming() });
        assert_eq!(minimal.iter().filter(|(_, p)| !p.is_empty()).count(), 1, "only the climate entity");
        assert!(minimal[0].0.contains("/climate/"));
        assert_eq!(minimal.len(), discovery_topics(&naming(), "S").len());
    }

    #[test]
    fn ha_state_follows_the_mode() {
        let device = f(json!({"current_humidity": 44, "battery_level": 3.9, "has_fan": true}));
        let shared = f(
            json!({"target_temperature_type": "range", "target_temperature_low": 19.0, "target_temperature_high": 24.0, "target_temperature": 21.0, "hvac_heater_state": true, "current_temperature": 20.5}),
        );
        let view =
            View { device: Some(&device), shared: Some(&shared), structure: None, now_s: 1000, ..Default::default() };
        let state = ha_state(&naming(), "S", view);
        let get = |t: &str| state.iter().find(|(k, _)| k.ends_with(t)).map(|(_, v)| v.as_str());
        assert_eq!(get("/ha/mode"), Some("heat_cool"));
        assert_eq!(get("/ha/target_temperature"), Some("None"), "hidden outside heat/cool");
        assert_eq!(get("/ha/target_temperature_low"), Some("19.0"));
        assert_eq!(get("/ha/action"), Some("heating"));
        assert_eq!(get("/ha/battery"), Some("80"));
        assert_eq!(get("/ha/fan_mode"), Some("auto"));
        assert_eq!(get("/ha/preset"), Some("home"));
        assert_eq!(get("/ha/eco_mode"), Some("OFF"));
        assert_eq!(get("/ha/emergency_heat"), Some("OFF"));
        assert_eq!(get("/ha/humidifier"), None, "no humidifier");
    }

    #[test]
    fn ha_state_of_presets_humidity_and_runtime() {
        let device = f(
            json!({"has_humidifier": true, "has_fan": true, "has_emer_heat": true, "target_humidity_enabled": true, "target_humidity": 35, "humidifier_state": true}),
        );
        let shared = f(json!({"target_temperature_type": "emergency", "target_temperature": 20.0}));
        let structure = f(json!({"manual_eco_all": true, "manual_eco_timestamp": 10}));
        let runtime = Stages { heat: 3600, cool: 0, fan: 59, aux: 120 };
        let view = View {
            device: Some(&device),
            shared: Some(&shared),
            structure: Some(&structure),
            asked: Some(Preset::Eco),
            runtime: Some(runtime),
            now_s: 1000,
        };
        let state = ha_state(&naming(), "S", view);
        let get = |t: &str| state.iter().find(|(k, _)| k.ends_with(t)).map(|(_, v)| v.as_str());
        assert_eq!(get("/ha/mode"), Some("heat"));
        assert_eq!(get("/ha/target_temperature"), Some("20.0"));
        assert_eq!(get("/ha/target_temperature_low"), Some("None"));
        assert_eq!(get("/ha/preset"), Some("eco"));
        assert_eq!(get("/ha/eco_mode"), Some("ON"));
        assert_eq!(get("/ha/emergency_heat"), Some("ON"));
        assert_eq!(
            (get("/ha/humidifier"), get("/ha/target_humidity"), get("/ha/humidifier_action")),
            (Some("ON"), Some("35"), Some("humidifying"))
        );
        assert_eq!(
            (get("/ha/runtime_heat"), get("/ha/runtime_fan"), get("/ha/runtime_aux")),
            (Some("60"), Some("0"), Some("2"))
        );
    }

    #[test]
    fn discovery_matches_capabilities_and_layout() {
        let device = f(json!({"has_fan": false}));
        let shared = f(json!({"target_temperature_type": "heat", "can_cool": false}));
        let view =
            View { device: Some(&device), shared: Some(&shared), structure: None, now_s: 0, ..Default::default() };
        let configs = discovery(&naming(), "S", view);
        let climate: Value = serde_json::from_str(&configs[0].1).unwrap();
        assert_eq!(climate["modes"], json!(["off", "heat"]));
        assert!(climate.get("fan_modes").is_none());
        assert_eq!(climate["temperature_command_topic"], "nolongerevil/S/ha/target_temperature/set");
        assert_eq!(climate["availability_mode"], "all");
        let fan = configs.iter().find(|(t, _)| t.contains("/binary_sensor/nest_S/fan/")).unwrap();
        assert_eq!(fan.1, "", "no fan entity without a fan");
        assert_eq!(configs.len(), discovery_topics(&naming(), "S").len());
    }
}
