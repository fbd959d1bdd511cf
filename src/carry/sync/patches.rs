//! Layer patches in a sync ([`crate::carry::patch`]): on the connected side, a delta (`--have`)
//! carries a patch instead of each gzip layer it can rebuild exactly from a layer the far side
//! has; on the far side, a sync of that delta rebuilds each patched layer from the
//! destination's copy of its base before anything is published.
//!
//! A trip holds its patches as blobs (content-addressed like everything else, so archives,
//! volumes and signed statements carry them) and [`LIST`] beside `index.json`, which says which
//! layer each patch rebuilds from which base. Other tools ignore both: to them the patched
//! layer is missing, as in any delta.

use super::*;

use std::fs::File;
use std::io::{Seek, SeekFrom};

use tokio::io::AsyncWriteExt;

pub(super) use crate::carry::patch::list::{read_list, write_list, Entry, List, LIST};
use crate::carry::patch::{self, BaseTar, PatchError};
use ferry_gozip::Generation;

/// zstd level of a patch's data frames without a reference (new files).
const ZSTD_LEVEL: i32 = 19;
/// How many have-list layers are read for their member paths when no older tag gives a base.
const MAX_CANDIDATES: usize = 8;
/// How many other tags of a repository are read for a base at the same position.
const MAX_TAGS: usize = 50;

/// A layer patched on this side, ready to carry.
pub(super) struct Made {
    pub(super) entry: Entry,
    pub(super) file: File,
}

/// What the patch planner decided for the layers of a delta.
#[derive(Default)]
pub(super) struct Planned {
    pub(super) made: HashMap<Digest, Made>,
}

impl Planned {
    /// The patch blob `d`'s bytes from `offset`, if `d` is one of these patches.
    pub(super) fn stream(
        &self,
        d: &Digest,
        offset: u64,
    ) -> Option<Result<BoxStream<'static, std::io::Result<Bytes>>>> {
        let m = self.made.values().find(|m| &m.entry.patch == d)?;
        Some(
            m.file
                .try_clone()
                .map_err(Error::from)
                .and_then(|f| file_stream(f, offset)),
        )
    }
}

pub(super) fn file_stream(
    mut f: File,
    offset: u64,
) -> Result<BoxStream<'static, std::io::Result<Bytes>>> {
    f.seek(SeekFrom::Start(offset))?;
    Ok(
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(f), 256 << 10)
            .boxed(),
    )
}

fn is_layer(mt: &str) -> bool {
    mt.contains(".layer.") || mt.contains("rootfs.diff")
}

fn perr(d: &Digest, e: PatchError) -> Error {
    Error::Patch {
        digest: d.clone(),
        detail: e.to_string(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, PatchError> + Send + 'static,
    d: &Digest,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
        .map_err(|e| perr(d, e))
}

/// A blob into an unlinked temporary file, checked against its digest and size.
pub(super) async fn spool(
    place: &Place,
    repo: &str,
    d: &Digest,
    size: u64,
    dir: &std::path::Path,
) -> Result<File> {
    let (mut s, _) = place.read_blob(repo, d, 0).await?;
    let f = tempfile::tempfile_in(dir)?;
    let mut w = tokio::io::BufWriter::new(tokio::fs::File::from_std(f.try_clone()?));
    let mut h = d.algorithm().hasher();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c?;
        n += c.len() as u64;
        if n > size {
            return Err(Error::Corrupt {
                digest: d.clone(),
                detail: format!("more than its {size} bytes"),
            });
        }
        h.update(&c);
        w.write_all(&c).await?;
    }
    w.flush().await?;
    drop(w);
    // The clone shares the file's offset: read from the start.
    let mut f = f;
    f.seek(SeekFrom::Start(0))?;
    let got = h.finish();
    if n != size || &got != d {
        return Err(Error::Corrupt {
            digest: d.clone(),
            detail: format!("{n} bytes hashing to {got}"),
        });
    }
    Ok(f)
}

fn cache_name(d: &Digest) -> String {
    format!("gozip-{}-{}", d.algorithm().as_str(), d.hex())
}

/// Which Go wrote a layer, as remembered per digest in a source store (a directory's or
/// bucket's state): `Some(Ok(encoder))`, `Some(Err(why not))`, or `None` when not examined yet.
async fn remembered(
    src: &Place,
    d: &Digest,
) -> Option<std::result::Result<(Generation, i32, u32), String>> {
    let Place::Store(s) = src else { return None };
    let b = s.read_state(&cache_name(d), 4096).await.ok()??;
    let text = String::from_utf8_lossy(&b).into_owned();
    let mut w = text.split(' ');
    match (w.next(), w.next(), w.next(), w.next()) {
        (Some("go"), Some(g), Some(l), Some(m)) => match (g.parse(), l.parse(), m.parse()) {
            (Ok(g), Ok(l), Ok(m)) => Some(Ok((g, l, m))),
            _ => None,
        },
        (Some("not-go"), ..) => Some(Err(text
            .split_once(' ')
            .map(|x| x.1)
            .unwrap_or("")
            .to_owned())),
        _ => None,
    }
}

/// Remember what a layer was found to be. A read-only source (media, a registry served
/// read-only) is examined again next time.
async fn remember(src: &Place, d: &Digest, r: std::result::Result<(Generation, i32, u32), &str>) {
    if let Place::Store(s) = src {
        let line = match r {
            Ok((g, l, m)) => format!("go {g} {l} {m}"),
            Err(why) => format!("not-go {why}"),
        };
        let _ = s.write_state(&cache_name(d), line.as_bytes()).await;
    }
}

fn same_layers(a: &[BlobRef], b: &[&BlobRef]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.digest == y.digest)
}

/// The gzip layers of a graph, in order (an image's layers, a cache's blobs).
fn layers(g: &Graph) -> Vec<&BlobRef> {
    g.blobs.iter().filter(|b| is_layer(&b.media_type)).collect()
}

/// For each layer of `graphs` the far side lacks, choose a base the far side has and this side
/// holds, make the patch, rebuild the layer from it here, and keep it if it is smaller. Layers
/// that cannot be patched are named with the reason in `summary`.
pub(super) async fn plan(
    src: &Place,
    src_loc: &Location,
    graphs: &[(Root, Graph)],
    have: &HashSet<Digest>,
    progress: &dyn Progress,
    summary: &mut Summary,
) -> Result<Planned> {
    let mut out = Planned::default();
    let tmp = tempfile::tempdir()?;
    // Other tags of the same repositories, for bases at the same position (a registry is
    // asked for the repository's tags, whatever the source location names).
    let all_roots = src.roots(src_loc).await.unwrap_or_default();
    let mut others: HashMap<String, Vec<Vec<BlobRef>>> = HashMap::new();
    for (root, _) in graphs {
        if others.contains_key(&root.repo) {
            continue;
        }
        let repo_roots = match (src, src_loc) {
            (Place::Remote(_), Location::Registry { host, .. }) => src
                .roots(&Location::Registry {
                    host: host.clone(),
                    repo: Some(root.repo.clone()),
                    reference: None,
                })
                .await
                .unwrap_or_default(),
            _ => all_roots.clone(),
        };
        let mut lists = Vec::new();
        for r in repo_roots
            .iter()
            .filter(|r| r.repo == root.repo)
            .take(MAX_TAGS)
        {
            if let Ok(g) = walk(src, &r.repo, &r.reference).await {
                lists.push(layers(&g).into_iter().cloned().collect());
            }
        }
        others.insert(root.repo.clone(), lists);
    }
    let holds = |d: &Digest| {
        let d = d.clone();
        async move { matches!(src.source_blob_size(&d).await, Ok(Some(Some(_))) | Ok(None)) }
    };
    let mut seen = HashSet::new();
    let mut names_of: HashMap<Digest, Vec<String>> = HashMap::new();
    for (root, g) in graphs {
        let mine = layers(g);
        let mine_set: HashSet<&Digest> = mine.iter().map(|b| &b.digest).collect();
        let mut tags: Vec<&Vec<BlobRef>> = others
            .get(&root.repo)
            .map(|v| v.iter().filter(|l| !same_layers(l, &mine)).collect())
            .unwrap_or_default();
        tags.sort_by_key(|l| {
            std::cmp::Reverse(l.iter().filter(|b| mine_set.contains(&b.digest)).count())
        });
        // Have-list layers this side holds, of this repository first, then any in the sync.
        let mut pool: Vec<BlobRef> = Vec::new();
        for b in tags
            .iter()
            .flat_map(|l| l.iter())
            .chain(graphs.iter().flat_map(|(_, g)| layers(g)))
        {
            if have.contains(&b.digest)
                && !pool.iter().any(|p| p.digest == b.digest)
                && holds(&b.digest).await
            {
                pool.push(b.clone());
            }
        }
        for (i, b) in mine.iter().enumerate() {
            if have.contains(&b.digest) || !seen.insert(b.digest.clone()) {
                continue;
            }
            if !(b.media_type.ends_with("gzip")) {
                summary.carried_whole.push(Whole::new(
                    b,
                    "not a gzip layer: ferry rebuilds gzip layers only",
                ));
                continue;
            }
            let mut base = None;
            for l in &tags {
                if let Some(c) = l.get(i) {
                    if c.digest != b.digest && have.contains(&c.digest) && holds(&c.digest).await {
                        base = Some(c.clone());
                        break;
                    }
                }
            }
            match patch_one(
                src,
                root,
                b,
                base,
                &pool,
                &mut names_of,
                tmp.path(),
                progress,
            )
            .await
            {
                Ok(Ok(m)) => {
                    summary.patched.push(Patched {
                        digest: b.digest.clone(),
                        size: b.size,
                        base: m.entry.base.clone(),
                        patch_size: m.entry.patch_size,
                    });
                    progress.message(&format!(
                        "patch {}: {} bytes → {} bytes against {}",
                        b.digest, b.size, m.entry.patch_size, m.entry.base
                    ));
                    out.made.insert(b.digest.clone(), m);
                }
                Ok(Err(why)) => summary.carried_whole.push(Whole::new(b, &why)),
                Err(e) => summary
                    .carried_whole
                    .push(Whole::new(b, &format!("patching failed: {e}"))),
            }
        }
    }
    Ok(out)
}

/// One layer: `Ok(Err(why))` when it is carried whole.
#[allow(clippy::too_many_arguments)]
async fn patch_one(
    src: &Place,
    root: &Root,
    b: &BlobRef,
    base: Option<BlobRef>,
    pool: &[BlobRef],
    names_of: &mut HashMap<Digest, Vec<String>>,
    tmp: &std::path::Path,
    progress: &dyn Progress,
) -> Result<std::result::Result<Made, String>> {
    let known = match remembered(src, &b.digest).await {
        Some(Err(why)) => return Ok(Err(why)),
        Some(Ok(k)) => Some(k),
        None => None,
    };
    let target = spool(src, &root.repo, &b.digest, b.size, tmp).await?;
    // By position in an older tag; else the have-list layer sharing the most member paths.
    let base = match base {
        Some(b) => b,
        None => {
            if pool.is_empty() {
                return Ok(Err("no layer the far side has to patch against".into()));
            }
            let f = target.try_clone()?;
            let mine: HashSet<String> =
                blocking(move || patch::member_names(f, u64::MAX), &b.digest)
                    .await?
                    .into_iter()
                    .collect();
            let mut best: Option<(usize, &BlobRef)> = None;
            for c in pool.iter().take(MAX_CANDIDATES) {
                // Each candidate's paths are read once per sync, whatever the number of layers
                // that look for a base among them.
                if !names_of.contains_key(&c.digest) {
                    let Ok(cf) = spool(src, &root.repo, &c.digest, c.size, tmp).await else {
                        continue;
                    };
                    let Ok(names) =
                        blocking(move || patch::member_names(cf, u64::MAX), &c.digest).await
                    else {
                        continue;
                    };
                    names_of.insert(c.digest.clone(), names);
                }
                let Some(names) = names_of.get(&c.digest) else {
                    continue;
                };
                let shared = names.iter().filter(|n| mine.contains(*n)).count();
                if shared > 0 && best.is_none_or(|(s, _)| shared > s) {
                    best = Some((shared, c));
                }
            }
            match best {
                Some((_, c)) => c.clone(),
                None => return Ok(Err("no layer the far side has shares a file with it".into())),
            }
        }
    };
    progress.message(&format!("patching {} against {}", b.digest, base.digest));
    let base_file = spool(src, &root.repo, &base.digest, base.size, tmp).await?;
    let (td, bd, bsize) = (b.digest.clone(), base.digest.clone(), base.size);
    let tmp2 = tmp.to_owned();
    let made = blocking(
        move || {
            let base_tar = BaseTar::spool(base_file, &tmp2, u64::MAX)?;
            // Rebuilt here first: only a patch that gives the layer back exactly is carried.
            patch::make_checked(
                &bd, bsize, &base_tar, &td, &target, known, &tmp2, ZSTD_LEVEL,
            )
        },
        &b.digest,
    )
    .await;
    let made = match made {
        Ok((m, encoder)) => {
            if known.is_none() {
                remember(src, &b.digest, Ok(encoder)).await;
            }
            m
        }
        Err(Error::Patch { detail, .. }) if detail.starts_with("not made by Go") => {
            remember(src, &b.digest, Err(&detail)).await;
            return Ok(Err(detail));
        }
        Err(e) => return Ok(Err(format!("not rebuilt exactly here: {e}"))),
    };
    if made.size * 10 > b.size * 9 {
        return Ok(Err(format!(
            "its patch ({} bytes) is not smaller than the layer",
            made.size
        )));
    }
    let mut f = made.file;
    let (hasher, n) = crate::vocab::digest::hash_reader(&mut f, b.digest.algorithm())?;
    Ok(Ok(Made {
        entry: Entry {
            target: b.digest.clone(),
            target_size: b.size,
            base: base.digest.clone(),
            base_size: base.size,
            patch: hasher.finish(),
            patch_size: n,
        },
        file: f,
    }))
}

/// A patched layer, in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct Patched {
    pub digest: Digest,
    pub size: u64,
    pub base: Digest,
    pub patch_size: u64,
}

/// A layer carried whole, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Whole {
    pub digest: Digest,
    pub size: u64,
    pub why: String,
}

impl Whole {
    fn new(b: &BlobRef, why: &str) -> Whole {
        Whole {
            digest: b.digest.clone(),
            size: b.size,
            why: why.to_owned(),
        }
    }
}

/// Rebuild `e.target` at the destination from its base there and the patch in the source,
/// and publish it only once it hashes right.
pub(super) async fn rebuild(
    src: &Place,
    dst: &Place,
    from_repo: &str,
    to_repo: &str,
    e: &Entry,
) -> Result<u64> {
    let tmp = tempfile::tempdir()?;
    let pf = spool(src, from_repo, &e.patch, e.patch_size, tmp.path())
        .await
        .map_err(|err| Error::Patch {
            digest: e.target.clone(),
            detail: format!("its patch {}: {err}", e.patch),
        })?;
    let bf = spool(dst, to_repo, &e.base, e.base_size, tmp.path())
        .await
        .map_err(|err| Error::Patch {
            digest: e.target.clone(),
            detail: format!("its base {} at the destination: {err}", e.base),
        })?;
    let out = tempfile::tempfile_in(tmp.path())?;
    let out2 = out.try_clone()?;
    let (tmp2, base, target, size) = (
        tmp.path().to_owned(),
        e.base.clone(),
        e.target.clone(),
        e.target_size,
    );
    blocking(
        move || {
            let (recipe, _) = patch::read_recipe(&pf)?;
            // The base's tar may not grow past what the recipe says it is.
            // Decompressed on a thread of its own while the layer is rebuilt from it.
            let base_tar =
                BaseTar::spool_behind(bf, &tmp2, recipe.base_tar_size.saturating_add(1))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, out2);
            patch::apply(&base_tar, &pf, &base, (&target, size), &mut w)?;
            std::io::Write::flush(&mut w)?;
            Ok(())
        },
        &e.target,
    )
    .await?;
    match dst {
        Place::Store(store) => {
            store
                .import_blob(&e.target, e.target_size, |offset| async move {
                    Ok((file_stream(out.try_clone()?, offset)?, true))
                })
                .await?;
        }
        Place::Remote(r) => {
            r.push_blob(to_repo, &e.target, e.target_size, file_stream(out, 0)?)
                .await?;
        }
        Place::Archive(a, _) => {
            return Err(Error::Usage(format!(
                "{} is an archive being read; it is not written in place",
                a.describe()
            )))
        }
    }
    Ok(e.patch_size)
}
