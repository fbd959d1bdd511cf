//! `ferry check`.

use super::{report_checks, usage, SrcRemoteArgs};

#[derive(clap::Args)]
pub struct Args {
    location: String,
    /// Only these refs (REPO, REPO:TAG, TAG or REPO@DIGEST); repeatable. Default: all.
    #[arg(long = "ref", value_name = "REF")]
    refs: Vec<String>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: SrcRemoteArgs,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let loc = ferry::location::Location::parse(&a.location)?;
    let reports =
        ferry::check::check(&loc, &a.refs, &a.remote.options(a.remote.src_creds.clone())).await?;
    if reports.is_empty() {
        return Err(usage(format!("no refs selected in {loc}")));
    }
    report_checks(&reports, a.json)
}
