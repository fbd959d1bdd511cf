//! What builds asked for: every manifest the registry resolved (`ferry used`), and every
//! manifest request it could not answer (`ferry misses`), both kept so that the next trip can
//! carry exactly them.
//!
//! The lists live in the store's state files (`.ferry/used.json`, `.ferry/misses.json`); memory
//! holds only what changed since the last flush (every few seconds, and at shutdown), which is
//! merged into the files by reading them entry by entry as the new ones are written. So a
//! process needs no more memory for a long history than for a short one (a review saw a fresh
//! process start 17 MB larger with 20,000 entries loaded, and grow more with every flush's copy),
//! and a restart loses at most the last few seconds. A `--read-only` store is never written: its
//! record lives in memory as long as the process. Both are bounded: a client asking for random
//! names cannot grow them past [`MAX_ENTRIES`] (the entries used longest ago make room).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::Store;
use crate::vocab::digest::Digest;

pub const USED_FILE: &str = "used.json";
pub const MISSES_FILE: &str = "misses.json";
/// Entries kept per list.
pub const MAX_ENTRIES: usize = 20_000;
/// Client addresses kept per entry.
const MAX_CLIENTS: usize = 16;
const MAX_FILE_BYTES: u64 = 64 << 20;

/// A manifest that was resolved.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Used {
    /// The upstream it came through (`--upstream` NAME), if it is a pull-through name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub repository: String,
    /// The tag or digest asked for.
    pub reference: String,
    /// What it resolved to.
    pub digest: Digest,
    /// Unix seconds.
    pub first: u64,
    pub last: u64,
    pub count: u64,
    pub clients: Vec<String>,
}

/// A manifest request that found nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Miss {
    pub repository: String,
    pub reference: String,
    pub count: u64,
    pub first: u64,
    pub last: u64,
}

type Key = (String, String);

/// What changed since the last flush. Entries count only what happened since; a flush adds
/// them to what the file holds.
#[derive(Default)]
pub struct Recorder {
    used: Mutex<BTreeMap<Key, Used>>,
    misses: Mutex<BTreeMap<Key, Miss>>,
    /// Misses answered since the last flush: taken out of the file's list.
    answered: Mutex<BTreeSet<Key>>,
    dirty: AtomicBool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The entry for `key`, made with `make` when new; a full map first drops the entry used
/// longest ago.
fn slot<V>(
    map: &mut BTreeMap<Key, V>,
    key: Key,
    last: impl Fn(&V) -> u64,
    make: impl FnOnce() -> V,
) -> &mut V {
    if !map.contains_key(&key) && map.len() >= MAX_ENTRIES {
        if let Some(k) = map
            .iter()
            .min_by_key(|(_, v)| last(v))
            .map(|(k, _)| k.clone())
        {
            map.remove(&k);
        }
    }
    map.entry(key).or_insert_with(make)
}

/// An entry of either list: how two records of the same (repository, reference) add up.
trait Entry: Clone + Send + Sync + Serialize + serde::de::DeserializeOwned {
    fn key(&self) -> Key;
    fn last(&self) -> u64;
    /// `newer` happened after `self`: counts add, times widen, the newer answer wins.
    fn merge(&mut self, newer: &Self);
}

impl Entry for Used {
    fn key(&self) -> Key {
        (self.repository.clone(), self.reference.clone())
    }
    fn last(&self) -> u64 {
        self.last
    }
    fn merge(&mut self, newer: &Used) {
        self.digest = newer.digest.clone();
        if newer.upstream.is_some() {
            self.upstream = newer.upstream.clone();
        }
        self.first = self.first.min(newer.first);
        self.last = self.last.max(newer.last);
        self.count = self.count.saturating_add(newer.count);
        for c in &newer.clients {
            if !self.clients.contains(c) {
                if self.clients.len() >= MAX_CLIENTS {
                    self.clients.remove(0);
                }
                self.clients.push(c.clone());
            }
        }
    }
}

impl Entry for Miss {
    fn key(&self) -> Key {
        (self.repository.clone(), self.reference.clone())
    }
    fn last(&self) -> u64 {
        self.last
    }
    fn merge(&mut self, newer: &Miss) {
        self.first = self.first.min(newer.first);
        self.last = self.last.max(newer.last);
        self.count = self.count.saturating_add(newer.count);
    }
}

/// Call `f` with each element of a JSON array read from `r`, one at a time (never the whole
/// list in memory).
fn each<T: serde::de::DeserializeOwned>(
    r: impl std::io::Read,
    f: &mut dyn FnMut(T),
) -> serde_json::Result<()> {
    struct Each<'a, T>(&'a mut dyn FnMut(T));
    impl<'de, T: serde::de::DeserializeOwned> serde::de::Visitor<'de> for Each<'_, T> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<(), A::Error> {
            while let Some(x) = seq.next_element::<T>()? {
                (self.0)(x);
            }
            Ok(())
        }
    }
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_reader(r);
    (&mut de).deserialize_seq(Each(f))?;
    de.end()
}

/// Each entry of the state file `name`, one at a time; a file that cannot be read or parsed is
/// named and counts as empty (recording starts afresh rather than refusing to serve). Blocking.
fn each_stored<T: serde::de::DeserializeOwned>(store: &Store, name: &str, f: &mut dyn FnMut(T)) {
    let r = match store.wait(store.open_state(name, MAX_FILE_BYTES)) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(file = name, error = %e, "a record file cannot be read; starting it afresh");
            return;
        }
    };
    if let Err(e) = each(r, f) {
        tracing::warn!(file = name, error = %e, "a record file does not parse; starting it afresh");
    }
}

/// The stored list merged with what changed since (`pending`), less `gone`, as it will be
/// written: at most [`MAX_ENTRIES`], those used longest ago left out. Calls `out` with each.
/// Reads the file twice (first only the times, to know what is left out), never whole.
fn merged<T: Entry>(
    store: &Store,
    name: &str,
    pending: &BTreeMap<Key, T>,
    gone: &BTreeSet<Key>,
    out: &mut dyn FnMut(&T) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let keep = |e: &T| !gone.contains(&e.key());
    // Only the times of the file's entries are held (8 bytes each), and of the keys only those
    // that changed: a set of every key would be the whole history again, once per flush.
    let mut lasts: Vec<u64> = Vec::new();
    let mut seen: BTreeSet<Key> = BTreeSet::new();
    each_stored(store, name, &mut |e: T| {
        if keep(&e) {
            let k = e.key();
            let last = match pending.get(&k) {
                Some(p) => {
                    let last = p.last().max(e.last());
                    seen.insert(k);
                    last
                }
                None => e.last(),
            };
            lasts.push(last);
        }
    });
    lasts.extend(
        pending
            .iter()
            .filter(|(k, _)| !seen.contains(*k))
            .map(|(_, p)| p.last()),
    );
    // Past the bound, the entries used longest ago go: those before `cutoff`, and of those
    // at it, as many as needed.
    let (cutoff, mut at_cutoff) = if lasts.len() > MAX_ENTRIES {
        lasts.sort_unstable_by(|a, b| b.cmp(a));
        let cutoff = lasts[MAX_ENTRIES - 1];
        let above = lasts.iter().take_while(|l| **l > cutoff).count();
        (cutoff, MAX_ENTRIES - above)
    } else {
        (0, usize::MAX)
    };
    drop(lasts);
    let mut admit = |last: u64| {
        if last > cutoff {
            true
        } else if last == cutoff && at_cutoff > 0 {
            at_cutoff -= 1;
            true
        } else {
            false
        }
    };
    let mut failed = None;
    each_stored(store, name, &mut |mut e: T| {
        if failed.is_some() || !keep(&e) {
            return;
        }
        if let Some(p) = pending.get(&e.key()) {
            e.merge(p);
        }
        if admit(e.last()) {
            if let Err(x) = out(&e) {
                failed = Some(x);
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    for (k, p) in pending {
        if !seen.contains(k) && admit(p.last()) {
            out(p)?;
        }
    }
    Ok(())
}

/// Write `name` as the merged list (see [`merged`]), streamed.
fn write_merged<T: Entry>(
    store: &Store,
    name: &str,
    pending: &BTreeMap<Key, T>,
    gone: &BTreeSet<Key>,
) -> Result<()> {
    store.wait(store.write_state_with(name, &mut |w| {
        w.write_all(b"[")?;
        let mut first = true;
        merged(store, name, pending, gone, &mut |e| {
            w.write_all(if first { b"\n  " } else { b",\n  " })?;
            first = false;
            serde_json::to_writer(&mut *w, e).map_err(std::io::Error::other)
        })?;
        w.write_all(b"\n]\n")
    }))
}

/// The merged list in memory (`used_list`, `miss_list`: tests and small callers).
fn merged_list<T: Entry>(
    store: &Store,
    name: &str,
    pending: &BTreeMap<Key, T>,
    gone: &BTreeSet<Key>,
) -> Vec<T> {
    let mut v = Vec::new();
    let _ = merged(store, name, pending, gone, &mut |e| {
        v.push(e.clone());
        Ok(())
    });
    v.sort_by_key(|e| e.key());
    v
}

impl Recorder {
    /// Nothing is loaded: the record is read from the store, entry by entry, when it is listed
    /// or flushed (module docs). Kept for the callers that start a server. Blocking.
    pub fn load_sync(&self, _store: &Store) {}

    pub fn used(
        &self,
        upstream: Option<&str>,
        repository: &str,
        reference: &str,
        digest: &Digest,
        client: Option<String>,
    ) {
        let now = now_secs();
        let key = (repository.to_owned(), reference.to_owned());
        let mut m = lock(&self.used);
        let e = slot(
            &mut m,
            key.clone(),
            |u| u.last,
            || Used {
                upstream: upstream.map(str::to_owned),
                repository: repository.to_owned(),
                reference: reference.to_owned(),
                digest: digest.clone(),
                first: now,
                last: now,
                count: 0,
                clients: Vec::new(),
            },
        );
        e.digest = digest.clone();
        e.last = now;
        e.count += 1;
        if upstream.is_some() {
            e.upstream = upstream.map(str::to_owned);
        }
        if let Some(c) = client {
            if !e.clients.contains(&c) {
                if e.clients.len() >= MAX_CLIENTS {
                    e.clients.remove(0);
                }
                e.clients.push(c);
            }
        }
        drop(m);
        // A request the registry could answer is no longer missing.
        lock(&self.misses).remove(&key);
        let mut answered = lock(&self.answered);
        // (Bounded like the lists: a store never flushed, read-only, keeps it for its life.)
        if answered.len() < MAX_ENTRIES {
            answered.insert(key);
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn missed(&self, repository: &str, reference: &str) {
        let now = now_secs();
        let key = (repository.to_owned(), reference.to_owned());
        lock(&self.answered).remove(&key);
        let mut m = lock(&self.misses);
        let e = slot(
            &mut m,
            key,
            |u| u.last,
            || Miss {
                repository: repository.to_owned(),
                reference: reference.to_owned(),
                count: 0,
                first: now,
                last: now,
            },
        );
        e.count += 1;
        e.last = now;
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// What was used: the store's list and what changed since it was written. Blocking.
    pub fn used_list(&self, store: &Store) -> Vec<Used> {
        let pending = lock(&self.used).clone();
        merged_list(store, USED_FILE, &pending, &BTreeSet::new())
    }

    /// What was missed: the store's list and what changed since it was written. Blocking.
    pub fn miss_list(&self, store: &Store) -> Vec<Miss> {
        let pending = lock(&self.misses).clone();
        let gone = lock(&self.answered).clone();
        merged_list(store, MISSES_FILE, &pending, &gone)
    }

    /// Merge what changed into the state files, if anything did. Blocking.
    pub fn flush_sync(&self, store: &Store) {
        // `--read-only` writes nothing to the medium (a write-protected stick, a signed trip):
        // the record is then kept in memory only (said once at start by `ferry serve`).
        if store.read_only() || !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        // Taken out, so requests meanwhile start a new round; put back if the write fails.
        let used = std::mem::take(&mut *lock(&self.used));
        let misses = std::mem::take(&mut *lock(&self.misses));
        let answered = std::mem::take(&mut *lock(&self.answered));
        let wrote_used = write_merged(store, USED_FILE, &used, &BTreeSet::new());
        let wrote_misses = write_merged(store, MISSES_FILE, &misses, &answered);
        if let Err(e) = &wrote_used {
            tracing::warn!(file = USED_FILE, error = %e, "recording what builds used failed");
            let mut m = lock(&self.used);
            for (k, mut v) in used {
                if let Some(newer) = m.remove(&k) {
                    v.merge(&newer);
                }
                m.insert(k, v);
            }
        }
        if let Err(e) = &wrote_misses {
            tracing::warn!(file = MISSES_FILE, error = %e, "recording what builds used failed");
            let mut m = lock(&self.misses);
            for (k, mut v) in misses {
                if let Some(newer) = m.remove(&k) {
                    v.merge(&newer);
                }
                m.insert(k, v);
            }
            lock(&self.answered).extend(answered);
        }
        if wrote_used.is_err() || wrote_misses.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Flush every `every` until the process ends.
    pub async fn run<S: AsRef<Store> + Send + Sync + 'static>(
        self: std::sync::Arc<Self>,
        owner: std::sync::Arc<S>,
        every: Duration,
    ) {
        loop {
            tokio::time::sleep(every).await;
            let (me, s) = (self.clone(), owner.clone());
            let _ = tokio::task::spawn_blocking(move || me.flush_sync((*s).as_ref())).await;
        }
    }
}

/// The recorded lists of a store, for `ferry used` and `ferry misses` (blocking).
pub fn read_used(store: &Store) -> Result<Vec<Used>> {
    read_file(store, USED_FILE)
}

pub fn read_misses(store: &Store) -> Result<Vec<Miss>> {
    read_file(store, MISSES_FILE)
}

fn read_file<T: serde::de::DeserializeOwned>(store: &Store, name: &str) -> Result<Vec<T>> {
    match store.wait(store.read_state(name, MAX_FILE_BYTES))? {
        None => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Layout(format!(".ferry/{name} does not parse: {e}"))),
    }
}

/// RFC 3339 for a unix time, for the comments of a refs file.
pub fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// A refs file (`ferry sync --refs-file`) of what was used since `since` (unix seconds).
/// Digest entries that a recorded tag of the same repository already carries (the platform
/// manifests of an index asked for by digest after its tag) are left out: syncing the tag
/// carries them.
pub fn used_refs_file(
    list: &[Used],
    since: u64,
    carried: &dyn Fn(&Used) -> bool,
    header: &str,
) -> String {
    let mut out = String::new();
    out.push_str(header);
    let mut n = 0;
    for u in list.iter().filter(|u| u.last >= since) {
        if (u.reference.starts_with("sha256:") || u.reference.starts_with("sha512:")) && carried(u)
        {
            continue;
        }
        let sep = if u.reference.contains(':') { '@' } else { ':' };
        out.push_str(&format!(
            "{}{sep}{}  # {} used {}x, last {}, by {}\n",
            u.repository,
            u.reference,
            u.digest,
            u.count,
            rfc3339(u.last),
            if u.clients.is_empty() {
                "-".to_owned()
            } else {
                u.clients.join(" ")
            }
        ));
        n += 1;
    }
    out.push_str(&format!("# {n} refs\n"));
    out
}

/// A refs file of the misses.
pub fn misses_refs_file(list: &[Miss], header: &str) -> String {
    let mut out = String::new();
    out.push_str(header);
    for m in list {
        let sep = if m.reference.contains(':') { '@' } else { ':' };
        out.push_str(&format!(
            "{}{sep}{}  # asked {}x, last {}\n",
            m.repository,
            m.reference,
            m.count,
            rfc3339(m.last)
        ));
    }
    out.push_str(&format!("# {} refs\n", list.len()));
    out
}

/// The manifests that recorded tags carry (a tag's own digest and, for an index, its children),
/// read from the store: a digest entry among them needs no ref of its own. Blocking.
pub fn carried_by_tags(store: &Store, list: &[Used]) -> std::collections::HashSet<Digest> {
    let mut out = std::collections::HashSet::new();
    for u in list.iter().filter(|u| !u.reference.contains(':')) {
        out.insert(u.digest.clone());
        let Ok(bytes) =
            store.wait(store.read_small(&u.digest, crate::vocab::media::MAX_MANIFEST_BYTES))
        else {
            continue;
        };
        if let Ok(info) = crate::vocab::media::parse_manifest(&bytes, None) {
            out.extend(
                info.edges
                    .into_iter()
                    .filter(|e| matches!(e.kind, crate::vocab::media::EdgeKind::Manifest))
                    .map(|e| e.digest),
            );
        }
    }
    out
}
