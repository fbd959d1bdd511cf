//! Pull-through: what a client asks for and the store lacks is fetched from an upstream registry,
//! verified, stored and served while it streams (`ferry serve --upstream NAME=URL`).
//!
//! Names. A repository keeps its upstream as its first component (`docker.io/library/alpine`),
//! so images of several upstreams never collide and the offline mirror serves them under the
//! same names. Requests as mirrors receive them are mapped onto those names by [`candidates`]:
//! dockerd's `registry-mirrors` sends `/v2/library/alpine/…` (Docker Hub's images, without a
//! host), containerd's `hosts.toml` and BuildKit add `?ns=ghcr.io`. The same mapping serves the
//! offline side, which has no upstream at all.
//!
//! Blobs. One fetch per digest however many clients ask ([`PullThrough::blob`]): the first
//! request starts a task that streams the upstream's body to its readers and, on a thread of its
//! own, into a spool file in the store's temp directory, hashing it. A reader that keeps up gets
//! each chunk from memory as it arrives (the fetch keeps the newest few MiB); one that lags or
//! joins late reads the spool file, so none waits for a whole layer before its first byte and
//! memory stays bounded. Every reader's last byte waits until the digest matches; the file is
//! then made durable and renamed into place. A wrong digest, a short body or a dropped upstream
//! ends every reader's body with an error (the connection is cut, so no client takes a short
//! blob for a whole one) and leaves nothing stored. The task runs on its own: a client that goes
//! away does not stop it.
//!
//! Manifests are small: fetched whole, checked against their digest, stored exactly as sent
//! (before their blobs, which the store then fetches on demand). A tag is re-checked against the
//! upstream (one HEAD) when it was last checked more than `--upstream-ttl` ago; an upstream that
//! cannot be asked leaves the stored manifest served, and the log says so.

mod fetch;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::carry::remote::{Registry, RemoteOptions};
use crate::error::{Error, Result};
use crate::layout::{ManifestMeta, Store};
use crate::vocab::digest::Digest;
use crate::vocab::reference::{Reference, RepoName};

use fetch::*;

/// The default bound on one upstream blob: larger than any layer a build makes, small enough
/// that a body that never ends cannot fill a disk.
pub const DEFAULT_MAX_BLOB: u64 = 64 << 30;

/// Docker Hub's name as the first component of a repository.
pub const DOCKER_HUB: &str = "docker.io";

/// A component that names a registry rather than a namespace (`ghcr.io`, `localhost`).
/// How deep referrers of referrers are followed when an image is pulled through.
const REFERRER_DEPTH: usize = 3;
/// At most this many referrers of one manifest are stored when it is pulled through.
const MAX_REFERRERS: usize = 64;

pub fn is_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// Docker Hub's one-component names live under `library/`.
fn hub_name(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("library/{name}")
    }
}

/// The names a request's repository may be stored under, most specific first: `NS/NAME` when
/// the client said which registry it means (`?ns=`), the name as asked, and for a name without
/// a host, Docker Hub's (what dockerd's `registry-mirrors` asks for).
pub fn candidates(name: &str, ns: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ns) = ns.filter(|n| !n.is_empty()) {
        let ns = if is_hub(ns) { DOCKER_HUB } else { ns };
        let first = name.split('/').next().unwrap_or("");
        if first != ns {
            out.push(if ns == DOCKER_HUB {
                format!("{DOCKER_HUB}/{}", hub_name(name))
            } else {
                format!("{ns}/{name}")
            });
        }
    }
    out.push(name.to_owned());
    let first = name.split('/').next().unwrap_or("");
    if !is_host(first) {
        out.push(format!("{DOCKER_HUB}/{}", hub_name(name)));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// The name a request that found nothing is recorded under (`ferry misses`): with the registry
/// it meant when the client said (`?ns=`) or when it can only be Docker Hub's (`library/…`).
pub fn miss_name(name: &str, ns: Option<&str>) -> String {
    match ns.filter(|n| !n.is_empty()) {
        Some(ns) => candidates(name, Some(ns))
            .into_iter()
            .next()
            .unwrap_or_else(|| name.to_owned()),
        None if name.starts_with("library/") => format!("{DOCKER_HUB}/{name}"),
        None => name.to_owned(),
    }
}

fn is_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// One `--upstream NAME=URL`.
pub struct Upstream {
    pub name: String,
    pub url: String,
    registry: Registry,
    host: String,
    opts: RemoteOptions,
}

impl Upstream {
    /// `NAME=URL` (`docker.io=https://registry-1.docker.io`, `lab=http://10.0.0.5:5000`);
    /// `creds` is `USER:PASS`, else `~/.docker/config.json` and its helpers are asked.
    pub fn parse(spec: &str, creds: Option<String>, ca_file: Option<PathBuf>) -> Result<Upstream> {
        let bad = |why: &str| Error::Usage(format!("--upstream {spec:?}: {why}"));
        let (name, url) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=URL, e.g. docker.io=https://registry-1.docker.io"))?;
        if RepoName::parse(name).is_err() || name.contains('/') {
            return Err(bad(
                "NAME is the first component of the repositories it serves (docker.io, ghcr.io): lowercase letters, digits, '.', '-', '_'",
            ));
        }
        let (plain, hostport) = if let Some(h) = url.strip_prefix("https://") {
            (false, h)
        } else if let Some(h) = url.strip_prefix("http://") {
            (true, h)
        } else {
            return Err(bad("URL must start with https:// or http://"));
        };
        let host = hostport.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(bad("URL is a registry's address, with no path"));
        }
        let opts = RemoteOptions {
            plain_http: plain,
            insecure: false,
            ca_file,
            creds,
            idle_timeout: None,
        };
        Ok(Upstream {
            name: name.to_owned(),
            url: url.to_owned(),
            registry: Registry::new(host, &opts)?,
            host: host.to_owned(),
            opts,
        })
    }

    /// The same upstream with another idle timeout (`--upstream-idle-timeout`): a response that
    /// delivers nothing for this long fails, and every client waiting on it hears so.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Result<Upstream> {
        self.opts.idle_timeout = Some(idle);
        self.registry = Registry::new(&self.host, &self.opts)?;
        Ok(self)
    }
}

/// Where a fetch stands, as every reader of it sees it.
#[derive(Debug, Default)]
struct FetchState {
    /// The upstream answered (`len` is then its Content-Length, if it sent one).
    started: bool,
    len: Option<u64>,
    /// Bytes received from the upstream so far, and how many of them are in the spool file.
    received: u64,
    written: u64,
    /// The newest bytes received, oldest first, each with its offset. A reader that keeps up is
    /// served from here as soon as the bytes arrive, without waiting for the disk or reading it
    /// back; a chunk leaves once it is in the spool file and the tail holds more than
    /// [`TAIL_BYTES`]. So every byte below `received` is here or in the file (or both).
    tail: VecDeque<(u64, Bytes)>,
    tail_bytes: usize,
    /// Every byte is in and the digest matches: readers may have the last byte. Storing it
    /// (fsync, rename) comes after and takes what the disk takes; a client does not wait for it.
    verified: bool,
    /// `Some(Ok)`: verified and stored; `Some(Err)`: failed, nothing stored.
    done: Option<std::result::Result<(), String>>,
    /// The upstream has no such blob (a 404 to pass on, not a failure).
    absent: bool,
}

impl FetchState {
    /// Drop what the file holds from the front of the tail while the tail is over its size.
    fn trim(&mut self) {
        while self.tail_bytes > TAIL_BYTES {
            match self.tail.front() {
                Some((at, b)) if at + b.len() as u64 <= self.written => {
                    self.tail_bytes -= b.len();
                    self.tail.pop_front();
                }
                _ => break,
            }
        }
    }
}

struct Fetch {
    /// The spool file, once the writer has made it (off the path to the upstream's first byte:
    /// creating a file waits for the filesystem's journal). Readers only need it for bytes
    /// below the tail, which are written, so it is there by then.
    file: std::sync::OnceLock<Arc<std::fs::File>>,
    state: watch::Receiver<FetchState>,
}

/// Counters for the page and the tests.
#[derive(Default)]
pub struct Counters {
    /// Blob bodies requested from upstreams.
    pub blob_fetches: AtomicU64,
    /// Manifests requested from upstreams (GET), and tag re-checks (HEAD).
    pub manifest_fetches: AtomicU64,
    pub tag_checks: AtomicU64,
    /// Blob fetches that failed (unreachable, wrong or short body, disk); nothing was stored.
    pub blob_fetch_failures: AtomicU64,
    /// Tag re-checks answered from the store because the upstream could not be asked or read.
    pub served_stale: AtomicU64,
}

pub struct PullThrough {
    upstreams: Vec<Arc<Upstream>>,
    ttl: Duration,
    /// When a (repository, tag) was last checked against its upstream.
    checked: Mutex<HashMap<(String, String), Instant>>,
    fetches: Mutex<HashMap<Digest, Arc<Fetch>>>,
    /// Fetches that have left `fetches` (stored or failed), counted under its lock.
    ended: AtomicU64,
    pub counters: Counters,
    /// The most one upstream blob may be (`--upstream-max-blob`).
    max_blob: u64,
}

/// A blob on its way from an upstream, as a client gets it.
pub struct Streaming {
    pub len: Option<u64>,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// What answers a blob request the store could not.
pub enum BlobAnswer {
    /// The store has it now (fetched meanwhile): serve it from there.
    Stored,
    Streaming(Streaming),
}

/// Bytes already in the spool file that a fetch keeps in memory for readers that keep up.
const TAIL_BYTES: usize = 2 * 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PullThrough {
    pub fn new(upstreams: Vec<Upstream>, ttl: Duration) -> Result<PullThrough> {
        let mut names = std::collections::HashSet::new();
        for u in &upstreams {
            if !names.insert(u.name.clone()) {
                return Err(Error::Usage(format!(
                    "--upstream {} is given twice",
                    u.name
                )));
            }
        }
        Ok(PullThrough {
            upstreams: upstreams.into_iter().map(Arc::new).collect(),
            ttl,
            checked: Default::default(),
            fetches: Default::default(),
            ended: AtomicU64::new(0),
            counters: Default::default(),
            max_blob: DEFAULT_MAX_BLOB,
        })
    }

    /// `--upstream-max-blob`: the most one upstream blob may be. A body announced larger is
    /// refused before it is read, one that goes on past it is cut there, and nothing is stored.
    pub fn with_max_blob(mut self, max: u64) -> PullThrough {
        self.max_blob = max;
        self
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Upstream> {
        self.upstreams.iter().map(|u| u.as_ref())
    }

    /// The upstream a stored name belongs to, and the name the upstream knows it by.
    pub fn route(&self, name: &str) -> Option<(Arc<Upstream>, String)> {
        let (first, rest) = name.split_once('/')?;
        let up = self.upstreams.iter().find(|u| u.name == first)?;
        let rest = if first == DOCKER_HUB {
            hub_name(rest)
        } else {
            rest.to_owned()
        };
        Some((up.clone(), rest))
    }

    fn fresh(&self, name: &str, tag: &str) -> bool {
        lock(&self.checked)
            .get(&(name.to_owned(), tag.to_owned()))
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn mark_checked(&self, name: &str, tag: &str) {
        let mut c = lock(&self.checked);
        // Bounded: entries past their TTL are worth nothing.
        if c.len() > 100_000 {
            let ttl = self.ttl;
            c.retain(|_, at| at.elapsed() < ttl);
        }
        c.insert((name.to_owned(), tag.to_owned()), Instant::now());
    }

    /// A manifest the store holds under `name` (a pull-through name): its tag re-checked against
    /// the upstream when the TTL has passed. `None` when the store does not have it.
    pub async fn refresh(
        &self,
        store: &Store,
        name: &RepoName,
        reference: &Reference,
        stored: ManifestMeta,
    ) -> Result<ManifestMeta> {
        let Reference::Tag(tag) = reference else {
            return Ok(stored); // a digest never changes
        };
        let Some((up, urepo)) = self.route(name.as_str()) else {
            return Ok(stored);
        };
        if self.fresh(name.as_str(), tag) {
            return Ok(stored);
        }
        self.counters.tag_checks.fetch_add(1, Ordering::Relaxed);
        match up.registry.manifest_head(&urepo, reference).await {
            Ok(Some(d)) if d == stored.digest => {
                self.mark_checked(name.as_str(), tag);
                Ok(stored)
            }
            Ok(Some(_)) => match self.fetch_manifest(store, name, reference).await {
                Ok(Some(m)) => Ok(m),
                Ok(None) => Ok(stored),
                Err(e) => {
                    tracing::warn!(upstream = %up.name, repo = %name, %tag, error = %e,
                        "the upstream moved this tag but could not be read: serving what is stored");
                    self.counters.served_stale.fetch_add(1, Ordering::Relaxed);
                    Ok(stored)
                }
            },
            Ok(None) => {
                tracing::warn!(upstream = %up.name, repo = %name, %tag,
                    "the upstream no longer has this tag: serving what is stored");
                self.mark_checked(name.as_str(), tag);
                Ok(stored)
            }
            Err(e) => {
                tracing::warn!(upstream = %up.name, repo = %name, %tag, error = %e,
                    "upstream unreachable: serving the stored manifest");
                self.counters.served_stale.fetch_add(1, Ordering::Relaxed);
                Ok(stored)
            }
        }
    }

    /// Fetch a manifest the store lacks from `name`'s upstream, store it exactly as sent (its
    /// blobs come on demand) and describe it. `None` when the upstream has no such manifest.
    pub async fn fetch_manifest(
        &self,
        store: &Store,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Option<ManifestMeta>> {
        let Some((up, urepo)) = self.route(name.as_str()) else {
            return Ok(None);
        };
        self.counters
            .manifest_fetches
            .fetch_add(1, Ordering::Relaxed);
        let looked = up
            .registry
            .manifest_lookup(&urepo, reference)
            .await
            .map_err(|e| match e {
                // Whatever the upstream did wrong is the upstream's failure (502), not the client's.
                Error::Remote { .. } => e,
                e => Error::Remote {
                    registry: up.name.clone(),
                    message: e.to_string(),
                },
            })?;
        let Some((bytes, mt, digest)) = looked else {
            return Ok(None);
        };
        store
            .put_manifest_checked(name, reference, bytes, Some(&mt), false)
            .await?;
        if let Reference::Tag(t) = reference {
            self.mark_checked(name.as_str(), t);
        }
        tracing::info!(upstream = %up.name, repo = %name, %reference, %digest, "pulled through");
        self.fetch_referrers(store, name, &up, &urepo, &digest)
            .await;
        store.manifest(name, reference).await.map(Some)
    }

    /// What refers to a manifest just pulled through (signatures, SBOMs, attestations), stored
    /// with it — their blobs come on demand, as an image's do — so that the mirror's referrers
    /// API lists them and `ferry used` → `ferry sync --refs-file` finds them. A referrer of a
    /// referrer (a signature of an SBOM) comes along too, to a depth of [`REFERRER_DEPTH`]. The
    /// client's pull never fails for them: what cannot be had is logged.
    async fn fetch_referrers(
        &self,
        store: &Store,
        name: &RepoName,
        up: &Upstream,
        urepo: &str,
        subject: &Digest,
    ) {
        let mut todo = vec![(subject.clone(), 0usize)];
        let mut seen = std::collections::HashSet::new();
        while let Some((s, depth)) = todo.pop() {
            if depth >= REFERRER_DEPTH || !seen.insert(s.clone()) {
                continue;
            }
            let list = match up.registry.referrers(urepo, &s).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(upstream = %up.name, repo = %name, subject = %s, error = %e,
                        "the referrers of a pulled-through manifest could not be listed");
                    continue;
                }
            };
            for r in list.into_iter().take(MAX_REFERRERS) {
                let reference = Reference::Digest(r.digest.clone());
                if store.manifest(name, &reference).await.is_ok() {
                    todo.push((r.digest, depth + 1));
                    continue;
                }
                let got = up.registry.manifest_lookup(urepo, &reference).await;
                match got {
                    Ok(Some((bytes, mt, _))) => {
                        match store
                            .put_manifest_checked(name, &reference, bytes, Some(&mt), false)
                            .await
                        {
                            Ok(_) => todo.push((r.digest, depth + 1)),
                            Err(e) => {
                                tracing::warn!(repo = %name, referrer = %r.digest, error = %e,
                                "a referrer from the upstream was not stored")
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(upstream = %up.name, repo = %name, referrer = %r.digest,
                        error = %e, "a referrer could not be fetched")
                    }
                }
            }
        }
    }

    /// How many fetches have ended so far. Read it before looking in the store: [`Self::blob`]
    /// then knows whether a fetch may have stored the blob since.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// A blob the store lacked when the caller looked (after reading [`Self::ended`] as `seen`),
    /// from `name`'s upstream: joins the fetch already running for it or starts one, and answers
    /// once the upstream has sent its first bytes (with its length, if it sent one).
    pub async fn blob<S: AsRef<Store> + Send + Sync + 'static>(
        self: &Arc<Self>,
        store: &Arc<S>,
        name: &str,
        d: &Digest,
        seen: u64,
        start: u64,
        end: Option<u64>,
    ) -> Result<BlobAnswer> {
        let fetch = match self.join_or_start(store, name, d, seen).await? {
            Some(f) => f,
            None => return Ok(BlobAnswer::Stored),
        };
        let mut rx = fetch.state.clone();
        let len = loop {
            {
                let st = rx.borrow_and_update();
                if st.absent {
                    return Err(Error::BlobUnknown(d.clone()));
                }
                if let Some(Err(e)) = &st.done {
                    return Err(upstream_blob_error(d, e));
                }
                if st.started || st.done.is_some() {
                    break st.len;
                }
            }
            if rx.changed().await.is_err() {
                return Err(upstream_blob_error(d, "the fetch stopped"));
            }
        };
        let stop = match (end, len) {
            (Some(e), _) => Some(e + 1),
            (None, l) => l,
        };
        Ok(BlobAnswer::Streaming(Streaming {
            len: stop.map(|s| s.saturating_sub(start)),
            body: reader(fetch, start, stop),
        }))
    }

    async fn join_or_start<S: AsRef<Store> + Send + Sync + 'static>(
        self: &Arc<Self>,
        owner: &Arc<S>,
        name: &str,
        d: &Digest,
        seen: u64,
    ) -> Result<Option<Arc<Fetch>>> {
        let store = (**owner).as_ref();
        let (up, urepo) = self
            .route(name)
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
        let dir = store.spool_dir()?;
        // A fetch leaves the map (and is counted in `ended`) after its blob is stored. So when
        // no fetch has ended since the caller looked, the store still lacks the blob, and a
        // second look would only cost the first byte a round trip to the disk (or the bucket).
        // When one has, look again; a few rounds, then fetch anyway (a stream of other blobs'
        // fetches ending must not keep this one waiting; the worst is a second fetch).
        let mut seen = seen;
        let mut looks = 0;
        let (tx, fetch) = loop {
            let (tx, rx) = watch::channel(FetchState::default());
            let fetch = Arc::new(Fetch {
                file: Default::default(),
                state: rx,
            });
            {
                let mut map = lock(&self.fetches);
                if let Some(f) = map.get(d) {
                    return Ok(Some(f.clone()));
                }
                if self.ended.load(Ordering::Acquire) == seen || looks == 3 {
                    map.insert(d.clone(), fetch.clone());
                    break (Arc::new(tx), fetch);
                }
            }
            looks += 1;
            seen = self.ended();
            if store.blob_size(d).await?.is_some() {
                return Ok(None);
            }
        };
        let (me, owner, d) = (self.clone(), owner.clone(), d.clone());
        self.counters.blob_fetches.fetch_add(1, Ordering::Relaxed);
        let spool = fetch.clone();
        let max_blob = self.max_blob;
        tokio::spawn(async move {
            let store = (*owner).as_ref();
            let res = run_fetch(&up, (&urepo, max_blob), store, &d, spool, dir, &tx).await;
            // Counted before anyone can see the end, so /metrics never lags what clients saw.
            if matches!(&res, Err(e) if !matches!(e, Error::BlobUnknown(_))) {
                me.counters
                    .blob_fetch_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Out of the map before readers hear the end: a request after this finds the blob
            // stored, or starts afresh after a failure.
            {
                let mut map = lock(&me.fetches);
                map.remove(&d);
                me.ended.fetch_add(1, Ordering::Release);
            }
            match res {
                Ok(()) => {
                    tracing::info!(upstream = %up.name, repo = %urepo, digest = %d, "blob pulled through");
                    tx.send_modify(|s| s.done = Some(Ok(())));
                }
                Err(Error::BlobUnknown(_)) => {
                    tx.send_modify(|s| {
                        s.absent = true;
                        s.done = Some(Err("the upstream has no such blob".into()));
                    });
                }
                Err(e) => {
                    tracing::warn!(upstream = %up.name, repo = %urepo, digest = %d, error = %e,
                        "pull-through of a blob failed; nothing stored");
                    tx.send_modify(|s| s.done = Some(Err(e.to_string())));
                }
            }
        });
        Ok(Some(fetch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_mirrors_send_them() {
        assert_eq!(
            candidates("library/alpine", None),
            ["library/alpine", "docker.io/library/alpine"]
        );
        assert_eq!(
            candidates("alpine", Some("docker.io")),
            ["docker.io/library/alpine", "alpine"]
        );
        assert_eq!(
            candidates("org/app", Some("ghcr.io")),
            ["ghcr.io/org/app", "org/app", "docker.io/org/app"]
        );
        assert_eq!(
            candidates("docker.io/library/alpine", Some("docker.io")),
            ["docker.io/library/alpine"]
        );
        assert_eq!(candidates("ghcr.io/org/app", None), ["ghcr.io/org/app"]);
        assert_eq!(
            miss_name("library/busybox", None),
            "docker.io/library/busybox"
        );
        assert_eq!(miss_name("app", None), "app");
        assert_eq!(miss_name("org/app", Some("ghcr.io")), "ghcr.io/org/app");
    }

    #[test]
    fn upstream_specs_are_checked() {
        for bad in [
            "docker.io",
            "docker.io=ftp://x",
            "Docker.io=https://x",
            "a/b=https://x",
            "docker.io=https://x/path",
        ] {
            assert!(Upstream::parse(bad, None, None).is_err(), "{bad}");
        }
    }
}
