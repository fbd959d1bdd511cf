//! What builds asked for: every manifest the registry resolved (`ferry used`), and every
//! manifest request it could not answer (`ferry misses`), both kept so that the next trip can
//! carry exactly them.
//!
//! Kept in memory while serving and written to the store's state files (`.ferry/used.json`,
//! `.ferry/misses.json`) every few seconds when something changed, and at shutdown; read back
//! at start, so a restart loses at most the last few seconds. A `--read-only` store is never
//! written: its record lives as long as the process. Both are bounded: a client asking
//! for random names cannot grow them past [`MAX_ENTRIES`] (the oldest entries make room).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::Store;

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

#[derive(Default)]
pub struct Recorder {
    used: Mutex<BTreeMap<Key, Used>>,
    misses: Mutex<BTreeMap<Key, Miss>>,
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

/// Add a list read back from a state file.
fn fill<V>(map: &Mutex<BTreeMap<Key, V>>, list: Option<Vec<V>>, key: impl Fn(&V) -> Key) {
    let mut m = lock(map);
    for v in list.into_iter().flatten().take(MAX_ENTRIES) {
        m.insert(key(&v), v);
    }
}

impl Recorder {
    /// Add what an earlier run recorded (a state file that does not parse is named and set
    /// aside: recording starts afresh rather than refusing to serve). Blocking.
    pub fn load_sync(&self, store: &Store) {
        fill(&self.used, read_list::<Used>(store, USED_FILE), |u| {
            (u.repository.clone(), u.reference.clone())
        });
        fill(&self.misses, read_list::<Miss>(store, MISSES_FILE), |m| {
            (m.repository.clone(), m.reference.clone())
        });
    }

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
            key,
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
        lock(&self.misses).remove(&(repository.to_owned(), reference.to_owned()));
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn missed(&self, repository: &str, reference: &str) {
        let now = now_secs();
        let key = (repository.to_owned(), reference.to_owned());
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

    pub fn used_list(&self) -> Vec<Used> {
        lock(&self.used).values().cloned().collect()
    }

    pub fn miss_list(&self) -> Vec<Miss> {
        lock(&self.misses).values().cloned().collect()
    }

    /// Write both lists if anything changed since the last write. Blocking.
    pub fn flush_sync(&self, store: &Store) {
        // `--read-only` writes nothing to the medium (a write-protected stick, a signed trip):
        // the record is then kept in memory only (said once at start by `ferry serve`).
        if store.read_only() || !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let used = serde_json::to_vec_pretty(&self.used_list()).unwrap_or_default();
        let misses = serde_json::to_vec_pretty(&self.miss_list()).unwrap_or_default();
        for (name, bytes) in [(USED_FILE, used), (MISSES_FILE, misses)] {
            if let Err(e) = store.write_state_sync(name, &bytes) {
                tracing::warn!(file = name, error = %e, "recording what builds used failed");
                self.dirty.store(true, Ordering::Relaxed);
            }
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

fn read_list<T: serde::de::DeserializeOwned>(store: &Store, name: &str) -> Option<Vec<T>> {
    match store.read_state_sync(name, MAX_FILE_BYTES) {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(file = name, error = %e, "a record file does not parse; starting it afresh");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(file = name, error = %e, "a record file cannot be read; starting it afresh");
            None
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
    match store.read_state_sync(name, MAX_FILE_BYTES)? {
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
        let Ok(bytes) = store.read_small_sync(&u.digest, crate::media::MAX_MANIFEST_BYTES) else {
            continue;
        };
        if let Ok(info) = crate::media::parse_manifest(&bytes, None) {
            out.extend(
                info.edges
                    .into_iter()
                    .filter(|e| matches!(e.kind, crate::media::EdgeKind::Manifest))
                    .map(|e| e.digest),
            );
        }
    }
    out
}
