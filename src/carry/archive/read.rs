//! Reading an archive: one scan of the headers, then members by offset from the volumes (see
//! the folder's doc).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::layout::index::{Index, IndexFile};
use crate::vocab::digest::{Algorithm, Digest};
use crate::vocab::media;

use super::*;

/// The files of an archive, read as one byte sequence.
pub struct Files {
    parts: Vec<(File, u64, u64)>,
    len: u64,
}

impl Files {
    pub(super) fn new(files: Vec<File>) -> Result<Files> {
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
    /// `index.json`, parsed on first use: an archive never changes, and a sync asks it for
    /// referrers and gaps once per manifest.
    index: std::sync::OnceLock<std::sync::Arc<Index>>,
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
pub(super) fn header_size(field: &[u8]) -> Option<u64> {
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
pub(super) fn pax_size(data: &[u8]) -> Option<u64> {
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
pub(super) fn prescan(files: &Files, shown: &str) -> Result<()> {
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
            index: std::sync::OnceLock::new(),
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
    pub fn index(&self) -> Result<std::sync::Arc<Index>> {
        if let Some(i) = self.index.get() {
            return Ok(i.clone());
        }
        if !self.has("oci-layout") {
            return Err(arch_err(
                self.describe(),
                "is not an OCI image layout archive (no oci-layout member)",
            ));
        }
        let bytes = self.read_small("index.json", crate::layout::index::MAX_INDEX_BYTES)?;
        let file = IndexFile::parse(&bytes)
            .map_err(|e| arch_err(self.describe(), format!("index.json: {e}")))?;
        Ok(self
            .index
            .get_or_init(|| std::sync::Arc::new(Index::new(file)))
            .clone())
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
