//! The OCI image layout store: ferry's data directory and its portable directory are both one of
//! these — on a disk, or in an S3-compatible bucket ([`bucket`]).
//!
//! [`Store`] is the registry's rules, written once: verify before visible, references before
//! manifests, tags last, GC promises, upload sessions, retention. Under it is one of three
//! backends — a directory (`dir.rs`), a bucket ([`bucket`]) or a read-only archive — and nothing
//! above the Store knows which.
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
use dir::StoreFiles;
use index::{Index, IndexFile, NewEntry};
use upload::Uploads;

pub const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

pub use index::MAX_INDEX_BYTES;
/// A temp file older than this belongs to no live writer; a start removes it.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest `oci-layout` file read.
const MAX_LAYOUT_FILE_BYTES: u64 = 64 << 10;

/// Identity of an `index.json` version: a rename gives a new inode, a rewrite a new mtime.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

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

/// Where a store keeps its bytes.
enum Backend {
    Dir(StoreFiles),
    Bucket(Arc<bucket::Bucket>),
    /// An `oci-archive:` served read-only: its members read by offset, its index fixed.
    Archive(Arc<crate::carry::archive::Archive>, Arc<Index>),
}

fn archive_read_only() -> Error {
    Error::Unsupported("this registry serves an archive, which is read-only".into())
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
    backend: Backend,
    read_only: bool,
    /// When each manifest's read marker was last refreshed by this process (rate limit).
    reads: Mutex<std::collections::HashMap<Digest, std::time::Instant>>,
    cache: Mutex<Option<(Stamp, Arc<Index>)>>,
    /// A bucket's records as last read: a manifest's recorded media type never changes, so a
    /// lookup by digest that finds it here needs no listing.
    last_records: Mutex<Option<Arc<Index>>>,
    index_write: tokio::sync::Mutex<()>,
    uploads: Uploads,
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

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::Io(io::Error::other(format!("blocking task failed: {e}")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(blocking_err)?
}

impl Store {
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
            Store::init(&files)?;
        }
        files.canon = std::fs::canonicalize(&files.root)?;
        let store = Store {
            uploads: Uploads::new(root.join(".ferry/uploads")),
            backend: Backend::Dir(files),
            read_only,
            reads: Mutex::new(Default::default()),
            cache: Mutex::new(None),
            last_records: Mutex::new(None),
            index_write: tokio::sync::Mutex::new(()),
            pause: Mutex::new(None),
            small_reads: Default::default(),
            links: Default::default(),
            reach: Default::default(),
            vouched: Default::default(),
        };
        store.init_links_sync()?;
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
                let store = Store {
                    backend: Backend::Bucket(Arc::new(b)),
                    read_only,
                    reads: Mutex::new(Default::default()),
                    cache: Mutex::new(None),
                    last_records: Mutex::new(None),
                    index_write: tokio::sync::Mutex::new(()),
                    pause: Mutex::new(None),
            small_reads: Default::default(),
            links: Default::default(),
            reach: Default::default(),
            vouched: Default::default(),
                    uploads: Uploads::new(PathBuf::new()),
                };
                // The bucket's blocking calls wait on the runtime: off its worker threads.
                blocking(move || {
                    store.init_links_sync()?;
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
                Ok(Store {
                    backend: Backend::Archive(Arc::new(a), Arc::new(idx)),
                    read_only,
                    reads: Mutex::new(Default::default()),
                    cache: Mutex::new(None),
                    last_records: Mutex::new(None),
                    index_write: tokio::sync::Mutex::new(()),
                    pause: Mutex::new(None),
            small_reads: Default::default(),
            links: Default::default(),
            reach: Default::default(),
            vouched: Default::default(),
                    uploads: Uploads::new(PathBuf::new()),
                })
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

    /// The directory backend, when this is one.
    fn dir(&self) -> Option<&StoreFiles> {
        match &self.backend {
            Backend::Dir(f) => Some(f),
            Backend::Bucket(_) | Backend::Archive(..) => None,
        }
    }

    /// Where this store is, for messages: a directory or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Dir(f) => f.root.display().to_string(),
            Backend::Bucket(b) => b.describe(),
            Backend::Archive(a, _) => format!("oci-archive:{}", a.describe()),
        }
    }

    fn init(files: &StoreFiles) -> Result<()> {
        for d in [
            "blobs/sha256",
            "blobs/sha512",
            ".ferry/uploads",
            ".ferry/tmp",
            ".ferry/partial",
        ] {
            std::fs::create_dir_all(files.root.join(d))?;
        }
        // Leftovers of a crash: temp files are never referenced, so they can go — but only old
        // ones: another process on the same directory (a server, while `ferry gc` or `sync`
        // opens it) may be writing one right now (index.json's replacement, a state file). The
        // soak found a server's writes failing with ENOENT when `ferry gc` started beside it.
        write::remove_older_than(&files.tmp_dir(), STALE_TEMP);
        if !files.root.join("oci-layout").exists() {
            write::write_atomic(
                &files.tmp_dir(),
                &files.root.join("oci-layout"),
                OCI_LAYOUT_CONTENT,
            )?;
        }
        if !files.root.join("index.json").exists() {
            let bytes = IndexFile::default().to_bytes();
            write::write_atomic(&files.tmp_dir(), &files.root.join("index.json"), &bytes)?;
        }
        Ok(())
    }

    /// The directory of a directory store (`None` for a bucket).
    pub fn root(&self) -> Option<&Path> {
        self.dir().map(|f| f.root.as_path())
    }

    /// Read a small file of the layout (index.json) through [`read::read_regular`].
    fn read_layout_file(files: &StoreFiles, path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
        match read::read_regular(&files.canon, path, limit)? {
            Ok(b) => Ok(Some(b)),
            Err(read::Unread::Missing) => Ok(None),
            Err(read::Unread::Refused(why)) => {
                Err(Error::Layout(format!("{} is {why}", path.display())))
            }
        }
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
        match &self.backend {
            Backend::Dir(files) => self.dir_index(files),
            Backend::Bucket(b) => {
                let idx = Arc::new(Index::new(b.load_index().await?));
                *self.last_records.lock().unwrap_or_else(|p| p.into_inner()) = Some(idx.clone());
                Ok(idx)
            }
            Backend::Archive(_, idx) => Ok(idx.clone()),
        }
    }

    /// [`Store::index`] for blocking callers (verify, GC, retention).
    pub fn index_sync(&self) -> Result<Arc<Index>> {
        match &self.backend {
            Backend::Dir(files) => self.dir_index(files),
            Backend::Bucket(b) => Ok(Arc::new(Index::new(b.block_on(b.load_index())?))),
            Backend::Archive(_, idx) => Ok(idx.clone()),
        }
    }

    fn dir_index(&self, files: &StoreFiles) -> Result<Arc<Index>> {
        let path = files.root.join("index.json");
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Arc::new(Index::default()));
            }
            Err(e) => return Err(e.into()),
        };
        let stamp = Stamp {
            ino: meta.ino(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            len: meta.len(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, idx)) = cache.as_ref() {
            if *s == stamp {
                return Ok(idx.clone());
            }
        }
        let Some(bytes) = Store::read_layout_file(files, &path, MAX_INDEX_BYTES)? else {
            return Ok(Arc::new(Index::default()));
        };
        let idx = Arc::new(Index::new(IndexFile::parse(&bytes)?));
        for why in idx.skipped() {
            tracing::warn!(data = %files.root.display(), "index.json: {why}");
        }
        *cache = Some((stamp, idx.clone()));
        Ok(idx)
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
        let files = match &self.backend {
            Backend::Dir(files) => files.clone(),
            Backend::Bucket(b) => {
                let before = b.load_index().await?;
                let mut after = before.clone();
                let (out, changed) = f(&mut after)?;
                if changed {
                    b.write_index_diff(&before, &after).await?;
                }
                return Ok(out);
            }
            Backend::Archive(..) => return Err(archive_read_only()),
        };
        let (root, canon, tmp) = (files.root.clone(), files.canon.clone(), files.tmp_dir());
        blocking(move || {
            let lock = read::open_private(&root.join(".ferry/lock"), true, false)?;
            lock.lock()?; // released when `lock` is dropped
            let path = root.join("index.json");
            let mut file = match read::read_regular(&canon, &path, MAX_INDEX_BYTES)? {
                Ok(b) => IndexFile::parse(&b)?,
                Err(read::Unread::Missing) => IndexFile::default(),
                Err(read::Unread::Refused(why)) => {
                    return Err(Error::Layout(format!("{} is {why}", path.display())))
                }
            };
            let (out, changed) = f(&mut file)?;
            if changed {
                write::write_atomic(&tmp, &path, &file.to_bytes())?;
            }
            Ok(out)
        })
        .await
    }
}

/// Hash a whole file (used for sha512 uploads and by tests).
pub fn hash_file(path: &Path, alg: Algorithm) -> Result<Digest> {
    let (h, _) = crate::vocab::digest::hash_reader(File::open(path)?, alg)?;
    Ok(h.finish())
}
