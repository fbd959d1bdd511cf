//! Which Go wrote a gzip blob: decompress it once (on a thread of its own) and re-encode it with
//! every (generation, level) its header allows, comparing each encoder's output with the blob
//! as it is produced. A wrong guess dies at its first differing byte (within the first block,
//! tens of KiB of input), so a matching blob costs one encode and a non-Go one little. The
//! header (magic, flags, OS byte) and the last bytes before the trailer (each generation ends
//! its stream its own way) rule out GNU gzip, pigz and zlib streams without decoding anything.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use super::{read_full, Generation, GozipError, GzipEncoder, COPY_CHUNK};

/// Bytes that can be read at any offset (a file, a slice): the decoder and every candidate
/// read the blob at their own pace.
pub trait Source: Sync {
    fn size(&self) -> io::Result<u64>;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl Source for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl Source for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// What [`recognise`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recognition {
    /// Go's `gzip.NewWriterLevel(w, level)` of this generation rebuilds the blob exactly (with
    /// `mtime` in the header; 0 for every layer producer).
    Go {
        generation: Generation,
        level: i32,
        mtime: u32,
    },
    /// No Go writer rebuilds it; why, in words.
    NotGo(String),
}

impl std::fmt::Display for Recognition {
    /// The line `ferry debug gozip recognise` prints: `go-classic 6`, `go-1.27 9` or `not-go`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recognition::Go {
                generation, level, ..
            } => write!(f, "go-{generation} {level}"),
            Recognition::NotGo(_) => f.write_str("not-go"),
        }
    }
}

/// Reads a [`Source`] from an offset, in order.
struct Seq<'a, S: Source + ?Sized> {
    src: &'a S,
    pos: u64,
}

impl<S: Source + ?Sized> Read for Seq<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A writer that compares what it is given with the blob, failing at the first difference.
struct Compare<'a, S: Source + ?Sized> {
    src: &'a S,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
}

impl<S: Source + ?Sized> Write for Compare<'_, S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let differs = || io::Error::other("differs");
        if self.pos + data.len() as u64 > self.len {
            return Err(differs());
        }
        self.buf.resize(data.len(), 0);
        let mut got = 0;
        while got < data.len() {
            let n = self
                .src
                .read_at(&mut self.buf[got..], self.pos + got as u64)?;
            if n == 0 {
                return Err(differs());
            }
            got += n;
        }
        if self.buf[..] != *data {
            return Err(differs());
        }
        self.pos += data.len() as u64;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The (generation, level) whose Go writer rebuilds `src` byte for byte, or why none does.
/// When several rebuild it (tiny inputs, where levels coincide), the first of: level 6, then
/// 0, −2, 1 … 9; classic before 1.27. Errors are only the source's own read errors.
pub fn recognise<S: Source + ?Sized>(src: &S) -> Result<Recognition, GozipError> {
    let not = |why: &str| Ok(Recognition::NotGo(why.to_string()));
    let len = src.size()?;
    if len < 18 {
        return not("shorter than a gzip header and trailer");
    }
    let mut h = [0u8; 10];
    Seq { src, pos: 0 }.read_exact(&mut h)?;
    if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
        return not("not a gzip stream (magic or method)");
    }
    if h[3] != 0 {
        return not(
            "the header has flags (a name, comment, extra field or CRC) Go's writer does not set",
        );
    }
    if h[9] != 255 {
        return not("the header's OS byte is not 255, which Go writes");
    }
    let levels: &[i32] = match h[8] {
        2 => &[9],
        4 => &[1],
        0 => &[6, 0, -2, 2, 3, 4, 5, 7, 8],
        _ => return not("the header's XFL byte is not one Go writes"),
    };
    let mtime = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    // How each generation ends its stream, before the 8-byte trailer: the classic one with an
    // empty final stored block (`00 00 ff ff` last), Go 1.27 with a final fixed block holding
    // only its end (so a last byte of 0). Four bytes rule out most other encoders at once.
    let mut tail = [0u8; 4];
    let mut seq = Seq { src, pos: len - 12 };
    seq.read_exact(&mut tail)?;
    let ends_classic = len >= 23 && tail == [0, 0, 0xff, 0xff];
    let ends_127 = tail[3] == 0;
    if !ends_classic && !ends_127 {
        return not("the stream does not end as Go's writers end it");
    }
    struct Candidate<'a, S: Source + ?Sized> {
        generation: Generation,
        level: i32,
        enc: GzipEncoder<Compare<'a, S>>,
    }
    let mut live = Vec::new();
    for generation in Generation::ALL {
        let ends_right = match generation {
            Generation::Classic => ends_classic,
            Generation::Go127 => ends_127,
        };
        if !ends_right {
            continue;
        }
        for &level in levels {
            let cmp = Compare {
                src,
                len,
                pos: 0,
                buf: Vec::new(),
            };
            let enc = GzipEncoder::with_mtime(cmp, generation, level, mtime)?;
            live.push(Candidate {
                generation,
                level,
                enc,
            });
        }
    }
    let decode_error = std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(2);
        scope.spawn(move || {
            let mut dec = flate2::read::DeflateDecoder::new(Seq { src, pos: 10 });
            loop {
                let mut buf = vec![0u8; COPY_CHUNK];
                match read_full(&mut dec, &mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        let last = n < COPY_CHUNK;
                        if tx.send(Ok(buf)).is_err() || last {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        for chunk in rx {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Some(e),
            };
            if !chunk.is_empty() {
                live.retain_mut(|c| c.enc.write_all(&chunk).is_ok());
            }
            if live.is_empty() {
                break;
            }
        }
        None
        // Dropping rx stops the decoder at its next chunk.
    });
    if let Some(e) = decode_error {
        return Ok(Recognition::NotGo(format!(
            "the deflate stream does not decode: {e}"
        )));
    }
    for c in live {
        if let Ok(cmp) = c.enc.finish() {
            if cmp.pos == len {
                return Ok(Recognition::Go {
                    generation: c.generation,
                    level: c.level,
                    mtime,
                });
            }
        }
    }
    not("no Go writer (classic or 1.27, any level) writes these bytes")
}
