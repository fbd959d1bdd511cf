//! Media types and the edges of the content graph.
//!
//! The one rule that matters most for BuildKit (DESIGN.md invariant 4): the children of an index or
//! manifest list are manifests **only when their media type is a manifest type**. BuildKit's legacy
//! cache export is an index whose `manifests[]` are layer blobs plus one
//! `application/vnd.buildkit.cacheconfig.v0` blob; treating those as manifests is exactly how other
//! registries and copy tools break caches. Image manifests have a `config` and `layers`, all blobs.
//! A `subject` is a weak edge: the spec allows it to dangle, so it is reported separately.
//!
//! ```
//! use ferry::media::{parse_manifest, EdgeKind, OCI_INDEX};
//!
//! // A BuildKit legacy cache index: its `manifests[]` are a layer and the cache config.
//! let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
//!   "manifests":[
//!     {"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":4323,
//!      "digest":"sha256:6b9b508719e00b1f764587f77d2f5ce412b6e9574434c763d38b78b2e174b2dc"},
//!     {"mediaType":"application/vnd.buildkit.cacheconfig.v0","size":1108,
//!      "digest":"sha256:312e079459047e103b8485e2c4b5238ff5423547adcb10dc2d9acbe79f7c975f"}]}"#;
//! let info = parse_manifest(index, Some(OCI_INDEX)).unwrap();
//! assert!(info.edges.iter().all(|e| e.kind == EdgeKind::Blob));
//! ```

use serde_json::Value;

use crate::error::Error;
use crate::vocab::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const BUILDKIT_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// The request header of a manifest PUT naming the children of an image index left out on
/// purpose (`ferry sync --platform` into a ferry registry): digests, comma-separated.
pub const FERRY_ABSENT_HEADER: &str = "Ferry-Absent";

/// Largest manifest accepted or read, as in Distribution and the spec's recommendation.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

pub fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

/// The four manifest media types ferry stores and serves as manifests.
pub fn is_manifest_type(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST || is_index_type(mt)
}

/// `Content-Type` values may carry parameters (`; charset=utf-8`); the media type is the part before.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    Blob,
    Manifest,
}

/// One child of a manifest: a descriptor, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub kind: EdgeKind,
}

/// What ferry needs to know about a manifest: its type, its children, and what the referrers API
/// reports about it.
#[derive(Clone, Debug)]
pub struct ManifestInfo {
    pub media_type: String,
    pub edges: Vec<Edge>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for image manifests without one, `config.mediaType` (referrers API rule).
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, Value>>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::ManifestInvalid(msg.into())
}

fn parse_descriptor(v: &Value, what: &str) -> Result<(Digest, u64, String), Error> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(format!("{what} is not a descriptor object")))?;
    let digest = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what} has no digest")))?
        .parse::<Digest>()
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    let size = obj
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid(format!("{what} has no valid size")))?;
    let media_type = obj
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what} has no mediaType")))?
        .to_owned();
    Ok((digest, size, media_type))
}

/// `--platform OS/ARCH[/VARIANT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: parts.get(2).map(|v| (*v).to_owned()),
            }),
            _ => Err(Error::Usage(format!(
                "--platform {s:?}: expected OS/ARCH[/VARIANT]"
            ))),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform of the machine running ferry (`linux/amd64` on x86-64).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether a descriptor's `platform` object is this platform (a variant left out matches any).
    pub fn matches(&self, p: &serde_json::Value) -> bool {
        p["os"] == self.os.as_str()
            && p["architecture"] == self.architecture.as_str()
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p["variant"] == v.as_str())
    }
}

/// The children of an image index to leave out when only `platforms` travel: the image
/// manifests of other platforms, and the attestation manifests BuildKit keys to them (by
/// `vnd.docker.reference.digest`). Children without a platform that are not such attestations
/// stay. An index none of whose children names a platform is not narrowed; one with no child
/// for any of `platforms` is an error naming them.
pub fn left_out(index: &[u8], platforms: &[Platform]) -> Result<Vec<Digest>, Error> {
    if platforms.is_empty() {
        return Ok(Vec::new());
    }
    let children: Vec<IndexChild> = index_children(index)?
        .into_iter()
        .filter(|c| is_manifest_type(&c.media_type))
        .collect();
    let images = || {
        children
            .iter()
            .filter(|c| c.platform.is_some() && c.attests.is_none())
    };
    if images().next().is_none() {
        return Ok(Vec::new());
    }
    let kept: Vec<&Digest> = images()
        .filter(|c| platforms.iter().any(|p| p.matches(&c.platform_json)))
        .map(|c| &c.digest)
        .collect();
    if kept.is_empty() {
        let names: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        return Err(Error::Usage(format!(
            "no manifest for platform {}",
            names.join(", ")
        )));
    }
    let mut out: Vec<Digest> = Vec::new();
    for c in &children {
        if kept.contains(&&c.digest) {
            continue;
        }
        let leave = match &c.attests {
            Some(of) => of.as_ref().is_none_or(|of| !kept.contains(&of)),
            None => c.platform.is_some(),
        };
        if leave && !out.contains(&c.digest) {
            out.push(c.digest.clone());
        }
    }
    Ok(out)
}

/// One child of an image index, as `--platform` and the reports about it see it.
pub struct IndexChild {
    pub digest: Digest,
    pub media_type: String,
    /// `os/arch[/variant]`, when the descriptor names a platform.
    pub platform: Option<String>,
    /// The descriptor's `platform` object as it is (`Null` when there is none).
    pub platform_json: Value,
    /// For an attestation manifest (BuildKit's `vnd.docker.reference.type`): the manifest it
    /// attests (`vnd.docker.reference.digest`), if it names one.
    pub attests: Option<Option<Digest>>,
}

/// The children of an image index with a valid digest.
pub fn index_children(index: &[u8]) -> Result<Vec<IndexChild>, Error> {
    let v: Value = serde_json::from_slice(index).map_err(|e| invalid(e.to_string()))?;
    let list = v["manifests"].as_array().cloned().unwrap_or_default();
    Ok(list
        .into_iter()
        .filter_map(|d| {
            let digest = d["digest"].as_str()?.parse().ok()?;
            let ann = &d["annotations"];
            let attests = (ann["vnd.docker.reference.type"] == "attestation-manifest").then(|| {
                ann["vnd.docker.reference.digest"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
            });
            let platform = d["platform"].as_object().and_then(|p| {
                let mut name = format!(
                    "{}/{}",
                    p.get("os")?.as_str()?,
                    p.get("architecture")?.as_str()?
                );
                if let Some(v) = p.get("variant").and_then(Value::as_str) {
                    name.push('/');
                    name.push_str(v);
                }
                Some(name)
            });
            Some(IndexChild {
                digest,
                media_type: d["mediaType"].as_str().unwrap_or("").to_owned(),
                platform,
                platform_json: d["platform"].clone(),
                attests,
            })
        })
        .collect())
}

/// The children of an index that belong to one platform (they name a platform, or are
/// attestation manifests): those a registry may lack on purpose.
pub fn platform_children(index: &[u8]) -> Vec<Digest> {
    index_children(index)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.platform.is_some() || c.attests.is_some())
        .map(|c| c.digest)
        .collect()
}

/// An index's platforms, each with its manifest's digest (`os/arch[/variant]`; attestation
/// manifests are not platforms).
pub fn index_platforms(index: &[u8]) -> Vec<(Digest, String)> {
    index_children(index)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.attests.is_none())
        .filter_map(|c| Some((c.digest, c.platform?)))
        .collect()
}

/// A manifest that refers to another (its `subject`), as the referrers API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// `artifactType` (for an image manifest without one, its config's media type).
    pub artifact_type: String,
}

/// What a referrer is, by its artifact type (or a cosign tag's suffix): what `--referrers`
/// selects and the summary counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReferrerKind {
    Signature,
    Sbom,
    Provenance,
    Attestation,
    Other,
}

impl ReferrerKind {
    pub const ALL: [ReferrerKind; 5] = [
        ReferrerKind::Signature,
        ReferrerKind::Sbom,
        ReferrerKind::Provenance,
        ReferrerKind::Attestation,
        ReferrerKind::Other,
    ];

    /// The kind of an artifact type: cosign and notation signatures, SPDX and CycloneDX SBOMs,
    /// SLSA provenance, other in-toto attestations.
    pub fn of(artifact_type: &str) -> ReferrerKind {
        let a = artifact_type.to_ascii_lowercase();
        let has = |w: &[&str]| w.iter().any(|w| a.contains(w));
        if has(&[
            "signature",
            "cosign.artifact.sig",
            "simplesigning",
            "sigstore.bundle",
        ]) {
            ReferrerKind::Signature
        } else if has(&["spdx", "cyclonedx", "sbom", "syft"]) {
            ReferrerKind::Sbom
        } else if has(&["provenance", "slsa"]) {
            ReferrerKind::Provenance
        } else if has(&[
            "in-toto",
            "intoto",
            "attestation",
            "dsse",
            "cosign.artifact.att",
        ]) {
            ReferrerKind::Attestation
        } else {
            ReferrerKind::Other
        }
    }

    /// The word `--referrers` takes for it, and the summary's.
    pub fn name(self) -> &'static str {
        match self {
            ReferrerKind::Signature => "signature",
            ReferrerKind::Sbom => "sbom",
            ReferrerKind::Provenance => "provenance",
            ReferrerKind::Attestation => "attestation",
            ReferrerKind::Other => "other",
        }
    }

    /// For people: "4 signatures", "2 SBOMs", "1 provenance".
    pub fn count(self, n: usize) -> String {
        let s = if n == 1 { "" } else { "s" };
        match self {
            ReferrerKind::Signature => format!("{n} signature{s}"),
            ReferrerKind::Sbom => format!("{n} SBOM{s}"),
            ReferrerKind::Provenance => format!("{n} provenance"),
            ReferrerKind::Attestation => format!("{n} attestation{s}"),
            ReferrerKind::Other => format!("{n} other"),
        }
    }
}

/// The descriptors of a referrers list (the referrers API's body, or a referrers tag schema
/// index): each one a manifest with its artifact type. Descriptors that are not manifests are
/// not referrers and are skipped.
pub fn parse_referrers(bytes: &[u8]) -> Result<Vec<Referrer>, Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let list = v
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("a referrers list without manifests[]"))?;
    let mut out = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let (digest, size, media_type) = parse_descriptor(d, &format!("manifests[{i}]"))?;
        if !is_manifest_type(&media_type) {
            continue;
        }
        let artifact_type = d
            .get("artifactType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        out.push(Referrer {
            digest,
            size,
            media_type,
            artifact_type,
        });
    }
    Ok(out)
}

/// The referrers tag schema's tag for a subject: `sha256-<hex>` (distribution-spec v1.1, for
/// registries without the referrers API).
pub fn referrers_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm().as_str(), subject.hex())
}

/// Guess a stored manifest's media type from its bytes, for manifests that came without one (a
/// layout written by another tool, where only the root is described in `index.json`).
pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let obj = v.as_object()?;
    if let Some(mt) = obj.get("mediaType").and_then(Value::as_str) {
        return is_manifest_type(mt).then(|| mt.to_owned());
    }
    if obj.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return None;
    }
    if obj.get("manifests").is_some() {
        Some(OCI_INDEX.to_owned())
    } else if obj.get("config").is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

/// Parse a manifest and classify its children. `declared` is the media type the client sent
/// (`Content-Type`) or that the store recorded; it wins over the JSON `mediaType`, which must agree
/// with it when both are present.
pub fn parse_manifest(bytes: &[u8], declared: Option<&str>) -> Result<ManifestInfo, Error> {
    let declared = declared.map(essence).filter(|s| !s.is_empty());
    if let Some(d) = declared {
        if d == DOCKER_SCHEMA1 || d == DOCKER_SCHEMA1_SIGNED {
            return Err(invalid(
                "Docker schema1 manifests are not supported (deprecated since 2017); push with a current client",
            ));
        }
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("manifest is not a JSON object"))?;
    match obj.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            return Err(invalid(
                "Docker schema1 manifests are not supported (deprecated since 2017); push with a current client",
            ))
        }
        _ => return Err(invalid("schemaVersion must be 2")),
    }
    let json_mt = match obj.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(invalid("mediaType must be a string")),
    };
    let media_type = match (declared, json_mt) {
        (Some(d), Some(j)) if d != j => {
            return Err(invalid(format!(
                "Content-Type {d} does not match the manifest's mediaType {j}"
            )))
        }
        (Some(d), _) => d.to_owned(),
        (None, Some(j)) => j.to_owned(),
        (None, None) => sniff_media_type(bytes)
            .ok_or_else(|| invalid("cannot tell the manifest's media type"))?,
    };
    if !is_manifest_type(&media_type) {
        return Err(invalid(format!(
            "unsupported manifest media type {media_type}"
        )));
    }

    let mut edges = Vec::new();
    let mut config_media_type = None;
    if is_index_type(&media_type) {
        let list = obj
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("index has no manifests array"))?;
        for (i, d) in list.iter().enumerate() {
            let (digest, size, mt) = parse_descriptor(d, &format!("manifests[{i}]"))?;
            let kind = if is_manifest_type(&mt) {
                EdgeKind::Manifest
            } else {
                EdgeKind::Blob
            };
            edges.push(Edge {
                digest,
                size,
                media_type: mt,
                kind,
            });
        }
    } else {
        let config = obj
            .get("config")
            .ok_or_else(|| invalid("image manifest has no config"))?;
        let (digest, size, mt) = parse_descriptor(config, "config")?;
        config_media_type = Some(mt.clone());
        edges.push(Edge {
            digest,
            size,
            media_type: mt,
            kind: EdgeKind::Blob,
        });
        match obj.get("layers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(layers)) => {
                for (i, l) in layers.iter().enumerate() {
                    let (digest, size, mt) = parse_descriptor(l, &format!("layers[{i}]"))?;
                    edges.push(Edge {
                        digest,
                        size,
                        media_type: mt,
                        kind: EdgeKind::Blob,
                    });
                }
            }
            Some(_) => return Err(invalid("layers must be an array")),
        }
    }
    let subject = match obj.get("subject") {
        None | Some(Value::Null) => None,
        Some(s) => Some(parse_descriptor(s, "subject")?.0),
    };
    let artifact_type = obj
        .get("artifactType")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(config_media_type);
    let annotations = obj.get("annotations").and_then(Value::as_object).cloned();
    Ok(ManifestInfo {
        media_type,
        edges,
        subject,
        artifact_type,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:6b9b508719e00b1f764587f77d2f5ce412b6e9574434c763d38b78b2e174b2dc";
    const D2: &str = "sha256:312e079459047e103b8485e2c4b5238ff5423547adcb10dc2d9acbe79f7c975f";

    #[test]
    fn legacy_cache_index_children_are_blobs() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D1}","size":4323}},
              {{"mediaType":"{BUILDKIT_CACHE_CONFIG}","digest":"{D2}","size":1108}}]}}"#
        );
        let info = parse_manifest(idx.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(info.edges.len(), 2);
        assert!(info.edges.iter().all(|e| e.kind == EdgeKind::Blob));
    }

    #[test]
    fn index_children_of_manifest_type_are_manifests() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}}]}}"#
        );
        let info = parse_manifest(idx.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(info.edges[0].kind, EdgeKind::Manifest);
    }

    #[test]
    fn image_manifest_with_cacheconfig_config() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{BUILDKIT_CACHE_CONFIG}","digest":"{D2}","size":1108}},"layers":[{{"mediaType":"x","digest":"{D1}","size":4323}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":3}}}}"#
        );
        let info = parse_manifest(m.as_bytes(), None).unwrap();
        assert_eq!(info.media_type, OCI_MANIFEST);
        assert_eq!(info.edges.len(), 2);
        assert_eq!(info.artifact_type.as_deref(), Some(BUILDKIT_CACHE_CONFIG));
        assert_eq!(info.subject.unwrap().to_string(), D1);
    }

    #[test]
    fn rejects() {
        let cases: &[(&str, Option<&str>)] = &[
            ("[]", None),
            ("{", None),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            ("{}", Some(DOCKER_SCHEMA1_SIGNED)),
            (r#"{"schemaVersion":2,"mediaType":"a/b","config":{}}"#, None),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1}}"#,
                Some(OCI_MANIFEST),
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                Some(OCI_MANIFEST),
            ),
        ];
        for (body, ct) in cases {
            assert!(
                matches!(
                    parse_manifest(body.as_bytes(), *ct),
                    Err(Error::ManifestInvalid(_))
                ),
                "{body} accepted"
            );
        }
    }
}
