//! `index.json`: the layout's table of tags, and ferry's record of which repository holds which
//! manifest.
//!
//! One descriptor per tag, annotated `org.opencontainers.image.ref.name = "REPO:TAG"` (what
//! `skopeo copy oci:DIR:REPO:TAG` looks up), plus ferry's own `io.ferry.repository = REPO` so that
//! manifests pushed by digest only (children of an index, referrers) are recorded too. Descriptors
//! that another tool wrote are kept as they are; when their `ref.name` has the `REPO:TAG` shape they
//! are served under that repository and tag.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::vocab::digest::Digest;
use crate::vocab::media;
use crate::vocab::reference::{is_valid_name, is_valid_tag, truncate};

/// Largest `index.json` read (about 90,000 tags of ferry's, ~350 bytes each); a larger one is
/// refused, not loaded. Parsed, an index costs about five times its size in memory (a review
/// measured ~330 MiB for 60 MiB), so this keeps one under ~200 MiB. A store with more tags
/// belongs in a bucket, which keeps one object per tag and never reads them as one file.
pub const MAX_INDEX_BYTES: u64 = 32 << 20;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const FERRY_REPOSITORY: &str = "io.ferry.repository";
pub const FERRY_SUBJECT: &str = "io.ferry.subject";
/// The children of an image index that were left behind on purpose (`ferry sync --platform`):
/// digests, comma-separated. The index is stored byte for byte, so its digest is the source's;
/// these are the platforms' manifests (and their attestations) it names but this store lacks.
pub const FERRY_ABSENT: &str = "io.ferry.absent";
/// When the tag was published, in milliseconds since the epoch (retention's "newest N").
pub const FERRY_TAGGED: &str = "io.ferry.tagged";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(
        rename = "artifactType",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Fields ferry does not interpret (`platform`, `urls`, `data`, …), kept byte-for-byte in spirit.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Descriptor {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// (repository, tag) this descriptor stands for, if any.
    pub fn repo_and_tag(&self) -> (Option<&str>, Option<&str>) {
        // A name that is no repository name (`../../x` on a hostile disk) names nothing: it is
        // never listed, served or turned into a path ([`Index::skipped`] says so).
        let repo = self.annotation(FERRY_REPOSITORY);
        if repo.is_some_and(|r| !is_valid_name(r)) {
            return (None, None);
        }
        let refname = self.annotation(REF_NAME);
        match (repo, refname) {
            (Some(r), Some(n)) => {
                let tag = n
                    .strip_prefix(r)
                    .and_then(|t| t.strip_prefix(':'))
                    .filter(|t| is_valid_tag(t));
                (Some(r), tag)
            }
            (Some(r), None) => (Some(r), None),
            (None, Some(n)) => match n.rsplit_once(':') {
                Some((r, t)) if is_valid_name(r) && is_valid_tag(t) => (Some(r), Some(t)),
                _ => (None, None),
            },
            (None, None) => (None, None),
        }
    }

    pub fn subject(&self) -> Option<&str> {
        self.annotation(FERRY_SUBJECT)
    }

    /// The children left behind on purpose (see [`FERRY_ABSENT`]).
    pub fn absent(&self) -> Vec<Digest> {
        self.annotation(FERRY_ABSENT)
            .map(|a| a.split(',').filter_map(|d| d.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// When the tag was published (ms since the epoch), if ferry recorded it.
    pub fn tagged_at(&self) -> Option<u64> {
        self.annotation(FERRY_TAGGED)?.parse().ok()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexFile {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none", default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Default for IndexFile {
    fn default() -> Self {
        IndexFile {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_owned()),
            manifests: Vec::new(),
            extra: Default::default(),
        }
    }
}

fn absent_list(ds: &[Digest]) -> String {
    ds.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What a manifest PUT records.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// Milliseconds since the epoch.
    pub tagged_at: u64,
    /// Children of an index left behind on purpose ([`FERRY_ABSENT`]).
    pub absent: Vec<Digest>,
}

impl NewEntry {
    fn descriptor(&self, tag: Option<&str>) -> Descriptor {
        let mut ann = BTreeMap::new();
        ann.insert(FERRY_REPOSITORY.to_owned(), self.repo.clone());
        if let Some(t) = tag {
            ann.insert(REF_NAME.to_owned(), format!("{}:{}", self.repo, t));
            ann.insert(FERRY_TAGGED.to_owned(), self.tagged_at.to_string());
        }
        if let Some(s) = &self.subject {
            ann.insert(FERRY_SUBJECT.to_owned(), s.to_string());
        }
        if !self.absent.is_empty() {
            ann.insert(FERRY_ABSENT.to_owned(), absent_list(&self.absent));
        }
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            artifact_type: self.artifact_type.clone(),
            annotations: Some(ann),
            extra: Default::default(),
        }
    }
}

/// What a manifest PUT changed in the records, to take it back: a PUT one of whose references
/// was swept while it was being recorded is undone and refused (`Store::put_manifest_checked`).
/// Only what the PUT did is undone: a tag someone else moved since is left alone.
#[derive(Clone, Debug)]
pub struct Undo {
    /// The tag's descriptor before, when the tag named another manifest.
    prev_tag: Option<Descriptor>,
    /// Whether the tag named the new manifest already (then the PUT changed nothing to undo).
    had_tag: bool,
    /// Whether the repository recorded the new manifest (tagged or not) before.
    had_digest: bool,
    /// Whether the repository recorded the previous tag's manifest by digest before.
    had_prev_digest: bool,
}

impl Undo {
    pub fn before(f: &IndexFile, e: &NewEntry) -> Undo {
        let prev_tag = e.tag.as_ref().and_then(|t| {
            f.manifests
                .iter()
                .find(|d| d.repo_and_tag() == (Some(&e.repo), Some(t)) && d.digest != e.digest)
                .cloned()
        });
        let had_prev_digest = prev_tag.as_ref().is_some_and(|p| {
            f.manifests
                .iter()
                .any(|d| d.digest == p.digest && d.repo_and_tag() == (Some(&e.repo), None))
        });
        let had_tag = e.tag.as_ref().is_some_and(|t| {
            f.manifests
                .iter()
                .any(|d| d.repo_and_tag() == (Some(&e.repo), Some(t)) && d.digest == e.digest)
        });
        Undo {
            had_tag,
            had_digest: f.has_repo_digest(&e.repo, &e.digest),
            prev_tag,
            had_prev_digest,
        }
    }

    /// Take the PUT of `e` back. Returns whether anything changed.
    pub fn apply(&self, f: &mut IndexFile, e: &NewEntry) -> bool {
        let before = f.manifests.len();
        let mut changed = false;
        if self.had_tag {
            return false;
        }
        if let Some(tag) = &e.tag {
            let ours = |d: &Descriptor| {
                d.repo_and_tag() == (Some(&e.repo), Some(tag.as_str())) && d.digest == e.digest
            };
            if f.manifests.iter().any(ours) {
                f.manifests.retain(|d| !ours(d));
                changed = true;
                if let Some(prev) = &self.prev_tag {
                    if !self.had_prev_digest {
                        f.manifests.retain(|d| {
                            !(d.digest == prev.digest && d.repo_and_tag() == (Some(&e.repo), None))
                        });
                    }
                    f.manifests.push(prev.clone());
                }
            }
        }
        if self.had_digest {
            if !f.has_repo_digest(&e.repo, &e.digest) {
                f.manifests.push(e.descriptor(None));
                changed = true;
            }
        } else {
            f.manifests
                .retain(|d| !(d.digest == e.digest && d.repo_and_tag() == (Some(&e.repo), None)));
        }
        changed || f.manifests.len() != before
    }
}

impl IndexFile {
    /// Parse an `index.json`, refusing one that names a tag twice with different manifests: which
    /// of the two is "the" tag would depend on who reads it (a signed trip's check and the copy
    /// must never disagree), so the file is wrong, and said so wherever it is read.
    pub fn parse(bytes: &[u8]) -> Result<IndexFile, Error> {
        let f: IndexFile =
            serde_json::from_slice(bytes).map_err(|e| Error::Layout(format!("index.json: {e}")))?;
        f.check_unique_tags()?;
        Ok(f)
    }

    /// Every (repository, tag) names one manifest. The same descriptor twice is harmless and kept.
    pub fn check_unique_tags(&self) -> Result<(), Error> {
        let mut seen: HashMap<(&str, &str), (usize, &Digest)> = HashMap::new();
        for (i, d) in self.manifests.iter().enumerate() {
            let (Some(repo), Some(tag)) = d.repo_and_tag() else {
                continue;
            };
            match seen.get(&(repo, tag)) {
                Some((j, first)) if *first != &d.digest => {
                    return Err(Error::Layout(format!(
                        "index.json names {}:{} twice, entry {j} as {first} and entry {i} as {}; \
                         a layout must name each tag once",
                        truncate(repo),
                        truncate(tag),
                        d.digest
                    )))
                }
                Some(_) => {}
                None => {
                    seen.insert((repo, tag), (i, &d.digest));
                }
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A Vec<u8> writer cannot fail and these types serialize infallibly; fall back to an
        // empty object rather than panicking if that ever changes.
        serde_json::to_vec_pretty(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    fn position(&self, f: impl Fn(&Descriptor) -> bool) -> Option<usize> {
        self.manifests.iter().position(f)
    }

    /// Record a manifest for a repository (and a tag). A tag that moves leaves the manifest it
    /// pointed at in the repository as an untagged entry, as registries keep it by digest.
    pub fn put(&mut self, e: &NewEntry) {
        if let Some(tag) = &e.tag {
            if let Some(i) = self.position(|d| d.repo_and_tag() == (Some(&e.repo), Some(tag))) {
                let old = self.manifests.remove(i);
                if old.digest == e.digest {
                    // Same tag, same manifest: keep the fresh descriptor (type/size may be more precise).
                } else if !self.has_repo_digest(&e.repo, &old.digest) {
                    let mut untagged = old;
                    if let Some(a) = untagged.annotations.as_mut() {
                        a.remove(REF_NAME);
                        a.insert(FERRY_REPOSITORY.to_owned(), e.repo.clone());
                    }
                    self.manifests.push(untagged);
                }
            }
            self.manifests
                .retain(|d| !(d.digest == e.digest && d.repo_and_tag() == (Some(&e.repo), None)));
            self.manifests.push(e.descriptor(Some(tag)));
        } else if !self.has_repo_digest(&e.repo, &e.digest) {
            self.manifests.push(e.descriptor(None));
        } else {
            // Recorded already: what it now lacks on purpose is what this PUT says.
            for d in self.manifests.iter_mut() {
                if d.digest == e.digest && d.repo_and_tag().0 == Some(e.repo.as_str()) {
                    let a = d.annotations.get_or_insert_with(Default::default);
                    if e.absent.is_empty() {
                        a.remove(FERRY_ABSENT);
                    } else {
                        a.insert(FERRY_ABSENT.to_owned(), absent_list(&e.absent));
                    }
                }
            }
        }
    }

    pub fn has_repo_digest(&self, repo: &str, digest: &Digest) -> bool {
        self.manifests
            .iter()
            .any(|d| &d.digest == digest && d.repo_and_tag().0 == Some(repo))
    }

    /// Remove a tag; the manifest stays in the repository by digest. Returns false if unknown.
    pub fn delete_tag(&mut self, repo: &str, tag: &str) -> bool {
        let Some(i) = self.position(|d| d.repo_and_tag() == (Some(repo), Some(tag))) else {
            return false;
        };
        let old = self.manifests.remove(i);
        if !self.has_repo_digest(repo, &old.digest) {
            let mut untagged = old;
            if let Some(a) = untagged.annotations.as_mut() {
                a.remove(REF_NAME);
                a.insert(FERRY_REPOSITORY.to_owned(), repo.to_owned());
            }
            self.manifests.push(untagged);
        }
        true
    }

    /// Remove a manifest and every tag pointing at it from a repository. Returns how many
    /// descriptors went.
    pub fn delete_manifest(&mut self, repo: &str, digest: &Digest) -> usize {
        let before = self.manifests.len();
        self.manifests
            .retain(|d| !(&d.digest == digest && d.repo_and_tag().0 == Some(repo)));
        before - self.manifests.len()
    }

    /// Retention: drop a tag, and with it the repository's untagged records of manifests in
    /// `orphaned` (what only that tag reached), so GC can reclaim them.
    pub fn drop_tag(
        &mut self,
        repo: &str,
        tag: &str,
        orphaned: &std::collections::BTreeSet<Digest>,
    ) -> bool {
        let before = self.manifests.len();
        self.manifests
            .retain(|d| d.repo_and_tag() != (Some(repo), Some(tag)));
        if self.manifests.len() == before {
            return false;
        }
        self.manifests
            .retain(|d| !(d.repo_and_tag() == (Some(repo), None) && orphaned.contains(&d.digest)));
        true
    }

    pub fn names_digest(&self, digest: &Digest) -> bool {
        self.manifests.iter().any(|d| &d.digest == digest)
    }
}

/// A parsed `index.json` with lookup tables, shared read-only between requests.
#[derive(Debug, Default)]
pub struct Index {
    pub file: IndexFile,
    tags: HashMap<(String, String), usize>,
    repo_digest: HashMap<(String, Digest), usize>,
    digest: HashMap<Digest, usize>,
    repos: BTreeSet<String>,
}

impl Index {
    pub fn new(file: IndexFile) -> Index {
        let mut idx = Index {
            file,
            ..Default::default()
        };
        for (i, d) in idx.file.manifests.iter().enumerate() {
            idx.digest.entry(d.digest.clone()).or_insert(i);
            if let (Some(repo), tag) = d.repo_and_tag() {
                idx.repos.insert(repo.to_owned());
                idx.repo_digest
                    .entry((repo.to_owned(), d.digest.clone()))
                    .or_insert(i);
                if let Some(t) = tag {
                    idx.tags.insert((repo.to_owned(), t.to_owned()), i);
                }
            }
        }
        idx
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<&Descriptor> {
        self.tags
            .get(&(repo.to_owned(), tag.to_owned()))
            .map(|&i| &self.file.manifests[i])
    }

    /// The descriptor recorded for `digest` in `repo`, or else in any repository.
    pub fn by_digest(&self, repo: &str, digest: &Digest) -> Option<&Descriptor> {
        self.repo_digest
            .get(&(repo.to_owned(), digest.clone()))
            .or_else(|| self.digest.get(digest))
            .map(|&i| &self.file.manifests[i])
    }

    /// Whether `repo` records `digest` (a lookup, not a walk of the records).
    pub fn holds(&self, repo: &str, digest: &Digest) -> bool {
        self.repo_digest
            .contains_key(&(repo.to_owned(), digest.clone()))
    }

    pub fn has_repo(&self, repo: &str) -> bool {
        self.repos.contains(repo)
    }

    pub fn repos(&self) -> impl Iterator<Item = &str> {
        self.repos.iter().map(String::as_str)
    }

    /// Tags of a repository in lexical order.
    pub fn tags_of(&self, repo: &str) -> Vec<&str> {
        let mut tags: Vec<&str> = self
            .tags
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.as_str())
            .collect();
        tags.sort_unstable();
        tags
    }

    /// The entries of `index.json` that name no tag although they look meant to, and why: a
    /// `ref.name` that is not `REPO:TAG` (nor a tag of the entry's `io.ferry.repository`), an
    /// entry with neither annotation. Readers name these instead of skipping them in silence.
    pub fn skipped(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, d) in self.file.manifests.iter().enumerate() {
            let refname = d.annotation(REF_NAME);
            let bad_repo = d.annotation(FERRY_REPOSITORY).filter(|r| !is_valid_name(r));
            let why = match (d.repo_and_tag(), refname) {
                ((None, _), _) if bad_repo.is_some() => format!(
                    "{FERRY_REPOSITORY} {:?} is not a repository name",
                    truncate(bad_repo.unwrap_or_default())
                ),
                ((None, _), Some(n)) => format!(
                    "ref.name {:?} is not REPO:TAG (a lower-case repository name, a colon, a tag)",
                    truncate(n)
                ),
                ((None, _), None) => format!(
                    "no {REF_NAME} annotation (nor {FERRY_REPOSITORY}): no repository or tag"
                ),
                ((Some(r), None), Some(n)) => format!(
                    "ref.name {:?} is not a valid tag of repository {r:?}",
                    truncate(n)
                ),
                _ => continue,
            };
            out.push(format!("entry {i} ({}) skipped: {why}", d.digest));
        }
        out
    }

    /// Manifests of `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Vec<&Descriptor> {
        let want = subject.to_string();
        let mut seen = BTreeSet::new();
        self.file
            .manifests
            .iter()
            .filter(|d| d.repo_and_tag().0 == Some(repo) && d.subject() == Some(want.as_str()))
            .filter(|d| seen.insert(d.digest.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(repo: &str, tag: Option<&str>, n: u8) -> NewEntry {
        NewEntry {
            repo: repo.into(),
            tag: tag.map(Into::into),
            digest: Digest::sha256_of(&[n]),
            media_type: media::OCI_MANIFEST.into(),
            size: 1,
            artifact_type: None,
            subject: None,
            tagged_at: 0,
            absent: Vec::new(),
        }
    }

    #[test]
    fn moving_a_tag_keeps_the_old_manifest_by_digest() {
        let mut f = IndexFile::default();
        f.put(&entry("a/b", Some("t"), 1));
        f.put(&entry("a/b", Some("t"), 2));
        let idx = Index::new(f.clone());
        assert_eq!(idx.tag("a/b", "t").unwrap().digest, Digest::sha256_of(&[2]));
        assert!(f.has_repo_digest("a/b", &Digest::sha256_of(&[1])));
        assert_eq!(idx.tags_of("a/b"), vec!["t"]);
        assert_eq!(f.manifests.len(), 2);
    }

    #[test]
    fn untagged_then_tagged_is_one_entry() {
        let mut f = IndexFile::default();
        f.put(&entry("r", None, 1));
        f.put(&entry("r", None, 1));
        assert_eq!(f.manifests.len(), 1);
        f.put(&entry("r", Some("x"), 1));
        assert_eq!(f.manifests.len(), 1);
        f.put(&entry("r", Some("y"), 1));
        assert_eq!(f.manifests.len(), 2);
        assert!(f.delete_tag("r", "x"));
        assert!(f.delete_tag("r", "y"));
        assert_eq!(f.manifests.len(), 1, "manifest stays by digest");
        assert_eq!(f.delete_manifest("r", &Digest::sha256_of(&[1])), 1);
        assert!(f.manifests.is_empty());
    }

    #[test]
    fn an_undone_put_leaves_the_records_as_they_were() {
        let mut f = IndexFile::default();
        f.put(&entry("r", Some("t"), 1));
        f.put(&entry("r", None, 3));
        let start = f.to_bytes();
        for e in [
            entry("r", Some("t"), 2),
            entry("r", Some("u"), 3),
            entry("r", Some("t"), 3),
            entry("r", None, 4),
            entry("r", Some("t"), 1),
        ] {
            let mut g = f.clone();
            let undo = Undo::before(&g, &e);
            g.put(&e);
            undo.apply(&mut g, &e);
            let norm = |f: &IndexFile| {
                let mut v: Vec<String> = f
                    .manifests
                    .iter()
                    .map(|d| serde_json::to_string(d).unwrap())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(norm(&g), norm(&IndexFile::parse(&start).unwrap()), "{e:?}");
        }
    }

    #[test]
    fn a_tag_named_twice_is_refused_and_named() {
        let mut f = IndexFile::default();
        f.put(&entry("app", Some("1.4"), 1));
        f.put(&entry("app", Some("1.3"), 2));
        let mut dup = f.manifests[1].clone();
        dup.annotations
            .as_mut()
            .unwrap()
            .insert(REF_NAME.into(), "app:1.4".into());
        f.manifests.insert(0, dup);
        let err = IndexFile::parse(&f.to_bytes()).unwrap_err().to_string();
        assert!(err.contains("app:1.4 twice"), "{err}");
        // The same descriptor twice names one manifest: not ambiguous.
        let again = f.manifests[1].clone();
        f.manifests.remove(0);
        f.manifests.push(again);
        IndexFile::parse(&f.to_bytes()).unwrap();
    }

    #[test]
    fn foreign_ref_names() {
        let bytes = br#"{"schemaVersion":2,"manifests":[
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:f60757f1b492b4e34473f5a93b1894d629809618d5576d5a366e093c0733b9c6","size":1231,"annotations":{"org.opencontainers.image.ref.name":"latest"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:f60757f1b492b4e34473f5a93b1894d629809618d5576d5a366e093c0733b9c6","size":1231,"annotations":{"org.opencontainers.image.ref.name":"cache/app:bx"},"platform":{"os":"linux"}}]}"#;
        let f = IndexFile::parse(bytes).unwrap();
        let idx = Index::new(f.clone());
        assert!(idx.tag("cache/app", "bx").is_some());
        assert_eq!(idx.repos().collect::<Vec<_>>(), vec!["cache/app"]);
        let out = String::from_utf8(f.to_bytes()).unwrap();
        assert!(
            out.contains("\"platform\""),
            "unknown fields are kept: {out}"
        );
    }
}
