//! One module per command: each turns its flags into a library call and prints the report.
//! Nothing here decides how the registry behaves; that is the library's.

pub mod check;
pub mod debug;
pub mod gc;
pub mod inventory;
pub mod key;
pub mod progress;
pub mod serve;
pub mod sync;
pub mod tls;
pub mod used;
pub mod verify;

use std::path::PathBuf;

/// Exit codes: 0 done, 1 failed (or partly failed), 2 bad arguments.
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

pub fn usage(msg: String) -> anyhow::Error {
    ferry::Error::Usage(msg).into()
}

/// A duration flag (`30s`, `15m`, `1h`, `7d`), named in the error.
pub fn duration(s: &str, flag: &str) -> anyhow::Result<std::time::Duration> {
    ferry::duration::parse_duration(s).map_err(|e| usage(format!("{flag}: {e}")))
}

/// A regular-expression flag, named in the error.
pub fn regex(s: Option<String>, flag: &str) -> anyhow::Result<Option<regex::Regex>> {
    s.map(|s| regex::Regex::new(&s).map_err(|e| usage(format!("{flag}: {e}"))))
        .transpose()
}

/// `--data`: a store, a directory or a bucket (or, read-only, an `oci-archive:`). Other
/// location forms are refused by name rather than taken as a relative directory to create
/// (`--data dcoker://x` must not make `./dcoker:/x`).
pub fn data_location(s: &str, command: &str) -> anyhow::Result<ferry::location::Location> {
    use ferry::location::Location;
    match Location::parse(s)? {
        l @ (Location::Dir { .. } | Location::Bucket { .. } | Location::OciArchive { .. }) => Ok(l),
        other => Err(usage(format!(
            "{command} --data takes a directory (PATH or oci:PATH), s3://BUCKET[/PREFIX] or (read-only) oci-archive:PATH, not {other}"
        ))),
    }
}

/// Open the store `--data` names, saying which on failure.
pub async fn open_store(
    loc: &ferry::location::Location,
    read_only: bool,
) -> anyhow::Result<ferry::layout::Store> {
    use anyhow::Context;
    match loc {
        // A bucket's errors name it already, in one line.
        ferry::location::Location::Bucket { .. } => {
            Ok(ferry::layout::Store::open_at(loc, read_only).await?)
        }
        _ => ferry::layout::Store::open_at(loc, read_only)
            .await
            .with_context(|| format!("opening {loc}")),
    }
}

#[derive(clap::Args)]
pub struct SrcRemoteArgs {
    /// Credentials for the registry, USER:PASS (default: ~/.docker/config.json, else anonymous).
    #[arg(long, value_name = "USER:PASS")]
    pub src_creds: Option<String>,
    /// Plain HTTP for non-loopback registries too (loopback always uses plain HTTP).
    #[arg(long)]
    pub plain_http: bool,
    /// Do not verify TLS certificates.
    #[arg(long)]
    pub insecure: bool,
    /// Trust this CA certificate (PEM) for registry TLS (e.g. the ca.crt of `ferry tls init`).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl SrcRemoteArgs {
    pub fn options(&self, creds: Option<String>) -> ferry::remote::RemoteOptions {
        ferry::remote::RemoteOptions {
            plain_http: self.plain_http,
            insecure: self.insecure,
            ca_file: self.ca_file.clone(),
            creds,
            idle_timeout: None,
        }
    }
}

/// Print `ferry check` / registry `ferry verify` reports; exit 1 when any ref has a problem.
pub fn report_checks(reports: &[ferry::check::RefReport], json: bool) -> anyhow::Result<i32> {
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
