//! `oci-archive:` and `docker-archive:`: one tar file (or numbered volumes of one) across any gap.
//!
//! **Writing** is planned before a byte is written: every member (directories, `oci-layout`,
//! `index.json`, manifests, blobs; for `docker-archive:` also `manifest.json`) is known with its
//! size from the graphs a sync has already read, so the whole tar — headers, data, padding — is
//! a fixed sequence of bytes whose length and every offset are known in advance. Blobs are
//! streamed from the source straight into the tar, hashed on the way (a source that lies fails
//! the write). Small metadata comes first and blobs last, in graph order, so a reader that can
//! only stream (a pipe, a tape) meets `index.json` and the manifests before the blobs they name.
//!
//! With `--split SIZE` that byte sequence is cut into volumes `PATH.000`, `PATH.001`, … each
//! smaller than SIZE, and `PATH.index` names every volume with its size and sha256 in the
//! format of `sha256sum` (so `sha256sum -c PATH.index` checks them without ferry). A volume is
//! written as `NAME.partial`, synced and renamed when complete, and recorded in
//! `PATH.index.partial`; because the tar is a fixed function of the plan, a rerun of the same
//! plan starts at the first incomplete volume and produces the same bytes. The archive (or its
//! index) appears under its final name last, so an interrupted write is never taken for a
//! whole one.
//!
//! **Reading** scans the tar's headers once (seeking over the data), then reads members by
//! offset from the file(s) — no temporary copy of the layout. Volumes are found from the index
//! (or the first volume), checked against it before anything is read (a missing or corrupt
//! volume is named), and read as one byte sequence. Headers are parsed with the `tar` crate.
//! Nothing in an archive is trusted: member names are only looked up, never used as paths;
//! sizes must fit the archive; blobs and manifests are hashed before use by the sync that reads
//! them; duplicate names are refused.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::index::{Index, IndexFile};
use crate::vocab::digest::{Algorithm, Digest};
use crate::vocab::media;

const BLOCK: u64 = 512;
/// More members than any real layout has: a hostile archive cannot make the scan hold more.
const MAX_MEMBERS: usize = 1_000_000;
/// The smallest `--split` accepted.
pub const MIN_SPLIT: u64 = 1 << 20;
/// Bytes copied per write while streaming a blob into the tar.
const WRITE_CHUNK: usize = 1 << 20;

fn arch_err(what: impl std::fmt::Display, why: impl std::fmt::Display) -> Error {
    Error::Archive(format!("{what}: {why}"))
}

/// Where a member's bytes come from.
#[derive(Clone, Debug)]
pub enum Source {
    Dir,
    Inline(Bytes),
    /// Like `Inline`, but made anew by each run (a signed statement: its time and signature
    /// differ): a resumed write keeps its place and size, not its bytes. It goes last.
    Fresh(Bytes),
    Blob(Digest),
}

/// One entry of a planned tar.
#[derive(Clone, Debug)]
pub struct Member {
    pub path: String,
    pub size: u64,
    pub source: Source,
}

impl Member {
    pub fn dir(path: &str) -> Member {
        Member {
            path: path.to_owned(),
            size: 0,
            source: Source::Dir,
        }
    }
    pub fn inline(path: &str, bytes: impl Into<Bytes>) -> Member {
        let bytes = bytes.into();
        Member {
            path: path.to_owned(),
            size: bytes.len() as u64,
            source: Source::Inline(bytes),
        }
    }
    pub fn blob(d: &Digest, size: u64) -> Member {
        Member {
            path: blob_path(d),
            size,
            source: Source::Blob(d.clone()),
        }
    }
}

/// `blobs/<alg>/<hex>`, as in an OCI image layout.
pub fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// A tar, fixed before it is written.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub members: Vec<Member>,
}

impl Plan {
    pub fn push(&mut self, m: Member) {
        self.members.push(m);
    }

    /// Bytes of the whole tar: a header and padded data per member, two zero blocks at the end.
    pub fn total(&self) -> u64 {
        self.members
            .iter()
            .map(|m| BLOCK + padded(m.size))
            .sum::<u64>()
            + 2 * BLOCK
    }

    /// The members' blob digests.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.members.iter().filter_map(|m| match &m.source {
            Source::Blob(d) => Some(d),
            _ => None,
        })
    }

    /// What identifies the bytes of this tar: a resumed write continues only the same plan.
    fn id(&self) -> String {
        let mut h = Algorithm::Sha256.hasher();
        for m in &self.members {
            h.update(m.path.as_bytes());
            h.update(&m.size.to_le_bytes());
            match &m.source {
                Source::Dir => h.update(b"d"),
                Source::Inline(b) => h.update(Digest::of(Algorithm::Sha256, b).hex().as_bytes()),
                Source::Fresh(_) => h.update(b"f"),
                Source::Blob(d) => h.update(d.to_string().as_bytes()),
            }
        }
        h.finish().to_string()
    }
}

/// A ustar header: fixed mode, owner and time, so the same plan always gives the same bytes.
fn header(m: &Member) -> Result<[u8; 512]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(&m.path)
        .map_err(|e| arch_err(&m.path, format!("cannot be a tar member name: {e}")))?;
    match m.source {
        Source::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
        }
        _ => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
        }
    }
    h.set_size(m.size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut out = [0u8; 512];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// `--split SIZE`'s volumes: each the largest multiple of 512 bytes smaller than SIZE, so
/// `--split 4G` gives volumes of 4 GiB − 512 bytes, within FAT32's 4 GiB − 1.
pub fn volume_size(split: u64) -> Result<u64> {
    if split < MIN_SPLIT {
        return Err(Error::Usage(format!(
            "--split {split}: volumes must be at least 1M"
        )));
    }
    Ok((split - 1) / BLOCK * BLOCK)
}

/// Volume `i` of the archive at `base`: `trip.tar.000`, `trip.tar.001`, …
pub fn volume_name(base: &Path, i: usize) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(format!(".{i:03}"));
    PathBuf::from(s)
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn index_name(base: &Path) -> PathBuf {
    with_suffix(base, ".index")
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A finished volume, as the index names it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// `PATH.index.partial`: the volumes of an interrupted write and the plan they belong to.
#[derive(Serialize, Deserialize)]
struct Progress {
    plan: String,
    volume_size: u64,
    done: Vec<Volume>,
}

/// What a write produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Written {
    pub path: String,
    pub bytes: u64,
    pub volumes: Vec<Volume>,
    /// Bytes of volumes an earlier, interrupted write had already finished.
    pub resumed_bytes: u64,
}

/// Writes the tar's bytes into the current volume, cutting volumes at their size.
struct Volumes {
    base: PathBuf,
    /// `None`: one file, `base` itself.
    vsize: Option<u64>,
    /// Logical offset of the next byte given to `put`.
    pos: u64,
    /// Bytes before this offset are already in finished volumes: skipped.
    skip_to: u64,
    file: Option<(File, PathBuf, crate::vocab::digest::Hasher, u64)>,
    done: Vec<Volume>,
    plan_id: String,
}

impl Volumes {
    fn target(&self, i: usize) -> PathBuf {
        match self.vsize {
            Some(_) => volume_name(&self.base, i),
            None => self.base.clone(),
        }
    }

    fn open_next(&mut self) -> Result<()> {
        let i = self.done.len();
        let path = self.target(i);
        let partial = with_suffix(&path, ".partial");
        let f = File::create(&partial).map_err(|e| arch_err(partial.display(), e))?;
        self.file = Some((f, path, Algorithm::Sha256.hasher(), 0));
        Ok(())
    }

    fn finish_volume(&mut self) -> Result<()> {
        let Some((f, path, h, n)) = self.file.take() else {
            return Ok(());
        };
        f.sync_all()?;
        drop(f);
        std::fs::rename(with_suffix(&path, ".partial"), &path)?;
        self.done.push(Volume {
            name: file_name(&path),
            size: n,
            sha256: h.finish().hex().to_owned(),
        });
        if let Some(vs) = self.vsize {
            let p = Progress {
                plan: self.plan_id.clone(),
                volume_size: vs,
                done: self.done.clone(),
            };
            write_atomic(
                &with_suffix(&index_name(&self.base), ".partial"),
                &serde_json::to_vec_pretty(&p).map_err(|e| arch_err("progress", e))?,
            )?;
        }
        Ok(())
    }

    /// Append bytes at the logical position; blocking (called on a blocking thread).
    fn put(&mut self, mut b: &[u8]) -> Result<()> {
        // Skip what finished volumes hold already.
        if self.pos < self.skip_to {
            let n = (self.skip_to - self.pos).min(b.len() as u64) as usize;
            self.pos += n as u64;
            b = &b[n..];
        }
        while !b.is_empty() {
            if self.file.is_none() {
                self.open_next()?;
            }
            let room = match self.vsize {
                Some(vs) => vs - self.file.as_ref().map_or(0, |f| f.3),
                None => u64::MAX,
            };
            let n = room.min(b.len() as u64) as usize;
            if let Some((f, _, h, written)) = self.file.as_mut() {
                f.write_all(&b[..n])?;
                h.update(&b[..n]);
                let before = *written;
                *written += n as u64;
                crate::layout::write::writeback_after(f, before, *written);
            }
            self.pos += n as u64;
            b = &b[n..];
            if self
                .vsize
                .is_some_and(|vs| self.file.as_ref().is_some_and(|f| f.3 == vs))
            {
                self.finish_volume()?;
            }
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Write the planned tar to `base` (one file), or as volumes of `split` with an index.
/// Blobs are hashed as they stream; `counter` counts blob bytes written.
pub async fn write<F, Fut>(
    plan: &Plan,
    base: &Path,
    split: Option<u64>,
    fetch: F,
    counter: &std::sync::atomic::AtomicU64,
) -> Result<Written>
where
    F: Fn(Digest) -> Fut,
    Fut: std::future::Future<Output = Result<BoxStream<'static, io::Result<Bytes>>>>,
{
    let vsize = split.map(volume_size).transpose()?;
    if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| arch_err(dir.display(), e))?;
    }
    let total = plan.total();
    let plan_id = plan.id();
    // A rerun of the same plan continues after its finished volumes.
    let mut done = Vec::new();
    if let Some(vs) = vsize {
        let state = with_suffix(&index_name(base), ".partial");
        if let Ok(bytes) = std::fs::read(&state) {
            if let Ok(p) = serde_json::from_slice::<Progress>(&bytes) {
                if p.plan == plan_id && p.volume_size == vs {
                    let dir = base.parent().unwrap_or(Path::new("."));
                    for v in p.done {
                        let ok = std::fs::metadata(dir.join(&v.name))
                            .is_ok_and(|m| m.is_file() && m.len() == v.size);
                        if !ok {
                            break;
                        }
                        done.push(v);
                    }
                }
            }
        }
    }
    let skip_to: u64 = done.iter().map(|v| v.size).sum();
    let vols = Volumes {
        base: base.to_owned(),
        vsize,
        pos: 0,
        skip_to,
        file: None,
        done,
        plan_id,
    };
    let vols = Arc::new(std::sync::Mutex::new(vols));
    let put = |b: Bytes| {
        let vols = vols.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                vols.lock().unwrap_or_else(|p| p.into_inner()).put(&b)
            })
            .await
            .map_err(|e| Error::Io(io::Error::other(e)))?
        }
    };
    let written = async {
        let mut pos = 0u64;
        for m in &plan.members {
            let len = BLOCK + padded(m.size);
            if pos + len <= skip_to {
                // Wholly inside finished volumes: not read again.
                pos += len;
                vols.lock().unwrap_or_else(|p| p.into_inner()).pos = pos;
                continue;
            }
            put(Bytes::copy_from_slice(&header(m)?)).await?;
            match &m.source {
                Source::Dir => {}
                Source::Inline(b) | Source::Fresh(b) => put(b.clone()).await?,
                Source::Blob(d) => {
                    let mut s = fetch(d.clone()).await?;
                    let mut h = d.algorithm().hasher();
                    let mut n = 0u64;
                    let mut buf = bytes::BytesMut::with_capacity(WRITE_CHUNK);
                    while let Some(chunk) = s
                        .try_next()
                        .await
                        .map_err(|e| arch_err(d, format!("reading the source: {e}")))?
                    {
                        n += chunk.len() as u64;
                        if n > m.size {
                            return Err(Error::Corrupt {
                                digest: d.clone(),
                                detail: format!("the source sent more than {} bytes", m.size),
                            });
                        }
                        h.update(&chunk);
                        counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        buf.extend_from_slice(&chunk);
                        if buf.len() >= WRITE_CHUNK {
                            put(buf.split().freeze()).await?;
                        }
                    }
                    if !buf.is_empty() {
                        put(buf.split().freeze()).await?;
                    }
                    let actual = h.finish();
                    if n != m.size || &actual != d {
                        return Err(Error::Corrupt {
                            digest: d.clone(),
                            detail: format!("the source sent {n} bytes hashing to {actual}"),
                        });
                    }
                }
            }
            let pad = padded(m.size) - m.size;
            if pad > 0 {
                put(Bytes::from(vec![0u8; pad as usize])).await?;
            }
            pos += len;
        }
        put(Bytes::from(vec![0u8; 2 * BLOCK as usize])).await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = written {
        // One file is written whole or not at all: no half archive is left behind. (Split
        // volumes stay: a rerun continues after the finished ones.)
        if vsize.is_none() {
            let _ = std::fs::remove_file(with_suffix(base, ".partial"));
        }
        return Err(e);
    }
    let vols = Arc::try_unwrap(vols)
        .map_err(|_| Error::Io(io::Error::other("archive writer still shared")))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    tokio::task::spawn_blocking(move || finish(vols, total))
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))?
}

fn finish(mut vols: Volumes, total: u64) -> Result<Written> {
    vols.finish_volume()?;
    let resumed_bytes = vols.skip_to;
    if vols.vsize.is_some() {
        // Volumes past the end, left by an interrupted write of another trip to the same name.
        for i in vols.done.len().. {
            let stale = volume_name(&vols.base, i);
            let partial = with_suffix(&stale, ".partial");
            let (a, b) = (stale.exists(), partial.exists());
            if !a && !b {
                break;
            }
            let _ = std::fs::remove_file(stale);
            let _ = std::fs::remove_file(partial);
        }
        let mut text = format!(
            "# ferry split archive: {} volume(s), {total} bytes; check with: sha256sum -c {}\n",
            vols.done.len(),
            file_name(&index_name(&vols.base)),
        );
        for v in &vols.done {
            text.push_str(&format!("# size {} {}\n", v.name, v.size));
        }
        for v in &vols.done {
            text.push_str(&format!("{}  {}\n", v.sha256, v.name));
        }
        let idx = index_name(&vols.base);
        write_atomic(&idx, text.as_bytes())?;
        let _ = std::fs::remove_file(with_suffix(&idx, ".partial"));
    }
    Ok(Written {
        path: vols.base.display().to_string(),
        bytes: total,
        volumes: vols.done,
        resumed_bytes,
    })
}

/// Parse `PATH.index`: `# size NAME BYTES` lines and `HEX  NAME` lines, in volume order.
pub fn parse_index(text: &str) -> Result<Vec<Volume>> {
    let mut sizes = HashMap::new();
    let mut vols = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# size ") {
            let (name, size) = rest
                .rsplit_once(' ')
                .ok_or_else(|| arch_err("index", format!("bad line {line:?}")))?;
            let size = size
                .parse::<u64>()
                .map_err(|_| arch_err("index", format!("bad size in {line:?}")))?;
            sizes.insert(name.to_owned(), size);
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            let (hex, name) = line
                .split_once("  ")
                .ok_or_else(|| arch_err("index", format!("bad line {line:?}")))?;
            if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(arch_err("index", format!("bad sha256 in {line:?}")));
            }
            // Volume names are looked up beside the index, never as paths.
            if name.contains('/') || name.starts_with('.') {
                return Err(arch_err("index", format!("bad volume name {name:?}")));
            }
            vols.push(Volume {
                name: name.to_owned(),
                size: 0,
                sha256: hex.to_ascii_lowercase(),
            });
        }
    }
    for v in &mut vols {
        v.size = *sizes
            .get(&v.name)
            .ok_or_else(|| arch_err("index", format!("no size for {}", v.name)))?;
    }
    if vols.is_empty() {
        return Err(arch_err("index", "names no volumes"));
    }
    Ok(vols)
}

/// The files of an archive, read as one byte sequence.
pub struct Files {
    parts: Vec<(File, u64, u64)>,
    len: u64,
}

impl Files {
    fn new(files: Vec<File>) -> Result<Files> {
        let mut parts = Vec::new();
        let mut start = 0;
        for f in files {
            let n = f.metadata()?.len();
            parts.push((f, start, n));
            start += n;
        }
        Ok(Files { parts, len: start })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        for (f, start, n) in &self.parts {
            if offset >= *start && offset < start + n {
                let want = (buf.len() as u64).min(start + n - offset) as usize;
                return f.read_at(&mut buf[..want], offset - start);
            }
        }
        Ok(0)
    }

    /// `len` bytes from `offset`, streamed from each file it spans.
    fn stream(&self, offset: u64, len: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        let mut streams = Vec::new();
        let end = offset + len;
        for (f, start, n) in &self.parts {
            let (a, b) = (offset.max(*start), end.min(start + n));
            if a < b {
                streams.push(
                    crate::layout::read::stream_file(f.try_clone()?, a - start, b - a).boxed(),
                );
            }
        }
        Ok(futures_util::stream::iter(streams).flatten().boxed())
    }
}

/// A `Read + Seek` view of [`Files`] for the tar crate's header scan.
struct Cursor<'a> {
    files: &'a Files,
    pos: u64,
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.files.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.files.len.checked_add_signed(d),
        };
        self.pos =
            p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

/// An archive opened for reading: where each member is.
pub struct Archive {
    pub path: PathBuf,
    files: Files,
    members: HashMap<String, (u64, u64)>,
}

/// The volumes an archive path names, checked against the index when there is one.
fn open_files(path: &Path) -> Result<Vec<File>> {
    let shown = path.display().to_string();
    let s = path.to_string_lossy();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // `trip.tar.index`, or `trip.tar.000` beside its index: the volumes the index names.
    let index = if s.ends_with(".index") {
        Some(path.to_owned())
    } else if let Some(base) = s.strip_suffix(".000") {
        let idx = index_name(Path::new(base));
        idx.exists().then_some(idx)
    } else if !path.exists() && index_name(path).exists() {
        Some(index_name(path))
    } else {
        None
    };
    if let Some(idx) = index {
        let text = std::fs::read_to_string(&idx).map_err(|e| arch_err(idx.display(), e))?;
        let vols = parse_index(&text).map_err(|e| arch_err(idx.display(), e))?;
        let mut files = Vec::new();
        let mut problems = Vec::new();
        for v in &vols {
            let p = dir.join(&v.name);
            match File::open(&p) {
                Ok(f) => {
                    let len = f.metadata()?.len();
                    if !f.metadata()?.is_file() {
                        problems.push(format!("volume {} is not a regular file", v.name));
                    } else if len != v.size {
                        problems.push(format!(
                            "volume {} is {len} bytes, the index says {}",
                            v.name, v.size
                        ));
                    }
                    files.push(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    problems.push(format!("volume {} is missing", v.name))
                }
                Err(e) => problems.push(format!("volume {}: {e}", v.name)),
            }
        }
        if problems.is_empty() {
            // Every byte is checked against the index before any is used: a corrupt volume
            // could hold a tar header or index.json, which no digest protects.
            problems.extend(check_volumes(&files, &vols));
        }
        if !problems.is_empty() {
            return Err(Error::Archive(format!("{shown}: {}", problems.join("; "))));
        }
        return Ok(files);
    }
    if let Some(base) = s.strip_suffix(".000") {
        // Volumes without their index: found by number; a missing last one shows as a tar that
        // ends early.
        let mut files = Vec::new();
        for i in 0.. {
            let p = volume_name(Path::new(base), i);
            match File::open(&p) {
                Ok(f) => files.push(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(arch_err(p.display(), e)),
            }
        }
        return Ok(files);
    }
    let f = File::open(path).map_err(|e| arch_err(&shown, e))?;
    if !f.metadata()?.is_file() {
        return Err(arch_err(&shown, "not a regular file"));
    }
    Ok(vec![f])
}

/// Hash volumes against the index, a few at once; the names of those that differ.
fn check_volumes(files: &[File], vols: &[Volume]) -> Vec<String> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let bad = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(files.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (Some(f), Some(v)) = (files.get(i), vols.get(i)) else {
                    break;
                };
                let r = f
                    .try_clone()
                    .and_then(|f| crate::vocab::digest::hash_reader(f, Algorithm::Sha256));
                let why = match r.map(|(h, _)| h.finish()) {
                    Ok(d) if d.hex() == v.sha256 => continue,
                    Ok(_) => format!(
                        "volume {} is corrupt (its sha256 differs from the index)",
                        v.name
                    ),
                    Err(e) => format!("volume {}: {e}", v.name),
                };
                bad.lock().unwrap_or_else(|p| p.into_inner()).push((i, why));
            });
        }
    });
    let mut bad = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    bad.sort();
    bad.into_iter().map(|(_, w)| w).collect()
}

/// Extension members (GNU long names and links, PAX headers) are read whole by the tar crate:
/// larger ones are refused before it sees them.
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// A tar header's size field: octal text, or GNU's base-256 for large sizes.
fn header_size(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The `size` record of a PAX extended header, if any (`"%d size=%d\n"` records).
fn pax_size(data: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|rec| {
        let (_, kv) = rec.split_once(' ')?;
        kv.strip_prefix("size=")?.trim().parse().ok()
    })
}

/// Walk the headers the way a tar reader will, without reading data, and refuse what would
/// make a reader hold much in memory (a huge long name or PAX header), GNU sparse members
/// (never layout content), and a tar cut inside a member. (A tar that simply stops after a
/// whole member, with no end marker, is accepted, as Go's and GNU's readers do.)
fn prescan(files: &Files, shown: &str) -> Result<()> {
    let mut off = 0u64;
    let mut next_size: Option<u64> = None;
    let mut block = [0u8; 512];
    for _ in 0..=(MAX_MEMBERS * 2) {
        if off == files.len {
            return Ok(());
        }
        if off + BLOCK > files.len {
            return Err(arch_err(
                shown,
                "ends before the tar's end (truncated, or a volume missing?)",
            ));
        }
        let mut got = 0;
        while got < block.len() {
            let n = files.read_at(&mut block[got..], off + got as u64)?;
            if n == 0 {
                return Err(arch_err(shown, "cut short"));
            }
            got += n;
        }
        if block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let kind = block[156];
        let size = match next_size.take() {
            Some(n) => n,
            None => header_size(&block[124..136])
                .ok_or_else(|| arch_err(shown, format!("a bad tar header at byte {off}")))?,
        };
        match kind {
            b'L' | b'K' | b'x' | b'g' if size > MAX_EXTENSION_BYTES => {
                return Err(arch_err(
                    shown,
                    format!("a tar extension header of {size} bytes at byte {off}"),
                ))
            }
            b'S' => return Err(arch_err(shown, "a GNU sparse member: not layout content")),
            b'x' => {
                let mut data = vec![0u8; size as usize];
                let n = files.read_at(&mut data, off + BLOCK)?;
                next_size = pax_size(&data[..n]);
            }
            _ => {}
        }
        off = off
            .checked_add(BLOCK + padded(size))
            .ok_or_else(|| arch_err(shown, "a member size past any file"))?;
    }
    Err(arch_err(shown, "too many members"))
}

impl Archive {
    /// Open and scan an archive (blocking: call from a blocking thread).
    pub fn open(path: &Path) -> Result<Archive> {
        let files = Files::new(open_files(path)?)?;
        let shown = path.display().to_string();
        prescan(&files, &shown)?;
        let mut members = HashMap::new();
        {
            let mut ar = tar::Archive::new(Cursor {
                files: &files,
                pos: 0,
            });
            let entries = ar
                .entries_with_seek()
                .map_err(|e| arch_err(&shown, format!("not a tar: {e}")))?;
            for e in entries {
                let e = e.map_err(|e| {
                    arch_err(
                        &shown,
                        format!("bad tar (truncated, or a volume missing?): {e}"),
                    )
                })?;
                let kind = e.header().entry_type();
                if !kind.is_file() {
                    continue;
                }
                let name = e
                    .path()
                    .map_err(|e| arch_err(&shown, format!("bad member name: {e}")))?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_owned();
                let (off, size) = (e.raw_file_position(), e.size());
                if off.checked_add(size).is_none_or(|end| end > files.len) {
                    return Err(arch_err(&shown, format!("{name} runs past the end of the archive (truncated, or a volume missing?)")));
                }
                if members.insert(name.clone(), (off, size)).is_some() {
                    return Err(arch_err(&shown, format!("two members are named {name}")));
                }
                if members.len() > MAX_MEMBERS {
                    return Err(arch_err(&shown, "too many members"));
                }
            }
        }
        Ok(Archive {
            path: path.to_owned(),
            files,
            members,
        })
    }

    pub fn describe(&self) -> String {
        self.path.display().to_string()
    }

    pub fn has(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        self.members.get(&blob_path(d)).map(|m| m.1)
    }

    /// A small member, whole.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let (off, size) = *self
            .members
            .get(name)
            .ok_or_else(|| arch_err(self.describe(), format!("has no {name}")))?;
        if size > limit {
            return Err(arch_err(
                self.describe(),
                format!("{name} is {size} bytes (limit {limit})"),
            ));
        }
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = self.files.read_at(&mut buf[done..], off + done as u64)?;
            if n == 0 {
                return Err(arch_err(self.describe(), format!("{name} is cut short")));
            }
            done += n;
        }
        Ok(buf)
    }

    /// The layout's index (an `oci-layout` member is required).
    pub fn index(&self) -> Result<Index> {
        if !self.has("oci-layout") {
            return Err(arch_err(
                self.describe(),
                "is not an OCI image layout archive (no oci-layout member)",
            ));
        }
        let bytes = self.read_small("index.json", crate::layout::index::MAX_INDEX_BYTES)?;
        let file = IndexFile::parse(&bytes)
            .map_err(|e| arch_err(self.describe(), format!("index.json: {e}")))?;
        Ok(Index::new(file))
    }

    pub fn read_manifest(&self, d: &Digest) -> Result<Bytes> {
        let name = blob_path(d);
        if !self.has(&name) {
            return Err(Error::ManifestUnknown(d.to_string()));
        }
        Ok(Bytes::from(
            self.read_small(&name, media::MAX_MANIFEST_BYTES)?,
        ))
    }

    /// A blob's bytes from `offset`.
    pub fn stream_blob(
        &self,
        d: &Digest,
        offset: u64,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        let (off, size) = *self
            .members
            .get(&blob_path(d))
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
        let offset = offset.min(size);
        Ok(self.files.stream(off + offset, size - offset)?)
    }

    /// `count` bytes of a blob from `start` (the server's ranges).
    pub fn stream_range(
        &self,
        d: &Digest,
        start: u64,
        count: u64,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        let (off, size) = *self
            .members
            .get(&blob_path(d))
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
        let start = start.min(size);
        Ok(self.files.stream(off + start, count.min(size - start))?)
    }

    /// A small blob (a manifest), whole, refused past `limit`.
    pub fn read_blob_small(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        if !self.has(&blob_path(d)) {
            return Err(Error::BlobUnknown(d.clone()));
        }
        self.read_small(&blob_path(d), limit)
    }

    /// Re-hash a blob (blocking): its digest with `d`'s algorithm, and its length.
    pub fn hash_blob(&self, d: &Digest) -> Result<(Digest, u64)> {
        let (off, size) = *self
            .members
            .get(&blob_path(d))
            .ok_or_else(|| Error::BlobUnknown(d.clone()))?;
        let mut h = d.algorithm().hasher();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(buf.len() as u64) as usize;
            let n = self.files.read_at(&mut buf[..want], off + done)?;
            if n == 0 {
                return Err(arch_err(self.describe(), format!("{d} is cut short")));
            }
            h.update(&buf[..n]);
            done += n as u64;
        }
        Ok((h.finish(), size))
    }

    /// Every blob with its size.
    pub fn blobs(&self) -> Vec<(Digest, u64)> {
        self.digests()
            .into_iter()
            .filter_map(|d| self.blob_size(&d).map(|n| (d, n)))
            .collect()
    }

    /// When the archive (its first file) was last written.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        self.files.parts.first()?.0.metadata().ok()?.modified().ok()
    }

    /// Every digest under `blobs/`.
    pub fn digests(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self
            .members
            .keys()
            .filter_map(|k| {
                let rest = k.strip_prefix("blobs/")?;
                let (alg, hex) = rest.split_once('/')?;
                format!("{alg}:{hex}").parse().ok()
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_fit_under_the_split() {
        assert_eq!(volume_size(4 << 30).unwrap(), (4u64 << 30) - 512);
        assert!(volume_size(4 << 30).unwrap() < u32::MAX as u64);
        assert_eq!(volume_size(64 << 20).unwrap(), (64 << 20) - 512);
        assert!(volume_size(1000).is_err());
    }

    fn files_of(bytes: &[u8]) -> (tempfile::TempDir, Files) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, bytes).unwrap();
        let f = Files::new(vec![File::open(&p).unwrap()]).unwrap();
        (dir, f)
    }

    #[test]
    fn prescan_refuses_huge_extension_headers_and_sparse_members() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "a/".repeat(200) + "x", &b"abc"[..])
            .unwrap();
        let ok = b.into_inner().unwrap();
        let (_d, f) = files_of(&ok);
        prescan(&f, "ok").unwrap();
        // A GNU long name of 2 MiB.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(2 << 20);
        h.set_cksum();
        let mut bad = h.as_bytes().to_vec();
        bad.extend(vec![b'a'; 2 << 20]);
        bad.extend(vec![0u8; 1024]);
        let (_d, f) = files_of(&bad);
        let e = prescan(&f, "bad").unwrap_err().to_string();
        assert!(e.contains("extension header"), "{e}");
        // Cut inside a member, and cut after the last member (no end marker: accepted).
        let (_d, f) = files_of(&ok[..ok.len() - 1500]);
        assert!(prescan(&f, "cut").is_err());
        let (_d, f) = files_of(&ok[..ok.len() - 1024]);
        prescan(&f, "no end marker").unwrap();
        assert_eq!(header_size(b"00000000012\0"), Some(10));
        assert_eq!(
            header_size(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(pax_size(b"20 size=8589934592\n"), Some(8589934592));
    }

    #[test]
    fn index_round_trips_and_refuses_paths() {
        let text = "# ferry split archive\n# size t.000 512\n# size t.001 100\n\
            aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa  t.000\n\
            bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb  t.001\n";
        let v = parse_index(text).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[1].name.as_str(), v[1].size), ("t.001", 100));
        assert!(parse_index(&text.replace("t.001\n", "../x\n")).is_err());
        assert!(parse_index("# nothing\n").is_err());
        assert!(parse_index(&text.replace("# size t.001 100\n", "")).is_err());
    }
}
