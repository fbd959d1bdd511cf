//! `ferry verify`: re-hash every blob of a layout in parallel and check every recorded manifest's
//! references; report corrupt and missing content by digest and by the tags it breaks.
//! `--repair` moves corrupt blobs to `.ferry/quarantine/`, so that a later sync or push can bring
//! good copies back (the name is then free again).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::{BlobEntry, Checked, Store};
use crate::media::{self, EdgeKind};
use crate::progress::Tally;

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub blobs: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub corrupt: Vec<String>,
    pub missing: Vec<String>,
    /// Tag (`REPO:TAG`, or `REPO@DIGEST` for untagged manifests) → the digests it lacks.
    pub broken: BTreeMap<String, Vec<String>>,
    pub quarantined: Vec<String>,
    /// Corrupt digests whose file is not content at all (a FIFO, a symlink leaving the layout),
    /// and what it is.
    pub unreadable: BTreeMap<String, String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blobs, {} bytes re-hashed in {:.1} s ({:.0} MB/s)",
            self.blobs,
            self.bytes,
            self.seconds,
            self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
        )?;
        for d in &self.corrupt {
            match self.unreadable.get(d) {
                Some(why) => write!(f, "\nCORRUPT {d}: {why}")?,
                None => write!(f, "\nCORRUPT {d}")?,
            }
        }
        for d in &self.missing {
            write!(f, "\nMISSING {d}")?;
        }
        for (tag, ds) in &self.broken {
            write!(f, "\nBROKEN {tag}: {}", ds.join(", "))?;
        }
        for d in &self.quarantined {
            write!(f, "\nquarantined {d}")?;
        }
        if self.ok() {
            write!(f, "\nall blobs intact, every recorded manifest complete")?;
        }
        Ok(())
    }
}

/// What re-hashing found.
#[derive(Debug, Default)]
pub struct Rehashed {
    /// Digests whose blob does not hash to them (or cannot be read), sorted.
    pub bad: Vec<Digest>,
    /// Of those, the ones that are no content at all, and what they are.
    pub unreadable: BTreeMap<Digest, String>,
    pub bytes: u64,
}

/// Re-hash `blobs` of `store` on `jobs` threads, counting each blob done in `tally`. A
/// directory's files are opened as [`crate::layout::read::open_regular`] allows: a FIFO under a
/// blob's name is reported, never opened for reading (it would block forever).
pub fn rehash(store: &Store, blobs: &[BlobEntry], jobs: usize, tally: &Tally) -> Rehashed {
    let next = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    let unreadable = Mutex::new(BTreeMap::new());
    let bytes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(e) = blobs.get(i) else { break };
                let d = &e.digest;
                let ok = match store.rehash_sync(d) {
                    Checked::Intact(n) => {
                        bytes.fetch_add(n, Ordering::Relaxed);
                        tally.done(1, n);
                        true
                    }
                    Checked::Corrupt(n) => {
                        bytes.fetch_add(n, Ordering::Relaxed);
                        tally.done(1, n);
                        false
                    }
                    Checked::Refused(why) => {
                        unreadable
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(d.clone(), why);
                        tally.done(1, 0);
                        false
                    }
                    // Gone since the listing (a GC): nothing to check.
                    Checked::Missing => {
                        tally.done(1, 0);
                        true
                    }
                };
                if !ok {
                    bad.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(d.clone());
                }
            });
        }
    });
    let mut bad = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    bad.sort();
    Rehashed {
        bad,
        unreadable: unreadable.into_inner().unwrap_or_else(|p| p.into_inner()),
        bytes: bytes.load(Ordering::Relaxed),
    }
}

/// Everything reachable from one manifest: (digests, digests missing from the store).
///
/// A store that cannot answer (an I/O error, an object store's 503) is an error, never
/// "missing": GC marks with this, and a child left unmarked because a request failed would be
/// swept. Walking many roots, use one [`Graph`]: each manifest is then read once.
pub fn reachable(
    store: &Store,
    root: &Digest,
    media_type: &str,
) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
    Graph::new(store).reachable(root, media_type)
}

/// A node of the graph as reached: its digest, and the media type it is read as when it is a
/// manifest (`None`: a blob). One digest can be both (a legacy cache index's children are
/// blobs, the same bytes elsewhere a manifest), and the two are walked apart.
type Key = (Digest, Option<String>);

/// What one node is: absent from the store, or present with these children.
struct Node {
    present: bool,
    children: Vec<Key>,
}

/// The content graph of a store as GC, verify and retention walk it, each manifest read and
/// parsed once however many roots reach it: a tag of an index of indexes, each recorded in its
/// repository, made GC and verify quadratic when every root re-read its whole subtree.
pub struct Graph<'a> {
    store: &'a Store,
    nodes: HashMap<Key, Node>,
}

impl<'a> Graph<'a> {
    pub fn new(store: &'a Store) -> Graph<'a> {
        Graph {
            store,
            nodes: HashMap::new(),
        }
    }

    fn load(&mut self, key: &Key) -> Result<&Node> {
        if !self.nodes.contains_key(key) {
            let node = self.read(key)?;
            self.nodes.insert(key.clone(), node);
        }
        Ok(&self.nodes[key])
    }

    fn read(&self, (d, mt): &Key) -> Result<Node> {
        let absent = Node {
            present: false,
            children: Vec::new(),
        };
        // Present means a regular file (or a symlink inside the layout to one): a FIFO or a
        // symlink leaving the layout under this name is missing content, and never opened.
        let Some(size) = self.store.blob_size_checked_sync(d)? else {
            return Ok(absent);
        };
        let mut node = Node {
            present: true,
            children: Vec::new(),
        };
        let Some(mt) = mt else { return Ok(node) };
        if size > media::MAX_MANIFEST_BYTES {
            return Ok(node);
        }
        let bytes = match self.store.read_small_sync(d, media::MAX_MANIFEST_BYTES) {
            Ok(b) => b,
            Err(Error::BlobUnknown(_) | Error::BlobUnreadable { .. }) => return Ok(absent),
            Err(e) => return Err(e),
        };
        if let Ok(info) = media::parse_manifest(&bytes, Some(mt)) {
            node.children = info
                .edges
                .into_iter()
                .map(|e| {
                    let child_mt = (e.kind == EdgeKind::Manifest).then_some(e.media_type);
                    (e.digest, child_mt)
                })
                .collect();
        }
        Ok(node)
    }

    /// Walk from `roots`, each node once, calling `visit` with every node reached and whether
    /// it is present. `seen` carries over between calls when given the same set.
    fn walk(
        &mut self,
        roots: Vec<Key>,
        seen: &mut HashSet<Key>,
        mut visit: impl FnMut(&Digest, bool),
    ) -> Result<()> {
        let mut stack = roots;
        while let Some(key) = stack.pop() {
            if !seen.insert(key.clone()) {
                continue;
            }
            let node = self.load(&key)?;
            visit(&key.0, node.present);
            stack.extend(node.children.iter().cloned());
        }
        Ok(())
    }

    /// [`reachable`], with what was read before reused.
    pub fn reachable(
        &mut self,
        root: &Digest,
        media_type: &str,
    ) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
        let (mut reach, mut missing) = (BTreeSet::new(), BTreeSet::new());
        let root = (root.clone(), Some(media_type.to_owned()));
        self.walk(vec![root], &mut HashSet::new(), |d, present| {
            reach.insert(d.clone());
            if !present {
                missing.insert(d.clone());
            }
        })?;
        Ok((reach, missing))
    }

    /// Everything reachable from any of `roots` (GC's mark): one walk, each node once.
    pub fn mark<'r>(
        &mut self,
        roots: impl IntoIterator<Item = (&'r Digest, &'r str)>,
    ) -> Result<BTreeSet<Digest>> {
        let roots = roots
            .into_iter()
            .map(|(d, mt)| (d.clone(), Some(mt.to_owned())))
            .collect();
        let mut live = BTreeSet::new();
        self.walk(roots, &mut HashSet::new(), |d, _| {
            live.insert(d.clone());
        })?;
        Ok(live)
    }

    /// For each root, the digests below it (itself included) that are absent or in `bad`: the
    /// sets are built bottom-up once per node, so a root costs its own children, not its subtree.
    pub fn lacking<'r>(
        &mut self,
        roots: impl IntoIterator<Item = (&'r Digest, &'r str)>,
        bad: &HashSet<Digest>,
    ) -> Result<Vec<BTreeSet<Digest>>> {
        let mut memo: HashMap<Key, std::rc::Rc<BTreeSet<Digest>>> = HashMap::new();
        let mut out = Vec::new();
        for (d, mt) in roots {
            let root = (d.clone(), Some(mt.to_owned()));
            // Post-order without recursion (an index of 10,000 nested indexes is only a file).
            let mut stack = vec![(root.clone(), false)];
            while let Some((key, expanded)) = stack.pop() {
                if memo.contains_key(&key) {
                    continue;
                }
                let node = self.load(&key)?;
                if !expanded {
                    let children: Vec<Key> = node
                        .children
                        .iter()
                        .filter(|c| !memo.contains_key(*c))
                        .cloned()
                        .collect();
                    stack.push((key, true));
                    stack.extend(children.into_iter().map(|c| (c, false)));
                    continue;
                }
                let mut set = BTreeSet::new();
                if !node.present || bad.contains(&key.0) {
                    set.insert(key.0.clone());
                }
                for c in &node.children {
                    if let Some(s) = memo.get(c) {
                        set.extend(s.iter().cloned());
                    }
                }
                memo.insert(key, std::rc::Rc::new(set));
            }
            out.push(memo.get(&root).map(|s| (**s).clone()).unwrap_or_default());
        }
        Ok(out)
    }
}

pub fn verify(store: &Store, jobs: usize, repair: bool) -> Result<VerifyReport> {
    verify_with(store, jobs, repair, &Tally::default())
}

/// [`verify`], counting blobs and bytes re-hashed in `tally` (phase `"re-hashing"`).
pub fn verify_with(
    store: &Store,
    jobs: usize,
    repair: bool,
    tally: &Tally,
) -> Result<VerifyReport> {
    let start = std::time::Instant::now();
    let files = store.list_blobs_sync()?;
    let total: u64 = files.iter().map(|e| e.size).sum();
    tally.phase("re-hashing", files.len() as u64, total);
    let Rehashed {
        bad: corrupt,
        unreadable,
        bytes,
    } = rehash(store, &files, jobs, tally);
    let mut report = VerifyReport {
        blobs: files.len(),
        bytes,
        corrupt: corrupt.iter().map(ToString::to_string).collect(),
        unreadable: unreadable
            .into_iter()
            .map(|(d, why)| (d.to_string(), why))
            .collect(),
        ..Default::default()
    };
    let corrupt_set: HashSet<Digest> = corrupt.iter().cloned().collect();
    let idx = store.index_sync()?;
    let mut missing_all = BTreeSet::new();
    let mut graph = Graph::new(store);
    let roots = idx
        .file
        .manifests
        .iter()
        .map(|d| (&d.digest, d.media_type.as_str()));
    let lacking_all = graph.lacking(roots, &corrupt_set)?;
    for (d, lacking) in idx.file.manifests.iter().zip(lacking_all) {
        for x in &lacking {
            if !corrupt_set.contains(x) {
                missing_all.insert(x.clone());
            }
        }
        if !lacking.is_empty() {
            let name = match d.repo_and_tag() {
                (Some(r), Some(t)) => format!("{r}:{t}"),
                (Some(r), None) => format!("{r}@{}", d.digest),
                _ => d.digest.to_string(),
            };
            report
                .broken
                .insert(name, lacking.iter().map(ToString::to_string).collect());
        }
    }
    report.missing = missing_all.iter().map(ToString::to_string).collect();
    if repair {
        for d in &corrupt {
            store.quarantine_sync(d)?;
            report.quarantined.push(d.to_string());
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
