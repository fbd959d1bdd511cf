//! `ferry verify`: re-hash every blob of a layout in parallel and check every recorded manifest's
//! references; report corrupt and missing content by digest and by the tags it breaks.
//! `--repair` moves corrupt blobs to `.ferry/quarantine/`, so that a later sync or push can bring
//! good copies back (the name is then free again).

use std::collections::{BTreeMap, BTreeSet, HashSet};
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
/// swept.
pub fn reachable(
    store: &Store,
    root: &Digest,
    media_type: &str,
) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
    let mut seen = BTreeSet::new();
    let mut missing = BTreeSet::new();
    let mut stack = vec![(root.clone(), Some(media_type.to_owned()))];
    while let Some((d, mt)) = stack.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        // Present means a regular file (or a symlink inside the layout to one): a FIFO or a
        // symlink leaving the layout under this name is missing content, and never opened.
        let Some(size) = store.blob_size_checked_sync(&d)? else {
            missing.insert(d);
            continue;
        };
        let Some(mt) = mt else { continue };
        if size > media::MAX_MANIFEST_BYTES {
            continue;
        }
        let bytes = match store.read_small_sync(&d, media::MAX_MANIFEST_BYTES) {
            Ok(b) => b,
            Err(Error::BlobUnknown(_) | Error::BlobUnreadable { .. }) => {
                missing.insert(d);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(info) = media::parse_manifest(&bytes, Some(&mt)) else {
            continue;
        };
        for e in info.edges {
            let child_mt = (e.kind == EdgeKind::Manifest).then(|| e.media_type.clone());
            stack.push((e.digest, child_mt));
        }
    }
    Ok((seen, missing))
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
    for d in &idx.file.manifests {
        let (reach, missing) = reachable(store, &d.digest, &d.media_type)?;
        let mut lacking: Vec<String> = missing.iter().map(ToString::to_string).collect();
        lacking.extend(
            reach
                .iter()
                .filter(|x| corrupt_set.contains(*x))
                .map(ToString::to_string),
        );
        missing_all.extend(missing);
        if !lacking.is_empty() {
            let name = match d.repo_and_tag() {
                (Some(r), Some(t)) => format!("{r}:{t}"),
                (Some(r), None) => format!("{r}@{}", d.digest),
                _ => d.digest.to_string(),
            };
            lacking.sort();
            lacking.dedup();
            report.broken.insert(name, lacking);
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
