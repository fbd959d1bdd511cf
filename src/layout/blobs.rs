//! The store's blobs: sizes, reads, listing, what GC and verify do to one blob, serving a
//! read-only store's blobs only once they hash to their names, and writing verified blobs.

use super::*;

impl Store {
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

    /// Open a blob for reading. A directory's length is taken from the open file, so a
    /// concurrent delete cannot make the two disagree; a file that is not content is
    /// [`Error::BlobUnreadable`], named.
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
    pub(super) async fn commit_file(
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
}
