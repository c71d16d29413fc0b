//! Building and running the two listeners, and stopping them cleanly.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::{App, HttpResponse, web};
use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::control_api::access::Policy;
use crate::control_api::auth::{self, Access};
use crate::control_api::events::EventStreams;
use crate::device_api::throttle::Throttle;
use crate::state::Store;
use crate::state::availability::Availability;
use crate::state::devices::DeviceLimit;
use crate::state::firmware::Firmware;
use crate::state::keys::ApiKeys;
use crate::state::pairing::Pairing;
use crate::{AppState, Config, conn, control_api, device_api, hub, state, telemetry, tls};

/// Seconds in-flight requests get to finish after a stop signal (below Docker's 10 s grace).
const SHUTDOWN_GRACE_SECS: u64 = 5;
/// New pairing codes a client address may ask for at once, and how often after that.
const PAIRING_BURST: u32 = 5;
const PAIRING_EVERY: Duration = Duration::from_secs(12);
/// How often expired pairing codes (and their pending state) are removed.
const PAIRING_SWEEP: Duration = Duration::from_secs(60);
/// Kernel send buffer of a control-port connection.
const CONTROL_SEND_BUFFER: usize = 64 * 1024;
/// How long a control-port peer may leave sent data unacknowledged before the kernel drops it.
const CONTROL_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The same for a thermostat: longer, for Wi-Fi that sleeps between beacons.
const DEVICE_STALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Application {
    device_addr: SocketAddr,
    control_addr: SocketAddr,
    device_server: Server,
    control_server: Server,
    state: web::Data<AppState>,
    tls: bool,
    /// Gives up the leadership (PostgreSQL) once the leader's work has stopped.
    release: CancellationToken,
    /// With SQLite this node always leads.
    _sole_leader: Option<tokio::sync::watch::Sender<bool>>,
}

/// Stops a running application from elsewhere (signals, tests).
#[derive(Clone)]
pub struct AppHandle {
    token: CancellationToken,
}

impl AppHandle {
    pub fn stop(&self) {
        self.token.cancel();
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "Not found"}))
}

impl Application {
    /// Opens the database and binds both ports (port 0 picks a free one).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        tls::install_crypto_provider();
        telemetry::process::mark_start();
        for warning in config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))? {
            tracing::warn!("{warning}");
        }
        let tls_config = match &config.cert_dir {
            Some(dir) => Some(tls::server_config(dir)?),
            None => None,
        };
        let opened = state::db::open_configured(&config).await?;
        let db = opened.db();
        let hub = hub::Hub::new(config.max_subscriptions_per_device as usize);
        let settings = state::Settings {
            bounds: crate::state::bounds::Bounds::from_limits(&config.limits),
            expiry: config.expiry(),
        };
        let store = Arc::new(Store::load(opened, hub, settings).await?);
        let cluster = store.cluster().cloned();
        let presets = Arc::new(crate::state::presets::Presets::load(db.clone()).await?);
        let pairing = Arc::new(Pairing::load(db.clone()).await?);
        let keys = Arc::new(ApiKeys::new(db.clone()));
        let firmware = Arc::new(Firmware::load(db, config.v3_dialect, config.v3_dialect_overrides.clone()).await?);
        let counted = match &cluster {
            Some(cluster) => cluster.counted_devices().await?,
            None => counted_devices(&config, &store, &pairing),
        };
        let devices = DeviceLimit::new(config.limits.max_devices as usize, counted, cluster.clone());
        let shutdown = CancellationToken::new();
        let release = CancellationToken::new();
        let (leading, sole_leader) = match &cluster {
            Some(cluster) => (state::pg::leader::spawn(cluster.clone(), release.clone()).await, None),
            None => {
                let (tx, rx) = tokio::sync::watch::channel(true);
                (rx, Some(tx))
            }
        };
        let events = EventStreams::new(config.sse_max_clients);
        events.spawn_fan_out(store.hub().feed(), shutdown.clone())?;
        state::expiry::spawn(store.clone(), shutdown.clone());
        let availability_timeout_ms = (config.availability_timeout_seconds * 1000.0) as i64;
        let state = web::Data::new(AppState {
            config: Arc::new(config.clone()),
            store,
            pairing,
            presets,
            availability: Arc::new(Availability::new(availability_timeout_ms, cluster.map(|c| c.pool.clone()))),
            devices,
            pairing_throttle: Throttle::new(PAIRING_BURST, PAIRING_EVERY),
            shutdown,
            events,
            mqtt: Default::default(),
            firmware,
            leading,
            sealing: Default::default(),
        });
        // Every node's changes reach this node's subscribes, streams and bridge through here.
        state.store.follow(Some(crate::cluster::observer(state.clone())), state.shutdown.clone());

        let device_listener = TcpListener::bind((config.server_host, config.server_port))
            .with_context(|| format!("binding the device port {}:{}", config.server_host, config.server_port))?;
        let control_listener = TcpListener::bind((config.control_host, config.control_port))
            .with_context(|| format!("binding the control port {}:{}", config.control_host, config.control_port))?;
        let device_addr = device_listener.local_addr()?;
        let control_addr = control_listener.local_addr()?;

        let budget = config
            .limits
            .connection_budget(crate::limits::raise_fd_limit(), config.sse_max_clients as u64)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let is_tls = tls_config.is_some();
        let device_state = state.clone();
        let device = conn::serve(
            conn::Port {
                name: "device",
                listener: device_listener,
                max_connections: budget.device,
                settings: conn::Settings {
                    tls: tls_config.map(conn::tls_acceptor),
                    repair_request_lines: true,
                    first_head_timeout: Duration::from_secs(30),
                    request_timeout: config.limits.request_timeout(),
                    keep_alive: Duration::from_secs(60),
                    shutdown_grace_secs: SHUTDOWN_GRACE_SECS,
                    tune: tune_device_socket,
                    sealing: state.sealing.clone(),
                },
            },
            move || {
                App::new()
                    .app_data(device_state.clone())
                    // Inside the legacy rewrite, so requests are labelled with the route they reach.
                    .wrap(telemetry::requests::Requests::new("device"))
                    .wrap_fn(|mut req, srv| {
                        device_api::rewrite_legacy_path(&mut req);
                        srv.call(req)
                    })
                    .configure(device_api::routes)
                    .default_service(web::to(not_found))
            },
        )?;

        let control_state = state.clone();
        let access = Access::new(config.cors_origin_list());
        let policy =
            web::Data::new(Policy::new(&config, keys).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?);
        let setup = web::Data::new(control_api::setup::Scanner::new(&config));
        let control = conn::serve(
            conn::Port {
                name: "control",
                listener: control_listener,
                max_connections: budget.control,
                settings: conn::Settings {
                    tls: None,
                    repair_request_lines: false,
                    first_head_timeout: Duration::from_secs(5),
                    request_timeout: config.limits.request_timeout(),
                    keep_alive: Duration::from_secs(5),
                    shutdown_grace_secs: SHUTDOWN_GRACE_SECS,
                    tune: tune_control_socket,
                    sealing: state.sealing.clone(),
                },
            },
            move || {
                let access = access.clone();
                App::new()
                    .app_data(control_state.clone())
                    .app_data(policy.clone())
                    .app_data(setup.clone())
                    .wrap(actix_web::middleware::from_fn(control_api::access::authorize))
                    .wrap_fn(move |req, srv| auth::guard(&access, req, srv))
                    // Outermost: refusals are counted and logged in the request's span too.
                    .wrap(telemetry::requests::Requests::new("control"))
                    .configure(control_api::routes)
                    .default_service(web::to(not_found))
            },
        )?;
        tracing::debug!(device = budget.device, control = budget.control, "connection limits");

        Ok(Self {
            device_addr,
            control_addr,
            device_server: device,
            control_server: control,
            state,
            tls: is_tls,
            release,
            _sole_leader: sole_leader,
        })
    }

    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn handle(&self) -> AppHandle {
        AppHandle { token: self.state.shutdown.clone() }
    }

    /// Marks thermostats offline when they have been silent too long (and hold no subscribe).
    fn spawn_availability_watch(&self) {
        let state = self.state.clone();
        let period = Duration::from_secs_f64((state.config.availability_timeout_seconds / 4.0).clamp(0.2, 30.0));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = state.shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let hub = state.store.hub().clone();
                let gone = if state.store.cluster().is_some() {
                    let held = state.availability.held_serials(|s| hub.held_count(s) > 0);
                    let leader = *state.leading.borrow();
                    state.availability.sweep_shared(held, leader).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "could not store which thermostats are online");
                        Vec::new()
                    })
                } else {
                    state.availability.sweep(|s| hub.held_count(s) > 0)
                };
                for serial in gone {
                    if state.is_known_device(&serial) {
                        tracing::info!(%serial, "thermostat offline");
                        state.record_availability(&serial, false).await;
                    }
                }
            }
        });
    }

    /// Removes expired pairing codes and the pending state of serials that never paired.
    fn spawn_pairing_sweep(&self) {
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PAIRING_SWEEP);
            loop {
                tokio::select! {
                    _ = state.shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match state.pairing.expire_codes().await {
                    Ok(serials) => {
                        for serial in serials {
                            state.drop_pending(&serial).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not expire pairing codes"),
                }
            }
        });
    }

    /// Serves until [`AppHandle::stop`]: then held subscribes end with the terminal chunk,
    /// in-flight requests finish, and the database is closed.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.spawn_availability_watch();
        self.spawn_pairing_sweep();
        let mqtt = match crate::mqtt::Settings::from_config(&self.state.config) {
            Some(settings) => Some(settings),
            None => match self.state.store.integrations().mqtt().await {
                Ok(stored) => stored.as_deref().and_then(crate::mqtt::Settings::from_stored),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the stored MQTT settings");
                    None
                }
            },
        }
        .map(|mut settings| {
            // `MQTT_MINIMAL_DISCOVERY` applies to a broker set up through the API as well.
            settings.naming.minimal |= self.state.config.mqtt_minimal_discovery;
            settings
        });
        // MQTT and the history recorder: on this node while it leads.
        let leader_work = tokio::spawn(crate::cluster::lead(self.state.clone(), mqtt));
        let device_handle = self.device_server.handle();
        let control_handle = self.control_server.handle();
        let device = tokio::spawn(self.device_server);
        let control = tokio::spawn(self.control_server);
        tracing::info!(device = %self.device_addr, control = %self.control_addr, tls = self.tls, "roost is serving");
        let token = self.state.shutdown.clone();
        tokio::select! {
            _ = token.cancelled() => {}
            r = device => { r??; }
            r = control => { r??; }
        }
        token.cancel();
        tracing::info!("shutting down");
        tokio::join!(device_handle.stop(true), control_handle.stop(true));
        let _ = tokio::time::timeout(Duration::from_secs(3), leader_work).await;
        // Another node takes over only once this one's bridge has said goodbye.
        self.release.cancel();
        self.state.store.close().await;
        Ok(())
    }
}

/// The thermostats that count toward `MAX_DEVICES` at start-up: with pairing required the paired
/// ones; otherwise every serial with an owner or with state beyond a pending pairing.
fn counted_devices(config: &Config, store: &Store, pairing: &Pairing) -> Vec<String> {
    let mut counted = pairing.owned_serials();
    if !config.require_device_pairing {
        let owned: HashSet<String> = counted.iter().cloned().collect();
        counted.extend(
            store
                .serials()
                .into_iter()
                .filter(|s| !owned.contains(s) && !crate::holds_pending_only(&store.snapshot(s))),
        );
    }
    counted
}

/// A thermostat that vanished without a FIN, or stopped reading, is dropped by the kernel once
/// what roost sent it (a push, a held subscribe's end) stays unacknowledged this long. A held
/// response waits on its writes, not its hold timeout, so without this it could outlive it.
fn tune_device_socket(tcp: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(DEVICE_STALL_TIMEOUT));
}

/// A fixed send buffer bounds what an event-stream client that stopped reading can hold in the
/// kernel, so it falls behind its queue and is cut off (it resumes by id); a peer that stops
/// reading altogether (zero window) is dropped by the kernel after a while, which frees its slot.
fn tune_control_socket(tcp: &tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(tcp);
    let _ = socket.set_send_buffer_size(CONTROL_SEND_BUFFER);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket.set_tcp_user_timeout(Some(CONTROL_STALL_TIMEOUT));
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_port_has_the_kernel_drop_a_peer_that_stops_acknowledging() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&accepted);
        tune_device_socket(&accepted);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(DEVICE_STALL_TIMEOUT));
        tune_control_socket(&accepted);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(CONTROL_STALL_TIMEOUT));
    }
}
