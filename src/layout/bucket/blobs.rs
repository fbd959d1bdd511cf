//! A bucket's blobs: listing, promises and sweeps (the marker protocol of the module docs),
//! quarantine, small objects and manifests' read markers.

use super::*;

impl Bucket {
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
    pub(super) async fn sweeping(&self, d: &Digest) -> Result<bool> {
        Ok(self
            .head(&format!(".ferry/sweeping/{}", flat(d)))
            .await?
            .is_some_and(|m| age_of(&m) < STALE_MARKER))
    }

    /// Publish a verified blob: promise it, wait out a sweep of the same digest, then `publish`.
    pub(super) async fn publish_blob<F, Fut>(&self, d: &Digest, publish: F) -> Result<()>
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
}
