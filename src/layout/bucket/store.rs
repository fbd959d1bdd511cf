//! The bucket as a [`Backend`] of the store: each operation in the bucket's own terms (objects,
//! the marker protocol of the module docs, multipart sessions).

use std::path::PathBuf;

use super::*;
use crate::layout::backend::{
    checked, corrupt, flat_digest, Backend, Body, Fill, Opener, RecordsChange,
};
use crate::layout::index::Index;
use crate::layout::{holdings, write, BlobEntry, BlobReader, Checked, Imported, Source};

pub(crate) struct BucketBackend {
    pub(crate) b: Arc<Bucket>,
    /// The records as last read: a manifest's recorded media type never changes, so a lookup
    /// by digest that finds it here needs no listing.
    last_records: Mutex<Option<Arc<Index>>>,
}

impl BucketBackend {
    pub(crate) fn new(b: Bucket) -> BucketBackend {
        BucketBackend {
            b: Arc::new(b),
            last_records: Mutex::new(None),
        }
    }
}

impl BucketBackend {
    /// A whole blob through a session of its own (multipart, verified, then copied into place);
    /// the session goes if anything fails.
    async fn put_stream<S, E>(&self, body: S, d: &Digest) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        self.b.upload_start(&id).await?;
        let res = self.b.upload_finish(&id, None, body, d).await;
        if res.is_err() {
            let _ = self.b.upload_cancel(&id).await;
        }
        res
    }
}

#[async_trait::async_trait]
impl Backend for BucketBackend {
    fn describe(&self) -> String {
        self.b.describe()
    }

    async fn records(&self) -> Result<Arc<Index>> {
        let idx = Arc::new(Index::new(self.b.load_index().await?));
        *lock(&self.last_records) = Some(idx.clone());
        Ok(idx)
    }

    async fn update_records(&self, change: RecordsChange) -> Result<()> {
        let before = self.b.load_index().await?;
        let mut after = before.clone();
        if change(&mut after)? {
            self.b.write_index_diff(&before, &after).await?;
        }
        Ok(())
    }

    /// A tag is one object, read fresh: a tag another replica just published is served on the
    /// next request, without listing every record.
    async fn tag(&self, repo: &str, tag: &str) -> Result<Option<Descriptor>> {
        self.b.tag_record(repo, tag).await
    }

    fn known_media_type(&self, repo: &str, d: &Digest) -> Option<String> {
        lock(&self.last_records)
            .as_ref()
            .and_then(|i| i.by_digest(repo, d).map(|x| x.media_type.clone()))
    }

    async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        self.b.blob_size(d).await
    }

    async fn read_small(&self, d: &Digest, limit: u64) -> Result<Bytes> {
        self.b
            .get_small(&blob_key(d), limit)
            .await?
            .ok_or_else(|| Error::BlobUnknown(d.clone()))
    }

    async fn list_blobs(&self) -> Result<Vec<BlobEntry>> {
        Ok(self
            .b
            .list_blobs()
            .await?
            .into_iter()
            .map(|(digest, size, modified)| BlobEntry {
                digest,
                size,
                modified: Some(modified),
                not_content: None,
            })
            .collect())
    }

    async fn list_content(&self) -> Result<Vec<Digest>> {
        Ok(self
            .b
            .list_blobs()
            .await?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }

    fn can_redirect(&self) -> bool {
        true
    }

    async fn blob_url(&self, d: &Digest, ttl: Duration) -> Result<Option<String>> {
        if self.b.blob_size(d).await?.is_none() {
            return Err(Error::BlobUnknown(d.clone()));
        }
        Ok(Some(self.b.presigned_blob_url(d, ttl).await?))
    }

    async fn rehash(&self, d: &Digest) -> Result<Checked> {
        checked(d, self.b.hash_blob(d, d.algorithm()).await)
    }

    async fn quarantine(&self, d: &Digest) -> Result<()> {
        self.b.quarantine(d).await
    }

    async fn sweep(
        &self,
        d: &Digest,
        grace: Duration,
        marked_at: SystemTime,
        repos: &[String],
    ) -> Result<Option<u64>> {
        let swept = self.b.sweep(d, grace, marked_at).await?;
        if swept.is_some() {
            // The repositories' links to it go after it (a directory removes them first, under
            // its lock; a bucket has no lock, and a link without its blob only answers 404).
            let name = flat(d);
            for r in repos {
                self.b
                    .delete(&format!("{}{name}", holdings::repo_dir(r)))
                    .await?;
            }
        }
        Ok(swept)
    }

    async fn after_sweep(&self, grace: Duration) -> Result<()> {
        self.b.expire_promises(grace).await?;
        Ok(())
    }

    async fn ready(&self, _read_only: bool) -> bool {
        self.b.head("oci-layout").await.is_ok_and(|m| m.is_some())
    }

    async fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        let len = self
            .b
            .blob_size(d)
            .await?
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
        Ok(BlobReader {
            len,
            source: Source::Object(self.b.clone(), blob_key(d)),
        })
    }

    async fn import_blob(&self, d: &Digest, size: u64, open: Opener<'_>) -> Result<Imported> {
        // A bucket keeps no partial file: an interrupted import starts again (its whole parts
        // are not yet reused across runs).
        let (body, _) = open(0).await?;
        self.put_stream(write::at_most(body, size), d)
            .await
            .map_err(corrupt(d))?;
        Ok(Imported {
            transferred: size,
            resumed_from: 0,
        })
    }

    async fn put_small_blob(&self, d: &Digest, bytes: Bytes) -> Result<()> {
        self.b.put_blob_bytes(d, bytes).await
    }

    async fn adopt_blob(&self, path: PathBuf, computed: Digest, expected: &Digest) -> Result<()> {
        if &computed != expected {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Error::DigestInvalid(format!(
                "expected {expected}, content hashes to {computed}"
            )));
        }
        let res = match tokio::fs::File::open(&path).await {
            Ok(f) => {
                let body = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                self.put_stream(body, expected).await
            }
            Err(e) => Err(e.into()),
        };
        let _ = tokio::fs::remove_file(&path).await;
        res
    }

    async fn stored_at(&self, d: &Digest) -> Option<SystemTime> {
        let m = self.b.head(&blob_key(d)).await.ok()??;
        Some(SystemTime::from(m.last_modified))
    }

    async fn upload_start(&self) -> Result<String> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        self.b.upload_start(&id).await?;
        Ok(id)
    }

    async fn upload_status(&self, id: &str) -> Result<u64> {
        self.b
            .upload_len(crate::layout::upload::checked_id(id)?)
            .await
    }

    async fn upload_append(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64> {
        self.b
            .upload_append(crate::layout::upload::checked_id(id)?, range_start, body)
            .await
    }

    async fn upload_finish(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: Body<'_>,
        d: &Digest,
    ) -> Result<()> {
        self.b
            .upload_finish(crate::layout::upload::checked_id(id)?, range_start, body, d)
            .await
    }

    async fn upload_cancel(&self, id: &str) -> Result<()> {
        self.b
            .upload_cancel(crate::layout::upload::checked_id(id)?)
            .await
    }

    fn open_uploads(&self) -> usize {
        self.b.sessions_here()
    }

    async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        self.b.expire_uploads(max_age).await
    }

    async fn promise(&self, d: &Digest) -> Result<Option<u64>> {
        self.b.promise(d).await
    }

    async fn note_read(&self, d: &Digest) {
        let _ = self.b.note_read(d).await;
    }

    async fn last_read(&self, d: &Digest) -> Option<SystemTime> {
        self.b.last_read(d).await
    }

    async fn reads(&self) -> HashMap<Digest, SystemTime> {
        let mut out = HashMap::new();
        if let Ok(list) = self.b.list(".ferry/reads/").await {
            for (key, meta) in list {
                let name = key.rsplit('/').next().unwrap_or("");
                if let Some(d) = flat_digest(name) {
                    out.insert(d, SystemTime::from(meta.last_modified));
                }
            }
        }
        out
    }

    async fn write_state(&self, name: &str, bytes: Bytes) -> Result<()> {
        self.b.put(&format!(".ferry/{name}"), bytes).await
    }

    /// An object is one request: the bytes are gathered first.
    async fn write_state_with(&self, name: &str, fill: Fill<'_>) -> Result<()> {
        let mut buf = Vec::new();
        fill(&mut buf)?;
        self.b
            .put(&format!(".ferry/{name}"), Bytes::from(buf))
            .await
    }

    async fn read_state(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .b
            .get_small(&format!(".ferry/{name}"), limit)
            .await?
            .map(|b| b.to_vec()))
    }

    async fn state_and_time(&self, name: &str, limit: u64) -> Option<(Vec<u8>, SystemTime)> {
        let key = format!(".ferry/{name}");
        let meta = self.b.head(&key).await.ok()??;
        let bytes = self.b.get_small(&key, limit).await.ok()??;
        Some((bytes.to_vec(), SystemTime::from(meta.last_modified)))
    }

    async fn has_link(&self, rel: &str) -> Result<bool> {
        Ok(self.b.head(rel).await?.is_some())
    }

    async fn add_links(&self, dir: &str, ds: &[Digest], _durable: bool) -> Result<()> {
        let names: Vec<String> = ds.iter().map(flat).collect();
        let results: Vec<Result<()>> = futures_util::stream::iter(names)
            .map(|n| {
                let (b, key) = (self.b.clone(), format!("{dir}{n}"));
                async move { b.put(&key, Bytes::new()).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn remove_link(&self, rel: &str) -> Result<bool> {
        if self.b.head(rel).await?.is_none() {
            return Ok(false);
        }
        self.b.delete(rel).await?;
        Ok(true)
    }

    async fn link_repos(&self) -> Result<Vec<String>> {
        let keys = self.b.list(holdings::LINKS).await?;
        let mut out: Vec<String> = keys
            .iter()
            .filter_map(|(k, _)| {
                holdings::repo_of(k.strip_prefix(holdings::LINKS)?).map(str::to_owned)
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn links_marked(&self) -> Result<bool> {
        Ok(self.b.head(holdings::MARKER).await?.is_some())
    }

    async fn give_links(&self, per_repo: HashMap<String, Vec<Digest>>) -> Result<()> {
        for (repo, ds) in per_repo {
            for d in ds {
                self.b
                    .put(
                        &format!("{}{}", holdings::repo_dir(&repo), flat(&d)),
                        Bytes::new(),
                    )
                    .await?;
            }
        }
        self.b
            .put(holdings::MARKER, Bytes::from_static(b"1\n"))
            .await
    }
}
