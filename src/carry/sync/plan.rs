//! What a sync copies: the roots a source and a list of references name (a platform picked out of
//! an index, Docker Hub's names, where each lands at the destination), and the lists it reads.

use super::*;

/// For `docker-archive:` (`docker load` takes images, not indexes): an image index (or manifest
/// list) whose children carry platforms is narrowed to the matching image manifest, which then
/// gets the tag (as `docker pull` does). Anything else, caches included, is copied whole.
pub(super) async fn select_platform(
    src: &Place,
    root: &Root,
    platform: &Platform,
) -> Result<Reference> {
    let (bytes, mt, _) = src.manifest(&root.repo, &root.reference).await?;
    if !media::is_index_type(&mt) {
        return Ok(root.reference.clone());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    let children: Vec<&serde_json::Value> = v["manifests"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["platform"].is_object()).collect())
        .unwrap_or_default();
    if children.is_empty() {
        return Ok(root.reference.clone());
    }
    let pick = children
        .iter()
        .find(|d| {
            media::is_manifest_type(d["mediaType"].as_str().unwrap_or(""))
                && platform.matches(&d["platform"])
        })
        .ok_or_else(|| Error::Usage(format!("{root}: no manifest for platform {platform}")))?;
    let d = pick["digest"]
        .as_str()
        .unwrap_or("")
        .parse::<Digest>()
        .map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    Ok(Reference::Digest(d))
}

/// Wrap a stream so that it fails at its end when the bytes do not hash to `expected` — a corrupt
/// source is named and nothing reaches the destination's final commit.
pub(super) fn verifying(
    stream: BoxStream<'static, std::io::Result<Bytes>>,
    expected: Digest,
    progress: Arc<AtomicU64>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let hasher = Arc::new(Mutex::new(Some(expected.algorithm().hasher())));
    let h2 = hasher.clone();
    let tail = futures_util::stream::once(async move {
        let h = h2.lock().unwrap_or_else(|p| p.into_inner()).take();
        match h.map(|h| h.finish()) {
            Some(actual) if actual == expected => None,
            Some(actual) => Some(Err(std::io::Error::other(format!(
                "{expected}: the source's bytes hash to {actual}"
            )))),
            None => None,
        }
    })
    .filter_map(|x| async move { x });
    stream
        .inspect_ok(move |b| {
            progress.fetch_add(b.len() as u64, Ordering::Relaxed);
            if let Some(h) = hasher.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                h.update(b);
            }
        })
        .chain(tail)
        .boxed()
}

/// Destination name for a source root: a destination that names a repository (and tag) renames a
/// single-repository source into it.
pub(super) fn dest_root(root: &Root, dst: &Location) -> Root {
    match dst {
        Location::Registry {
            repo: Some(repo),
            reference,
            ..
        } => Root {
            repo: repo.clone(),
            reference: match reference {
                Some(Reference::Tag(t)) => Reference::Tag(t.clone()),
                _ => root.reference.clone(),
            },
            dest_repo: None,
        },
        _ => Root {
            repo: root.dest_repo.clone().unwrap_or_else(|| root.repo.clone()),
            reference: root.reference.clone(),
            dest_repo: None,
        },
    }
}

/// A ref that names one manifest (`REPO:TAG`, `REPO@DIGEST`), as opposed to a pattern (`REPO`,
/// `TAG`) matched against the source's tags.
pub(super) fn explicit_ref(s: &str) -> Option<Root> {
    if let Some((repo, d)) = s.split_once('@') {
        let d = d.parse::<Digest>().ok()?;
        return Some(Root::new(repo, Reference::Digest(d)));
    }
    let (repo, tag) = s.rsplit_once(':')?;
    if repo.is_empty() || tag.contains('/') {
        return None;
    }
    Some(Root::new(repo, Reference::parse(tag).ok()?))
}

fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// A ref whose first component names the source registry itself (`docker.io/library/alpine:3`
/// read from `docker://docker.io`, as `ferry misses` and `ferry used` write them): read as the
/// registry names it, written under the full name, so the offline mirror serves it under the
/// same name a pull-through mirror does. Docker Hub's one-component names get `library/`.
pub(super) fn strip_source_host(root: Root, host: &str) -> Root {
    let Some((first, rest)) = root.repo.split_once('/') else {
        return root;
    };
    if !(first == host || (is_docker_hub(first) && is_docker_hub(host))) {
        return root;
    }
    let rest = if is_docker_hub(first) && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest.to_owned()
    };
    Root {
        dest_repo: Some(format!("{first}/{rest}")),
        repo: rest,
        reference: root.reference,
    }
}

/// The roots a sync copies: every root of the source, narrowed by `refs`. A registry source is
/// never asked for its catalog when every ref names one manifest (Docker Hub and most public
/// registries have none), and a digest ref is copied even though no tag names it.
pub(super) async fn select_roots(
    src: &Place,
    loc: &Location,
    refs: &[String],
) -> Result<Vec<Root>> {
    if refs.is_empty() {
        return src.roots(loc).await;
    }
    let explicit: Vec<Option<Root>> = refs.iter().map(|r| explicit_ref(r)).collect();
    let patterns: Vec<&String> = refs
        .iter()
        .zip(&explicit)
        .filter(|(_, e)| e.is_none())
        .map(|(r, _)| r)
        .collect();
    let mut roots = match (src, loc) {
        (
            Place::Remote(_),
            Location::Registry {
                host, repo: None, ..
            },
        ) => {
            let mut out = if patterns.is_empty() {
                Vec::new()
            } else {
                src.roots(loc).await?
            };
            out.retain(|r| patterns.iter().any(|p| ref_matches(r, p)));
            out.extend(
                explicit
                    .into_iter()
                    .flatten()
                    .map(|r| strip_source_host(r, host)),
            );
            out
        }
        (Place::Store(_), _) => {
            let mut out = src.roots(loc).await?;
            out.retain(|r| refs.iter().any(|p| ref_matches(r, p)));
            // A digest names a manifest whether or not a tag does.
            out.extend(
                explicit
                    .into_iter()
                    .flatten()
                    .filter(|r| matches!(r.reference, Reference::Digest(_))),
            );
            out
        }
        _ => {
            let mut out = src.roots(loc).await?;
            out.retain(|r| refs.iter().any(|p| ref_matches(r, p)));
            out
        }
    };
    roots.sort();
    roots.dedup();
    Ok(roots)
}

/// Parse a `--have` / inventory file: one digest per line, `#` comments.
pub fn parse_digest_list(text: &str) -> Result<HashSet<Digest>> {
    let mut set = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let d = line
            .parse::<Digest>()
            .map_err(|e| Error::Usage(format!("line {}: {e}", i + 1)))?;
        set.insert(d);
    }
    Ok(set)
}

/// Parse a `--refs-file`: one ref per line, `#` comments.
pub fn parse_refs_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}
