//! One detached fetch of a blob from an upstream: streamed to the waiting clients and spooled to
//! the store at once, bounded in size and in idle time, published only once it hashes to its name.

use super::*;

/// A lagging reader's read from the spool file: 200 clients on one blob hold 200 of these.
const READ_CHUNK: usize = 64 * 1024;
/// The most the fetch gathers into one chunk (one write to the spool file, one wake of the
/// readers).
const WRITE_CHUNK: usize = 256 * 1024;
/// Chunks received but not yet written: when the disk is slower than the upstream, the fetch
/// stops reading the upstream. With [`TAIL_BYTES`] this bounds a fetch's memory.
const UNWRITTEN_CHUNKS: usize = 8;

pub(super) fn upstream_blob_error(d: &Digest, why: impl std::fmt::Display) -> Error {
    Error::Remote {
        registry: "upstream".into(),
        message: format!("{d}: {why}"),
    }
}

/// Stream the upstream's body to the readers and, on a thread of its own, into the spool file,
/// hashing it; commit it if it is the blob. Whatever fails, no spool file is left behind.
pub(super) async fn run_fetch(
    up: &Upstream,
    (urepo, max_blob): (&str, u64),
    store: &Store,
    d: &Digest,
    fetch: Arc<Fetch>,
    dir: PathBuf,
    tx: &Arc<watch::Sender<FetchState>>,
) -> Result<()> {
    // The disk's side (a blocking thread that makes the spool file, then writes and hashes)
    // starts once the first chunk is out to the readers: waking a thread costs the first byte
    // as much as the rest of ferry's share of it. A bounded channel: a slow disk slows the
    // fetch, and what arrives before the writer runs waits in it.
    let (wtx, wrx) = tokio::sync::mpsc::channel::<Bytes>(UNWRITTEN_CHUNKS);
    let (hasher, progress) = (d.algorithm().hasher(), tx.clone());
    let mut parts = Some((fetch, dir, hasher, wrx, progress));
    let mut writer = None;
    let mut start_writer = || {
        if let Some((fetch, dir, hasher, wrx, progress)) = parts.take() {
            writer = Some(tokio::task::spawn_blocking(move || {
                spool(&fetch, &dir, hasher, wrx, &progress)
            }));
        }
    };
    let streamed = stream_upstream(up, (urepo, max_blob), d, wtx, tx, &mut start_writer).await;
    // Started here when no chunk came (an empty blob, or a failure before the body).
    start_writer();
    let Some(writer) = writer else {
        return Err(Error::Io(std::io::Error::other(
            "the spool writer did not start",
        )));
    };
    let spooled = writer
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let (hasher, written, path) = match spooled {
        Ok(t) => t,
        // The upstream's "no such blob" is the answer to pass on, whatever the disk did.
        Err(e) => {
            return Err(match streamed {
                Err(u @ Error::BlobUnknown(_)) => u,
                _ => e,
            })
        }
    };
    let checked = streamed.and_then(|received| {
        if written != received {
            return Err(upstream_blob_error(
                d,
                format!("the spool file holds {written} of the {received} bytes received"),
            ));
        }
        let computed = hasher.finish();
        if &computed != d {
            return Err(Error::Corrupt {
                digest: d.clone(),
                detail: format!("from the upstream: the body hashes to {computed}"),
            });
        }
        Ok(computed)
    });
    let computed = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
    };
    tx.send_modify(|s| s.verified = true);
    let res = store.adopt_blob(path.clone(), computed, d).await;
    if res.is_err() {
        let _ = tokio::fs::remove_file(&path).await;
    }
    res
}

/// The spool writer (a blocking thread): makes the spool file, then writes and hashes the
/// chunks in order. Returns the hash, the bytes written and the file, or removes the file.
pub(super) fn spool(
    fetch: &Fetch,
    dir: &std::path::Path,
    mut hasher: crate::vocab::digest::Hasher,
    mut chunks: tokio::sync::mpsc::Receiver<Bytes>,
    progress: &watch::Sender<FetchState>,
) -> Result<(crate::vocab::digest::Hasher, u64, PathBuf)> {
    use std::os::unix::fs::FileExt;
    // Readable like every other blob once renamed into place (tempfile's default is 0600).
    let (file, path) = tempfile::Builder::new()
        .prefix(".pull-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)?
        .keep()
        .map_err(|e| Error::Io(e.error))?;
    let file = Arc::new(file);
    let _ = fetch.file.set(file.clone());
    let mut at = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        if let Err(e) = file.write_all_at(&chunk, at) {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        at += chunk.len() as u64;
        // No reader waits for this (one that lags reads below the tail, which is always on
        // disk): no wake.
        progress.send_if_modified(|s| {
            s.written = at;
            s.trim();
            false
        });
    }
    Ok((hasher, at, path))
}

/// The network's side: the upstream's body, in chunks, to the tail and the spool writer, which
/// `start_writer` starts after the first chunk. Returns the bytes received (all of them, when it
/// returns `Ok`, unless the writer stopped).
async fn stream_upstream(
    up: &Upstream,
    (urepo, max_blob): (&str, u64),
    d: &Digest,
    spool: tokio::sync::mpsc::Sender<Bytes>,
    tx: &watch::Sender<FetchState>,
    start_writer: &mut (dyn FnMut() + Send),
) -> Result<u64> {
    let blob = up
        .registry
        .blob_lookup(urepo, d)
        .await?
        .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
    let len = blob.len;
    if let Some(len) = len.filter(|l| *l > max_blob) {
        return Err(upstream_blob_error(
            d,
            format!("the upstream announces {len} bytes, over --upstream-max-blob ({max_blob})"),
        ));
    }
    let mut stream = blob.stream;
    let mut received = 0u64;
    let mut ended = false;
    let failed = |received: u64, e: &dyn std::fmt::Display| {
        upstream_blob_error(d, format!("after {received} bytes: {e}"))
    };
    while !ended {
        let first = match stream.next().await {
            Some(c) => c.map_err(|e| failed(received, &e))?,
            None => break,
        };
        // The first chunk goes out as it came. After it, what has arrived, up to WRITE_CHUNK,
        // as one chunk: the network may hand over 16 KiB pieces, and a wake of every reader per
        // piece costs more than a copy. A piece that is big enough is passed on, not copied
        // (hyper reads up to ~500 KiB at a time from a fast upstream). Whatever is there when
        // the network pauses goes out at once, so a slow upstream's bytes are not held.
        let mut gathered: Option<bytes::BytesMut> = None;
        let mut size = first.len();
        while received > 0 && size < WRITE_CHUNK {
            match futures_util::FutureExt::now_or_never(stream.next()) {
                Some(Some(c)) => {
                    let c = c.map_err(|e| failed(received, &e))?;
                    size += c.len();
                    gathered
                        .get_or_insert_with(|| {
                            let mut b = bytes::BytesMut::with_capacity(WRITE_CHUNK.max(size));
                            b.extend_from_slice(&first);
                            b
                        })
                        .extend_from_slice(&c);
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        // A piece is a slice of hyper's read buffer and keeps all of it alive: a small one that
        // came alone (a slow upstream) is copied, so the tail's bytes bound its memory.
        let chunk = match gathered {
            Some(b) => b.freeze(),
            None if received == 0 || first.len() >= WRITE_CHUNK / 2 => first,
            None => Bytes::copy_from_slice(&first),
        };
        let n = chunk.len() as u64;
        if received + n > max_blob {
            return Err(upstream_blob_error(
                d,
                format!("the upstream's body goes on past --upstream-max-blob ({max_blob} bytes)"),
            ));
        }
        if let Some(len) = len {
            if received + n > len {
                return Err(upstream_blob_error(
                    d,
                    format!("the upstream sent more than the {len} bytes it announced"),
                ));
            }
        }
        if spool.send(chunk.clone()).await.is_err() {
            // The writer failed: its error is the one to report.
            return Ok(received);
        }
        // The readers hear that the upstream answered with its first bytes: a response's
        // headers and first body bytes then leave in one write.
        tx.send_modify(|s| {
            s.started = true;
            s.len = len;
            s.tail.push_back((received, chunk));
            s.tail_bytes += n as usize;
            s.received = received + n;
            s.trim();
        });
        received += n;
        // Let the woken readers run now. A task woken by this one waits in the worker's LIFO
        // slot, which no other worker steals, until this task yields; with a fast upstream the
        // body is always ready, so without this it yields only when its budget runs out
        // (0.1-0.3 ms later, a fifth of a loopback upstream's first byte).
        tokio::task::yield_now().await;
        start_writer();
    }
    tx.send_if_modified(|s| {
        let was = s.started;
        s.started = true;
        s.len = len;
        !was
    });
    if let Some(len) = len {
        if received != len {
            return Err(upstream_blob_error(
                d,
                format!("the upstream's body ended after {received} of {len} bytes"),
            ));
        }
    }
    Ok(received)
}

/// What a reader does next, decided under the state's lock.
enum Step {
    /// Bytes from the tail, in memory.
    Mem(Bytes),
    /// Read the spool file from the reader's position up to here.
    File(u64),
    End,
    Fail(String),
    Wait,
}

/// A client's view of a fetch: bytes `start..stop` as they arrive, from memory while it keeps
/// up and from the spool file when it lags; an error (never a clean end) if the fetch fails or
/// ends short.
pub(super) fn reader(
    fetch: Arc<Fetch>,
    start: u64,
    stop: Option<u64>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let rx = fetch.state.clone();
    futures_util::stream::unfold(
        (fetch, rx, start, false),
        move |(fetch, mut rx, pos, ended)| async move {
            if ended {
                return None;
            }
            loop {
                if stop.is_some_and(|s| pos >= s) {
                    return None;
                }
                let step = {
                    let st = rx.borrow_and_update();
                    // The last byte is held back until the blob is verified: a client that got
                    // every byte it was promised would take a wrong blob for a whole one.
                    let verified = st.verified;
                    let avail = if verified {
                        st.received
                    } else {
                        st.received.saturating_sub(1)
                    };
                    let limit = stop.map_or(avail, |s| avail.min(s));
                    let tail_start = st.tail.front().map_or(st.received, |(at, _)| *at);
                    if pos < limit && pos >= tail_start {
                        let i = st
                            .tail
                            .partition_point(|(at, b)| at + b.len() as u64 <= pos);
                        match st.tail.get(i) {
                            Some((at, b)) => {
                                let end = limit.min(at + b.len() as u64);
                                Step::Mem(b.slice((pos - at) as usize..(end - at) as usize))
                            }
                            None => Step::Fail("the fetch's memory lost its place".into()),
                        }
                    } else if pos < limit {
                        // Below the tail: on disk (the tail only lets go of written bytes).
                        Step::File(limit.min(tail_start))
                    } else {
                        // A verified blob is whole for its readers even if storing it fails.
                        match &st.done {
                            _ if verified && (stop.is_none() || stop == Some(st.received)) => {
                                Step::End
                            }
                            _ if verified => Step::Fail("the blob is shorter than asked".into()),
                            Some(Err(e)) => Step::Fail(format!("pull-through failed: {e}")),
                            _ => Step::Wait,
                        }
                    }
                };
                match step {
                    Step::Mem(b) => {
                        let n = b.len() as u64;
                        return Some((Ok(b), (fetch, rx, pos + n, false)));
                    }
                    Step::File(upto) => {
                        let want = ((upto - pos) as usize).min(READ_CHUNK);
                        let Some(f) = fetch.file.get().cloned() else {
                            let e = std::io::Error::other("the spool file is missing");
                            return Some((Err(e), (fetch, rx, pos, true)));
                        };
                        let read = tokio::task::spawn_blocking(move || {
                            use std::os::unix::fs::FileExt;
                            let mut buf = vec![0u8; want];
                            let mut got = 0;
                            while got < want {
                                let n = f.read_at(&mut buf[got..], pos + got as u64)?;
                                if n == 0 {
                                    break;
                                }
                                got += n;
                            }
                            buf.truncate(got);
                            Ok::<_, std::io::Error>(buf)
                        })
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r);
                        return match read {
                            Ok(buf) if !buf.is_empty() => {
                                let n = buf.len() as u64;
                                Some((Ok(Bytes::from(buf)), (fetch, rx, pos + n, false)))
                            }
                            Ok(_) => Some((
                                Err(std::io::Error::other("the spool file ended early")),
                                (fetch, rx, pos, true),
                            )),
                            Err(e) => Some((Err(e), (fetch, rx, pos, true))),
                        };
                    }
                    Step::End => return None,
                    Step::Fail(e) => {
                        return Some((Err(std::io::Error::other(e)), (fetch, rx, pos, true)))
                    }
                    Step::Wait => {
                        if rx.changed().await.is_err() {
                            return Some((
                                Err(std::io::Error::other("the fetch stopped")),
                                (fetch, rx, pos, true),
                            ));
                        }
                    }
                }
            }
        },
    )
    .boxed()
}
