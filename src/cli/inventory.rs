//! `ferry inventory`.

use std::path::PathBuf;

use anyhow::Context;

use super::SrcRemoteArgs;

#[derive(clap::Args)]
pub struct Args {
    location: String,
    /// Write to FILE instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    remote: SrcRemoteArgs,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let loc = ferry::location::Location::parse(&a.location)?;
    let place =
        ferry::sync::Place::open(&loc, &a.remote.options(a.remote.src_creds.clone()), false)
            .await?;
    let digests = place.inventory(&loc).await?;
    let text = ferry::sync::format_inventory(&loc, &digests);
    match a.output {
        Some(p) => {
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("{} digests written to {}", digests.len(), p.display());
        }
        None => print!("{text}"),
    }
    Ok(0)
}
