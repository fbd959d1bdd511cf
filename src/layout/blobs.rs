//! The store's blobs: sizes, reads, listing, what GC and verify do to one blob, serving a
//! read-only store's blobs only once they hash to their names, and writing verified blobs.

use super::backend::Opener;
use super::*;

impl Store {
    /// Size of a stored blob, or `None`.
    /// Only a regular file counts (see [`read::open_regular`]): a FIFO or a symlink leaving the
    /// layout under a blob's name is no blob.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        self.backend.blob_size(d).await
    }

    /// Why the file under a blob's name is not content (a FIFO, a symlink leaving the layout…),
    /// or `None` when it is a readable blob or absent. Looks, never opens.
    pub fn blob_refusal(&self, d: &Digest) -> Option<String> {
        self.backend.blob_refusal(d)
    }

    /// A whole manifest (or another small blob), refused past `limit` bytes (a directory reads
    /// it through [`read::read_regular`]).
    pub async fn read_small(&self, d: &Digest, limit: u64) -> Result<Bytes> {
        self.small_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.backend.read_small(d, limit).await
    }

    /// How many whole small objects were read so far (GC's and verify's walks read each
    /// manifest once; tests hold them to it).
    pub fn small_reads(&self) -> u64 {
        self.small_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A stored manifest's bytes (at most [`media::MAX_MANIFEST_BYTES`]).
    pub async fn read_manifest(&self, d: &Digest) -> Result<Bytes> {
        self.backend.read_small(d, media::MAX_MANIFEST_BYTES).await
    }

    /// Every name under `blobs/` that is a digest, with its size and when it was written.
    pub async fn list_blobs(&self) -> Result<Vec<BlobEntry>> {
        self.backend.list_blobs().await
    }

    /// Whether blob downloads can be handed to the store itself ([`Store::blob_url`]).
    pub fn can_redirect(&self) -> bool {
        self.backend.can_redirect()
    }

    /// A URL from which a client may GET a stored blob directly for `ttl` (a presigned URL of
    /// the object store), or `None` when this store has no such thing (a directory).
    pub async fn blob_url(&self, d: &Digest, ttl: std::time::Duration) -> Result<Option<String>> {
        self.backend.blob_url(d, ttl).await
    }

    /// Every blob that can be read as content (a directory's FIFO or symlink out of the layout
    /// under a blob's name is not).
    pub async fn list_content(&self) -> Result<Vec<Digest>> {
        self.backend.list_content().await
    }

    /// Re-hash one blob.
    pub async fn rehash(&self, d: &Digest) -> Checked {
        match self.backend.rehash(d).await {
            Ok(c) => c,
            Err(e) => Checked::Refused(format!("unreadable ({e})")),
        }
    }

    /// Move a corrupt blob aside to `.ferry/quarantine/`.
    pub async fn quarantine(&self, d: &Digest) -> Result<()> {
        self.backend.quarantine(d).await
    }

    /// GC's sweep of one unreferenced blob: removed unless it is younger than `grace` or was
    /// promised to a client within it — checked again at the moment of removal, ordered against
    /// promises (a directory: `.ferry/gc.lock`, exclusive here and shared by promises; a
    /// bucket: the marker protocol of [`bucket`]). Returns the bytes freed, or `None` if kept.
    /// The links of what is swept go with it, in every repository of `repos`.
    ///
    /// `marked_at` is when GC last read the records: a blob written or promised less than `grace`
    /// before it may belong to a manifest recorded since, and is kept.
    pub async fn sweep_blob(
        &self,
        d: &Digest,
        grace: std::time::Duration,
        marked_at: std::time::SystemTime,
        repos: &[String],
    ) -> Result<Option<u64>> {
        let repos = if self.keeps_links() { repos } else { &[] };
        self.backend.sweep(d, grace, marked_at, repos).await
    }

    /// What GC does after a sweep: promise records past the grace period protect nothing, and
    /// read markers of manifests no longer stored (left by a ferry before sweeps removed them,
    /// or by a sweep interrupted between the two) go.
    pub async fn after_sweep(&self, grace: std::time::Duration) -> Result<()> {
        self.backend.after_sweep(grace).await
    }

    /// Blobs and their bytes, for `/metrics` (a listing: callers cache it).
    pub async fn stored(&self) -> (u64, u64) {
        self.list_blobs()
            .await
            .map(|v| (v.len() as u64, v.iter().map(|e| e.size).sum()))
            .unwrap_or((0, 0))
    }

    /// Can the store be written (or, read-only, read) right now? (`/readyz`)
    pub async fn ready(&self) -> bool {
        self.backend.ready(self.read_only).await
    }

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
        match self.backend.rehash(d).await? {
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

    /// Open a blob for reading. A directory's length is taken from the open file, so a
    /// concurrent delete cannot make the two disagree; a file that is not content is
    /// [`Error::BlobUnreadable`], named.
    pub async fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        self.backend.open_blob(d).await
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
        F: FnOnce(u64) -> Fut + Send,
        Fut: std::future::Future<Output = Result<(S, bool)>> + Send,
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        use futures_util::{FutureExt, StreamExt};
        self.ensure_writable()?;
        let open: Opener<'_> = Box::new(move |offset| {
            async move {
                let (body, partial) = open(offset).await?;
                let body = body.map(|r| r.map_err(|e| io::Error::other(e.to_string())));
                Ok((body.boxed(), partial))
            }
            .boxed()
        });
        self.backend.import_blob(d, size, open).await
    }
}
