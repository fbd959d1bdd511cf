//! The `ferry` command line. Parses arguments and calls into the library; nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Carry container images and BuildKit caches across an air gap"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an OCI registry from an OCI image layout directory.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:5000")]
        listen: SocketAddr,
        /// Data directory (an OCI image layout; created if missing unless --read-only).
        #[arg(long, env = "FERRY_DATA", default_value = "./registry-data")]
        data: PathBuf,
        /// Refuse every write (for USB media and replicas).
        #[arg(long)]
        read_only: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            data,
            read_only,
        } => {
            let store = ferry::layout::Store::open(&data, read_only)
                .with_context(|| format!("opening data directory {}", data.display()))?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(
                listen = %listener.local_addr()?,
                data = %data.display(),
                read_only,
                "ferry registry listening"
            );
            let app = Arc::new(ferry::server::App { store });
            ferry::server::run(listener, app, shutdown_signal()).await?;
            tracing::info!("stopped");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
