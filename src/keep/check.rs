//! `ferry check`: before the cable is cut, is everything a ref needs present and intact?
//!
//! For each ref: walk its graph (every manifest is read and hashed on the way), then read and hash
//! every blob. Caches are recognised by their `application/vnd.buildkit.cacheconfig.v0` blob
//! (the config of an image-manifest cache, or a child of a legacy cache index); their cache config
//! is parsed to report how many cache records and layers they hold.

use futures_util::StreamExt;
use serde::Serialize;

use crate::carry::remote::RemoteOptions;
use crate::carry::sync::{ref_matches, walk, Place};
use crate::error::Result;
use crate::vocab::digest::Digest;
use crate::vocab::location::Location;
use crate::vocab::media;

#[derive(Clone, Debug, Default, Serialize)]
pub struct RefReport {
    pub reference: String,
    /// `cache`, `image` or `index`.
    pub kind: String,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub cache_records: Option<usize>,
    pub cache_layers: Option<usize>,
    pub missing: Vec<String>,
    pub corrupt: Vec<String>,
    /// Layers a delta carries as patches: each is rebuilt from a base the destination must
    /// hold (`<layer> from <base>`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patched: Vec<String>,
    /// An image index carried for some of its platforms only (`ferry sync --platform`):
    /// "2 of 4 platforms carried (absent: …)".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms: Option<String>,
    /// What refers to its manifests (signatures, SBOMs, attestations):
    /// `<kind> <digest> (<artifact type>)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub referrers: Vec<String>,
    /// The graph could not be read at all (a missing or corrupt manifest).
    pub error: Option<String>,
}

impl RefReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.error.is_none()
    }
}

impl std::fmt::Display for RefReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(e) = &self.error {
            return write!(f, "{}: BROKEN: {e}", self.reference);
        }
        write!(
            f,
            "{}: {}, {} manifest(s), {} blob(s), {} bytes",
            self.reference, self.kind, self.manifests, self.blobs, self.bytes
        )?;
        if let (Some(r), Some(l)) = (self.cache_records, self.cache_layers) {
            write!(f, ", {r} cache records over {l} layers")?;
        }
        if let Some(p) = &self.platforms {
            write!(f, ", {p}")?;
        }
        if !self.referrers.is_empty() {
            write!(f, ", {} referrer(s)", self.referrers.len())?;
        }
        if !self.patched.is_empty() {
            write!(
                f,
                ", {} layer(s) as patches (each needs its base at the destination)",
                self.patched.len()
            )?;
            for p in &self.patched {
                write!(f, "\n  PATCHED {p}")?;
            }
            if self.ok() {
                write!(f, "\n  all else present and intact")?;
            }
        }
        if self.ok() && self.patched.is_empty() {
            write!(f, "; all present and intact")?;
        }
        for r in &self.referrers {
            write!(f, "\n  REFERRER {r}")?;
        }
        if self.ok() {
            Ok(())
        } else {
            for d in &self.missing {
                write!(f, "\n  MISSING {d}")?;
            }
            for d in &self.corrupt {
                write!(f, "\n  CORRUPT {d}")?;
            }
            Ok(())
        }
    }
}

enum Problem {
    Missing,
    /// Corrupt, and what is known of why.
    Corrupt(Option<String>),
}

async fn blob_state(place: &Place, repo: &str, d: &Digest) -> std::result::Result<(), Problem> {
    let mut s = match place.read_blob(repo, d, 0).await {
        Ok((s, _)) => s,
        // A FIFO, a socket or a symlink out of the layout under the blob's name: not content.
        Err(crate::Error::BlobUnreadable { why, .. }) => return Err(Problem::Corrupt(Some(why))),
        Err(_) => return Err(Problem::Missing),
    };
    let mut h = d.algorithm().hasher();
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(c) => h.update(&c),
            Err(e) => return Err(Problem::Corrupt(Some(format!("reading failed: {e}")))),
        }
    }
    if &h.finish() == d {
        Ok(())
    } else {
        Err(Problem::Corrupt(None))
    }
}

/// Check the refs a location names (narrowed by `refs`); an image index must hold each of
/// `platforms` (none: those it was carried with).
pub async fn check(
    loc: &Location,
    refs: &[String],
    platforms: &[media::Platform],
    opts: &RemoteOptions,
) -> Result<Vec<RefReport>> {
    let place = Place::open(loc, opts, false).await?;
    let mut roots = place.roots(loc).await?;
    if !refs.is_empty() {
        roots.retain(|r| refs.iter().any(|p| ref_matches(r, p)));
    }
    let patches = crate::carry::patch::list::read_list(&place).await?;
    let mut out = Vec::new();
    for root in roots {
        let mut rep = check_root(&place, &root, platforms).await;
        // A gap a patch fills: the patch must be there and intact; its base is the
        // destination's to hold.
        let mut still = Vec::new();
        for m in std::mem::take(&mut rep.missing) {
            let Some(e) = m.parse::<Digest>().ok().and_then(|d| patches.get(&d)) else {
                still.push(m);
                continue;
            };
            match blob_state(&place, &root.repo, &e.patch).await {
                Ok(()) => rep.patched.push(format!(
                    "{} from {} (a patch of {} bytes for {} bytes)",
                    e.target, e.base, e.patch_size, e.target_size
                )),
                Err(Problem::Missing) => {
                    still.push(format!("{m} (its patch {} is missing)", e.patch))
                }
                Err(Problem::Corrupt(_)) => {
                    rep.corrupt.push(format!("{} (the patch for {m})", e.patch))
                }
            }
        }
        rep.missing = still;
        out.push(rep);
    }
    Ok(out)
}

/// Check one root: every manifest readable, every blob present and hashing to its digest; an
/// image index must hold each of `platforms` ("platform linux/arm64: not carried").
pub async fn check_root(
    place: &Place,
    root: &crate::carry::sync::Root,
    platforms: &[media::Platform],
) -> RefReport {
    let mut rep = RefReport {
        reference: root.to_string(),
        ..Default::default()
    };
    let g = match walk(place, &root.repo, &root.reference).await {
        Ok(g) => g,
        Err(e) => {
            rep.error = Some(e.to_string());
            return rep;
        }
    };
    if let Some((d, bytes, mt)) = g.manifests.last() {
        // The platforms asked for: present when the walk read their manifest.
        if media::is_index_type(mt) && !platforms.is_empty() {
            let children = media::index_children(bytes).unwrap_or_default();
            for p in platforms {
                let here = children
                    .iter()
                    .filter(|c| c.attests.is_none() && p.matches(&c.platform_json))
                    .any(|c| g.manifests.iter().any(|(m, _, _)| m == &c.digest));
                if !here {
                    rep.missing.push(format!("platform {p}: not carried"));
                }
            }
        }
        let absent = g.absent_of(d);
        if media::is_index_type(mt) && !absent.is_empty() {
            let all = media::index_platforms(bytes);
            let gone: Vec<&str> = all
                .iter()
                .filter(|(x, _)| absent.contains(x))
                .map(|(_, p)| p.as_str())
                .collect();
            rep.platforms = Some(format!(
                "{} of {} platforms carried (absent: {})",
                all.len() - gone.len(),
                all.len(),
                gone.join(", ")
            ));
        }
    }
    for (d, _, _) in &g.manifests {
        if let Ok(list) = place.referrers(&root.repo, d).await {
            for r in list {
                let kind = media::ReferrerKind::of(&r.artifact_type).name();
                let here = crate::vocab::reference::Reference::Digest(r.digest.clone());
                let state = match place.manifest(&root.repo, &here).await {
                    Ok(_) => "",
                    Err(_) => " MISSING",
                };
                rep.referrers.push(format!(
                    "{kind} {} ({}) of {d}{state}",
                    r.digest, r.artifact_type
                ));
            }
        }
    }
    rep.manifests = g.manifests.len();
    rep.blobs = g.blobs.len();
    rep.bytes = g.blobs.iter().map(|b| b.size).sum::<u64>()
        + g.manifests
            .iter()
            .map(|(_, b, _)| b.len() as u64)
            .sum::<u64>();
    let root_mt = g
        .manifests
        .last()
        .map(|(_, _, mt)| mt.clone())
        .unwrap_or_default();
    let cache_cfg = g
        .blobs
        .iter()
        .find(|b| b.media_type == media::BUILDKIT_CACHE_CONFIG);
    rep.kind = if cache_cfg.is_some() {
        "cache"
    } else if media::is_index_type(&root_mt) {
        "index"
    } else {
        "image"
    }
    .to_owned();
    for b in &g.blobs {
        match blob_state(place, &root.repo, &b.digest).await {
            Ok(()) => {}
            Err(Problem::Missing) => rep.missing.push(b.digest.to_string()),
            Err(Problem::Corrupt(None)) => rep.corrupt.push(b.digest.to_string()),
            Err(Problem::Corrupt(Some(why))) => rep.corrupt.push(format!("{}: {why}", b.digest)),
        }
    }
    if let Some(cfg) = cache_cfg {
        if let Ok((mut s, _)) = place.read_blob(&root.repo, &cfg.digest, 0).await {
            let mut bytes = Vec::new();
            while let Some(Ok(c)) = s.next().await {
                bytes.extend_from_slice(&c);
                if bytes.len() as u64 > media::MAX_MANIFEST_BYTES * 4 {
                    break;
                }
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                rep.cache_records = v["records"].as_array().map(Vec::len);
                rep.cache_layers = v["layers"].as_array().map(Vec::len);
            }
        }
    }
    rep
}

/// `ferry check --dockerfile`: for each image the build needs, is it on the location (under
/// the name a mirror holds it by, or as synced without its registry name) and intact?
pub async fn check_needs(
    loc: &Location,
    needs: &[crate::keep::dockerfile::Need],
    opts: &RemoteOptions,
) -> Result<Vec<(crate::keep::dockerfile::Need, RefReport)>> {
    let place = Place::open(loc, opts, false).await?;
    let host = match loc {
        Location::Registry { host, .. } => Some(host.as_str()),
        _ => None,
    };
    let mut out = Vec::new();
    for need in needs {
        let reference = match need.reference.parse::<Digest>() {
            Ok(d) => crate::vocab::reference::Reference::Digest(d),
            Err(_) => crate::vocab::reference::Reference::Tag(need.reference.clone()),
        };
        let mut names = Vec::new();
        if let Some(rest) = host.and_then(|h| need.repository.strip_prefix(&format!("{h}/"))) {
            names.push(rest.to_owned());
        }
        names.push(need.repository.clone());
        // As synced without its registry's name (`library/alpine`, or `app` of
        // `mirror:5000/app`).
        if let Some((first, rest)) = need.repository.split_once('/') {
            if crate::mirror::proxy::is_host(first) {
                names.push(rest.to_owned());
            }
        }
        names.dedup();
        let mut found = None;
        for n in &names {
            if crate::vocab::reference::RepoName::parse(n).is_err() {
                continue;
            }
            if place.manifest(n, &reference).await.is_ok() {
                found = Some(n.clone());
                break;
            }
        }
        let rep = match found {
            Some(n) => check_root(&place, &crate::carry::sync::Root::new(n, reference), &[]).await,
            None => RefReport {
                reference: need.reference_string(),
                error: Some(format!("not on {loc} (looked for {})", names.join(", "))),
                ..Default::default()
            },
        };
        out.push((need.clone(), rep));
    }
    Ok(out)
}
