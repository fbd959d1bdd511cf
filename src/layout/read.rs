//! Streaming a blob out with memory that does not grow with the number of downloads, and
//! opening one safely.
//!
//! A streamed download (TLS, HTTP/2, `ferry sync` reading a layout; plain HTTP/1.1 goes out with
//! `sendfile` instead, see `server::zerocopy`) reads one chunk at a time, when the consumer asks
//! for the next one, into a buffer from a shared pool:
//!
//! - **Sized to what the socket takes.** A chunk starts at [`MIN_CHUNK`]; when the consumer
//!   comes back for the next one at once (the socket took the last one) the size doubles, up to
//!   [`MAX_CHUNK`]; when it comes back late (a slow client, a full socket) it halves again. So a
//!   download holds at most the chunk the connection is writing and the one being read: 2 ×
//!   [`MAX_CHUNK`], whatever the client's speed, and a slow client holds 2 × [`MIN_CHUNK`].
//! - **Bounded in total.** Every chunk holds permits of one process-wide budget
//!   ([`BUDGET_BYTES`]) until the connection has written it; past it, reads wait for chunks to be
//!   written instead of allocating more.
//! - **Reused.** Buffers go back to a small pool when written, instead of one allocation per chunk.
//! - **No thread hop for cached data.** The read is first tried on the async worker with
//!   `preadv2(RWF_NOWAIT)`, which copies what is in the page cache and never waits for the disk;
//!   only what is not cached (or a filesystem without `RWF_NOWAIT`) goes to the blocking pool,
//!   so a slow disk (a USB stick) never stalls a worker. The kernel's own read-ahead
//!   (`POSIX_FADV_SEQUENTIAL`) keeps the page cache ahead of the client, outside ferry's memory.
//!
//! `tokio::fs::File` would read into its own buffer and copy into the caller's, one extra memcpy
//! per byte served. And opening: a layout may sit on a USB disk from anywhere, so every reader
//! goes through [`open_regular`], which never opens a FIFO, socket or device for reading and
//! never follows a symlink out of the layout.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The first and smallest chunk of a streamed download.
pub const MIN_CHUNK: usize = 16 << 10;
/// The largest chunk: a fast client's downloads read this much at a time.
pub const MAX_CHUNK: usize = 64 << 10;
/// Bytes of chunks read and not yet written, over all streamed downloads of the process.
pub const BUDGET_BYTES: usize = 64 << 20;
/// A consumer back within this long took the last chunk at once: grow.
const FAST: Duration = Duration::from_millis(1);
/// A consumer back after this long is limited by its client: shrink.
const SLOW: Duration = Duration::from_millis(20);
/// Idle buffers kept for reuse (at most this × [`MAX_CHUNK`] bytes).
const POOL_KEEP: usize = 128;

static BUDGET: Semaphore = Semaphore::const_new(BUDGET_BYTES / MIN_CHUNK);
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A pooled buffer holding `len` bytes of a chunk, and its share of [`BUDGET`].
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    _permit: SemaphorePermit<'static>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    }
}

/// A zeroed [`MAX_CHUNK`] buffer, from the pool when one is there.
fn pooled() -> Vec<u8> {
    let reused = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
    reused.unwrap_or_else(|| vec![0; MAX_CHUNK])
}

/// `preadv2(RWF_NOWAIT)`: what of `buf` the page cache holds at `pos`, without waiting for the
/// disk (`WouldBlock` when none of it is cached).
fn read_cached(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let off = libc::off_t::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: one iovec describing `buf`, which outlives the call; the descriptor is open.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Fill `buf` from `pos` (blocking), or fail with `UnexpectedEof` if the file ends first.
fn read_full(file: &File, buf: &mut [u8], pos: u64) -> io::Result<()> {
    file.read_exact_at(buf, pos).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file is shorter than its recorded size",
            )
        } else {
            e
        }
    })
}

struct Reader {
    file: Arc<File>,
    pos: u64,
    end: u64,
    size: usize,
    /// When the last chunk was handed out.
    handed: Option<Instant>,
    /// `RWF_NOWAIT` works on this file.
    nowait: bool,
}

impl Reader {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        if let Some(t) = self.handed {
            let gap = t.elapsed();
            if gap < FAST {
                self.size = (self.size * 2).min(MAX_CHUNK);
            } else if gap > SLOW {
                self.size = (self.size / 2).max(MIN_CHUNK);
            }
        }
        let want = (self.size as u64).min(self.end - self.pos) as usize;
        let units = want.div_ceil(MIN_CHUNK) as u32;
        let permit = BUDGET
            .acquire_many(units)
            .await
            .map_err(|_| io::Error::other("read budget closed"))?;
        let mut buf = pooled();
        let mut got = 0;
        if self.nowait {
            match read_cached(&self.file, &mut buf[..want], self.pos) {
                Ok(n) => got = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EOPNOTSUPP, EINVAL: a filesystem or kernel without RWF_NOWAIT.
                Err(_) => self.nowait = false,
            }
        }
        if got == 0 {
            let (file, pos) = (self.file.clone(), self.pos);
            let (b, res) = tokio::task::spawn_blocking(move || {
                let res = read_full(&file, &mut buf[..want], pos);
                (buf, res)
            })
            .await
            .map_err(io::Error::other)?;
            res?;
            buf = b;
            got = want;
        }
        self.pos += got as u64;
        self.handed = Some(Instant::now());
        Ok(Some(Bytes::from_owner(Chunk {
            buf,
            len: got,
            _permit: permit,
        })))
    }
}

/// Stream `len` bytes of `file` from `offset` (see the module's documentation).
pub fn stream_file(file: File, offset: u64, len: u64) -> impl Stream<Item = io::Result<Bytes>> {
    // SAFETY: posix_fadvise on an open descriptor; advice only, failure is harmless.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
    let reader = Reader {
        file: Arc::new(file),
        pos: offset,
        end: offset.saturating_add(len),
        size: MIN_CHUNK,
        handed: None,
        nowait: true,
    };
    futures_util::stream::try_unfold(reader, |mut r| async move {
        Ok(r.next().await?.map(|b| (b, r)))
    })
}

/// What a name inside a layout turned out to be, for a reader that must not trust it.
#[derive(Debug)]
pub enum Found {
    /// A regular file (reached directly, or through a symlink that stays inside the layout),
    /// open for reading, and its length.
    File(File, u64),
    Missing,
    /// Something ferry refuses to read as content, and why (`a FIFO, not a regular file`,
    /// `a symlink leaving the layout (to /etc/passwd)`).
    Refused(String),
}

/// What [`kind_of`] calls a directory (GC leaves those in place).
pub const DIRECTORY: &str = "a directory";

/// What kind of thing a non-regular file is, for messages.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        DIRECTORY
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// Where `path` leads, if ferry may read it: itself when it is no symlink, else its target when
/// that stays inside `root` (which must be canonical). Looks, never opens.
fn resolve(root: &Path, path: &Path) -> io::Result<Result<std::path::PathBuf, Found>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(Found::Missing)),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_symlink() {
        return Ok(Ok(path.to_owned()));
    }
    match std::fs::canonicalize(path) {
        Ok(target) if target.starts_with(root) => Ok(Ok(target)),
        Ok(target) => Ok(Err(Found::Refused(format!(
            "a symlink leaving the layout (to {})",
            target.display()
        )))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Err(Found::Refused("a symlink to nothing".to_owned())))
        }
        Err(e) => Ok(Err(Found::Refused(format!(
            "a symlink that cannot be followed ({e})"
        )))),
    }
}

/// Open a file of a layout the way every reader of hostile media must (USB disks, directories
/// another tool wrote): only a regular file, or a symlink that stays inside `root` (canonical)
/// and ends at one. A FIFO, socket, device or directory is refused without ever being opened
/// for reading: the open itself is non-blocking (a FIFO with no writer would otherwise block it
/// forever), does not follow a symlink swapped in since the look, and the type is checked on the
/// open descriptor.
pub fn open_regular(root: &Path, path: &Path) -> io::Result<Found> {
    use std::os::unix::fs::OpenOptionsExt;
    let target = match resolve(root, path)? {
        Ok(t) => t,
        Err(found) => return Ok(found),
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(&target)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Found::Refused(
                "a symlink (changed while being read)".into(),
            ))
        }
        // A socket cannot be opened at all.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Ok(Found::Refused("a socket, not a regular file".into()))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Found::Refused(format!(
            "{}, not a regular file",
            kind_of(meta.file_type())
        )));
    }
    clear_nonblock(&file);
    Ok(Found::File(file, meta.len()))
}

/// What a name of a layout is, by looking only (never opening): a readable regular file and its
/// size, nothing, or something [`open_regular`] would refuse, and why.
fn probe(root: &Path, path: &Path) -> io::Result<Result<u64, Found>> {
    let target = match resolve(root, path)? {
        Ok(t) => t,
        Err(found) => return Ok(Err(found)),
    };
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => Ok(Ok(m.len())),
        Ok(m) => Ok(Err(Found::Refused(format!(
            "{}, not a regular file",
            kind_of(m.file_type())
        )))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Err(Found::Missing)),
        Err(e) => Err(e),
    }
}

/// The size of a regular file of a layout (as [`open_regular`] would accept it), without opening
/// it: `Ok(None)` when it is missing or refused.
pub fn regular_size(root: &Path, path: &Path) -> io::Result<Option<u64>> {
    Ok(probe(root, path)?.ok())
}

/// Why a name of a layout is not content ferry reads (`a FIFO, not a regular file`, `a symlink
/// leaving the layout (to …)`), or `None` when it is a readable regular file or simply absent.
/// Looks, never opens.
pub fn refusal(root: &Path, path: &Path) -> io::Result<Option<String>> {
    Ok(match probe(root, path)? {
        Err(Found::Refused(why)) => Some(why),
        _ => None,
    })
}

/// Why [`read_regular`] read nothing.
#[derive(Debug)]
pub enum Unread {
    Missing,
    /// As [`Found::Refused`], or longer than the limit.
    Refused(String),
}

/// Read a whole small file of a layout (`index.json`, `oci-layout`, a manifest) as
/// [`open_regular`] allows, refusing one longer than `limit` before reading it.
pub fn read_regular(root: &Path, path: &Path, limit: u64) -> io::Result<Result<Vec<u8>, Unread>> {
    let (f, len) = match open_regular(root, path)? {
        Found::File(f, len) => (f, len),
        Found::Missing => return Ok(Err(Unread::Missing)),
        Found::Refused(why) => return Ok(Err(Unread::Refused(why))),
    };
    if len > limit {
        return Ok(Err(Unread::Refused(format!(
            "{len} bytes, more than the {limit} allowed"
        ))));
    }
    let mut buf = Vec::with_capacity(len as usize);
    // `take`: a file that grows while being read still cannot exceed the limit.
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Ok(Err(Unread::Refused(format!(
            "more than the {limit} bytes allowed"
        ))));
    }
    Ok(Ok(buf))
}

/// Open one of ferry's own files under `.ferry/` (a lock, a partial download, an upload session,
/// a read marker) for writing, and for reading when `read`; create it when `create`. In a data
/// directory that came from elsewhere these names may hold anything too: a FIFO would block the
/// open (for writing) or the first read forever. So the open is non-blocking and does not follow
/// a symlink, and anything but a regular file is an error naming the path.
pub fn open_private(path: &Path, create: bool, read: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .create(create)
        .truncate(false)
        .write(true)
        .read(read)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::other(format!(
                "{} is a symlink; ferry keeps its own state in plain files (remove it)",
                path.display()
            )))
        }
        // A FIFO with no reader (opened for writing), a socket, a directory.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::EISDIR)) => {
            let kind = std::fs::symlink_metadata(path)
                .map(|m| kind_of(m.file_type()))
                .unwrap_or("not a regular file");
            return Err(io::Error::other(format!(
                "{} is {kind}, not a regular file (remove it)",
                path.display()
            )));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is {}, not a regular file (remove it)",
            path.display(),
            kind_of(meta.file_type())
        )));
    }
    clear_nonblock(&file);
    Ok(file)
}

/// The files above are opened non-blocking only so that the open cannot hang. Reads of a regular
/// file ignore O_NONBLOCK on local filesystems, but not on every FUSE or network one: clear it
/// once the type is known.
fn clear_nonblock(file: &File) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags >= 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    }
}
