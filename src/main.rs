//! The `ferry` command line: the commands and their flags, logging, and dispatch. Each command's
//! flags and report live in its own module under `cli/`; what they do lives in the library.

mod cli;

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
    Serve(cli::serve::Args),
    /// TLS helpers for a mirror shared over a LAN.
    #[command(subcommand)]
    Tls(cli::tls::Command),
    /// Remove blobs nothing references any more (older than the grace period).
    Gc(cli::gc::Args),
    /// Re-hash every blob and check every manifest's references; exit 1 on problems.
    ///
    /// With a registry location (`docker://HOST[:PORT][/REPO[:TAG]]`), every blob of every ref is
    /// downloaded and hashed instead.
    Verify(cli::verify::Args),
    /// Copy images and caches between registries and directories: only what is missing, verified,
    /// resumable.
    ///
    /// A location is `docker://HOST[:PORT][/REPO[:TAG|@DIGEST]]`, a directory (`oci:PATH` or a
    /// plain path), `s3://BUCKET[/PREFIX]`, `oci-archive:PATH` (a tar; PATH.000 or PATH.index for
    /// split volumes) or, as a destination, `docker-archive:PATH` (for `docker load`). A
    /// registry without a repository means its whole catalog, a repository without a tag all its
    /// tags, a directory or an archive all its tags.
    Sync(cli::sync::Args),
    /// Is everything a ref needs present and intact? (Run it on the offline side before the
    /// cable is cut.) Reports cache records and layers for BuildKit caches.
    Check(cli::check::Args),
    /// List every digest a location holds (for `ferry sync --have` on the other side).
    Inventory(cli::inventory::Args),
    /// What builds resolved through this registry (pull-through or not), as a refs file for
    /// `ferry sync --refs-file`: carry what the builds of the last week used.
    Used(cli::used::UsedArgs),
    /// What the (offline) mirror was asked for and did not have, as a refs file for the next
    /// trip's `ferry sync --refs-file`.
    Misses(cli::used::MissesArgs),
    /// Keys for signed trips (`ferry sync --sign` / `--verify-key`).
    #[command(subcommand)]
    Key(cli::key::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (ferry.1 and one per command) into DIR (used to build the package).
    #[command(hide = true)]
    Man { dir: std::path::PathBuf },
    /// Checks and experiments (not in --help).
    #[command(hide = true, subcommand)]
    Debug(cli::debug::Command),
}

fn main() {
    keep_freed_memory();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(cli::EXIT_FAILED);
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage = e
                .downcast_ref::<ferry::Error>()
                .is_some_and(|e| matches!(e, ferry::Error::Usage(_)));
            std::process::exit(if usage {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_FAILED
            });
        }
    }
}

/// glibc hands freed memory back to the kernel as soon as a heap's free top passes 128 KiB, and
/// serves blocks over 128 KiB with fresh mappings: a push then faults in ~110,000 fresh pages per
/// GiB as hyper's read buffers come and go between threads (measured: ~0.2 CPU-s of the ~1.9 per
/// GiB). Keeping some freed memory per heap for reuse removes nearly all of them without raising
/// the peak: memory is reused, not added.
///
/// But what is kept is kept per heap, and glibc makes up to 8 heaps per core as threads contend
/// (the blocking pool has many threads): under a soak's mixed load that retained ~150 MiB of freed
/// memory (RSS 176-197 MiB against 40-60 with two heaps). So: one heap per core, and 16 MiB kept
/// per heap.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(2);
        // SAFETY: mallopt only sets allocator parameters; called before any thread is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
    }
}

async fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,object_store=warn"));
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
        Command::Serve(a) => cli::serve::run(a).await,
        Command::Tls(c) => cli::tls::run(c),
        Command::Gc(a) => cli::gc::run(a).await,
        Command::Verify(a) => cli::verify::run(a).await,
        Command::Sync(a) => cli::sync::run(a).await,
        Command::Check(a) => cli::check::run(a).await,
        Command::Inventory(a) => cli::inventory::run(a).await,
        Command::Key(c) => cli::key::run(c),
        Command::Debug(c) => cli::debug::run(c),
        Command::Used(a) => cli::used::used(a).await,
        Command::Misses(a) => cli::used::misses(a).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            Ok(0)
        }
    }
}
