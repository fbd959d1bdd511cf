//! The OCI image layout store: ferry's data directory and its portable directory are both one of
//! these — on a disk, or in an S3-compatible bucket ([`bucket`]).
//!
//! [`Store`] is the registry's rules, written once: verify before visible, references before
//! manifests, tags last, GC promises, upload sessions, retention. Under it is one of two
//! backends — a directory (below) or a bucket — and nothing above the Store knows which.
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

pub mod bucket;
pub mod graph;
mod holdings;
pub mod index;
pub mod read;
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

    // ---------------------------------------------------------------- blobs

    /// Size of a stored blob, or `None`.
    /// Only a regular file counts (see [`read::open_regular`]): a FIFO or a symlink leaving the
    /// layout under a blob's name is no blob.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        match &self.backend {
            Backend::Dir(files) => {
                let (canon, path) = (files.canon.clone(), files.blob_path(d));
                blocking(move || Ok(read::regular_size(&canon, &path)?)).await
            }
            Backend::Bucket(b) => b.blob_size(d).await,
            Backend::Archive(a, _) => Ok(a.blob_size(d)),
        }
    }

    /// Why the file under a blob's name is not content (a FIFO, a symlink leaving the layout…),
    /// or `None` when it is a readable blob or absent. Looks, never opens.
    pub fn blob_refusal(&self, d: &Digest) -> Option<String> {
        let files = self.dir()?;
        read::refusal(&files.canon, &files.blob_path(d))
            .ok()
            .flatten()
    }

    /// [`Store::blob_size`] for blocking callers (verify, GC, retention).
    pub fn blob_size_sync(&self, d: &Digest) -> Option<u64> {
        match &self.backend {
            Backend::Dir(files) => read::regular_size(&files.canon, &files.blob_path(d))
                .ok()
                .flatten(),
            Backend::Bucket(b) => b.block_on(b.blob_size(d)).ok().flatten(),
            Backend::Archive(a, _) => a.blob_size(d),
        }
    }

    /// [`Store::blob_size_sync`] that tells "absent" (`Ok(None)`) from "the store could not say"
    /// (an error): what GC's mark needs.
    pub fn blob_size_checked_sync(&self, d: &Digest) -> Result<Option<u64>> {
        match &self.backend {
            Backend::Dir(files) => Ok(read::regular_size(&files.canon, &files.blob_path(d))?),
            Backend::Bucket(b) => b.block_on(b.blob_size(d)),
            Backend::Archive(a, _) => Ok(a.blob_size(d)),
        }
    }

    /// A whole manifest (or another small blob), refused past `limit` bytes (a directory reads
    /// it through [`read::read_regular`]).
    pub fn read_small_sync(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        self.small_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.backend {
            Backend::Dir(files) => files.read_small_sync(d, limit),
            Backend::Bucket(b) => b
                .block_on(b.get_small(&bucket::blob_key(d), limit))?
                .map(|b| b.to_vec())
                .ok_or_else(|| Error::BlobUnknown(d.clone())),
            Backend::Archive(a, _) => a.read_blob_small(d, limit),
        }
    }

    /// How many whole small objects blocking callers read so far (GC's and verify's walks read
    /// each manifest once; tests hold them to it).
    pub fn small_reads(&self) -> u64 {
        self.small_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A stored manifest's bytes (at most [`media::MAX_MANIFEST_BYTES`]).
    pub async fn read_manifest(&self, d: &Digest) -> Result<Bytes> {
        match &self.backend {
            Backend::Dir(files) => {
                let (files, d) = (files.clone(), d.clone());
                blocking(move || {
                    files
                        .read_small_sync(&d, media::MAX_MANIFEST_BYTES)
                        .map(Bytes::from)
                })
                .await
            }
            Backend::Bucket(b) => b
                .get_small(&bucket::blob_key(d), media::MAX_MANIFEST_BYTES)
                .await?
                .ok_or_else(|| Error::BlobUnknown(d.clone())),
            Backend::Archive(a, _) => {
                let (a, d) = (a.clone(), d.clone());
                blocking(move || {
                    a.read_blob_small(&d, media::MAX_MANIFEST_BYTES)
                        .map(Bytes::from)
                })
                .await
            }
        }
    }

    /// Every name under `blobs/` that is a digest, with its size and age (blocking).
    pub fn list_blobs_sync(&self) -> Result<Vec<BlobEntry>> {
        match &self.backend {
            Backend::Dir(files) => Ok(files.list_blobs()),
            Backend::Bucket(b) => Ok(b
                .block_on(b.list_blobs())?
                .into_iter()
                .map(|(digest, size, modified)| BlobEntry {
                    digest,
                    size,
                    modified: Some(modified),
                    not_content: None,
                })
                .collect()),
            Backend::Archive(a, _) => {
                let modified = a.modified();
                Ok(a.blobs()
                    .into_iter()
                    .map(|(digest, size)| BlobEntry {
                        digest,
                        size,
                        modified,
                        not_content: None,
                    })
                    .collect())
            }
        }
    }

    /// Whether blob downloads can be handed to the store itself ([`Store::blob_url`]).
    pub fn can_redirect(&self) -> bool {
        matches!(self.backend, Backend::Bucket(_))
    }

    /// A URL from which a client may GET a stored blob directly for `ttl` (a presigned URL of
    /// the object store), or `None` when this store has no such thing (a directory).
    pub async fn blob_url(&self, d: &Digest, ttl: std::time::Duration) -> Result<Option<String>> {
        match &self.backend {
            Backend::Dir(_) | Backend::Archive(..) => Ok(None),
            Backend::Bucket(b) => {
                if b.blob_size(d).await?.is_none() {
                    return Err(Error::BlobUnknown(d.clone()));
                }
                Ok(Some(b.presigned_blob_url(d, ttl).await?))
            }
        }
    }

    /// Every blob that can be read as content (a directory's FIFO or symlink out of the layout
    /// under a blob's name is not).
    pub async fn list_content(&self) -> Result<Vec<Digest>> {
        match &self.backend {
            Backend::Dir(files) => {
                let files = files.clone();
                blocking(move || {
                    Ok(files
                        .list_blobs()
                        .into_iter()
                        .map(|e| e.digest)
                        .filter(|d| {
                            read::regular_size(&files.canon, &files.blob_path(d))
                                .ok()
                                .flatten()
                                .is_some()
                        })
                        .collect())
                })
                .await
            }
            Backend::Bucket(b) => Ok(b.list_blobs().await?.into_iter().map(|e| e.0).collect()),
            Backend::Archive(a, _) => Ok(a.digests()),
        }
    }

    /// Re-hash one blob (blocking).
    pub fn rehash_sync(&self, d: &Digest) -> Checked {
        match &self.backend {
            Backend::Dir(files) => files.rehash(d),
            Backend::Bucket(b) => match b.block_on(b.hash_blob(d, d.algorithm())) {
                Ok((h, n)) if &h == d => Checked::Intact(n),
                Ok((_, n)) => Checked::Corrupt(n),
                Err(Error::BlobUnknown(_)) => Checked::Missing,
                Err(e) => Checked::Refused(format!("unreadable ({e})")),
            },
            Backend::Archive(a, _) => match a.hash_blob(d) {
                Ok((h, n)) if &h == d => Checked::Intact(n),
                Ok((_, n)) => Checked::Corrupt(n),
                Err(Error::BlobUnknown(_)) => Checked::Missing,
                Err(e) => Checked::Refused(format!("unreadable ({e})")),
            },
        }
    }

    /// Move a corrupt blob aside to `.ferry/quarantine/` (blocking).
    pub fn quarantine_sync(&self, d: &Digest) -> Result<()> {
        match &self.backend {
            Backend::Dir(files) => {
                let q = files.root.join(".ferry/quarantine");
                std::fs::create_dir_all(&q)?;
                let to = q.join(format!("{}-{}", d.algorithm().as_str(), d.hex()));
                Ok(std::fs::rename(files.blob_path(d), &to)?)
            }
            Backend::Bucket(b) => b.block_on(b.quarantine(d)),
            Backend::Archive(..) => Err(archive_read_only()),
        }
    }

    /// GC's sweep of one unreferenced blob: removed unless it is younger than `grace` or was
    /// promised to a client within it — checked again at the moment of removal, ordered against
    /// promises (a directory: `.ferry/gc.lock`, exclusive here and shared by promises; a
    /// bucket: the marker protocol of [`bucket`]). Returns the bytes freed, or `None` if kept.
    ///
    /// `marked_at` is when GC last read the records: a blob written or promised less than `grace`
    /// before it may belong to a manifest recorded since, and is kept.
    pub fn sweep_blob_sync(
        &self,
        d: &Digest,
        grace: std::time::Duration,
        marked_at: std::time::SystemTime,
        repos: &[String],
    ) -> Result<Option<u64>> {
        match &self.backend {
            Backend::Dir(files) => {
                let repos = if self.links.load(std::sync::atomic::Ordering::Relaxed) {
                    repos
                } else {
                    &[]
                };
                files.sweep(d, grace, marked_at, repos)
            }
            Backend::Bucket(b) => {
                let swept = b.block_on(b.sweep(d, grace, marked_at))?;
                if swept.is_some() {
                    self.unlink_swept_sync(d, repos)?;
                }
                Ok(swept)
            }
            Backend::Archive(..) => Err(archive_read_only()),
        }
    }

    /// What GC does after a sweep: promise records past the grace period protect nothing, and
    /// read markers of manifests no longer stored (left by a ferry before sweeps removed them,
    /// or by a sweep interrupted between the two) go.
    pub fn after_sweep_sync(&self, grace: std::time::Duration) -> Result<()> {
        match &self.backend {
            Backend::Bucket(b) => {
                b.block_on(b.expire_promises(grace))?;
            }
            Backend::Dir(files) => {
                let Ok(rd) = std::fs::read_dir(files.root.join(".ferry/reads")) else {
                    return Ok(());
                };
                for e in rd.flatten() {
                    let name = e.file_name();
                    let Some(d) = name
                        .to_str()
                        .and_then(|n| n.replacen('-', ":", 1).parse::<Digest>().ok())
                    else {
                        continue;
                    };
                    if std::fs::symlink_metadata(files.blob_path(&d)).is_err() {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            Backend::Archive(..) => {}
        }
        Ok(())
    }

    /// Blobs and their bytes, for `/metrics` (a listing: callers cache it).
    pub fn stored_sync(&self) -> (u64, u64) {
        self.list_blobs_sync()
            .map(|v| (v.len() as u64, v.iter().map(|e| e.size).sum()))
            .unwrap_or((0, 0))
    }

    /// Can the store be written (or, read-only, read) right now? (`/readyz`)
    pub async fn ready(&self) -> bool {
        match &self.backend {
            Backend::Dir(files) => {
                let (root, read_only) = (files.root.clone(), self.read_only);
                tokio::task::spawn_blocking(move || {
                    if read_only {
                        std::fs::metadata(root.join("oci-layout")).is_ok()
                    } else {
                        tempfile::Builder::new()
                            .prefix(".ready-")
                            .tempfile_in(root.join(".ferry/tmp"))
                            .is_ok()
                    }
                })
                .await
                .unwrap_or(false)
            }
            Backend::Bucket(b) => b.head("oci-layout").await.is_ok_and(|m| m.is_some()),
            // Read whole and checked when opened; it cannot change under a read-only server.
            Backend::Archive(..) => true,
        }
    }

    /// Promise a blob to a client (HEAD, mount): check that it exists and refresh its mtime, under
    /// a shared lock that the GC sweep takes exclusively per victim. Either the sweep removed the
    /// blob first (and the answer is "unknown"), or the blob is now younger than the grace period
    /// and the sweep keeps it — so a client that was told "it exists" can reference it.
    pub async fn promise_blob(&self, d: &Digest) -> Result<Option<u64>> {
        if self.read_only {
            return self.blob_size(d).await;
        }
        let files = match &self.backend {
            Backend::Dir(files) => files,
            Backend::Bucket(b) => return b.promise(d).await,
            Backend::Archive(a, _) => return Ok(a.blob_size(d)),
        };
        let path = files.blob_path(d);
        let canon = files.canon.clone();
        let lock = files.gc_lock_path();
        blocking(move || {
            // A file descriptor of our own: flock is per open file, so concurrent promises in this
            // process hold independent shared locks.
            let l = read::open_private(&lock, true, false)?;
            l.lock_shared()?;
            let r = match read::open_regular(&canon, &path) {
                Ok(read::Found::File(f, len)) => {
                    // Needs a writable open only on filesystems that refuse utimes via a read fd.
                    let _ = f.set_modified(std::time::SystemTime::now());
                    Ok(Some(len))
                }
                Ok(read::Found::Missing) | Ok(read::Found::Refused(_)) => Ok(None),
                Err(e) => Err(e.into()),
            };
            drop(l);
            r
        })
        .await
    }

    /// Record that a manifest was read (retention's "read in the last D days"). Cheap: the
    /// marker file's mtime, refreshed at most once an hour per manifest, never index.json.
    pub async fn note_read(&self, d: &Digest) {
        if self.read_only {
            return;
        }
        {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if reads
                .get(d)
                .is_some_and(|t| now.duration_since(*t) < std::time::Duration::from_secs(3600))
            {
                return;
            }
            // Only the last hour matters: the map stays the size of an hour's distinct reads.
            if reads.len() >= 4096 {
                reads.retain(|_, t| now.duration_since(*t) < std::time::Duration::from_secs(3600));
            }
            reads.insert(d.clone(), now);
        }
        let files = match &self.backend {
            Backend::Dir(files) => files,
            Backend::Bucket(b) => {
                let _ = b.note_read(d).await;
                return;
            }
            Backend::Archive(..) => return,
        };
        let path = files.read_marker(d);
        let _ = tokio::task::spawn_blocking(move || -> io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = read::open_private(&path, true, false)?;
            f.set_modified(std::time::SystemTime::now())
        })
        .await;
    }

    /// When a manifest was last read, if ever (through this data directory's servers).
    pub fn last_read(&self, d: &Digest) -> Option<std::time::SystemTime> {
        match &self.backend {
            Backend::Dir(files) => std::fs::metadata(files.read_marker(d))
                .ok()?
                .modified()
                .ok(),
            Backend::Bucket(b) => b.block_on(b.last_read(d)),
            Backend::Archive(..) => None,
        }
    }

    /// Every manifest's last read at once (the web page's "last read" column): one listing of
    /// the read markers instead of one stat or HEAD per manifest. Blocking.
    pub fn reads_sync(&self) -> std::collections::HashMap<Digest, std::time::SystemTime> {
        let mut out = std::collections::HashMap::new();
        let parse = |name: &str| name.replacen('-', ":", 1).parse::<Digest>().ok();
        match &self.backend {
            Backend::Dir(files) => {
                let Ok(rd) = std::fs::read_dir(files.root.join(".ferry/reads")) else {
                    return out;
                };
                for e in rd.flatten() {
                    let name = e.file_name();
                    let (Some(d), Ok(m)) = (name.to_str().and_then(parse), e.metadata()) else {
                        continue;
                    };
                    if let Ok(t) = m.modified() {
                        out.insert(d, t);
                    }
                }
            }
            Backend::Bucket(b) => {
                if let Ok(list) = b.block_on(b.list(".ferry/reads/")) {
                    for (key, meta) in list {
                        let name = key.rsplit('/').next().unwrap_or("");
                        if let Some(d) = parse(name) {
                            out.insert(d, std::time::SystemTime::from(meta.last_modified));
                        }
                    }
                }
            }
            Backend::Archive(..) => {}
        }
        out
    }

    /// Write one of ferry's own small state files (`.ferry/NAME` in a directory, the same key in
    /// a bucket). Allowed on a read-only store: what a served USB disk records (its misses) is
    /// not registry content. Blocking.
    pub fn write_state_sync(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let rel = format!(".ferry/{name}");
        match &self.backend {
            Backend::Dir(files) => Ok(write::write_atomic(
                &files.tmp_dir(),
                &files.root.join(&rel),
                bytes,
            )?),
            Backend::Bucket(b) => b.block_on(b.put(&rel, Bytes::copy_from_slice(bytes))),
            Backend::Archive(..) => Err(archive_read_only()),
        }
    }

    /// [`Store::write_state_sync`] with the bytes written by `fill`: streamed to a directory's
    /// file through a small buffer (a bucket's object is one request, so it is gathered first).
    pub fn write_state_with(
        &self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> Result<()> {
        let rel = format!(".ferry/{name}");
        match &self.backend {
            Backend::Dir(files) => Ok(write::write_atomic_with(
                &files.tmp_dir(),
                &files.root.join(&rel),
                fill,
            )?),
            Backend::Bucket(b) => {
                let mut buf = Vec::new();
                fill(&mut buf)?;
                b.block_on(b.put(&rel, Bytes::from(buf)))
            }
            Backend::Archive(..) => Err(archive_read_only()),
        }
    }

    /// A state file as a reader (`None` if there is none), at most `limit` bytes: a directory's
    /// file is read as it is parsed, never whole. Blocking.
    pub fn open_state_sync(&self, name: &str, limit: u64) -> Result<Option<Box<dyn io::Read>>> {
        let rel = format!(".ferry/{name}");
        match &self.backend {
            Backend::Dir(files) => {
                match read::open_regular(&files.canon, &files.root.join(&rel))? {
                    read::Found::File(f, len) if len <= limit => Ok(Some(Box::new(
                        io::BufReader::with_capacity(64 << 10, io::Read::take(f, limit)),
                    ))),
                    read::Found::File(_, len) => Err(Error::Layout(format!(
                        ".ferry/{name} is {len} bytes, more than the {limit} allowed"
                    ))),
                    read::Found::Missing => Ok(None),
                    read::Found::Refused(why) => {
                        Err(Error::Layout(format!(".ferry/{name} is {why}")))
                    }
                }
            }
            _ => Ok(self
                .read_state_sync(name, limit)?
                .map(|b| Box::new(io::Cursor::new(b)) as Box<dyn io::Read>)),
        }
    }

    /// Read a state file written by [`Store::write_state_sync`] (`None` if there is none). Blocking.
    pub fn read_state_sync(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let rel = format!(".ferry/{name}");
        match &self.backend {
            Backend::Dir(files) => Self::read_layout_file(files, &files.root.join(&rel), limit),
            Backend::Bucket(b) => Ok(b.block_on(b.get_small(&rel, limit))?.map(|b| b.to_vec())),
            Backend::Archive(..) => Ok(None),
        }
    }

    /// Where a blob being fetched from elsewhere is spooled while clients read it: the store's
    /// own temp directory (so it is renamed into place, never copied), or the system's for a
    /// bucket. Cleared at start like every temp file.
    pub fn spool_dir(&self) -> Result<PathBuf> {
        self.ensure_writable()?;
        Ok(match &self.backend {
            Backend::Dir(files) => files.tmp_dir(),
            Backend::Bucket(_) | Backend::Archive(..) => std::env::temp_dir(),
        })
    }

    /// Make a spooled file (from [`Store::spool_dir`]) the blob `expected`, if `computed` (its
    /// hash, taken while it was written) matches; the file is gone afterwards either way.
    pub async fn adopt_blob(
        &self,
        path: PathBuf,
        computed: Digest,
        expected: &Digest,
    ) -> Result<()> {
        self.ensure_writable()?;
        match &self.backend {
            Backend::Dir(files) => Store::commit_file(files, path, computed, expected).await,
            Backend::Bucket(_) => {
                if &computed != expected {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(Error::DigestInvalid(format!(
                        "expected {expected}, content hashes to {computed}"
                    )));
                }
                let res = match tokio::fs::File::open(&path).await {
                    Ok(f) => {
                        let body = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                        self.put_blob(body, expected).await
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = tokio::fs::remove_file(&path).await;
                res
            }
            Backend::Archive(..) => Err(archive_read_only()),
        }
    }

    /// Keep the report of the last collection that removed something (or not), for the web page.
    /// Best effort: a GC that cannot write this has still done its work. Blocking.
    pub fn record_gc_sync(&self, report: &[u8]) {
        if self.read_only {
            return;
        }
        let r = match &self.backend {
            Backend::Dir(files) => write::write_atomic(
                &files.tmp_dir(),
                &files.root.join(".ferry/last-gc.json"),
                report,
            )
            .map_err(Error::from),
            Backend::Bucket(b) => {
                b.block_on(b.put(".ferry/last-gc.json", Bytes::copy_from_slice(report)))
            }
            Backend::Archive(..) => return,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "recording the GC report failed");
        }
    }

    /// The report [`Store::record_gc_sync`] kept, and when it was written. Blocking.
    pub fn last_gc_sync(&self) -> Option<(Vec<u8>, std::time::SystemTime)> {
        match &self.backend {
            Backend::Dir(files) => {
                let path = files.root.join(".ferry/last-gc.json");
                let bytes = Self::read_layout_file(files, &path, 64 * 1024).ok()??;
                let at = std::fs::metadata(&path).ok()?.modified().ok()?;
                Some((bytes, at))
            }
            Backend::Bucket(b) => {
                let meta = b.block_on(b.head(".ferry/last-gc.json")).ok()??;
                let bytes = b
                    .block_on(b.get_small(".ferry/last-gc.json", 64 * 1024))
                    .ok()??;
                Some((
                    bytes.to_vec(),
                    std::time::SystemTime::from(meta.last_modified),
                ))
            }
            Backend::Archive(..) => None,
        }
    }

    /// Total and free bytes of the filesystem a directory store lives on (`None` for a bucket,
    /// whose space is the storage cluster's to tell).
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        let root = self.root()?;
        let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
        // right type; statvfs fills it on success, and it is read only then.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it initialised `st`.
        let st = unsafe { st.assume_init() };
        // The field types differ between targets (u32 on some): the casts are for those.
        #[allow(clippy::unnecessary_cast)]
        let frsize = st.f_frsize as u64;
        #[allow(clippy::unnecessary_cast)]
        Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
    }

    /// When a manifest was stored (retention's age of a tag without a recorded time).
    pub fn stored_at(&self, d: &Digest) -> Option<std::time::SystemTime> {
        match &self.backend {
            Backend::Dir(files) => std::fs::symlink_metadata(files.blob_path(d))
                .and_then(|m| m.modified())
                .ok(),
            Backend::Bucket(b) => {
                let m = b.block_on(b.head(&bucket::blob_key(d))).ok()??;
                Some(std::time::SystemTime::from(m.last_modified))
            }
            Backend::Archive(a, _) => a.modified(),
        }
    }

    /// Remove upload sessions idle for longer than `max_age` (also those left by a crash).
    /// Blocking.
    pub fn expire_uploads(&self, max_age: std::time::Duration) -> Result<usize> {
        let files = match &self.backend {
            Backend::Dir(files) => files,
            Backend::Bucket(b) => return b.block_on(b.expire_uploads(max_age)),
            Backend::Archive(..) => return Ok(0),
        };
        // Temp files a dead writer left, by the same age (a start keeps young ones: they may be
        // another process's writes in progress).
        write::remove_older_than(&files.tmp_dir(), max_age);
        let now = std::time::SystemTime::now();
        let dir = files.root.join(".ferry/uploads");
        let mut n = 0;
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        for e in rd.flatten() {
            let old = write::age_of(&e, now).is_some_and(|age| age >= max_age);
            if old && std::fs::remove_file(e.path()).is_ok() {
                self.uploads.forget(&e.file_name().to_string_lossy());
                n += 1;
            }
        }
        Ok(n)
    }

    /// Open a blob for reading. A directory's length is taken from the open file, so a
    /// concurrent delete cannot make the two disagree; a file that is not content is
    /// [`Error::BlobUnreadable`], named.
    /// For a read-only store (a USB disk, an archive, a bucket from elsewhere: media that may be
    /// hostile), check a blob hashes to its name before the server sends any of it, once per
    /// blob: the last byte of a blob that does not hash to its name is never sent. A writable
    /// store verified everything as it was written.
    pub async fn check_served(&self, d: &Digest) -> Result<()> {
        if !self.read_only
            || self
                .vouched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(d)
        {
            return Ok(());
        }
        let checked = match &self.backend {
            Backend::Dir(files) => {
                let (files, d) = (files.clone(), d.clone());
                blocking(move || Ok(files.rehash(&d))).await?
            }
            Backend::Archive(a, _) => {
                let (a, d2) = (a.clone(), d.clone());
                match blocking(move || a.hash_blob(&d2)).await {
                    Ok((h, n)) if &h == d => Checked::Intact(n),
                    Ok((_, n)) => Checked::Corrupt(n),
                    Err(Error::BlobUnknown(_)) => Checked::Missing,
                    Err(e) => Checked::Refused(format!("unreadable ({e})")),
                }
            }
            Backend::Bucket(b) => match b.hash_blob(d, d.algorithm()).await {
                Ok((h, n)) if &h == d => Checked::Intact(n),
                Ok((_, n)) => Checked::Corrupt(n),
                Err(Error::BlobUnknown(_)) => Checked::Missing,
                Err(e) => return Err(e),
            },
        };
        match checked {
            Checked::Intact(_) => {
                self.vouched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(d.clone());
                Ok(())
            }
            Checked::Missing => Err(Error::BlobUnknown(d.clone())),
            Checked::Corrupt(n) => {
                tracing::warn!(digest = %d, data = %self.describe(), bytes = n, "the file under this blob's name holds other content; not served");
                Err(Error::BlobUnreadable {
                    digest: d.clone(),
                    why: "a file that holds other content (it does not hash to its name)".into(),
                })
            }
            Checked::Refused(why) => Err(Error::BlobUnreadable {
                digest: d.clone(),
                why,
            }),
        }
    }

    pub async fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        match &self.backend {
            Backend::Dir(files) => {
                let (files, d) = (files.clone(), d.clone());
                let (f, len) = blocking(move || files.open_blob_sync(&d)).await?;
                Ok(BlobReader {
                    len,
                    source: Source::File(f),
                })
            }
            Backend::Bucket(b) => {
                let len = b
                    .blob_size(d)
                    .await?
                    .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
                Ok(BlobReader {
                    len,
                    source: Source::Object(b.clone(), bucket::blob_key(d)),
                })
            }
            Backend::Archive(a, _) => {
                let len = a
                    .blob_size(d)
                    .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
                Ok(BlobReader {
                    len,
                    source: Source::Archive(a.clone(), d.clone()),
                })
            }
        }
    }

    /// A blob DELETE under `repo`: the repository no longer holds it ([`holdings`]). The bytes
    /// stay for every other repository that holds them; GC takes them when none does.
    pub async fn delete_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        self.ensure_writable()?;
        if self.unlink(repo, d).await? {
            Ok(())
        } else {
            Err(Error::BlobUnknown(d.clone()))
        }
    }

    /// Verify a finished upload file against `expected` and rename it into place.
    async fn commit_file(
        files: &StoreFiles,
        path: PathBuf,
        computed: Digest,
        expected: &Digest,
    ) -> Result<()> {
        let computed = if expected.algorithm() == computed.algorithm() {
            computed
        } else {
            // Uploads are hashed with sha256 while they stream; a sha512 upload is re-read once.
            let p = path.clone();
            let alg = expected.algorithm();
            blocking(move || hash_file(&p, alg)).await?
        };
        if &computed != expected {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Error::DigestInvalid(format!(
                "expected {expected}, content hashes to {computed}"
            )));
        }
        let target = files.blob_path(expected);
        blocking(move || {
            File::open(&path)?.sync_all()?;
            // Renaming over an existing blob is harmless: same name, same bytes.
            std::fs::rename(&path, &target)?;
            if let Some(dir) = target.parent() {
                write::fsync_dir(dir)?;
            }
            Ok(())
        })
        .await
    }

    /// Import a blob of known digest and size from a source that can start at an offset,
    /// verifying it and resuming a partial file left by an earlier, interrupted run.
    ///
    /// `open(offset)` returns the body from `offset` and whether the source honoured the offset
    /// (a source that answers with the whole blob restarts the partial file).
    pub async fn import_blob<F, Fut, S, E>(
        &self,
        d: &Digest,
        size: u64,
        open: F,
    ) -> Result<Imported>
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = Result<(S, bool)>>,
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        self.ensure_writable()?;
        let files = match &self.backend {
            Backend::Dir(files) => files.clone(),
            Backend::Bucket(b) => {
                // A bucket keeps no partial file: an interrupted import starts again (its
                // whole parts are not yet reused across runs).
                let id = uuid::Uuid::new_v4().hyphenated().to_string();
                b.upload_start(&id).await?;
                let (body, _) = open(0).await?;
                let body = write::at_most(body, size);
                let res = b.upload_finish(&id, None, body, d).await;
                if res.is_err() {
                    let _ = b.upload_cancel(&id).await;
                }
                return match res {
                    Ok(()) => Ok(Imported {
                        transferred: size,
                        resumed_from: 0,
                    }),
                    Err(Error::DigestInvalid(detail)) => Err(Error::Corrupt {
                        digest: d.clone(),
                        detail,
                    }),
                    Err(e) => Err(e),
                };
            }
            Backend::Archive(..) => return Err(archive_read_only()),
        };
        let path = files.partial_path(d);
        let alg = d.algorithm();
        let p = path.clone();
        // Recover what an earlier run left (hashing it once), or start empty.
        let (file, have, hasher) = blocking(move || {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = read::open_private(&p, true, true)?;
            let (h, len) = crate::vocab::digest::hash_reader(&mut f, alg)?;
            Ok((f, len, h))
        })
        .await?;
        let (file, have, hasher) = if have > size {
            // Longer than the blob: not a prefix of it. Start over.
            file.set_len(0)?;
            (file, 0, alg.hasher())
        } else {
            (file, have, hasher)
        };
        if have == size {
            // A complete partial file from an earlier run: verify it, nothing to fetch.
            drop(file);
            let res = Store::commit_file(&files, path, hasher.finish(), d).await;
            return match res {
                Ok(()) => Ok(Imported {
                    transferred: 0,
                    resumed_from: size,
                }),
                Err(Error::DigestInvalid(detail)) => Err(Error::Corrupt {
                    digest: d.clone(),
                    detail,
                }),
                Err(e) => Err(e),
            };
        }
        let (body, partial) = open(have).await?;
        let (file, start, hasher) = if have > 0 && !partial {
            file.set_len(0)?;
            (file, 0, alg.hasher())
        } else {
            (file, have, hasher)
        };
        use std::io::Seek;
        let mut file = file;
        file.seek(io::SeekFrom::Start(start))?;
        let out = write::stream_to_file(file, start, hasher, body, Some(size - start)).await?;
        if let Some(e) = out.disk_error {
            return Err(e.into());
        }
        if out.over_limit {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Error::Corrupt {
                digest: d.clone(),
                detail: format!("the source sent more than the {size} bytes its descriptor says"),
            });
        }
        let total = start + out.written;
        if let Some(e) = out.body_error {
            if total < size {
                // Keep what arrived: the next run continues from here.
                return Err(Error::BlobUploadInvalid(format!(
                    "{d}: transfer interrupted after {total} bytes ({e}); run again to resume"
                )));
            }
            // Every byte arrived and the source still complained (a client library that
            // verifies whole responses itself): our own check below decides.
        }
        if total != size {
            return Err(Error::BlobUploadInvalid(format!(
                "{d}: the source ended after {total} of {size} bytes; run again to resume"
            )));
        }
        let computed = out.hasher.finish();
        drop(out.file);
        Store::commit_file(&files, path, computed, d)
            .await
            .map_err(|e| match e {
                Error::DigestInvalid(detail) => Error::Corrupt {
                    digest: d.clone(),
                    detail,
                },
                e => e,
            })?;
        Ok(Imported {
            transferred: out.written,
            resumed_from: start,
        })
    }

    // ---------------------------------------------------------------- uploads

    pub async fn upload_start(&self) -> Result<String> {
        self.ensure_writable()?;
        match &self.backend {
            Backend::Dir(_) => self.uploads.start().await,
            Backend::Bucket(b) => {
                let id = uuid::Uuid::new_v4().hyphenated().to_string();
                b.upload_start(&id).await?;
                Ok(id)
            }
            Backend::Archive(..) => Err(archive_read_only()),
        }
    }

    /// Bytes received so far by a session.
    pub async fn upload_status(&self, id: &str) -> Result<u64> {
        if let Backend::Bucket(b) = &self.backend {
            return b.upload_len(upload::checked_id(id)?).await;
        }
        let h = self.uploads.get(id).await?;
        let up = h.lock().await;
        Ok(up.len)
    }

    /// Append a chunk. `range_start` is the first byte of `Content-Range`, which must be where the
    /// session stands (else 416). Returns the new length.
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
        self.ensure_writable()?;
        if let Backend::Bucket(b) = &self.backend {
            return b
                .upload_append(upload::checked_id(id)?, range_start, body)
                .await;
        }
        let h = self.uploads.get(id).await?;
        let mut up = h.lock().await;
        if let Some(start) = range_start {
            if start != up.len {
                return Err(Error::RangeInvalid(format!(
                    "chunk starts at {start}, the upload has {} bytes",
                    up.len
                )));
            }
        }
        let file = open_for_append(&up.path, up.len).await?;
        let out = write::stream_to_file(file, up.len, up.hasher.clone(), body, None).await?;
        if let Some(e) = out.disk_error {
            return Err(e.into());
        }
        up.len += out.written;
        up.hasher = out.hasher;
        if let Some(e) = out.body_error {
            return Err(Error::BlobUploadInvalid(format!(
                "request body failed: {e}"
            )));
        }
        Ok(up.len)
    }

    /// Append the last chunk (if any), verify against `digest`, and publish the blob.
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
        let files = match &self.backend {
            Backend::Dir(files) => files,
            Backend::Bucket(b) => {
                self.ensure_writable()?;
                return b
                    .upload_finish(upload::checked_id(id)?, range_start, body, digest)
                    .await;
            }
            Backend::Archive(..) => return Err(archive_read_only()),
        };
        self.upload_append(id, range_start, body).await?;
        let h = self.uploads.get(id).await?;
        let up = h.lock().await;
        let res =
            Store::commit_file(files, up.path.clone(), up.hasher.clone().finish(), digest).await;
        // Success renamed the file; a digest mismatch removed it. Either way the session is over.
        if !matches!(res, Err(Error::Io(_)) | Err(Error::NoSpace)) {
            self.uploads.forget(&up.id);
        }
        res
    }

    pub async fn upload_cancel(&self, id: &str) -> Result<()> {
        self.ensure_writable()?;
        if let Backend::Bucket(b) = &self.backend {
            return b.upload_cancel(upload::checked_id(id)?).await;
        }
        let h = self.uploads.get(id).await?;
        let up = h.lock().await;
        let _ = tokio::fs::remove_file(&up.path).await;
        self.uploads.forget(&up.id);
        Ok(())
    }

    /// A whole blob in one request (`POST ?digest=`), through a temporary session.
    pub async fn put_blob<S, E>(&self, body: S, digest: &Digest) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let id = self.upload_start().await?;
        let res = self.upload_finish(&id, None, body, digest).await;
        if res.is_err() {
            let _ = self.upload_cancel(&id).await;
        }
        res
    }

    /// Upload sessions this process holds open.
    pub fn open_uploads(&self) -> usize {
        match &self.backend {
            Backend::Dir(_) => self.uploads.open_count(),
            Backend::Bucket(b) => b.sessions_here(),
            Backend::Archive(..) => 0,
        }
    }

    // ---------------------------------------------------------------- manifests

    /// Store a manifest exactly as received and record it (and its tag): ferry's own writers
    /// (sync, pull-through, tools built on the library). What it references must be stored,
    /// in any repository, and becomes this repository's.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<PutManifest> {
        self.put_manifest_refs(repo, reference, bytes, content_type, Refs::Stored)
            .await
    }

    /// A manifest a client pushed: what it references must be held by its repository (pushed
    /// or mounted there, or recorded there), as in Distribution: a digest stored for another
    /// repository is not this one's to name.
    pub async fn put_client_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<PutManifest> {
        self.put_manifest_refs(repo, reference, bytes, content_type, Refs::Held)
            .await
    }

    /// [`Store::put_manifest`], optionally without requiring the referenced content: a delta
    /// directory (written by `ferry sync --have`) holds manifests whose blobs are elsewhere, which
    /// the image-layout spec allows.
    pub async fn put_manifest_checked(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
        check_references: bool,
    ) -> Result<PutManifest> {
        let refs = if check_references {
            Refs::Stored
        } else {
            Refs::Unchecked
        };
        self.put_manifest_refs(repo, reference, bytes, content_type, refs)
            .await
    }

    async fn put_manifest_refs(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
        refs: Refs,
    ) -> Result<PutManifest> {
        self.ensure_writable()?;
        if bytes.len() as u64 > media::MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge {
                size: bytes.len() as u64,
                limit: media::MAX_MANIFEST_BYTES,
            });
        }
        let info = media::parse_manifest(&bytes, content_type)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(Error::DigestInvalid(format!(
                        "manifest hashes to {actual}, not {d}"
                    )));
                }
                d.clone()
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        // Invariant 2: everything the manifest references exists before it is stored, and
        // invariant 8: it stays. A check alone is not enough: GC may have read the records
        // before this PUT and sweep a referenced blob (or this manifest's own stored bytes,
        // when a manifest no tag names any more is put again) after it. So every reference is
        // *promised* — checked and refreshed under the same ordering against sweeps as a HEAD
        // (module `gc`) — before the records are written, and again after: a sweep that slipped
        // in between (a PUT slower than GC's grace period) is seen, and the PUT is undone and
        // refused as if GC had finished first. The second round is what makes a 201 a promise:
        // a blob promised after the commit was promised after GC's last reading of the records,
        // so no sweep of that GC removes it, and a later GC sees the manifest.
        let edges: Vec<&media::Edge> = match refs {
            Refs::Held | Refs::Stored => info.edges.iter().collect(),
            Refs::Unchecked => Vec::new(),
        };
        if refs == Refs::Held {
            for e in &edges {
                if !self.holds(repo, &e.digest).await? {
                    return Err(Error::ManifestBlobUnknown(e.digest.clone()));
                }
            }
        }
        self.promise_references(&edges).await?;
        self.promise_manifest_bytes(&digest, &bytes).await?;
        // The repository holds what its manifest references (and the manifest) before the
        // record names it: a client that reads the tag can read every layer under it.
        let mut held: Vec<Digest> = info.edges.iter().map(|e| e.digest.clone()).collect();
        held.push(digest.clone());
        self.link(repo, &held).await?;
        self.pause("manifest:promised").await;
        let entry = NewEntry {
            repo: repo.as_str().to_owned(),
            tag: match reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            },
            digest: digest.clone(),
            media_type: info.media_type.clone(),
            size: bytes.len() as u64,
            artifact_type: info.subject.as_ref().and(info.artifact_type.clone()),
            subject: info.subject.clone(),
            tagged_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let e2 = entry.clone();
        let undo = self
            .update_index(move |f| {
                let undo = index::Undo::before(f, &e2);
                let before = f.manifests.len();
                let snapshot = serde_json::to_value(&f.manifests).ok();
                f.put(&e2);
                let changed = f.manifests.len() != before
                    || serde_json::to_value(&f.manifests).ok() != snapshot;
                Ok((undo, changed))
            })
            .await?;
        self.pause("manifest:recorded").await;
        // The second round (above). The manifest's own bytes are in hand: written again if a
        // sweep took them, rather than undoing the PUT.
        let again = self.promise_references(&edges).await;
        let again = match again {
            Ok(()) => self.promise_manifest_bytes(&digest, &bytes).await,
            Err(e) => Err(e),
        };
        if let Err(e) = again {
            tracing::warn!(repo = %repo, reference = %reference, "a reference of this manifest was swept while it was being recorded: the PUT is undone ({e})");
            self.update_index(move |f| Ok(((), undo.apply(f, &entry))))
                .await?;
            return Err(e);
        }
        Ok(PutManifest {
            digest,
            subject: info.subject,
        })
    }

    /// Promise every reference of a manifest (see [`Store::put_manifest_checked`]): each exists,
    /// with the size the manifest gives, and is kept by any sweep that has not happened yet.
    async fn promise_references(&self, edges: &[&media::Edge]) -> Result<()> {
        use futures_util::StreamExt;
        let digests: Vec<Digest> = edges.iter().map(|e| e.digest.clone()).collect();
        let sizes: Vec<Result<Option<u64>>> = futures_util::stream::iter(digests)
            .map(|d| async move { self.promise_blob(&d).await })
            .buffered(16)
            .collect()
            .await;
        for (edge, size) in edges.iter().zip(sizes) {
            match size? {
                None => return Err(Error::ManifestBlobUnknown(edge.digest.clone())),
                Some(size) if size != edge.size => {
                    return Err(Error::ManifestInvalid(format!(
                        "{} {} is {} bytes, the manifest says {}",
                        match edge.kind {
                            EdgeKind::Blob => "blob",
                            EdgeKind::Manifest => "manifest",
                        },
                        edge.digest,
                        size,
                        edge.size
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A manifest's own bytes, stored under its digest and promised like a reference: written
    /// when missing (or swept meanwhile: each write is new, so younger than any GC's mark).
    async fn promise_manifest_bytes(&self, digest: &Digest, bytes: &Bytes) -> Result<()> {
        if self.promise_blob(digest).await? == Some(bytes.len() as u64) {
            return Ok(());
        }
        match &self.backend {
            Backend::Dir(files) => {
                let (tmp, target) = (files.tmp_dir(), files.blob_path(digest));
                let b = bytes.clone();
                blocking(move || Ok(write::write_atomic(&tmp, &target, &b)?)).await
            }
            Backend::Bucket(b) => b.put_blob_bytes(digest, bytes.clone()).await,
            Backend::Archive(..) => Err(archive_read_only()),
        }
    }

    /// Let a test hold the store at a named step of an operation (`Store::set_pause_hook`).
    async fn pause(&self, point: &'static str) {
        let hook = self.pause.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            let _ = tokio::task::spawn_blocking(move || h(point)).await;
        }
    }

    /// [`Store::pause`] for blocking callers (GC).
    pub fn pause_sync(&self, point: &'static str) {
        let hook = self.pause.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            h(point);
        }
    }

    /// For tests that stage a race step by step instead of hoping for it: `hook` is called, on
    /// a blocking thread, at each named step (`"manifest:promised"` and `"manifest:recorded"`
    /// in a manifest PUT, `"gc:marked"` between GC's last mark and its sweep) and may block to
    /// hold the operation there. Nothing outside the tests sets one.
    pub fn set_pause_hook(&self, hook: PauseHook) {
        *self.pause.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Find a manifest by tag or digest.
    pub async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestMeta> {
        let unknown = || Error::ManifestUnknown(format!("{repo}:{reference}"));
        let (digest, media_type) = match (reference, &self.backend) {
            // A bucket's tag is one object, read fresh: a tag another replica just published is
            // served on the next request, without listing every record.
            (Reference::Tag(t), Backend::Bucket(b)) => {
                let d = b.tag_record(repo.as_str(), t).await?.ok_or_else(unknown)?;
                (d.digest, Some(d.media_type))
            }
            (Reference::Tag(t), Backend::Dir(_) | Backend::Archive(..)) => {
                let idx = self.index().await?;
                let d = idx.tag(repo.as_str(), t).ok_or_else(unknown)?;
                (d.digest.clone(), Some(d.media_type.clone()))
            }
            (Reference::Digest(d), backend) => {
                if !self.holds(repo, d).await? {
                    return Err(unknown());
                }
                let known = match backend {
                    Backend::Bucket(_) => self
                        .last_records
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .and_then(|i| i.by_digest(repo.as_str(), d).map(|x| x.media_type.clone())),
                    Backend::Dir(_) | Backend::Archive(..) => None,
                };
                let media_type = match known {
                    Some(mt) => Some(mt),
                    None => self
                        .index()
                        .await?
                        .by_digest(repo.as_str(), d)
                        .map(|x| x.media_type.clone()),
                };
                (d.clone(), media_type)
            }
        };
        let size = self.blob_size(&digest).await?.ok_or_else(unknown)?;
        let media_type = match media_type {
            Some(mt) => mt,
            None => {
                // A manifest no descriptor describes (a child in a layout another tool wrote):
                // tell its type from its bytes, if it is a manifest at all.
                if size > media::MAX_MANIFEST_BYTES {
                    return Err(unknown());
                }
                let bytes = self.read_manifest(&digest).await?;
                media::sniff_media_type(&bytes).ok_or_else(unknown)?
            }
        };
        Ok(ManifestMeta {
            media_type,
            digest,
            size,
        })
    }

    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.ensure_writable()?;
        let repo_s = repo.as_str().to_owned();
        let unknown = Error::ManifestUnknown(format!("{repo}:{reference}"));
        match reference {
            Reference::Tag(t) => {
                let t = t.clone();
                let found = self
                    .update_index(move |f| {
                        let ok = f.delete_tag(&repo_s, &t);
                        Ok((ok, ok))
                    })
                    .await?;
                if found {
                    Ok(())
                } else {
                    Err(unknown)
                }
            }
            Reference::Digest(d) => {
                let d2 = d.clone();
                let removed = self
                    .update_index(move |f| {
                        let n = f.delete_manifest(&repo_s, &d2);
                        Ok((n, n > 0))
                    })
                    .await?;
                // The repository no longer holds it; the bytes stay for any other repository
                // that does (GC takes them when none does).
                let linked = self.unlink(repo, d).await?;
                if removed == 0 && !linked {
                    return Err(unknown);
                }
                Ok(())
            }
        }
    }

    /// The referrers API body: an image index of the manifests in `repo` whose subject is `subject`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Value> {
        let idx = self.index().await?;
        let mut out = Vec::new();
        for d in idx.referrers(repo.as_str(), subject) {
            if artifact_type.is_some_and(|a| d.artifact_type.as_deref() != Some(a)) {
                continue;
            }
            let mut desc = json!({
                "mediaType": d.media_type,
                "digest": d.digest.to_string(),
                "size": d.size,
            });
            if let Some(a) = &d.artifact_type {
                desc["artifactType"] = json!(a);
            }
            // Annotations come from the manifest itself, as the spec asks.
            if let Ok(bytes) = self.read_manifest(&d.digest).await {
                if let Ok(info) = media::parse_manifest(&bytes, Some(&d.media_type)) {
                    if let Some(a) = info.annotations {
                        desc["annotations"] = Value::Object(a);
                    }
                }
            }
            out.push(desc);
        }
        Ok(json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": out,
        }))
    }
}

async fn open_for_append(path: &Path, len: u64) -> Result<File> {
    let path = path.to_owned();
    blocking(move || {
        let f = match read::open_private(&path, false, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::BlobUploadUnknown),
            Err(e) => return Err(e.into()),
        };
        // Trust the session's length over the file's: bytes past it were never acknowledged.
        f.set_len(len)?;
        use std::io::Seek;
        let mut f = f;
        f.seek(io::SeekFrom::Start(len))?;
        Ok(f)
    })
    .await
}

/// Hash a whole file (used for sha512 uploads and by tests).
pub fn hash_file(path: &Path, alg: Algorithm) -> Result<Digest> {
    let (h, _) = crate::vocab::digest::hash_reader(File::open(path)?, alg)?;
    Ok(h.finish())
}

/// The paths of a store, for blocking tasks that read blobs ([`Store`] itself is not `Clone`),
/// and the readers that need nothing more.
#[derive(Clone)]
struct StoreFiles {
    root: PathBuf,
    /// `root` with every symlink resolved: a symlink under it may lead only inside this.
    canon: PathBuf,
}

impl StoreFiles {
    fn tmp_dir(&self) -> PathBuf {
        self.root.join(".ferry/tmp")
    }

    /// The lock that orders "promise a blob exists" against "sweep it" across processes.
    fn gc_lock_path(&self) -> PathBuf {
        self.root.join(".ferry/gc.lock")
    }

    fn read_marker(&self, d: &Digest) -> PathBuf {
        self.root
            .join(".ferry/reads")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    /// Where a blob being imported by `ferry sync` is kept until it is complete: a later run
    /// continues it from its length instead of starting again.
    fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join(".ferry/partial")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    fn list_blobs(&self) -> Vec<BlobEntry> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let Ok(rd) = std::fs::read_dir(self.root.join("blobs").join(alg)) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(digest) =
                    format!("{alg}:{}", e.file_name().to_string_lossy()).parse::<Digest>()
                else {
                    continue;
                };
                // The name itself, never what a symlink points at.
                let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                    continue;
                };
                out.push(BlobEntry {
                    digest,
                    size: if meta.is_file() { meta.len() } else { 0 },
                    modified: meta.modified().ok(),
                    not_content: (!meta.is_file()).then(|| read::kind_of(meta.file_type())),
                });
            }
        }
        out
    }

    fn rehash(&self, d: &Digest) -> Checked {
        match read::open_regular(&self.canon, &self.blob_path(d)) {
            Ok(read::Found::File(f, _)) => {
                match crate::vocab::digest::hash_reader(f, d.algorithm()) {
                    Ok((h, n)) if h.clone().finish() == *d => Checked::Intact(n),
                    Ok((_, n)) => Checked::Corrupt(n),
                    Err(e) => Checked::Refused(format!("unreadable ({e})")),
                }
            }
            Ok(read::Found::Refused(why)) => Checked::Refused(why),
            Ok(read::Found::Missing) => Checked::Missing,
            Err(e) => Checked::Refused(format!("unreadable ({e})")),
        }
    }

    /// Remove an unreferenced blob under the exclusive GC lock, re-checking its age there: a
    /// promise (shared lock) either came first and made it young, or comes after and finds it
    /// gone. A name that is no content is removed without being opened; a directory is kept.
    fn sweep(
        &self,
        d: &Digest,
        grace: std::time::Duration,
        marked_at: std::time::SystemTime,
        repos: &[String],
    ) -> Result<Option<u64>> {
        let l = read::open_private(&self.gc_lock_path(), true, false)?;
        l.lock()?;
        let path = self.blob_path(d);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(Some(0));
        };
        // Written or promised (mtime) less than `grace` before the mark: keep.
        let recent = meta.modified().map_or(true, |m| m + grace > marked_at);
        if recent || meta.is_dir() {
            return Ok(None);
        }
        // The repositories' links first: one a push makes after this stays, with its blob.
        holdings::remove_dir_links(&self.root, d, repos)?;
        let freed = match std::fs::remove_file(&path) {
            Ok(()) => Some(if meta.is_file() { meta.len() } else { 0 }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(0),
            Err(e) => return Err(e.into()),
        };
        // Its read marker (a manifest's) goes with it: markers of gone manifests would pile up
        // for ever, and the page lists them all.
        let _ = std::fs::remove_file(self.read_marker(d));
        Ok(freed)
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn open_blob_sync(&self, d: &Digest) -> Result<(File, u64)> {
        match read::open_regular(&self.canon, &self.blob_path(d))? {
            read::Found::File(f, len) => Ok((f, len)),
            read::Found::Missing => Err(Error::BlobUnknown(d.clone())),
            read::Found::Refused(why) => {
                tracing::warn!(digest = %d, data = %self.root.display(), "blob file is {why}; treated as absent");
                Err(Error::BlobUnreadable {
                    digest: d.clone(),
                    why,
                })
            }
        }
    }

    fn read_small_sync(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        match read::read_regular(&self.canon, &self.blob_path(d), limit)? {
            Ok(b) => Ok(b),
            Err(read::Unread::Missing) => Err(Error::BlobUnknown(d.clone())),
            Err(read::Unread::Refused(why)) => Err(Error::BlobUnreadable {
                digest: d.clone(),
                why,
            }),
        }
    }
}
