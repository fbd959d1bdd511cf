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
//!
//! Here: opening the bucket and its objects; `blobs.rs` (listing, promises, sweeps), `records.rs`
//! (tags and untagged manifests), `uploads.rs` (multipart sessions).

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

mod blobs;
mod records;
mod store;
mod uploads;

pub(crate) use store::BucketBackend;

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
    /// Records already read, by key, with the ETag they had: a reload reads only what changed.
    records: Mutex<HashMap<String, (Option<String>, Descriptor)>>,
    /// One PATCH at a time per session within this process.
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
