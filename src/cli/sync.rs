//! `ferry sync`.

use std::path::PathBuf;

use super::{usage, SrcRemoteArgs, EXIT_FAILED};

#[derive(clap::Args)]
pub struct Args {
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
    /// Carry only these platforms of multi-platform images (repeatable or comma-separated:
    /// linux/amd64,linux/arm64/v8). The index travels as it is, so the tag's digest is the
    /// same on both sides; the other platforms' manifests stay behind. Caches travel whole.
    #[arg(long, value_name = "OS/ARCH[/VARIANT],…", value_delimiter = ',')]
    platform: Vec<String>,
    /// Which referrers travel with the manifests they refer to: all, none, or kinds (signature,
    /// sbom, provenance, attestation, other) and artifact types, comma-separated.
    #[arg(long, value_name = "all|none|TYPE,…", default_value = "all")]
    referrers: String,
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
    /// With --have: carry every layer whole. By default a gzip layer made by Go's gzip (docker,
    /// BuildKit, containerd) travels as a patch against a layer the far side has, when that is
    /// smaller, and is rebuilt exactly there.
    #[arg(long, requires = "have")]
    no_patches: bool,
    /// Write an archive destination as numbered volumes, each smaller than SIZE (`4G` for a
    /// FAT32 stick, `100M` for an upload portal), with PATH.index naming them.
    #[arg(long, value_name = "SIZE")]
    split: Option<String>,
    /// Sign the trip with this secret key (from `ferry key generate`): a statement of every tag
    /// and blob, written into the destination directory or archive.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Refuse a source trip not signed by this public key, or that differs from its statement,
    /// before anything is copied.
    #[arg(long, value_name = "PUB")]
    verify_key: Option<PathBuf>,
    /// Credentials for the destination registry, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    dest_creds: Option<String>,
    #[command(flatten)]
    remote: SrcRemoteArgs,
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    use ferry::location::Location;
    let src = Location::parse(&a.src)?;
    let dst = Location::parse(&a.dst)?;
    let mut refs = a.refs.clone();
    if let Some(f) = &a.refs_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| usage(format!("--refs-file {}: {e}", f.display())))?;
        refs.extend(ferry::sync::parse_refs_file(&text));
    }
    let tags = super::regex(a.tags.clone(), "--tags")?;
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
    let platforms = a
        .platform
        .iter()
        .map(|p| p.trim().parse::<ferry::sync::Platform>())
        .collect::<Result<Vec<_>, _>>()?;
    let referrers = a.referrers.parse::<ferry::sync::ReferrerFilter>()?;
    let split = a
        .split
        .as_deref()
        .map(|s| ferry::retention::parse_size(s).map_err(|e| usage(format!("--split: {e}"))))
        .transpose()?;
    let sign = a.sign.as_deref().map(super::key::signer).transpose()?;
    let verify_key = a
        .verify_key
        .as_deref()
        .map(super::key::verifier)
        .transpose()?;
    let opts = ferry::sync::SyncOptions {
        split,
        sign,
        verify_key,
        platforms,
        refs,
        tags,
        jobs: a.jobs,
        dry_run: a.dry_run,
        have,
        no_patches: a.no_patches,
        referrers,
        src: a.remote.options(a.remote.src_creds.clone()),
        dest: a.remote.options(a.dest_creds.clone()),
    };
    let progress: Box<dyn ferry::sync::Progress> = if a.json {
        Box::new(ferry::sync::Quiet)
    } else {
        Box::new(super::progress::Bars::new())
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
