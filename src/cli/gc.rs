//! `ferry gc`: retention (from flags or a file), then garbage collection.

use std::sync::Arc;

use super::{data_location, duration, open_store, regex, usage};

#[derive(clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long, env = "FERRY_DATA", default_value = "./registry-data")]
    data: String,
    #[arg(
        long,
        value_name = "DURATION",
        env = "FERRY_GC_GRACE",
        default_value = "1h"
    )]
    grace: String,
    /// Say what would go and how much space returns; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
    /// Retention rules from a TOML file: `max-size = "200G"` and one `[repo."REGEX"]` table per
    /// repository pattern (the whole name) with keep-last, keep-tags, keep-read-within.
    #[arg(
        long,
        value_name = "FILE",
        env = "FERRY_RETENTION",
        conflicts_with_all = ["repo", "keep_last", "keep_tags", "keep_read_within", "max_size"]
    )]
    retention: Option<std::path::PathBuf>,
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
}

pub async fn run(a: Args) -> anyhow::Result<i32> {
    let data = data_location(&a.data, "gc")?;
    let grace = duration(&a.grace, "--grace")?;
    let policy = match &a.retention {
        Some(file) => ferry::retention::Policy::load(file)?,
        None => ferry::retention::Policy::from_flags(
            regex(a.repo, "--repo")?,
            a.keep_last,
            regex(a.keep_tags, "--keep-tags")?,
            a.keep_read_within
                .as_deref()
                .map(|s| duration(s, "--keep-read-within"))
                .transpose()?,
            a.max_size
                .map(|s| {
                    ferry::retention::parse_size(&s).map_err(|e| usage(format!("--max-size: {e}")))
                })
                .transpose()?,
        ),
    };
    let store = Arc::new(open_store(&data, a.dry_run).await?);
    let mut out = serde_json::Map::new();
    if !policy.is_empty() {
        let s = store.clone();
        let plan =
            tokio::task::spawn_blocking(move || ferry::retention::plan(&s, &policy)).await??;
        if !a.json {
            println!("{plan}");
        }
        if !a.dry_run {
            ferry::retention::apply(&store, &plan).await?;
        }
        out.insert("retention".into(), serde_json::to_value(&plan)?);
    }
    let s = store.clone();
    let dry_run = a.dry_run;
    let tally = Arc::new(ferry::progress::Tally::default());
    let meter = super::progress::Meter::start("gc", tally.clone(), false);
    let r = tokio::task::spawn_blocking(move || ferry::gc::gc_with(&s, grace, dry_run, &tally))
        .await??;
    drop(meter);
    if a.json {
        out.insert("gc".into(), serde_json::to_value(&r)?);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{r}");
    }
    Ok(0)
}
