//! `ferry check`.

use super::{report_checks, usage, SrcRemoteArgs};

#[derive(clap::Args)]
pub struct Args {
    location: String,
    /// Only these refs (REPO, REPO:TAG, TAG or REPO@DIGEST); repeatable. Default: all.
    #[arg(long = "ref", value_name = "REF")]
    refs: Vec<String>,
    /// First check the trip against its statement signed by this public key (see
    /// `ferry sync --sign`); exit 1, naming what differs, if it does not verify.
    #[arg(long, value_name = "PUB")]
    verify_key: Option<std::path::PathBuf>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: SrcRemoteArgs,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let loc = ferry::location::Location::parse(&a.location)?;
    if let Some(k) = &a.verify_key {
        let key = super::key::verifier(k)?;
        let place = ferry::sync::Place::open(&loc, &Default::default(), false).await?;
        match ferry::trip::verify(&place, &key, 4).await {
            Ok(st) => eprintln!(
                "{loc}: signed by {} on {}; its {} tag(s) and {} blob(s) are as stated",
                st.key_id,
                st.created,
                st.tags.len(),
                st.blobs.len()
            ),
            Err(e) => {
                eprintln!("{loc}: {e}");
                return Ok(super::EXIT_FAILED);
            }
        }
    }
    let reports =
        ferry::check::check(&loc, &a.refs, &a.remote.options(a.remote.src_creds.clone())).await?;
    if reports.is_empty() {
        return Err(usage(format!("no refs selected in {loc}")));
    }
    report_checks(&reports, a.json)
}
