//! The object-store backend of [`super::Store`]: an OCI image layout in an S3-compatible bucket,
//! through the `object_store` crate's S3 client.
//!
//! ```text
//! PREFIX/oci-layout                               as in a directory
//! PREFIX/blobs/<alg>/<hex>                        every blob and manifest, only once verified
//! PREFIX/.ferry/refs/<repo>/_tags/<tag>           one object per tag: the descriptor index.json holds
//! PREFIX/.ferry/refs/<repo>/_manifests/<alg>-<hex>  a manifest the repository holds untagged
//! PREFIX/.ferry/uploads/<id>/state                an upload session (multipart id, parts, length,
//!                                                 the SHA-256 state), so any replica continues it
//! PREFIX/.ferry/uploads/<id>/data                 the multipart upload, copied to blobs/ once verified
//! PREFIX/.ferry/uploads/<id>/tail-<len>           bytes after the last whole part
//! PREFIX/.ferry/promises/<alg>-<hex>              "a client was told this blob exists" (GC spares it)
//! PREFIX/.ferry/sweeping/<alg>-<hex>              a GC is removing this blob right now
//! PREFIX/.ferry/reads/<alg>-<hex>                 when a manifest was last read (retention)
//! ```
//!
//! Why one object per tag and not an `index.json`: without compare-and-swap (Garage 2.5 accepts
//! `If-Match` and overwrites anyway) two replicas rewriting one file lose each other's tags. One
//! object per record makes every publication independent; two writes of the same tag: the last
//! writer wins, as in every registry. `ferry sync s3://… DIR` writes a real `index.json`.
//!
//! Promises and sweeps without a lock (a directory uses flock): a promise writes its record, then
//! looks for a sweep marker, then for the blob; a sweep writes its marker, then looks for a fresh
//! promise, then deletes. Whatever the interleaving, either the sweep sees the promise and keeps
//! the blob, or the promise sees the marker (and answers "unknown", or waits to publish) — so a
//! client is never told a blob exists that a sweep is deleting.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use serde::{Deserialize, Serialize};

use super::index::{Descriptor, IndexFile};
use crate::error::{Error, Result};
use crate::vocab::digest::{Algorithm, Digest, Hasher};

/// Multipart part size: S3's minimum (all parts but the last). Bounds what one upload holds in
/// memory.
const PART: usize = 5 << 20;
/// Parts uploading at once for one session (memory: this many parts plus the one filling).
const PARTS_IN_FLIGHT: usize = 3;
/// A sweep marker older than this was left by a GC that died; promises ignore it.
const STALE_MARKER: Duration = Duration::from_secs(300);

pub struct Bucket {
    s3: Arc<AmazonS3>,
    name: String,
    prefix: String,
    /// The runtime this bucket was opened in: blocking callers (verify, GC) run requests on it.
    rt: tokio::runtime::Handle,
    /// Records already read, by key, with the ETag they had: a reload reads only what changed.
    records: Mutex<HashMap<String, (Option<String>, Descriptor)>>,
    /// One PATCH at a time per session within this process.
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An upload session, as stored in `.ferry/uploads/<id>/state`.
#[derive(Serialize, Deserialize, Default)]
struct Session {
    /// The multipart upload of `data`, once a whole part arrived.
    multipart: Option<String>,
    /// ETags of the parts sent, in order.
    parts: Vec<String>,
    /// Bytes received (parts + tail).
    len: u64,
    /// Bytes in `tail-<len>`.
    tail: u64,
    /// SHA-256 state over all `len` bytes, hex.
    hash: String,
}

/// One part's bytes, in a mapping of its own: the memory goes back to the system as soon as the
/// part is sent. (On the heap it would stay: `main.rs` tells glibc to keep freed memory, which
/// spares the directory backend's push path its page faults, and 5 MiB blocks churned by every
/// upload would then hold the process's memory up for good.)
struct PartBuf {
    map: memmap2::MmapMut,
    len: usize,
}

impl PartBuf {
    /// A buffer for a request's first bytes: its pages come as they are written, so a small
    /// blob costs only what it holds.
    fn new() -> Result<PartBuf> {
        Ok(PartBuf {
            map: memmap2::MmapMut::map_anon(PART)?,
            len: 0,
        })
    }

    /// The next part's buffer in an upload already a part long: populated at once, one call
    /// instead of a page fault per 4 KiB as it fills.
    fn next_part() -> Result<PartBuf> {
        Ok(PartBuf {
            map: memmap2::MmapOptions::new()
                .len(PART)
                .populate()
                .map_anon()?,
            len: 0,
        })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append what fits of `b`; returns how much did.
    fn fill(&mut self, b: &[u8]) -> usize {
        let n = (PART - self.len).min(b.len());
        self.map[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        n
    }

    fn freeze(self) -> Result<Bytes> {
        let len = self.len;
        Ok(Bytes::from_owner(self.map.make_read_only()?).slice(..len))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts and removes: a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error chain in one short line: the S3 error's `<Code>` and `<Message>` when the store
/// sent one, else the innermost cause (a refused connection, a timeout).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    let mut msgs = vec![cur.to_string()];
    while let Some(s) = cur.source() {
        msgs.push(s.to_string());
        cur = s;
    }
    let all = msgs.join(": ");
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = all.find(&open)? + open.len();
        let len = all[start..].find('<')?;
        Some(all[start..start + len].to_owned())
    };
    let line = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => msgs
            .iter()
            .rev()
            .find(|m| !m.trim().is_empty())
            .cloned()
            .unwrap_or(all.clone()),
    };
    let line: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::vocab::reference::truncate(&line)
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

pub fn blob_key(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

fn flat(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

/// The key of the record standing for an index.json descriptor.
fn record_key(d: &Descriptor) -> String {
    match d.repo_and_tag() {
        (Some(r), Some(t)) => format!(".ferry/refs/{r}/_tags/{t}"),
        (Some(r), None) => format!(".ferry/refs/{r}/_manifests/{}", flat(&d.digest)),
        // Repository names cannot start with `_`: this never collides with one.
        (None, _) => format!(".ferry/refs/_unnamed/{}", flat(&d.digest)),
    }
}

pub fn tag_key(repo: &str, tag: &str) -> String {
    format!(".ferry/refs/{repo}/_tags/{tag}")
}

impl Bucket {
    /// Connect to `s3://name/prefix` as the AWS variables say (`settings` take precedence over
    /// the environment: the same names, e.g. `AWS_ENDPOINT_URL`), and check it at once: a
    /// missing bucket, refused credentials or an unreachable endpoint is one line naming which.
    pub async fn open(
        name: &str,
        prefix: &str,
        read_only: bool,
        settings: &[(String, String)],
    ) -> Result<Bucket> {
        let var = |k: &str| {
            settings
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        };
        let here = crate::vocab::location::Location::Bucket {
            bucket: name.to_owned(),
            prefix: prefix.to_owned(),
        }
        .to_string();
        let usage = |m: String| Error::Usage(format!("{here}: {m}"));
        // A stalled store is noticed after this long without a byte (FERRY_S3_READ_TIMEOUT,
        // e.g. `10s`); each request is retried three times within 30 s before it fails.
        let read_timeout = match var("FERRY_S3_READ_TIMEOUT") {
            Some(v) => crate::vocab::duration::parse_duration(&v)
                .map_err(|e| usage(format!("FERRY_S3_READ_TIMEOUT: {e}")))?,
            None => Duration::from_secs(30),
        };
        let mut opts = ClientOptions::new()
            // A whole GET may stream a large blob to a slow client: no overall limit.
            .with_timeout_disabled()
            .with_read_timeout(read_timeout)
            .with_connect_timeout(Duration::from_secs(5));
        if var("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            opts = opts.with_allow_http(true);
        }
        if let Some(ca) = var("AWS_CA_BUNDLE").filter(|v| !v.is_empty()) {
            let pem = std::fs::read(&ca).map_err(|e| {
                usage(format!(
                    "AWS_CA_BUNDLE {}: {e}",
                    std::path::Path::new(&ca).display()
                ))
            })?;
            for c in object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| usage(format!("AWS_CA_BUNDLE: {}", innermost(&e))))?
            {
                opts = opts.with_root_certificate(c);
            }
        }
        let mut builder = AmazonS3Builder::from_env();
        for (k, v) in settings {
            if let Ok(key) = k.to_ascii_lowercase().parse() {
                builder = builder.with_config(key, v);
            }
        }
        let endpoint = var("AWS_ENDPOINT_URL")
            .or_else(|| var("AWS_ENDPOINT"))
            .unwrap_or_else(|| "AWS_ENDPOINT_URL is not set".into());
        let s3 = builder
            .with_bucket_name(name)
            .with_client_options(opts)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            })
            .build()
            .map_err(|e| usage(innermost(&e)))?;
        let b = Bucket {
            s3: Arc::new(s3),
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            rt: tokio::runtime::Handle::try_current()
                .map_err(|_| usage("opened outside the async runtime".into()))?,
            records: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        };
        // One listing tells a missing bucket, refused credentials and an unreachable endpoint
        // apart before anything else runs.
        let root = b.path("");
        if let Err(e) = b.s3.list_with_delimiter(Some(&root)).await {
            let m = innermost(&e);
            let why = if m.contains("NoSuchBucket") || is_not_found(&e) {
                "no such bucket".to_owned()
            } else if matches!(
                e,
                object_store::Error::Unauthenticated { .. }
                    | object_store::Error::PermissionDenied { .. }
            ) || [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "Forbidden",
                "403",
            ]
            .iter()
            .any(|k| m.contains(k))
            {
                "credentials refused (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)".to_owned()
            } else if [
                "connect",
                "dns",
                "timed out",
                "error sending request",
                "Connection refused",
            ]
            .iter()
            .any(|k| m.contains(k))
            {
                format!("endpoint unreachable ({endpoint})")
            } else {
                "the store refused".to_owned()
            };
            return Err(Error::Storage {
                what: here,
                message: format!("{why} ({m})"),
            });
        }
        match b.get_small("oci-layout", 64 << 10).await? {
            Some(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Layout(format!("{here}/oci-layout: {e}")))?;
                if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
                    return Err(Error::Layout(format!(
                        "{here}/oci-layout: unsupported imageLayoutVersion"
                    )));
                }
            }
            None if read_only => {
                return Err(Error::Layout(format!(
                    "{here} is not an OCI image layout (no oci-layout object)"
                )))
            }
            None => {
                b.put("oci-layout", Bytes::from_static(super::OCI_LAYOUT_CONTENT))
                    .await?
            }
        }
        Ok(b)
    }

    pub fn describe(&self) -> String {
        crate::vocab::location::Location::Bucket {
            bucket: self.name.clone(),
            prefix: self.prefix.clone(),
        }
        .to_string()
    }

    fn path(&self, rel: &str) -> Path {
        Path::from(format!("{}{rel}", self.prefix))
    }

    fn rel<'a>(&self, p: &'a Path) -> &'a str {
        p.as_ref()
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(p.as_ref())
    }

    fn err(&self, op: &str, rel: &str, e: object_store::Error) -> Error {
        Error::Storage {
            what: format!("{}: {op} {rel}", self.describe()),
            message: innermost(&e),
        }
    }

    /// Run a request from a blocking thread (verify, GC, retention run on the blocking pool).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    // ------------------------------------------------------------ objects

    pub async fn head(&self, rel: &str) -> Result<Option<ObjectMeta>> {
        match self.s3.head(&self.path(rel)).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("HEAD", rel, e)),
        }
    }

    /// A whole small object, refused past `limit` bytes (its size is checked before its body is
    /// read: a hostile bucket cannot fill memory).
    pub async fn get_small(&self, rel: &str, limit: u64) -> Result<Option<Bytes>> {
        let r = match self.s3.get(&self.path(rel)).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err("GET", rel, e)),
        };
        if r.meta.size > limit {
            return Err(Error::Layout(format!(
                "{}/{rel} is {} bytes, more than the {limit} allowed",
                self.describe(),
                r.meta.size
            )));
        }
        r.bytes()
            .await
            .map(Some)
            .map_err(|e| self.err("GET", rel, e))
    }

    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        self.s3
            .put(&self.path(rel), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.err("PUT", rel, e))
    }

    /// Delete; an absent object is no error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.s3.delete(&self.path(rel)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err("DELETE", rel, e)),
        }
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        self.s3
            .copy(&self.path(from), &self.path(to))
            .await
            .map_err(|e| self.err("COPY", &format!("{from} to {to}"), e))
    }

    /// Every object under `rel_prefix` (a folder, ending in `/`), keys relative to the layout.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let p = self.path(rel_prefix.trim_end_matches('/'));
        let metas: Vec<ObjectMeta> = self
            .s3
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| self.err("LIST", rel_prefix, e))?;
        Ok(metas
            .into_iter()
            .map(|m| (self.rel(&m.location).to_owned(), m))
            .collect())
    }

    /// `count` bytes of an object from `start`, as a stream that fails if the store sends fewer
    /// or more (a truncated body is an error, never a short blob).
    pub fn stream(
        &self,
        rel: &str,
        start: u64,
        count: u64,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        if count == 0 {
            return futures_util::stream::empty().boxed();
        }
        let s3 = self.s3.clone();
        let path = self.path(rel);
        let what = format!("{}/{rel}", self.describe());
        let opened = async move {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(start..start + count)),
                ..Default::default()
            };
            s3.get_opts(&path, opts)
                .await
                .map(|r| r.into_stream().map_err(io::Error::other))
                .map_err(io::Error::other)
        };
        let body = futures_util::stream::once(opened).try_flatten();
        exact(body, count, what).boxed()
    }

    // ------------------------------------------------------------ blobs

    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        Ok(self.head(&blob_key(d)).await?.map(|m| m.size))
    }

    /// A blob's bytes hashed by `alg` as they stream from the store.
    pub async fn hash_blob(&self, d: &Digest, alg: Algorithm) -> Result<(Digest, u64)> {
        let Some(size) = self.blob_size(d).await? else {
            return Err(Error::BlobUnknown(d.clone()));
        };
        let mut h = alg.hasher();
        let mut s = self.stream(&blob_key(d), 0, size);
        while let Some(chunk) = s.next().await {
            h.update(&chunk?);
        }
        Ok((h.finish(), size))
    }

    /// A presigned URL that lets its holder GET a blob straight from the store for `ttl`.
    pub async fn presigned_blob_url(&self, d: &Digest, ttl: Duration) -> Result<String> {
        use object_store::signer::Signer;
        let key = blob_key(d);
        self.s3
            .signed_url(axum::http::Method::GET, &self.path(&key), ttl)
            .await
            .map(|u| u.to_string())
            .map_err(|e| self.err("presign GET", &key, e))
    }

    /// Every blob: digest, size and when it was written.
    pub async fn list_blobs(&self) -> Result<Vec<(Digest, u64, SystemTime)>> {
        Ok(self
            .list("blobs/")
            .await?
            .into_iter()
            .filter_map(|(k, m)| {
                let rest = k.strip_prefix("blobs/")?;
                let (alg, hex) = rest.split_once('/')?;
                let d: Digest = format!("{alg}:{hex}").parse().ok()?;
                Some((d, m.size, SystemTime::from(m.last_modified)))
            })
            .collect())
    }

    /// Promise a blob to a client (module docs): record, wait out a sweep of it that may have
    /// begun before the record (a few requests long), then look for the blob. Answering
    /// "unknown" at the sight of a marker would refuse a manifest PUT whose blob the sweep then
    /// keeps (GC looks at every unreferenced blob, and a layer is unreferenced until its
    /// manifest is recorded).
    pub async fn promise(&self, d: &Digest) -> Result<Option<u64>> {
        self.put(&format!(".ferry/promises/{}", flat(d)), Bytes::new())
            .await?;
        let mut waited = Duration::ZERO;
        while self.sweeping(d).await? {
            if waited >= STALE_MARKER {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        self.blob_size(d).await
    }

    /// Is a (live) GC removing this blob?
    async fn sweeping(&self, d: &Digest) -> Result<bool> {
        Ok(self
            .head(&format!(".ferry/sweeping/{}", flat(d)))
            .await?
            .is_some_and(|m| age_of(&m) < STALE_MARKER))
    }

    /// Publish a verified blob: promise it, wait out a sweep of the same digest, then `publish`.
    async fn publish_blob<F, Fut>(&self, d: &Digest, publish: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        self.put(&format!(".ferry/promises/{}", flat(d)), Bytes::new())
            .await?;
        // A sweep of this digest is a few requests long; a marker that outlives that belongs to
        // a dead GC and goes stale.
        let mut waited = Duration::ZERO;
        while self.sweeping(d).await? && waited < STALE_MARKER {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        publish().await
    }

    /// Sweep one unreferenced blob unless it was written or promised less than `grace` before
    /// `marked_at` (GC's last reading of the records). Returns the bytes freed, or `None` when
    /// it was kept.
    pub async fn sweep(
        &self,
        d: &Digest,
        grace: Duration,
        marked_at: SystemTime,
    ) -> Result<Option<u64>> {
        // Last-Modified has one-second resolution (rounded down): a second of slack.
        let recent = |m: &ObjectMeta| {
            SystemTime::from(m.last_modified) + grace + Duration::from_secs(1) > marked_at
        };
        let marker = format!(".ferry/sweeping/{}", flat(d));
        self.put(&marker, Bytes::new()).await?;
        let out = async {
            let promised = self.head(&format!(".ferry/promises/{}", flat(d))).await?;
            if promised.as_ref().is_some_and(recent) {
                return Ok(None);
            }
            let Some(m) = self.head(&blob_key(d)).await? else {
                return Ok(Some(0));
            };
            if recent(&m) {
                return Ok(None);
            }
            self.delete(&blob_key(d)).await?;
            // Its read marker (a manifest's) goes with it.
            let _ = self.delete(&format!(".ferry/reads/{}", flat(d))).await;
            Ok(Some(m.size))
        }
        .await;
        let _ = self.delete(&marker).await;
        out
    }

    /// Promise records that protect nothing any more. A GC running elsewhere may still be
    /// sweeping against an older mark, so a record is kept an hour past the grace period.
    pub async fn expire_promises(&self, grace: Duration) -> Result<usize> {
        let mut n = 0;
        for (k, m) in self.list(".ferry/promises/").await? {
            if age_of(&m) >= grace + Duration::from_secs(3600) {
                self.delete(&k).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Move a corrupt blob aside (verify --repair).
    pub async fn quarantine(&self, d: &Digest) -> Result<()> {
        self.copy(&blob_key(d), &format!(".ferry/quarantine/{}", flat(d)))
            .await?;
        self.delete(&blob_key(d)).await
    }

    /// Store a small verified object (a manifest) under its digest.
    pub async fn put_blob_bytes(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        let key = blob_key(d);
        self.publish_blob(d, || self.put(&key, bytes)).await
    }

    pub async fn note_read(&self, d: &Digest) -> Result<()> {
        self.put(&format!(".ferry/reads/{}", flat(d)), Bytes::new())
            .await
    }

    pub async fn last_read(&self, d: &Digest) -> Option<SystemTime> {
        let m = self
            .head(&format!(".ferry/reads/{}", flat(d)))
            .await
            .ok()??;
        Some(SystemTime::from(m.last_modified))
    }

    // ------------------------------------------------------------ records (tags)

    /// Every record, as an index.json would hold them. Reads only records whose ETag changed
    /// since the last load.
    pub async fn load_index(&self) -> Result<IndexFile> {
        let listed = self.list(".ferry/refs/").await?;
        let mut known: HashMap<String, (Option<String>, Descriptor)> =
            std::mem::take(&mut *lock(&self.records));
        let mut fresh = HashMap::with_capacity(listed.len());
        for (k, m) in listed {
            match known.remove(&k) {
                Some((etag, d)) if etag.is_some() && etag == m.e_tag => {
                    fresh.insert(k, (etag, d));
                }
                _ => {
                    let bytes = match self.get_small(&k, 64 << 10).await {
                        Ok(Some(b)) => b,
                        Ok(None) => continue, // deleted since the listing
                        // A record no ferry wrote (too large): named and skipped, as a bad
                        // index.json entry is; the others still load.
                        Err(Error::Layout(why)) => {
                            tracing::warn!(store = %self.describe(), "record skipped: {why}");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    match serde_json::from_slice::<Descriptor>(&bytes) {
                        Ok(d) => {
                            fresh.insert(k, (m.e_tag, d));
                        }
                        Err(e) => {
                            tracing::warn!(store = %self.describe(), key = %k, "record skipped: {e}")
                        }
                    }
                }
            }
        }
        let mut keys: Vec<&String> = fresh.keys().collect();
        keys.sort();
        let file = IndexFile {
            manifests: keys.iter().map(|k| fresh[*k].1.clone()).collect(),
            ..Default::default()
        };
        *lock(&self.records) = fresh;
        Ok(file)
    }

    /// The descriptor a tag names, read fresh (one request).
    pub async fn tag_record(&self, repo: &str, tag: &str) -> Result<Option<Descriptor>> {
        let Some(bytes) = self.get_small(&tag_key(repo, tag), 64 << 10).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Write what changed between two versions of the records: untagged manifests first, then
    /// tags (tags last, as in a directory), then removals.
    pub async fn write_index_diff(&self, before: &IndexFile, after: &IndexFile) -> Result<()> {
        let keyed = |f: &IndexFile| -> HashMap<String, Descriptor> {
            f.manifests
                .iter()
                .map(|d| (record_key(d), d.clone()))
                .collect()
        };
        let (old, new) = (keyed(before), keyed(after));
        let mut puts: Vec<(&String, &Descriptor)> = new
            .iter()
            .filter(|(k, d)| old.get(*k) != Some(*d))
            .collect();
        puts.sort_by_key(|(k, _)| (k.contains("/_tags/"), (*k).clone()));
        for (k, d) in puts {
            let body = serde_json::to_vec(d).map_err(|e| Error::Layout(e.to_string()))?;
            self.put(k, Bytes::from(body)).await?;
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            self.delete(k).await?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ upload sessions

    fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.sessions)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    async fn load_session(&self, id: &str) -> Result<Session> {
        let bytes = self
            .get_small(&format!(".ferry/uploads/{id}/state"), 1 << 20)
            .await?
            .ok_or(Error::BlobUploadUnknown)?;
        serde_json::from_slice(&bytes).map_err(|_| Error::BlobUploadUnknown)
    }

    async fn save_session(&self, id: &str, s: &Session) -> Result<()> {
        let body = serde_json::to_vec(s).map_err(|e| Error::Layout(e.to_string()))?;
        self.put(&format!(".ferry/uploads/{id}/state"), Bytes::from(body))
            .await
    }

    pub async fn upload_start(&self, id: &str) -> Result<()> {
        let s = Session {
            hash: hex::encode(Algorithm::Sha256.hasher().save()),
            ..Default::default()
        };
        self.save_session(id, &s).await
    }

    pub async fn upload_len(&self, id: &str) -> Result<u64> {
        Ok(self.load_session(id).await?.len)
    }

    /// Take a body into a session: whole parts go to the multipart upload as they fill, the
    /// rest stays in `buf` for the caller.
    async fn take_body<S, E>(
        &self,
        id: &str,
        s: &mut Session,
        hasher: &mut Hasher,
        buf: &mut PartBuf,
        body: S,
    ) -> Result<Option<String>>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let data = format!(".ferry/uploads/{id}/data");
        let mut body = body;
        // Parts go up while the next one fills: a few in flight, in order.
        let mut inflight = futures_util::stream::FuturesOrdered::new();
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            hasher.update(&chunk);
            s.len += chunk.len() as u64;
            // Each part is one buffer of exactly PART bytes, filled in place and handed over
            // whole: the allocator reuses the same few blocks for every part of every upload.
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                rest = &rest[buf.fill(rest)..];
                if buf.len() < PART {
                    continue;
                }
                let part = std::mem::replace(buf, PartBuf::next_part()?).freeze()?;
                let upload = self.multipart_id(&data, s).await?;
                let idx = s.parts.len() + inflight.len();
                inflight.push_back(self.put_part(&data, upload, idx, part));
                if inflight.len() >= PARTS_IN_FLIGHT {
                    if let Some(etag) = inflight.next().await {
                        s.parts.push(etag?);
                    }
                }
            }
        }
        while let Some(etag) = inflight.next().await {
            s.parts.push(etag?);
        }
        Ok(broken)
    }

    /// The session's multipart upload, created on its first whole part.
    async fn multipart_id(&self, data: &str, s: &mut Session) -> Result<String> {
        if let Some(id) = &s.multipart {
            return Ok(id.clone());
        }
        let id = self
            .s3
            .create_multipart(&self.path(data))
            .await
            .map_err(|e| self.err("CreateMultipartUpload", data, e))?;
        s.multipart = Some(id.clone());
        Ok(id)
    }

    /// Send one part (number `idx`, from 0); its ETag.
    fn put_part(
        &self,
        data: &str,
        upload: String,
        idx: usize,
        part: Bytes,
    ) -> impl std::future::Future<Output = Result<String>> + Send + 'static {
        let (s3, path, what) = (self.s3.clone(), self.path(data), self.describe());
        let data = data.to_owned();
        async move {
            s3.put_part(&path, &upload, idx, PutPayload::from(part))
                .await
                .map(|p| p.content_id)
                .map_err(|e| Error::Storage {
                    what: format!("{what}: UploadPart {data}"),
                    message: innermost(&e),
                })
        }
    }

    /// Send the last part (any size).
    async fn send_part(&self, data: &str, s: &mut Session, part: Bytes) -> Result<()> {
        let upload = self.multipart_id(data, s).await?;
        let etag = self.put_part(data, upload, s.parts.len(), part).await?;
        s.parts.push(etag);
        Ok(())
    }

    /// Take a session for one request: its in-process lock, its state, its running hash and its
    /// tail, and check that the chunk starts where the session stands (else 416).
    async fn open_session(
        &self,
        id: &str,
        range_start: Option<u64>,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, Session, Hasher, PartBuf)> {
        let guard = self.session_lock(id).lock_owned().await;
        let (s, hasher, buf) = self.session_parts(id).await?;
        if let Some(start) = range_start {
            if start != s.len {
                return Err(Error::RangeInvalid(format!(
                    "chunk starts at {start}, the upload has {} bytes",
                    s.len
                )));
            }
        }
        Ok((guard, s, hasher, buf))
    }

    async fn session_parts(&self, id: &str) -> Result<(Session, Hasher, PartBuf)> {
        let s = self.load_session(id).await?;
        let hasher = hex::decode(&s.hash)
            .ok()
            .and_then(|b| Hasher::restore(Algorithm::Sha256, &b))
            .ok_or(Error::BlobUploadUnknown)?;
        let mut buf = PartBuf::new()?;
        if s.tail > 0 {
            let tail = self
                .get_small(&format!(".ferry/uploads/{id}/tail-{}", s.len), PART as u64)
                .await?
                .ok_or(Error::BlobUploadUnknown)?;
            if tail.len() as u64 != s.tail {
                return Err(Error::BlobUploadUnknown);
            }
            buf.fill(&tail);
        }
        Ok((s, hasher, buf))
    }

    /// Append a chunk to a session; returns the new length. The state is saved after the parts
    /// and the tail it names, so a crash leaves the session where it was.
    pub async fn upload_append<S, E>(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let (_g, mut s, mut hasher, mut buf) = self.open_session(id, range_start).await?;
        let old_tail = (s.tail > 0).then(|| format!(".ferry/uploads/{id}/tail-{}", s.len));
        let broken = self
            .take_body(id, &mut s, &mut hasher, &mut buf, body)
            .await?;
        s.tail = buf.len() as u64;
        if s.tail > 0 {
            self.put(
                &format!(".ferry/uploads/{id}/tail-{}", s.len),
                buf.freeze()?,
            )
            .await?;
        }
        s.hash = hex::encode(hasher.save());
        self.save_session(id, &s).await?;
        if let Some(old) = old_tail.filter(|o| *o != format!(".ferry/uploads/{id}/tail-{}", s.len))
        {
            let _ = self.delete(&old).await;
        }
        if let Some(e) = broken {
            return Err(Error::BlobUploadInvalid(format!(
                "request body failed: {e}"
            )));
        }
        Ok(s.len)
    }

    /// Take the last chunk, verify against `digest`, publish the blob and end the session.
    pub async fn upload_finish<S, E>(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: S,
        digest: &Digest,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let (_g, mut s, mut hasher, mut buf) = self.open_session(id, range_start).await?;
        if let Some(e) = self
            .take_body(id, &mut s, &mut hasher, &mut buf, body)
            .await?
        {
            return Err(Error::BlobUploadInvalid(format!(
                "request body failed: {e}"
            )));
        }
        let data = format!(".ferry/uploads/{id}/data");
        let res = if s.multipart.is_none() {
            // Smaller than a part: it is all here; verified before anything is written.
            let bytes = buf.freeze()?;
            let computed = if digest.algorithm() == Algorithm::Sha256 {
                hasher.finish()
            } else {
                Digest::of(digest.algorithm(), &bytes)
            };
            if &computed != digest {
                Err(Error::DigestInvalid(format!(
                    "expected {digest}, content hashes to {computed}"
                )))
            } else {
                self.put_blob_bytes(digest, bytes).await
            }
        } else {
            if !buf.is_empty() {
                self.send_part(&data, &mut s, buf.freeze()?).await?;
            }
            let mid = s.multipart.clone().unwrap_or_default();
            let path = self.path(&data);
            let computed = hasher.finish();
            if digest.algorithm() == Algorithm::Sha256 && &computed != digest {
                let _ = self.s3.abort_multipart(&path, &mid).await;
                Err(Error::DigestInvalid(format!(
                    "expected {digest}, content hashes to {computed}"
                )))
            } else {
                let parts = s
                    .parts
                    .iter()
                    .map(|p| PartId {
                        content_id: p.clone(),
                    })
                    .collect();
                self.s3
                    .complete_multipart(&path, &mid, parts)
                    .await
                    .map_err(|e| self.err("CompleteMultipartUpload", &data, e))?;
                let computed = if digest.algorithm() == Algorithm::Sha256 {
                    computed
                } else {
                    // Uploads hash with sha256 as they stream; a sha512 upload is re-read once.
                    let mut h = digest.algorithm().hasher();
                    let mut st = self.stream(&data, 0, s.len);
                    while let Some(c) = st.next().await {
                        h.update(&c?);
                    }
                    h.finish()
                };
                if &computed != digest {
                    Err(Error::DigestInvalid(format!(
                        "expected {digest}, content hashes to {computed}"
                    )))
                } else {
                    let key = blob_key(digest);
                    self.publish_blob(digest, || self.copy(&data, &key)).await
                }
            }
        };
        // Published or refused: the session is over either way (a store error keeps it, so the
        // client can retry the PUT).
        if !matches!(res, Err(Error::Storage { .. })) {
            self.drop_session(id).await;
        }
        res
    }

    async fn drop_session(&self, id: &str) {
        if let Ok(all) = self.list(&format!(".ferry/uploads/{id}/")).await {
            for (k, _) in all {
                if !k.ends_with("/state") {
                    let _ = self.delete(&k).await;
                }
            }
        }
        let _ = self.delete(&format!(".ferry/uploads/{id}/state")).await;
        lock(&self.sessions).remove(id);
    }

    pub async fn upload_cancel(&self, id: &str) -> Result<()> {
        let l = self.session_lock(id);
        let _g = l.lock().await;
        let s = self.load_session(id).await?;
        if let Some(mid) = &s.multipart {
            let _ = self
                .s3
                .abort_multipart(&self.path(&format!(".ferry/uploads/{id}/data")), mid)
                .await;
        }
        self.drop_session(id).await;
        Ok(())
    }

    /// End sessions idle for longer than `max_age` (their multipart uploads are aborted). A
    /// session is idle when none of its objects changed for that long; objects of a session
    /// whose state is gone or unreadable (a process killed while ending it) go the same way.
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let mut sessions: HashMap<String, (Duration, bool)> = HashMap::new();
        for (k, m) in self.list(".ferry/uploads/").await? {
            let Some((id, name)) = k
                .strip_prefix(".ferry/uploads/")
                .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            let e = sessions
                .entry(id.to_owned())
                .or_insert((Duration::MAX, false));
            e.0 = e.0.min(age_of(&m));
            e.1 |= name == "state";
        }
        let mut n = 0;
        for (id, (idle, has_state)) in sessions {
            if idle < max_age {
                continue;
            }
            if has_state {
                match self.upload_cancel(&id).await {
                    Ok(()) => {
                        n += 1;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "an expired upload session's state is unreadable; removing its objects");
                    }
                }
            }
            let l = self.session_lock(&id);
            let _g = l.lock().await;
            self.drop_session(&id).await;
            n += 1;
        }
        Ok(n)
    }

    /// Sessions this process has touched and not ended (others may hold more).
    pub fn sessions_here(&self) -> usize {
        lock(&self.sessions).len()
    }
}

fn age_of(m: &ObjectMeta) -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::from(m.last_modified))
        .unwrap_or_default()
}

/// A body that must be exactly `count` bytes: fewer or more is an error.
fn exact<S>(body: S, count: u64, what: String) -> impl Stream<Item = io::Result<Bytes>>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let body = Box::pin(body);
    futures_util::stream::unfold((body, 0u64, false), move |(mut body, seen, done)| {
        let what = what.clone();
        async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(b)) => {
                    let seen = seen + b.len() as u64;
                    if seen > count {
                        let e = io::Error::other(format!(
                            "{what}: the store sent more than {count} bytes"
                        ));
                        return Some((Err(e), (body, seen, true)));
                    }
                    Some((Ok(b), (body, seen, false)))
                }
                Some(Err(e)) => Some((Err(e), (body, seen, true))),
                None if seen < count => {
                    let e = io::Error::other(format!(
                        "{what}: the store ended after {seen} of {count} bytes"
                    ));
                    Some((Err(e), (body, seen, true)))
                }
                None => None,
            }
        }
    })
}
