//! Durable writes: temp file in the store → write → fsync → rename → fsync the directory, and a
//! streaming writer that hashes while it writes.
//!
//! The streaming writer runs on a blocking thread fed through a bounded channel: the network side
//! never waits for the disk longer than it takes to queue a chunk, and memory stays bounded by the
//! channel's capacity (a few chunks) whatever the blob's size. The disk thread writes whatever
//! is queued with one vectored write straight from the network's buffers: no copy into a write
//! buffer of its own (that copy was ~4 % of a push's CPU).

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::path::Path;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::vocab::digest::Hasher;

/// Chunks queued between the network and the disk thread. A chunk is what hyper read off the
/// socket (at most its 64 KiB read buffer), so a pusher whose disk lags holds at most this many
/// of those: 256 KiB, the per-connection budget. A slow pusher holds a few small ones.
const CHANNEL_CHUNKS: usize = 4;
/// Body bytes read and dropped after a disk error, so the error answer reaches the client.
const DRAIN_ON_ERROR: u64 = 64 << 20;

/// Bytes between two [`start_writeback`] calls of a long write.
pub const WRITEBACK_EVERY: u64 = 8 << 20;

/// Start writing `from..to` of `f` back to the disk without waiting, so the disk works while the
/// rest streams in and the final fsync finds little left to do. Best effort: a failure here
/// shows again at the fsync.
pub fn start_writeback(f: &File, from: u64, to: u64) {
    // SAFETY: a valid open descriptor and a byte range of it; the call only starts writeback
    // and touches no memory of ours.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(f),
            from as libc::off64_t,
            to.saturating_sub(from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Kick writeback of the last [`WRITEBACK_EVERY`] step when a write from `before` to `after`
/// crosses into a new one.
pub fn writeback_after(f: &File, before: u64, after: u64) {
    if before / WRITEBACK_EVERY != after / WRITEBACK_EVERY {
        start_writeback(f, before / WRITEBACK_EVERY * WRITEBACK_EVERY, after);
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write `bytes` to `target` atomically: readers see the old file or the whole new one.
pub fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Readable by other users and tools (skopeo, a docker container), like any registry file.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(tmp_dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    if let Some(parent) = target.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Remove the files in `dir` last modified at least `age` ago (or of unknown age): the temp
/// files a dead writer left. Younger ones may be another process's writes in progress.
pub fn remove_older_than(dir: &Path, age: std::time::Duration) {
    let now = std::time::SystemTime::now();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let old = age_of(&e, now).is_none_or(|a| a >= age);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// [`write_atomic`] with the bytes written by `fill` through a small buffer, so a large state
/// file is never one allocation.
pub fn write_atomic_with(
    tmp_dir: &Path,
    target: &Path,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(tmp_dir)?;
    let mut w = io::BufWriter::with_capacity(64 << 10, tmp);
    fill(&mut w)?;
    let tmp = w.into_inner().map_err(|e| e.into_error())?;
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    if let Some(parent) = target.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// What a streaming write did. `file` and `hasher` always agree: on a disk error the chunk stream
/// is rolled back to where it started.
pub struct WriteOutcome {
    pub file: File,
    pub hasher: Hasher,
    pub written: u64,
    /// The disk failed (rolled back).
    pub disk_error: Option<io::Error>,
    /// The body failed part-way (the client went away); what arrived is kept.
    pub body_error: Option<String>,
    /// More bytes arrived than allowed; rolled back.
    pub over_limit: bool,
}

/// Write every byte of `bufs` (a vectored `write_all`).
fn write_all_vectored(out: &mut File, bufs: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Stream `body` onto the end of `file` (whose length is `start`), hashing as it goes.
pub async fn stream_to_file<S, E>(
    file: File,
    start: u64,
    hasher: Hasher,
    mut body: S,
    limit: Option<u64>,
) -> io::Result<WriteOutcome>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let original = hasher.clone();
    let disk = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        let mut out = file;
        let mut written = 0u64;
        let mut err = None;
        let mut batch: Vec<Bytes> = Vec::with_capacity(CHANNEL_CHUNKS);
        while let Some(chunk) = rx.blocking_recv() {
            // This chunk and whatever else is already queued: one vectored write, straight
            // from the network's buffers.
            batch.push(chunk);
            while batch.len() < CHANNEL_CHUNKS {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            if let Err(e) = write_all_vectored(&mut out, &batch) {
                err = Some(e);
                break;
            }
            for chunk in batch.drain(..) {
                hasher.update(&chunk);
                written += chunk.len() as u64;
            }
        }
        (out, hasher, written, err)
    });

    let mut body_error = None;
    let mut over_limit = false;
    let mut sent = 0u64;
    while let Some(item) = body.next().await {
        match item {
            Ok(chunk) => {
                sent += chunk.len() as u64;
                if limit.is_some_and(|l| sent > l) {
                    over_limit = true;
                    break;
                }
                if tx.send(chunk).await.is_err() {
                    // The disk thread stopped on an error (it reports it below). Read and drop a
                    // bounded amount of the rest, so the client is reading when the error answer
                    // comes instead of getting a reset connection mid-send.
                    let mut drained = 0u64;
                    while drained < DRAIN_ON_ERROR {
                        match body.next().await {
                            Some(Ok(c)) => drained += c.len() as u64,
                            _ => break,
                        }
                    }
                    break;
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let (file, hasher, written, disk_error) = disk
        .await
        .map_err(|e| io::Error::other(format!("writer thread: {e}")))?;
    let mut outcome = WriteOutcome {
        file,
        hasher,
        written,
        disk_error,
        body_error,
        over_limit,
    };
    if outcome.disk_error.is_some() || outcome.over_limit {
        outcome.file.set_len(start)?;
        outcome.hasher = original;
        outcome.written = 0;
    }
    Ok(outcome)
}

/// A body cut off with an error once it passes `limit` bytes: a source that sends more than its
/// descriptor says cannot fill the store.
pub fn at_most<S, E>(
    body: S,
    limit: u64,
) -> impl Stream<Item = std::result::Result<Bytes, String>> + Unpin + Send
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let mut seen = 0u64;
    body.map(move |r| match r {
        Ok(b) => {
            seen += b.len() as u64;
            if seen > limit {
                Err(format!(
                    "the source sent more than the {limit} bytes its descriptor says"
                ))
            } else {
                Ok(b)
            }
        }
        Err(e) => Err(e.to_string()),
    })
}

/// How long ago a directory entry was last modified (`None`: unknown, or in the future).
pub fn age_of(e: &std::fs::DirEntry, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let modified = e.metadata().and_then(|m| m.modified()).ok()?;
    now.duration_since(modified).ok()
}
