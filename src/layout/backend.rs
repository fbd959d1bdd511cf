//! What differs between the places a store keeps its bytes — a directory (`dir.rs`), a bucket
//! ([`super::bucket`]) and a read-only archive (`archive.rs`) — behind one trait, in the manner
//! of `object_store`'s `ObjectStore`: [`super::Store`] holds one `Arc<dyn Backend>` and keeps the
//! registry's rules once; nothing above it knows which backend it has.
//!
//! One calling convention: every operation is async. Blocking callers (GC, verify, retention,
//! the page's workers) go through one adapter, [`wait`], which runs a directory's or an
//! archive's operation inline on the calling thread (no hop to the blocking pool: [`blocking`]
//! sees the adapter and runs its work there) and waits on the runtime for a bucket's.
//!
//! A backend answers for its own storage only; what a registry promises (read-only refusals
//! before any write, the repositories' holdings, verified-before-visible, the order of
//! publication) is the Store's.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::index::{Descriptor, Index, IndexFile};
use super::{BlobEntry, BlobReader, Checked, Imported};
use crate::error::{Error, Result};
use crate::vocab::digest::Digest;

/// A body handed to a backend: bytes, or the reason the sender failed.
pub type Body<'a> = BoxStream<'a, io::Result<Bytes>>;

/// A change to the records: returns whether it changed anything (then it is written).
pub type RecordsChange = Box<dyn FnOnce(&mut IndexFile) -> Result<bool> + Send>;

/// Opens an import's source at an offset: the body from there, and whether the offset was
/// honoured (else the body is the whole blob).
pub type Opener<'a> = Box<dyn FnOnce(u64) -> BoxFuture<'a, Result<(Body<'a>, bool)>> + Send + 'a>;

/// Fills a state file through a writer.
pub type Fill<'a> = &'a mut (dyn FnMut(&mut dyn io::Write) -> io::Result<()> + Send);

#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync {
    /// Where this store is, for messages.
    fn describe(&self) -> String;
    /// The directory, for a directory store.
    fn root(&self) -> Option<&Path> {
        None
    }

    // ------------------------------------------------------------ records

    /// The current records.
    async fn records(&self) -> Result<Arc<Index>>;
    /// Read-modify-write the records, so that concurrent writers of other tags are never undone.
    async fn update_records(&self, change: RecordsChange) -> Result<()>;
    /// One tag's record, read as fresh as the backend can.
    async fn tag(&self, repo: &str, tag: &str) -> Result<Option<Descriptor>> {
        Ok(self.records().await?.tag(repo, tag).cloned())
    }
    /// A manifest's media type from records already read, when that needs no request.
    fn known_media_type(&self, _repo: &str, _d: &Digest) -> Option<String> {
        None
    }
    /// Hold the records still while the store is given its links (a directory: its lock).
    fn lock_records(&self) -> Result<Option<std::fs::File>> {
        Ok(None)
    }

    // ------------------------------------------------------------ blobs

    /// Size of a stored blob, or `None` (only content counts: a FIFO under its name is none).
    async fn blob_size(&self, d: &Digest) -> Result<Option<u64>>;
    /// Why what is under a blob's name is not content, when it is not. Looks, never opens.
    fn blob_refusal(&self, _d: &Digest) -> Option<String> {
        None
    }
    /// A whole small blob (a manifest), refused past `limit` bytes.
    async fn read_small(&self, d: &Digest, limit: u64) -> Result<Bytes>;
    /// Every name under `blobs/` that is a digest.
    async fn list_blobs(&self) -> Result<Vec<BlobEntry>>;
    /// Every blob that can be read as content.
    async fn list_content(&self) -> Result<Vec<Digest>>;
    /// Whether blob downloads can be handed to the store itself.
    fn can_redirect(&self) -> bool {
        false
    }
    /// A URL a client may GET a stored blob from for `ttl`, when the store has such a thing.
    async fn blob_url(&self, _d: &Digest, _ttl: Duration) -> Result<Option<String>> {
        Ok(None)
    }
    /// Re-hash one blob; an error when the store could not say.
    async fn rehash(&self, d: &Digest) -> Result<Checked>;
    /// Move a corrupt blob aside.
    async fn quarantine(&self, d: &Digest) -> Result<()>;
    /// GC's removal of one unreferenced blob and of its links in `repos`, unless it was written
    /// or promised less than `grace` before `marked_at`. The bytes freed, or `None` when kept.
    async fn sweep(
        &self,
        d: &Digest,
        grace: Duration,
        marked_at: SystemTime,
        repos: &[String],
    ) -> Result<Option<u64>>;
    /// After a sweep: old promise records and read markers of manifests no longer stored.
    async fn after_sweep(&self, grace: Duration) -> Result<()>;
    /// Can the store be written (or, read-only, read) right now?
    async fn ready(&self, read_only: bool) -> bool;
    /// Open a blob for reading.
    async fn open_blob(&self, d: &Digest) -> Result<BlobReader>;
    /// Import a blob of known digest and size, verified, resuming what an earlier run left
    /// where the backend can.
    async fn import_blob(&self, d: &Digest, size: u64, open: Opener<'_>) -> Result<Imported>;
    /// Store small verified bytes (a manifest) under their digest.
    async fn put_small_blob(&self, d: &Digest, bytes: Bytes) -> Result<()>;
    /// Where a blob fetched from elsewhere is spooled while clients read it.
    fn spool_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }
    /// Make a spooled file the blob `expected` if `computed` matches; the file goes either way.
    async fn adopt_blob(&self, path: PathBuf, computed: Digest, expected: &Digest) -> Result<()>;
    /// When a blob was stored.
    async fn stored_at(&self, d: &Digest) -> Option<SystemTime>;

    // ------------------------------------------------------------ upload sessions

    async fn upload_start(&self) -> Result<String>;
    async fn upload_status(&self, id: &str) -> Result<u64>;
    async fn upload_append(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64>;
    async fn upload_finish(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: Body<'_>,
        d: &Digest,
    ) -> Result<()>;
    async fn upload_cancel(&self, id: &str) -> Result<()>;
    /// Sessions this process holds open.
    fn open_uploads(&self) -> usize;
    /// Remove sessions (and temp files) idle for longer than `max_age`.
    async fn expire_uploads(&self, max_age: Duration) -> Result<usize>;

    // ------------------------------------------------------------ promises and state

    /// Tell a client a blob exists, ordered against GC's sweep of it.
    async fn promise(&self, d: &Digest) -> Result<Option<u64>>;
    /// Record that a manifest was read (best effort).
    async fn note_read(&self, d: &Digest);
    /// When a manifest was last read.
    async fn last_read(&self, d: &Digest) -> Option<SystemTime>;
    /// Every manifest's last read.
    async fn reads(&self) -> HashMap<Digest, SystemTime>;
    /// Write one of ferry's own state files (`.ferry/NAME`).
    async fn write_state(&self, name: &str, bytes: Bytes) -> Result<()>;
    /// [`Backend::write_state`] with the bytes written by `fill`.
    async fn write_state_with(&self, name: &str, fill: Fill<'_>) -> Result<()>;
    /// A state file as a reader, at most `limit` bytes.
    async fn open_state(&self, name: &str, limit: u64) -> Result<Option<Box<dyn io::Read + Send>>> {
        Ok(self
            .read_state(name, limit)
            .await?
            .map(|b| Box::new(io::Cursor::new(b)) as Box<dyn io::Read + Send>))
    }
    /// A state file, whole, at most `limit` bytes.
    async fn read_state(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>>;
    /// A state file and when it was written.
    async fn state_and_time(&self, name: &str, limit: u64) -> Option<(Vec<u8>, SystemTime)>;

    // ------------------------------------------------------------ repository links

    /// Whether a link exists (`rel`: its path under the store's root).
    async fn has_link(&self, rel: &str) -> Result<bool>;
    /// Make links `dir` + each digest's flat name; flushed when `durable`.
    async fn add_links(&self, dir: &str, ds: &[Digest], durable: bool) -> Result<()>;
    /// Remove one link; whether it was there.
    async fn remove_link(&self, rel: &str) -> Result<bool>;
    /// Every repository that has links.
    async fn link_repos(&self) -> Result<Vec<String>>;
    /// Whether the store keeps links (its marker is there).
    async fn links_marked(&self) -> Result<bool>;
    /// Give the store its links, per repository, then its marker.
    async fn give_links(&self, per_repo: HashMap<String, Vec<Digest>>) -> Result<()>;
}

/// What re-hashing a blob gave, as [`Checked`]: an error other than "gone" is the store's to
/// report (the caller decides whether it refuses the blob or fails).
pub(crate) fn checked(d: &Digest, hashed: Result<(Digest, u64)>) -> Result<Checked> {
    match hashed {
        Ok((h, n)) if &h == d => Ok(Checked::Intact(n)),
        Ok((_, n)) => Ok(Checked::Corrupt(n)),
        Err(Error::BlobUnknown(_)) => Ok(Checked::Missing),
        Err(e) => Err(e),
    }
}

/// An import whose bytes did not hash to their digest: the source's content is corrupt (not the
/// client's digest invalid, as for an upload).
pub(crate) fn corrupt(d: &Digest) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::DigestInvalid(detail) => Error::Corrupt {
            digest: d.clone(),
            detail,
        },
        e => e,
    }
}

/// The digest a flat name (`<alg>-<hex>`: a read marker, a promise) stands for.
pub(crate) fn flat_digest(name: &str) -> Option<Digest> {
    name.replacen('-', ":", 1).parse::<Digest>().ok()
}

pub(crate) fn read_only_archive() -> Error {
    Error::Unsupported("this registry serves an archive, which is read-only".into())
}

thread_local! {
    /// Set while [`wait`] runs an operation on this thread: [`blocking`] work runs inline.
    static WAITING: Cell<bool> = const { Cell::new(false) };
}

/// A runtime for blocking callers outside of one (a directory's work then runs inline; this
/// is only there for what it touches of tokio's).
fn fallback() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime for blocking store calls: {e}"))
    })
}

/// The one adapter for blocking callers: run an operation of the async API to its end on this
/// thread. A directory's or an archive's completes in its first poll (its blocking work runs
/// inline, see [`blocking`]); a bucket's waits for the runtime (`rt`: the store's, when the
/// caller is on no runtime's thread), from a worker thread through `block_in_place`. As ever,
/// a bucket's operation cannot be waited for on a single-threaded runtime's own thread.
pub(crate) fn wait<F: Future>(rt: Option<&tokio::runtime::Handle>, f: F) -> F::Output {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            WAITING.with(|w| w.set(self.0));
        }
    }
    let _reset = Reset(WAITING.with(|w| w.replace(true)));
    let current = tokio::runtime::Handle::try_current().ok();
    let handle = current
        .clone()
        .or_else(|| rt.cloned())
        .unwrap_or_else(|| fallback().handle().clone());
    let mut f = std::pin::pin!(f);
    {
        let _enter = current.is_none().then(|| handle.enter());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
    match current.map(|h| h.runtime_flavor()) {
        // A worker thread must hand its other tasks on before it blocks (a blocking-pool
        // thread goes straight through).
        Some(tokio::runtime::RuntimeFlavor::MultiThread) => {
            tokio::task::block_in_place(|| handle.block_on(f))
        }
        // A single-threaded runtime: from its blocking pool (its own thread is driving it).
        _ => handle.block_on(f),
    }
}

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::Io(io::Error::other(format!("blocking task failed: {e}")))
}

/// Run blocking work (file system calls) off the runtime's worker threads — or inline, when a
/// blocking caller is already waiting for it ([`wait`]).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if WAITING.with(|w| w.get()) {
        return f();
    }
    tokio::task::spawn_blocking(f).await.map_err(blocking_err)?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory's work under `wait` runs on the caller's thread, with or without a runtime
    /// around it, and `blocking` outside `wait` still hops to the blocking pool.
    #[test]
    fn waited_blocking_work_runs_inline_on_the_callers_thread() {
        let me = std::thread::current().id();
        fn on(_: ()) -> impl Future<Output = Result<std::thread::ThreadId>> + Send {
            blocking(|| Ok(std::thread::current().id()))
        }
        // No runtime at all (a directory store opened by a plain test or tool).
        assert_eq!(wait(None, on(())).unwrap(), me);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // On a blocking-pool thread, as GC and verify run.
        let (caller, ran) = rt
            .block_on(rt.spawn_blocking(move || {
                let caller = std::thread::current().id();
                (caller, wait(None, on(())).unwrap())
            }))
            .unwrap();
        assert_eq!(caller, ran);
        // Not waited for: off the worker thread.
        let (caller, ran) = rt.block_on(async {
            tokio::spawn(async { (std::thread::current().id(), on(()).await.unwrap()) })
                .await
                .unwrap()
        });
        assert_ne!(caller, ran);
        // The flag does not outlive the wait.
        assert!(!WAITING.with(|w| w.get()));
    }

    /// What has to wait for the runtime (a bucket's requests: here a timer) completes from a
    /// worker thread, from a blocking-pool thread and from a thread of no runtime (through the
    /// store's handle).
    #[test]
    fn waiting_on_the_runtime_works_from_every_kind_of_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let later = || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        };
        let h = rt.handle().clone();
        assert_eq!(
            rt.block_on(rt.spawn(async move { wait(None, later()) }))
                .unwrap(),
            7
        );
        assert_eq!(
            rt.block_on(rt.spawn_blocking(move || wait(None, later())))
                .unwrap(),
            7
        );
        let plain = std::thread::spawn(move || wait(Some(&h), later()));
        assert_eq!(plain.join().unwrap(), 7);
    }
}
