//! Applying a patch: the recipe read and checked, the new tar produced op by op from the base's
//! tar and the data frames, encoded with the recipe's Go writer, and verified against the
//! target's digest and size before the caller publishes anything.

use super::*;

pub(super) fn decompress(
    prefix: &[u8],
    frame: &[u8],
    out_len: usize,
) -> Result<Vec<u8>, PatchError> {
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
pub(super) struct Rebuild<'a> {
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
pub(super) struct PatchCarrier(pub(super) PatchError);
impl std::fmt::Display for PatchCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for PatchCarrier {}

pub(super) fn unwrap_carried(e: io::Error) -> PatchError {
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
pub(super) struct Out<W> {
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
    let (r, mut rebuild) = open(base, patch, expect_base, expect)?;
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
    finish(base, &r, rebuild, encoded.map(|_| ()))?;
    let got = sink.hasher.finish();
    if &got != expect.0 || sink.n != expect.1 {
        return Err(PatchError::Output(format!(
            "it hashes to {got} ({} bytes), not {} ({} bytes)",
            sink.n, expect.0, expect.1
        )));
    }
    Ok(r)
}

/// The tar `patch` rebuilds from `base`, checked against the recipe's sha256 and size, without
/// encoding it: with an encode of the target's own tar that gave the layer back (see
/// [`super::make_checked`]), the same proof as [`apply`] at a fraction of its time.
pub(super) fn rebuild_tar(
    base: &BaseTar,
    patch: &File,
    expect_base: &Digest,
    expect: (&Digest, u64),
) -> Result<Recipe, PatchError> {
    let (r, mut rebuild) = open(base, patch, expect_base, expect)?;
    let copied = io::copy(&mut rebuild, &mut io::sink())
        .map(|_| ())
        .map_err(unwrap_carried);
    finish(base, &r, rebuild, copied)?;
    Ok(r)
}

/// The recipe read and checked against what the caller expects, and the tar's reader.
fn open<'a>(
    base: &'a BaseTar,
    patch: &'a File,
    expect_base: &Digest,
    expect: (&Digest, u64),
) -> Result<(Recipe, Rebuild<'a>), PatchError> {
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
    if base.fill.is_none() {
        check_base(base, &r)?;
    }
    let ops_reader = ReadAt {
        file: patch,
        pos: body,
        end: body + r.ops_bytes,
    };
    let ops = zstd::stream::read::Decoder::new(ops_reader)?;
    let rebuild = Rebuild {
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
    Ok((r, rebuild))
}

fn check_base(base: &BaseTar, r: &Recipe) -> Result<(), PatchError> {
    let (size, sha) = base.totals()?;
    if sha != r.base_tar || size != r.base_tar_size {
        return Err(PatchError::Base(format!(
            "{}'s tar is {sha} ({size} bytes); the patch was made against {} ({} bytes)",
            r.base, r.base_tar, r.base_tar_size
        )));
    }
    Ok(())
}

/// After the tar was read to its end (`read`: how that went): the base, the frames and the
/// tar checked against the recipe.
fn finish(
    base: &BaseTar,
    r: &Recipe,
    mut rebuild: Rebuild<'_>,
    read: Result<(), PatchError>,
) -> Result<(), PatchError> {
    // A base still being written is checked once it is whole; a wrong one is named as such,
    // whatever went wrong while it was read.
    check_base(base, r)?;
    read?;
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
    Ok(())
}

/// A region of a file read in order.
pub(super) struct ReadAt<'a> {
    pub(super) file: &'a File,
    pub(super) pos: u64,
    pub(super) end: u64,
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
