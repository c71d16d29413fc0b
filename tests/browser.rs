//! The web UI in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! against roost with simulated thermostats. Needs Debian's `chromium` and `chromium-driver`;
//! `.ci/run` installs them and runs this target with `--ignored`. Screenshots go to
//! `target/browser-screenshots/`.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use helpers::*;
use roost::http_client::{Client, Request};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    port: u16,
    client: Client,
    session: String,
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is not installed (apt-get install chromium chromium-driver)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        for _ in 0..100 {
            if let Ok(r) = client.send(&Request::get("/status")).await {
                if r.json().map(|j| j["value"]["ready"] == true).unwrap_or(false) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,1800"]
        }}}});
        let r = client.send(&Request::post("/session").json(&caps)).await.unwrap().json().unwrap();
        let session = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {r}")).to_string();
        Browser { driver, port, client, session }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let mut req = Request::new(method, &format!("/session/{}{path}", self.session));
        if method != "GET" {
            req = req.json(&body);
        }
        let r = self.client.send(&req).await.unwrap().json().unwrap();
        if let Some(err) = r["value"].get("error") {
            panic!("webdriver {path}: {err}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    async fn run(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": []})).await
    }

    /// Polls a script until it returns something truthy (the browser updates asynchronously).
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        for _ in 0..100 {
            let v = self.run(script).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.screenshot("failure").await;
        panic!("the page never showed {what}");
    }

    async fn element(&self, css: &str) -> String {
        let v = self.call("POST", "/element", json!({"using": "css selector", "value": css})).await;
        v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call("POST", &format!("/element/{id}/value"), json!({"text": text})).await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.call("GET", "/screenshot", Value::Null).await;
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_default()).unwrap_or_default();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Drop for Browser {
    /// Ends the session first: chromedriver then quits its Chromium, which killing chromedriver
    /// alone would leave running (a dozen processes per test) after the tests are done.
    fn drop(&mut self) {
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if conn.write_all(request.as_bytes()).is_ok() {
                let _ = conn.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn card(serial: &str) -> String {
    format!("document.querySelector('article[data-serial=\"{serial}\"]')")
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver; .ci/run runs it"]
async fn the_web_ui_shows_and_steers_thermostats_live() {
    let app = TestApp::start(&[]).await;
    let other = "02AA01AC00000002";
    let t = app.booted(SERIAL).await;
    let t2 = app.booted(other).await;
    let stop = CancellationToken::new();
    let stop_other = CancellationToken::new();
    let task = t.run(stop.clone());
    let other_task = t2.run(stop_other.clone());
    t.set_local("shared", json!({"hvac_heater_state": true})).await.unwrap();

    let browser = Browser::start().await;
    let control = format!("http://127.0.0.1:{}", app.control_port());
    browser.goto(&control).await;
    browser.wait_for("both thermostats", "return document.querySelectorAll('article.card').length === 2").await;
    browser
        .wait_for(
            "the current temperature",
            &format!("return {}.querySelector('.current').textContent === '21.5°C'", card(SERIAL)),
        )
        .await;
    browser.screenshot("01-loaded").await;

    // Raising the setpoint in the page reaches the thermostat's held subscribe.
    for _ in 0..4 {
        browser.run(&format!("{}.querySelector('.setpoint .up').click()", card(SERIAL))).await;
    }
    t.wait_for(WAIT, "the setpoint from the page", |s| {
        s.field(&format!("shared.{SERIAL}"), "target_temperature") == Some(&json!(22.0))
    })
    .await
    .unwrap();

    // A change the thermostat PUTs appears without a reload.
    t.set_local("device", json!({"current_temperature": 23.5})).await.unwrap();
    t.set_local("shared", json!({"current_temperature": 23.5})).await.unwrap();
    browser
        .wait_for(
            "the thermostat's new temperature",
            &format!("return {}.querySelector('.current').textContent === '23.5°C'", card(SERIAL)),
        )
        .await;

    // The weekly schedule: an invalid entry shows the server's message; a valid one reaches the
    // thermostat with Monday as day 0.
    let c = card(SERIAL);
    browser.run(&format!("{c}.querySelector('.schedule').open = true")).await;
    browser
        .wait_for("the schedule table", &format!("return !!{c}.querySelector('td[data-day=\"0\"] .add-entry')"))
        .await;
    browser.run(&format!("{c}.querySelector('td[data-day=\"0\"] .add-entry').click()")).await;
    browser.run(&format!("{c}.querySelector('td[data-day=\"0\"] input[data-field=temp]').value = '40'")).await;
    browser
        .run(&format!(
            "[...{c}.querySelectorAll('.schedule-body button')].find(b => b.textContent === 'Save schedule').click()"
        ))
        .await;
    let message = browser
        .wait_for(
            "the error message",
            &format!("const e = {c}.querySelector('.card-error'); return !e.hidden && e.textContent"),
        )
        .await;
    assert!(message.as_str().unwrap().contains("outside 4.5-32.0"), "{message}");
    browser.run(&format!("{c}.querySelector('td[data-day=\"0\"] input[data-field=temp]').value = '21'")).await;
    browser
        .run(&format!(
            "[...{c}.querySelectorAll('.schedule-body button')].find(b => b.textContent === 'Save schedule').click()"
        ))
        .await;
    let schedule = format!("schedule.{SERIAL}");
    let s = t.wait_for(WAIT, "the schedule from the page", |s| s.buckets.contains_key(&schedule)).await.unwrap();
    let days = &s.buckets[&schedule].value["days"];
    assert_eq!(days["0"]["0"]["temp"], json!(21.0), "{days}");
    assert_eq!(days["0"]["0"]["time"], json!(7 * 3600));
    assert_eq!(days["6"], json!({}));

    // The history chart, drawn in the page from /api/history: the measured line, time of day
    // along the bottom, and the value under the pointer.
    browser
        .wait_for(
            "the chart's line",
            &format!("return !!{}.querySelector('svg.chart polyline.measured')", card(SERIAL)),
        )
        .await;
    let labels = browser
        .run(&format!("return [...{}.querySelectorAll('svg.chart text')].map(t => t.textContent)", card(SERIAL)))
        .await;
    assert!(
        labels.as_array().unwrap().iter().any(|l| l.as_str().is_some_and(|l| l.len() == 5 && l.contains(':'))),
        "time of day: {labels}"
    );
    browser
        .run(&format!(
            "const s = {}.querySelector('svg.chart'); const r = s.getBoundingClientRect();
             s.dispatchEvent(new PointerEvent('pointermove', {{clientX: r.right - 1, clientY: r.top + 50, bubbles: true}}))",
            card(SERIAL)
        ))
        .await;
    // The chart is redrawn as history arrives; the pointer's readout follows it.
    browser
        .wait_for(
            "the value under the pointer",
            &format!(
                "const t = {}.querySelector('svg.chart .readout'); return t && t.textContent.includes('23.5°C')",
                card(SERIAL)
            ),
        )
        .await;
    // Runtime bars beside it: seven days, today's heating under way.
    browser
        .wait_for(
            "seven days of runtime",
            &format!("return {}.querySelectorAll('.runtime .day').length === 7", card(SERIAL)),
        )
        .await;
    // The server-drawn chart stays available.
    let svg =
        app.control.send(&Request::get(&format!("/api/history/chart.svg?serial={SERIAL}&range=24h"))).await.unwrap();
    assert!(String::from_utf8_lossy(&svg.body).contains("<polyline"));

    // Presets: eco from the page is manual eco on the thermostat, and reads back as eco.
    browser
        .run(&format!(
            "const p = {}.querySelector('select.preset'); p.value = 'eco'; p.dispatchEvent(new Event('change'))",
            card(SERIAL)
        ))
        .await;
    t.wait_for(WAIT, "eco from the page", |s| {
        s.buckets
            .iter()
            .any(|(k, b)| k.starts_with("structure.") && b.value.get("manual_eco_all") == Some(&json!(true)))
    })
    .await
    .unwrap();
    browser
        .wait_for("eco shown", &format!("return {}.querySelector('select.preset').value === 'eco'", card(SERIAL)))
        .await;

    // Humidity and emergency heat controls only where the thermostat has them.
    assert_eq!(browser.run(&format!("return {}.querySelector('.humidity-target').hidden", card(SERIAL))).await, true);
    t2.set_local("device", json!({"has_humidifier": true, "has_emer_heat": true})).await.unwrap();
    browser
        .wait_for("the humidity control", &format!("return !{}.querySelector('.humidity-target').hidden", card(other)))
        .await;
    browser.run(&format!("{}.querySelector('.humidity-up').click()", card(other))).await;
    t2.wait_for(WAIT, "the humidity target from the page", |s| {
        let device = format!("device.{other}");
        s.field(&device, "target_humidity") == Some(&json!(40))
            && s.field(&device, "target_humidity_enabled") == Some(&json!(true))
    })
    .await
    .unwrap();
    browser.run(&format!("{}.querySelector('.emergency').click()", card(other))).await;
    t2.wait_for(WAIT, "emergency heat from the page", |s| {
        s.field(&format!("shared.{other}"), "target_temperature_type") == Some(&json!("emergency"))
    })
    .await
    .unwrap();
    browser.screenshot("02-after-changes").await;

    // Pairing a new thermostat through the form.
    let mut t3 = app.thermostat("02AA01AC00000003");
    t3.entry().await.unwrap();
    let (code, _) = t3.passphrase().await.unwrap();
    browser.click("#add-toggle").await;
    browser
        .wait_for("the entry URL", "return document.getElementById('entry-url').textContent.includes('/entry')")
        .await;
    browser.type_into("#pair-code", &format!("{}-{}", &code[..3], &code[3..])).await;
    browser.click("#pair-form button").await;
    let result =
        browser.wait_for("the pairing result", "return document.getElementById('pair-result').textContent").await;
    assert!(result.as_str().unwrap().contains("registered to homeassistant"), "{result}");
    browser.wait_for("the paired thermostat's card", &format!("return !!{}", card("02AA01AC00000003"))).await;
    browser.screenshot("03-paired").await;

    // A phone in dark mode: one column, readable colours.
    browser.call("POST", "/window/rect", json!({"width": 390, "height": 900})).await;
    browser
        .call("POST", "/goog/cdp/execute", json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}}))
        .await;
    let columns = browser
        .run("return getComputedStyle(document.getElementById('devices')).gridTemplateColumns.split(' ').length")
        .await;
    assert_eq!(columns, 1, "one card per row on a phone");
    let overflow =
        browser.run("return document.documentElement.scrollWidth - document.documentElement.clientWidth").await;
    let widest = browser.run("return [...document.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).map(e => e.tagName + '.' + e.className + ':' + Math.round(e.getBoundingClientRect().right)).slice(0, 8).join(' ')").await;
    assert_eq!(overflow, 0, "nothing wider than the phone's screen: {widest}");
    // The chart's labels are text, not a few pixels of a shrunken picture.
    let label_px = browser
        .run(&format!("return parseFloat(getComputedStyle({}.querySelector('svg.chart text')).fontSize)", card(SERIAL)))
        .await;
    assert!(label_px.as_f64().is_some_and(|px| px >= 12.0), "chart labels at {label_px} px");
    let scale = browser
        .run(&format!(
            "const s = {}.querySelector('svg.chart'); return s.getBoundingClientRect().width / s.viewBox.baseVal.width",
            card(SERIAL)
        ))
        .await;
    assert!(scale.as_f64().is_some_and(|k| (k - 1.0).abs() < 0.05), "the chart is not scaled down: {scale}");
    let background = browser.run("return getComputedStyle(document.body).backgroundColor").await;
    assert_eq!(background, "rgb(17, 21, 27)", "dark background in dark mode");
    browser.screenshot("05-phone-dark").await;
    browser.run(&format!("{}.querySelector('svg.chart').scrollIntoView()", card(SERIAL))).await;
    browser.screenshot("06-phone-chart").await;

    // Deleting a thermostat, confirmed (after it stopped talking: a running one comes back).
    stop_other.cancel();
    other_task.await.unwrap();
    browser.run(&format!("window.confirm = () => true; {}.querySelector('.delete').click()", card(other))).await;
    browser.wait_for("the card to go", &format!("return !{}", card(other))).await;

    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver; .ci/run runs it"]
async fn with_an_api_key_the_page_asks_for_it_once() {
    let app = TestApp::start(&["--control-api-key=letmein"]).await;
    app.booted(SERIAL).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://127.0.0.1:{}", app.control_port())).await;
    browser.wait_for("the key prompt", "return !document.getElementById('key-panel').hidden").await;
    browser.screenshot("04-key-prompt").await;
    browser.type_into("#key-input", "letmein").await;
    browser.click("#key-form button").await;
    browser.wait_for("the thermostat", "return document.querySelectorAll('article.card').length === 1").await;
    browser.wait_for("the live stream", "return document.getElementById('live').classList.contains('live')").await;
    // Kept for the browser session: a reload does not ask again.
    browser.run("location.reload()").await;
    browser
        .wait_for("the thermostat after a reload", "return document.querySelectorAll('article.card').length === 1")
        .await;
    assert_eq!(browser.run("return document.getElementById('key-panel').hidden").await, true);
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver; .ci/run runs it"]
async fn the_page_sets_up_a_thermostat_and_manages_api_keys() {
    let fake = FakeThermostat::start().await;
    let app =
        TestApp::start(&[&format!("--thermostat-api-port={}", fake.port), "--api-origin=http://127.0.0.1:8000"]).await;
    app.booted(SERIAL).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://127.0.0.1:{}", app.control_port())).await;
    let note = browser.wait_for("the access mode", "return document.getElementById('access-note').textContent").await;
    assert!(note.as_str().unwrap().starts_with("Access: open"), "{note}");
    assert!(note.as_str().unwrap().contains("local network"), "{note}");

    // Scan the loopback /29 (only the fake answers) and point the thermostat here.
    browser.wait_for("the setup button", "return !document.getElementById('setup-toggle').hidden").await;
    browser.click("#setup-toggle").await;
    browser.type_into("#scan-subnet", "127.0.0.0/29").await;
    browser.click("#scan-form button").await;
    let row = "document.querySelector('#scan-table tr[data-ip=\"127.0.0.1\"]')";
    browser
        .wait_for("the thermostat found", &format!("return {row} && {row}.cells[1].textContent === 'Hallway'"))
        .await;
    browser.screenshot("06-scan").await;
    browser.run(&format!("{row}.querySelector('button.configure').click()")).await;
    browser.wait_for("the password prompt", &format!("return !!{row}.querySelector('input[type=password]')")).await;
    browser.type_into("#scan-table input[type=password]", THERMOSTAT_PASSWORD).await;
    browser.run(&format!("{row}.querySelector('form.password').requestSubmit()")).await;
    let done = browser
        .wait_for(
            "the thermostat pointed here",
            &format!("const c = {row}.querySelector('.configured'); return c && c.textContent"),
        )
        .await;
    assert!(done.as_str().unwrap().starts_with("Pointed at this server"), "{done}");
    assert_eq!(fake.fake().url, "http://127.0.0.1:8000/entry");
    browser.click("#scan-form button").await;
    browser
        .wait_for(
            "the thermostat shown as ours",
            &format!("return {row} && {row}.cells[2].textContent === 'this server'"),
        )
        .await;

    // Create a read-only key for one thermostat: shown once, listed, usable, then revoked.
    browser.click("#keys-toggle").await;
    browser.type_into("#key-name", "phone").await;
    browser.run("document.getElementById('key-write').checked = false").await;
    browser.type_into("#key-devices", SERIAL).await;
    browser.click("#key-create button[type=submit]").await;
    let key = browser
        .wait_for("the new key", "return document.getElementById('key-new-value').textContent")
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.starts_with("nle_") && key.len() == 68, "{key}");
    let cells = browser
        .wait_for(
            "the key in the list",
            "const r = document.querySelector('#keys-table tbody tr'); return r && [...r.cells].map(c => c.textContent).join('|')",
        )
        .await;
    assert!(cells.as_str().unwrap().starts_with(&format!("phone|{}…", &key[..10])), "{cells}");
    assert!(cells.as_str().unwrap().contains(&format!("|read|{SERIAL}|never|")), "{cells}");
    browser.screenshot("07-keys").await;
    let v1 = |key: &str| Request::get("/api/v1/devices").header("Authorization", format!("Bearer {key}"));
    assert_eq!(app.control.send(&v1(&key)).await.unwrap().status(), 200);
    browser.run("window.confirm = () => true; document.querySelector('#keys-table button.revoke').click()").await;
    browser
        .wait_for("the key revoked", "const r = document.querySelector('#keys-table tbody tr'); return r && r.cells[6].textContent === 'revoked'")
        .await;
    assert_eq!(app.control.send(&v1(&key)).await.unwrap().status(), 401);
}

#[tokio::test]
#[ignore = "needs Chromium and chromedriver; .ci/run runs it"]
async fn a_command_the_thermostat_has_not_confirmed_is_marked_until_it_does() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://127.0.0.1:{}", app.control_port())).await;
    browser.wait_for("the thermostat", "return document.querySelectorAll('article.card').length === 1").await;
    let waiting = format!("{}.querySelector('.waiting')", card(SERIAL));
    assert_eq!(browser.run(&format!("return {waiting}.hidden")).await, true);
    // The thermostat is not subscribed: the command waits, and the card says so.
    assert_eq!(app.command(SERIAL, "set_temperature", json!(23.0)).await.status(), 200);
    browser.wait_for("the waiting mark", &format!("return !{waiting}.hidden")).await;
    let title = browser.run(&format!("return {waiting}.title")).await;
    assert!(title.as_str().unwrap().contains("target_temperature"), "{title}");
    browser.screenshot("07-waiting-for-thermostat").await;
    let stop = CancellationToken::new();
    let task = t.run(stop.clone());
    browser.wait_for("the mark to go", &format!("return {waiting}.hidden")).await;
    stop.cancel();
    task.await.unwrap();
}
