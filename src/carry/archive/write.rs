//! Writing an archive: the planned tar streamed into volumes, resumable at the first
//! incomplete volume (see the folder's doc).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vocab::digest::{Algorithm, Digest};

use super::*;

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
