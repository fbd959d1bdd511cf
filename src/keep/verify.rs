//! `ferry verify`: re-hash every blob of a layout in parallel and check every recorded manifest's
//! references; report corrupt and missing content by digest and by the tags it breaks.
//! `--repair` moves corrupt blobs to `.ferry/quarantine/`, so that a later sync or push can bring
//! good copies back (the name is then free again).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::Result;
use crate::layout::{BlobEntry, Checked, Store};
use crate::progress::Tally;
use crate::vocab::digest::Digest;

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
    /// Image indexes carried for some of their platforms only (`ferry sync --platform`):
    /// complete for those, the others left out on purpose. Tag → the platforms left out.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sparse: BTreeMap<String, Vec<String>>,
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
        for (tag, ps) in &self.sparse {
            write!(
                f,
                "\n{tag}: image index carried without {} (left out on purpose)",
                ps.join(", ")
            )?;
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
                let ok = match store.wait(store.rehash(d)) {
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

pub use crate::layout::graph::{reachable, Graph};

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
    let files = store.wait(store.list_blobs())?;
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
    let idx = store.wait(store.index())?;
    let mut missing_all = BTreeSet::new();
    let mut graph = Graph::new(store);
    let roots = idx
        .file
        .manifests
        .iter()
        .map(|d| (&d.digest, d.media_type.as_str()));
    let lacking_all = graph.lacking(roots, &corrupt_set)?;
    for (d, mut lacking) in idx.file.manifests.iter().zip(lacking_all) {
        let name = match d.repo_and_tag() {
            (Some(r), Some(t)) => format!("{r}:{t}"),
            (Some(r), None) => format!("{r}@{}", d.digest),
            _ => d.digest.to_string(),
        };
        // Children of an index left out on purpose (`sync --platform`) are not missing.
        let absent = d.absent();
        if !absent.is_empty() {
            let gone: Vec<Digest> = lacking
                .intersection(&absent.iter().cloned().collect())
                .cloned()
                .collect();
            lacking.retain(|x| !absent.contains(x));
            if !gone.is_empty() {
                let names = store
                    .wait(store.read_small(&d.digest, crate::vocab::media::MAX_MANIFEST_BYTES))
                    .map(|b| crate::vocab::media::index_platforms(&b))
                    .unwrap_or_default();
                // In the index's order; what names no platform is an attestation.
                let mut ps: Vec<String> = names
                    .iter()
                    .filter(|(x, _)| gone.contains(x))
                    .map(|(_, p)| p.clone())
                    .collect();
                ps.extend(
                    gone.iter()
                        .filter(|g| !names.iter().any(|(x, _)| x == *g))
                        .map(|g| format!("{g} (an attestation)")),
                );
                report.sparse.insert(name.clone(), ps);
            }
        }
        for x in &lacking {
            if !corrupt_set.contains(x) {
                missing_all.insert(x.clone());
            }
        }
        if !lacking.is_empty() {
            report
                .broken
                .insert(name, lacking.iter().map(ToString::to_string).collect());
        }
    }
    report.missing = missing_all.iter().map(ToString::to_string).collect();
    if repair {
        for d in &corrupt {
            store.wait(store.quarantine(d))?;
            report.quarantined.push(d.to_string());
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
