//! The OCI image layout store: ferry's data directory and its portable directory are both one of
//! these — on a disk, or in an S3-compatible bucket ([`bucket`]).
//!
//! [`Store`] is the registry's rules, written once: verify before visible, references before
//! manifests, tags last, GC promises, upload sessions, retention. Under it is one
//! `Arc<dyn Backend>` (`backend.rs`: what differs between the places bytes are kept) — a
//! directory (`dir.rs`), a bucket ([`bucket`]) or a read-only archive (`archive.rs`) — and
//! nothing above the Store knows which. Every operation is async; blocking callers (GC, verify,
//! retention, the page) use [`Store::wait`].
//!
//! The rules are split by what they act on: the records (here), `blobs.rs`, `manifests.rs`,
//! upload sessions ([`upload`]) and `state.rs` (promises, read markers, ferry's own files).
//!
//! ```text
//! DIR/oci-layout               {"imageLayoutVersion":"1.0.0"}
//! DIR/index.json               tags and repository records (see [`index`])
//! DIR/blobs/<alg>/<hex>        every blob and manifest, shared by all repositories
//! DIR/.ferry/uploads/<uuid>    upload sessions in progress
//! DIR/.ferry/tmp/              temp files, renamed into place when complete
//! DIR/.ferry/lock              advisory lock serialising index.json rewrites across processes
//! ```
//!
//! The invariants (DESIGN.md): a file under `blobs/` exists only once its bytes hashed to its
//! name (written to a temp file, verified, fsynced, renamed, directory fsynced); a manifest is
//! stored only when everything it references exists; `index.json` is replaced atomically under
//! the lock, and readers pick up a new one (from this or another process) on their next request.

mod archive;
mod backend;
mod blobs;
pub mod bucket;
mod dir;
pub mod graph;
mod holdings;
pub mod index;
mod manifests;
pub mod read;
mod state;
pub mod upload;
pub mod write;

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::vocab::digest::{Algorithm, Digest};
use crate::vocab::media::{self, EdgeKind};
use crate::vocab::reference::{Reference, RepoName};
use backend::{blocking, Backend};
use dir::{DirBackend, StoreFiles};
use index::{Index, IndexFile, NewEntry};

pub const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

pub use index::MAX_INDEX_BYTES;
/// A temp file older than this belongs to no live writer; a start removes it.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest `oci-layout` file read.
const MAX_LAYOUT_FILE_BYTES: u64 = 64 << 10;

/// A manifest found by [`Store::manifest`].
#[derive(Clone, Debug)]
pub struct ManifestMeta {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A blob opened for reading: its length, and the way to its bytes.
pub struct BlobReader {
    pub len: u64,
    source: Source,
}

enum Source {
    File(File),
    Object(Arc<bucket::Bucket>, String),
    Archive(Arc<crate::carry::archive::Archive>, Digest),
}

impl BlobReader {
    /// The open file, when the blob is one (the server sends it with `sendfile`).
    pub fn into_file(self) -> std::result::Result<File, BlobReader> {
        match self.source {
            Source::File(f) => Ok(f),
            source => Err(BlobReader {
                len: self.len,
                source,
            }),
        }
    }

    /// `count` bytes from `start`.
    pub fn stream(
        self,
        start: u64,
        count: u64,
    ) -> futures_util::stream::BoxStream<'static, io::Result<Bytes>> {
        use futures_util::StreamExt;
        match self.source {
            Source::File(f) => read::stream_file(f, start, count).boxed(),
            Source::Object(b, key) => b.stream(&key, start, count),
            Source::Archive(a, d) => a.stream_range(&d, start, count).unwrap_or_else(|e| {
                futures_util::stream::once(async move { Err(io::Error::other(e.to_string())) })
                    .boxed()
            }),
        }
    }
}

/// One name under `blobs/`, as GC and verify see it.
#[derive(Clone, Debug)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    /// When it was written (or last promised, in a directory); `None` when the store cannot say
    /// (GC then counts it as young).
    pub modified: Option<std::time::SystemTime>,
    /// What it is when it is no content (a FIFO, a socket, a symlink, a directory).
    pub not_content: Option<&'static str>,
}

/// What re-hashing one blob found.
#[derive(Clone, Debug)]
pub enum Checked {
    Intact(u64),
    Corrupt(u64),
    /// Not content, or unreadable: why.
    Refused(String),
    /// Gone since the listing (a GC).
    Missing,
}

/// What [`Store::import_blob`] moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Imported {
    /// Bytes that came over the wire in this run.
    pub transferred: u64,
    /// Bytes that were already there from an interrupted run.
    pub resumed_from: u64,
}

/// What a manifest PUT stored.
#[derive(Clone, Debug)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

pub struct Store {
    backend: Arc<dyn Backend>,
    /// The runtime a store was opened on: blocking callers on no runtime's thread wait there.
    rt: Option<tokio::runtime::Handle>,
    read_only: bool,
    /// When each manifest's read marker was last refreshed by this process (rate limit).
    reads: Mutex<std::collections::HashMap<Digest, std::time::Instant>>,
    index_write: tokio::sync::Mutex<()>,
    pause: Mutex<Option<PauseHook>>,
    /// Whole small objects (manifests) read by blocking callers: what a walk of the graph costs.
    small_reads: std::sync::atomic::AtomicU64,
    /// Whether the store keeps repository links ([`holdings`]), else what a read-only store's
    /// repositories reach, worked out per version of its records.
    links: std::sync::atomic::AtomicBool,
    reach: Mutex<holdings::Reach>,
    /// Blobs of a read-only store checked to hash to their names ([`Store::check_served`]).
    vouched: Mutex<std::collections::HashSet<Digest>>,
}

/// What a manifest's references must be before it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refs {
    /// Held by its repository (a client's push).
    Held,
    /// Stored, in any repository (ferry's own writers); they become the repository's.
    Stored,
    /// Not checked (a delta directory holds manifests whose blobs are elsewhere).
    Unchecked,
}

/// See [`Store::set_pause_hook`].
pub type PauseHook = Arc<dyn Fn(&'static str) + Send + Sync>;

impl Store {
    fn with_backend(
        backend: Arc<dyn Backend>,
        rt: Option<tokio::runtime::Handle>,
        read_only: bool,
    ) -> Store {
        Store {
            backend,
            rt,
            read_only,
            reads: Mutex::new(Default::default()),
            index_write: tokio::sync::Mutex::new(()),
            pause: Mutex::new(None),
            small_reads: Default::default(),
            links: Default::default(),
            reach: Default::default(),
            vouched: Default::default(),
        }
    }

    /// Open (and, unless read-only, create) a layout directory.
    pub fn open(root: impl Into<PathBuf>, read_only: bool) -> Result<Store> {
        let root: PathBuf = root.into();
        let layout_file = root.join("oci-layout");
        let existing = match std::fs::canonicalize(&root) {
            Ok(canon) => {
                read::read_regular(&canon, &canon.join("oci-layout"), MAX_LAYOUT_FILE_BYTES)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(read::Unread::Missing),
            Err(e) => return Err(e.into()),
        };
        let read_layout = match existing {
            Ok(bytes) => Ok(bytes),
            Err(read::Unread::Missing) => Err(io::Error::from(io::ErrorKind::NotFound)),
            Err(read::Unread::Refused(why)) => {
                return Err(Error::Layout(format!("{} is {why}", layout_file.display())))
            }
        };
        match read_layout {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Layout(format!("{}: {e}", layout_file.display())))?;
                if v.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
                    return Err(Error::Layout(format!(
                        "{}: unsupported imageLayoutVersion",
                        layout_file.display()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !read_only => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Layout(format!(
                    "{} is not an OCI image layout (no oci-layout file)",
                    root.display()
                )))
            }
            Err(e) => return Err(e.into()),
        }
        let mut files = StoreFiles {
            canon: root.clone(),
            root: root.clone(),
        };
        if !read_only {
            files.init()?;
        }
        files.canon = std::fs::canonicalize(&files.root)?;
        let store = Store::with_backend(
            Arc::new(DirBackend::new(files)),
            tokio::runtime::Handle::try_current().ok(),
            read_only,
        );
        store.init_links()?;
        Ok(store)
    }

    /// Open the store a location names: a directory ([`Store::open`]) or a bucket, checked at
    /// once (a missing bucket, refused credentials, an unreachable endpoint: one line).
    pub async fn open_at(loc: &crate::vocab::location::Location, read_only: bool) -> Result<Store> {
        Store::open_at_with(loc, read_only, &[]).await
    }

    /// [`Store::open_at`] with S3 settings that take precedence over the environment's
    /// (`("AWS_ENDPOINT_URL", …)`, …): several stores on different endpoints in one process.
    pub async fn open_at_with(
        loc: &crate::vocab::location::Location,
        read_only: bool,
        settings: &[(String, String)],
    ) -> Result<Store> {
        use crate::vocab::location::Location;
        match loc {
            Location::Dir { path } => {
                let path = path.clone();
                blocking(move || Store::open(path, read_only)).await
            }
            Location::Bucket { bucket, prefix } => {
                let b = bucket::Bucket::open(bucket, prefix, read_only, settings).await?;
                let store = Store::with_backend(
                    Arc::new(bucket::BucketBackend::new(b)),
                    tokio::runtime::Handle::try_current().ok(),
                    read_only,
                );
                // Giving it its links waits on the runtime: off its worker threads.
                blocking(move || {
                    store.init_links()?;
                    Ok(store)
                })
                .await
            }
            Location::OciArchive { path } if read_only => {
                let path = path.clone();
                let (a, idx) = blocking(move || {
                    let a = crate::carry::archive::Archive::open(&path)?;
                    let idx = a.index()?;
                    Ok((a, idx))
                })
                .await?;
                for why in idx.skipped() {
                    tracing::warn!(data = %a.describe(), "index.json: {why}");
                }
                Ok(Store::with_backend(
                    Arc::new(archive::ArchiveBackend {
                        archive: Arc::new(a),
                        index: idx,
                    }),
                    tokio::runtime::Handle::try_current().ok(),
                    read_only,
                ))
            }
            Location::OciArchive { .. } => Err(Error::Usage(format!(
                "{loc} is an archive: it is read whole and served read-only (--read-only), never written in place"
            ))),
            Location::DockerArchive { .. } => Err(Error::Usage(format!(
                "{loc}: docker-archive is a destination only (for docker load)"
            ))),
            Location::Registry { .. } => Err(Error::Usage(format!(
                "{loc} is a registry, not a store (a directory or s3://BUCKET)"
            ))),
        }
    }

    /// Run an operation of this store's async API to its end on a blocking caller's thread
    /// (GC, verify, retention, the page's workers): the one adapter for blocking callers (see
    /// the backend module's docs).
    pub fn wait<F: std::future::Future>(&self, f: F) -> F::Output {
        backend::wait(self.rt.as_ref(), f)
    }

    /// Where this store is, for messages: a directory or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The directory of a directory store (`None` for a bucket).
    pub fn root(&self) -> Option<&Path> {
        self.backend.root()
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn ensure_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::Unsupported(
                "this registry is read-only (serving with --read-only)".into(),
            ))
        } else {
            Ok(())
        }
    }

    // ---------------------------------------------------------------- index.json

    /// The current records (a directory's `index.json`, re-read only when the file changed; a
    /// bucket's records, re-read only where they changed).
    pub async fn index(&self) -> Result<Arc<Index>> {
        self.backend.records().await
    }

    /// Read-modify-write the records: a directory's `index.json` under the in-process mutex and
    /// the cross-process lock file; a bucket's records by writing only what `f` changed (one
    /// object per record, so concurrent writers of other tags are never undone).
    pub async fn update_index<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut IndexFile) -> Result<(T, bool)> + Send + 'static,
    {
        self.ensure_writable()?;
        let _guard = self.index_write.lock().await;
        let out = Arc::new(Mutex::new(None));
        let slot = out.clone();
        self.backend
            .update_records(Box::new(move |file| {
                let (v, changed) = f(file)?;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
                Ok(changed)
            }))
            .await?;
        let v = out.lock().unwrap_or_else(|p| p.into_inner()).take();
        v.ok_or_else(|| Error::Io(io::Error::other("the records' update gave no answer")))
    }
}

/// Hash a whole file (used for sha512 uploads and by tests).
pub fn hash_file(path: &Path, alg: Algorithm) -> Result<Digest> {
    let (h, _) = crate::vocab::digest::hash_reader(File::open(path)?, alg)?;
    Ok(h.finish())
}
