use clap::{Parser, Subcommand};

use roost::Config;

/// Under glibc's allocator the fleet run's RSS kept growing by MiBs a minute with connection
/// churn while the live heap stayed flat (heaptrack); mimalloc stays flat (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "roost", version, about = "Self-hosted server for flashed Nest thermostats")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve both ports (the default).
    Serve,
    /// Probe /health on the control port; exit 0 when healthy (for container health checks).
    Healthcheck,
    /// Run simulated thermostats against a roost server.
    Sim(roost::sim::cli::SimArgs),
    /// Create, list and revoke API keys (works while the server runs).
    Keys(roost::keys_cli::KeysArgs),
}

fn main() -> std::process::ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roost: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(cli.config).await,
            Command::Healthcheck => roost::sim::cli::healthcheck(&cli.config).await,
            Command::Sim(args) => roost::sim::cli::run(args).await,
            Command::Keys(args) => roost::keys_cli::run(&cli.config, args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    roost::telemetry::init(config.log_format == "json", config.debug_logging);
    let app = roost::Application::build(config).await?;
    let handle = app.handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        handle.stop();
    });
    app.run_until_stopped().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
