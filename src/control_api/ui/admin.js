// roost web UI, administration: which access mode is on, setting a thermostat up (scan the
// network, point one at this server) and API keys. Uses api() and the key prompt of app.js.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  function accessNote(a) {
    const c = a.caller;
    const key = c.key ? c.key.scopes.join(" and ") + (c.key.devices ? ", " + c.key.devices.length + " thermostat(s)" : "") : "";
    const who = {
      "control key": "you unlocked it with the control key",
      "trusted network": "you are on a trusted network (" + c.address + ")",
      "local network": "you are on the local network (" + c.address + ")",
      "api key": "you use an API key (" + key + ")",
      "open": "you may read and control thermostats; setup and keys need a trusted network",
      "none": "enter the key to continue",
    }[c.via] || "";
    const mode = a.mode === "open"
      ? "Access: open — no CONTROL_API_KEY is set, so clients need no key"
      : "Access: a key is required (CONTROL_API_KEY)" + (a.trusted_networks_configured ? " except from trusted networks" : "");
    return mode + "; " + who + ".";
  }

  async function loadAccess() {
    let access;
    try { access = await api("/api/access"); } catch (_) { return; }
    $("access-note").textContent = accessNote(access);
    const admin = access.caller.level === "admin";
    $("setup-toggle").hidden = !admin;
    $("keys-toggle").hidden = !admin;
    if (!admin) { $("setup-panel").hidden = true; $("keys-panel").hidden = true; }
  }

  $("key-form").addEventListener("submit", () => loadAccess());
  $("setup-toggle").addEventListener("click", () => { $("setup-panel").hidden = !$("setup-panel").hidden; });
  $("keys-toggle").addEventListener("click", () => {
    const panel = $("keys-panel");
    panel.hidden = !panel.hidden;
    if (!panel.hidden) {
      $("v1-base").textContent = location.origin + base + "/api/v1";
      loadKeys();
    }
  });

  // ---- Set up a thermostat -------------------------------------------------------------------

  function cellButton(label, className, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.className = className;
    b.addEventListener("click", onClick);
    return b;
  }

  $("scan-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const result = $("scan-result");
    const subnet = $("scan-subnet").value.trim();
    result.className = "";
    result.textContent = "Scanning… (up to a few seconds)";
    try {
      const r = await api("/api/scan-network", { method: "POST", body: JSON.stringify(subnet ? { subnet } : {}) });
      result.textContent = r.devices.length
        ? "Found " + r.devices.length + " thermostat(s) on " + r.subnet + "."
        : "No thermostat answered on " + r.subnet + ".";
      renderScan(r.devices);
    } catch (err) {
      result.className = "error";
      result.textContent = err.message;
    }
  });

  function renderScan(devices) {
    const body = $("scan-table").querySelector("tbody");
    body.replaceChildren();
    for (const d of devices) {
      const row = body.insertRow();
      row.dataset.ip = d.ip;
      row.insertCell().textContent = d.ip;
      row.insertCell().textContent = d.device_name || "–";
      const server = row.insertCell();
      server.textContent = d.configured ? "this server" : (d.cloudregisterurl || "none");
      if (d.configured) server.className = "ok";
      const action = row.insertCell();
      if (!d.configured) action.appendChild(cellButton("Use this server", "configure", () => configure(d.ip, row, null)));
    }
    $("scan-table").hidden = devices.length === 0;
  }

  // Not api(): a 401 here is the thermostat asking for its own password, not roost asking for a key.
  async function configure(ip, row, password) {
    const cell = row.cells[3];
    const headers = { "Content-Type": "application/json" };
    if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
    const body = password ? { ip, api_key: password } : { ip };
    cell.className = "";
    cell.textContent = "Sending…";
    let response, data;
    try {
      response = await fetch(base + "/api/configure-nest", { method: "POST", headers, body: JSON.stringify(body) });
      data = await response.json().catch(() => ({}));
    } catch (err) {
      cell.className = "error";
      cell.textContent = err.message;
      return;
    }
    if (response.ok && data.success) {
      cell.className = "ok configured";
      cell.textContent = "Pointed at this server" + (data.device_name ? " (" + data.device_name + ")" : "") + "; it restarts in a few seconds.";
      return;
    }
    if (response.status === 401 && data.auth_required) {
      const form = document.createElement("form");
      form.className = "password";
      const input = document.createElement("input");
      input.type = "password";
      input.placeholder = "thermostat password";
      input.title = "The api_key on the thermostat's card, or from its own settings";
      input.required = true;
      form.append(input, cellButton("Send", "send", () => form.requestSubmit()));
      form.addEventListener("submit", (e) => { e.preventDefault(); configure(ip, row, input.value.trim()); });
      cell.replaceChildren(document.createTextNode(password ? "Wrong password. " : "The thermostat needs its password: "), form);
      input.focus();
      return;
    }
    cell.className = "error";
    cell.textContent = data.error || data.message || "HTTP " + response.status;
  }

  // ---- API keys ------------------------------------------------------------------------------

  function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

  async function loadKeys() {
    const error = $("keys-error");
    error.hidden = true;
    try {
      const r = await api("/api/keys");
      renderKeys(r.keys);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  }

  function renderKeys(keys) {
    const body = $("keys-table").querySelector("tbody");
    body.replaceChildren();
    for (const k of keys) {
      const row = body.insertRow();
      row.dataset.id = String(k.id);
      for (const text of [k.name || "–", k.preview, k.scopes.join(", "), k.devices ? k.devices.join(", ") : "all",
        k.expires_at ? when(k.expires_at) : "never", when(k.last_used_at), k.status]) {
        row.insertCell().textContent = text;
      }
      const action = row.insertCell();
      if (k.status === "active") action.appendChild(cellButton("Revoke", "revoke danger", () => revokeKey(k)));
    }
  }

  async function revokeKey(k) {
    if (!confirm("Revoke " + (k.name || k.preview) + "? Clients using it stop working at once.")) return;
    try {
      await api("/api/keys/" + k.id, { method: "DELETE" });
    } catch (err) {
      $("keys-error").textContent = err.message;
      $("keys-error").hidden = false;
    }
    loadKeys();
  }

  $("key-create").addEventListener("submit", async (e) => {
    e.preventDefault();
    const scopes = [];
    if ($("key-read").checked) scopes.push("read");
    if ($("key-write").checked) scopes.push("write");
    const body = { name: $("key-name").value.trim(), scopes };
    const devices = $("key-devices").value.split(/[\s,]+/).filter(Boolean);
    if (devices.length) body.devices = devices;
    if ($("key-expires").value) body.expires = new Date($("key-expires").value).toISOString();
    $("keys-error").hidden = true;
    try {
      const r = await api("/api/keys", { method: "POST", body: JSON.stringify(body) });
      $("key-new-value").textContent = r.key;
      $("key-new").hidden = false;
      $("key-create").reset();
      loadKeys();
    } catch (err) {
      $("keys-error").textContent = err.message;
      $("keys-error").hidden = false;
    }
  });

  loadAccess();
})();
