//! The directory backend: an OCI image layout on a local disk, its paths and the readers that
//! need nothing more than those.

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
