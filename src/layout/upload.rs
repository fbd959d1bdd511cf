//! Upload sessions: one file per session under `.ferry/uploads/<uuid>`, plus the running hash in
//! memory so that each chunk is hashed once, as it streams in.
//!
//! After a restart the in-memory state is gone; a session whose file is still there is recovered
//! on first use by re-hashing the file (the only time its bytes are read twice).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::vocab::digest::{Algorithm, Hasher};

/// The state of one upload session. Invariant: `hasher` has seen exactly the `len` bytes of the file.
pub struct Upload {
    pub id: String,
    pub path: PathBuf,
    pub len: u64,
    pub hasher: Hasher,
}

pub type UploadHandle = Arc<tokio::sync::Mutex<Upload>>;

pub struct Uploads {
    dir: PathBuf,
    sessions: Mutex<HashMap<String, UploadHandle>>,
}

/// Session ids are UUIDs; anything else cannot name a session (and so cannot name a path).
fn valid_id(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

/// `id` if it can name a session, else [`Error::BlobUploadUnknown`].
pub fn checked_id(id: &str) -> Result<&str> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(Error::BlobUploadUnknown)
    }
}

impl Uploads {
    pub fn new(dir: PathBuf) -> Uploads {
        Uploads {
            dir,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, UploadHandle>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn start(&self) -> Result<String> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let path = self.dir.join(&id);
        tokio::fs::File::create(&path).await?;
        let up = Upload {
            id: id.clone(),
            path,
            len: 0,
            hasher: Algorithm::Sha256.hasher(),
        };
        self.sessions()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(up)));
        Ok(id)
    }

    pub async fn get(&self, id: &str) -> Result<UploadHandle> {
        if !valid_id(id) {
            return Err(Error::BlobUploadUnknown);
        }
        if let Some(h) = self.sessions().get(id) {
            return Ok(h.clone());
        }
        let path = self.dir.join(id);
        let recovered = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Upload>> {
            // Never opened for reading unless it is a plain file (a FIFO here would block).
            let f = match super::read::open_private(&path, false, true) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let (hasher, len) = crate::vocab::digest::hash_reader(f, Algorithm::Sha256)?;
            let id = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Some(Upload {
                id,
                path,
                len,
                hasher,
            }))
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))??;
        let up = recovered.ok_or(Error::BlobUploadUnknown)?;
        let handle = Arc::new(tokio::sync::Mutex::new(up));
        Ok(self
            .sessions()
            .entry(id.to_owned())
            .or_insert(handle)
            .clone())
    }

    /// Forget a session (its file was renamed into place or is removed by the caller).
    pub fn forget(&self, id: &str) {
        self.sessions().remove(id);
    }

    pub fn open_count(&self) -> usize {
        self.sessions().len()
    }
}

// ------------------------------------------------------------------ the store's sessions

use super::*;

/// A client's body as a backend takes it.
fn body<'a, S, E>(body: S) -> super::backend::Body<'a>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send + 'a,
    E: std::fmt::Display,
{
    use futures_util::StreamExt;
    body.map(|r| r.map_err(|e| io::Error::other(e.to_string())))
        .boxed()
}

impl Store {
    pub async fn upload_start(&self) -> Result<String> {
        self.ensure_writable()?;
        self.backend.upload_start().await
    }

    /// Bytes received so far by a session.
    pub async fn upload_status(&self, id: &str) -> Result<u64> {
        self.backend.upload_status(id).await
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
        self.backend
            .upload_append(id, range_start, self::body(body))
            .await
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
        self.ensure_writable()?;
        self.backend
            .upload_finish(id, range_start, self::body(body), digest)
            .await
    }

    pub async fn upload_cancel(&self, id: &str) -> Result<()> {
        self.ensure_writable()?;
        self.backend.upload_cancel(id).await
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
        self.backend.open_uploads()
    }
}
