//! Writing an archive (`oci-archive:`, `docker-archive:`, split into volumes): room checked
//! first, members streamed in the order the format wants.

use super::*;

/// An archive is written whole: never over a finished one.
pub(super) fn archive_out_free(dst: &Location, split: Option<u64>) -> Result<()> {
    let (Location::OciArchive { path } | Location::DockerArchive { path }) = dst else {
        return Ok(());
    };
    let done = match split {
        Some(_) => archive::index_name(path),
        None => path.clone(),
    };
    if done.exists() {
        return Err(Error::Usage(format!(
            "{} exists: ferry does not overwrite a finished archive; remove it or name another",
            done.display()
        )));
    }
    Ok(())
}

/// Write the graphs read from `src` as one archive (`oci-archive:` or `docker-archive:`).
pub(super) async fn write_archive(
    src: &Place,
    dst_loc: &Location,
    graphs: Vec<(Root, Graph)>,
    planned: &patches::Planned,
    opts: &SyncOptions,
    progress: &dyn Progress,
    summary: &mut Summary,
) -> Result<()> {
    let (Location::OciArchive { path } | Location::DockerArchive { path }) = dst_loc else {
        return Err(Error::Usage(format!("{dst_loc} is not an archive")));
    };
    let docker = matches!(dst_loc, Location::DockerArchive { .. });
    let mut index = IndexFile::default();
    let mut docker_images: Vec<serde_json::Value> = Vec::new();
    let mut manifests: Vec<(Digest, Bytes)> = Vec::new();
    let mut blobs: Vec<BlobRef> = Vec::new();
    let mut seen = HashSet::new();
    let mut repo_of: HashMap<Digest, String> = HashMap::new();
    for (root, g) in &graphs {
        let to = dest_root(root, dst_loc);
        let Some((top, top_bytes, top_mt)) = g.manifests.last() else {
            continue;
        };
        let info = media::parse_manifest(top_bytes, Some(top_mt))?;
        index.put(&NewEntry {
            repo: to.repo.clone(),
            tag: match &to.reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            },
            digest: top.clone(),
            media_type: top_mt.clone(),
            size: top_bytes.len() as u64,
            // A referrer keeps its subject, so a sync out of the archive finds it.
            artifact_type: info.subject.as_ref().and(info.artifact_type.clone()),
            subject: info.subject.clone(),
            tagged_at: 0,
            absent: g.absent_of(top),
        });
        if docker {
            docker_images.push(docker_entry(root, &to, top_bytes, top_mt)?);
        }
        for (d, b, _) in &g.manifests {
            if seen.insert(d.clone()) {
                manifests.push((d.clone(), b.clone()));
            }
        }
        for b in &g.blobs {
            repo_of
                .entry(b.digest.clone())
                .or_insert_with(|| root.repo.clone());
            if opts.have.as_ref().is_some_and(|h| h.contains(&b.digest)) {
                summary.blobs_in_have += 1;
                continue;
            }
            if src.source_blob_size(&b.digest).await? == Some(None) {
                return Err(Error::MissingBlobs(vec![b.digest.clone()]));
            }
            if !seen.insert(b.digest.clone()) {
                continue;
            }
            // A patched layer: its patch instead (a blob like any other), listed below.
            match planned.made.get(&b.digest) {
                Some(m) => {
                    if seen.insert(m.entry.patch.clone()) {
                        blobs.push(BlobRef {
                            digest: m.entry.patch.clone(),
                            size: m.entry.patch_size,
                            media_type: crate::carry::patch::MEDIA_TYPE.into(),
                        });
                    }
                }
                None => blobs.push(b.clone()),
            }
        }
    }
    // The same trip must give the same bytes (a rerun resumes by volume): no publication time.
    for d in &mut index.manifests {
        if let Some(a) = d.annotations.as_mut() {
            a.remove(crate::layout::index::FERRY_TAGGED);
        }
    }
    let mut plan = Plan::default();
    plan.push(Member::dir("blobs/"));
    let mut algs: Vec<&str> = manifests
        .iter()
        .map(|(d, _)| d.algorithm().as_str())
        .chain(blobs.iter().map(|b| b.digest.algorithm().as_str()))
        .collect();
    algs.sort();
    algs.dedup();
    for a in algs {
        plan.push(Member::dir(&format!("blobs/{a}/")));
    }
    plan.push(Member::inline(
        "oci-layout",
        Bytes::from_static(OCI_LAYOUT_FILE),
    ));
    plan.push(Member::inline("index.json", index.to_bytes()));
    if docker {
        let bytes = serde_json::to_vec(&docker_images).map_err(|e| Error::Usage(e.to_string()))?;
        plan.push(Member::inline("manifest.json", bytes));
    }
    if !planned.made.is_empty() {
        let mut list = patches::List {
            format: String::new(),
            patches: planned.made.values().map(|m| m.entry.clone()).collect(),
        };
        list.patches.sort_by(|a, b| a.target.cmp(&b.target));
        plan.push(Member::inline(patches::LIST, list.to_bytes()));
    }
    for (d, b) in &manifests {
        plan.push(Member {
            path: archive::blob_path(d),
            size: b.len() as u64,
            source: archive::Source::Inline(b.clone()),
        });
    }
    for b in &blobs {
        plan.push(Member::blob(&b.digest, b.size));
    }
    if let Some(signer) = &opts.sign {
        let tags = index
            .manifests
            .iter()
            .filter_map(|d| match d.repo_and_tag() {
                (Some(r), Some(t)) => Some((format!("{r}:{t}"), d.digest.to_string())),
                _ => None,
            })
            .collect();
        let digests = manifests
            .iter()
            .map(|(d, _)| d.to_string())
            .chain(blobs.iter().map(|b| b.digest.to_string()))
            .collect();
        let patches = planned
            .made
            .values()
            .map(|m| (m.entry.target.to_string(), m.entry.patch.to_string()))
            .collect();
        let (st, sig) = signer.sign(tags, digests, patches)?;
        plan.push(Member {
            path: crate::carry::trip::STATEMENT.into(),
            size: st.len() as u64,
            source: archive::Source::Fresh(st.into()),
        });
        plan.push(Member {
            path: crate::carry::trip::SIGNATURE.into(),
            size: sig.len() as u64,
            source: archive::Source::Fresh(sig.into()),
        });
    }
    summary.manifests_written = manifests.len();
    summary.tags_published = graphs
        .iter()
        .filter(|(r, _)| matches!(dest_root(r, dst_loc).reference, Reference::Tag(_)))
        .count();
    summary.blobs_copied = blobs.len();
    summary.bytes_copied = blobs.iter().map(|b| b.size).sum();
    if opts.dry_run {
        progress.message(&format!(
            "would write {dst_loc}: {} bytes, {} blob(s), {} manifest(s)",
            plan.total(),
            blobs.len(),
            manifests.len()
        ));
        return Ok(());
    }
    progress.message(&format!(
        "writing {dst_loc}: {} bytes, {} blob(s), {} manifest(s)",
        plan.total(),
        blobs.len(),
        manifests.len()
    ));
    let counter = AtomicU64::new(0);
    let repo_of = &repo_of;
    let written = archive::write(
        &plan,
        path,
        opts.split,
        |d: Digest| async move {
            if let Some(s) = planned.stream(&d, 0) {
                return s;
            }
            let repo = repo_of.get(&d).map(String::as_str).unwrap_or("");
            let (s, _) = src.read_blob(repo, &d, 0).await?;
            Ok(s)
        },
        &counter,
    )
    .await?;
    summary.bytes_transferred = counter.load(Ordering::Relaxed);
    summary.bytes_resumed = written.resumed_bytes;
    summary.archive = Some(written);
    Ok(())
}

/// One image's entry in `docker save`'s `manifest.json`: its config, layers and tag, as paths
/// inside the archive (the OCI layout's own blob paths, as Docker 25 writes them too).
fn docker_entry(root: &Root, to: &Root, bytes: &[u8], mt: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    let config_mt = v["config"]["mediaType"].as_str().unwrap_or("");
    if media::is_index_type(mt) || !v["layers"].is_array() {
        return Err(Error::Usage(format!(
            "{root}: docker-archive holds images only, and this is {} (docker load cannot take it; use oci-archive:)",
            if media::is_index_type(mt) { "an index (a BuildKit cache, or no manifest for the platform)" } else { "not an image manifest" }
        )));
    }
    if config_mt == media::BUILDKIT_CACHE_CONFIG {
        return Err(Error::Usage(format!(
            "{root}: docker-archive holds images only, and this is a BuildKit cache (docker load cannot take it; use oci-archive:)"
        )));
    }
    let path_of = |d: &serde_json::Value| -> Result<String> {
        let d: Digest = d.as_str().unwrap_or("").parse().map_err(
            |e: crate::vocab::digest::DigestParseError| Error::ManifestInvalid(e.to_string()),
        )?;
        Ok(archive::blob_path(&d))
    };
    let layers = v["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| path_of(&l["digest"]))
        .collect::<Result<Vec<_>>>()?;
    let tags: Vec<String> = match &to.reference {
        Reference::Tag(t) => vec![format!("{}:{t}", to.repo)],
        Reference::Digest(_) => vec![],
    };
    Ok(serde_json::json!({
        "Config": path_of(&v["config"]["digest"])?,
        "RepoTags": tags,
        "Layers": layers,
    }))
}
