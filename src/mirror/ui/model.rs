//! What the web page shows, computed from the store: no HTML here, so the numbers can be tested
//! on their own (and against the registry API) without a browser.
//!
//! A manifest's summary (its kind, platforms, children and every blob it reaches) depends only on
//! its bytes, which are named by their digest: summaries are cached by digest and never go stale.
//! Everything per tag and per repository is then a pass over `index.json` and those summaries —
//! no manifest is read twice, which is what keeps a 10,000-tag store's pages fast.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;

use crate::layout::index::Index;
use crate::layout::Store;
use crate::vocab::digest::Digest;
use crate::vocab::media;

/// How deep an index of indexes is followed (the spec allows nesting; real ones are 1–2 deep).
const MAX_DEPTH: usize = 4;
/// A config blob is read for its platform only up to this size.
const MAX_CONFIG: u64 = 1 << 20;
/// Summaries kept; past this the cache starts over (a store with more manifests than this
/// recomputes some on every page, which is slower but right).
const MAX_CACHED: usize = 200_000;

pub const ATTESTATION_ANNOTATION: &str = "vnd.docker.reference.type";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What a manifest is, as an operator would name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Image,
    /// A multi-platform index (or Docker manifest list).
    Index,
    /// An index whose children include BuildKit attestation manifests (provenance, SBOM).
    IndexWithAttestations,
    /// BuildKit's legacy cache export, OCI media types: an index of layers + a cacheconfig blob.
    CacheLegacyOci,
    /// The same with Docker media types (a manifest list of layers + a cacheconfig blob).
    CacheLegacyDocker,
    /// BuildKit's `image-manifest=true` cache: an image manifest whose config is the cacheconfig.
    CacheImageManifest,
    /// An in-toto attestation manifest (BuildKit provenance or SBOM).
    Attestation,
    /// A manifest with a `subject` that looks like a signature (cosign, notation).
    Signature,
    /// Any other manifest with a `subject`, named by its artifact type.
    Referrer(String),
    /// A manifest that is neither an image nor a cache (its artifact or config type).
    Artifact(String),
    /// Not readable as a manifest (missing from a delta directory, or not JSON).
    Unknown,
}

impl Kind {
    pub fn label(&self) -> String {
        match self {
            Kind::Image => "image".into(),
            Kind::Index => "image index".into(),
            Kind::IndexWithAttestations => "image index + attestations".into(),
            Kind::CacheLegacyOci => "BuildKit cache (OCI index)".into(),
            Kind::CacheLegacyDocker => "BuildKit cache (Docker types)".into(),
            Kind::CacheImageManifest => "BuildKit cache (image-manifest)".into(),
            Kind::Attestation => "attestation".into(),
            Kind::Signature => "signature".into(),
            Kind::Referrer(t) => format!("referrer ({t})"),
            Kind::Artifact(t) => format!("artifact ({t})"),
            Kind::Unknown => "not in this store".into(),
        }
    }

    pub fn is_cache(&self) -> bool {
        matches!(
            self,
            Kind::CacheLegacyOci | Kind::CacheLegacyDocker | Kind::CacheImageManifest
        )
    }
}

/// The role of a child in its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Manifest,
    Config,
    Layer,
    CacheConfig,
    /// A child blob of an index (BuildKit legacy cache layers) or an artifact's `blobs`.
    Blob,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Manifest => "manifest",
            Role::Config => "config",
            Role::Layer => "layer",
            Role::CacheConfig => "cache records",
            Role::Blob => "blob",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Child {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub role: Role,
    /// `os/arch[/variant]` from the descriptor, if it has one.
    pub platform: Option<String>,
    /// For child manifests: their own summary (None when it could not be read).
    pub summary: Option<Arc<Summary>>,
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub kind: Kind,
    /// Platforms named by descriptors (an index's `platform` fields).
    pub platforms: Vec<String>,
    /// Image configs whose `os/architecture` are further platforms: read only when a page
    /// shows them ([`Summaries::platforms`]), so walking a store reads manifests, not configs.
    pub platform_configs: Vec<(Digest, u64)>,
    pub subject: Option<Digest>,
    pub children: Vec<Child>,
    /// Every blob this manifest reaches, itself included, each once, with its size.
    pub closure: Vec<(Digest, u64)>,
    /// Some manifest below could not be read: not cached, so it is looked at again.
    pub incomplete: bool,
}

impl Summary {
    pub fn bytes(&self) -> u64 {
        self.closure.iter().map(|(_, s)| s).sum()
    }
}

/// Manifest summaries by digest.
#[derive(Default)]
pub struct Summaries {
    cache: Mutex<HashMap<Digest, Arc<Summary>>>,
    /// The platform of each image config read so far.
    configs: Mutex<HashMap<Digest, Option<String>>>,
}

fn platform_of(v: &Value) -> Option<String> {
    let os = v.get("os")?.as_str()?;
    let arch = v.get("architecture")?.as_str()?;
    let mut p = format!("{os}/{arch}");
    if let Some(var) = v.get("variant").and_then(Value::as_str) {
        p.push('/');
        p.push_str(var);
    }
    Some(p)
}

fn descriptor(v: &Value) -> Option<(Digest, u64, String)> {
    Some((
        v.get("digest")?.as_str()?.parse().ok()?,
        v.get("size")?.as_u64()?,
        v.get("mediaType")?.as_str()?.to_owned(),
    ))
}

impl Summaries {
    /// The summary of a stored manifest (blocking: reads the store on a cache miss).
    pub fn get(&self, store: &Store, digest: &Digest, media_type: &str, size: u64) -> Arc<Summary> {
        self.get_at(store, digest, media_type, size, 0)
    }

    fn get_at(
        &self,
        store: &Store,
        digest: &Digest,
        media_type: &str,
        size: u64,
        depth: usize,
    ) -> Arc<Summary> {
        if let Some(s) = self.lock().get(digest) {
            return s.clone();
        }
        let s = Arc::new(self.compute(store, digest, media_type, size, depth));
        if !s.incomplete {
            let mut c = self.lock();
            if c.len() >= MAX_CACHED {
                c.clear();
            }
            c.insert(digest.clone(), s.clone());
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Summary>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn compute(
        &self,
        store: &Store,
        digest: &Digest,
        media_type: &str,
        size: u64,
        depth: usize,
    ) -> Summary {
        let mut s = Summary {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            size,
            kind: Kind::Unknown,
            platforms: Vec::new(),
            platform_configs: Vec::new(),
            subject: None,
            children: Vec::new(),
            closure: vec![(digest.clone(), size)],
            incomplete: false,
        };
        let parsed = store
            .wait(store.read_small(digest, media::MAX_MANIFEST_BYTES))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let Some(v) = parsed else {
            s.incomplete = true;
            return s;
        };
        if let Some(mt) = v.get("mediaType").and_then(Value::as_str) {
            s.media_type = mt.to_owned();
        }
        s.subject = v
            .get("subject")
            .and_then(|d| d.get("digest"))
            .and_then(Value::as_str)
            .and_then(|d| d.parse().ok());
        let mut seen: HashSet<Digest> = HashSet::from([digest.clone()]);
        let mut add = |s: &mut Summary, d: &Digest, size: u64| {
            if seen.insert(d.clone()) {
                s.closure.push((d.clone(), size));
            }
        };
        if let Some(list) = v.get("manifests").and_then(Value::as_array) {
            let mut attestations = false;
            for c in list {
                let Some((d, size, mt)) = descriptor(c) else {
                    continue;
                };
                let platform = c.get("platform").and_then(platform_of);
                let attest = c
                    .get("annotations")
                    .and_then(|a| a.get(ATTESTATION_ANNOTATION))
                    .and_then(Value::as_str)
                    == Some("attestation-manifest");
                attestations |= attest;
                if media::is_manifest_type(&mt) {
                    let child =
                        (depth < MAX_DEPTH).then(|| self.get_at(store, &d, &mt, size, depth + 1));
                    match &child {
                        Some(cs) => {
                            s.incomplete |= cs.incomplete;
                            for (bd, bs) in &cs.closure {
                                add(&mut s, bd, *bs);
                            }
                            if !attest {
                                if let Some(p) = &platform {
                                    s.platforms.push(p.clone());
                                } else {
                                    s.platforms.extend(cs.platforms.iter().cloned());
                                    s.platform_configs
                                        .extend(cs.platform_configs.iter().cloned());
                                }
                            }
                        }
                        None => add(&mut s, &d, size),
                    }
                    s.children.push(Child {
                        digest: d,
                        size,
                        media_type: mt,
                        role: Role::Manifest,
                        platform,
                        summary: child,
                    });
                } else {
                    add(&mut s, &d, size);
                    let role = if mt == media::BUILDKIT_CACHE_CONFIG {
                        Role::CacheConfig
                    } else {
                        Role::Blob
                    };
                    s.children.push(Child {
                        digest: d,
                        size,
                        media_type: mt,
                        role,
                        platform,
                        summary: None,
                    });
                }
            }
            let cache = s.children.iter().any(|c| c.role == Role::CacheConfig);
            s.kind = if cache && s.media_type == media::DOCKER_LIST {
                Kind::CacheLegacyDocker
            } else if cache {
                Kind::CacheLegacyOci
            } else if attestations {
                Kind::IndexWithAttestations
            } else {
                Kind::Index
            };
        } else {
            let config = v.get("config").and_then(descriptor);
            if let Some((d, size, mt)) = &config {
                add(&mut s, d, *size);
                let role = if mt == media::BUILDKIT_CACHE_CONFIG {
                    Role::CacheConfig
                } else {
                    Role::Config
                };
                s.children.push(Child {
                    digest: d.clone(),
                    size: *size,
                    media_type: mt.clone(),
                    role,
                    platform: None,
                    summary: None,
                });
            }
            let mut in_toto = false;
            for (key, role) in [("layers", Role::Layer), ("blobs", Role::Blob)] {
                for c in v.get(key).and_then(Value::as_array).into_iter().flatten() {
                    let Some((d, size, mt)) = descriptor(c) else {
                        continue;
                    };
                    in_toto |= mt.starts_with("application/vnd.in-toto");
                    add(&mut s, &d, size);
                    s.children.push(Child {
                        digest: d,
                        size,
                        media_type: mt,
                        role,
                        platform: None,
                        summary: None,
                    });
                }
            }
            let config_mt = config.as_ref().map(|c| c.2.as_str()).unwrap_or("");
            let artifact = v
                .get("artifactType")
                .and_then(Value::as_str)
                .unwrap_or(config_mt)
                .to_owned();
            s.kind = if config_mt == media::BUILDKIT_CACHE_CONFIG {
                Kind::CacheImageManifest
            } else if in_toto {
                Kind::Attestation
            } else if s.subject.is_some() {
                let a = artifact.to_ascii_lowercase();
                if a.contains("signature") || a.contains("cosign") || a.contains("notary") {
                    Kind::Signature
                } else {
                    Kind::Referrer(artifact)
                }
            } else if config_mt == OCI_CONFIG || config_mt == DOCKER_CONFIG {
                Kind::Image
            } else {
                Kind::Artifact(artifact)
            };
            if s.kind == Kind::Image {
                if let Some((d, size, _)) = &config {
                    if *size <= MAX_CONFIG {
                        s.platform_configs.push((d.clone(), *size));
                    }
                }
            }
        }
        s.platforms.dedup();
        s
    }

    /// Every platform of a summary: those its descriptors name and those of its image configs
    /// (each config read once, then remembered).
    pub fn platforms(&self, store: &Store, s: &Summary) -> Vec<String> {
        let mut out = s.platforms.clone();
        for (d, _) in &s.platform_configs {
            let known = self
                .configs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(d)
                .cloned();
            let p = match known {
                Some(p) => p,
                None => {
                    let p = store
                        .wait(store.read_small(d, MAX_CONFIG))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .and_then(|c| platform_of(&c));
                    let mut c = self.configs.lock().unwrap_or_else(|p| p.into_inner());
                    if c.len() >= MAX_CACHED {
                        c.clear();
                    }
                    c.insert(d.clone(), p.clone());
                    p
                }
            };
            out.extend(p);
        }
        out.dedup();
        out
    }

    /// Summarise every manifest of `index` on a few threads (a cold store: 10,000 manifests are
    /// 10,000 small reads; the catalog then finds them all cached).
    pub fn prefetch(&self, store: &Store, index: &Index) {
        let list = &index.file.manifests;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        if threads < 2 || list.len() < 256 {
            return;
        }
        std::thread::scope(|scope| {
            for chunk in list.chunks(list.len().div_ceil(threads)) {
                scope.spawn(move || {
                    for d in chunk {
                        self.get(store, &d.digest, &d.media_type, d.size);
                    }
                });
            }
        });
    }
}

/// One tag (or untagged manifest) of a repository.
#[derive(Clone, Debug)]
pub struct TagRow {
    pub repo: String,
    /// `None` for a manifest kept in the repository without a tag (a referrer, a child).
    pub tag: Option<String>,
    pub summary: Arc<Summary>,
    /// When the tag was published (ms since the epoch), if recorded.
    pub pushed_ms: Option<u64>,
    pub last_read: Option<SystemTime>,
    /// An untagged record of a manifest some tag reaches (a child of an index): part of that
    /// tag, not a holder of its own, so it neither "shares" blobs nor appears as a row.
    pub child: bool,
}

impl TagRow {
    pub fn name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.repo),
            None => format!("{}@{}", self.repo, self.summary.digest),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RepoRow {
    pub name: String,
    pub tags: usize,
    /// Manifests recorded in the repository (tags and untagged).
    pub entries: usize,
    /// Bytes of every blob the repository reaches, each counted once.
    pub bytes: u64,
    /// Of those, bytes no other repository reaches (what removing the repository would free).
    pub unique: u64,
    pub last_push_ms: Option<u64>,
    pub last_read: Option<SystemTime>,
}

/// The whole store as the page sees it.
pub struct Catalog {
    pub rows: Vec<TagRow>,
    /// Sorted by name.
    pub repos: Vec<RepoRow>,
    /// Bytes of every distinct blob some entry reaches, and how many blobs that is.
    pub referenced_bytes: u64,
    pub distinct_blobs: usize,
}

/// Per blob while the catalog is built: its size, the last repository counted for it, and in
/// how many repositories it is.
struct BlobTally {
    size: u64,
    last_repo: usize,
    repos: u32,
    first_repo: usize,
}

impl Catalog {
    /// Walk `index.json` once (blocking). Rows are grouped by repository first, so "each blob
    /// once per repository" is a comparison with the last repository that counted it, not a set
    /// per repository: one hash lookup per (row, blob) in all.
    pub fn build(store: &Store, index: &Index, summaries: &Summaries) -> Catalog {
        summaries.prefetch(store, index);
        let reads = store.wait(store.reads());
        let mut rows = Vec::with_capacity(index.file.manifests.len());
        for d in &index.file.manifests {
            let (Some(repo), tag) = d.repo_and_tag() else {
                continue;
            };
            let summary = summaries.get(store, &d.digest, &d.media_type, d.size);
            rows.push(TagRow {
                repo: repo.to_owned(),
                tag: tag.map(str::to_owned),
                pushed_ms: d.tagged_at(),
                last_read: reads.get(&d.digest).copied(),
                summary,
                child: false,
            });
        }
        rows.sort_by(|a, b| a.repo.cmp(&b.repo));
        let below_tags: HashSet<&Digest> = rows
            .iter()
            .filter(|r| r.tag.is_some())
            .flat_map(|r| r.summary.closure.iter().skip(1).map(|(d, _)| d))
            .collect();
        let children: Vec<bool> = rows
            .iter()
            .map(|r| r.tag.is_none() && below_tags.contains(&r.summary.digest))
            .collect();
        drop(below_tags);
        for (r, c) in rows.iter_mut().zip(children) {
            r.child = c;
        }
        let mut repos: Vec<RepoRow> = Vec::new();
        let mut tally: Vec<BlobTally> = Vec::new();
        let mut ids: HashMap<&Digest, usize> = HashMap::new();
        for r in &rows {
            if repos.last().is_none_or(|l| l.name != r.repo) {
                repos.push(RepoRow {
                    name: r.repo.clone(),
                    ..Default::default()
                });
            }
            let ri = repos.len() - 1;
            let row = &mut repos[ri];
            row.entries += 1;
            row.tags += usize::from(r.tag.is_some());
            row.last_push_ms = row.last_push_ms.max(r.pushed_ms);
            // Reads are recorded per manifest digest, not per repository: a child record whose
            // manifest another repository's tag also names would carry that tag's reads here.
            if !r.child {
                row.last_read = row.last_read.max(r.last_read);
            }
            for (d, size) in &r.summary.closure {
                let id = *ids.entry(d).or_insert_with(|| {
                    tally.push(BlobTally {
                        size: *size,
                        last_repo: usize::MAX,
                        repos: 0,
                        first_repo: ri,
                    });
                    tally.len() - 1
                });
                let t = &mut tally[id];
                if t.last_repo != ri {
                    t.last_repo = ri;
                    t.repos += 1;
                    row.bytes += t.size;
                }
            }
        }
        for t in &tally {
            if t.repos == 1 {
                repos[t.first_repo].unique += t.size;
            }
        }
        let referenced_bytes = tally.iter().map(|t| t.size).sum();
        let distinct_blobs = tally.len();
        drop(ids);
        Catalog {
            rows,
            repos,
            referenced_bytes,
            distinct_blobs,
        }
    }

    /// For the blobs `row` reaches: the other entries (not child records) reaching each. One
    /// pass over the catalog, for the one tag a page shows, instead of a table of every blob's
    /// users kept for every page.
    pub fn sharers(&self, row: usize) -> Sharers {
        let mut users: HashMap<&Digest, Vec<usize>> = HashMap::new();
        if let Some(r) = self.rows.get(row) {
            for (d, _) in &r.summary.closure {
                users.insert(d, Vec::new());
            }
        }
        for (i, r) in self.rows.iter().enumerate() {
            if i == row || r.child {
                continue;
            }
            for (d, _) in &r.summary.closure {
                if let Some(u) = users.get_mut(d) {
                    u.push(i);
                }
            }
        }
        Sharers {
            users: users.into_iter().map(|(d, u)| (d.clone(), u)).collect(),
        }
    }
}

/// Which other entries reach each blob of one entry ([`Catalog::sharers`]).
pub struct Sharers {
    users: HashMap<Digest, Vec<usize>>,
}

impl Sharers {
    /// Entries other than the one asked about that reach `d`.
    pub fn of(&self, d: &Digest) -> &[usize] {
        self.users.get(d).map(Vec::as_slice).unwrap_or(&[])
    }

    /// What removing the entry would free: bytes of its blobs no other entry reaches.
    pub fn frees(&self, summary: &Summary) -> u64 {
        summary
            .closure
            .iter()
            .filter(|(d, _)| self.of(d).is_empty())
            .map(|(_, s)| s)
            .sum()
    }
}
