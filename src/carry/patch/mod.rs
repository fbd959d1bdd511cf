//! Layer patches: carry what changed inside a gzip layer, and rebuild the layer bit-exactly on
//! the far side from a layer it already holds (the *base*) and the patch.
//!
//! A layer pushed by docker, BuildKit or containerd is Go's `compress/gzip` over a tar, and
//! Go's compressor is deterministic ([`ferry_gozip`]): once ferry knows which Go and which level
//! wrote a layer, the layer is a function of its tar. A patch therefore describes the new tar
//! in terms of the base's tar, and the far side re-encodes it with the same Go encoder.
//!
//! The patch's form is *tar groups* ([`tar`]): the new tar is cut into members (with their
//! extension headers); a member whose bytes are the same as the base's member of that path is
//! a copy of a byte range of the base tar; the other bytes are zstd frames, each compressed with
//! the base bytes of the same members as its reference prefix (zstd's "patch-from" at member
//! granularity: a changed file costs what changed in it, a new one its compressed size).
//! Changes close together share a frame (unchanged bytes between them, up to [`MERGE`], travel
//! inside it as matches against its reference), and a reference is at least [`MIN_PREFIX`] of
//! the base around the changed members, whose neighbours are the likeliest to share their
//! content. Every frame writes at most [`UNIT`] bytes and refers to at most [`SPAN`] base bytes,
//! so making and applying a patch takes tens of MiB whatever the layer's size; the base's tar is
//! kept on disk. Frames are compressed on a thread of their own while the target is read.
//!
//! A patch is one file: [`MAGIC`], a length-prefixed JSON [`Recipe`] (the target and base by
//! digest and size, the sha256 and size of both tars, the encoder and level, the counts), the
//! ops (one zstd frame of fixed records) and the data frames, in op order. Everything in it is
//! checked as it is read: sizes against the recipe and the format's bounds, the rebuilt tar
//! against the recipe's sha256, the rebuilt layer against the target digest. A patch is only
//! carried after it rebuilt its layer on the side that made it.

pub mod list;
pub(crate) mod tar;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zstd::zstd_safe;

use crate::vocab::digest::{Algorithm, Digest, Hasher};
use ferry_gozip::Generation;

/// The first bytes of a patch.
pub const MAGIC: &[u8; 8] = b"FRYPATCH";
/// The recipe's `format`.
pub const FORMAT: &str = "ferry-patch/1";
/// The media type a patch blob is carried under (in the trip's [`LIST`]).
pub const MEDIA_TYPE: &str = "application/vnd.ferry.layer.patch.v1";
/// The form this version writes.
pub const FORM: &str = "tar-groups";
/// Most bytes one data frame writes (and so most bytes a frame's output takes in memory).
pub const UNIT: usize = 8 << 20;
/// Most base bytes one data frame uses as its reference.
pub const SPAN: u64 = 32 << 20;
/// For a member larger than [`UNIT`], cut into units: how far either side of a unit's own
/// offset in the base member its reference reaches (an insertion shifts the rest).
const SLACK: u64 = 8 << 20;
/// Unchanged bytes (copies) shorter than this between two changes travel inside one data frame.
pub const MERGE: u64 = 4 << 20;
/// The least base a data frame with a reference refers to.
pub const MIN_PREFIX: u64 = 8 << 20;
const MAX_RECIPE: u32 = 64 << 10;
const OP_COPY: u8 = 0;
const OP_DATA: u8 = 1;
const OP_LEN: usize = 33;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch itself is malformed, truncated or out of its bounds.
    #[error("the patch is unusable: {0}")]
    Format(String),
    /// The base given is not the one the patch was made from.
    #[error("wrong base: {0}")]
    Base(String),
    /// Applying gave other bytes than the recipe names.
    #[error("the rebuilt layer is wrong: {0}")]
    Output(String),
    /// The layer cannot be patched (said to the user as the reason it is carried whole).
    #[error("{0}")]
    Unpatchable(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn format_err(msg: impl Into<String>) -> PatchError {
    PatchError::Format(msg.into())
}

/// What a patch rebuilds, from what, and how; the JSON at the head of every patch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recipe {
    pub format: String,
    pub form: String,
    pub target: Digest,
    pub target_size: u64,
    /// sha256 of the target's tar (its diff ID) and its size.
    pub target_tar: Digest,
    pub target_tar_size: u64,
    pub base: Digest,
    pub base_size: u64,
    pub base_tar: Digest,
    pub base_tar_size: u64,
    /// `go-classic` or `go-1.27`.
    pub encoder: String,
    pub level: i32,
    #[serde(default)]
    pub mtime: u32,
    pub ops: u64,
    pub ops_bytes: u64,
    pub data_bytes: u64,
}

impl Recipe {
    pub fn generation(&self) -> Result<Generation, PatchError> {
        match self
            .encoder
            .strip_prefix("go-")
            .map(str::parse::<Generation>)
        {
            Some(Ok(g)) => Ok(g),
            _ => Err(format_err(format!("unknown encoder {:?}", self.encoder))),
        }
    }
}

/// A layer's bytes as a tar: gzip (one or more members), zstd, or a tar as it is.
pub fn layer_tar<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 << 10, r);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Counts, hashes and (optionally) copies what is read through it.
struct Tee<R, W> {
    inner: R,
    copy: Option<W>,
    hasher: Hasher,
    n: u64,
    limit: u64,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        if self.n > self.limit {
            return Err(io::Error::other(format!(
                "the tar is larger than {} bytes",
                self.limit
            )));
        }
        self.hasher.update(&buf[..n]);
        if let Some(w) = &mut self.copy {
            w.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// A base layer's tar, on disk, with its members' byte ranges by path.
pub struct BaseTar {
    file: File,
    pub size: u64,
    pub sha256: Digest,
    index: std::collections::HashMap<String, (u64, u64)>,
    /// Set while a thread is still writing the file ([`BaseTar::spool_behind`]).
    fill: Option<std::sync::Arc<Fill>>,
}

/// How far a base tar being written behind has come.
struct Fill {
    state: std::sync::Mutex<FillState>,
    moved: std::sync::Condvar,
    cancel: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct FillState {
    written: u64,
    /// The tar's size and sha256 once it is all written, or why it could not be.
    done: Option<Result<(u64, Digest), String>>,
}

impl Drop for BaseTar {
    fn drop(&mut self) {
        if let Some(f) = &self.fill {
            f.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl BaseTar {
    /// Decompress `layer` into a temporary file in `tmp` (at most `limit` bytes of tar),
    /// indexing its members.
    pub fn spool(layer: impl Read, tmp: &Path, limit: u64) -> Result<BaseTar, PatchError> {
        let file = tempfile::tempfile_in(tmp)?;
        let tee = Tee {
            inner: layer_tar(layer)?,
            copy: Some(io::BufWriter::with_capacity(1 << 20, file.try_clone()?)),
            hasher: Algorithm::Sha256.hasher(),
            n: 0,
            limit,
        };
        let mut groups = tar::Groups::new(tee);
        let mut index = std::collections::HashMap::new();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            let at = groups.inner.n;
            let Some(g) = groups.next_group()? else { break };
            let data = match g.data {
                Some(n) => io::copy(&mut (&mut groups.inner).take(n), &mut io::sink())?,
                None => {
                    let mut total = 0u64;
                    loop {
                        let n = groups.inner.read(&mut sink)?;
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    total
                }
            };
            if let Some(name) = g.name {
                index
                    .entry(name)
                    .or_insert((at, g.head.len() as u64 + data));
            }
        }
        let tee = groups.inner;
        let size = tee.n;
        let sha256 = tee.hasher.finish();
        if let Some(mut w) = tee.copy {
            w.flush()?;
        }
        Ok(BaseTar {
            file,
            size,
            sha256,
            index,
            fill: None,
        })
    }

    /// Decompress `layer` into a temporary file on a thread of its own, returning at once: a
    /// read waits until the bytes it needs are written, so applying a patch (which reads the
    /// base mostly in order) runs alongside the decompression. Members are not indexed (an
    /// apply needs none); [`BaseTar::totals`] waits for the end.
    pub fn spool_behind(
        layer: impl Read + Send + 'static,
        tmp: &Path,
        limit: u64,
    ) -> Result<BaseTar, PatchError> {
        let file = tempfile::tempfile_in(tmp)?;
        let fill = std::sync::Arc::new(Fill {
            state: std::sync::Mutex::new(FillState::default()),
            moved: std::sync::Condvar::new(),
            cancel: std::sync::atomic::AtomicBool::new(false),
        });
        let (mut w, f2) = (file.try_clone()?, fill.clone());
        std::thread::spawn(move || {
            let run = || -> Result<(u64, Digest), String> {
                let mut r = layer_tar(layer).map_err(|e| e.to_string())?;
                let mut h = Algorithm::Sha256.hasher();
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0u64;
                loop {
                    if f2.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err("cancelled".into());
                    }
                    let k = tar::read_full(&mut r, &mut buf).map_err(|e| e.to_string())?;
                    if k == 0 {
                        return Ok((n, h.finish()));
                    }
                    n += k as u64;
                    if n > limit {
                        return Err(format!("its tar is larger than {limit} bytes"));
                    }
                    h.update(&buf[..k]);
                    w.write_all(&buf[..k]).map_err(|e| e.to_string())?;
                    let mut st = f2.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.written = n;
                    f2.moved.notify_all();
                }
            };
            let done = run();
            let mut st = f2.state.lock().unwrap_or_else(|p| p.into_inner());
            st.done = Some(done);
            f2.moved.notify_all();
        });
        Ok(BaseTar {
            file,
            size: 0,
            sha256: Digest::sha256_of(b""),
            index: Default::default(),
            fill: Some(fill),
        })
    }

    /// The tar's size and sha256 (waiting for a tar still being written).
    pub fn totals(&self) -> Result<(u64, Digest), PatchError> {
        let Some(f) = &self.fill else {
            return Ok((self.size, self.sha256.clone()));
        };
        let mut st = f.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &st.done {
                Some(Ok(t)) => return Ok(t.clone()),
                Some(Err(e)) => return Err(PatchError::Base(e.clone())),
                None => st = f.moved.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// The member paths of the base (how bases are chosen by shared members).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), PatchError> {
        let end = off.checked_add(buf.len() as u64);
        let size = match (&self.fill, end) {
            (Some(f), Some(end)) => {
                let mut st = f.state.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    match &st.done {
                        Some(Ok((size, _))) => break *size,
                        Some(Err(e)) => return Err(PatchError::Base(e.clone())),
                        None if st.written >= end => break st.written,
                        None => st = f.moved.wait(st).unwrap_or_else(|p| p.into_inner()),
                    }
                }
            }
            _ => self.size,
        };
        match end {
            Some(end) if end <= size => Ok(self.file.read_exact_at(buf, off)?),
            _ => Err(format_err(format!(
                "a range of {} bytes at {off} is outside the base's tar ({size} bytes)",
                buf.len(),
            ))),
        }
    }
}

/// The member paths of a layer, read from its tar headers (data is read past, not kept).
pub fn member_names(layer: impl Read, limit: u64) -> Result<Vec<String>, PatchError> {
    let tee = Tee::<_, io::Sink> {
        inner: layer_tar(layer)?,
        copy: None,
        hasher: Algorithm::Sha256.hasher(),
        n: 0,
        limit,
    };
    let mut groups = tar::Groups::new(tee);
    let mut out = Vec::new();
    while let Some(g) = groups.next_group()? {
        match g.data {
            Some(n) => {
                io::copy(&mut (&mut groups.inner).take(n), &mut io::sink())?;
            }
            None => {
                io::copy(&mut groups.inner, &mut io::sink())?;
            }
        }
        out.extend(g.name);
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Copy {
        off: u64,
        len: u64,
    },
    Data {
        prefix_off: u64,
        prefix_len: u64,
        out_len: u64,
        zlen: u64,
    },
}

impl Op {
    fn encode(&self) -> [u8; OP_LEN] {
        let mut b = [0u8; OP_LEN];
        let vals = match *self {
            Op::Copy { off, len } => {
                b[0] = OP_COPY;
                [off, len, 0, 0]
            }
            Op::Data {
                prefix_off,
                prefix_len,
                out_len,
                zlen,
            } => {
                b[0] = OP_DATA;
                [prefix_off, prefix_len, out_len, zlen]
            }
        };
        for (i, v) in vals.iter().enumerate() {
            b[1 + 8 * i..9 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8; OP_LEN]) -> Result<Op, PatchError> {
        let v = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[1 + 8 * i..9 + 8 * i]);
            u64::from_le_bytes(x)
        };
        match b[0] {
            OP_COPY => Ok(Op::Copy {
                off: v(0),
                len: v(1),
            }),
            OP_DATA => Ok(Op::Data {
                prefix_off: v(0),
                prefix_len: v(1),
                out_len: v(2),
                zlen: v(3),
            }),
            t => Err(format_err(format!("unknown op {t}"))),
        }
    }
}

/// What [`make`] needs to know about the target.
pub struct Target<'a> {
    pub digest: &'a Digest,
    /// The layer as stored (gzip, Go's).
    pub blob: &'a File,
    pub generation: Generation,
    pub level: i32,
    pub mtime: u32,
}

/// A patch written to a temporary file.
pub struct Made {
    pub recipe: Recipe,
    pub file: File,
    pub size: u64,
}

/// zstd with a reference prefix, as one frame.
fn compress(prefix: &[u8], data: &[u8], level: i32) -> Result<Vec<u8>, PatchError> {
    let zerr = |what: &str, code: usize| {
        PatchError::Io(io::Error::other(format!(
            "zstd {what}: {}",
            zstd_safe::get_error_name(code)
        )))
    };
    let mut cctx = zstd_safe::CCtx::create();
    let total = (prefix.len() + data.len()).max(1) as u64;
    let window = (64 - (total - 1).leading_zeros()).clamp(10, 27);
    // Against a reference, long-distance matching at a middle level finds what the optimal
    // parser of level 19 finds (within a few %) a hundred times faster, as `zstd --patch-from`
    // does; new bytes of some size get a middle level too, so making a patch stays within
    // the time of one encode of the layer.
    let level = if !prefix.is_empty() || data.len() > (1 << 20) {
        cctx.set_parameter(zstd_safe::CParameter::EnableLongDistanceMatching(true))
            .map_err(|c| zerr("long", c))?;
        level.min(9)
    } else {
        level
    };
    cctx.set_parameter(zstd_safe::CParameter::CompressionLevel(level))
        .map_err(|c| zerr("level", c))?;
    cctx.set_parameter(zstd_safe::CParameter::WindowLog(window))
        .map_err(|c| zerr("window", c))?;
    cctx.set_parameter(zstd_safe::CParameter::ChecksumFlag(false))
        .map_err(|c| zerr("checksum", c))?;
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).map_err(|c| zerr("prefix", c))?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data)
        .map_err(|c| zerr("compress", c))?;
    Ok(out)
}

fn decompress(prefix: &[u8], frame: &[u8], out_len: usize) -> Result<Vec<u8>, PatchError> {
    let mut dctx = zstd_safe::DCtx::create();
    let bad = |c: usize| {
        format_err(format!(
            "a data frame does not decode: {}",
            zstd_safe::get_error_name(c)
        ))
    };
    dctx.set_parameter(zstd_safe::DParameter::WindowLogMax(27))
        .map_err(bad)?;
    if !prefix.is_empty() {
        dctx.ref_prefix(prefix).map_err(bad)?;
    }
    let mut out = Vec::with_capacity(out_len);
    let n = dctx.decompress(&mut out, frame).map_err(bad)?;
    if n != out_len {
        return Err(format_err(format!(
            "a data frame writes {n} bytes, its op says {out_len}"
        )));
    }
    Ok(out)
}

/// Builds the op list as the target's units arrive; ops go, in order, to the [`frames`] thread,
/// which compresses the data frames while the target is read on.
struct Writer<'b> {
    base: &'b BaseTar,
    jobs: std::sync::mpsc::SyncSender<Job>,
    last_copy: Option<(u64, u64)>,
    pending: Vec<u8>,
    span: Option<(u64, u64)>,
}

enum Job {
    Copy(u64, u64),
    Data {
        prefix_off: u64,
        prefix_len: u64,
        bytes: Vec<u8>,
    },
}

/// What the frames thread wrote: the op list (one zstd frame) and the data frames.
struct Frames {
    ops: File,
    n_ops: u64,
    data: File,
    data_bytes: u64,
}

/// The frames thread: each job in order, an op record and, for data, its frame.
fn frames(
    base: &BaseTar,
    jobs: std::sync::mpsc::Receiver<Job>,
    tmp: &Path,
    level: i32,
) -> Result<Frames, PatchError> {
    let mut ops =
        zstd::stream::write::Encoder::new(io::BufWriter::new(tempfile::tempfile_in(tmp)?), 19)?;
    let mut data = io::BufWriter::with_capacity(1 << 20, tempfile::tempfile_in(tmp)?);
    let (mut n_ops, mut data_bytes) = (0u64, 0u64);
    let mut prefix = Vec::new();
    for job in jobs {
        let op = match job {
            Job::Copy(off, len) => Op::Copy { off, len },
            Job::Data {
                prefix_off,
                prefix_len,
                bytes,
            } => {
                prefix.resize(prefix_len as usize, 0);
                base.read_at(prefix_off, &mut prefix)?;
                let frame = compress(&prefix, &bytes, level)?;
                data.write_all(&frame)?;
                data_bytes += frame.len() as u64;
                Op::Data {
                    prefix_off,
                    prefix_len,
                    out_len: bytes.len() as u64,
                    zlen: frame.len() as u64,
                }
            }
        };
        ops.write_all(&op.encode())?;
        n_ops += 1;
    }
    Ok(Frames {
        ops: ops.finish()?.into_inner().map_err(|e| e.into_error())?,
        n_ops,
        data: data.into_inner().map_err(|e| e.into_error())?,
        data_bytes,
    })
}

impl Writer<'_> {
    fn send(&mut self, job: Job) -> Result<(), PatchError> {
        // The frames thread stopped: its own error is what the caller reports.
        self.jobs
            .send(job)
            .map_err(|_| PatchError::Io(io::Error::other("the frames thread stopped")))
    }

    fn copy(&mut self, off: u64, len: u64) -> Result<(), PatchError> {
        match &mut self.last_copy {
            Some((o, l)) if *o + *l == off => *l += len,
            Some(_) => {
                self.flush_data()?;
                self.flush_copy()?;
                self.last_copy = Some((off, len));
            }
            None => self.last_copy = Some((off, len)),
        }
        // A copy held after data may still join the data's frame (see `data`); a long one is
        // a copy for good.
        if self.last_copy.is_some_and(|(_, l)| l > MERGE) {
            self.flush_data()?;
        }
        Ok(())
    }

    fn flush_copy(&mut self) -> Result<(), PatchError> {
        if let Some((off, len)) = self.last_copy.take() {
            self.send(Job::Copy(off, len))?;
        }
        Ok(())
    }

    /// Bytes that are not a copy, with the base range that resembles them (if any).
    fn data(&mut self, bytes: &[u8], like: Option<(u64, u64)>) -> Result<(), PatchError> {
        let union = |a: Option<(u64, u64)>, b: Option<(u64, u64)>| match (a, b) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (s, l) => s.or(l),
        };
        let wide = |r: Option<(u64, u64)>| r.is_some_and(|(a, b)| b - a > SPAN);
        if let Some((off, len)) = self.last_copy {
            // Unchanged bytes between two changes: inside the frame they cost a few bytes (a
            // match against its reference), and the changes share one frame and a wider
            // reference, as `zstd --patch-from` would see them.
            let joined = union(union(self.span, Some((off, off + len))), like);
            if !self.pending.is_empty()
                && self.pending.len() as u64 + len + bytes.len() as u64 <= UNIT as u64
                && !wide(joined)
            {
                let at = self.pending.len();
                self.pending.resize(at + len as usize, 0);
                self.base.read_at(off, &mut self.pending[at..])?;
                self.span = union(self.span, Some((off, off + len)));
                self.last_copy = None;
            } else {
                self.flush_data()?;
                self.flush_copy()?;
            }
        }
        let joined = union(self.span, like);
        if !self.pending.is_empty() && (self.pending.len() + bytes.len() > UNIT || wide(joined)) {
            self.flush_data()?;
            self.span = like;
        } else {
            self.span = joined;
        }
        // A unit is at most UNIT bytes and a span at most SPAN (the caller clips them).
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn flush_data(&mut self) -> Result<(), PatchError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // A narrow reference (one changed file) is widened to its neighbours in the base: the
        // files beside a changed one are the likeliest to share its content.
        let (prefix_off, prefix_len) = match self.span.take() {
            Some((a, b)) if b - a < MIN_PREFIX => {
                let grow = (MIN_PREFIX - (b - a)) / 2;
                let a2 = a.saturating_sub(grow);
                let b2 = (b + grow).min(self.base.size.max(b));
                (a2, b2 - a2)
            }
            Some((a, b)) => (a, b - a),
            None => (0, 0),
        };
        let bytes = std::mem::replace(&mut self.pending, Vec::with_capacity(UNIT));
        self.send(Job::Data {
            prefix_off,
            prefix_len,
            bytes,
        })
    }
}

/// Read the target's tar group by group against the base: copies and data, to `w`. Returns
/// the target tar's size and sha256.
fn diff(
    base: &BaseTar,
    target: &Target<'_>,
    w: &mut Writer<'_>,
) -> Result<(u64, Digest), PatchError> {
    let tee = Tee::<_, io::Sink> {
        inner: layer_tar(target.blob)?,
        copy: None,
        hasher: Algorithm::Sha256.hasher(),
        n: 0,
        limit: u64::MAX,
    };
    let mut groups = tar::Groups::new(tee);
    let mut unit = vec![0u8; UNIT];
    let mut theirs = vec![0u8; UNIT];
    while let Some(g) = groups.next_group()? {
        let matched = g.name.as_ref().and_then(|n| base.index.get(n)).copied();
        let total = g.data.map(|d| g.head.len() as u64 + d);
        let mut head = io::Cursor::new(g.head);
        let mut body = (&mut head).chain(match g.data {
            Some(d) => (&mut groups.inner).take(d),
            None => (&mut groups.inner).take(u64::MAX),
        });
        let mut p = 0u64;
        loop {
            let n = tar::read_full(&mut body, &mut unit)?;
            if n == 0 {
                break;
            }
            let bytes = &unit[..n];
            let n64 = n as u64;
            let mut like = None;
            if let Some((boff, blen)) = matched {
                if p + n64 <= blen {
                    let theirs = &mut theirs[..n];
                    base.read_at(boff + p, theirs)?;
                    if theirs == bytes {
                        w.copy(boff + p, n64)?;
                        p += n64;
                        continue;
                    }
                }
                if p < blen {
                    like = if total.is_some_and(|t| t <= UNIT as u64) && blen <= SPAN {
                        Some((boff, boff + blen))
                    } else {
                        let a = p.saturating_sub(SLACK);
                        let b = (p + n64 + SLACK).min(blen);
                        Some((boff + a, boff + b))
                    };
                }
            }
            w.data(bytes, like)?;
            p += n64;
            if n < UNIT {
                break;
            }
        }
        if let Some(t) = total {
            if p != t {
                return Err(PatchError::Unpatchable(
                    "the target's tar ends inside a member".into(),
                ));
            }
        }
    }
    w.flush_data()?;
    w.flush_copy()?;
    let tee = groups.inner;
    Ok((tee.n, tee.hasher.finish()))
}

/// Make a patch of `target` against `base` (whose tar is already on disk), in `tmp`, with data
/// frames at zstd `level`. Does not check it: [`apply`] it to know it rebuilds the target.
pub fn make(
    base_digest: &Digest,
    base_size: u64,
    base: &BaseTar,
    target: &Target<'_>,
    tmp: &Path,
    level: i32,
) -> Result<Made, PatchError> {
    let target_size = target.blob.metadata()?.len();
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    let (made, frames) = std::thread::scope(|scope| {
        let worker = scope.spawn(move || frames(base, rx, tmp, level));
        let mut w = Writer {
            base,
            jobs: tx,
            last_copy: None,
            pending: Vec::new(),
            span: None,
        };
        let made = diff(base, target, &mut w);
        drop(w);
        let frames = worker.join().unwrap_or_else(|_| {
            Err(PatchError::Io(io::Error::other(
                "the frames thread panicked",
            )))
        });
        (made, frames)
    });
    // The frames thread's error first: a failed send is only its echo.
    let frames = frames?;
    let (target_tar_size, target_tar) = made?;
    let (ops_file, data_file) = (frames.ops, frames.data);
    let recipe = Recipe {
        format: FORMAT.into(),
        form: FORM.into(),
        target: target.digest.clone(),
        target_size,
        target_tar,
        target_tar_size,
        base: base_digest.clone(),
        base_size,
        base_tar: base.sha256.clone(),
        base_tar_size: base.size,
        encoder: format!("go-{}", target.generation),
        level: target.level,
        mtime: target.mtime,
        ops: frames.n_ops,
        ops_bytes: ops_file.metadata()?.len(),
        data_bytes: frames.data_bytes,
    };
    let json = serde_json::to_vec(&recipe).map_err(|e| io::Error::other(e.to_string()))?;
    let mut out = io::BufWriter::new(tempfile::tempfile_in(tmp)?);
    out.write_all(MAGIC)?;
    out.write_all(&(json.len() as u32).to_le_bytes())?;
    out.write_all(&json)?;
    for mut f in [ops_file, data_file] {
        f.seek(SeekFrom::Start(0))?;
        io::copy(&mut f, &mut out)?;
    }
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.flush()?;
    let size = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    Ok(Made { recipe, file, size })
}

/// Which Go writer a gzip blob's header and last bytes suggest: the level its XFL byte implies
/// (6 when it says nothing), the generation its end implies, the header's mtime. A guess:
/// [`make_checked`] proves it by rebuilding.
fn guess_encoder(target: &File) -> Result<(Generation, i32, u32), PatchError> {
    let len = target.metadata()?.len();
    if len < 23 {
        return Err(PatchError::Unpatchable(
            "too short to be a gzip layer".into(),
        ));
    }
    let mut h = [0u8; 10];
    target.read_exact_at(&mut h, 0)?;
    let mut tail = [0u8; 4];
    target.read_exact_at(&mut tail, len - 12)?;
    let level = match h[8] {
        2 => 9,
        4 => 1,
        _ => 6,
    };
    let generation = if tail == [0, 0, 0xff, 0xff] {
        Generation::Classic
    } else {
        Generation::Go127
    };
    Ok((
        generation,
        level,
        u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
    ))
}

/// A writer that must write exactly `file`'s bytes: fails at the first one that differs.
struct SameAs<'a> {
    file: &'a File,
    pos: u64,
    buf: Vec<u8>,
}

impl Write for SameAs<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.resize(b.len(), 0);
        let n = self.file.read_at(&mut self.buf, self.pos)?;
        if n < b.len() || self.buf[..] != *b {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                PatchCarrier(PatchError::Output(format!(
                    "it differs from the layer within bytes {}..{}",
                    self.pos,
                    self.pos + b.len() as u64
                ))),
            ));
        }
        self.pos += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The same patch under another recipe (the ops and frames do not depend on the encoder).
fn with_recipe(made: Made, recipe: Recipe, tmp: &Path) -> Result<Made, PatchError> {
    let (_, body) = read_recipe(&made.file)?;
    let json = serde_json::to_vec(&recipe).map_err(|e| io::Error::other(e.to_string()))?;
    let mut out = io::BufWriter::new(tempfile::tempfile_in(tmp)?);
    out.write_all(MAGIC)?;
    out.write_all(&(json.len() as u32).to_le_bytes())?;
    out.write_all(&json)?;
    io::copy(
        &mut ReadAt {
            file: &made.file,
            pos: body,
            end: made.size,
        },
        &mut out,
    )?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    let size = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    Ok(Made { recipe, file, size })
}

/// Make a patch of the gzip layer `target` against `base` and rebuild the layer from it here,
/// comparing byte by byte: a patch is returned only if it gives the layer back exactly. The
/// encoder is `known` (remembered from an earlier run), else guessed from the header and proven
/// by the rebuild, else found by [`ferry_gozip::recognise`]; a layer no Go writer made is
/// [`PatchError::Unpatchable`], with the reason. Returns the encoder too, to remember.
#[allow(clippy::too_many_arguments)]
pub fn make_checked(
    base_digest: &Digest,
    base_size: u64,
    base: &BaseTar,
    target_digest: &Digest,
    target: &File,
    known: Option<(Generation, i32, u32)>,
    tmp: &Path,
    level: i32,
) -> Result<(Made, (Generation, i32, u32)), PatchError> {
    let size = target.metadata()?.len();
    let (generation, lvl, mtime) = match known {
        Some(k) => k,
        None => guess_encoder(target)?,
    };
    let t = Target {
        digest: target_digest,
        blob: target,
        generation,
        level: lvl,
        mtime,
    };
    let mut made = make(base_digest, base_size, base, &t, tmp, level)?;
    let check = |m: &Made| {
        apply(
            base,
            &m.file,
            base_digest,
            (target_digest, size),
            SameAs {
                file: target,
                pos: 0,
                buf: Vec::new(),
            },
        )
    };
    match check(&made) {
        Ok(_) => {
            made.file.seek(SeekFrom::Start(0))?;
            Ok((made, (generation, lvl, mtime)))
        }
        Err(PatchError::Output(why)) if known.is_none() => {
            // The guess was wrong: ask every Go writer.
            match ferry_gozip::recognise(target).map_err(|e| io::Error::other(e.to_string()))? {
                ferry_gozip::Recognition::NotGo(why) => Err(PatchError::Unpatchable(format!(
                    "not made by Go's gzip (GNU gzip or pigz?): {why}"
                ))),
                ferry_gozip::Recognition::Go {
                    generation,
                    level: l,
                    mtime,
                } => {
                    let mut r = made.recipe.clone();
                    r.encoder = format!("go-{generation}");
                    r.level = l;
                    r.mtime = mtime;
                    made = with_recipe(made, r, tmp)?;
                    check(&made).map_err(|e| {
                        PatchError::Unpatchable(format!(
                            "Go's {generation} level {l} writes it, yet the rebuild differs ({e}; first guess: {why})"
                        ))
                    })?;
                    made.file.seek(SeekFrom::Start(0))?;
                    Ok((made, (generation, l, mtime)))
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// Read a patch's recipe (and check the file's length against it).
pub fn read_recipe(patch: &File) -> Result<(Recipe, u64), PatchError> {
    let len = patch.metadata()?.len();
    let mut head = [0u8; 12];
    if len < 12 {
        return Err(format_err("shorter than its header"));
    }
    patch.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(format_err("not a ferry patch (magic)"));
    }
    let n = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if n > MAX_RECIPE || 12 + u64::from(n) > len {
        return Err(format_err(format!("a recipe of {n} bytes")));
    }
    let mut json = vec![0u8; n as usize];
    patch.read_exact_at(&mut json, 12)?;
    let r: Recipe = serde_json::from_slice(&json)
        .map_err(|e| format_err(format!("the recipe is not valid: {e}")))?;
    if r.format != FORMAT || r.form != FORM {
        return Err(format_err(format!(
            "format {} / form {}: this ferry reads {FORMAT} / {FORM}",
            r.format, r.form
        )));
    }
    r.generation()?;
    ferry_gozip::check_level(r.level).map_err(|e| format_err(e.to_string()))?;
    let body = 12 + u64::from(n);
    if body
        .checked_add(r.ops_bytes)
        .and_then(|v| v.checked_add(r.data_bytes))
        != Some(len)
    {
        return Err(format_err(format!(
            "{len} bytes, the recipe accounts for {} + {} + {}",
            body, r.ops_bytes, r.data_bytes
        )));
    }
    Ok((r, body))
}

/// The new tar, produced op by op from the base's tar and the patch; refuses any op that
/// reaches outside the base, a frame outside the patch, or output past the recipe's size.
struct Rebuild<'a> {
    base: &'a BaseTar,
    patch: &'a File,
    ops: Box<dyn Read + 'a>,
    ops_left: u64,
    data_at: u64,
    data_end: u64,
    out: Vec<u8>,
    out_pos: usize,
    copy: Option<(u64, u64)>,
    produced: u64,
    limit: u64,
    hasher: Hasher,
    prefix: Vec<u8>,
}

impl Rebuild<'_> {
    fn next_op(&mut self) -> Result<bool, PatchError> {
        if self.ops_left == 0 {
            return Ok(false);
        }
        self.ops_left -= 1;
        let mut rec = [0u8; OP_LEN];
        self.ops
            .read_exact(&mut rec)
            .map_err(|e| format_err(format!("the op list ends early: {e}")))?;
        let op = Op::decode(&rec)?;
        let grows = match op {
            Op::Copy { len, .. } => len,
            Op::Data { out_len, .. } => out_len,
        };
        if self
            .produced
            .checked_add(grows)
            .is_none_or(|v| v > self.limit)
        {
            return Err(format_err(format!(
                "it writes more than the recipe's {} bytes of tar",
                self.limit
            )));
        }
        match op {
            Op::Copy { off, len } => {
                let known = self.base.fill.is_none();
                if off
                    .checked_add(len)
                    .is_none_or(|e| known && e > self.base.size)
                {
                    return Err(PatchError::Base(format!(
                        "a copy of {len} bytes at {off} is outside the base's tar"
                    )));
                }
                self.copy = Some((off, len));
            }
            Op::Data {
                prefix_off,
                prefix_len,
                out_len,
                zlen,
            } => {
                if out_len > UNIT as u64 || prefix_len > SPAN || zlen > 2 * UNIT as u64 {
                    return Err(format_err("a data frame beyond the format's bounds"));
                }
                if self.data_at + zlen > self.data_end {
                    return Err(format_err("a data frame runs past the end of the patch"));
                }
                let mut frame = vec![0u8; zlen as usize];
                self.patch.read_exact_at(&mut frame, self.data_at)?;
                self.data_at += zlen;
                self.prefix.resize(prefix_len as usize, 0);
                self.base.read_at(prefix_off, &mut self.prefix)?;
                self.out = decompress(&self.prefix, &frame, out_len as usize)?;
                self.out_pos = 0;
            }
        }
        Ok(true)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, PatchError> {
        loop {
            if let Some((off, len)) = self.copy {
                let n = (len.min(buf.len() as u64)) as usize;
                self.base.read_at(off, &mut buf[..n])?;
                self.copy = if len > n as u64 {
                    Some((off + n as u64, len - n as u64))
                } else {
                    None
                };
                return Ok(self.account(&buf[..n]));
            }
            if self.out_pos < self.out.len() {
                let n = (self.out.len() - self.out_pos).min(buf.len());
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(self.account(&buf[..n]));
            }
            if !self.next_op()? {
                return Ok(0);
            }
        }
    }

    fn account(&mut self, b: &[u8]) -> usize {
        self.hasher.update(b);
        self.produced += b.len() as u64;
        b.len()
    }
}

impl Read for Rebuild<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.fill(buf).map_err(|e| match e {
            PatchError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, PatchCarrier(e)),
        })
    }
}

/// A [`PatchError`] carried through `io::Error` (the encoder reads through `Read`).
#[derive(Debug)]
struct PatchCarrier(PatchError);
impl std::fmt::Display for PatchCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for PatchCarrier {}

fn unwrap_carried(e: io::Error) -> PatchError {
    if e.get_ref().is_some_and(|i| i.is::<PatchCarrier>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(c) = inner.downcast::<PatchCarrier>() {
                return c.0;
            }
        }
        return PatchError::Format("unreadable".into());
    }
    PatchError::Io(e)
}

/// Hashes, counts and bounds what the encoder writes.
struct Out<W> {
    inner: W,
    hasher: Hasher,
    n: u64,
    limit: u64,
}

impl<W: Write> Write for Out<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.n += b.len() as u64;
        if self.n > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                PatchCarrier(PatchError::Output(format!(
                    "longer than the {} bytes of the target",
                    self.limit
                ))),
            ));
        }
        self.hasher.update(b);
        self.inner.write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Rebuild the layer `patch` describes from `base` (the tar of the layer `expect_base`), writing
/// it to `out`; `expect` is the digest and size the destination needs (from the manifest, not
/// the patch). Fails — naming why — unless the output is exactly that blob; the caller publishes
/// nothing it wrote to `out` then.
pub fn apply(
    base: &BaseTar,
    patch: &File,
    expect_base: &Digest,
    expect: (&Digest, u64),
    out: impl Write,
) -> Result<Recipe, PatchError> {
    let (r, body) = read_recipe(patch)?;
    if &r.target != expect.0 || r.target_size != expect.1 {
        return Err(format_err(format!(
            "it rebuilds {} ({} bytes), not {} ({} bytes)",
            r.target, r.target_size, expect.0, expect.1
        )));
    }
    if &r.base != expect_base {
        return Err(PatchError::Base(format!(
            "the patch is against {}, not {expect_base}",
            r.base
        )));
    }
    let check_base = || -> Result<(), PatchError> {
        let (size, sha) = base.totals()?;
        if sha != r.base_tar || size != r.base_tar_size {
            return Err(PatchError::Base(format!(
                "{}'s tar is {sha} ({size} bytes); the patch was made against {} ({} bytes)",
                r.base, r.base_tar, r.base_tar_size
            )));
        }
        Ok(())
    };
    if base.fill.is_none() {
        check_base()?;
    }
    let ops_reader = ReadAt {
        file: patch,
        pos: body,
        end: body + r.ops_bytes,
    };
    let ops = zstd::stream::read::Decoder::new(ops_reader)?;
    let mut rebuild = Rebuild {
        base,
        patch,
        ops: Box::new(ops),
        ops_left: r.ops,
        data_at: body + r.ops_bytes,
        data_end: body + r.ops_bytes + r.data_bytes,
        out: Vec::new(),
        out_pos: 0,
        copy: None,
        produced: 0,
        limit: r.target_tar_size,
        hasher: Algorithm::Sha256.hasher(),
        prefix: Vec::new(),
    };
    let mut sink = Out {
        inner: out,
        hasher: expect.0.algorithm().hasher(),
        n: 0,
        limit: expect.1,
    };
    let encoded =
        ferry_gozip::encode_with_mtime(&mut rebuild, &mut sink, r.generation()?, r.level, r.mtime)
            .map_err(|e| match e {
                ferry_gozip::GozipError::Io(e) => unwrap_carried(e),
                e => format_err(e.to_string()),
            });
    // A base still being written is checked once it is whole; a wrong one is named as such,
    // whatever went wrong while it was read.
    check_base()?;
    encoded?;
    if rebuild.data_at != rebuild.data_end {
        return Err(format_err("data frames left over after the last op"));
    }
    let tar = std::mem::replace(&mut rebuild.hasher, Algorithm::Sha256.hasher()).finish();
    if tar != r.target_tar || rebuild.produced != r.target_tar_size {
        return Err(PatchError::Output(format!(
            "its tar is {tar} ({} bytes), the recipe says {} ({} bytes)",
            rebuild.produced, r.target_tar, r.target_tar_size
        )));
    }
    let got = sink.hasher.finish();
    if &got != expect.0 || sink.n != expect.1 {
        return Err(PatchError::Output(format!(
            "it hashes to {got} ({} bytes), not {} ({} bytes)",
            sink.n, expect.0, expect.1
        )));
    }
    Ok(r)
}

/// A region of a file read in order.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
