//! `ferry used` and `ferry misses`: what the registry recorded, as refs files for
//! `ferry sync --refs-file`.

use std::path::PathBuf;

use anyhow::Context;

use super::{data_location, duration, open_store};

#[derive(clap::Args)]
pub struct UsedArgs {
    /// The registry's data (a directory or s3://BUCKET[/PREFIX]).
    location: String,
    /// Only what was used within this long (e.g. 7d, 12h).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Write to FILE instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct MissesArgs {
    /// The offline mirror's data (a directory or s3://BUCKET[/PREFIX]).
    #[arg(long, env = "FERRY_DATA", default_value = "./registry-data")]
    data: String,
    /// Write to FILE instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

fn write(out: Option<&PathBuf>, text: &str, n: usize, what: &str) -> anyhow::Result<()> {
    match out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("{n} {what} written to {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

pub async fn used(a: UsedArgs) -> anyhow::Result<i32> {
    let loc = data_location(&a.location, "used")?;
    let store = open_store(&loc, true).await?;
    let since = match &a.since {
        Some(s) => {
            let d = duration(s, "--since")?;
            std::time::SystemTime::now()
                .checked_sub(d)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |t| t.as_secs())
        }
        None => 0,
    };
    let (list, carried) = tokio::task::block_in_place(|| {
        let list = ferry::record::read_used(&store)?;
        let carried = ferry::record::carried_by_tags(&store, &list);
        Ok::<_, ferry::Error>((list, carried))
    })?;
    let header = format!(
        "# ferry used {loc}{}: manifests builds resolved, for `ferry sync --refs-file`\n",
        a.since
            .as_ref()
            .map(|s| format!(" --since {s}"))
            .unwrap_or_default()
    );
    let text =
        ferry::record::used_refs_file(&list, since, &|u| carried.contains(&u.digest), &header);
    let n = text.lines().filter(|l| !l.starts_with('#')).count();
    write(a.output.as_ref(), &text, n, "refs")?;
    Ok(0)
}

pub async fn misses(a: MissesArgs) -> anyhow::Result<i32> {
    let loc = data_location(&a.data, "misses")?;
    let store = open_store(&loc, true).await?;
    let list = tokio::task::block_in_place(|| ferry::record::read_misses(&store))?;
    let header = format!(
        "# ferry misses --data {loc}: manifests the mirror was asked for and did not have\n"
    );
    let text = ferry::record::misses_refs_file(&list, &header);
    write(a.output.as_ref(), &text, list.len(), "refs")?;
    Ok(0)
}
