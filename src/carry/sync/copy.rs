//! Copying one root's graph: blobs the destination lacks (verified, resumable, in parallel),
//! then child manifests, then the root, then its tag.

use super::*;

/// How a root's layers travel besides whole: the patches this sync made (a delta out), the
/// patches its source carries (a delta in), and the list of patches written so far.
pub(super) struct Carry<'a> {
    pub(super) planned: &'a patches::Planned,
    pub(super) src_patches: &'a HashMap<Digest, patches::Entry>,
    pub(super) carried: &'a mut Vec<patches::Entry>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_root(
    src: &Place,
    dst: Option<&Place>,
    root: &Root,
    to: &Root,
    g: Graph,
    opts: &SyncOptions,
    how: Carry<'_>,
    progress: &dyn Progress,
    summary: &mut Summary,
    dest_repos_of: &mut HashMap<Digest, String>,
) -> Result<()> {
    let delta = opts.have.is_some();
    // 1. Blobs the destination lacks, in parallel.
    let mut todo = Vec::new();
    let mut rebuilds: Vec<patches::Entry> = Vec::new();
    let mut patch_out: Vec<patches::Entry> = Vec::new();
    for b in g.blobs {
        if opts.have.as_ref().is_some_and(|h| h.contains(&b.digest)) {
            summary.blobs_in_have += 1;
            continue;
        }
        let present = match dst {
            Some(d) => d.has_blob(&to.repo, &b).await?,
            None => false,
        };
        if present {
            summary.blobs_skipped += 1;
            summary.bytes_skipped += b.size;
            dest_repos_of.insert(b.digest.clone(), to.repo.clone());
            continue;
        }
        // Source is a delta: the destination already has it, or rebuilds it from a patch.
        if src.source_blob_size(&b.digest).await? == Some(None) {
            match how.src_patches.get(&b.digest) {
                // (A list naming another size than the manifest is no patch for this layer.)
                Some(e) if dst.is_some() && e.target_size == b.size => rebuilds.push(e.clone()),
                _ => summary.blobs_skipped += 1,
            }
            continue;
        }
        if let Some(m) = how.planned.made.get(&b.digest) {
            patch_out.push(m.entry.clone());
            continue;
        }
        todo.push(b);
    }
    let dst = match dst {
        Some(d) if !opts.dry_run => d,
        // A dry run (or one whose destination does not exist yet) reports and stops here.
        _ => {
            for b in &todo {
                progress.message(&format!("would copy {} ({} bytes)", b.digest, b.size));
                summary.blobs_copied += 1;
                summary.bytes_copied += b.size;
            }
            for e in &rebuilds {
                progress.message(&format!(
                    "would rebuild {} ({} bytes) from {} and its patch ({} bytes)",
                    e.target, e.target_size, e.base, e.patch_size
                ));
            }
            return Ok(());
        }
    };
    // Mount what another repository of the destination registry already holds.
    let mut to_copy = Vec::new();
    for b in todo {
        if let (Place::Remote(r), Some(from)) = (dst, dest_repos_of.get(&b.digest)) {
            if from != &to.repo && r.mount(&to.repo, from, &b.digest).await {
                summary.blobs_mounted += 1;
                progress.finish_blob(&b.digest, b.size, "mounted");
                continue;
            }
        }
        to_copy.push(b);
    }
    let results: Vec<Result<(BlobRef, u64, u64)>> = futures_util::stream::iter(to_copy)
        .map(|b| async move {
            let counter = progress.start_blob(&b.digest, b.size);
            let r = copy_blob(src, dst, &root.repo, &to.repo, &b, counter).await;
            match &r {
                Ok(_) => progress.finish_blob(&b.digest, b.size, "copied"),
                Err(e) => progress.finish_blob(&b.digest, b.size, &format!("failed: {e}")),
            }
            r.map(|(t, res)| (b, t, res))
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    let mut first_err = None;
    for r in results {
        match r {
            Ok((b, transferred, resumed)) => {
                summary.blobs_copied += 1;
                summary.bytes_copied += b.size;
                summary.bytes_transferred += transferred;
                summary.bytes_resumed += resumed;
                dest_repos_of.insert(b.digest, to.repo.clone());
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    // Patches instead of their layers (a delta out): the patch blob, listed at the end.
    for e in patch_out {
        let Place::Store(store) = dst else {
            return Err(Error::Usage(
                "patches are carried in a directory trip".into(),
            ));
        };
        let planned = how.planned;
        let patch = e.patch.clone();
        let imported = store
            .import_blob(&e.patch, e.patch_size, |offset| async move {
                match planned.stream(&patch, offset) {
                    Some(s) => Ok((s?, true)),
                    None => Err(Error::BlobUnknown(patch.clone())),
                }
            })
            .await;
        match imported {
            Ok(i) => {
                summary.bytes_transferred += i.transferred;
                progress.finish_blob(&e.target, e.target_size, "patched");
                how.carried.push(e);
            }
            Err(err) => {
                first_err.get_or_insert(err);
            }
        }
    }
    // Layers rebuilt at the destination from a delta's patches, each verified first.
    for e in rebuilds {
        let counter = progress.start_blob(&e.target, e.target_size);
        match patches::rebuild(src, dst, &root.repo, &to.repo, &e).await {
            Ok(n) => {
                counter.fetch_add(e.target_size, Ordering::Relaxed);
                progress.finish_blob(&e.target, e.target_size, "rebuilt from its patch");
                summary.rebuilt += 1;
                summary.rebuilt_bytes += e.target_size;
                summary.rebuilt_from_bytes += n;
                dest_repos_of.insert(e.target.clone(), to.repo.clone());
            }
            Err(err) => {
                progress.finish_blob(&e.target, e.target_size, &format!("failed: {err}"));
                first_err.get_or_insert(err);
            }
        }
    }
    if let Some(e) = first_err {
        // No manifest and no tag for a graph whose blobs did not all arrive.
        return Err(e);
    }
    // 2. Manifests, children first; 3. the root under its tag (or digest) last.
    let n = g.manifests.len();
    let absent = g.absent;
    let mut listed = Vec::new();
    for (i, (d, bytes, mt)) in g.manifests.into_iter().enumerate() {
        let is_root = i + 1 == n;
        let reference = if is_root {
            to.reference.clone()
        } else {
            Reference::Digest(d.clone())
        };
        if dst.has_manifest(&to.repo, &reference, &d).await? {
            // (A referrer pushed by an interrupted run may not be listed yet.)
            listed.push((d, bytes, mt));
            continue;
        }
        if is_root {
            if let Reference::Tag(_) = reference {
                // Also by digest first: the tag is the very last write.
                dst.put_manifest(
                    &to.repo,
                    &Reference::Digest(d.clone()),
                    bytes.clone(),
                    &mt,
                    delta,
                    &absent.get(&d).cloned().unwrap_or_default(),
                )
                .await?;
            }
        }
        dst.put_manifest(
            &to.repo,
            &reference,
            bytes.clone(),
            &mt,
            delta,
            &absent.get(&d).cloned().unwrap_or_default(),
        )
        .await?;
        summary.manifests_written += 1;
        if is_root && matches!(reference, Reference::Tag(_)) {
            summary.tags_published += 1;
        }
        listed.push((d, bytes, mt));
    }
    // A referrer at a registry without the referrers API: listed where clients look instead.
    if let Place::Remote(r) = dst {
        for (d, bytes, mt) in &listed {
            referrers::list_at_registry(r, &to.repo, d, bytes, mt).await?;
        }
    }
    Ok(())
}

/// Copy one blob; returns (bytes over the wire, bytes resumed from an earlier run).
async fn copy_blob(
    src: &Place,
    dst: &Place,
    from_repo: &str,
    to_repo: &str,
    b: &BlobRef,
    counter: Arc<AtomicU64>,
) -> Result<(u64, u64)> {
    match dst {
        Place::Store(store) => {
            let counter2 = counter.clone();
            let imported = store
                .import_blob(&b.digest, b.size, |offset| async move {
                    let (s, partial) = src.read_blob(from_repo, &b.digest, offset).await?;
                    let s = s.inspect_ok(move |c| {
                        counter2.fetch_add(c.len() as u64, Ordering::Relaxed);
                    });
                    Ok((s.boxed(), partial))
                })
                .await?;
            Ok((imported.transferred, imported.resumed_from))
        }
        Place::Remote(r) => {
            let (s, _) = src.read_blob(from_repo, &b.digest, 0).await?;
            let s = verifying(s, b.digest.clone(), counter);
            r.push_blob(to_repo, &b.digest, b.size, s)
                .await
                .map_err(|e| match e {
                    Error::Remote { message, .. } if message.contains("source's bytes hash to") => {
                        Error::Corrupt {
                            digest: b.digest.clone(),
                            detail: message,
                        }
                    }
                    e => e,
                })?;
            Ok((b.size, 0))
        }
        Place::Archive(a, _) => Err(Error::Usage(format!(
            "{} is an archive being read; it is not written in place",
            a.describe()
        ))),
    }
}
