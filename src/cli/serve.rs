//! `ferry serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use super::{data_location, duration, open_store, usage};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Where the data is: a directory (an OCI image layout; created if missing unless
    /// --read-only) or s3://BUCKET[/PREFIX] (settings from the AWS_* variables).
    #[arg(long, env = "FERRY_DATA", default_value = "./registry-data")]
    data: String,
    /// With --data s3://…: answer blob downloads with a 307 to a presigned URL of the store, so
    /// clients fetch the bytes from it directly (they must be able to reach it).
    #[arg(long)]
    redirect: bool,
    /// Refuse every write (for USB media and replicas).
    #[arg(long)]
    read_only: bool,
    /// Serve a signed trip (with --read-only): refuse to start unless the data directory is
    /// exactly what this public key signed (see `ferry sync --sign`).
    #[arg(long, value_name = "PUB", requires = "read_only")]
    verify_key: Option<std::path::PathBuf>,
    /// Run garbage collection this often inside the server (e.g. 6h); off by default.
    #[arg(long, value_name = "DURATION", env = "FERRY_GC_INTERVAL")]
    gc_interval: Option<String>,
    /// Unreferenced blobs younger than this are kept by GC.
    #[arg(
        long,
        value_name = "DURATION",
        env = "FERRY_GC_GRACE",
        default_value = "1h"
    )]
    gc_grace: String,
    /// Retention rules (TOML, see `ferry gc --help`) applied before each scheduled GC; needs
    /// --gc-interval.
    #[arg(long, value_name = "FILE", requires = "gc_interval")]
    retention: Option<std::path::PathBuf>,
    /// Upload sessions idle for this long are removed (at start and hourly).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    upload_expiry: String,
    /// Require credentials from this htpasswd file (bcrypt entries); re-read when it changes.
    #[arg(long, value_name = "FILE", env = "FERRY_HTPASSWD")]
    htpasswd: Option<std::path::PathBuf>,
    /// With --htpasswd: let pulls through without credentials (pushes, deletes and mounts
    /// still need them).
    #[arg(long, requires = "htpasswd")]
    anonymous_read: bool,
    /// With --htpasswd: serve /metrics without credentials (by default it needs them as pulls
    /// do: it tells what the mirror holds and who uses it).
    #[arg(long, requires = "htpasswd")]
    metrics_public: bool,
    /// Serve HTTPS with this certificate (PEM, chain allowed); re-read on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        env = "FERRY_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) for --tls-cert; re-read on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        env = "FERRY_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// Blob uploads receiving data at once, all clients together (more get 429).
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_uploads: usize,
    /// Blob uploads receiving data at once from one client address (more get 429).
    #[arg(long, value_name = "N", default_value_t = 32)]
    max_uploads_per_client: usize,
    /// Upload sessions one client (a user under --htpasswd, else an address) may have open; past
    /// it, its own sessions idle for 10 minutes are let go, else it gets 429.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_sessions_per_client: usize,
    /// Close connections with no byte moving either way for this long.
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    idle_timeout: String,
    /// Pull-through: what the store lacks under NAME/… is fetched from URL, stored and served
    /// while it streams (e.g. docker.io=https://registry-1.docker.io; repeatable). Requests
    /// without a registry name (dockerd's registry-mirrors) go to docker.io's.
    #[arg(long, value_name = "NAME=URL")]
    upstream: Vec<String>,
    /// Credentials for an upstream, NAME=USER:PASS (default: ~/.docker/config.json and its
    /// helpers, else anonymous); repeatable.
    #[arg(long, value_name = "NAME=USER:PASS")]
    upstream_creds: Vec<String>,
    /// Re-check a pulled-through tag against its upstream when it was last checked longer ago.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    upstream_ttl: String,
    /// Trust this CA certificate (PEM) for upstream registries' TLS.
    #[arg(long, value_name = "FILE")]
    upstream_ca_file: Option<std::path::PathBuf>,
    /// The most one upstream blob may be (a body announced larger is refused, one that goes on
    /// past it is cut there; nothing is stored).
    #[arg(long, value_name = "SIZE", default_value = "64G")]
    upstream_max_blob: String,
    /// An upstream response that delivers nothing for this long fails, for every client waiting
    /// on it.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    upstream_idle_timeout: String,
}

/// `--upstream` and friends, or `None` without any.
fn pull_through(a: &Args) -> anyhow::Result<Option<ferry::proxy::PullThrough>> {
    if a.upstream.is_empty() {
        if !a.upstream_creds.is_empty() {
            return Err(usage("--upstream-creds needs an --upstream".into()));
        }
        return Ok(None);
    }
    let mut creds = std::collections::HashMap::new();
    for c in &a.upstream_creds {
        let (name, up) = c
            .split_once('=')
            .filter(|(_, up)| up.contains(':'))
            .ok_or_else(|| usage(format!("--upstream-creds {c:?}: expected NAME=USER:PASS")))?;
        creds.insert(name.to_owned(), up.to_owned());
    }
    let idle = duration(&a.upstream_idle_timeout, "--upstream-idle-timeout")?;
    let max_blob = ferry::retention::parse_size(&a.upstream_max_blob)
        .map_err(|e| usage(format!("--upstream-max-blob: {e}")))?;
    let mut ups = Vec::new();
    for spec in &a.upstream {
        let name = spec.split_once('=').map_or(spec.as_str(), |(n, _)| n);
        ups.push(
            ferry::proxy::Upstream::parse(spec, creds.remove(name), a.upstream_ca_file.clone())?
                .with_idle_timeout(idle)?,
        );
    }
    if let Some(name) = creds.keys().next() {
        return Err(usage(format!(
            "--upstream-creds {name}=…: no --upstream is named {name}"
        )));
    }
    let ttl = duration(&a.upstream_ttl, "--upstream-ttl")?;
    Ok(Some(
        ferry::proxy::PullThrough::new(ups, ttl)?.with_max_blob(max_blob),
    ))
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let data = data_location(&a.data, "serve")?;
    let schedule = ferry::server::maintenance::Schedule {
        upload_expiry: duration(&a.upload_expiry, "--upload-expiry")?,
        gc_interval: a
            .gc_interval
            .as_deref()
            .map(|s| duration(s, "--gc-interval"))
            .transpose()?,
        gc_grace: duration(&a.gc_grace, "--gc-grace")?,
        retention: a
            .retention
            .as_deref()
            .map(ferry::retention::Policy::load)
            .transpose()?,
    };
    let idle_timeout = duration(&a.idle_timeout, "--idle-timeout")?;
    let pull = pull_through(&a)?;
    if a.max_uploads == 0 || a.max_uploads_per_client == 0 {
        return Err(usage(
            "--max-uploads and --max-uploads-per-client must be at least 1".into(),
        ));
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(Arc::new(ferry::tls::ServerTls::load(c, k)?)),
        _ => None,
    };
    if let Some(k) = &a.verify_key {
        let key = super::key::verifier(k)?;
        let place = ferry::sync::Place::open(&data, &Default::default(), false).await?;
        let st = ferry::trip::verify(&place, &key, 4)
            .await
            .map_err(|e| anyhow::anyhow!("{data}: {e}"))?;
        tracing::info!(
            key = %st.key_id,
            created = %st.created,
            tags = st.tags.len(),
            blobs = st.blobs.len(),
            "the data is the trip the key signed"
        );
    }
    // With --upstream, --read-only refuses clients' writes; the store stays writable for what
    // pull-through fetches.
    let store_read_only = a.read_only && pull.is_none();
    if pull.is_some() && matches!(data, ferry::location::Location::OciArchive { .. }) {
        return Err(usage(format!(
            "--upstream stores what it fetches; {data} is an archive, read-only"
        )));
    }
    let store = open_store(&data, store_read_only).await?;
    if a.redirect && !store.can_redirect() {
        return Err(usage(format!(
            "--redirect hands downloads to an object store; {data} is a directory"
        )));
    }
    let auth = a
        .htpasswd
        .map(|p| {
            ferry::server::auth::Htpasswd::new(p.clone(), a.anonymous_read)
                .with_context(|| format!("reading --htpasswd {}", p.display()))
        })
        .transpose()?;
    let limits = ferry::server::limits::Limits {
        max_uploads: a.max_uploads,
        max_uploads_per_client: a.max_uploads_per_client,
        max_sessions_per_client: a.max_sessions_per_client.max(1),
        idle_timeout,
        ..Default::default()
    };
    if let Some(p) = &pull {
        for u in p.upstreams() {
            tracing::info!(name = %u.name, url = %u.url, "pull-through upstream");
        }
    }
    let app = Arc::new(
        ferry::server::App::new(store, auth)
            .with_limits(limits)
            .with_redirect(a.redirect)
            .with_pull_through(pull)
            .with_refuse_writes(a.read_only)
            .with_metrics_public(a.metrics_public),
    );
    {
        let a = app.clone();
        tokio::task::spawn_blocking(move || a.record.load_sync(&a.store)).await?;
    }
    if store_read_only {
        tracing::warn!(
            "--read-only: nothing is written to the data, so what builds use and miss is kept              in memory only (`ferry used` / `ferry misses` need a writable data directory)"
        );
    }
    if !store_read_only {
        let (a2, expiry) = (app.clone(), schedule.upload_expiry);
        tokio::task::spawn_blocking(move || {
            ferry::server::maintenance::expire_uploads(&a2, expiry)
        })
        .await??;
    }
    // Every handler before the listener exists: whoever sees "listening" may signal at once.
    let (reload, shutdown) = ferry::server::signals::Signals::install()
        .context("installing signal handlers")?
        .split(tls.clone());
    let listener =
        ferry::server::bind(a.listen).with_context(|| format!("binding {}", a.listen))?;
    let nofile = ferry::server::limits::raise_nofile();
    tracing::info!(
        listen = %listener.local_addr()?,
        data = %data,
        open_files = nofile,
        read_only = a.read_only,
        tls = tls.is_some(),
        "ferry registry listening"
    );
    if tls.is_none() && !a.listen.ip().is_loopback() {
        tracing::warn!(
            "serving plain HTTP beyond loopback: docker and BuildKit need an \
             insecure-registries entry, and credentials cross the network in clear text; \
             see `ferry tls init`"
        );
    }
    tokio::spawn(reload);
    tokio::spawn(ferry::server::maintenance::run(app.clone(), schedule));
    tokio::spawn(
        app.record
            .clone()
            .run(app.clone(), std::time::Duration::from_secs(5)),
    );
    ferry::server::run(listener, app.clone(), tls, shutdown).await?;
    {
        let a = app.clone();
        tokio::task::spawn_blocking(move || a.record.flush_sync(&a.store)).await?;
    }
    tracing::info!("stopped");
    Ok(0)
}
