//! Go's `compress/gzip`, byte for byte: write exactly what `gzip.NewWriterLevel(w, level)` +
//! `Write` + `Close` writes, and recognise which Go wrote a gzip blob.
//!
//! Every gzip layer that docker, BuildKit and containerd push is Go's `compress/gzip` over the
//! layer's tar, and Go's compressor is deterministic, so a layer can be rebuilt bit-exactly from
//! its tar once ferry knows which Go and which level made it. Two encoders cover them all:
//!
//! - [`Generation::Classic`]: Go 1.19 … 1.26 (they write identical bytes at every level), the
//!   `compress/flate` of `deflate.go` + `deflatefast.go` ([`classic`]);
//! - [`Generation::Go127`]: Go 1.27's rewritten `compress/flate` (`level1.go` … `level6.go`).
//!
//! The algorithms are Go's, ported from the Go source (`src/compress/{flate,gzip}/` of each
//! toolchain; BSD-3-Clause, Copyright The Go Authors). They are written by hand because no crate
//! reproduces Go's output: zlib, miniz and libdeflate make different (equally valid) choices.
//!
//! What Go's writer does that these do not: a header with a name, comment or extra field
//! (`Writer.Header`; the mtime is supported), `Flush` (a sync marker mid-stream), `NewWriterDict`
//! and `Reset`. No layer producer uses them. Go's float arithmetic in Go 1.27's size estimate is
//! reproduced as amd64 computes it (no fused multiply-add); a Go built for arm64 may fuse it
//! and choose differently in rare blocks (not checked: no arm64 Go here).
//!
//! How the input is split into `Write` calls: [`GzipEncoder::write`] takes each call as Go's
//! `Write` does (the same steps at the same moments), and [`encode`] and [`recognise`] use
//! `io.Copy`'s 32 KiB writes. Go's output did not depend on the split in any test (writes of 1 byte
//! to 1 MiB, text and random, both generations); in the classic generation the moment the window
//! slides can move by a match with the split, so in principle a block boundary falling in that
//! moment could change whether a block is stored.

pub mod classic;
pub mod go127;
mod shared;

use std::io::{self, Read, Write};

/// The chunk `io.Copy` writes in, and so the split [`encode`] and [`recognise`] use.
pub const COPY_CHUNK: usize = 32 * 1024;

/// Which `compress/flate` wrote the stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Generation {
    /// Go 1.19 … 1.26.
    Classic,
    /// Go 1.27 and later.
    Go127,
}

impl Generation {
    pub const ALL: [Generation; 2] = [Generation::Classic, Generation::Go127];

    pub fn name(self) -> &'static str {
        match self {
            Generation::Classic => "classic",
            Generation::Go127 => "1.27",
        }
    }
}

impl std::str::FromStr for Generation {
    type Err = GozipError;
    fn from_str(s: &str) -> Result<Self, GozipError> {
        match s {
            "classic" => Ok(Generation::Classic),
            "1.27" => Ok(Generation::Go127),
            other => Err(GozipError::Generation(other.to_string())),
        }
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GozipError {
    #[error("gzip level {0} is not one Go accepts (-2 … 9)")]
    Level(i32),
    #[error("unknown Go gzip generation {0:?} (classic or 1.27)")]
    Generation(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Go accepts −2 (Huffman only), −1 (default, = 6), 0 (stored) … 9.
pub fn check_level(level: i32) -> Result<(), GozipError> {
    if (-2..=9).contains(&level) {
        Ok(())
    } else {
        Err(GozipError::Level(level))
    }
}

enum Flate {
    Classic(Box<classic::Compressor>),
    Go127(Box<go127::Compressor>),
}

impl Flate {
    fn new(generation: Generation, level: i32) -> Result<Self, GozipError> {
        check_level(level)?;
        match generation {
            Generation::Classic => Ok(Flate::Classic(Box::new(classic::Compressor::new(level)))),
            Generation::Go127 => Ok(Flate::Go127(Box::new(go127::Compressor::new(level)))),
        }
    }

    fn write(&mut self, b: &[u8], drain: &mut dyn FnMut(&mut Vec<u8>)) {
        match self {
            Flate::Classic(c) => c.write(b, drain),
            Flate::Go127(c) => c.write(b, drain),
        }
    }

    fn close(&mut self) -> &mut Vec<u8> {
        match self {
            Flate::Classic(c) => {
                c.close();
                &mut c.w.out
            }
            Flate::Go127(c) => {
                c.close();
                c.out()
            }
        }
    }
}

/// Go's `gzip.Writer` at a level: header (no name, the given mtime, XFL from the level, OS
/// 255), Go's deflate, CRC-32 and size. Memory is the window and tables (under 1 MiB for the
/// classic generation), whatever the input.
pub struct GzipEncoder<W: Write> {
    inner: W,
    flate: Flate,
    crc: crc32fast::Hasher,
    size: u32,
    header: [u8; 10],
    wrote_header: bool,
    err: Option<io::Error>,
}

impl<W: Write> GzipEncoder<W> {
    pub fn new(inner: W, generation: Generation, level: i32) -> Result<Self, GozipError> {
        Self::with_mtime(inner, generation, level, 0)
    }

    /// `mtime` as Go's `Header.ModTime` (seconds; 0 = unset, which every layer producer leaves).
    pub fn with_mtime(
        inner: W,
        generation: Generation,
        level: i32,
        mtime: u32,
    ) -> Result<Self, GozipError> {
        let flate = Flate::new(generation, level)?;
        let mut header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        header[4..8].copy_from_slice(&mtime.to_le_bytes());
        header[8] = match level {
            9 => 2,
            1 => 4,
            _ => 0,
        };
        Ok(GzipEncoder {
            inner,
            flate,
            crc: crc32fast::Hasher::new(),
            size: 0,
            header,
            wrote_header: false,
            err: None,
        })
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.wrote_header {
            self.wrote_header = true;
            self.inner.write_all(&self.header)?;
        }
        Ok(())
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_header()?;
        let out = self.flate.close();
        self.inner.write_all(out)?;
        out.clear();
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        trailer[4..].copy_from_slice(&self.size.to_le_bytes());
        self.inner.write_all(&trailer)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipEncoder<W> {
    /// One Go `Write` call with the whole of `buf` (Go's output can depend on the split).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.err.take() {
            return Err(e);
        }
        self.write_header()?;
        self.size = self.size.wrapping_add(buf.len() as u32);
        self.crc.update(buf);
        let inner = &mut self.inner;
        let err = &mut self.err;
        self.flate.write(buf, &mut |out: &mut Vec<u8>| {
            if err.is_none() && !out.is_empty() {
                if let Err(e) = inner.write_all(out) {
                    *err = Some(e);
                }
            }
            out.clear();
        });
        match self.err.take() {
            Some(e) => Err(e),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Gzip `input` as Go would when `io.Copy`ing it into `gzip.NewWriterLevel(w, level)`: Writes
/// of [`COPY_CHUNK`] bytes. Returns the bytes read.
pub fn encode(
    input: impl Read,
    output: impl Write,
    generation: Generation,
    level: i32,
) -> Result<u64, GozipError> {
    encode_with_mtime(input, output, generation, level, 0)
}

/// [`encode`] with the header's mtime set (Go's `Header.ModTime`, in seconds).
pub fn encode_with_mtime(
    mut input: impl Read,
    output: impl Write,
    generation: Generation,
    level: i32,
    mtime: u32,
) -> Result<u64, GozipError> {
    let mut enc = GzipEncoder::with_mtime(output, generation, level, mtime)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])?;
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    enc.finish()?;
    Ok(total)
}

/// Reads until `buf` is full or the input ends, so the split does not depend on how the
/// reader returns its bytes.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

mod recognise;
pub use recognise::{recognise, Recognition, Source};
