//! A place content is carried from or to, opened once: a store (a directory or a bucket), a
//! registry, or an `oci-archive:` read as a source. `sync`, `check`, `inventory` and the check
//! of a signed trip read through it, so none of them needs the others.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::carry::archive::Archive;
use crate::carry::remote::{Registry, RemoteOptions};
use crate::error::{Error, Result};
use crate::layout::index::{Descriptor, REF_NAME};
use crate::layout::Store;
use crate::vocab::digest::Digest;
use crate::vocab::location::Location;
use crate::vocab::media::{self, EdgeKind};
use crate::vocab::reference::{Reference, RepoName};

/// One side of a sync.
pub enum Place {
    /// A directory or a bucket.
    Store(Store),
    Remote(Registry),
    /// An `oci-archive:` read as a source: its roots, named as its index names them.
    Archive(Arc<Archive>, Vec<(Root, Descriptor)>),
}

/// A manifest to copy, named in the source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Root {
    pub repo: String,
    pub reference: Reference,
    /// The repository to write it under, when that differs from `repo` and the destination
    /// names none: a ref `docker.io/library/alpine:3` read from `docker://docker.io` keeps its
    /// upstream as the first component, as a pull-through mirror names it.
    pub dest_repo: Option<String>,
}

impl Root {
    pub fn new(repo: impl Into<String>, reference: Reference) -> Root {
        Root {
            repo: repo.into(),
            reference,
            dest_repo: None,
        }
    }
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.repo),
            Reference::Digest(d) => write!(f, "{}@{d}", self.repo),
        }
    }
}

/// A blob to carry.
#[derive(Clone, Debug)]
pub(crate) struct BlobRef {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) media_type: String,
}

impl Place {
    pub async fn open(loc: &Location, opts: &RemoteOptions, create: bool) -> Result<Place> {
        match loc {
            // A source is only read: never create anything in it.
            Location::Bucket { .. } => Ok(Place::Store(Store::open_at(loc, !create).await?)),
            Location::Dir { path } => {
                if !create && !path.join("oci-layout").exists() {
                    return Err(Error::Usage(format!(
                        "{} is not an OCI image layout (no oci-layout file)",
                        path.display()
                    )));
                }
                // A source is only read: never create anything in it (it may be read-only media).
                Ok(Place::Store(Store::open_at(loc, !create).await?))
            }
            Location::Registry { host, .. } => Ok(Place::Remote(Registry::new(host, opts)?)),
            Location::OciArchive { path } if !create => {
                let path = path.clone();
                let (ar, roots) = tokio::task::spawn_blocking(move || -> Result<_> {
                    let ar = Archive::open(&path)?;
                    let roots = archive_roots(&ar)?;
                    Ok((ar, roots))
                })
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))??;
                Ok(Place::Archive(Arc::new(ar), roots))
            }
            Location::OciArchive { .. } => Err(Error::Usage(format!(
                "{loc} is written whole by a sync, not opened as a place"
            ))),
            Location::DockerArchive { .. } => Err(Error::Usage(format!(
                "{loc}: docker-archive is a destination only (for docker load); \
                 to read an archive, use oci-archive:"
            ))),
        }
    }

    /// A blob's size in a source that may lack it (a delta directory or archive); `None` for a
    /// registry, which is asked as it is read.
    pub(crate) async fn source_blob_size(&self, d: &Digest) -> Result<Option<Option<u64>>> {
        match self {
            Place::Store(s) => Ok(Some(s.blob_size(d).await?)),
            Place::Archive(a, _) => Ok(Some(a.blob_size(d))),
            Place::Remote(_) => Ok(None),
        }
    }

    pub(crate) async fn manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<(Bytes, String, Digest)> {
        match self {
            Place::Remote(r) => r.manifest(repo, reference).await,
            Place::Store(s) => {
                let name = RepoName::parse(repo)?;
                let m = s.manifest(&name, reference).await?;
                let bytes = s.read_manifest(&m.digest).await?;
                let actual = Digest::of(m.digest.algorithm(), &bytes);
                if actual != m.digest {
                    return Err(Error::Corrupt {
                        digest: m.digest,
                        detail: format!("the stored manifest hashes to {actual}"),
                    });
                }
                Ok((bytes, m.media_type, actual))
            }
            Place::Archive(a, roots) => {
                let (digest, declared) = match reference {
                    Reference::Digest(d) => (d.clone(), None),
                    Reference::Tag(_) => {
                        let (_, desc) = roots
                            .iter()
                            .find(|(r, _)| r.repo == repo && &r.reference == reference)
                            .ok_or_else(|| {
                                Error::ManifestUnknown(format!(
                                    "{repo}:{reference} in {}",
                                    a.describe()
                                ))
                            })?;
                        (desc.digest.clone(), Some(desc.media_type.clone()))
                    }
                };
                let a = a.clone();
                let d2 = digest.clone();
                let bytes = tokio::task::spawn_blocking(move || a.read_manifest(&d2))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))??;
                let actual = Digest::of(digest.algorithm(), &bytes);
                if actual != digest {
                    return Err(Error::Corrupt {
                        digest,
                        detail: format!("the archive's manifest hashes to {actual}"),
                    });
                }
                let mt = declared
                    .filter(|m| !m.is_empty())
                    .or_else(|| media::sniff_media_type(&bytes))
                    .ok_or_else(|| Error::ManifestInvalid(format!("{digest}: no media type")))?;
                Ok((bytes, mt, actual))
            }
        }
    }

    /// Whether `reference` in `repo` already names the manifest `digest`.
    pub(crate) async fn has_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool> {
        match self {
            Place::Remote(r) => {
                Ok(r.manifest_digest(repo, reference).await.as_ref() == Some(digest))
            }
            Place::Store(s) => {
                let idx = s.index().await?;
                let recorded = match reference {
                    Reference::Tag(t) => idx.tag(repo, t).is_some_and(|d| &d.digest == digest),
                    Reference::Digest(d) => d == digest && idx.file.has_repo_digest(repo, d),
                };
                Ok(recorded && s.blob_size(digest).await?.is_some())
            }
            Place::Archive(..) => Ok(false),
        }
    }

    pub(crate) async fn has_blob(&self, repo: &str, b: &BlobRef) -> Result<bool> {
        match self {
            Place::Remote(r) => r.has_blob(repo, &b.digest).await,
            Place::Store(s) => Ok(s.blob_size(&b.digest).await? == Some(b.size)),
            Place::Archive(a, _) => Ok(a.blob_size(&b.digest) == Some(b.size)),
        }
    }

    /// Blob bytes from `offset`, and whether the offset was honoured.
    pub(crate) async fn read_blob(
        &self,
        repo: &str,
        d: &Digest,
        offset: u64,
    ) -> Result<(BoxStream<'static, std::io::Result<Bytes>>, bool)> {
        match self {
            Place::Remote(r) => {
                let b = r.blob(repo, d, offset).await?;
                Ok((b.stream, b.partial))
            }
            Place::Store(s) => {
                let blob = s.open_blob(d).await?;
                let offset = offset.min(blob.len);
                let len = blob.len;
                Ok((blob.stream(offset, len - offset), true))
            }
            Place::Archive(a, _) => Ok((a.stream_blob(d, offset)?, true)),
        }
    }

    pub(crate) async fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        bytes: Bytes,
        mt: &str,
        delta: bool,
        absent: &[Digest],
    ) -> Result<()> {
        match self {
            Place::Remote(r) if !absent.is_empty() => {
                r.put_manifest_absent(repo, reference, bytes, mt, absent)
                    .await
            }
            Place::Remote(r) => r.put_manifest(repo, reference, bytes, mt).await,
            Place::Store(s) => {
                let name = RepoName::parse(repo)?;
                s.put_manifest_sparse(&name, reference, bytes, Some(mt), !delta, absent)
                    .await
                    .map(|_| ())
            }
            Place::Archive(a, _) => Err(Error::Usage(format!(
                "{} is an archive being read; it is not written in place",
                a.describe()
            ))),
        }
    }

    /// The manifests of `repo` whose subject is `subject`: a registry's referrers API (one
    /// request), else its referrers tag schema (`sha256-<hex>`); a store's and an archive's own
    /// records of what each manifest was pushed with.
    pub(crate) async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> Result<Vec<media::Referrer>> {
        let from_index = |d: &Descriptor| media::Referrer {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
            artifact_type: d.artifact_type.clone().unwrap_or_default(),
        };
        match self {
            Place::Remote(r) => r.referrers(repo, subject).await,
            Place::Store(s) => {
                let idx = s.index().await?;
                Ok(idx
                    .referrers(repo, subject)
                    .into_iter()
                    .map(from_index)
                    .collect())
            }
            Place::Archive(a, _) => {
                let a = a.clone();
                let (repo, subject) = (repo.to_owned(), subject.clone());
                tokio::task::spawn_blocking(move || -> Result<Vec<media::Referrer>> {
                    let idx = a.index()?;
                    Ok(idx
                        .referrers(&repo, &subject)
                        .into_iter()
                        .map(from_index)
                        .collect())
                })
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?
            }
        }
    }

    /// The children of the index `digest` that this place lacks on purpose (recorded when it
    /// was narrowed to some platforms); a registry records none.
    pub(crate) async fn absent(&self, repo: &str, digest: &Digest) -> Result<Vec<Digest>> {
        let of = |ds: &mut dyn Iterator<Item = &Descriptor>| {
            let mut out: Vec<Digest> = Vec::new();
            for d in ds {
                for a in d.absent() {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            out
        };
        match self {
            Place::Remote(_) => Ok(Vec::new()),
            Place::Store(s) => {
                let idx = s.index().await?;
                Ok(of(&mut idx.file.manifests.iter().filter(|d| {
                    &d.digest == digest && d.repo_and_tag().0 == Some(repo)
                })))
            }
            Place::Archive(_, roots) => Ok(of(&mut roots
                .iter()
                .map(|(_, d)| d)
                .filter(|d| &d.digest == digest))),
        }
    }

    /// The tags of one repository.
    pub(crate) async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        match self {
            Place::Remote(r) => r.tags(repo).await,
            Place::Store(s) => Ok(s
                .index()
                .await?
                .tags_of(repo)
                .into_iter()
                .map(str::to_owned)
                .collect()),
            Place::Archive(_, roots) => Ok(roots
                .iter()
                .filter(|(r, _)| r.repo == repo)
                .filter_map(|(r, _)| match &r.reference {
                    Reference::Tag(t) => Some(t.clone()),
                    Reference::Digest(_) => None,
                })
                .collect()),
        }
    }

    /// The roots a location names.
    pub async fn roots(&self, loc: &Location) -> Result<Vec<Root>> {
        let mut out = Vec::new();
        match (self, loc) {
            (
                Place::Remote(r),
                Location::Registry {
                    repo, reference, ..
                },
            ) => match (repo, reference) {
                (Some(repo), Some(reference)) => out.push(Root {
                    repo: repo.clone(),
                    reference: reference.clone(),
                    dest_repo: None,
                }),
                (Some(repo), None) => {
                    for t in r.tags(repo).await? {
                        out.push(Root {
                            repo: repo.clone(),
                            reference: Reference::Tag(t),
                            dest_repo: None,
                        });
                    }
                }
                (None, _) => {
                    for repo in r.catalog().await? {
                        for t in r.tags(&repo).await? {
                            out.push(Root {
                                repo: repo.clone(),
                                reference: Reference::Tag(t),
                                dest_repo: None,
                            });
                        }
                    }
                }
            },
            (Place::Store(s), _) => {
                let idx = s.index().await?;
                for repo in idx.repos() {
                    for t in idx.tags_of(repo) {
                        out.push(Root {
                            repo: repo.to_owned(),
                            reference: Reference::Tag(t.to_owned()),
                            dest_repo: None,
                        });
                    }
                }
            }
            (Place::Archive(_, roots), _) => out.extend(roots.iter().map(|(r, _)| r.clone())),
            (Place::Remote(_), _) => {
                return Err(Error::Usage(
                    "a registry place needs a registry location".into(),
                ))
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every blob and manifest a directory, bucket or archive holds; `None` for a registry
    /// (which lists no blobs).
    pub async fn content(&self) -> Result<Option<Vec<Digest>>> {
        match self {
            // Only what can be read as a blob: a FIFO or a symlink out of the layout under a
            // blob's name is not content the far side can count on.
            Place::Store(s) => Ok(Some(s.list_content().await?)),
            Place::Archive(a, _) => Ok(Some(a.digests())),
            Place::Remote(_) => Ok(None),
        }
    }

    /// Every digest a place holds (`ferry inventory`).
    pub async fn inventory(&self, loc: &Location) -> Result<Vec<Digest>> {
        let mut set = std::collections::BTreeSet::new();
        match self {
            Place::Store(_) | Place::Archive(..) => {
                set.extend(self.content().await?.unwrap_or_default());
            }
            Place::Remote(_) => {
                for root in self.roots(loc).await? {
                    let g = walk(self, &root.repo, &root.reference).await?;
                    set.extend(g.manifests.into_iter().map(|(d, _, _)| d));
                    set.extend(g.blobs.into_iter().map(|b| b.digest));
                }
            }
        }
        Ok(set.into_iter().collect())
    }
}

/// A manifest graph read from the source: manifests children-first, and the blobs.
#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) manifests: Vec<(Digest, Bytes, String)>,
    pub(crate) blobs: Vec<BlobRef>,
    /// Children of an index left out on purpose, by index: other platforms than those chosen,
    /// or children the source itself lacks on purpose (it was narrowed before).
    pub(crate) absent: std::collections::HashMap<Digest, Vec<Digest>>,
}

impl Graph {
    pub(crate) fn absent_of(&self, index: &Digest) -> Vec<Digest> {
        self.absent.get(index).cloned().unwrap_or_default()
    }
}

/// Read a root's graph from the source: every manifest (children before parents) and every blob.
pub(crate) async fn walk(src: &Place, repo: &str, reference: &Reference) -> Result<Graph> {
    walk_narrowed(src, repo, reference, &[]).await
}

/// [`walk`], with image indexes narrowed to `platforms` (none: every platform): the index
/// itself is kept byte for byte, the other platforms' manifests are left out and listed in
/// [`Graph::absent`].
pub(crate) async fn walk_narrowed(
    src: &Place,
    repo: &str,
    reference: &Reference,
    platforms: &[media::Platform],
) -> Result<Graph> {
    let (bytes, mt, digest) = src.manifest(repo, reference).await?;
    let mut g = Graph::default();
    let mut seen = HashSet::new();
    // Iterative post-order walk: (digest, bytes, media type, children expanded?)
    let mut stack: Vec<(Digest, Bytes, String, bool)> = vec![(digest, bytes, mt, false)];
    let mut blobs_seen = HashSet::new();
    while let Some((d, b, mt, expanded)) = stack.pop() {
        if expanded {
            if seen.insert(d.clone()) {
                g.manifests.push((d, b, mt));
            }
            continue;
        }
        let info = media::parse_manifest(&b, Some(&mt))?;
        let mut leave = Vec::new();
        // A registry serving an index narrowed before (a ferry mirror of a `--platform` trip)
        // answers 404 for the platforms it lacks on purpose; those are left out, not an error.
        let mut optional = Vec::new();
        if media::is_index_type(&mt) {
            if matches!(src, Place::Remote(_)) {
                optional = media::platform_children(&b);
            }
            leave = media::left_out(&b, platforms)?;
            for a in src.absent(repo, &d).await? {
                if !leave.contains(&a) {
                    leave.push(a);
                }
            }
        }
        stack.push((d.clone(), b, mt, true));
        for e in info.edges {
            match e.kind {
                EdgeKind::Blob => {
                    if blobs_seen.insert(e.digest.clone()) {
                        g.blobs.push(BlobRef {
                            digest: e.digest,
                            size: e.size,
                            media_type: e.media_type,
                        });
                    }
                }
                EdgeKind::Manifest if leave.contains(&e.digest) => {
                    let list = g.absent.entry(d.clone()).or_default();
                    if !list.contains(&e.digest) {
                        list.push(e.digest);
                    }
                }
                EdgeKind::Manifest => {
                    if seen.contains(&e.digest) {
                        continue;
                    }
                    let child = src
                        .manifest(repo, &Reference::Digest(e.digest.clone()))
                        .await;
                    let (cb, cmt, cd) = match child {
                        Err(Error::ManifestUnknown(_)) if optional.contains(&e.digest) => {
                            g.absent.entry(d.clone()).or_default().push(e.digest);
                            continue;
                        }
                        r => r?,
                    };
                    if cb.len() as u64 != e.size {
                        return Err(Error::Corrupt {
                            digest: cd,
                            detail: format!("{} bytes, the parent says {}", cb.len(), e.size),
                        });
                    }
                    stack.push((cd, cb, cmt, false));
                }
            }
        }
    }
    Ok(g)
}

/// The roots of an archive being read: its index's tags. A bare tag (skopeo's
/// `oci-archive:x.tar:latest` writes `ref.name = "latest"`) has no repository: it is carried
/// under the archive's file name (`x`), and a destination that names a repository renames it.
fn archive_roots(ar: &Archive) -> Result<Vec<(Root, Descriptor)>> {
    let file = ar.index()?;
    let fallback = archive_repo_name(&ar.path);
    let mut out = Vec::new();
    let unnamed: Vec<&Descriptor> = file
        .file
        .manifests
        .iter()
        .filter(|d| d.annotations.as_ref().is_none_or(|a| a.is_empty()))
        .collect();
    for d in &file.file.manifests {
        let root = match d.repo_and_tag() {
            (Some(r), Some(t)) => Root {
                repo: r.to_owned(),
                reference: Reference::Tag(t.to_owned()),
                dest_repo: None,
            },
            (Some(_), None) => continue,
            (None, _) => {
                let bare = d
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .filter(|t| crate::vocab::reference::is_valid_tag(t));
                match bare {
                    Some(t) => Root {
                        repo: fallback.clone(),
                        reference: Reference::Tag(t.clone()),
                        dest_repo: None,
                    },
                    // A lone unnamed manifest (`skopeo copy … oci-archive:x.tar`) is the
                    // archive's `latest`.
                    None if unnamed.len() == 1 && file.file.manifests.len() == 1 => Root {
                        repo: fallback.clone(),
                        reference: Reference::Tag("latest".into()),
                        dest_repo: None,
                    },
                    None => continue,
                }
            }
        };
        out.push((root, d.clone()));
    }
    Ok(out)
}

/// A repository name from an archive's file name: `/media/usb/app-1.tar.000` → `app-1`.
fn archive_repo_name(path: &std::path::Path) -> String {
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    for suffix in [".index", ".000", ".tar"] {
        if let Some(n) = name.strip_suffix(suffix) {
            name = n.to_owned();
        }
    }
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_owned();
    if crate::vocab::reference::is_valid_name(&name) {
        name
    } else {
        "archive".to_owned()
    }
}
