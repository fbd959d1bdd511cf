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
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vocab::digest::{Algorithm, Digest};

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

mod read;
mod write;

pub use read::{Archive, Files};
pub use write::{write, Written};

#[cfg(test)]
mod tests {
    use super::read::{header_size, pax_size, prescan};
    use super::*;
    use std::fs::File;

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
