// roost web UI: one card per thermostat, live through /api/events, controls through /command.
"use strict";

const base = (document.body.dataset.ingressPath || "").replace(/\/$/, "");
const KEY = "roostApiKey";
const DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]; // day 0 is Monday
const cards = new Map();
let events = null;

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

function withToken(path) {
  const key = apiKey();
  if (!key) return base + path;
  return base + path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(key);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(base + path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) {
    askForKey();
    throw new Error((body && body.error) || "API key required");
  }
  if (!response.ok) throw new Error((body && (body.message || body.error)) || ("HTTP " + response.status));
  return body;
}

function showError(message) {
  const el = document.getElementById("error");
  el.textContent = message || "";
  el.hidden = !message;
}

function askForKey() {
  document.getElementById("key-panel").hidden = false;
  document.getElementById("key-input").focus();
}

document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("key-input").value.trim());
  document.getElementById("key-panel").hidden = true;
  start();
});

document.getElementById("add-toggle").addEventListener("click", async () => {
  const panel = document.getElementById("add-panel");
  panel.hidden = !panel.hidden;
  if (!panel.hidden) {
    try {
      const config = await api("/api/config");
      document.getElementById("entry-url").textContent = config.cloudregisterurl;
    } catch (err) { showError(err.message); }
  }
});

document.getElementById("pair-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const result = document.getElementById("pair-result");
  const code = document.getElementById("pair-code").value.replace(/[^A-Za-z0-9]/g, "").toUpperCase();
  result.className = "";
  try {
    const r = await api("/api/register", { method: "POST", body: JSON.stringify({ code, userId: "homeassistant" }) });
    if (!r.success) throw new Error(r.message);
    result.textContent = r.message;
    document.getElementById("pair-code").value = "";
    await loadDevices();
  } catch (err) {
    result.className = "error";
    result.textContent = err.message;
  }
});

// Temperatures travel in °C; a thermostat set to °F shows °F.
function toShown(c, scale) { return scale === "F" ? c * 9 / 5 + 32 : c; }
function fromShown(v, scale) { return scale === "F" ? (v - 32) * 5 / 9 : v; }
function fmt(c, scale) {
  if (c === null || c === undefined || Number.isNaN(Number(c))) return "–";
  return toShown(Number(c), scale).toFixed(1) + "°" + (scale === "F" ? "F" : "C");
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

async function command(card, name, value) {
  card.error.hidden = true;
  try {
    await api("/command", { method: "POST", body: JSON.stringify({ serial: card.serial, command: name, value }) });
    await refresh(card.serial);
  } catch (err) {
    card.error.textContent = err.message;
    card.error.hidden = false;
  }
}

function createCard(serial) {
  const node = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.serial = serial;
  const card = { serial, node, status: null, range: "24h", pending: null, error: node.querySelector(".card-error") };
  node.querySelector(".mode").addEventListener("change", (e) => command(card, "set_mode", e.target.value));
  node.querySelector(".eco").addEventListener("click", () => command(card, "set_away", !isAway(card.status)));
  node.querySelectorAll("[data-fan]").forEach((b) => b.addEventListener("click", () => {
    const v = b.dataset.fan;
    command(card, "set_fan", /^\d+$/.test(v) ? Number(v) : v);
  }));
  node.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => {
    card.range = b.dataset.range;
    node.querySelectorAll("[data-range]").forEach((x) => x.classList.toggle("selected", x === b));
    drawChart(card);
  }));
  node.querySelector(".delete").addEventListener("click", async () => {
    if (!confirm("Delete " + (card.status ? card.status.name : serial) + "? roost forgets its state and pairing.")) return;
    try {
      await api("/api/device", { method: "DELETE", body: JSON.stringify({ serial }) });
      removeCard(serial);
    } catch (err) { card.error.textContent = err.message; card.error.hidden = false; }
  });
  node.querySelector(".schedule").addEventListener("toggle", (e) => { if (e.target.open) loadSchedule(card); });
  cards.set(serial, card);
  const list = document.getElementById("devices");
  document.getElementById("empty")?.remove();
  list.appendChild(node);
  return card;
}

function removeCard(serial) {
  const card = cards.get(serial);
  if (card) card.node.remove();
  cards.delete(serial);
  if (cards.size === 0) showEmpty();
}

function showEmpty() {
  const list = document.getElementById("devices");
  if (!document.getElementById("empty")) {
    const p = document.createElement("p");
    p.id = "empty";
    p.className = "muted";
    p.textContent = "No thermostats yet. Use “Add a thermostat”.";
    list.appendChild(p);
  }
}

function isAway(s) { return !!s && (s.away === true || s.eco_mode === "manual-eco"); }

function setpointControl(card, label, field, value, scale) {
  const wrap = document.createElement("div");
  wrap.className = "setpoint";
  wrap.innerHTML = '<span class="muted"></span><button type="button" class="down" aria-label="lower">−</button><output></output><button type="button" class="up" aria-label="raise">+</button>';
  wrap.querySelector("span").textContent = label;
  const out = wrap.querySelector("output");
  out.dataset.field = field;
  out.value = fmt(value, scale);
  const step = (delta) => {
    const current = card.pending && card.pending[field] !== undefined ? card.pending[field] : Number(value);
    const next = Math.round((current + delta) * 2) / 2;
    card.pending = Object.assign({}, card.pending || {}, { [field]: next });
    out.value = fmt(next, scale);
    clearTimeout(card.sendTimer);
    // Several presses travel as one command.
    card.sendTimer = setTimeout(() => sendSetpoints(card), 500);
  };
  const unit = scale === "F" ? 5 / 9 : 0.5;
  wrap.querySelector(".down").addEventListener("click", () => step(-unit));
  wrap.querySelector(".up").addEventListener("click", () => step(unit));
  return wrap;
}

function sendSetpoints(card) {
  const p = card.pending;
  card.pending = null;
  if (!p) return;
  if (p.target_temperature !== undefined) return command(card, "set_temperature", p.target_temperature);
  const range = {};
  if (p.target_temperature_low !== undefined) range.low = p.target_temperature_low;
  if (p.target_temperature_high !== undefined) range.high = p.target_temperature_high;
  return command(card, "set_temperature", range);
}

function render(card) {
  const s = card.status;
  const n = card.node;
  const scale = s.temperature_scale || "C";
  n.querySelector(".name").textContent = s.name || s.serial;
  n.querySelector(".serial").textContent = s.serial;
  const online = n.querySelector(".online");
  online.textContent = s.is_available ? "online" : "offline";
  online.className = "badge online " + (s.is_available ? "on" : "off");
  n.querySelector(".current").textContent = fmt(s.current_temperature, scale);
  n.querySelector(".humidity").textContent = s.humidity !== null && s.humidity !== undefined ? s.humidity + "% humidity" : "";
  const h = s.hvac || {};
  const action = s.mode === "off" ? "off" : (h.heater || h.heat_x2 || h.heat_x3 || h.aux_heat || h.emer_heat || h.alt_heat) ? "heating"
    : (h.ac || h.cool_x2 || h.cool_x3) ? "cooling" : (h.fan || s.fan_timer_active) ? "fan" : "idle";
  const badge = n.querySelector(".action");
  badge.textContent = action;
  badge.className = "badge action " + action;

  const caps = s.capabilities || {};
  const modes = [["off", "Off"]];
  if (caps.can_heat !== false) modes.push(["heat", "Heat"]);
  if (caps.can_cool !== false) modes.push(["cool", "Cool"]);
  if (caps.can_heat !== false && caps.can_cool !== false) modes.push(["heat-cool", "Heat · Cool"]);
  if (caps.has_emer_heat) modes.push(["emergency", "Emergency heat"]);
  const select = n.querySelector(".mode");
  select.replaceChildren(...modes.map(([v, label]) => new Option(label, v)));
  select.value = s.mode === "range" ? "heat-cool" : (s.mode || "off");

  const eco = n.querySelector(".eco");
  eco.textContent = isAway(s) ? "Eco: on" : "Eco: off";
  eco.setAttribute("aria-pressed", isAway(s) ? "true" : "false");

  if (!card.pending) {
    const box = n.querySelector(".setpoints");
    box.replaceChildren();
    if (s.mode === "heat" || s.mode === "cool" || s.mode === "emergency") {
      box.appendChild(setpointControl(card, "Target", "target_temperature", s.target_temperature, scale));
    } else if (s.mode === "range") {
      box.appendChild(setpointControl(card, "Heat to", "target_temperature_low", s.target_temperature_low, scale));
      box.appendChild(setpointControl(card, "Cool to", "target_temperature_high", s.target_temperature_high, scale));
    }
  }
  n.querySelector(".fan").hidden = !caps.has_fan;
  n.querySelector(".seen").textContent = "last contact " + ago(s.last_seen);
}

function drawChart(card) {
  const img = card.node.querySelector(".chart");
  img.src = withToken("/api/history/chart.svg?serial=" + encodeURIComponent(card.serial) + "&range=" + card.range + "&t=" + Date.now());
}

async function refresh(serial) {
  try {
    const status = await api("/status?serial=" + encodeURIComponent(serial));
    const card = cards.get(serial) || createCard(serial);
    card.status = status;
    render(card);
    clearTimeout(card.chartTimer);
    card.chartTimer = setTimeout(() => drawChart(card), 300);
  } catch (err) {
    if (/not found/i.test(err.message)) removeCard(serial);
    else showError(err.message);
  }
}

async function loadDevices() {
  const list = await api("/api/devices");
  const seen = new Set();
  for (const status of list.devices) {
    seen.add(status.serial);
    const card = cards.get(status.serial) || createCard(status.serial);
    card.status = status;
    render(card);
    drawChart(card);
  }
  for (const serial of [...cards.keys()]) if (!seen.has(serial)) removeCard(serial);
  if (cards.size === 0) showEmpty();
}

function clock(seconds) {
  const h = String(Math.floor(seconds / 3600)).padStart(2, "0");
  const m = String(Math.floor(seconds % 3600 / 60)).padStart(2, "0");
  return h + ":" + m;
}

async function loadSchedule(card) {
  const body = card.node.querySelector(".schedule-body");
  body.textContent = "Loading…";
  try {
    const r = await api("/api/schedule?serial=" + encodeURIComponent(card.serial));
    renderSchedule(card, r.schedule);
  } catch (err) { body.textContent = err.message; }
}

function entriesOf(day) {
  if (!day) return [];
  const list = Array.isArray(day) ? day : Object.keys(day).sort((a, b) => a - b).map((k) => day[k]);
  return list.filter((e) => e && e.entry_type !== "continuation").sort((a, b) => a.time - b.time);
}

function renderSchedule(card, schedule) {
  const body = card.node.querySelector(".schedule-body");
  const mode = (schedule && (schedule.schedule_mode || schedule.mode)) || "HEAT";
  const scale = (card.status && card.status.temperature_scale) || "C";
  const table = document.createElement("table");
  DAYS.forEach((name, index) => {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    cell.dataset.day = String(index);
    for (const e of entriesOf(schedule && schedule.days && schedule.days[String(index)])) addEntry(cell, mode, e, scale);
    const add = document.createElement("button");
    add.type = "button";
    add.textContent = "+";
    add.className = "add-entry";
    add.addEventListener("click", () => addEntry(cell, mode, null, scale, add));
    cell.appendChild(add);
  });
  const save = document.createElement("button");
  save.type = "button";
  save.textContent = "Save schedule";
  save.addEventListener("click", () => saveSchedule(card, table, mode, scale));
  const info = document.createElement("p");
  info.className = "muted";
  info.textContent = (schedule ? mode + " schedule" : "No schedule yet") + " · times are local to the thermostat";
  body.replaceChildren(info, table, save);
}

function addEntry(cell, mode, entry, scale, before) {
  const div = document.createElement("div");
  div.className = "entry";
  const time = document.createElement("input");
  time.type = "time";
  time.value = clock(entry ? entry.time : 7 * 3600);
  div.appendChild(time);
  const temps = mode === "RANGE" ? [["temp-min", 18], ["temp-max", 24]] : [["temp", 20]];
  for (const [field, fallback] of temps) {
    const input = document.createElement("input");
    input.type = "number";
    input.step = "0.5";
    input.dataset.field = field;
    input.value = toShown(entry && entry[field] !== undefined ? entry[field] : fallback, scale).toFixed(1);
    div.appendChild(input);
  }
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.setAttribute("aria-label", "remove");
  remove.addEventListener("click", () => div.remove());
  div.appendChild(remove);
  cell.insertBefore(div, before || cell.querySelector(".add-entry"));
}

async function saveSchedule(card, table, mode, scale) {
  const days = {};
  table.querySelectorAll("td[data-day]").forEach((cell) => {
    const entries = [...cell.querySelectorAll(".entry")].map((div) => {
      const [hh, mm] = div.querySelector("input[type=time]").value.split(":").map(Number);
      const e = { time: hh * 3600 + mm * 60, type: mode, entry_type: "setpoint" };
      div.querySelectorAll("input[data-field]").forEach((i) => { e[i.dataset.field] = Math.round(fromShown(Number(i.value), scale) * 10) / 10; });
      return e;
    });
    days[cell.dataset.day] = Object.fromEntries(entries.sort((a, b) => a.time - b.time).map((e, i) => [String(i), e]));
  });
  await command(card, "set_schedule", { ver: 2, name: "roost", schedule_mode: mode, days });
  if (card.error.hidden) loadSchedule(card);
}

function connectEvents() {
  if (events) events.close();
  events = new EventSource(withToken("/api/events?events=availability,pairing"));
  const dot = document.getElementById("live");
  events.onopen = () => dot.classList.add("live");
  events.onerror = () => dot.classList.remove("live"); // the browser reconnects with Last-Event-ID
  events.onmessage = (e) => { try { refresh(JSON.parse(e.data).serial); } catch (_) { /* not ours */ } };
  events.addEventListener("availability", (e) => { try { refresh(JSON.parse(e.data).serial); } catch (_) { /* ignore */ } });
  events.addEventListener("pairing", () => loadDevices().catch((err) => showError(err.message)));
  events.addEventListener("reset", () => loadDevices().catch((err) => showError(err.message)));
}

async function start() {
  showError("");
  try {
    await loadDevices();
    connectEvents();
  } catch (err) {
    showError(err.message);
  }
}

setInterval(() => cards.forEach((card) => { if (card.status) card.node.querySelector(".seen").textContent = "last contact " + ago(card.status.last_seen); }), 15000);
start();
