//! `ferry verify`: a directory (re-hash every blob) or a registry (download and hash every blob).

use std::sync::Arc;

use super::{data_location, open_store, report_checks, EXIT_FAILED};

#[derive(clap::Args)]
pub struct Args {
    /// A registry or a directory to verify instead of --data.
    location: Option<String>,
    /// The data directory (or any layout directory).
    #[arg(long, env = "FERRY_DATA", default_value = "./registry-data")]
    data: String,
    /// Threads hashing at once (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Move corrupt blobs to .ferry/quarantine/ so a later sync or push can restore them.
    #[arg(long)]
    repair: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let data = match a
        .location
        .as_deref()
        .map(ferry::location::Location::parse)
        .transpose()?
    {
        Some(
            loc @ (ferry::location::Location::Registry { .. }
            | ferry::location::Location::OciArchive { .. }),
        ) => {
            let reports = ferry::check::check(&loc, &[], &[], &Default::default()).await?;
            return report_checks(&reports, a.json);
        }
        Some(loc) => loc,
        None => data_location(&a.data, "verify")?,
    };
    let store = open_store(&data, !a.repair).await?;
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let repair = a.repair;
    let tally = Arc::new(ferry::progress::Tally::default());
    let meter = super::progress::Meter::start("verify", tally.clone(), true);
    let r = tokio::task::spawn_blocking(move || {
        ferry::verify::verify_with(&store, jobs, repair, &tally)
    })
    .await??;
    drop(meter);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{r}");
    }
    Ok(if r.ok() { 0 } else { EXIT_FAILED })
}
