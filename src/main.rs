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
    /// Log lines as text (default) or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FERRY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// Run garbage collection this often inside the server (e.g. 6h); off by default.
        #[arg(long, value_name = "DURATION")]
        gc_interval: Option<String>,
        /// Unreferenced blobs younger than this are kept by GC.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        gc_grace: String,
        /// Upload sessions idle for this long are removed (at start and hourly).
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        upload_expiry: String,
        /// Require credentials from this htpasswd file (bcrypt entries); re-read when it changes.
        #[arg(long, value_name = "FILE")]
        htpasswd: Option<PathBuf>,
        /// With --htpasswd: let pulls through without credentials (pushes, deletes and mounts
        /// still need them).
        #[arg(long, requires = "htpasswd")]
        anonymous_read: bool,
        /// Serve HTTPS with this certificate (PEM, chain allowed); re-read on SIGHUP.
        #[arg(
            long,
            value_name = "FILE",
            env = "FERRY_TLS_CERT",
            requires = "tls_key"
        )]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) for --tls-cert; re-read on SIGHUP.
        #[arg(
            long,
            value_name = "FILE",
            env = "FERRY_TLS_KEY",
            requires = "tls_cert"
        )]
        tls_key: Option<PathBuf>,
        /// Blob uploads receiving data at once, all clients together (more get 429).
        #[arg(long, value_name = "N", default_value_t = 128)]
        max_uploads: usize,
        /// Blob uploads receiving data at once from one client address (more get 429).
        #[arg(long, value_name = "N", default_value_t = 32)]
        max_uploads_per_client: usize,
        /// Close connections with no byte moving either way for this long.
        #[arg(long, value_name = "DURATION", default_value = "2m")]
        idle_timeout: String,
    },
    /// TLS helpers for a mirror shared over a LAN.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Remove blobs nothing references any more (older than the grace period).
    Gc {
        /// The data directory.
        #[arg(long, env = "FERRY_DATA", default_value = "./registry-data")]
        data: PathBuf,
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        grace: String,
        /// Say what would go and how much space returns; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Retention: apply the rules below only to repositories matching this regex.
        #[arg(long, value_name = "REGEX")]
        repo: Option<String>,
        /// Retention: keep the newest N tags of each repository.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Retention: keep tags matching this regex.
        #[arg(long, value_name = "REGEX")]
        keep_tags: Option<String>,
        /// Retention: keep tags read within this long (e.g. 30d).
        #[arg(long, value_name = "DURATION")]
        keep_read_within: Option<String>,
        /// Retention: then drop least-recently-read tags until the store fits (e.g. 200G).
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
    },
    /// Re-hash every blob and check every manifest's references; exit 1 on problems.
    ///
    /// With a registry location (`docker://HOST[:PORT][/REPO[:TAG]]`), every blob of every ref is
    /// downloaded and hashed instead.
    Verify {
        /// A registry or a directory to verify instead of --data.
        location: Option<String>,
        /// The data directory (or any layout directory).
        #[arg(long, env = "FERRY_DATA", default_value = "./registry-data")]
        data: PathBuf,
        /// Threads hashing at once (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Move corrupt blobs to .ferry/quarantine/ so a later sync or push can restore them.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Copy images and caches between registries and directories: only what is missing, verified,
    /// resumable.
    ///
    /// A location is `docker://HOST[:PORT][/REPO[:TAG|@DIGEST]]` or a directory (`oci:PATH` or a
    /// plain path). A registry without a repository means its whole catalog, a repository without a
    /// tag all its tags, a directory all its tags.
    Sync(SyncArgs),
    /// Is everything a ref needs present and intact? (Run it on the offline side before the
    /// cable is cut.) Reports cache records and layers for BuildKit caches.
    Check {
        location: String,
        /// Only these refs (REPO, REPO:TAG, TAG or REPO@DIGEST); repeatable. Default: all.
        #[arg(long = "ref", value_name = "REF")]
        refs: Vec<String>,
        /// Print the report as JSON on standard output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: SrcRemoteArgs,
    },
    /// List every digest a location holds (for `ferry sync --have` on the other side).
    Inventory {
        location: String,
        /// Write to FILE instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        remote: SrcRemoteArgs,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Create a small CA and a server certificate for the mirror's names, and print where each
    /// client must put the CA.
    ///
    /// Writes ca.crt, server.crt and server.key (the key with mode 0600) to --out. The CA's key is not kept:
    /// the CA can vouch for this one certificate only. To change names, run again with --force and
    /// hand out the new ca.crt.
    Init {
        /// A name or IP address clients use to reach the mirror; repeat for each.
        #[arg(long = "host", value_name = "NAME|IP", required = true)]
        hosts: Vec<String>,
        /// Directory to write the files to.
        #[arg(long, default_value = "./tls")]
        out: PathBuf,
        /// The port the mirror will listen on (for the printed instructions).
        #[arg(long, default_value_t = 5000)]
        port: u16,
        /// Days the certificates stay valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct SrcRemoteArgs {
    /// Credentials for the registry, USER:PASS (default: ~/.docker/config.json, else anonymous).
    #[arg(long, value_name = "USER:PASS")]
    src_creds: Option<String>,
    /// Plain HTTP for non-loopback registries too (loopback always uses plain HTTP).
    #[arg(long)]
    plain_http: bool,
    /// Do not verify TLS certificates.
    #[arg(long)]
    insecure: bool,
    /// Trust this CA certificate (PEM) for registry TLS (e.g. the ca.crt of `ferry tls init`).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SyncArgs {
    /// Where to copy from.
    src: String,
    /// Where to copy to.
    dst: String,
    /// Only these refs (REPO, REPO:TAG, TAG or REPO@DIGEST); repeatable.
    #[arg(long = "ref", value_name = "REF")]
    refs: Vec<String>,
    /// Refs to carry, one per line (`#` comments).
    #[arg(long, value_name = "FILE")]
    refs_file: Option<PathBuf>,
    /// Only tags matching this regular expression.
    #[arg(long, value_name = "REGEX")]
    tags: Option<String>,
    /// Narrow image indexes to one platform (the tag then names that platform's manifest);
    /// caches are always copied whole.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Blobs copied in parallel.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Say what would be copied, with sizes; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Digests the far side already has (from `ferry inventory`): write a delta directory without them.
    #[arg(long, value_name = "FILE")]
    have: Option<PathBuf>,
    /// Credentials for the destination registry, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    dest_creds: Option<String>,
    #[command(flatten)]
    remote: SrcRemoteArgs,
}

/// Exit codes: 0 done, 1 failed (or partly failed), 2 bad arguments.
const EXIT_FAILED: i32 = 1;
const EXIT_USAGE: i32 = 2;

#[tokio::main]
async fn main() {
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage = e
                .downcast_ref::<ferry::Error>()
                .is_some_and(|e| matches!(e, ferry::Error::Usage(_)));
            std::process::exit(if usage { EXIT_USAGE } else { EXIT_FAILED });
        }
    }
}

async fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match cli.command {
        Command::Serve {
            listen,
            data,
            read_only,
            gc_interval,
            gc_grace,
            upload_expiry,
            htpasswd,
            anonymous_read,
            tls_cert,
            tls_key,
            max_uploads,
            max_uploads_per_client,
            idle_timeout,
        } => {
            let dur = |s: &str, what: &str| {
                ferry::gc::parse_duration(s).map_err(|e| usage(format!("{what}: {e}")))
            };
            let gc_interval = gc_interval
                .as_deref()
                .map(|s| dur(s, "--gc-interval"))
                .transpose()?;
            let gc_grace = dur(&gc_grace, "--gc-grace")?;
            let upload_expiry = dur(&upload_expiry, "--upload-expiry")?;
            let idle_timeout = dur(&idle_timeout, "--idle-timeout")?;
            if max_uploads == 0 || max_uploads_per_client == 0 {
                return Err(usage(
                    "--max-uploads and --max-uploads-per-client must be at least 1".into(),
                ));
            }
            let tls = match (&tls_cert, &tls_key) {
                (Some(c), Some(k)) => Some(Arc::new(ferry::tls::ServerTls::load(c, k)?)),
                _ => None,
            };
            let store = ferry::layout::Store::open(&data, read_only)
                .with_context(|| format!("opening data directory {}", data.display()))?;
            if !read_only {
                let n = store.expire_uploads(upload_expiry)?;
                if n > 0 {
                    tracing::info!(removed = n, "expired upload sessions");
                }
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(
                listen = %listener.local_addr()?,
                data = %data.display(),
                read_only,
                tls = tls.is_some(),
                "ferry registry listening"
            );
            if tls.is_none() && !listen.ip().is_loopback() {
                tracing::warn!(
                    "serving plain HTTP beyond loopback: docker and BuildKit need an \
                     insecure-registries entry, and credentials cross the network in clear text; \
                     see `ferry tls init`"
                );
            }
            tokio::spawn(reload_on_sighup(tls.clone()));
            let auth = htpasswd
                .map(|p| {
                    ferry::server::auth::Htpasswd::new(p.clone(), anonymous_read)
                        .with_context(|| format!("reading --htpasswd {}", p.display()))
                })
                .transpose()?;
            let limits = ferry::server::limits::Limits {
                max_uploads,
                max_uploads_per_client,
                idle_timeout,
                ..Default::default()
            };
            let app = Arc::new(ferry::server::App::new(store, auth).with_limits(limits));
            if !read_only {
                let app = app.clone();
                tokio::spawn(async move {
                    let hour = std::time::Duration::from_secs(3600);
                    let tick = gc_interval.map_or(hour, |g| g.min(hour));
                    let mut since_gc = std::time::Duration::ZERO;
                    loop {
                        tokio::time::sleep(tick).await;
                        since_gc += tick;
                        let a = app.clone();
                        let run_gc = gc_interval.is_some_and(|g| since_gc >= g);
                        if run_gc {
                            since_gc = std::time::Duration::ZERO;
                        }
                        let _ = tokio::task::spawn_blocking(move || {
                            if let Ok(n) = a.store.expire_uploads(upload_expiry) {
                                if n > 0 {
                                    tracing::info!(removed = n, "expired upload sessions");
                                }
                            }
                            if run_gc {
                                match ferry::gc::gc(&a.store, gc_grace, false) {
                                    Ok(r) => {
                                        use std::sync::atomic::Ordering::Relaxed;
                                        a.metrics.gc_runs.fetch_add(1, Relaxed);
                                        a.metrics.gc_bytes_freed.fetch_add(r.bytes_freed, Relaxed);
                                        tracing::info!(%r, "gc")
                                    }
                                    Err(e) => tracing::warn!(error = %e, "gc failed"),
                                }
                            }
                        })
                        .await;
                    }
                });
            }
            ferry::server::run(listener, app, tls, shutdown_signal()).await?;
            tracing::info!("stopped");
        }
        Command::Sync(a) => return sync(a).await,
        Command::Tls(TlsCommand::Init {
            hosts,
            out,
            port,
            days,
            force,
        }) => {
            let issued = ferry::tls::init(&hosts, &out, days, force)?;
            print!("{}", ferry::tls::instructions(&issued, port));
        }
        Command::Gc {
            data,
            grace,
            dry_run,
            json,
            repo,
            keep_last,
            keep_tags,
            keep_read_within,
            max_size,
        } => {
            let grace =
                ferry::gc::parse_duration(&grace).map_err(|e| usage(format!("--grace: {e}")))?;
            let re = |s: Option<String>, what: &str| -> anyhow::Result<Option<regex::Regex>> {
                s.map(|s| regex::Regex::new(&s).map_err(|e| usage(format!("{what}: {e}"))))
                    .transpose()
            };
            let policy = ferry::retention::Policy {
                repo: re(repo, "--repo")?,
                keep_last,
                keep_tags: re(keep_tags, "--keep-tags")?,
                keep_read_within: keep_read_within
                    .map(|s| {
                        ferry::gc::parse_duration(&s)
                            .map_err(|e| usage(format!("--keep-read-within: {e}")))
                    })
                    .transpose()?,
                max_size: max_size
                    .map(|s| {
                        ferry::retention::parse_size(&s)
                            .map_err(|e| usage(format!("--max-size: {e}")))
                    })
                    .transpose()?,
            };
            let store = Arc::new(
                ferry::layout::Store::open(&data, dry_run)
                    .with_context(|| format!("opening data directory {}", data.display()))?,
            );
            let mut out = serde_json::Map::new();
            if !policy.is_empty() {
                let s = store.clone();
                let plan = tokio::task::spawn_blocking(move || ferry::retention::plan(&s, &policy))
                    .await??;
                if !json {
                    println!("{plan}");
                }
                if !dry_run {
                    ferry::retention::apply(&store, &plan).await?;
                }
                out.insert("retention".into(), serde_json::to_value(&plan)?);
            }
            let s = store.clone();
            let r =
                tokio::task::spawn_blocking(move || ferry::gc::gc(&s, grace, dry_run)).await??;
            if json {
                out.insert("gc".into(), serde_json::to_value(&r)?);
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{r}");
            }
        }
        Command::Verify {
            location,
            data,
            jobs,
            repair,
            json,
        } => {
            let data = match location
                .as_deref()
                .map(ferry::location::Location::parse)
                .transpose()?
            {
                Some(loc @ ferry::location::Location::Registry { .. }) => {
                    let reports = ferry::check::check(&loc, &[], &Default::default()).await?;
                    return report_checks(&reports, json);
                }
                Some(ferry::location::Location::Dir { path }) => path,
                None => data,
            };
            let store = ferry::layout::Store::open(&data, !repair)
                .with_context(|| format!("opening data directory {}", data.display()))?;
            let jobs =
                jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let r =
                tokio::task::spawn_blocking(move || ferry::verify::verify(&store, jobs, repair))
                    .await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{r}");
            }
            return Ok(if r.ok() { 0 } else { EXIT_FAILED });
        }
        Command::Check {
            location,
            refs,
            json,
            remote,
        } => {
            let loc = ferry::location::Location::parse(&location)?;
            let reports = ferry::check::check(
                &loc,
                &refs,
                &remote_options(&remote, remote.src_creds.clone()),
            )
            .await?;
            if reports.is_empty() {
                return Err(usage(format!("no refs selected in {loc}")));
            }
            return report_checks(&reports, json);
        }
        Command::Inventory {
            location,
            output,
            remote,
        } => {
            let loc = ferry::location::Location::parse(&location)?;
            let place = ferry::sync::Place::open(
                &loc,
                &remote_options(&remote, remote.src_creds.clone()),
                false,
            )?;
            let digests = place.inventory(&loc).await?;
            let text = ferry::sync::format_inventory(&loc, &digests);
            match output {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                    eprintln!("{} digests written to {}", digests.len(), p.display());
                }
                None => print!("{text}"),
            }
        }
    }
    Ok(0)
}

/// Print `ferry check` / registry `ferry verify` reports; exit 1 when any ref has a problem.
fn report_checks(reports: &[ferry::check::RefReport], json: bool) -> anyhow::Result<i32> {
    if json {
        println!("{}", serde_json::to_string_pretty(reports)?);
    } else {
        for r in reports {
            println!("{r}");
        }
    }
    Ok(if reports.iter().all(|r| r.ok()) {
        0
    } else {
        EXIT_FAILED
    })
}

fn remote_options(r: &SrcRemoteArgs, creds: Option<String>) -> ferry::remote::RemoteOptions {
    ferry::remote::RemoteOptions {
        plain_http: r.plain_http,
        insecure: r.insecure,
        ca_file: r.ca_file.clone(),
        creds,
    }
}

fn usage(msg: String) -> anyhow::Error {
    ferry::Error::Usage(msg).into()
}

async fn sync(a: SyncArgs) -> anyhow::Result<i32> {
    use ferry::location::Location;
    let src = Location::parse(&a.src)?;
    let dst = Location::parse(&a.dst)?;
    let mut refs = a.refs.clone();
    if let Some(f) = &a.refs_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| usage(format!("--refs-file {}: {e}", f.display())))?;
        refs.extend(ferry::sync::parse_refs_file(&text));
    }
    let tags = match &a.tags {
        Some(t) => Some(regex::Regex::new(t).map_err(|e| usage(format!("--tags: {e}")))?),
        None => None,
    };
    let have = match &a.have {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| usage(format!("--have {}: {e}", f.display())))?;
            Some(ferry::sync::parse_digest_list(&text)?)
        }
        None => None,
    };
    if a.jobs == 0 {
        return Err(usage("--jobs must be at least 1".into()));
    }
    let platform = match &a.platform {
        Some(p) => Some(p.parse::<ferry::sync::Platform>()?),
        None => None,
    };
    let opts = ferry::sync::SyncOptions {
        platform,
        refs,
        tags,
        jobs: a.jobs,
        dry_run: a.dry_run,
        have,
        src: remote_options(&a.remote, a.remote.src_creds.clone()),
        dest: remote_options(&a.remote, a.dest_creds.clone()),
    };
    let progress: Box<dyn ferry::sync::Progress> = if a.json {
        Box::new(ferry::sync::Quiet)
    } else {
        Box::new(progress::Bars::new())
    };
    let summary = ferry::sync::sync(&src, &dst, &opts, progress.as_ref()).await?;
    drop(progress);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!("{summary}");
    }
    Ok(if summary.failed.is_empty() {
        0
    } else {
        EXIT_FAILED
    })
}

mod progress {
    //! Progress for people: bars on a terminal (overall bytes plus one bar per large blob),
    //! one plain line per blob otherwise.

    use std::collections::HashMap;
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ferry::digest::Digest;
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

    pub struct Bars {
        tty: bool,
        multi: MultiProgress,
        bars: Mutex<HashMap<Digest, BlobBar>>,
    }

    /// A blob's bar and the task that moves it from the byte counter.
    struct BlobBar {
        bar: ProgressBar,
        ticker: tokio::task::JoinHandle<()>,
    }

    impl Bars {
        pub fn new() -> Bars {
            Bars {
                tty: std::io::stderr().is_terminal(),
                multi: MultiProgress::new(),
                bars: Mutex::new(HashMap::new()),
            }
        }
    }

    impl ferry::sync::Progress for Bars {
        fn start_blob(&self, digest: &Digest, size: u64) -> Arc<AtomicU64> {
            let counter = Arc::new(AtomicU64::new(0));
            if self.tty {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(digest.hex()[..12].to_owned());
                let (b, c) = (bar.clone(), counter.clone());
                let ticker = tokio::spawn(async move {
                    loop {
                        b.set_position(c.load(Ordering::Relaxed));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                if let Ok(mut m) = self.bars.lock() {
                    m.insert(digest.clone(), BlobBar { bar, ticker });
                }
            }
            counter
        }

        fn finish_blob(&self, digest: &Digest, size: u64, outcome: &str) {
            if let Some(b) = self.bars.lock().ok().and_then(|mut m| m.remove(digest)) {
                b.ticker.abort();
                b.bar.finish_and_clear();
            }
            let line = format!("{outcome} {digest} ({size} bytes)");
            if self.tty {
                let _ = self.multi.println(line);
            } else {
                eprintln!("{line}");
            }
        }

        fn message(&self, msg: &str) {
            if self.tty {
                let _ = self.multi.println(msg);
            } else {
                eprintln!("{msg}");
            }
        }
    }
}

/// SIGHUP re-reads the TLS certificate and key (after a renewal); a bad pair keeps the old one.
/// Without TLS there is nothing to reload, but SIGHUP must still not kill the server (its default
/// action), since service managers send it as "reload".
async fn reload_on_sighup(tls: Option<Arc<ferry::tls::ServerTls>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let Some(tls) = &tls else {
            tracing::info!(
                "SIGHUP: nothing to reload (no --tls-cert; --htpasswd is re-read when it changes)"
            );
            continue;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
            }
        }
    }
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
