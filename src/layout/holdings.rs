//! Which repository holds what (invariant 7): blobs and manifests are stored once for the whole
//! store, but each repository answers only for what it holds, and a delete under one repository
//! never takes anything from another.
//!
//! A repository holds a digest when it was pushed or mounted into it, when a manifest the
//! repository records references it, or when the repository records that manifest itself. The
//! first two are kept as *links*, one empty file (or object) each, as Distribution keeps its
//! repository links:
//!
//! ```text
//! DIR/.ferry/links/<repo>/_/<alg>-<hex>   repo holds this blob or manifest
//! DIR/.ferry/links.v1                     the links are kept (written after a store without
//!                                         them was given its links, see below)
//! ```
//!
//! (`_` is no repository name component, so `a` and `a/b` never meet.) A manifest PUT links
//! everything it references into its repository before its record is written, so a layer is
//! readable under a repository as soon as a manifest there names it. The layout itself stays a
//! plain OCI image layout that other tools read: the links are ferry's own state.
//!
//! A writable store that has no `links.v1` yet (written by an older ferry, or by another tool) is
//! given its links when it is opened: everything each repository's records reach. A read-only
//! store without them (a USB disk, an archive) answers from that reachability, worked out in
//! memory once per version of its records. Something written into a store behind ferry's back
//! after that (skopeo into a live data directory) is not held by any repository until a manifest
//! PUT or sync names it: write into a served store with `ferry sync`.
//!
//! The bytes themselves go only with GC, which sweeps what no record reaches (after the grace
//! period) and removes the links to what it sweeps.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::{read, write, Store};
use crate::error::Result;
use crate::vocab::digest::Digest;
use crate::vocab::reference::RepoName;

/// Present once the store keeps links.
pub(super) const MARKER: &str = ".ferry/links.v1";
pub(super) const LINKS: &str = ".ferry/links/";

fn flat(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

/// `.ferry/links/<repo>/_/` (relative to the store's root).
pub(super) fn repo_dir(repo: &str) -> String {
    format!("{LINKS}{repo}/_/")
}

/// The repository a link key or path names, from its part after `.ferry/links/`.
pub(super) fn repo_of(rest: &str) -> Option<&str> {
    rest.rsplit_once("/_/").map(|(r, _)| r)
}

/// What a read-only store without links holds, per repository, for one version of its records.
#[derive(Default)]
pub(super) struct Reach {
    /// The records it was worked out from (held, so that their address cannot be reused by
    /// newer records while this answer stands).
    of: Option<Arc<super::index::Index>>,
    repos: HashMap<String, Arc<HashSet<Digest>>>,
}

impl Store {
    /// Does this store keep links (else: read-only, answered from reachability)?
    pub(super) fn keeps_links(&self) -> bool {
        self.links.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `repo` holds `d` (module docs). Reads under a repository answer only for this.
    pub async fn holds(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        if self.keeps_links() {
            // The link first: it answers for every blob (one stat), the records only for
            // manifests a repository records without a link.
            if self.has_link(repo.as_str(), d).await? {
                return Ok(true);
            }
            let idx = self.index().await?;
            return Ok(idx.holds(repo.as_str(), d));
        }
        Ok(self.reach_of(repo.as_str()).await?.contains(d))
    }

    async fn has_link(&self, repo: &str, d: &Digest) -> Result<bool> {
        let rel = format!("{}{}", repo_dir(repo), flat(d));
        self.backend.has_link(&rel).await
    }

    /// Make `ds` held by `repo` (what a manifest references): durable when it returns, since the
    /// manifest naming them is recorded after this.
    pub async fn link(&self, repo: &RepoName, ds: &[Digest]) -> Result<()> {
        self.link_with(repo, ds, true).await
    }

    /// [`Store::link`] for a pushed or mounted blob: not flushed to the disk. A link lost with
    /// power (never with a crash of the process: the page cache keeps it) makes the client's
    /// manifest PUT answer MANIFEST_BLOB_UNKNOWN and the client push the blob again; an fsync
    /// of the repository's directory on every blob push would cost more than the push.
    pub async fn link_pushed(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        self.link_with(repo, std::slice::from_ref(d), false).await
    }

    async fn link_with(&self, repo: &RepoName, ds: &[Digest], durable: bool) -> Result<()> {
        if ds.is_empty() || !self.keeps_links() || self.read_only {
            return Ok(());
        }
        self.backend
            .add_links(&repo_dir(repo.as_str()), ds, durable)
            .await
    }

    /// Take `d` from `repo` (a blob or manifest DELETE). Returns whether it held a link.
    pub async fn unlink(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        self.ensure_writable()?;
        if !self.keeps_links() {
            return Ok(false);
        }
        let rel = format!("{}{}", repo_dir(repo.as_str()), flat(d));
        self.backend.remove_link(&rel).await
    }

    /// Every repository that has links (GC removes the links of what it sweeps from each).
    pub async fn link_repos(&self) -> Result<Vec<String>> {
        if !self.keeps_links() {
            return Ok(Vec::new());
        }
        self.backend.link_repos().await
    }

    /// What `repo` reaches from its records, for a store without links (worked out once per
    /// version of the records).
    async fn reach_of(&self, repo: &str) -> Result<Arc<HashSet<Digest>>> {
        let idx = self.index().await?;
        let same = |r: &Reach| r.of.as_ref().is_some_and(|o| Arc::ptr_eq(o, &idx));
        {
            let r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
            if same(&r) {
                if let Some(s) = r.repos.get(repo) {
                    return Ok(s.clone());
                }
            }
        }
        let roots: Vec<(Digest, String)> = idx
            .file
            .manifests
            .iter()
            .filter(|d| d.repo_and_tag().0 == Some(repo))
            .map(|d| (d.digest.clone(), d.media_type.clone()))
            .collect();
        let set = self.walk(roots)?;
        let set = Arc::new(set);
        let mut r = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        if !same(&r) {
            *r = Reach {
                of: Some(idx.clone()),
                repos: HashMap::new(),
            };
        }
        r.repos.insert(repo.to_owned(), set.clone());
        Ok(set)
    }

    /// Everything `roots` reach. The walk reads through `self` with blocking reads ([`Store::wait`]:
    /// inline for a directory or an archive, local files read once per version of the records;
    /// a bucket's wait on the runtime).
    fn walk(&self, roots: Vec<(Digest, String)>) -> Result<HashSet<Digest>> {
        let mut g = crate::layout::graph::Graph::new(self);
        let live = g.mark(roots.iter().map(|(d, mt)| (d, mt.as_str())))?;
        Ok(live.into_iter().collect())
    }

    /// Give a writable store its links if it has none yet (module docs), or note whether a
    /// read-only one keeps them. Blocking; run once, when the store is opened.
    pub(super) fn init_links(&self) -> Result<()> {
        let marked = self.wait(self.backend.links_marked())?;
        if marked || self.read_only {
            self.links
                .store(marked, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        // Every record's graph, linked into its repository; under the records' lock for a
        // directory, so no manifest is recorded meanwhile without its links.
        let _lock = self.backend.lock_records()?;
        let idx = self.wait(self.index())?;
        let mut graph = crate::layout::graph::Graph::new(self);
        let mut per_repo: HashMap<String, Vec<Digest>> = HashMap::new();
        for d in &idx.file.manifests {
            let Some(repo) = d.repo_and_tag().0 else {
                continue;
            };
            let (reach, _) = graph.reachable(&d.digest, &d.media_type)?;
            per_repo.entry(repo.to_owned()).or_default().extend(reach);
        }
        let linked: usize = per_repo.values().map(Vec::len).sum();
        self.wait(self.backend.give_links(per_repo))?;
        if linked > 0 {
            tracing::info!(
                data = %self.describe(),
                links = linked,
                "each repository now answers only for what it holds: links made from its records"
            );
        }
        self.links.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// The anchor a new link is a hard link to (a hint; each anchor takes as many links as the
/// filesystem allows, then the next one is made).
static ANCHOR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Make the links of `ds` in `dir` (made if missing), then (`durable`) flush the directory.
///
/// A link is a hard link to an empty anchor file (`.ferry/links/.anchor-N`), not a file of its
/// own: a new inode costs ~280 µs on this kind of disk (measured: create 284 µs, hard link
/// 14 µs, per file), which on every blob push would cost more than the push. Only a link's
/// existence is ever looked at. (Not a hard link to the blob: a blob pushed again is renamed
/// over, and the link would keep the old copy's space.) When an anchor has as many links as the
/// filesystem allows (EMLINK; 65,000 on ext4), the next anchor is made; a filesystem without
/// hard links gets empty files.
pub(super) fn link_files(
    root: &std::path::Path,
    dir: &std::path::Path,
    ds: &[Digest],
    durable: bool,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let anchors = root.join(LINKS);
    let mut made = false;
    for d in ds {
        let p: PathBuf = dir.join(flat(d));
        let mut tries = 0;
        loop {
            let n = ANCHOR.load(std::sync::atomic::Ordering::Relaxed);
            let anchor = anchors.join(format!(".anchor-{n}"));
            match std::fs::hard_link(&anchor, &p) {
                Ok(()) => made = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 2 => {
                    read::open_private(&anchor, true, false)?;
                    tries += 1;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EMLINK) && tries < 64 => {
                    let _ = ANCHOR.compare_exchange(
                        n,
                        n + 1,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    tries += 1;
                    continue;
                }
                // No hard links here: a file of its own.
                Err(_) => match read::open_private(&p, true, false) {
                    Ok(_) => made = true,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                },
            }
            break;
        }
    }
    if made && durable {
        write::fsync_dir(dir)?;
    }
    Ok(())
}

/// Remove a digest's links in `repos` of the directory store at `root`.
pub(super) fn remove_dir_links(
    root: &std::path::Path,
    d: &Digest,
    repos: &[String],
) -> io::Result<()> {
    let name = flat(d);
    for r in repos {
        match std::fs::remove_file(root.join(repo_dir(r)).join(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
