//! Streaming a blob out: a blocking thread `pread`s fixed-size chunks straight into fresh buffers
//! and hands them over a small bounded channel.
//!
//! `tokio::fs::File` would read into its own buffer and copy into the caller's, one extra memcpy
//! per byte served; on the 2-core machines ferry runs on that copy was a visible share of a pull.
//! Memory per download is bounded by the channel (a few chunks), whatever the blob's size.
//!
//! And opening one safely: a layout may sit on a USB disk from anywhere, so every reader goes
//! through [`open_regular`], which never opens a FIFO, socket or device for reading and never
//! follows a symlink out of the layout.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;

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
