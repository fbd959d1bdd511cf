//! Making a patch: the target's tar read group by group against the base's, copies and data
//! frames (compressed on a thread of their own), then the layer rebuilt from the patch and
//! compared byte by byte before the patch is returned.

use super::*;

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
pub(super) fn compress(prefix: &[u8], data: &[u8], level: i32) -> Result<Vec<u8>, PatchError> {
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

/// Builds the op list as the target's units arrive; ops go, in order, to the [`frames`] thread,
/// which compresses the data frames while the target is read on.
pub(super) struct Writer<'b> {
    base: &'b BaseTar,
    jobs: std::sync::mpsc::SyncSender<Job>,
    last_copy: Option<(u64, u64)>,
    pending: Vec<u8>,
    span: Option<(u64, u64)>,
    /// Where in the base the target was last seen (the end of the last copy).
    near: u64,
}

pub(super) enum Job {
    Copy(u64, u64),
    Data {
        prefix_off: u64,
        prefix_len: u64,
        bytes: Vec<u8>,
    },
}

/// What the frames thread wrote: the op list (one zstd frame) and the data frames.
pub(super) struct Frames {
    ops: File,
    n_ops: u64,
    data: File,
    data_bytes: u64,
}

/// The frames thread: each job in order, an op record and, for data, its frame.
pub(super) fn frames(
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
        self.near = off + len;
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
            // New members: the base around where the last copy came from (a new file is likeliest
            // to resemble its neighbours).
            None if self.base.size > 0 => {
                let half = MIN_PREFIX / 2;
                let a = self
                    .near
                    .saturating_sub(half)
                    .min(self.base.size.saturating_sub(MIN_PREFIX));
                let b = (a + MIN_PREFIX).min(self.base.size);
                (a, b - a)
            }
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

/// Read the target's tar group by group against the base: copies and data, to `w` (and the tar
/// as it is read to `also`). Returns the target tar's size and sha256.
pub(super) fn diff(
    base: &BaseTar,
    target: &Target<'_>,
    w: &mut Writer<'_>,
    also: Option<impl Write>,
) -> Result<(u64, Digest), PatchError> {
    let tee = Tee {
        inner: layer_tar(target.blob)?,
        copy: also,
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
                like = if total.is_some_and(|t| t <= UNIT as u64) && blen <= SPAN {
                    Some((boff, boff + blen))
                } else if p < blen {
                    let a = p.saturating_sub(SLACK);
                    let b = (p + n64 + SLACK).min(blen);
                    Some((boff + a, boff + b))
                } else {
                    // Past the old member's end (a file that grew): its last bytes.
                    Some((boff + blen.saturating_sub(SLACK), boff + blen))
                };
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
    make_teed(
        base_digest,
        base_size,
        base,
        target,
        tmp,
        level,
        None::<io::Sink>,
    )
}

/// [`make`], with the target's tar written to `also` as it is read.
#[allow(clippy::too_many_arguments)]
fn make_teed(
    base_digest: &Digest,
    base_size: u64,
    base: &BaseTar,
    target: &Target<'_>,
    tmp: &Path,
    level: i32,
    also: Option<impl Write>,
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
            near: 0,
        };
        let made = diff(base, target, &mut w, also);
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
pub(super) fn guess_encoder(target: &File) -> Result<(Generation, i32, u32), PatchError> {
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
pub(super) struct SameAs<'a> {
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
pub(super) fn with_recipe(made: Made, recipe: Recipe, tmp: &Path) -> Result<Made, PatchError> {
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

/// The target's tar handed, in pieces of at most 1 MiB, to the thread that encodes it; once that
/// thread has stopped (the layer differs), the rest is dropped.
struct ToEncoder {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl Write for ToEncoder {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        for piece in b.chunks(1 << 20) {
            if let Some(tx) = &self.tx {
                if tx.send(piece.to_vec()).is_err() {
                    self.tx = None;
                }
            }
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The encoding thread's side of [`ToEncoder`].
struct FromDiff {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl Read for FromDiff {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(p) => (self.piece, self.at) = (p, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = (self.piece.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Encode `tar` with `encoder` and compare every byte with `layer`: whether that Go writer gives
/// the layer back from its tar.
fn encodes_to(
    tar: impl Read,
    layer: &File,
    (generation, level, mtime): (Generation, i32, u32),
) -> Result<(), PatchError> {
    let size = layer.metadata()?.len();
    let mut same = SameAs {
        file: layer,
        pos: 0,
        buf: Vec::new(),
    };
    ferry_gozip::encode_with_mtime(tar, &mut same, generation, level, mtime).map_err(
        |e| match e {
            ferry_gozip::GozipError::Io(e) => unwrap_carried(e),
            e => format_err(e.to_string()),
        },
    )?;
    if same.pos != size {
        return Err(PatchError::Output(format!(
            "it ends at byte {} of the layer's {size}",
            same.pos
        )));
    }
    Ok(())
}

/// Make a patch of the gzip layer `target` against `base` and rebuild the layer from it here,
/// comparing byte by byte: a patch is returned only if it gives the layer back exactly. The
/// encoder is `known` (remembered from an earlier run), else guessed from the header and proven
/// by the rebuild, else found by [`ferry_gozip::recognise`]; a layer no Go writer made is
/// [`PatchError::Unpatchable`], with the reason. Returns the encoder too, to remember.
///
/// The rebuild is proven in two halves that together are [`apply`]'s: the target's tar, as the
/// diff reads it, is encoded on a thread of its own and compared with the layer byte by byte
/// (so the encode, the costly part, runs beside the diff instead of after it), and the finished
/// patch rebuilds a tar with that tar's sha256 and size ([`rebuild_tar`]).
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
    let encoder = match known {
        Some(k) => k,
        None => guess_encoder(target)?,
    };
    let (generation, lvl, mtime) = encoder;
    let t = Target {
        digest: target_digest,
        blob: target,
        generation,
        level: lvl,
        mtime,
    };
    let (made, encoded) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let proof = scope.spawn(move || {
            let tar = FromDiff {
                rx,
                piece: Vec::new(),
                at: 0,
            };
            encodes_to(tar, target, encoder)
        });
        let made = make_teed(
            base_digest,
            base_size,
            base,
            &t,
            tmp,
            level,
            Some(ToEncoder { tx: Some(tx) }),
        );
        let encoded = proof.join().unwrap_or_else(|_| {
            Err(PatchError::Io(io::Error::other(
                "the encoding thread panicked",
            )))
        });
        (made, encoded)
    });
    let mut made = made?;
    let check = |m: &Made| rebuild_tar(base, &m.file, base_digest, (target_digest, size));
    match encoded {
        Ok(()) => {
            check(&made)?;
            made.file.seek(SeekFrom::Start(0))?;
            Ok((made, encoder))
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
                    apply(
                        base,
                        &made.file,
                        base_digest,
                        (target_digest, size),
                        SameAs {
                            file: target,
                            pos: 0,
                            buf: Vec::new(),
                        },
                    )
                    .map_err(|e| {
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
