//! `turngate`: the real-time media gateway for voice and multimodal AI agents.
//!
//! `turngate serve` terminates WebRTC audio (WHIP-shaped signaling), mints turn ids and
//! tags every frame with its turn. See README.md.

mod app;
mod auth;
mod cli;
mod config;
mod http;
mod problem;
mod rate;
mod record;
mod registry;
mod turn;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use turngate_media::session::SessionEnd;

/// How long shutdown waits for the last spans to be exported.
const TELEMETRY_FLUSH_GRACE: Duration = Duration::from_secs(5);

/// How long shutdown waits for sessions to close their turns.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "turngate",
    version,
    about = "Real-time media gateway: WebRTC audio in, turns out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Settings: defaults < TOML file (--config) < TURNGATE_* < flags.
    #[command(after_long_help = config::KEYS_HELP)]
    Serve(config::Overrides),
    /// Client tokens for development.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read a turn's record (works while the gateway is down).
    #[command(subcommand)]
    Turn(cli::TurnCommand),
    /// Delete the records older than record.retention_days, whole, and orphans.
    Gc(cli::ConfigFile),
    /// Delete records on request: a session's, a subject's, or a turn's.
    Delete {
        #[command(flatten)]
        what: cli::DeleteArgs,
        #[command(flatten)]
        config: cli::ConfigFile,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mints a client token signed with the configured HS256 secret
    /// (auth.hs256_secret or TURNGATE_AUTH_HS256_SECRET) for the configured audience.
    Create {
        /// The subject (`sub`): whose sessions these are.
        #[arg(long)]
        sub: String,
        /// How long the token is valid, e.g. `1h`, `15m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Space-separated actions (`whip upload`, `admin`) [default: whip upload].
        #[arg(long)]
        scope: Option<String>,
        /// TOML configuration file with the `[auth]` settings.
        #[arg(long, env = "TURNGATE_CONFIG", value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    // One TLS stack for every client (backends, OTLP, the record store): rustls on ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("turngate: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Turn(command) => runtime()?.block_on(cli::turn(command)),
        Command::Gc(config) => runtime()?.block_on(cli::gc(config)),
        Command::Delete { what, config } => runtime()?.block_on(cli::delete(what, config)),
        Command::Serve(overrides) => {
            let config = config::Config::load(&overrides)?;
            config.check_media_ips()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
        Command::Token(TokenCommand::Create {
            sub,
            ttl,
            scope,
            config,
        }) => {
            let config = config::Config::load(&config::Overrides {
                config,
                ..config::Overrides::default()
            })?;
            let secret =
                config.auth.hs256_secret.as_ref().context(
                    "no HS256 secret: set auth.hs256_secret or TURNGATE_AUTH_HS256_SECRET",
                )?;
            let token = auth::mint(
                &secret.0,
                &config.auth.audience,
                config.auth.issuer.as_deref(),
                &sub,
                ttl.as_secs(),
                scope.as_deref(),
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("TURNGATE_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,rtc=error,rtc_dtls=error,rtc_ice=error,rtc_sctp=error,webrtc=warn")
    });
    // Logs go to stderr; colours only on a terminal. Spans go to OTLP when configured.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let otel = turngate_telemetry::OtelConfig::from_vars(|name| std::env::var(name).ok());
    let record_spans = config.record.enabled;
    let telemetry =
        turngate_telemetry::Telemetry::new(&otel, config.telemetry.capture_content, record_spans)?;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(logs)
        .with(telemetry.layer())
        .init();
    for warning in &otel.warnings {
        tracing::warn!("{warning}");
    }
    if telemetry.exporting() {
        tracing::info!(protocol = ?otel.protocol, sampler = ?otel.sampler, "Exporting spans over OTLP.");
    }

    let app = app::App::new(&config, telemetry)?;
    if app.insecure {
        tracing::warn!(listen = %config.listen, "--insecure-no-auth: no authentication; anyone who reaches this port can open sessions and read every transcript.");
    }
    match &app.turns.recorder {
        Some(recorder) => {
            tracing::info!(
                store = recorder.location(),
                node = recorder.node_id(),
                "Recording turns."
            );
            // Records this node left open when it last stopped, then the lease.
            let recorder = Arc::clone(recorder);
            tokio::spawn(async move {
                let finished = recorder.recover_own().await;
                if finished > 0 {
                    tracing::info!(
                        finished,
                        "Turn record: finished the records left open at the last stop."
                    );
                }
                record::spawn_upkeep(recorder);
            });
        }
        None => tracing::info!("Not recording turns (record.enabled = false)."),
    }
    let auth = &config.auth;
    if auth.admin_token.is_some() && auth.hs256_secret.is_none() && auth.jwks_file.is_none() {
        tracing::warn!(
            "Only an admin token is configured: every client offer will be refused 401 until auth.hs256_secret or auth.jwks_file is set."
        );
    }
    if config.listen.ip().is_unspecified() && config.http.allowed_hosts.is_empty() {
        tracing::info!(
            "Listening on all interfaces: requests may name any address or localhost as Host; set http.allowed_hosts to serve DNS names."
        );
    }
    let router = http::router(Arc::clone(&app), &config.cors_origins);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, media_ips = ?config.media.ips,
        ports = %format!("{}-{}", config.media.port_min, config.media.port_max), "turngate is serving.");

    let h = &config.http;
    let limits = http::server::Limits {
        header_read_timeout: Duration::from_millis(h.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(h.body_read_timeout_ms),
        max_connections: h.max_connections,
        shutdown_grace: Duration::from_millis(h.shutdown_grace_ms),
    };
    // On a signal: no new sessions or connections; live sessions close while requests
    // in flight finish, each within its grace.
    let stopping = tokio_util::sync::CancellationToken::new();
    let signalled = stopping.clone();
    let serving = http::server::serve(listener, router, limits, Arc::clone(&app), async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    let closing = async {
        stopping.cancelled().await;
        tracing::info!("Shutting down: no new sessions; closing live ones.");
        app.shutting_down.store(true, Ordering::Relaxed);
        close_all(&app).await;
    };
    tokio::join!(serving, closing);
    app.turns.telemetry.shutdown(TELEMETRY_FLUSH_GRACE).await;
    tracing::info!("Stopped.");
    Ok(())
}

/// Ends every live session (closing its open turn) and waits for them, for the turns
/// being processed and for their records, within a grace.
async fn close_all(app: &app::App) {
    let live = app.registry.live();
    for entry in &live {
        entry.shared.close(SessionEnd::Shutdown);
    }
    // Sessions end, then the turns they closed finish processing (and their spans end).
    let all_ended = async {
        for entry in &live {
            entry.shared.wait_ended().await;
        }
        app.turns.tasks.close();
        app.turns.tasks.wait().await;
        // Then their records get their manifests.
        app.turns.records.close();
        app.turns.records.wait().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_ended)
        .await
        .is_err()
    {
        tracing::warn!("Some sessions did not end within the shutdown grace.");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
