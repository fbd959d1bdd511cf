//! Manifests: stored exactly as received once everything they reference is held, recorded
//! under their repository (and tag) last; lookups, deletes and the referrers API.

use super::*;

impl Store {
    /// Store a manifest exactly as received and record it (and its tag): ferry's own writers
    /// (sync, pull-through, tools built on the library). What it references must be stored,
    /// in any repository, and becomes this repository's.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<PutManifest> {
        self.put_manifest_refs(repo, reference, bytes, content_type, Refs::Stored, &[])
            .await
    }

    /// An image index stored without some of its children, on purpose (`ferry sync
    /// --platform`): everything else it references must be stored, as for
    /// [`Store::put_manifest`]; the `absent` ones must be manifests it names, and are recorded
    /// as left behind ([`index::FERRY_ABSENT`]), so that verify, check and GC know the gap is
    /// meant. `check_references: false` (a delta) checks none.
    pub async fn put_manifest_sparse(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
        check_references: bool,
        absent: &[Digest],
    ) -> Result<PutManifest> {
        let refs = if check_references {
            Refs::Stored
        } else {
            Refs::Unchecked
        };
        self.put_manifest_refs(repo, reference, bytes, content_type, refs, absent)
            .await
    }

    /// A manifest a client pushed: what it references must be held by its repository (pushed
    /// or mounted there, or recorded there), as in Distribution: a digest stored for another
    /// repository is not this one's to name.
    ///
    /// `absent`: children of an image index left out on purpose (see
    /// [`Store::put_manifest_sparse`]); none for an ordinary push.
    pub async fn put_client_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
        absent: &[Digest],
    ) -> Result<PutManifest> {
        self.put_manifest_refs(repo, reference, bytes, content_type, Refs::Held, absent)
            .await
    }

    /// [`Store::put_manifest`], optionally without requiring the referenced content: a delta
    /// directory (written by `ferry sync --have`) holds manifests whose blobs are elsewhere, which
    /// the image-layout spec allows.
    pub async fn put_manifest_checked(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
        check_references: bool,
    ) -> Result<PutManifest> {
        self.put_manifest_sparse(repo, reference, bytes, content_type, check_references, &[])
            .await
    }

    async fn put_manifest_refs(
        &self,
        repo: &RepoName,
        reference: &Reference,
        bytes: Bytes,
        content_type: Option<&str>,
        refs: Refs,
        absent: &[Digest],
    ) -> Result<PutManifest> {
        self.ensure_writable()?;
        if bytes.len() as u64 > media::MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge {
                size: bytes.len() as u64,
                limit: media::MAX_MANIFEST_BYTES,
            });
        }
        let info = media::parse_manifest(&bytes, content_type)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(Error::DigestInvalid(format!(
                        "manifest hashes to {actual}, not {d}"
                    )));
                }
                d.clone()
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        // Invariant 2: everything the manifest references exists before it is stored, and
        // invariant 8: it stays. A check alone is not enough: GC may have read the records
        // before this PUT and sweep a referenced blob (or this manifest's own stored bytes,
        // when a manifest no tag names any more is put again) after it. So every reference is
        // *promised* — checked and refreshed under the same ordering against sweeps as a HEAD
        // (module `gc`) — before the records are written, and again after: a sweep that slipped
        // in between (a PUT slower than GC's grace period) is seen, and the PUT is undone and
        // refused as if GC had finished first. The second round is what makes a 201 a promise:
        // a blob promised after the commit was promised after GC's last reading of the records,
        // so no sweep of that GC removes it, and a later GC sees the manifest.
        for d in absent {
            if !info
                .edges
                .iter()
                .any(|e| &e.digest == d && e.kind == EdgeKind::Manifest)
            {
                return Err(Error::ManifestInvalid(format!(
                    "{d} is left out of {digest}, which names no such manifest"
                )));
            }
        }
        let edges: Vec<&media::Edge> = match refs {
            Refs::Held | Refs::Stored => info
                .edges
                .iter()
                .filter(|e| !absent.contains(&e.digest))
                .collect(),
            Refs::Unchecked => Vec::new(),
        };
        if refs == Refs::Held {
            for e in &edges {
                if !self.holds(repo, &e.digest).await? {
                    return Err(Error::ManifestBlobUnknown(e.digest.clone()));
                }
            }
        }
        self.promise_references(&edges).await?;
        self.promise_manifest_bytes(&digest, &bytes).await?;
        // The repository holds what its manifest references (and the manifest) before the
        // record names it: a client that reads the tag can read every layer under it.
        let mut held: Vec<Digest> = info
            .edges
            .iter()
            .filter(|e| !absent.contains(&e.digest))
            .map(|e| e.digest.clone())
            .collect();
        held.push(digest.clone());
        self.link(repo, &held).await?;
        self.pause("manifest:promised").await;
        let entry = NewEntry {
            repo: repo.as_str().to_owned(),
            tag: match reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            },
            digest: digest.clone(),
            media_type: info.media_type.clone(),
            size: bytes.len() as u64,
            artifact_type: info.subject.as_ref().and(info.artifact_type.clone()),
            subject: info.subject.clone(),
            tagged_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            absent: absent.to_vec(),
        };
        let e2 = entry.clone();
        let undo = self
            .update_index(move |f| {
                let undo = index::Undo::before(f, &e2);
                let before = f.manifests.len();
                let snapshot = serde_json::to_value(&f.manifests).ok();
                f.put(&e2);
                let changed = f.manifests.len() != before
                    || serde_json::to_value(&f.manifests).ok() != snapshot;
                Ok((undo, changed))
            })
            .await?;
        self.pause("manifest:recorded").await;
        // The second round (above). The manifest's own bytes are in hand: written again if a
        // sweep took them, rather than undoing the PUT.
        let again = self.promise_references(&edges).await;
        let again = match again {
            Ok(()) => self.promise_manifest_bytes(&digest, &bytes).await,
            Err(e) => Err(e),
        };
        if let Err(e) = again {
            tracing::warn!(repo = %repo, reference = %reference, "a reference of this manifest was swept while it was being recorded: the PUT is undone ({e})");
            self.update_index(move |f| Ok(((), undo.apply(f, &entry))))
                .await?;
            return Err(e);
        }
        Ok(PutManifest {
            digest,
            subject: info.subject,
        })
    }

    /// Promise every reference of a manifest (see [`Store::put_manifest_checked`]): each exists,
    /// with the size the manifest gives, and is kept by any sweep that has not happened yet.
    async fn promise_references(&self, edges: &[&media::Edge]) -> Result<()> {
        use futures_util::StreamExt;
        let digests: Vec<Digest> = edges.iter().map(|e| e.digest.clone()).collect();
        let sizes: Vec<Result<Option<u64>>> = futures_util::stream::iter(digests)
            .map(|d| async move { self.promise_blob(&d).await })
            .buffered(16)
            .collect()
            .await;
        for (edge, size) in edges.iter().zip(sizes) {
            match size? {
                None => return Err(Error::ManifestBlobUnknown(edge.digest.clone())),
                Some(size) if size != edge.size => {
                    return Err(Error::ManifestInvalid(format!(
                        "{} {} is {} bytes, the manifest says {}",
                        match edge.kind {
                            EdgeKind::Blob => "blob",
                            EdgeKind::Manifest => "manifest",
                        },
                        edge.digest,
                        size,
                        edge.size
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A manifest's own bytes, stored under its digest and promised like a reference: written
    /// when missing (or swept meanwhile: each write is new, so younger than any GC's mark).
    async fn promise_manifest_bytes(&self, digest: &Digest, bytes: &Bytes) -> Result<()> {
        if self.promise_blob(digest).await? == Some(bytes.len() as u64) {
            return Ok(());
        }
        self.ensure_writable()?;
        self.backend.put_small_blob(digest, bytes.clone()).await
    }

    /// Let a test hold the store at a named step of an operation (`Store::set_pause_hook`).
    pub(super) async fn pause(&self, point: &'static str) {
        let hook = self.pause.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            let _ = tokio::task::spawn_blocking(move || h(point)).await;
        }
    }

    /// [`Store::pause`] for blocking callers (GC).
    pub fn pause_sync(&self, point: &'static str) {
        let hook = self.pause.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            h(point);
        }
    }

    /// For tests that stage a race step by step instead of hoping for it: `hook` is called, on
    /// a blocking thread, at each named step (`"manifest:promised"` and `"manifest:recorded"`
    /// in a manifest PUT, `"gc:marked"` between GC's last mark and its sweep) and may block to
    /// hold the operation there. Nothing outside the tests sets one.
    pub fn set_pause_hook(&self, hook: PauseHook) {
        *self.pause.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Find a manifest by tag or digest.
    pub async fn manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestMeta> {
        let unknown = || Error::ManifestUnknown(format!("{repo}:{reference}"));
        let (digest, media_type) = match reference {
            Reference::Tag(t) => {
                let d = self
                    .backend
                    .tag(repo.as_str(), t)
                    .await?
                    .ok_or_else(unknown)?;
                (d.digest, Some(d.media_type))
            }
            Reference::Digest(d) => {
                if !self.holds(repo, d).await? {
                    return Err(unknown());
                }
                let media_type = match self.backend.known_media_type(repo.as_str(), d) {
                    Some(mt) => Some(mt),
                    None => self
                        .index()
                        .await?
                        .by_digest(repo.as_str(), d)
                        .map(|x| x.media_type.clone()),
                };
                (d.clone(), media_type)
            }
        };
        let size = self.blob_size(&digest).await?.ok_or_else(unknown)?;
        let media_type = match media_type {
            Some(mt) => mt,
            None => {
                // A manifest no descriptor describes (a child in a layout another tool wrote):
                // tell its type from its bytes, if it is a manifest at all.
                if size > media::MAX_MANIFEST_BYTES {
                    return Err(unknown());
                }
                let bytes = self.read_manifest(&digest).await?;
                media::sniff_media_type(&bytes).ok_or_else(unknown)?
            }
        };
        Ok(ManifestMeta {
            media_type,
            digest,
            size,
        })
    }

    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.ensure_writable()?;
        let repo_s = repo.as_str().to_owned();
        let unknown = Error::ManifestUnknown(format!("{repo}:{reference}"));
        match reference {
            Reference::Tag(t) => {
                let t = t.clone();
                let found = self
                    .update_index(move |f| {
                        let ok = f.delete_tag(&repo_s, &t);
                        Ok((ok, ok))
                    })
                    .await?;
                if found {
                    Ok(())
                } else {
                    Err(unknown)
                }
            }
            Reference::Digest(d) => {
                let d2 = d.clone();
                let removed = self
                    .update_index(move |f| {
                        let n = f.delete_manifest(&repo_s, &d2);
                        Ok((n, n > 0))
                    })
                    .await?;
                // The repository no longer holds it; the bytes stay for any other repository
                // that does (GC takes them when none does).
                let linked = self.unlink(repo, d).await?;
                if removed == 0 && !linked {
                    return Err(unknown);
                }
                Ok(())
            }
        }
    }

    /// The referrers API body: an image index of the manifests in `repo` whose subject is `subject`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Value> {
        let idx = self.index().await?;
        let mut out = Vec::new();
        for d in idx.referrers(repo.as_str(), subject) {
            if artifact_type.is_some_and(|a| d.artifact_type.as_deref() != Some(a)) {
                continue;
            }
            let mut desc = json!({
                "mediaType": d.media_type,
                "digest": d.digest.to_string(),
                "size": d.size,
            });
            if let Some(a) = &d.artifact_type {
                desc["artifactType"] = json!(a);
            }
            // Annotations come from the manifest itself, as the spec asks.
            if let Ok(bytes) = self.read_manifest(&d.digest).await {
                if let Ok(info) = media::parse_manifest(&bytes, Some(&d.media_type)) {
                    if let Some(a) = info.annotations {
                        desc["annotations"] = Value::Object(a);
                    }
                }
            }
            out.push(desc);
        }
        Ok(json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": out,
        }))
    }
}
