//! `roost sim ...` and `roost healthcheck`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::bench;
use super::device::Thermostat;
use super::http::{Client, Request};
use super::v3::{Firmware, V3Thermostat};
use crate::Config;

#[derive(Args)]
pub struct SimArgs {
    #[command(subcommand)]
    pub mode: SimMode,
}

#[derive(Subcommand)]
pub enum SimMode {
    /// Boot simulated thermostats and keep them subscribed until Ctrl-C.
    Run {
        /// Device port URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// How many thermostats (serials SIM0000000000001, ...).
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// The transport the thermostats speak: the objects dialect (firmware 5.x), or v3 as
        /// firmware 4.3.3 or 4.0.6 speaks it.
        #[arg(long, value_enum, default_value = "objects")]
        dialect: Dialect,
    },
    /// PUT throughput: many connections PUTting to many serials.
    BenchPut(bench::PutArgs),
    /// Memory per held subscribe: opens many subscribes and reads the server's RSS.
    BenchHold(bench::HoldArgs),
    /// Event-stream fan-out latency to many streams, and command-to-subscribe latency.
    BenchSse(bench::SseArgs),
    /// A whole fleet for minutes: held subscribes, spread PUTs, commands and event streams.
    Fleet(super::fleet::FleetArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    Objects,
    #[value(name = "v3-4.3")]
    V43,
    #[value(name = "v3-4.0")]
    V40,
}

pub fn sim_serial(i: usize) -> String {
    format!("SIM{i:013}")
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.mode {
        SimMode::Run { url, count, dialect: Dialect::Objects } => run_fleet(&url, count).await,
        SimMode::Run { url, count, dialect: Dialect::V43 } => run_v3_fleet(&url, count, Firmware::V43).await,
        SimMode::Run { url, count, dialect: Dialect::V40 } => run_v3_fleet(&url, count, Firmware::V40).await,
        SimMode::BenchPut(a) => bench::put(a).await,
        SimMode::BenchHold(a) => bench::hold(a).await,
        SimMode::BenchSse(a) => bench::sse(a).await,
        SimMode::Fleet(a) => super::fleet::fleet(a).await,
    }
}

async fn run_fleet(url: &str, count: usize) -> anyhow::Result<()> {
    let client = Client::new(url)?;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..count {
        let mut t = Thermostat::new(client.clone(), &sim_serial(i + 1));
        t.boot(20.0 + i as f64 / 10.0).await.with_context(|| format!("booting {}", t.serial))?;
        println!("{} booted", t.serial);
        tasks.push(t.run(stop.clone()));
    }
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn run_v3_fleet(url: &str, count: usize, firmware: Firmware) -> anyhow::Result<()> {
    let client = Client::new(url)?;
    let stop = CancellationToken::new();
    let mut fleet = Vec::new();
    for i in 0..count {
        let t = V3Thermostat::new(client.clone(), &sim_serial(i + 1), firmware);
        t.boot(20.0 + i as f64 / 10.0).await.with_context(|| format!("booting {}", t.serial))?;
        println!("{} booted as firmware {}", t.serial, firmware.software_version());
        fleet.push((t.run(stop.clone()), t));
    }
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    for (task, t) in fleet {
        let _ = task.await;
        let s = t.state();
        println!(
            "{}: {} subscribes, {} buckets pushed, {} tickles, {} faults{}",
            t.serial,
            s.subscribes,
            s.pushes.len(),
            s.tickles,
            s.faults.len(),
            s.faults.first().map(|f| format!(" (first: {f})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Exit status 0 when `/health` on the control port answers 200.
pub async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let host =
        if config.control_host.is_unspecified() { "127.0.0.1".to_string() } else { config.control_host.to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let client = Client::new(&format!("http://{host}:{}", config.control_port))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.send(&Request::get("/health")))
        .await
        .context("health check timed out")??;
    if resp.status() != 200 {
        bail!("health check answered {}", resp.status());
    }
    println!("healthy");
    Ok(())
}
