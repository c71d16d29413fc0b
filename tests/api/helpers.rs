//! Starting roost on port 0 with a fresh database, and talking to it like a thermostat would.
//!
//! The database is a SQLite file in the test's directory, or, when `ROOST_TEST_POSTGRES` names
//! a PostgreSQL server (`.ci/run` starts one and runs the tests again), a schema of its own in
//! that server: the same tests run on both engines.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};

use roost::sim::Thermostat;
use roost::sim::http::{Client, Conn, Head, Request, Response};
use roost::{AppHandle, Application};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Notify;

pub const SERIAL: &str = "02AA01AC12345678";
pub const WAIT: Duration = Duration::from_secs(5);

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        roost::telemetry::init(false, true);
    }
});

pub struct TestApp {
    pub device: Client,
    pub control: Client,
    pub device_url: String,
    #[allow(dead_code)] // read by the browser test, which shares this file
    control_port: u16,
    handle: AppHandle,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _tmp: Option<TempDir>,
}

impl TestApp {
    pub async fn start(extra: &[&str]) -> TestApp {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut app = Self::start_in(tmp.path().to_path_buf(), extra).await;
        app._tmp = Some(tmp);
        app
    }

    /// Starts roost on a database in `dir` (kept by the caller, for restart tests).
    pub async fn start_in(dir: PathBuf, extra: &[&str]) -> TestApp {
        LazyLock::force(&TRACING);
        let db_path = extra
            .iter()
            .find_map(|a| a.strip_prefix("--sqlite3-db-path="))
            .map_or_else(|| dir.join("roost.sqlite"), PathBuf::from);
        let mut args: Vec<String> =
            vec!["--server-host=127.0.0.1".into(), "--control-host=127.0.0.1".into(), "--control-port=0".into()];
        args.extend(db_args(&db_path).await);
        // Port 9 (discard) refuses at once: tests never reach out to the real weather service.
        for (flag, default) in [
            ("--server-port", "0"),
            ("--api-origin", "http://127.0.0.1"),
            ("--weather-upstream-url", "http://127.0.0.1:9/weather/v1"),
        ] {
            if !extra.iter().any(|a| a.starts_with(flag)) {
                args.push(format!("{flag}={default}"));
            }
        }
        args.extend(extra.iter().filter(|a| !a.starts_with("--sqlite3-db-path=")).map(|s| s.to_string()));
        let config = roost::config::from_args(&args).expect("test configuration");
        let app = Application::build(config).await.expect("roost starts");
        let scheme = if app.is_tls() { "https" } else { "http" };
        let device_url = format!("{scheme}://127.0.0.1:{}", app.device_addr().port());
        let control_port = app.control_addr().port();
        let control_url = format!("http://127.0.0.1:{control_port}");
        let handle = app.handle();
        let task = tokio::spawn(app.run_until_stopped());
        let device = if scheme == "https" {
            Client::new("http://127.0.0.1:1").unwrap()
        } else {
            Client::new(&device_url).unwrap()
        };
        TestApp {
            device,
            control: Client::new(&control_url).unwrap(),
            device_url,
            control_port,
            handle,
            task: Some(task),
            _tmp: None,
        }
    }

    #[allow(dead_code)] // used by the browser test, which shares this file
    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    pub fn thermostat(&self, serial: &str) -> Thermostat {
        Thermostat::new(self.device.clone(), serial)
    }

    /// A thermostat that has booted (entry, full-state PUT, and a first subscribe, which
    /// brings it its user and structure buckets).
    pub async fn booted(&self, serial: &str) -> Thermostat {
        let mut t = self.thermostat(serial);
        t.boot(21.5).await.expect("thermostat boots");
        t.subscribe_once().await.expect("first subscribe");
        t
    }

    pub async fn command(&self, serial: &str, command: &str, value: Value) -> Response {
        self.control
            .send(&Request::post("/command").json(&json!({"serial": serial, "command": command, "value": value})))
            .await
            .expect("command request")
    }

    /// The device port's bucket listing for `serial` (revision, timestamp and key of each).
    pub async fn listing_of(&self, serial: &str) -> Value {
        let req = device_req("GET", &format!("/nest/transport/device/{serial}"), serial);
        self.device.send(&req).await.expect("listing").json().expect("listing JSON")
    }

    /// Awaits `n` held subscribes (`/api/stats`): a held subscribe may show nothing on the
    /// wire, and its release follows the peer's close.
    pub async fn wait_held(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stats = self.control.send(&Request::get("/api/stats")).await.unwrap().json().unwrap();
            let held = stats["subscriptions"]["total_subscriptions"].as_u64();
            if held == Some(n) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{n} held subscribes expected, {held:?} seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn control_post(&self, path: &str, body: Value) -> Response {
        self.control.send(&Request::post(path).json(&body)).await.expect("control request")
    }

    /// Stops roost and waits until it has shut down.
    pub async fn stop(mut self) {
        self.handle.stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("shutdown in time").unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.handle.stop();
    }
}

/// The PostgreSQL server the tests run against (`ROOST_TEST_POSTGRES`); `None`: SQLite.
pub fn postgres() -> Option<String> {
    std::env::var("ROOST_TEST_POSTGRES").ok().filter(|u| !u.trim().is_empty())
}

/// True (after saying so once per run) when PostgreSQL is not configured: tests that need it
/// (several nodes on one database) are skipped then. Written to stderr directly, past the test
/// harness's capture, so a plain `cargo test` says what it did not run.
pub fn skip_without_postgres() -> bool {
    static SAID: std::sync::Once = std::sync::Once::new();
    if postgres().is_some() {
        return false;
    }
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "note: the api tests run on SQLite; the several-node tests are skipped (set ROOST_TEST_POSTGRES \
             to a PostgreSQL URL to run everything on PostgreSQL, as .ci/run does)"
        );
    });
    true
}

/// The schema standing in for the SQLite file `db_path` (the same path, the same schema: a
/// restart finds its data).
fn schema_for(db_path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db_path.hash(&mut h);
    format!("t{:016x}", h.finish())
}

/// `DATABASE_URL` for the schema standing in for `db_path`, created when missing.
async fn postgres_url(base: &str, db_path: &Path) -> String {
    use sqlx::Connection;
    let schema = schema_for(db_path);
    let mut conn = sqlx::PgConnection::connect(base).await.expect("ROOST_TEST_POSTGRES accepts connections");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
        .execute(&mut conn)
        .await
        .expect("create the test's schema");
    let _ = conn.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options[search_path]={schema}")
}

/// The settings that give roost the database standing in for `db_path`, as flags.
pub async fn db_args(db_path: &Path) -> Vec<String> {
    match postgres() {
        Some(base) => vec![format!("--database-url={}", postgres_url(&base, db_path).await)],
        None => vec![format!("--sqlite3-db-path={}", db_path.display())],
    }
}

/// The same as environment variables, for the real binary.
pub async fn db_env(db_path: &Path) -> Vec<(&'static str, String)> {
    match postgres() {
        Some(base) => vec![("DATABASE_URL", postgres_url(&base, db_path).await)],
        None => vec![("SQLITE3_DB_PATH", db_path.display().to_string())],
    }
}

/// A direct connection to the database standing in for `db_path`, for tests that age or
/// inspect what roost stored. Statements use `$1` parameters, which both engines accept.
pub enum TestDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl TestDb {
    pub async fn open(db_path: &Path) -> TestDb {
        match postgres() {
            Some(base) => TestDb::Postgres(sqlx::PgPool::connect(&postgres_url(&base, db_path).await).await.unwrap()),
            None => {
                TestDb::Sqlite(sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display())).await.unwrap())
            }
        }
    }

    pub async fn execute(&self, sql: &'static str, binds: &[&str]) {
        match self {
            TestDb::Sqlite(pool) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(pool).await.unwrap();
            }
            TestDb::Postgres(pool) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(pool).await.unwrap();
            }
        }
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        match self {
            TestDb::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            TestDb::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    pub async fn close(self) {
        match self {
            TestDb::Sqlite(pool) => pool.close().await,
            TestDb::Postgres(pool) => pool.close().await,
        }
    }
}

/// A device request with Basic auth for `serial`.
pub fn device_req(method: &str, path: &str, serial: &str) -> Request {
    Request::new(method, path).basic_auth(&format!("d.{serial}.abc"), "secret").header("X-nl-protocol-version", "1")
}

/// Opens a subscribe with the given body; returns the connection once the head arrived.
pub async fn open_subscribe(client: &Client, serial: &str, body: Value) -> (Conn, Head) {
    let mut conn = client.connect().await.expect("connect");
    conn.send_request(&device_req("POST", "/nest/transport/v7/subscribe", serial).json(&body)).await.expect("send");
    let head = tokio::time::timeout(WAIT, conn.read_head()).await.expect("head in time").expect("head");
    (conn, head)
}

pub fn listing(objects: &[(&str, i64, i64)]) -> Value {
    let objects: Vec<Value> = objects
        .iter()
        .map(|(k, rev, ts)| json!({"object_key": k, "object_revision": rev, "object_timestamp": ts}))
        .collect();
    json!({"chunked": true, "session": format!("18b430aabbcc{SERIAL}"), "objects": objects})
}

pub fn chunk_json(chunk: &[u8]) -> Value {
    serde_json::from_slice(chunk)
        .unwrap_or_else(|e| panic!("chunk is not JSON ({e}): {}", String::from_utf8_lossy(chunk)))
}

pub fn keys_of(doc: &Value) -> Vec<String> {
    doc["objects"].as_array().unwrap().iter().map(|o| o["object_key"].as_str().unwrap().to_string()).collect()
}

/// PUTs objects for `serial` and returns the parsed receipt.
pub async fn put(client: &Client, serial: &str, body: Value) -> Value {
    let r = client.send(&device_req("POST", "/nest/transport/put", serial).json(&body)).await.expect("put");
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    r.json().unwrap()
}

/// Creates an API key with `POST /api/keys` as an administrator (from loopback on an open port,
/// or with `control_key`); returns the key and its id.
pub async fn new_key(app: &TestApp, control_key: Option<&str>, body: Value) -> (String, i64) {
    let mut req = Request::post("/api/keys").json(&body);
    if let Some(k) = control_key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let r = app.control.send(&req).await.expect("create key");
    assert_eq!(r.status(), 201, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json().unwrap();
    (body["key"].as_str().expect("the key").to_string(), body["id"].as_i64().expect("its id"))
}

/// A request carrying `key` as a Bearer token.
pub fn with_key(req: Request, key: &str) -> Request {
    req.header("Authorization", format!("Bearer {key}"))
}

// ---------------------------------------------------------------------------------------------
// A flashed thermostat's own settings API, for the network scan and configure-nest.

pub const THERMOSTAT_PASSWORD: &str = "Pw-MiXeD-case";

#[derive(Clone, Copy, PartialEq)]
pub enum Reply {
    Json,
    NotJson,
    Redirect,
}

pub struct Fake {
    pub url: String,
    pub posted: Vec<Value>,
    pub reply: Reply,
    /// When set, a GET waits: it signals the first Notify on arrival and waits for the second.
    pub hold: Option<(Arc<Notify>, Arc<Notify>)>,
}

/// The NoLongerEvil firmware's settings API (`/cgi-bin/api/settings`), as far as roost uses it.
pub struct FakeThermostat {
    pub port: u16,
    state: Arc<Mutex<Fake>>,
    server: actix_web::dev::ServerHandle,
}

impl FakeThermostat {
    pub async fn start() -> FakeThermostat {
        let state = Arc::new(Mutex::new(Fake {
            url: "https://backdoor.nolongerevil.com/entry".into(),
            posted: Vec::new(),
            reply: Reply::Json,
            hold: None,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::from(shared.clone()))
                .route("/cgi-bin/api/settings", web::get().to(settings))
                .route("/cgi-bin/api/settings", web::post().to(configure))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeThermostat { port, state, server: handle }
    }

    pub fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.state.lock().unwrap()
    }
}

impl Drop for FakeThermostat {
    fn drop(&mut self) {
        let server = self.server.clone();
        tokio::spawn(async move { server.stop(false).await });
    }
}

async fn settings(state: web::Data<Mutex<Fake>>) -> HttpResponse {
    let hold = state.lock().unwrap().hold.clone();
    if let Some((arrived, release)) = hold {
        arrived.notify_one();
        release.notified().await;
    }
    let url = state.lock().unwrap().url.clone();
    HttpResponse::Ok().json(json!({"device_name": "Hallway", "cloudregisterurl": url}))
}

async fn configure(body: web::Json<Value>, state: web::Data<Mutex<Fake>>) -> HttpResponse {
    let mut fake = state.lock().unwrap();
    fake.posted.push(body.0.clone());
    if body["api_key"] != THERMOSTAT_PASSWORD {
        return HttpResponse::Unauthorized().json(json!({"status": "unauthorized"}));
    }
    match fake.reply {
        Reply::NotJson => return HttpResponse::Ok().body("restarting"),
        Reply::Redirect => return HttpResponse::Found().insert_header(("Location", "http://8.8.8.8/")).finish(),
        Reply::Json => {}
    }
    fake.url = format!("{}/entry", body["endpoint"].as_str().unwrap_or_default());
    HttpResponse::Ok().json(json!({"device_name": "Hallway", "status": "ok"}))
}
