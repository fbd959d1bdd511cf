//! Referrers — signatures, SBOMs, attestations — travel with the manifests they refer to.
//!
//! For every manifest a sync carries (a root, an index's children), the source is asked for its
//! referrers (a registry's referrers API, else its referrers tag schema; a store's or an
//! archive's own records) and for cosign's tags beside it (`sha256-<hex>.sig`, `.att`, `.sbom`);
//! each one found is carried as a root of its own after its subject, and asked for its own
//! referrers in turn (a signature of an SBOM). A registry destination without the referrers API
//! gets the referrers tag schema index maintained as the distribution-spec describes, so clients
//! that read it find them.

use std::collections::VecDeque;

use super::*;
use crate::carry::remote::Registry;
use crate::vocab::media::ReferrerKind;

/// `--referrers all|none|TYPE[,TYPE…]`: which referrers travel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReferrerFilter {
    #[default]
    All,
    None,
    /// These kinds (`signature`, `sbom`, …) and these exact artifact types.
    Only {
        kinds: Vec<ReferrerKind>,
        types: Vec<String>,
    },
}

impl std::str::FromStr for ReferrerFilter {
    type Err = Error;

    fn from_str(s: &str) -> Result<ReferrerFilter> {
        match s.trim() {
            "all" => return Ok(ReferrerFilter::All),
            "none" => return Ok(ReferrerFilter::None),
            _ => {}
        }
        let (mut kinds, mut types) = (Vec::new(), Vec::new());
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if w.contains('/') {
                types.push(w.to_owned());
                continue;
            }
            let singular = w.strip_suffix('s').unwrap_or(w);
            match ReferrerKind::ALL.iter().find(|k| k.name() == singular) {
                Some(k) => kinds.push(*k),
                None => {
                    let known: Vec<&str> = ReferrerKind::ALL.iter().map(|k| k.name()).collect();
                    return Err(Error::Usage(format!(
                        "--referrers {w:?}: expected all, none, or a comma-separated list of {} \
                         or artifact types (such as application/vnd.dev.cosign.artifact.sig.v1+json)",
                        known.join(", ")
                    )));
                }
            }
        }
        if kinds.is_empty() && types.is_empty() {
            return Err(Error::Usage(
                "--referrers: expected all, none, or a list of kinds or artifact types".into(),
            ));
        }
        Ok(ReferrerFilter::Only { kinds, types })
    }
}

impl ReferrerFilter {
    fn wants(&self, artifact_type: &str, kind: ReferrerKind) -> bool {
        match self {
            ReferrerFilter::All => true,
            ReferrerFilter::None => false,
            ReferrerFilter::Only { kinds, types } => {
                kinds.contains(&kind) || types.iter().any(|t| t == artifact_type)
            }
        }
    }
}

/// Cosign's tag conventions beside an image, and what each holds.
const COSIGN_TAGS: [(&str, ReferrerKind); 3] = [
    ("sig", ReferrerKind::Signature),
    ("att", ReferrerKind::Attestation),
    ("sbom", ReferrerKind::Sbom),
];

/// A referrer a sync carried, in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct CarriedReferrer {
    /// `REPO@DIGEST`, or `REPO:TAG` for a cosign tag.
    pub referrer: String,
    pub subject: Digest,
    pub kind: &'static str,
    pub artifact_type: String,
}

/// Add to `graphs` every referrer of every manifest they hold (recursively), each as a root of
/// its own after its subject's. A referrer that cannot be read fails alone, named.
pub(super) async fn extend(
    src: &Place,
    graphs: &mut Vec<(Root, Graph)>,
    filter: &ReferrerFilter,
    progress: &dyn Progress,
    summary: &mut Summary,
) -> Result<()> {
    if *filter == ReferrerFilter::None {
        return Ok(());
    }
    let mut roots: HashSet<(String, Reference)> = graphs
        .iter()
        .map(|(r, _)| (r.repo.clone(), r.reference.clone()))
        .collect();
    let mut queue: VecDeque<(usize, Digest)> = VecDeque::new();
    for (i, (_, g)) in graphs.iter().enumerate() {
        queue.extend(g.manifests.iter().map(|(d, _, _)| (i, d.clone())));
    }
    let mut asked: HashSet<(String, Digest)> = HashSet::new();
    let mut counted: HashSet<(String, Reference)> = HashSet::new();
    let mut tags_of: HashMap<String, HashSet<String>> = HashMap::new();
    while let Some((i, subject)) = queue.pop_front() {
        let parent = graphs[i].0.clone();
        if !asked.insert((parent.repo.clone(), subject.clone())) {
            continue;
        }
        let mut found: Vec<(Reference, ReferrerKind, String)> = Vec::new();
        let listed = match src.referrers(&parent.repo, &subject).await {
            Ok(l) => l,
            Err(e) => {
                // Named, and the sync fails (exit 1): a trip that silently leaves signatures
                // behind is refused only later, inside the enclave.
                summary.failed.push(format!(
                    "{}@{subject}: its referrers could not be listed: {e}",
                    parent.repo
                ));
                Vec::new()
            }
        };
        for r in listed {
            let kind = ReferrerKind::of(&r.artifact_type);
            if filter.wants(&r.artifact_type, kind) {
                found.push((Reference::Digest(r.digest), kind, r.artifact_type));
            }
        }
        if !tags_of.contains_key(&parent.repo) {
            // One listing per repository, whatever the number of manifests.
            let tags = match src.tags(&parent.repo).await {
                Ok(t) => t.into_iter().collect(),
                Err(e) => {
                    progress.message(&format!(
                        "{}: its tags could not be listed, so cosign's signature tags are not looked for: {e}",
                        parent.repo
                    ));
                    HashSet::new()
                }
            };
            tags_of.insert(parent.repo.clone(), tags);
        }
        let tags = &tags_of[&parent.repo];
        for (suffix, kind) in COSIGN_TAGS {
            let tag = format!("{}.{suffix}", media::referrers_tag(&subject));
            if tags.contains(&tag) && filter.wants("", kind) {
                found.push((Reference::Tag(tag), kind, format!("cosign .{suffix} tag")));
            }
        }
        for (reference, kind, artifact_type) in found {
            let root = Root {
                repo: parent.repo.clone(),
                reference,
                dest_repo: parent.dest_repo.clone(),
            };
            let key = (root.repo.clone(), root.reference.clone());
            if counted.insert(key.clone()) {
                summary.referrers.push(CarriedReferrer {
                    referrer: root.to_string(),
                    subject: subject.clone(),
                    kind: kind.name(),
                    artifact_type,
                });
            }
            if !roots.insert(key) {
                // Already carried (a cosign tag of a whole repository is one of its tags).
                continue;
            }
            match walk(src, &root.repo, &root.reference).await {
                Ok(g) => {
                    let at = graphs.len();
                    queue.extend(g.manifests.iter().map(|(d, _, _)| (at, d.clone())));
                    graphs.push((root, g));
                    summary.roots += 1;
                }
                Err(e) => summary.failed.push(format!(
                    "{root} (a {} of {}@{subject}): {e}",
                    kind.name(),
                    parent.repo
                )),
            }
        }
    }
    Ok(())
}

/// For people: "7 referrers: 4 signatures, 2 SBOMs, 1 provenance".
pub(super) fn describe(carried: &[CarriedReferrer]) -> String {
    let mut by: std::collections::BTreeMap<ReferrerKind, usize> = Default::default();
    for c in carried {
        if let Some(k) = ReferrerKind::ALL.iter().find(|k| k.name() == c.kind) {
            *by.entry(*k).or_default() += 1;
        }
    }
    let parts: Vec<String> = by.into_iter().map(|(k, n)| k.count(n)).collect();
    format!(
        "{} referrer{}: {}",
        carried.len(),
        if carried.len() == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// After a referrer was pushed to a registry: when that registry has no referrers API, list it
/// in the referrers tag schema index (`<alg>-<hex>` in the same repository), as the
/// distribution-spec tells clients to: read the index (none: an empty one), add the descriptor
/// unless it is there, push the index under the tag.
pub(super) async fn list_at_registry(
    r: &Registry,
    repo: &str,
    digest: &Digest,
    bytes: &Bytes,
    mt: &str,
) -> Result<()> {
    let info = media::parse_manifest(bytes, Some(mt))?;
    let Some(subject) = info.subject else {
        return Ok(());
    };
    if r.referrers_api(repo, &subject).await?.is_some() {
        return Ok(());
    }
    let tag = Reference::Tag(media::referrers_tag(&subject));
    let mut list: Vec<serde_json::Value> = match r.manifest_lookup(repo, &tag).await? {
        Some((b, imt, _)) if media::is_index_type(&imt) => {
            let v: serde_json::Value =
                serde_json::from_slice(&b).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
            v["manifests"].as_array().cloned().unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let want = digest.to_string();
    if list.iter().any(|d| d["digest"] == want.as_str()) {
        return Ok(());
    }
    let mut desc = serde_json::json!({
        "mediaType": mt,
        "digest": want,
        "size": bytes.len(),
    });
    if let Some(a) = info.artifact_type {
        desc["artifactType"] = a.into();
    }
    if let Some(a) = info.annotations {
        desc["annotations"] = a.into();
    }
    list.push(desc);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": list,
    });
    let body = serde_json::to_vec(&index).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    r.put_manifest(repo, &tag, Bytes::from(body), media::OCI_INDEX)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_takes_kinds_and_types_and_names_the_known_form() {
        assert_eq!(
            "all".parse::<ReferrerFilter>().unwrap(),
            ReferrerFilter::All
        );
        assert_eq!(
            "none".parse::<ReferrerFilter>().unwrap(),
            ReferrerFilter::None
        );
        let f: ReferrerFilter = "signatures, sbom,application/x.y+json".parse().unwrap();
        assert!(f.wants(
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            ReferrerKind::Signature
        ));
        assert!(f.wants("application/spdx+json", ReferrerKind::Sbom));
        assert!(f.wants("application/x.y+json", ReferrerKind::Other));
        assert!(!f.wants("application/vnd.in-toto+json", ReferrerKind::Attestation));
        let e = "signature,blessings".parse::<ReferrerFilter>().unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("\"blessings\"") && e.contains("signature, sbom"),
            "{e}"
        );
    }

    #[test]
    fn kinds_of_common_artifact_types() {
        for (t, k) in [
            (
                "application/vnd.dev.cosign.artifact.sig.v1+json",
                ReferrerKind::Signature,
            ),
            (
                "application/vnd.cncf.notary.signature",
                ReferrerKind::Signature,
            ),
            ("application/spdx+json", ReferrerKind::Sbom),
            ("application/vnd.cyclonedx+json", ReferrerKind::Sbom),
            ("application/vnd.in-toto+json", ReferrerKind::Attestation),
            ("https://slsa.dev/provenance/v0.2", ReferrerKind::Provenance),
            ("application/vnd.example.thing", ReferrerKind::Other),
        ] {
            assert_eq!(ReferrerKind::of(t), k, "{t}");
        }
    }
}
