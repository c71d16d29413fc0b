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
  const card = { serial, node, status: null, range: "24h", pending: null, points: [], span: DAY, cursor: null, error: node.querySelector(".card-error") };
  node.querySelector(".mode").addEventListener("change", (e) => command(card, "set_mode", e.target.value));
  node.querySelector(".preset").addEventListener("change", (e) => command(card, "set_preset", e.target.value));
  node.querySelector(".emergency").addEventListener("click", () =>
    command(card, "set_mode", card.status && card.status.mode === "emergency" ? "heat" : "emergency"));
  const humidity = (delta) => {
    const s = card.status || {};
    const current = Number.isFinite(Number(s.target_humidity)) && s.target_humidity !== null ? Number(s.target_humidity) : 35;
    const next = Math.min(60, Math.max(10, current + delta));
    // The firmware applies a target only while humidity control is on: the enable goes first.
    command(card, "set_device_setting", { target_humidity_enabled: true, target_humidity: next });
  };
  node.querySelector(".humidity-down").addEventListener("click", () => humidity(-5));
  node.querySelector(".humidity-up").addEventListener("click", () => humidity(5));
  node.querySelector(".humidity-toggle").addEventListener("click", () =>
    command(card, "set_device_setting", { target_humidity_enabled: !(card.status && card.status.target_humidity_enabled) }));
  const chart = node.querySelector(".chart");
  const readout = (e) => showReadout(card, e.clientX);
  chart.addEventListener("pointermove", readout);
  chart.addEventListener("pointerdown", readout);
  chart.addEventListener("pointerleave", () => { card.cursor = null; renderChart(card); });
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
  // A command the thermostat has not confirmed yet (roost's `pending`).
  const waiting = n.querySelector(".waiting");
  waiting.hidden = !s.pending;
  if (s.pending) {
    waiting.title = "waiting for the thermostat to confirm " + Object.keys(s.pending.fields).join(", ")
      + (s.pending.expires ? "; dropped at " + new Date(s.pending.expires).toLocaleTimeString() + " if it stays away" : "");
  }
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

  n.querySelector(".preset").value = s.preset || (s.away ? "away" : "home");
  const emergency = n.querySelector(".emergency");
  emergency.hidden = !caps.has_emer_heat;
  emergency.setAttribute("aria-pressed", s.mode === "emergency" ? "true" : "false");
  const humidityRow = n.querySelector(".humidity-target");
  humidityRow.hidden = !caps.has_humidifier;
  n.querySelector(".humidity-value").value = s.target_humidity_enabled && s.target_humidity !== null && s.target_humidity !== undefined
    ? s.target_humidity + " %" : "off";
  const toggle = n.querySelector(".humidity-toggle");
  toggle.textContent = s.target_humidity_enabled ? "Turn off" : "Turn on";

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

const SVG = "http://www.w3.org/2000/svg";
const HOUR = 3600000;
const DAY = 24 * HOUR;

function svgEl(parent, name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}

function hhmm(t) {
  const d = new Date(t);
  return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
}

function weekday(t) { return new Date(t).toLocaleDateString(undefined, { weekday: "short" }); }

// The chart and the runtime bars, from the JSON routes; drawn here so that text stays at text
// size on any screen and the value under the finger or pointer can be shown.
async function drawChart(card) {
  const serial = encodeURIComponent(card.serial);
  const tz = -new Date().getTimezoneOffset();
  try {
    const [history, runtime] = await Promise.all([
      api("/api/history?serial=" + serial + "&since=" + card.range),
      api("/api/runtime?serial=" + serial + "&days=7&tz=" + tz),
    ]);
    card.points = history.points || [];
    card.span = card.range === "7d" ? 7 * DAY : DAY;
    renderChart(card);
    renderRuntime(card, runtime.days || []);
  } catch (err) {
    card.error.textContent = err.message;
    card.error.hidden = false;
  }
}

function chartGeometry(card) {
  const svg = card.node.querySelector(".chart");
  const width = Math.max(200, Math.round(svg.getBoundingClientRect().width || 320));
  const height = Math.max(160, Math.round(svg.getBoundingClientRect().height || 220));
  const now = Date.now();
  const g = { svg, width, height, left: 44, right: 10, top: 10, bottom: 26, to: now, from: now - (card.span || DAY) };
  g.plotWidth = width - g.left - g.right;
  g.x = (t) => g.left + (t - g.from) / (g.to - g.from) * g.plotWidth;
  return g;
}

function renderChart(card) {
  const g = chartGeometry(card);
  const { svg, width, height } = g;
  const scale = (card.status && card.status.temperature_scale) || "C";
  // One SVG unit is one CSS pixel, so labels render at the page's text size.
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.replaceChildren();
  const points = (card.points || []).filter((p) => p.at <= g.to);
  const values = [];
  for (const p of points) {
    for (const k of ["current_temperature", "target_temperature", "target_temperature_low", "target_temperature_high"]) {
      if (p[k] !== null && p[k] !== undefined) values.push(toShown(p[k], scale));
    }
  }
  if (values.length === 0) {
    svgEl(svg, "text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "No history yet");
    return;
  }
  let min = Math.floor(Math.min(...values) - 0.5);
  let max = Math.ceil(Math.max(...values) + 0.5);
  if (max - min < 4) { min -= 1; max += 1; }
  const y = (v) => g.top + (max - v) / (max - min) * (height - g.top - g.bottom);
  g.y = y;
  const end = (i) => (i + 1 < points.length ? points[i + 1].at : g.to);
  // Heating and cooling as bands behind the lines.
  points.forEach((p, i) => {
    const x0 = Math.max(g.left, g.x(p.at));
    const x1 = g.x(end(i));
    if (x1 <= x0) return;
    if (p.heating) svgEl(svg, "rect", { class: "heating", x: x0, y: g.top, width: x1 - x0, height: height - g.top - g.bottom });
    if (p.cooling) svgEl(svg, "rect", { class: "cooling", x: x0, y: g.top, width: x1 - x0, height: height - g.top - g.bottom });
  });
  // Temperature grid and labels.
  const step = [0.5, 1, 2, 5, 10].find((s) => (max - min) / s <= 5) || 10;
  for (let v = Math.ceil(min / step) * step; v <= max; v += step) {
    svgEl(svg, "line", { class: "grid", x1: g.left, x2: width - g.right, y1: y(v), y2: y(v) });
    svgEl(svg, "text", { x: g.left - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(step < 1 ? 1 : 0) + "°");
  }
  // Time of day (24 h) or days (7 days) along the bottom.
  const ticks = [];
  if (card.span === DAY) {
    const every = width < 420 ? 6 : 3;
    const first = new Date(g.from);
    first.setMinutes(0, 0, 0);
    for (let t = first.getTime() + HOUR; t <= g.to; t += HOUR) {
      if (new Date(t).getHours() % every === 0) ticks.push([t, hhmm(t)]);
    }
  } else {
    const first = new Date(g.from);
    first.setHours(24, 0, 0, 0);
    for (let t = first.getTime(); t <= g.to; t += DAY) ticks.push([t, weekday(t)]);
  }
  for (const [t, label] of ticks) {
    svgEl(svg, "line", { class: "grid", x1: g.x(t), x2: g.x(t), y1: g.top, y2: height - g.bottom });
    svgEl(svg, "text", { x: g.x(t), y: height - 8, "text-anchor": "middle" }, label);
  }
  // Setpoints as steps, the measured temperature as a line.
  for (const key of ["target_temperature", "target_temperature_low", "target_temperature_high"]) {
    let d = "";
    points.forEach((p, i) => {
      const used = key === "target_temperature" ? ["heat", "cool", "emergency"].includes(p.mode) : p.mode === "range";
      if (!used || p[key] === null || p[key] === undefined) return;
      const v = y(toShown(p[key], scale));
      d += "M" + Math.max(g.left, g.x(p.at)).toFixed(1) + " " + v.toFixed(1) + "H" + g.x(end(i)).toFixed(1);
    });
    if (d) svgEl(svg, "path", { class: "setpoint", d });
  }
  const line = points.filter((p) => p.current_temperature !== null && p.current_temperature !== undefined)
    .map((p) => Math.max(g.left, g.x(p.at)).toFixed(1) + "," + y(toShown(p.current_temperature, scale)).toFixed(1));
  const last = points.filter((p) => p.current_temperature !== null && p.current_temperature !== undefined).pop();
  if (last) line.push(g.x(g.to).toFixed(1) + "," + y(toShown(last.current_temperature, scale)).toFixed(1));
  if (line.length) svgEl(svg, "polyline", { class: "measured", points: line.join(" ") });
  if (card.cursor !== null && card.cursor !== undefined) drawReadout(card, g, points, scale);
}

function showReadout(card, clientX) {
  const svg = card.node.querySelector(".chart");
  const box = svg.getBoundingClientRect();
  card.cursor = clientX - box.left;
  renderChart(card);
}

function drawReadout(card, g, points, scale) {
  const x = Math.min(g.width - g.right, Math.max(g.left, card.cursor));
  const t = g.from + (x - g.left) / g.plotWidth * (g.to - g.from);
  const p = [...points].reverse().find((q) => q.at <= t);
  if (!p) return;
  svgEl(g.svg, "line", { class: "cursor", x1: x, x2: x, y1: g.top, y2: g.height - g.bottom });
  const parts = [(card.span === DAY ? "" : weekday(t) + " ") + hhmm(t)];
  if (p.current_temperature !== null && p.current_temperature !== undefined) parts.push(fmt(p.current_temperature, scale));
  if (p.mode === "range" && p.target_temperature_low !== null) {
    parts.push("set " + fmt(p.target_temperature_low, scale) + "–" + fmt(p.target_temperature_high, scale));
  } else if (["heat", "cool", "emergency"].includes(p.mode) && p.target_temperature !== null) {
    parts.push("set " + fmt(p.target_temperature, scale));
  }
  if (p.heating) parts.push("heating");
  if (p.cooling) parts.push("cooling");
  const right = x > g.left + g.plotWidth / 2;
  svgEl(g.svg, "text", { class: "readout", x: right ? x - 6 : x + 6, y: g.top + 14, "text-anchor": right ? "end" : "start" }, parts.join(" · "));
}

function hours(seconds) { return (seconds / 3600).toFixed(seconds < 36000 ? 1 : 0) + " h"; }

function renderRuntime(card, days) {
  const box = card.node.querySelector(".runtime");
  box.replaceChildren();
  for (const day of days) {
    const row = document.createElement("div");
    row.className = "day";
    const label = document.createElement("span");
    label.textContent = weekday(Date.parse(day.date + "T12:00:00"));
    const bar = document.createElement("div");
    bar.className = "bar";
    for (const stage of ["heat", "cool", "fan", "aux"]) {
      const part = document.createElement("span");
      part.className = stage;
      part.style.width = Math.min(100, day[stage] / 864) + "%";
      bar.appendChild(part);
    }
    const total = document.createElement("span");
    total.className = "muted";
    total.textContent = hours(day.heat + day.cool);
    row.title = day.date + ": heat " + hours(day.heat) + ", cool " + hours(day.cool) + ", fan " + hours(day.fan) + ", aux " + hours(day.aux);
    row.append(label, bar, total);
    box.appendChild(row);
  }
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

window.addEventListener("resize", () => cards.forEach((card) => renderChart(card)));
setInterval(() => cards.forEach((card) => { if (card.status) card.node.querySelector(".seen").textContent = "last contact " + ago(card.status.last_seen); }), 15000);
start();
