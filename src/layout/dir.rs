//! The directory backend: an OCI image layout on a local disk, its paths and the readers that
//! need nothing more than those.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::backend::{corrupt, flat_digest, Backend, Body, Fill, Opener, RecordsChange};
use super::upload::Uploads;
use super::*;

/// The paths of a store, for blocking tasks that read blobs ([`Store`] itself is not `Clone`),
/// and the readers that need nothing more.
#[derive(Clone)]
pub(super) struct StoreFiles {
    pub(super) root: PathBuf,
    /// `root` with every symlink resolved: a symlink under it may lead only inside this.
    pub(super) canon: PathBuf,
}

impl StoreFiles {
    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.root.join(".ferry/tmp")
    }

    /// The lock that orders "promise a blob exists" against "sweep it" across processes.
    pub(super) fn gc_lock_path(&self) -> PathBuf {
        self.root.join(".ferry/gc.lock")
    }

    pub(super) fn read_marker(&self, d: &Digest) -> PathBuf {
        self.root
            .join(".ferry/reads")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    /// Where a blob being imported by `ferry sync` is kept until it is complete: a later run
    /// continues it from its length instead of starting again.
    pub(super) fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join(".ferry/partial")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    pub(super) fn list_blobs(&self) -> Vec<BlobEntry> {
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

    pub(super) fn rehash(&self, d: &Digest) -> Checked {
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
    pub(super) fn sweep(
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

    pub(super) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    pub(super) fn open_blob_sync(&self, d: &Digest) -> Result<(File, u64)> {
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

    pub(super) fn read_small_sync(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
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

/// Identity of an `index.json` version: a rename gives a new inode, a rewrite a new mtime.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

/// The directory backend: its paths, its records as last read, its upload sessions.
pub(super) struct DirBackend {
    pub(super) files: StoreFiles,
    cache: Mutex<Option<(Stamp, Arc<Index>)>>,
    uploads: Uploads,
}

impl DirBackend {
    pub(super) fn new(files: StoreFiles) -> DirBackend {
        DirBackend {
            uploads: Uploads::new(files.root.join(".ferry/uploads")),
            files,
            cache: Mutex::new(None),
        }
    }
}

impl StoreFiles {
    /// Make the layout's directories and files, and remove old temp files.
    pub(super) fn init(&self) -> Result<()> {
        for d in [
            "blobs/sha256",
            "blobs/sha512",
            ".ferry/uploads",
            ".ferry/tmp",
            ".ferry/partial",
        ] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        // Leftovers of a crash: temp files are never referenced, so they can go — but only old
        // ones: another process on the same directory (a server, while `ferry gc` or `sync`
        // opens it) may be writing one right now (index.json's replacement, a state file). The
        // soak found a server's writes failing with ENOENT when `ferry gc` started beside it.
        write::remove_older_than(&self.tmp_dir(), STALE_TEMP);
        if !self.root.join("oci-layout").exists() {
            write::write_atomic(
                &self.tmp_dir(),
                &self.root.join("oci-layout"),
                OCI_LAYOUT_CONTENT,
            )?;
        }
        if !self.root.join("index.json").exists() {
            let bytes = IndexFile::default().to_bytes();
            write::write_atomic(&self.tmp_dir(), &self.root.join("index.json"), &bytes)?;
        }
        Ok(())
    }

    /// Read a small file of the layout (index.json, a state file) through
    /// [`read::read_regular`].
    pub(super) fn read_layout_file(&self, path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
        match read::read_regular(&self.canon, path, limit)? {
            Ok(b) => Ok(Some(b)),
            Err(read::Unread::Missing) => Ok(None),
            Err(read::Unread::Refused(why)) => {
                Err(Error::Layout(format!("{} is {why}", path.display())))
            }
        }
    }

    /// Verify a finished upload file against `expected` and rename it into place.
    async fn commit_file(&self, path: PathBuf, computed: Digest, expected: &Digest) -> Result<()> {
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
        let target = self.blob_path(expected);
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

#[async_trait::async_trait]
impl Backend for DirBackend {
    fn describe(&self) -> String {
        self.files.root.display().to_string()
    }

    fn root(&self) -> Option<&Path> {
        Some(&self.files.root)
    }

    async fn records(&self) -> Result<Arc<Index>> {
        let files = &self.files;
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
        let Some(bytes) = files.read_layout_file(&path, MAX_INDEX_BYTES)? else {
            return Ok(Arc::new(Index::default()));
        };
        let idx = Arc::new(Index::new(IndexFile::parse(&bytes)?));
        for why in idx.skipped() {
            tracing::warn!(data = %files.root.display(), "index.json: {why}");
        }
        *cache = Some((stamp, idx.clone()));
        Ok(idx)
    }

    async fn update_records(&self, change: RecordsChange) -> Result<()> {
        let files = &self.files;
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
            if change(&mut file)? {
                write::write_atomic(&tmp, &path, &file.to_bytes())?;
            }
            Ok(())
        })
        .await
    }

    fn lock_records(&self) -> Result<Option<std::fs::File>> {
        let l = read::open_private(&self.files.root.join(".ferry/lock"), true, false)?;
        l.lock()?;
        Ok(Some(l))
    }

    async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        let (canon, path) = (self.files.canon.clone(), self.files.blob_path(d));
        blocking(move || Ok(read::regular_size(&canon, &path)?)).await
    }

    fn blob_refusal(&self, d: &Digest) -> Option<String> {
        read::refusal(&self.files.canon, &self.files.blob_path(d))
            .ok()
            .flatten()
    }

    async fn read_small(&self, d: &Digest, limit: u64) -> Result<Bytes> {
        let (files, d) = (self.files.clone(), d.clone());
        blocking(move || files.read_small_sync(&d, limit).map(Bytes::from)).await
    }

    async fn list_blobs(&self) -> Result<Vec<BlobEntry>> {
        let files = self.files.clone();
        blocking(move || Ok(files.list_blobs())).await
    }

    async fn list_content(&self) -> Result<Vec<Digest>> {
        let files = self.files.clone();
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

    async fn rehash(&self, d: &Digest) -> Result<Checked> {
        let (files, d) = (self.files.clone(), d.clone());
        blocking(move || Ok(files.rehash(&d))).await
    }

    async fn quarantine(&self, d: &Digest) -> Result<()> {
        let (files, d) = (self.files.clone(), d.clone());
        blocking(move || {
            let q = files.root.join(".ferry/quarantine");
            std::fs::create_dir_all(&q)?;
            let to = q.join(format!("{}-{}", d.algorithm().as_str(), d.hex()));
            Ok(std::fs::rename(files.blob_path(&d), &to)?)
        })
        .await
    }

    async fn sweep(
        &self,
        d: &Digest,
        grace: Duration,
        marked_at: SystemTime,
        repos: &[String],
    ) -> Result<Option<u64>> {
        let (files, d, repos) = (self.files.clone(), d.clone(), repos.to_vec());
        blocking(move || files.sweep(&d, grace, marked_at, &repos)).await
    }

    async fn after_sweep(&self, _grace: Duration) -> Result<()> {
        let files = self.files.clone();
        blocking(move || {
            let Ok(rd) = std::fs::read_dir(files.root.join(".ferry/reads")) else {
                return Ok(());
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(d) = name.to_str().and_then(flat_digest) else {
                    continue;
                };
                if std::fs::symlink_metadata(files.blob_path(&d)).is_err() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(())
        })
        .await
    }

    async fn ready(&self, read_only: bool) -> bool {
        let root = self.files.root.clone();
        blocking(move || {
            Ok(if read_only {
                std::fs::metadata(root.join("oci-layout")).is_ok()
            } else {
                tempfile::Builder::new()
                    .prefix(".ready-")
                    .tempfile_in(root.join(".ferry/tmp"))
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    async fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        let (files, d) = (self.files.clone(), d.clone());
        let (f, len) = blocking(move || files.open_blob_sync(&d)).await?;
        Ok(BlobReader {
            len,
            source: Source::File(f),
        })
    }

    async fn import_blob(&self, d: &Digest, size: u64, open: Opener<'_>) -> Result<Imported> {
        let files = &self.files;
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
            files
                .commit_file(path, hasher.finish(), d)
                .await
                .map_err(corrupt(d))?;
            return Ok(Imported {
                transferred: 0,
                resumed_from: size,
            });
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
        files
            .commit_file(path, computed, d)
            .await
            .map_err(corrupt(d))?;
        Ok(Imported {
            transferred: out.written,
            resumed_from: start,
        })
    }

    async fn put_small_blob(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        let (tmp, target) = (self.files.tmp_dir(), self.files.blob_path(d));
        blocking(move || Ok(write::write_atomic(&tmp, &target, &bytes)?)).await
    }

    fn spool_dir(&self) -> PathBuf {
        self.files.tmp_dir()
    }

    async fn adopt_blob(&self, path: PathBuf, computed: Digest, expected: &Digest) -> Result<()> {
        self.files.commit_file(path, computed, expected).await
    }

    async fn stored_at(&self, d: &Digest) -> Option<SystemTime> {
        let path = self.files.blob_path(d);
        blocking(move || Ok(std::fs::symlink_metadata(path)?.modified()?))
            .await
            .ok()
    }

    async fn upload_start(&self) -> Result<String> {
        self.uploads.start().await
    }

    async fn upload_status(&self, id: &str) -> Result<u64> {
        let h = self.uploads.get(id).await?;
        let up = h.lock().await;
        Ok(up.len)
    }

    async fn upload_append(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64> {
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

    async fn upload_finish(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: Body<'_>,
        d: &Digest,
    ) -> Result<()> {
        self.upload_append(id, range_start, body).await?;
        let h = self.uploads.get(id).await?;
        let up = h.lock().await;
        let res = self
            .files
            .commit_file(up.path.clone(), up.hasher.clone().finish(), d)
            .await;
        // Success renamed the file; a digest mismatch removed it. Either way the session is over.
        if !matches!(res, Err(Error::Io(_)) | Err(Error::NoSpace)) {
            self.uploads.forget(&up.id);
        }
        res
    }

    async fn upload_cancel(&self, id: &str) -> Result<()> {
        let h = self.uploads.get(id).await?;
        let up = h.lock().await;
        let _ = tokio::fs::remove_file(&up.path).await;
        self.uploads.forget(&up.id);
        Ok(())
    }

    fn open_uploads(&self) -> usize {
        self.uploads.open_count()
    }

    async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let files = self.files.clone();
        let gone = blocking(move || {
            // Temp files a dead writer left, by the same age (a start keeps young ones: they may
            // be another process's writes in progress).
            write::remove_older_than(&files.tmp_dir(), max_age);
            let now = SystemTime::now();
            let mut gone = Vec::new();
            let Ok(rd) = std::fs::read_dir(files.root.join(".ferry/uploads")) else {
                return Ok(gone);
            };
            for e in rd.flatten() {
                let old = write::age_of(&e, now).is_some_and(|age| age >= max_age);
                if old && std::fs::remove_file(e.path()).is_ok() {
                    gone.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            Ok(gone)
        })
        .await?;
        for id in &gone {
            self.uploads.forget(id);
        }
        Ok(gone.len())
    }

    async fn promise(&self, d: &Digest) -> Result<Option<u64>> {
        let files = &self.files;
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
                    let _ = f.set_modified(SystemTime::now());
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

    async fn note_read(&self, d: &Digest) {
        let path = self.files.read_marker(d);
        let _ = blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = read::open_private(&path, true, false)?;
            Ok(f.set_modified(SystemTime::now())?)
        })
        .await;
    }

    async fn last_read(&self, d: &Digest) -> Option<SystemTime> {
        let path = self.files.read_marker(d);
        blocking(move || Ok(std::fs::metadata(path)?.modified()?))
            .await
            .ok()
    }

    async fn reads(&self) -> HashMap<Digest, SystemTime> {
        let dir = self.files.root.join(".ferry/reads");
        blocking(move || {
            let mut out = HashMap::new();
            let Ok(rd) = std::fs::read_dir(dir) else {
                return Ok(out);
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let (Some(d), Ok(m)) = (name.to_str().and_then(flat_digest), e.metadata()) else {
                    continue;
                };
                if let Ok(t) = m.modified() {
                    out.insert(d, t);
                }
            }
            Ok(out)
        })
        .await
        .unwrap_or_default()
    }

    async fn write_state(&self, name: &str, bytes: Bytes) -> Result<()> {
        let (tmp, path) = (
            self.files.tmp_dir(),
            self.files.root.join(".ferry").join(name),
        );
        blocking(move || Ok(write::write_atomic(&tmp, &path, &bytes)?)).await
    }

    async fn write_state_with(&self, name: &str, fill: Fill<'_>) -> Result<()> {
        // The caller's writer runs here, on the caller's thread: a blocking call by nature.
        Ok(write::write_atomic_with(
            &self.files.tmp_dir(),
            &self.files.root.join(".ferry").join(name),
            fill,
        )?)
    }

    async fn open_state(&self, name: &str, limit: u64) -> Result<Option<Box<dyn io::Read + Send>>> {
        let (canon, path) = (
            self.files.canon.clone(),
            self.files.root.join(".ferry").join(name),
        );
        let found = blocking(move || Ok(read::open_regular(&canon, &path)?)).await?;
        match found {
            read::Found::File(f, len) if len <= limit => Ok(Some(Box::new(
                io::BufReader::with_capacity(64 << 10, io::Read::take(f, limit)),
            ))),
            read::Found::File(_, len) => Err(Error::Layout(format!(
                ".ferry/{name} is {len} bytes, more than the {limit} allowed"
            ))),
            read::Found::Missing => Ok(None),
            read::Found::Refused(why) => Err(Error::Layout(format!(".ferry/{name} is {why}"))),
        }
    }

    async fn read_state(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.files.root.join(".ferry").join(name);
        let files = self.files.clone();
        blocking(move || files.read_layout_file(&path, limit)).await
    }

    async fn state_and_time(&self, name: &str, limit: u64) -> Option<(Vec<u8>, SystemTime)> {
        let (files, path) = (
            self.files.clone(),
            self.files.root.join(".ferry").join(name),
        );
        blocking(move || {
            let Some(bytes) = files.read_layout_file(&path, limit)? else {
                return Ok(None);
            };
            Ok(Some((bytes, std::fs::metadata(&path)?.modified()?)))
        })
        .await
        .ok()?
    }

    async fn has_link(&self, rel: &str) -> Result<bool> {
        // One stat, on the calling thread (as the records' own stat is): a hop to the
        // blocking pool would cost more than the call, on every blob HEAD and GET.
        match std::fs::symlink_metadata(self.files.root.join(rel)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn add_links(&self, dir: &str, ds: &[Digest], durable: bool) -> Result<()> {
        let (root, dir) = (self.files.root.clone(), self.files.root.join(dir));
        let ds = ds.to_vec();
        blocking(move || Ok(holdings::link_files(&root, &dir, &ds, durable)?)).await
    }

    async fn remove_link(&self, rel: &str) -> Result<bool> {
        let path = self.files.root.join(rel);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    write::fsync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn link_repos(&self) -> Result<Vec<String>> {
        let top = self.files.root.join(holdings::LINKS);
        blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![top.clone()];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                for e in rd.flatten() {
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    if e.file_name() == "_" {
                        if let Ok(rel) = dir.strip_prefix(&top) {
                            out.push(rel.to_string_lossy().into_owned());
                        }
                    } else {
                        stack.push(e.path());
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn links_marked(&self) -> Result<bool> {
        let marker = self.files.root.join(holdings::MARKER);
        blocking(move || Ok(marker.exists())).await
    }

    async fn give_links(&self, per_repo: HashMap<String, Vec<Digest>>) -> Result<()> {
        let files = self.files.clone();
        blocking(move || {
            for (repo, mut ds) in per_repo {
                ds.sort();
                ds.dedup();
                holdings::link_files(
                    &files.root,
                    &files.root.join(holdings::repo_dir(&repo)),
                    &ds,
                    true,
                )?;
            }
            write::write_atomic(&files.tmp_dir(), &files.root.join(holdings::MARKER), b"1\n")?;
            Ok(())
        })
        .await
    }
}
