//! What the store keeps beside the content: promises to clients (against GC), manifests' read
//! markers (retention), ferry's own state files, GC's last report, disk space.

use super::*;

impl Store {
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
}
