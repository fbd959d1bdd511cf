//! Zero-copy blob downloads on plain HTTP/1.1: the file's pages go to the socket with
//! `sendfile(2)`, never through user space.
//!
//! hyper owns the HTTP: it parses the request, writes the response head and frames the body,
//! exactly as for any other response. Only the *source* of the body bytes changes, one layer
//! below hyper, in the connection's I/O object:
//!
//! - The body of a blob download yields frames that are slices of [`PLACEHOLDER`], a static
//!   buffer no one ever reads or writes, and for each frame queues the file region it stands for
//!   on the connection's [`Regions`].
//! - hyper is set to queue body buffers as they are (`writev(true)`: its "queue" write strategy
//!   hands our `Bytes` to the I/O object unchanged, never copied into its own buffer), so the
//!   slices it writes still point into [`PLACEHOLDER`].
//! - [`ZeroCopyTcp`] recognises such a slice by its address and writes the next bytes of the
//!   front region with `sendfile` instead; everything else (heads, manifests, errors) is written
//!   normally. Regions are consumed in the order frames were produced, which is the order hyper
//!   writes them, also across keep-alive responses.
//!
//! If a placeholder slice ever arrived with no region queued, the write fails and the connection
//! closes: a client can get a cut response, never wrong bytes. TLS and HTTP/2 connections use the
//! ordinary streamed body (there is no plain socket to `sendfile` to, or the framing is hyper's).
//! Before each frame is handed out, a blocking-pool thread makes sure the frame is in the page
//! cache (see [`body`]), so `sendfile` on an async worker does not wait for a slow disk.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Bytes per body frame (and per `sendfile` call at most).
pub const FRAME: usize = 4 << 20;

/// Stand-in bytes for file regions. Zero-initialised and never touched, it costs address space
/// only (the kernel maps its pages when first read, and nothing reads it).
pub static PLACEHOLDER: [u8; FRAME] = [0; FRAME];

fn is_placeholder(s: &[u8]) -> bool {
    let base = PLACEHOLDER.as_ptr() as usize;
    let p = s.as_ptr() as usize;
    !s.is_empty() && p >= base && p + s.len() <= base + FRAME
}

struct Region {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

/// The file regions a connection's placeholder frames stand for, in order.
#[derive(Default)]
pub struct Regions {
    queue: Mutex<VecDeque<Region>>,
}

impl Regions {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Region>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The body of a download of `len` bytes of `file` from `offset`: placeholder frames, each
/// queued on `regions` as it is produced.
///
/// `sendfile` runs on an async worker (it must, to use the socket's readiness), so it must not
/// wait for the disk: before a frame is handed out, a blocking-pool thread asks the kernel to
/// read it (and the next one) into the page cache and waits until its last page is there. From a
/// slow disk (a USB stick) a download then goes at the disk's pace without ever stalling a
/// worker; from the page cache the check costs a few microseconds per frame.
pub fn body(
    regions: Arc<Regions>,
    file: File,
    offset: u64,
    len: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let file = Arc::new(file);
    futures_util::stream::unfold((offset, len), move |(offset, left)| {
        let regions = regions.clone();
        let file = file.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(FRAME as u64);
            let ahead = (left - n).min(FRAME as u64);
            let f = file.clone();
            let warmed = tokio::task::spawn_blocking(move || warm(&f, offset, n, ahead)).await;
            match warmed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Some((Err(e), (offset, 0))),
                Err(e) => return Some((Err(io::Error::other(e)), (offset, 0))),
            }
            regions.queue().push_back(Region {
                file,
                offset,
                len: n,
            });
            let frame = Bytes::from_static(&PLACEHOLDER[..n as usize]);
            Some((Ok(frame), (offset + n, left - n)))
        }
    })
}

/// Bring `len` bytes of `file` at `offset` into the page cache (and start on `ahead` more):
/// read-ahead for the whole range, then a one-byte read of its last page, which returns once
/// that page (read in order, so nearly everything before it) is there.
fn warm(file: &File, offset: u64, len: u64, ahead: u64) -> io::Result<()> {
    // SAFETY: posix_fadvise on a descriptor we hold; no memory is passed. A failure only means
    // no read-ahead.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            (len + ahead) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
    let mut byte = [0u8; 1];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut byte, offset + len - 1)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file is shorter than its recorded size",
        ));
    }
    Ok(())
}

/// A plain TCP connection that writes placeholder slices from their file regions with
/// `sendfile(2)`.
pub struct ZeroCopyTcp {
    stream: TcpStream,
    regions: Arc<Regions>,
}

impl ZeroCopyTcp {
    pub fn new(stream: TcpStream, regions: Arc<Regions>) -> ZeroCopyTcp {
        ZeroCopyTcp { stream, regions }
    }

    /// Send the next `want` bytes of the front region (fewer if the socket takes fewer).
    fn poll_sendfile(&self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let (file, mut offset, n) = {
                let q = self.regions.queue();
                let Some(r) = q.front() else {
                    return Poll::Ready(Err(io::Error::other(
                        "placeholder bytes with no file region queued",
                    )));
                };
                if want as u64 > r.len {
                    return Poll::Ready(Err(io::Error::other(
                        "placeholder bytes beyond their file region",
                    )));
                }
                (r.file.clone(), r.offset as libc::off_t, want)
            };
            let res = self.stream.try_io(Interest::WRITABLE, || {
                // SAFETY: both descriptors are open for the duration of the call (the file is
                // held by `file`, the socket by `self.stream`); `offset` is a local the kernel
                // updates.
                let sent = unsafe {
                    libc::sendfile(self.stream.as_raw_fd(), file.as_raw_fd(), &mut offset, n)
                };
                if sent < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(sent as usize)
                }
            });
            match res {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than its recorded size",
                    )))
                }
                Ok(sent) => {
                    let mut q = self.regions.queue();
                    if let Some(r) = q.front_mut() {
                        r.offset += sent as u64;
                        r.len -= sent as u64;
                        if r.len == 0 {
                            q.pop_front();
                        }
                    }
                    return Poll::Ready(Ok(sent));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for ZeroCopyTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_placeholder(buf) {
            return self.poll_sendfile(cx, buf.len());
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Ordinary bytes up to the first placeholder go out in one writev; a placeholder at the
        // front goes out with sendfile. Writing fewer bytes than offered is allowed: hyper calls
        // again with the rest.
        let first = bufs.iter().position(|b| is_placeholder(b));
        let leading_empty = bufs.iter().take_while(|b| b.is_empty()).count();
        match first {
            None => Pin::new(&mut self.stream).poll_write_vectored(cx, bufs),
            Some(k) if k == leading_empty => self.poll_sendfile(cx, bufs[k].len()),
            Some(k) => Pin::new(&mut self.stream).poll_write_vectored(cx, &bufs[..k]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_is_recognised_by_address_only() {
        assert!(is_placeholder(&PLACEHOLDER[..10]));
        assert!(is_placeholder(&PLACEHOLDER[FRAME - 1..]));
        assert!(!is_placeholder(&PLACEHOLDER[..0]));
        let zeros = vec![0u8; 10];
        assert!(
            !is_placeholder(&zeros),
            "equal bytes elsewhere are ordinary bytes"
        );
    }
}
