//! `ferry sync`: copy content graphs between registries and directories, in all four directions.
//!
//! For each root (a tag, or a manifest by digest) the graph is walked by media type
//! ([`crate::media`]: BuildKit's legacy cache indexes have blob children), then copied in the
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

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::Store;
use crate::location::Location;
use crate::media::{self, EdgeKind};
use crate::reference::{Reference, RepoName};
use crate::remote::{Registry, RemoteOptions};

/// One side of a sync.
pub enum Place {
    /// A directory or a bucket.
    Store(Store),
    Remote(Registry),
}

/// A manifest to copy, named in the source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Root {
    pub repo: String,
    pub reference: Reference,
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.repo),
            Reference::Digest(d) => write!(f, "{}@{d}", self.repo),
        }
    }
}

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

/// A blob to carry.
#[derive(Clone, Debug)]
pub(crate) struct BlobRef {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) media_type: String,
}

/// A manifest graph read from the source: manifests children-first, and the blobs.
#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) manifests: Vec<(Digest, Bytes, String)>,
    pub(crate) blobs: Vec<BlobRef>,
}

impl Place {
    pub async fn open(loc: &Location, opts: &RemoteOptions, create: bool) -> Result<Place> {
        match loc {
            // A source is only read: never create anything in it.
            Location::Bucket { .. } => Ok(Place::Store(Store::open_at(loc, !create).await?)),
            Location::Dir { path } => {
                if !create && !path.join("oci-layout").exists() {
                    return Err(Error::Usage(format!(
                        "{} is not an OCI image layout (no oci-layout file)",
                        path.display()
                    )));
                }
                // A source is only read: never create anything in it (it may be read-only media).
                Ok(Place::Store(Store::open_at(loc, !create).await?))
            }
            Location::Registry { host, .. } => Ok(Place::Remote(Registry::new(host, opts)?)),
        }
    }

    async fn manifest(&self, repo: &str, reference: &Reference) -> Result<(Bytes, String, Digest)> {
        match self {
            Place::Remote(r) => r.manifest(repo, reference).await,
            Place::Store(s) => {
                let name = RepoName::parse(repo)?;
                let m = s.manifest(&name, reference).await?;
                let bytes = s.read_manifest(&m.digest).await?;
                let actual = Digest::of(m.digest.algorithm(), &bytes);
                if actual != m.digest {
                    return Err(Error::Corrupt {
                        digest: m.digest,
                        detail: format!("the stored manifest hashes to {actual}"),
                    });
                }
                Ok((bytes, m.media_type, actual))
            }
        }
    }

    /// Whether `reference` in `repo` already names the manifest `digest`.
    async fn has_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool> {
        match self {
            Place::Remote(r) => {
                Ok(r.manifest_digest(repo, reference).await.as_ref() == Some(digest))
            }
            Place::Store(s) => {
                let idx = s.index().await?;
                let recorded = match reference {
                    Reference::Tag(t) => idx.tag(repo, t).is_some_and(|d| &d.digest == digest),
                    Reference::Digest(d) => d == digest && idx.file.has_repo_digest(repo, d),
                };
                Ok(recorded && s.blob_size(digest).await?.is_some())
            }
        }
    }

    async fn has_blob(&self, repo: &str, b: &BlobRef) -> Result<bool> {
        match self {
            Place::Remote(r) => r.has_blob(repo, &b.digest).await,
            Place::Store(s) => Ok(s.blob_size(&b.digest).await? == Some(b.size)),
        }
    }

    /// Blob bytes from `offset`, and whether the offset was honoured.
    pub(crate) async fn read_blob(
        &self,
        repo: &str,
        d: &Digest,
        offset: u64,
    ) -> Result<(BoxStream<'static, std::io::Result<Bytes>>, bool)> {
        match self {
            Place::Remote(r) => {
                let b = r.blob(repo, d, offset).await?;
                Ok((b.stream, b.partial))
            }
            Place::Store(s) => {
                let blob = s.open_blob(d).await?;
                let offset = offset.min(blob.len);
                let len = blob.len;
                Ok((blob.stream(offset, len - offset), true))
            }
        }
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        bytes: Bytes,
        mt: &str,
        delta: bool,
    ) -> Result<()> {
        match self {
            Place::Remote(r) => r.put_manifest(repo, reference, bytes, mt).await,
            Place::Store(s) => {
                let name = RepoName::parse(repo)?;
                s.put_manifest_checked(&name, reference, bytes, Some(mt), !delta)
                    .await
                    .map(|_| ())
            }
        }
    }

    /// The roots a location names.
    pub async fn roots(&self, loc: &Location) -> Result<Vec<Root>> {
        let mut out = Vec::new();
        match (self, loc) {
            (
                Place::Remote(r),
                Location::Registry {
                    repo, reference, ..
                },
            ) => match (repo, reference) {
                (Some(repo), Some(reference)) => out.push(Root {
                    repo: repo.clone(),
                    reference: reference.clone(),
                }),
                (Some(repo), None) => {
                    for t in r.tags(repo).await? {
                        out.push(Root {
                            repo: repo.clone(),
                            reference: Reference::Tag(t),
                        });
                    }
                }
                (None, _) => {
                    for repo in r.catalog().await? {
                        for t in r.tags(&repo).await? {
                            out.push(Root {
                                repo: repo.clone(),
                                reference: Reference::Tag(t),
                            });
                        }
                    }
                }
            },
            (Place::Store(s), _) => {
                let idx = s.index().await?;
                for repo in idx.repos() {
                    for t in idx.tags_of(repo) {
                        out.push(Root {
                            repo: repo.to_owned(),
                            reference: Reference::Tag(t.to_owned()),
                        });
                    }
                }
            }
            (Place::Remote(_), Location::Dir { .. } | Location::Bucket { .. }) => {
                return Err(Error::Usage(
                    "a registry place needs a registry location".into(),
                ))
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every digest a place holds (`ferry inventory`).
    pub async fn inventory(&self, loc: &Location) -> Result<Vec<Digest>> {
        let mut set = std::collections::BTreeSet::new();
        match self {
            Place::Store(s) => {
                // Only what can be read as a blob: a FIFO or a symlink out of the layout under
                // a blob's name is not content the far side can count on.
                set.extend(s.list_content().await?);
            }
            Place::Remote(_) => {
                for root in self.roots(loc).await? {
                    let g = walk(self, &root.repo, &root.reference).await?;
                    set.extend(g.manifests.into_iter().map(|(d, _, _)| d));
                    set.extend(g.blobs.into_iter().map(|b| b.digest));
                }
            }
        }
        Ok(set.into_iter().collect())
    }
}

/// Read a root's graph from the source: every manifest (children before parents) and every blob.
pub(crate) async fn walk(src: &Place, repo: &str, reference: &Reference) -> Result<Graph> {
    let (bytes, mt, digest) = src.manifest(repo, reference).await?;
    let mut g = Graph::default();
    let mut seen = HashSet::new();
    // Iterative post-order walk: (digest, bytes, media type, children expanded?)
    let mut stack: Vec<(Digest, Bytes, String, bool)> = vec![(digest, bytes, mt, false)];
    let mut blobs_seen = HashSet::new();
    while let Some((d, b, mt, expanded)) = stack.pop() {
        if expanded {
            if seen.insert(d.clone()) {
                g.manifests.push((d, b, mt));
            }
            continue;
        }
        let info = media::parse_manifest(&b, Some(&mt))?;
        stack.push((d, b, mt, true));
        for e in info.edges {
            match e.kind {
                EdgeKind::Blob => {
                    if blobs_seen.insert(e.digest.clone()) {
                        g.blobs.push(BlobRef {
                            digest: e.digest,
                            size: e.size,
                            media_type: e.media_type,
                        });
                    }
                }
                EdgeKind::Manifest => {
                    if seen.contains(&e.digest) {
                        continue;
                    }
                    let (cb, cmt, cd) = src
                        .manifest(repo, &Reference::Digest(e.digest.clone()))
                        .await?;
                    if cb.len() as u64 != e.size {
                        return Err(Error::Corrupt {
                            digest: cd,
                            detail: format!("{} bytes, the parent says {}", cb.len(), e.size),
                        });
                    }
                    stack.push((cd, cb, cmt, false));
                }
            }
        }
    }
    Ok(g)
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
        },
        _ => root.clone(),
    }
}

pub(crate) fn ref_matches(root: &Root, pattern: &str) -> bool {
    let full = root.to_string();
    pattern == full
        || pattern == root.repo
        || matches!(&root.reference, Reference::Tag(t) if pattern == t)
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
    let src = Place::open(src_loc, &opts.src, false).await?;
    let dst = if opts.dry_run {
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
    if delta_out && !matches!(dst_loc, Location::Dir { .. }) {
        return Err(Error::Usage(
            "--have writes a delta directory: the destination must be a directory".into(),
        ));
    }
    let mut roots = src.roots(src_loc).await?;
    if !opts.refs.is_empty() {
        roots.retain(|r| opts.refs.iter().any(|p| ref_matches(r, p)));
    }
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
        let from = match &opts.platform {
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
                        Place::Remote(_) => None,
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
    if let (Place::Store(s), Some(dst)) = (&src, &dst) {
        let mut missing = Vec::new();
        for (root, g) in &graphs {
            let to = dest_root(root, dst_loc);
            for b in &g.blobs {
                if s.blob_size(&b.digest).await?.is_none() && !dst.has_blob(&to.repo, b).await? {
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
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
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
        // Source is a delta directory and the destination already has it: nothing to do.
        if let Place::Store(s) = src {
            if s.blob_size(&b.digest).await?.is_none() {
                summary.blobs_skipped += 1;
                continue;
            }
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
    }
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
