//! `roost sim ...` and `roost healthcheck`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::bench;
use super::device::Thermostat;
use super::http::{Client, Request};
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
    },
    /// PUT throughput: many connections PUTting to many serials.
    BenchPut(bench::PutArgs),
    /// Memory per held subscribe: opens many subscribes and reads the server's RSS.
    BenchHold(bench::HoldArgs),
    /// Event-stream fan-out latency to many streams, and command-to-subscribe latency.
    BenchSse(bench::SseArgs),
}

pub fn sim_serial(i: usize) -> String {
    format!("SIM{i:013}")
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.mode {
        SimMode::Run { url, count } => run_fleet(&url, count).await,
        SimMode::BenchPut(a) => bench::put(a).await,
        SimMode::BenchHold(a) => bench::hold(a).await,
        SimMode::BenchSse(a) => bench::sse(a).await,
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
