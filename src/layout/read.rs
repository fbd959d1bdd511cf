//! Streaming a blob out: a blocking thread `pread`s fixed-size chunks straight into fresh buffers
//! and hands them over a small bounded channel.
//!
//! `tokio::fs::File` would read into its own buffer and copy into the caller's, one extra memcpy
//! per byte served; on the 2-core machines ferry runs on that copy was a visible share of a pull.
//! Memory per download is bounded by the channel (a few chunks), whatever the blob's size.

use std::fs::File;
use std::io::{self, Read, Seek};

use bytes::Bytes;
use futures_util::Stream;

/// Bytes per read and per body frame.
pub const READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the network.
const AHEAD: usize = 1;

/// Stream `len` bytes of `file` from `offset`.
pub fn stream_file(file: File, offset: u64, len: u64) -> impl Stream<Item = io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        if offset > 0 {
            if let Err(e) = file.seek(io::SeekFrom::Start(offset)) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64);
            // read_to_end fills the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want as usize);
            let res = match (&mut file).take(want).read_to_end(&mut buf) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file is shorter than its recorded size",
                )),
                Ok(n) => {
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = res.is_err();
            // The receiver is gone when the client went away: stop reading.
            if tx.blocking_send(res).is_err() || failed {
                return;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
) -> impl Stream<Item = io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
