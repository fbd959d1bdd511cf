//! An `oci-archive:` served read-only as a [`Backend`] of the store: its members read by offset,
//! its index fixed when it was opened. Every write is refused.

use std::collections::HashMap;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::backend::{
    blocking, checked, read_only_archive, Backend, Body, Fill, Opener, RecordsChange,
};
use super::index::Index;
use super::{BlobEntry, BlobReader, Checked, Imported, Source};
use crate::carry::archive::Archive;
use crate::error::{Error, Result};
use crate::vocab::digest::Digest;

pub(super) struct ArchiveBackend {
    pub(super) archive: Arc<Archive>,
    pub(super) index: Arc<Index>,
}

#[async_trait::async_trait]
impl Backend for ArchiveBackend {
    fn describe(&self) -> String {
        format!("oci-archive:{}", self.archive.describe())
    }

    async fn records(&self) -> Result<Arc<Index>> {
        Ok(self.index.clone())
    }

    async fn update_records(&self, _change: RecordsChange) -> Result<()> {
        Err(read_only_archive())
    }

    async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        Ok(self.archive.blob_size(d))
    }

    async fn read_small(&self, d: &Digest, limit: u64) -> Result<Bytes> {
        let (a, d) = (self.archive.clone(), d.clone());
        blocking(move || a.read_blob_small(&d, limit).map(Bytes::from)).await
    }

    async fn list_blobs(&self) -> Result<Vec<BlobEntry>> {
        let modified = self.archive.modified();
        Ok(self
            .archive
            .blobs()
            .into_iter()
            .map(|(digest, size)| BlobEntry {
                digest,
                size,
                modified,
                not_content: None,
            })
            .collect())
    }

    async fn list_content(&self) -> Result<Vec<Digest>> {
        Ok(self.archive.digests())
    }

    async fn rehash(&self, d: &Digest) -> Result<Checked> {
        let (a, d2) = (self.archive.clone(), d.clone());
        // A member that cannot be read is refused, never an error of the store.
        Ok(checked(d, blocking(move || a.hash_blob(&d2)).await)
            .unwrap_or_else(|e| Checked::Refused(format!("unreadable ({e})"))))
    }

    async fn quarantine(&self, _d: &Digest) -> Result<()> {
        Err(read_only_archive())
    }

    async fn sweep(
        &self,
        _d: &Digest,
        _grace: Duration,
        _marked_at: SystemTime,
        _repos: &[String],
    ) -> Result<Option<u64>> {
        Err(read_only_archive())
    }

    async fn after_sweep(&self, _grace: Duration) -> Result<()> {
        Ok(())
    }

    /// Read whole and checked when opened; it cannot change under a read-only server.
    async fn ready(&self, _read_only: bool) -> bool {
        true
    }

    async fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        let len = self
            .archive
            .blob_size(d)
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
        Ok(BlobReader {
            len,
            source: Source::Archive(self.archive.clone(), d.clone()),
        })
    }

    async fn import_blob(&self, _d: &Digest, _size: u64, _open: Opener<'_>) -> Result<Imported> {
        Err(read_only_archive())
    }

    async fn put_small_blob(&self, _d: &Digest, _bytes: Bytes) -> Result<()> {
        Err(read_only_archive())
    }

    async fn adopt_blob(
        &self,
        _path: PathBuf,
        _computed: Digest,
        _expected: &Digest,
    ) -> Result<()> {
        Err(read_only_archive())
    }

    async fn stored_at(&self, _d: &Digest) -> Option<SystemTime> {
        self.archive.modified()
    }

    async fn upload_start(&self) -> Result<String> {
        Err(read_only_archive())
    }

    async fn upload_status(&self, _id: &str) -> Result<u64> {
        Err(Error::BlobUploadUnknown)
    }

    async fn upload_append(
        &self,
        _id: &str,
        _range_start: Option<u64>,
        _body: Body<'_>,
    ) -> Result<u64> {
        Err(read_only_archive())
    }

    async fn upload_finish(
        &self,
        _id: &str,
        _range_start: Option<u64>,
        _body: Body<'_>,
        _d: &Digest,
    ) -> Result<()> {
        Err(read_only_archive())
    }

    async fn upload_cancel(&self, _id: &str) -> Result<()> {
        Err(read_only_archive())
    }

    fn open_uploads(&self) -> usize {
        0
    }

    async fn expire_uploads(&self, _max_age: Duration) -> Result<usize> {
        Ok(0)
    }

    async fn promise(&self, d: &Digest) -> Result<Option<u64>> {
        Ok(self.archive.blob_size(d))
    }

    async fn note_read(&self, _d: &Digest) {}

    async fn last_read(&self, _d: &Digest) -> Option<SystemTime> {
        None
    }

    async fn reads(&self) -> HashMap<Digest, SystemTime> {
        HashMap::new()
    }

    async fn write_state(&self, _name: &str, _bytes: Bytes) -> Result<()> {
        Err(read_only_archive())
    }

    async fn write_state_with(&self, _name: &str, _fill: Fill<'_>) -> Result<()> {
        Err(read_only_archive())
    }

    async fn read_state(&self, _name: &str, _limit: u64) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    async fn state_and_time(&self, _name: &str, _limit: u64) -> Option<(Vec<u8>, SystemTime)> {
        None
    }

    async fn has_link(&self, _rel: &str) -> Result<bool> {
        Ok(false)
    }

    async fn add_links(&self, _dir: &str, _ds: &[Digest], _durable: bool) -> Result<()> {
        Ok(())
    }

    async fn remove_link(&self, _rel: &str) -> Result<bool> {
        Ok(false)
    }

    async fn link_repos(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn links_marked(&self) -> Result<bool> {
        Ok(false)
    }

    async fn give_links(&self, _per_repo: HashMap<String, Vec<Digest>>) -> Result<()> {
        Ok(())
    }
}
