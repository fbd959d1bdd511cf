//! Garbage collection: mark everything reachable from `index.json` (every tag and every manifest a
//! repository records, through the graph by media type, legacy cache indexes included), then sweep
//! blob files that nothing reaches and that are older than the grace period.
//!
//! Racing pushes: the registry refreshes a blob's mtime whenever it tells a client the blob exists
//! (HEAD, a mount; a completed upload is new anyway), under a shared lock on `.ferry/gc.lock`; the
//! sweep takes that lock exclusively for each victim and re-checks its age under it. So a blob a
//! client was told about is younger than the grace period and is not swept while the client goes
//! on to push the manifest that references it — also when `ferry gc` runs as another process.
//! `index.json` is re-read right before the sweep, so a manifest recorded during the mark is seen;
//! a promise counts from the moment of that last mark, not from the moment of its sweep, so a
//! sweep that takes longer than the grace period still keeps what a client may reference.
//! A bucket has no lock: see [`crate::layout::bucket`] for the marker protocol that replaces it.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layout::graph::Graph;
use crate::layout::Store;
use crate::progress::Tally;
use crate::vocab::digest::Digest;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GcReport {
    pub blobs: usize,
    pub reachable: usize,
    pub swept: usize,
    pub bytes_freed: u64,
    /// Unreferenced but younger than the grace period.
    pub kept_young: usize,
    /// Unreferenced names under `blobs/` that are no content at all (a FIFO, a socket, a
    /// symlink, a directory), and what they are. Swept like any garbage, but never opened;
    /// a directory is left in place.
    pub not_content: Vec<String>,
    pub dry_run: bool,
    pub seconds: f64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        write!(
            f,
            "{} blobs, {} reachable; {verb} {} unreferenced ({} bytes); kept {} younger than the grace period; {:.2} s",
            self.blobs, self.reachable, self.swept, self.bytes_freed, self.kept_young, self.seconds
        )?;
        for n in &self.not_content {
            write!(f, "\nnot content: {n}")?;
        }
        Ok(())
    }
}

fn mark(store: &Store, tally: &Tally) -> Result<BTreeSet<Digest>> {
    let idx = store.wait(store.index())?;
    tally.phase("marking", idx.file.manifests.len() as u64, 0);
    let live = Graph::new(store).mark(
        idx.file
            .manifests
            .iter()
            .map(|d| (&d.digest, d.media_type.as_str())),
    )?;
    tally.done(idx.file.manifests.len() as u64, 0);
    Ok(live)
}

pub fn gc(store: &Store, grace: Duration, dry_run: bool) -> Result<GcReport> {
    gc_with(store, grace, dry_run, &Tally::default())
}

/// [`gc`], counting in `tally`: phase `"marking"` (manifests recorded), then `"sweeping"` (blob
/// files examined; bytes are those freed).
pub fn gc_with(store: &Store, grace: Duration, dry_run: bool, tally: &Tally) -> Result<GcReport> {
    gc_as_of(store, grace, dry_run, tally, SystemTime::now)
}

/// [`gc_with`], reading the time from `now`: a test that stops GC's clock holds every promise
/// younger than the grace period for as long as the race it stages takes, however slow the
/// machine (a bucket's objects cannot be made older, only waited for).
pub fn gc_as_of(
    store: &Store,
    grace: Duration,
    dry_run: bool,
    tally: &Tally,
    now: impl Fn() -> SystemTime,
) -> Result<GcReport> {
    let start = std::time::Instant::now();
    let mut live = mark(store, tally)?;
    let files = store.wait(store.list_blobs())?;
    // Manifests recorded while we were marking are live too. A blob promised less than `grace`
    // before this moment may be referenced by a manifest recorded after it: the sweep keeps those
    // (however long the sweep itself takes).
    let marked_at = now();
    live.extend(mark(store, tally)?);
    // Repositories' links to what is swept go with it (links made later are of later pushes).
    let repos = store.wait(store.link_repos())?;
    store.pause_sync("gc:marked");
    tally.phase("sweeping", files.len() as u64, 0);
    let mut r = GcReport {
        blobs: files.len(),
        reachable: live.len(),
        dry_run,
        ..Default::default()
    };
    for e in files {
        tally.done(1, 0);
        let d = &e.digest;
        if live.contains(d) {
            continue;
        }
        if let Some(kind) = e.not_content {
            if kind == crate::layout::read::DIRECTORY {
                r.not_content.push(format!("{d}: {kind}, left in place"));
                continue;
            }
            r.not_content.push(format!("{d}: {kind}"));
        }
        // Unknown (or future) times count as young.
        let age = e
            .modified
            .and_then(|m| marked_at.duration_since(m).ok())
            .unwrap_or_default();
        if age < grace {
            r.kept_young += 1;
            continue;
        }
        if dry_run {
            r.swept += 1;
            r.bytes_freed += e.size;
            continue;
        }
        // Checked again at the moment of removal, ordered against promises.
        match store.wait(store.sweep_blob(d, grace, marked_at, &repos))? {
            Some(freed) => {
                r.swept += 1;
                r.bytes_freed += freed;
            }
            None => r.kept_young += 1,
        }
    }
    if !dry_run {
        store.wait(store.after_sweep(grace))?;
    }
    r.seconds = start.elapsed().as_secs_f64();
    if !dry_run {
        if let Ok(bytes) = serde_json::to_vec(&r) {
            store.wait(store.record_gc(&bytes));
        }
    }
    Ok(r)
}
