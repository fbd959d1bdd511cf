//! The base's side of a patch: a layer's tar on disk (decompressed whole before a patch is made,
//! or on a thread of its own while one is applied), its members by path.

use super::*;

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
pub(super) struct Tee<R, W> {
    pub(super) inner: R,
    pub(super) copy: Option<W>,
    pub(super) hasher: Hasher,
    pub(super) n: u64,
    pub(super) limit: u64,
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
    pub(super) index: std::collections::HashMap<String, (u64, u64)>,
    /// Set while a thread is still writing the file ([`BaseTar::spool_behind`]).
    pub(super) fill: Option<std::sync::Arc<Fill>>,
}

/// How far a base tar being written behind has come.
pub(super) struct Fill {
    state: std::sync::Mutex<FillState>,
    moved: std::sync::Condvar,
    cancel: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
pub(super) struct FillState {
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

    pub(super) fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), PatchError> {
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
