//! What the store keeps beside the content: promises to clients (against GC), manifests' read
//! markers (retention), ferry's own state files, GC's last report, disk space.

use super::backend::Fill;
use super::*;

impl Store {
    /// Promise a blob to a client (HEAD, mount): check that it exists and make it young for GC,
    /// ordered against GC's sweep of it (a directory: a shared lock on `.ferry/gc.lock`, which
    /// the sweep takes exclusively per victim; a bucket: the marker protocol of [`bucket`]).
    /// Either the sweep removed the blob first (and the answer is "unknown"), or the blob is now
    /// younger than the grace period and the sweep keeps it — so a client that was told "it
    /// exists" can reference it.
    pub async fn promise_blob(&self, d: &Digest) -> Result<Option<u64>> {
        if self.read_only {
            return self.blob_size(d).await;
        }
        self.backend.promise(d).await
    }

    /// Record that a manifest was read (retention's "read in the last D days"). Cheap: the
    /// marker's time, refreshed at most once an hour per manifest, never index.json.
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
        self.backend.note_read(d).await
    }

    /// When a manifest was last read, if ever (through this data directory's servers).
    pub async fn last_read(&self, d: &Digest) -> Option<std::time::SystemTime> {
        self.backend.last_read(d).await
    }

    /// Every manifest's last read at once (the web page's "last read" column): one listing of
    /// the read markers instead of one stat or HEAD per manifest.
    pub async fn reads(&self) -> std::collections::HashMap<Digest, std::time::SystemTime> {
        self.backend.reads().await
    }

    /// Write one of ferry's own small state files (`.ferry/NAME` in a directory, the same key in
    /// a bucket). Allowed on a read-only store: what a served USB disk records (its misses) is
    /// not registry content.
    pub async fn write_state(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.backend
            .write_state(name, Bytes::copy_from_slice(bytes))
            .await
    }

    /// [`Store::write_state`] with the bytes written by `fill`: streamed to a directory's file
    /// through a small buffer (a bucket's object is one request, so it is gathered first).
    /// `fill` runs on the caller's thread.
    pub async fn write_state_with(&self, name: &str, fill: Fill<'_>) -> Result<()> {
        self.backend.write_state_with(name, fill).await
    }

    /// A state file as a reader (`None` if there is none), at most `limit` bytes: a directory's
    /// file is read as it is parsed, never whole.
    pub async fn open_state(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<Option<Box<dyn io::Read + Send>>> {
        self.backend.open_state(name, limit).await
    }

    /// Read a state file written by [`Store::write_state`] (`None` if there is none).
    pub async fn read_state(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        self.backend.read_state(name, limit).await
    }

    /// Where a blob being fetched from elsewhere is spooled while clients read it: the store's
    /// own temp directory (so it is renamed into place, never copied), or the system's for a
    /// bucket. Cleared at start like every temp file.
    pub fn spool_dir(&self) -> Result<PathBuf> {
        self.ensure_writable()?;
        Ok(self.backend.spool_dir())
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
        self.backend.adopt_blob(path, computed, expected).await
    }

    /// Keep the report of the last collection that removed something (or not), for the web page.
    /// Best effort: a GC that cannot write this has still done its work.
    pub async fn record_gc(&self, report: &[u8]) {
        if self.read_only {
            return;
        }
        if let Err(e) = self.write_state("last-gc.json", report).await {
            tracing::warn!(error = %e, "recording the GC report failed");
        }
    }

    /// The report [`Store::record_gc`] kept, and when it was written.
    pub async fn last_gc(&self) -> Option<(Vec<u8>, std::time::SystemTime)> {
        self.backend.state_and_time("last-gc.json", 64 * 1024).await
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
    pub async fn stored_at(&self, d: &Digest) -> Option<std::time::SystemTime> {
        self.backend.stored_at(d).await
    }

    /// Remove upload sessions idle for longer than `max_age` (also those left by a crash).
    pub async fn expire_uploads(&self, max_age: std::time::Duration) -> Result<usize> {
        self.backend.expire_uploads(max_age).await
    }
}
