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
    /// Check what this Dockerfile needs instead (base images, `COPY --from` and `RUN
    /// --mount=from=` images, the `# syntax=` frontend), read as BuildKit reads it.
    #[arg(long, value_name = "PATH")]
    dockerfile: Option<std::path::PathBuf>,
    /// With --dockerfile: a build argument, as `docker build --build-arg`; repeatable.
    #[arg(long, value_name = "K=V", requires = "dockerfile")]
    build_arg: Vec<String>,
    /// With --dockerfile: the stage built (`docker build --target`); only what it needs counts.
    #[arg(long, value_name = "STAGE", requires = "dockerfile")]
    target: Option<String>,
    /// With --dockerfile: also check this cache ref (the build's `--cache-from`).
    #[arg(long, value_name = "REF", requires = "dockerfile")]
    cache_ref: Vec<String>,
    /// Image indexes must hold these platforms (repeatable or comma-separated); an index
    /// carried for other platforms only is then reported as incomplete.
    #[arg(long, value_name = "OS/ARCH[/VARIANT],…", value_delimiter = ',')]
    platform: Vec<String>,
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
    if let Some(df) = &a.dockerfile {
        return dockerfile(&a, &loc, df).await;
    }
    let platforms = a
        .platform
        .iter()
        .map(|p| p.trim().parse::<ferry::sync::Platform>())
        .collect::<Result<Vec<_>, _>>()?;
    let reports = ferry::check::check(
        &loc,
        &a.refs,
        &platforms,
        &a.remote.options(a.remote.src_creds.clone()),
    )
    .await?;
    if reports.is_empty() {
        return Err(usage(format!("no refs selected in {loc}")));
    }
    report_checks(&reports, a.json)
}

async fn dockerfile(
    a: &Args,
    loc: &ferry::location::Location,
    path: &std::path::Path,
) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("--dockerfile {}: {e}", path.display())))?;
    let mut args = Vec::new();
    for kv in &a.build_arg {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            // `--build-arg K` takes K from the environment, as docker does.
            None => (kv.clone(), std::env::var(kv).unwrap_or_default()),
        };
        args.push((k, v));
    }
    let mut needs = ferry::dockerfile::needs(&text, &args, a.target.as_deref())?;
    for r in &a.cache_ref {
        let (repository, reference) = ferry::dockerfile::normalize(r)
            .ok_or_else(|| usage(format!("--cache-ref {r:?} is not a reference")))?;
        needs.push(ferry::dockerfile::Need {
            repository,
            reference,
            used_by: "--cache-ref".into(),
            platform: None,
        });
    }
    let results =
        ferry::check::check_needs(loc, &needs, &a.remote.options(a.remote.src_creds.clone()))
            .await?;
    let ok = results.iter().all(|(_, r)| r.ok());
    if a.json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(n, r)| serde_json::json!({ "need": n, "report": r, "ok": r.ok() }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (n, r) in &results {
            let platform = n
                .platform
                .as_ref()
                .map(|p| format!(" --platform={p}"))
                .unwrap_or_default();
            // A need found nowhere has no graph: say where it was looked for.
            let absent =
                r.manifests == 0 && r.error.as_ref().is_some_and(|e| e.starts_with("not on"));
            let word = if r.ok() {
                "ok     "
            } else if absent {
                "MISSING"
            } else {
                "BROKEN "
            };
            println!("{word} {}{platform}  ({})", n.reference_string(), n.used_by);
            match (&r.error, absent) {
                (Some(e), true) => println!("        {e}"),
                _ => println!("        {r}"),
            }
        }
        let good = results.iter().filter(|(_, r)| r.ok()).count();
        println!(
            "{} of {} image(s) needed by {} are on {loc} and intact{}",
            good,
            results.len(),
            path.display(),
            if ok {
                String::new()
            } else {
                format!("; {} are not", results.len() - good)
            }
        );
    }
    Ok(if ok { 0 } else { super::EXIT_FAILED })
}
