//! `ferry sync`: copy content graphs between registries and directories, in all four directions.
//!
//! For each root (a tag, or a manifest by digest) the graph is walked by media type
//! ([`crate::vocab::media`]: BuildKit's legacy cache indexes have blob children), then copied in the
//! order that keeps the destination valid at every instant: blobs (only the ones the destination
//! lacks; verified; in parallel), then child manifests, then the root, then its tag. An
//! interrupted sync therefore never publishes a tag whose content is missing, and manifests are
//! written byte for byte as read.
//!
//! A blob imported into a directory is kept under `.ferry/partial/` while it arrives; a later run
//! continues it with an HTTP `Range` request. `--have FILE` (the output of `ferry inventory` on the
//! offline side) skips blobs the far side already holds, writing a *delta* directory; manifests
//! always travel (they are small, and the far side needs them to walk the graph). Syncing a delta
//! checks, before anything is written, that every blob it lacks is at the destination.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::carry::archive::{self, Member, Plan};
use crate::carry::remote::RemoteOptions;
use crate::error::{Error, Result};
use crate::layout::index::{IndexFile, NewEntry};
use crate::layout::Store;
use crate::vocab::digest::Digest;
use crate::vocab::location::Location;
use crate::vocab::media::{self};
use crate::vocab::reference::Reference;

pub(crate) use crate::carry::place::{walk, BlobRef, Graph};
pub use crate::carry::place::{Place, Root};

/// `--platform OS/ARCH[/VARIANT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: parts.get(2).map(|v| (*v).to_owned()),
            }),
            _ => Err(Error::Usage(format!(
                "--platform {s:?}: expected OS/ARCH[/VARIANT]"
            ))),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform of the machine running ferry (`linux/amd64` on x86-64).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    fn matches(&self, p: &serde_json::Value) -> bool {
        p["os"] == self.os.as_str()
            && p["architecture"] == self.architecture.as_str()
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p["variant"] == v.as_str())
    }
}

/// With `--platform`: an image index (or manifest list) whose children carry platforms is
/// narrowed to the matching image manifest, which then gets the tag (as `docker pull` and
/// `skopeo copy --multi-arch system` do; the index itself could not be stored without its other
/// children). Anything else, caches included, is copied whole.
async fn select_platform(src: &Place, root: &Root, platform: &Platform) -> Result<Reference> {
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

#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// Narrow image indexes to one platform.
    pub platform: Option<Platform>,
    /// Narrow to these refs: `REPO`, `REPO:TAG`, `TAG`, or `REPO@DIGEST`.
    pub refs: Vec<String>,
    pub tags: Option<regex::Regex>,
    pub jobs: usize,
    pub dry_run: bool,
    /// Digests the destination's far side already has (`--have`): not copied.
    pub have: Option<HashSet<Digest>>,
    pub src: RemoteOptions,
    pub dest: RemoteOptions,
    /// Write an archive destination as volumes smaller than this (`--split`).
    pub split: Option<u64>,
    /// Write a signed statement of the trip into the destination (`--sign`).
    pub sign: Option<Arc<crate::carry::trip::Signer>>,
    /// Refuse a source trip that this key did not sign as it is (`--verify-key`).
    pub verify_key: Option<Arc<crate::carry::trip::Verifier>>,
}

/// What a sync did, for people (`Display`) and scripts (`--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub roots: usize,
    pub tags_published: usize,
    pub manifests_written: usize,
    pub blobs_copied: usize,
    pub bytes_copied: u64,
    /// Bytes that came over the wire (less than `bytes_copied` when a partial blob was resumed).
    pub bytes_transferred: u64,
    pub bytes_resumed: u64,
    pub blobs_skipped: usize,
    pub bytes_skipped: u64,
    pub blobs_mounted: usize,
    pub blobs_in_have: usize,
    pub seconds: f64,
    pub dry_run: bool,
    pub failed: Vec<String>,
    /// The archive written, when the destination is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<archive::Written>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = self.bytes_transferred as f64 / 1e6;
        let verb = if self.dry_run { "would copy" } else { "copied" };
        writeln!(
            f,
            "{} root(s): {verb} {} blob(s), {} bytes ({} over the wire, {} resumed); skipped {} already present ({} bytes); mounted {}; {} in --have",
            self.roots,
            self.blobs_copied,
            self.bytes_copied,
            self.bytes_transferred,
            self.bytes_resumed,
            self.blobs_skipped,
            self.bytes_skipped,
            self.blobs_mounted,
            self.blobs_in_have,
        )?;
        write!(
            f,
            "{} manifest(s) written, {} tag(s) published in {:.1} s ({:.1} MB/s)",
            self.manifests_written,
            self.tags_published,
            self.seconds,
            if self.seconds > 0.0 {
                mb / self.seconds
            } else {
                0.0
            },
        )?;
        if self.copied_nothing() && !self.dry_run && self.failed.is_empty() {
            write!(
                f,
                "\nnothing to copy: the destination already has everything"
            )?;
        }
        if let Some(a) = &self.archive {
            write!(f, "\nwrote {} ({} bytes", a.path, a.bytes)?;
            if a.volumes.len() > 1 || a.path.ends_with(".index") {
                write!(f, " in {} volumes", a.volumes.len())?;
            }
            if a.resumed_bytes > 0 {
                write!(
                    f,
                    "; {} bytes were already written by an interrupted run",
                    a.resumed_bytes
                )?;
            }
            write!(f, ")")?;
            for v in a.volumes.iter().filter(|_| a.volumes.len() > 1) {
                write!(f, "\n  {}  {} bytes  sha256:{}", v.name, v.size, v.sha256)?;
            }
        }
        for e in &self.failed {
            write!(f, "\nFAILED {e}")?;
        }
        Ok(())
    }
}

impl Summary {
    pub fn copied_nothing(&self) -> bool {
        self.blobs_copied == 0 && self.blobs_mounted == 0 && self.manifests_written == 0
    }
}

/// Wrap a stream so that it fails at its end when the bytes do not hash to `expected` — a corrupt
/// source is named and nothing reaches the destination's final commit.
fn verifying(
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
fn dest_root(root: &Root, dst: &Location) -> Root {
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

pub(crate) fn ref_matches(root: &Root, pattern: &str) -> bool {
    let full = root.to_string();
    pattern == full
        || pattern == root.repo
        || matches!(&root.reference, Reference::Tag(t) if pattern == t)
}

/// A ref that names one manifest (`REPO:TAG`, `REPO@DIGEST`), as opposed to a pattern (`REPO`,
/// `TAG`) matched against the source's tags.
fn explicit_ref(s: &str) -> Option<Root> {
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
fn strip_source_host(root: Root, host: &str) -> Root {
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
async fn select_roots(src: &Place, loc: &Location, refs: &[String]) -> Result<Vec<Root>> {
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

/// Progress reporting: bars on a terminal, plain lines otherwise.
pub trait Progress: Send + Sync {
    fn start_blob(&self, digest: &Digest, size: u64) -> Arc<AtomicU64>;
    fn finish_blob(&self, digest: &Digest, size: u64, outcome: &str);
    fn message(&self, msg: &str);
}

/// No output at all (tests, `--json`).
pub struct Quiet;

impl Progress for Quiet {
    fn start_blob(&self, _: &Digest, _: u64) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(0))
    }
    fn finish_blob(&self, _: &Digest, _: u64, _: &str) {}
    fn message(&self, _: &str) {}
}

/// Run a sync.
pub async fn sync(
    src_loc: &Location,
    dst_loc: &Location,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<Summary> {
    let start = Instant::now();
    let archive_out = matches!(
        dst_loc,
        Location::OciArchive { .. } | Location::DockerArchive { .. }
    );
    if opts.split.is_some() && !archive_out {
        return Err(Error::Usage(
            "--split cuts an archive into volumes: the destination must be oci-archive:PATH or docker-archive:PATH".into(),
        ));
    }
    if archive_out {
        archive_out_free(dst_loc, opts.split)?;
    }
    if opts.sign.is_some()
        && !matches!(
            dst_loc,
            Location::Dir { .. } | Location::OciArchive { .. } | Location::DockerArchive { .. }
        )
    {
        return Err(Error::Usage(
            "--sign writes its statement into a trip: the destination must be a directory or an archive".into(),
        ));
    }
    let src = Place::open(src_loc, &opts.src, false).await?;
    if let Some(key) = &opts.verify_key {
        // Before anything is read for copying, let alone published.
        let st = crate::carry::trip::verify(&src, key, opts.jobs).await?;
        progress.message(&format!(
            "{src_loc}: signed by {} on {}, {} tag(s) and {} blob(s) as stated",
            st.key_id,
            st.created,
            st.tags.len(),
            st.blobs.len()
        ));
    }
    let dst = if archive_out {
        // Written whole at the end, from the graphs read below.
        None
    } else if opts.dry_run {
        match dst_loc {
            Location::Dir { path } if !path.join("oci-layout").exists() => None,
            // A dry run writes nothing, not even a new bucket prefix's oci-layout.
            Location::Bucket { .. } => match Place::open(dst_loc, &opts.dest, false).await {
                Ok(p) => Some(p),
                Err(Error::Layout(_)) => None,
                Err(e) => return Err(e),
            },
            _ => Some(Place::open(dst_loc, &opts.dest, true).await?),
        }
    } else {
        Some(Place::open(dst_loc, &opts.dest, true).await?)
    };
    let delta_out = opts.have.is_some();
    if delta_out && !matches!(dst_loc, Location::Dir { .. } | Location::OciArchive { .. }) {
        return Err(Error::Usage(
            "--have writes a delta: the destination must be a directory or oci-archive:PATH".into(),
        ));
    }
    // `docker load` takes one platform's image: the host's unless --platform says otherwise.
    let platform = match (&opts.platform, dst_loc) {
        (Some(p), _) => Some(p.clone()),
        (None, Location::DockerArchive { .. }) => Some(Platform::host()),
        (None, _) => None,
    };
    let mut roots = select_roots(&src, src_loc, &opts.refs).await?;
    if let Some(re) = &opts.tags {
        roots.retain(|r| matches!(&r.reference, Reference::Tag(t) if re.is_match(t)));
    }
    if roots.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to sync: no refs selected in {src_loc}"
        )));
    }
    let mut summary = Summary {
        roots: roots.len(),
        dry_run: opts.dry_run,
        ..Default::default()
    };

    // Read every graph first: a missing or corrupt manifest fails before anything is written,
    // and a delta is checked for completeness against the destination.
    let mut graphs = Vec::new();
    for root in &roots {
        let from = match &platform {
            Some(p) => select_platform(&src, root, p).await,
            None => Ok(root.reference.clone()),
        };
        match from {
            Ok(from) => match walk(&src, &root.repo, &from).await {
                Ok(g) => {
                    // A directory source may be hostile media: a FIFO or a symlink out of the
                    // layout under a blob's name is neither content nor a delta's gap. That
                    // root fails, named; the others go on.
                    let refused = match &src {
                        Place::Store(s) => g
                            .blobs
                            .iter()
                            .find_map(|b| s.blob_refusal(&b.digest).map(|w| (b.digest.clone(), w))),
                        Place::Remote(_) | Place::Archive(..) => None,
                    };
                    match refused {
                        Some((d, why)) => summary.failed.push(format!("{root}: blob {d} is {why}")),
                        None => graphs.push((root.clone(), g)),
                    }
                }
                Err(e) => summary.failed.push(format!("{root}: {e}")),
            },
            Err(e) => summary.failed.push(format!("{root}: {e}")),
        }
    }
    if !matches!(src, Place::Remote(_)) {
        let mut missing = Vec::new();
        for (root, g) in &graphs {
            let to = dest_root(root, dst_loc);
            for b in &g.blobs {
                if src.source_blob_size(&b.digest).await? != Some(None) {
                    continue;
                }
                // A delta's gap: the destination must hold it (an archive being written holds
                // nothing yet, unless the far side does: --have).
                let at_dst = match &dst {
                    Some(dst) => dst.has_blob(&to.repo, b).await?,
                    None => opts.have.as_ref().is_some_and(|h| h.contains(&b.digest)),
                };
                // (A dry run with no destination yet has nothing to check against.)
                if !at_dst && (dst.is_some() || archive_out) {
                    missing.push(b.digest.clone());
                }
            }
        }
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            return Err(Error::MissingBlobs(missing));
        }
    }

    if archive_out {
        write_archive(&src, dst_loc, graphs, opts, progress, &mut summary).await?;
        summary.seconds = start.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let mut dest_repos_of: HashMap<Digest, String> = HashMap::new();
    for (root, g) in graphs {
        let to = dest_root(&root, dst_loc);
        match copy_root(
            &src,
            dst.as_ref(),
            &root,
            &to,
            g,
            opts,
            progress,
            &mut summary,
            &mut dest_repos_of,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => summary.failed.push(format!("{root}: {e}")),
        }
    }
    if let (Some(signer), Some(Place::Store(store))) = (&opts.sign, &dst) {
        if !opts.dry_run {
            if summary.failed.is_empty() {
                sign_dir(store, signer).await?;
            } else {
                summary
                    .failed
                    .push("not signed: the trip is incomplete".to_owned());
            }
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// A directory trip's statement: everything it holds after the sync, signed, written beside
/// `index.json` (each file replaced atomically).
async fn sign_dir(store: &Store, signer: &crate::carry::trip::Signer) -> Result<()> {
    let Some(root) = store.root().map(|p| p.to_owned()) else {
        return Err(Error::Usage("--sign: a bucket is not a trip".into()));
    };
    let idx = store.index().await?;
    let mut tags = std::collections::BTreeMap::new();
    for repo in idx.repos() {
        for t in idx.tags_of(repo) {
            if let Some(d) = idx.tag(repo, t) {
                tags.insert(format!("{repo}:{t}"), d.digest.to_string());
            }
        }
    }
    let digests = store
        .list_content()
        .await?
        .into_iter()
        .map(|d| d.to_string())
        .collect();
    let (st, sig) = signer.sign(tags, digests)?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        for (name, bytes) in [
            (crate::carry::trip::STATEMENT, st),
            (crate::carry::trip::SIGNATURE, sig),
        ] {
            let tmp = root.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &bytes)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, root.join(name))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

#[allow(clippy::too_many_arguments)]
async fn copy_root(
    src: &Place,
    dst: Option<&Place>,
    root: &Root,
    to: &Root,
    g: Graph,
    opts: &SyncOptions,
    progress: &dyn Progress,
    summary: &mut Summary,
    dest_repos_of: &mut HashMap<Digest, String>,
) -> Result<()> {
    let delta = opts.have.is_some();
    // 1. Blobs the destination lacks, in parallel.
    let mut todo = Vec::new();
    for b in g.blobs {
        if opts.have.as_ref().is_some_and(|h| h.contains(&b.digest)) {
            summary.blobs_in_have += 1;
            continue;
        }
        let present = match dst {
            Some(d) => d.has_blob(&to.repo, &b).await?,
            None => false,
        };
        if present {
            summary.blobs_skipped += 1;
            summary.bytes_skipped += b.size;
            dest_repos_of.insert(b.digest.clone(), to.repo.clone());
            continue;
        }
        // Source is a delta and the destination already has it: nothing to do.
        if src.source_blob_size(&b.digest).await? == Some(None) {
            summary.blobs_skipped += 1;
            continue;
        }
        todo.push(b);
    }
    let dst = match dst {
        Some(d) if !opts.dry_run => d,
        // A dry run (or one whose destination does not exist yet) reports and stops here.
        _ => {
            for b in &todo {
                progress.message(&format!("would copy {} ({} bytes)", b.digest, b.size));
                summary.blobs_copied += 1;
                summary.bytes_copied += b.size;
            }
            return Ok(());
        }
    };
    // Mount what another repository of the destination registry already holds.
    let mut to_copy = Vec::new();
    for b in todo {
        if let (Place::Remote(r), Some(from)) = (dst, dest_repos_of.get(&b.digest)) {
            if from != &to.repo && r.mount(&to.repo, from, &b.digest).await {
                summary.blobs_mounted += 1;
                progress.finish_blob(&b.digest, b.size, "mounted");
                continue;
            }
        }
        to_copy.push(b);
    }
    let results: Vec<Result<(BlobRef, u64, u64)>> = futures_util::stream::iter(to_copy)
        .map(|b| async move {
            let counter = progress.start_blob(&b.digest, b.size);
            let r = copy_blob(src, dst, &root.repo, &to.repo, &b, counter).await;
            match &r {
                Ok(_) => progress.finish_blob(&b.digest, b.size, "copied"),
                Err(e) => progress.finish_blob(&b.digest, b.size, &format!("failed: {e}")),
            }
            r.map(|(t, res)| (b, t, res))
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    let mut first_err = None;
    for r in results {
        match r {
            Ok((b, transferred, resumed)) => {
                summary.blobs_copied += 1;
                summary.bytes_copied += b.size;
                summary.bytes_transferred += transferred;
                summary.bytes_resumed += resumed;
                dest_repos_of.insert(b.digest, to.repo.clone());
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        // No manifest and no tag for a graph whose blobs did not all arrive.
        return Err(e);
    }
    // 2. Manifests, children first; 3. the root under its tag (or digest) last.
    let n = g.manifests.len();
    for (i, (d, bytes, mt)) in g.manifests.into_iter().enumerate() {
        let is_root = i + 1 == n;
        let reference = if is_root {
            to.reference.clone()
        } else {
            Reference::Digest(d.clone())
        };
        if dst.has_manifest(&to.repo, &reference, &d).await? {
            continue;
        }
        if is_root {
            if let Reference::Tag(_) = reference {
                // Also by digest first: the tag is the very last write.
                dst.put_manifest(
                    &to.repo,
                    &Reference::Digest(d.clone()),
                    bytes.clone(),
                    &mt,
                    delta,
                )
                .await?;
            }
        }
        dst.put_manifest(&to.repo, &reference, bytes, &mt, delta)
            .await?;
        summary.manifests_written += 1;
        if is_root && matches!(reference, Reference::Tag(_)) {
            summary.tags_published += 1;
        }
    }
    Ok(())
}

/// Copy one blob; returns (bytes over the wire, bytes resumed from an earlier run).
async fn copy_blob(
    src: &Place,
    dst: &Place,
    from_repo: &str,
    to_repo: &str,
    b: &BlobRef,
    counter: Arc<AtomicU64>,
) -> Result<(u64, u64)> {
    match dst {
        Place::Store(store) => {
            let counter2 = counter.clone();
            let imported = store
                .import_blob(&b.digest, b.size, |offset| async move {
                    let (s, partial) = src.read_blob(from_repo, &b.digest, offset).await?;
                    let s = s.inspect_ok(move |c| {
                        counter2.fetch_add(c.len() as u64, Ordering::Relaxed);
                    });
                    Ok((s.boxed(), partial))
                })
                .await?;
            Ok((imported.transferred, imported.resumed_from))
        }
        Place::Remote(r) => {
            let (s, _) = src.read_blob(from_repo, &b.digest, 0).await?;
            let s = verifying(s, b.digest.clone(), counter);
            r.push_blob(to_repo, &b.digest, b.size, s)
                .await
                .map_err(|e| match e {
                    Error::Remote { message, .. } if message.contains("source's bytes hash to") => {
                        Error::Corrupt {
                            digest: b.digest.clone(),
                            detail: message,
                        }
                    }
                    e => e,
                })?;
            Ok((b.size, 0))
        }
        Place::Archive(a, _) => Err(Error::Usage(format!(
            "{} is an archive being read; it is not written in place",
            a.describe()
        ))),
    }
}

/// An archive is written whole: never over a finished one.
fn archive_out_free(dst: &Location, split: Option<u64>) -> Result<()> {
    let (Location::OciArchive { path } | Location::DockerArchive { path }) = dst else {
        return Ok(());
    };
    let done = match split {
        Some(_) => archive::index_name(path),
        None => path.clone(),
    };
    if done.exists() {
        return Err(Error::Usage(format!(
            "{} exists: ferry does not overwrite a finished archive; remove it or name another",
            done.display()
        )));
    }
    Ok(())
}

const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Write the graphs read from `src` as one archive (`oci-archive:` or `docker-archive:`).
async fn write_archive(
    src: &Place,
    dst_loc: &Location,
    graphs: Vec<(Root, Graph)>,
    opts: &SyncOptions,
    progress: &dyn Progress,
    summary: &mut Summary,
) -> Result<()> {
    let (Location::OciArchive { path } | Location::DockerArchive { path }) = dst_loc else {
        return Err(Error::Usage(format!("{dst_loc} is not an archive")));
    };
    let docker = matches!(dst_loc, Location::DockerArchive { .. });
    let mut index = IndexFile::default();
    let mut docker_images: Vec<serde_json::Value> = Vec::new();
    let mut manifests: Vec<(Digest, Bytes)> = Vec::new();
    let mut blobs: Vec<BlobRef> = Vec::new();
    let mut seen = HashSet::new();
    let mut repo_of: HashMap<Digest, String> = HashMap::new();
    for (root, g) in &graphs {
        let to = dest_root(root, dst_loc);
        let Some((top, top_bytes, top_mt)) = g.manifests.last() else {
            continue;
        };
        index.put(&NewEntry {
            repo: to.repo.clone(),
            tag: match &to.reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            },
            digest: top.clone(),
            media_type: top_mt.clone(),
            size: top_bytes.len() as u64,
            artifact_type: None,
            subject: None,
            tagged_at: 0,
        });
        if docker {
            docker_images.push(docker_entry(root, &to, top_bytes, top_mt)?);
        }
        for (d, b, _) in &g.manifests {
            if seen.insert(d.clone()) {
                manifests.push((d.clone(), b.clone()));
            }
        }
        for b in &g.blobs {
            repo_of
                .entry(b.digest.clone())
                .or_insert_with(|| root.repo.clone());
            if opts.have.as_ref().is_some_and(|h| h.contains(&b.digest)) {
                summary.blobs_in_have += 1;
                continue;
            }
            if src.source_blob_size(&b.digest).await? == Some(None) {
                return Err(Error::MissingBlobs(vec![b.digest.clone()]));
            }
            if seen.insert(b.digest.clone()) {
                blobs.push(b.clone());
            }
        }
    }
    // The same trip must give the same bytes (a rerun resumes by volume): no publication time.
    for d in &mut index.manifests {
        if let Some(a) = d.annotations.as_mut() {
            a.remove(crate::layout::index::FERRY_TAGGED);
        }
    }
    let mut plan = Plan::default();
    plan.push(Member::dir("blobs/"));
    let mut algs: Vec<&str> = manifests
        .iter()
        .map(|(d, _)| d.algorithm().as_str())
        .chain(blobs.iter().map(|b| b.digest.algorithm().as_str()))
        .collect();
    algs.sort();
    algs.dedup();
    for a in algs {
        plan.push(Member::dir(&format!("blobs/{a}/")));
    }
    plan.push(Member::inline(
        "oci-layout",
        Bytes::from_static(OCI_LAYOUT_FILE),
    ));
    plan.push(Member::inline("index.json", index.to_bytes()));
    if docker {
        let bytes = serde_json::to_vec(&docker_images).map_err(|e| Error::Usage(e.to_string()))?;
        plan.push(Member::inline("manifest.json", bytes));
    }
    for (d, b) in &manifests {
        plan.push(Member {
            path: archive::blob_path(d),
            size: b.len() as u64,
            source: archive::Source::Inline(b.clone()),
        });
    }
    for b in &blobs {
        plan.push(Member::blob(&b.digest, b.size));
    }
    if let Some(signer) = &opts.sign {
        let tags = index
            .manifests
            .iter()
            .filter_map(|d| match d.repo_and_tag() {
                (Some(r), Some(t)) => Some((format!("{r}:{t}"), d.digest.to_string())),
                _ => None,
            })
            .collect();
        let digests = manifests
            .iter()
            .map(|(d, _)| d.to_string())
            .chain(blobs.iter().map(|b| b.digest.to_string()))
            .collect();
        let (st, sig) = signer.sign(tags, digests)?;
        plan.push(Member {
            path: crate::carry::trip::STATEMENT.into(),
            size: st.len() as u64,
            source: archive::Source::Fresh(st.into()),
        });
        plan.push(Member {
            path: crate::carry::trip::SIGNATURE.into(),
            size: sig.len() as u64,
            source: archive::Source::Fresh(sig.into()),
        });
    }
    summary.manifests_written = manifests.len();
    summary.tags_published = graphs
        .iter()
        .filter(|(r, _)| matches!(dest_root(r, dst_loc).reference, Reference::Tag(_)))
        .count();
    summary.blobs_copied = blobs.len();
    summary.bytes_copied = blobs.iter().map(|b| b.size).sum();
    if opts.dry_run {
        progress.message(&format!(
            "would write {dst_loc}: {} bytes, {} blob(s), {} manifest(s)",
            plan.total(),
            blobs.len(),
            manifests.len()
        ));
        return Ok(());
    }
    progress.message(&format!(
        "writing {dst_loc}: {} bytes, {} blob(s), {} manifest(s)",
        plan.total(),
        blobs.len(),
        manifests.len()
    ));
    let counter = AtomicU64::new(0);
    let repo_of = &repo_of;
    let written = archive::write(
        &plan,
        path,
        opts.split,
        |d: Digest| async move {
            let repo = repo_of.get(&d).map(String::as_str).unwrap_or("");
            let (s, _) = src.read_blob(repo, &d, 0).await?;
            Ok(s)
        },
        &counter,
    )
    .await?;
    summary.bytes_transferred = counter.load(Ordering::Relaxed);
    summary.bytes_resumed = written.resumed_bytes;
    summary.archive = Some(written);
    Ok(())
}

/// One image's entry in `docker save`'s `manifest.json`: its config, layers and tag, as paths
/// inside the archive (the OCI layout's own blob paths, as Docker 25 writes them too).
fn docker_entry(root: &Root, to: &Root, bytes: &[u8], mt: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    let config_mt = v["config"]["mediaType"].as_str().unwrap_or("");
    if media::is_index_type(mt) || !v["layers"].is_array() {
        return Err(Error::Usage(format!(
            "{root}: docker-archive holds images only, and this is {} (docker load cannot take it; use oci-archive:)",
            if media::is_index_type(mt) { "an index (a BuildKit cache, or no manifest for the platform)" } else { "not an image manifest" }
        )));
    }
    if config_mt == media::BUILDKIT_CACHE_CONFIG {
        return Err(Error::Usage(format!(
            "{root}: docker-archive holds images only, and this is a BuildKit cache (docker load cannot take it; use oci-archive:)"
        )));
    }
    let path_of = |d: &serde_json::Value| -> Result<String> {
        let d: Digest = d.as_str().unwrap_or("").parse().map_err(
            |e: crate::vocab::digest::DigestParseError| Error::ManifestInvalid(e.to_string()),
        )?;
        Ok(archive::blob_path(&d))
    };
    let layers = v["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| path_of(&l["digest"]))
        .collect::<Result<Vec<_>>>()?;
    let tags: Vec<String> = match &to.reference {
        Reference::Tag(t) => vec![format!("{}:{t}", to.repo)],
        Reference::Digest(_) => vec![],
    };
    Ok(serde_json::json!({
        "Config": path_of(&v["config"]["digest"])?,
        "RepoTags": tags,
        "Layers": layers,
    }))
}

/// The inventory file: a comment line, then one digest per line.
pub fn format_inventory(loc: &Location, digests: &[Digest]) -> String {
    let mut out = format!("# ferry inventory of {loc}: {} digests\n", digests.len());
    for d in digests {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_that_name_one_manifest_and_their_registry() {
        let d = format!("sha256:{}", "c".repeat(64));
        let r = explicit_ref("docker.io/library/alpine:3.19").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:3.19");
        assert_eq!(
            explicit_ref(&format!("app@{d}")).unwrap().to_string(),
            format!("app@{d}")
        );
        // Patterns, not one manifest: a repository, a bare tag.
        assert!(explicit_ref("org/app").is_none());
        assert!(explicit_ref("latest").is_none());
        // Read from Docker Hub as Docker Hub names it, written under the full name.
        for (host, ref_, src, dst) in [
            (
                "docker.io",
                "docker.io/library/alpine:3",
                "library/alpine",
                Some("docker.io/library/alpine"),
            ),
            (
                "registry-1.docker.io",
                "docker.io/alpine:3",
                "library/alpine",
                Some("docker.io/library/alpine"),
            ),
            (
                "ghcr.io",
                "ghcr.io/org/app:1",
                "org/app",
                Some("ghcr.io/org/app"),
            ),
            // A ref of another registry is a repository of this one, as before.
            (
                "mirror:5000",
                "docker.io/library/alpine:3",
                "docker.io/library/alpine",
                None,
            ),
            ("docker.io", "org/app:1", "org/app", None),
        ] {
            let r = strip_source_host(explicit_ref(ref_).unwrap(), host);
            assert_eq!(r.repo, src, "{host} {ref_}");
            assert_eq!(r.dest_repo.as_deref(), dst, "{host} {ref_}");
        }
    }
}
