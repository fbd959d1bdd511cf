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

mod archive_out;
mod copy;
mod patches;
mod plan;
mod referrers;

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

pub(crate) use crate::carry::place::{walk, walk_narrowed, BlobRef, Graph};
pub use crate::carry::place::{Place, Root};
pub use crate::vocab::media::Platform;
pub use patches::{Patched, Whole};
pub use plan::{parse_digest_list, parse_refs_file};
pub use referrers::{CarriedReferrer, ReferrerFilter};

use archive_out::*;
use copy::*;
use plan::*;

#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// Carry only these platforms of image indexes (none: all). The index travels byte for
    /// byte (its digest, and so every tag and pin, unchanged); the other platforms' manifests
    /// stay behind and the destination records them as left out on purpose.
    pub platforms: Vec<Platform>,
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
    /// With `--have`: carry every layer whole, never as a patch (`--no-patches`).
    pub no_patches: bool,
    /// Which referrers (signatures, SBOMs, attestations) travel with their subjects.
    pub referrers: ReferrerFilter,
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
    /// Referrers carried with their subjects (signatures, SBOMs, attestations).
    pub referrers: Vec<CarriedReferrer>,
    /// Layers a delta carries as patches.
    pub patched: Vec<Patched>,
    /// Layers a delta carries whole although they are not on the far side, and why.
    pub carried_whole: Vec<Whole>,
    /// Layers rebuilt at the destination from patches, and the patch bytes that took.
    pub rebuilt: usize,
    pub rebuilt_bytes: u64,
    pub rebuilt_from_bytes: u64,
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
        if !self.referrers.is_empty() {
            write!(f, "\n{}", referrers::describe(&self.referrers))?;
        }
        if !self.patched.is_empty() {
            let whole: u64 = self.patched.iter().map(|p| p.size).sum();
            let patch: u64 = self.patched.iter().map(|p| p.patch_size).sum();
            write!(
                f,
                "\n{} layer(s) patched: {} → {}",
                self.patched.len(),
                human(whole),
                human(patch)
            )?;
            if self.dry_run {
                for p in &self.patched {
                    write!(
                        f,
                        "\n  {}  whole {}  patch {} (against {})",
                        p.digest,
                        human(p.size),
                        human(p.patch_size),
                        p.base
                    )?;
                }
            }
        }
        if !self.carried_whole.is_empty() {
            write!(f, "\n{} layer(s) carried whole:", self.carried_whole.len())?;
            for w in &self.carried_whole {
                write!(f, "\n  {} ({}): {}", w.digest, human(w.size), w.why)?;
            }
        }
        if self.rebuilt > 0 {
            write!(
                f,
                "\nrebuilt {} layer(s) from patches: {} from {} of patches, each verified",
                self.rebuilt,
                human(self.rebuilt_bytes),
                human(self.rebuilt_from_bytes)
            )?;
        }
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
        self.blobs_copied == 0
            && self.blobs_mounted == 0
            && self.manifests_written == 0
            && self.rebuilt == 0
    }
}

/// Bytes for people: `412.3 MB`, `1.9 MB`, `5.2 kB`.
fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

pub(crate) fn ref_matches(root: &Root, pattern: &str) -> bool {
    let full = root.to_string();
    pattern == full
        || pattern == root.repo
        || matches!(&root.reference, Reference::Tag(t) if pattern == t)
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
    // `docker load` takes one platform's image (not an index): the host's unless --platform
    // names one.
    let image_of =
        match dst_loc {
            Location::DockerArchive { .. } => match opts.platforms.as_slice() {
                [] => Some(Platform::host()),
                [p] => Some(p.clone()),
                _ => return Err(Error::Usage(
                    "docker-archive: docker load takes one platform's image; name one --platform"
                        .into(),
                )),
            },
            _ => None,
        };
    let narrow_to: &[Platform] = match image_of {
        Some(_) => &[],
        None => &opts.platforms,
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
        let from = match &image_of {
            Some(p) => select_platform(&src, root, p).await,
            None => Ok(root.reference.clone()),
        };
        match from {
            Ok(from) => match walk_narrowed(&src, &root.repo, &from, narrow_to).await {
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
    // What refers to them travels with them: signatures, SBOMs, attestations.
    referrers::extend(&src, &mut graphs, &opts.referrers, progress, &mut summary).await?;
    // The patches a delta carries: a gap they fill needs their base at the destination.
    let src_patches = if matches!(src, Place::Remote(_)) || archive_out {
        HashMap::new()
    } else {
        patches::read_list(&src).await?
    };
    if !matches!(src, Place::Remote(_)) {
        let mut missing = Vec::new();
        for (root, g) in &graphs {
            let to = dest_root(root, dst_loc);
            for b in &g.blobs {
                if src.source_blob_size(&b.digest).await? != Some(None) {
                    continue;
                }
                // A delta's gap: the destination must hold it (an archive being written holds
                // nothing yet, unless the far side does: --have), or its base and the patch.
                let at_dst = match &dst {
                    Some(dst) => {
                        dst.has_blob(&to.repo, b).await?
                            || match src_patches.get(&b.digest) {
                                Some(e) if e.target_size == b.size => {
                                    let base = BlobRef {
                                        digest: e.base.clone(),
                                        size: e.base_size,
                                        media_type: String::new(),
                                    };
                                    dst.has_blob(&to.repo, &base).await?
                                        && src.source_blob_size(&e.patch).await?
                                            == Some(Some(e.patch_size))
                                }
                                _ => false,
                            }
                    }
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

    // A delta carries what changed inside a layer when the far side has a layer like it.
    let planned = match &opts.have {
        Some(have) if !opts.no_patches => {
            patches::plan(&src, src_loc, &graphs, have, progress, &mut summary).await?
        }
        _ => patches::Planned::default(),
    };
    if archive_out {
        write_archive(
            &src,
            dst_loc,
            graphs,
            &planned,
            opts,
            progress,
            &mut summary,
        )
        .await?;
        summary.seconds = start.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let mut dest_repos_of: HashMap<Digest, String> = HashMap::new();
    let mut carried = Vec::new();
    for (root, g) in graphs {
        let to = dest_root(&root, dst_loc);
        let how = Carry {
            planned: &planned,
            src_patches: &src_patches,
            carried: &mut carried,
        };
        match copy_root(
            &src,
            dst.as_ref(),
            &root,
            &to,
            g,
            opts,
            how,
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
    if let (false, Some(Place::Store(store))) = (carried.is_empty(), &dst) {
        // After the patch blobs, before the statement that covers them.
        patches::write_list(store, carried).await?;
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
    let patches = crate::carry::patch::list::read_dir(&root)
        .await?
        .into_values()
        .map(|e| (e.target.to_string(), e.patch.to_string()))
        .collect();
    let (st, sig) = signer.sign(tags, digests, patches)?;
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

const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

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
