//! A bucket's upload sessions: a multipart upload per session, its state in an object so any
//! replica continues it, bytes after the last whole part kept as a tail object.

use super::*;

/// An upload session, as stored in `.ferry/uploads/<id>/state`.
#[derive(Serialize, Deserialize, Default)]
struct Session {
    /// The multipart upload of `data`, once a whole part arrived.
    multipart: Option<String>,
    /// ETags of the parts sent, in order.
    parts: Vec<String>,
    /// Bytes received (parts + tail).
    len: u64,
    /// Bytes in `tail-<len>`.
    tail: u64,
    /// SHA-256 state over all `len` bytes, hex.
    hash: String,
}

/// One part's bytes, in a mapping of its own: the memory goes back to the system as soon as the
/// part is sent. (On the heap it would stay: `main.rs` tells glibc to keep freed memory, which
/// spares the directory backend's push path its page faults, and 5 MiB blocks churned by every
/// upload would then hold the process's memory up for good.)
struct PartBuf {
    map: memmap2::MmapMut,
    len: usize,
}

impl PartBuf {
    /// A buffer for a request's first bytes: its pages come as they are written, so a small
    /// blob costs only what it holds.
    fn new() -> Result<PartBuf> {
        Ok(PartBuf {
            map: memmap2::MmapMut::map_anon(PART)?,
            len: 0,
        })
    }

    /// The next part's buffer in an upload already a part long: populated at once, one call
    /// instead of a page fault per 4 KiB as it fills.
    fn next_part() -> Result<PartBuf> {
        Ok(PartBuf {
            map: memmap2::MmapOptions::new()
                .len(PART)
                .populate()
                .map_anon()?,
            len: 0,
        })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append what fits of `b`; returns how much did.
    fn fill(&mut self, b: &[u8]) -> usize {
        let n = (PART - self.len).min(b.len());
        self.map[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        n
    }

    fn freeze(self) -> Result<Bytes> {
        let len = self.len;
        Ok(Bytes::from_owner(self.map.make_read_only()?).slice(..len))
    }
}

impl Bucket {
    fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.sessions)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    async fn load_session(&self, id: &str) -> Result<Session> {
        let bytes = self
            .get_small(&format!(".ferry/uploads/{id}/state"), 1 << 20)
            .await?
            .ok_or(Error::BlobUploadUnknown)?;
        serde_json::from_slice(&bytes).map_err(|_| Error::BlobUploadUnknown)
    }

    async fn save_session(&self, id: &str, s: &Session) -> Result<()> {
        let body = serde_json::to_vec(s).map_err(|e| Error::Layout(e.to_string()))?;
        self.put(&format!(".ferry/uploads/{id}/state"), Bytes::from(body))
            .await
    }

    pub async fn upload_start(&self, id: &str) -> Result<()> {
        let s = Session {
            hash: hex::encode(Algorithm::Sha256.hasher().save()),
            ..Default::default()
        };
        self.save_session(id, &s).await
    }

    pub async fn upload_len(&self, id: &str) -> Result<u64> {
        Ok(self.load_session(id).await?.len)
    }

    /// Take a body into a session: whole parts go to the multipart upload as they fill, the
    /// rest stays in `buf` for the caller.
    async fn take_body<S, E>(
        &self,
        id: &str,
        s: &mut Session,
        hasher: &mut Hasher,
        buf: &mut PartBuf,
        body: S,
    ) -> Result<Option<String>>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let data = format!(".ferry/uploads/{id}/data");
        let mut body = body;
        // Parts go up while the next one fills: a few in flight, in order.
        let mut inflight = futures_util::stream::FuturesOrdered::new();
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            };
            hasher.update(&chunk);
            s.len += chunk.len() as u64;
            // Each part is one buffer of exactly PART bytes, filled in place and handed over
            // whole: the allocator reuses the same few blocks for every part of every upload.
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                rest = &rest[buf.fill(rest)..];
                if buf.len() < PART {
                    continue;
                }
                let part = std::mem::replace(buf, PartBuf::next_part()?).freeze()?;
                let upload = self.multipart_id(&data, s).await?;
                let idx = s.parts.len() + inflight.len();
                inflight.push_back(self.put_part(&data, upload, idx, part));
                if inflight.len() >= PARTS_IN_FLIGHT {
                    if let Some(etag) = inflight.next().await {
                        s.parts.push(etag?);
                    }
                }
            }
        }
        while let Some(etag) = inflight.next().await {
            s.parts.push(etag?);
        }
        Ok(broken)
    }

    /// The session's multipart upload, created on its first whole part.
    async fn multipart_id(&self, data: &str, s: &mut Session) -> Result<String> {
        if let Some(id) = &s.multipart {
            return Ok(id.clone());
        }
        let id = self
            .s3
            .create_multipart(&self.path(data))
            .await
            .map_err(|e| self.err("CreateMultipartUpload", data, e))?;
        s.multipart = Some(id.clone());
        Ok(id)
    }

    /// Send one part (number `idx`, from 0); its ETag.
    fn put_part(
        &self,
        data: &str,
        upload: String,
        idx: usize,
        part: Bytes,
    ) -> impl std::future::Future<Output = Result<String>> + Send + 'static {
        let (s3, path, what) = (self.s3.clone(), self.path(data), self.describe());
        let data = data.to_owned();
        async move {
            s3.put_part(&path, &upload, idx, PutPayload::from(part))
                .await
                .map(|p| p.content_id)
                .map_err(|e| Error::Storage {
                    what: format!("{what}: UploadPart {data}"),
                    message: innermost(&e),
                })
        }
    }

    /// Send the last part (any size).
    async fn send_part(&self, data: &str, s: &mut Session, part: Bytes) -> Result<()> {
        let upload = self.multipart_id(data, s).await?;
        let etag = self.put_part(data, upload, s.parts.len(), part).await?;
        s.parts.push(etag);
        Ok(())
    }

    /// Take a session for one request: its in-process lock, its state, its running hash and its
    /// tail, and check that the chunk starts where the session stands (else 416).
    async fn open_session(
        &self,
        id: &str,
        range_start: Option<u64>,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, Session, Hasher, PartBuf)> {
        let guard = self.session_lock(id).lock_owned().await;
        let (s, hasher, buf) = self.session_parts(id).await?;
        if let Some(start) = range_start {
            if start != s.len {
                return Err(Error::RangeInvalid(format!(
                    "chunk starts at {start}, the upload has {} bytes",
                    s.len
                )));
            }
        }
        Ok((guard, s, hasher, buf))
    }

    async fn session_parts(&self, id: &str) -> Result<(Session, Hasher, PartBuf)> {
        let s = self.load_session(id).await?;
        let hasher = hex::decode(&s.hash)
            .ok()
            .and_then(|b| Hasher::restore(Algorithm::Sha256, &b))
            .ok_or(Error::BlobUploadUnknown)?;
        let mut buf = PartBuf::new()?;
        if s.tail > 0 {
            let tail = self
                .get_small(&format!(".ferry/uploads/{id}/tail-{}", s.len), PART as u64)
                .await?
                .ok_or(Error::BlobUploadUnknown)?;
            if tail.len() as u64 != s.tail {
                return Err(Error::BlobUploadUnknown);
            }
            buf.fill(&tail);
        }
        Ok((s, hasher, buf))
    }

    /// Append a chunk to a session; returns the new length. The state is saved after the parts
    /// and the tail it names, so a crash leaves the session where it was.
    pub async fn upload_append<S, E>(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let (_g, mut s, mut hasher, mut buf) = self.open_session(id, range_start).await?;
        let old_tail = (s.tail > 0).then(|| format!(".ferry/uploads/{id}/tail-{}", s.len));
        let broken = self
            .take_body(id, &mut s, &mut hasher, &mut buf, body)
            .await?;
        s.tail = buf.len() as u64;
        if s.tail > 0 {
            self.put(
                &format!(".ferry/uploads/{id}/tail-{}", s.len),
                buf.freeze()?,
            )
            .await?;
        }
        s.hash = hex::encode(hasher.save());
        self.save_session(id, &s).await?;
        if let Some(old) = old_tail.filter(|o| *o != format!(".ferry/uploads/{id}/tail-{}", s.len))
        {
            let _ = self.delete(&old).await;
        }
        if let Some(e) = broken {
            return Err(Error::BlobUploadInvalid(format!(
                "request body failed: {e}"
            )));
        }
        Ok(s.len)
    }

    /// Take the last chunk, verify against `digest`, publish the blob and end the session.
    pub async fn upload_finish<S, E>(
        &self,
        id: &str,
        range_start: Option<u64>,
        body: S,
        digest: &Digest,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let (_g, mut s, mut hasher, mut buf) = self.open_session(id, range_start).await?;
        if let Some(e) = self
            .take_body(id, &mut s, &mut hasher, &mut buf, body)
            .await?
        {
            return Err(Error::BlobUploadInvalid(format!(
                "request body failed: {e}"
            )));
        }
        let data = format!(".ferry/uploads/{id}/data");
        let res = if s.multipart.is_none() {
            // Smaller than a part: it is all here; verified before anything is written.
            let bytes = buf.freeze()?;
            let computed = if digest.algorithm() == Algorithm::Sha256 {
                hasher.finish()
            } else {
                Digest::of(digest.algorithm(), &bytes)
            };
            if &computed != digest {
                Err(Error::DigestInvalid(format!(
                    "expected {digest}, content hashes to {computed}"
                )))
            } else {
                self.put_blob_bytes(digest, bytes).await
            }
        } else {
            if !buf.is_empty() {
                self.send_part(&data, &mut s, buf.freeze()?).await?;
            }
            let mid = s.multipart.clone().unwrap_or_default();
            let path = self.path(&data);
            let computed = hasher.finish();
            if digest.algorithm() == Algorithm::Sha256 && &computed != digest {
                let _ = self.s3.abort_multipart(&path, &mid).await;
                Err(Error::DigestInvalid(format!(
                    "expected {digest}, content hashes to {computed}"
                )))
            } else {
                let parts = s
                    .parts
                    .iter()
                    .map(|p| PartId {
                        content_id: p.clone(),
                    })
                    .collect();
                self.s3
                    .complete_multipart(&path, &mid, parts)
                    .await
                    .map_err(|e| self.err("CompleteMultipartUpload", &data, e))?;
                let computed = if digest.algorithm() == Algorithm::Sha256 {
                    computed
                } else {
                    // Uploads hash with sha256 as they stream; a sha512 upload is re-read once.
                    let mut h = digest.algorithm().hasher();
                    let mut st = self.stream(&data, 0, s.len);
                    while let Some(c) = st.next().await {
                        h.update(&c?);
                    }
                    h.finish()
                };
                if &computed != digest {
                    Err(Error::DigestInvalid(format!(
                        "expected {digest}, content hashes to {computed}"
                    )))
                } else {
                    let key = blob_key(digest);
                    self.publish_blob(digest, || self.copy(&data, &key)).await
                }
            }
        };
        // Published or refused: the session is over either way (a store error keeps it, so the
        // client can retry the PUT).
        if !matches!(res, Err(Error::Storage { .. })) {
            self.drop_session(id).await;
        }
        res
    }

    async fn drop_session(&self, id: &str) {
        if let Ok(all) = self.list(&format!(".ferry/uploads/{id}/")).await {
            for (k, _) in all {
                if !k.ends_with("/state") {
                    let _ = self.delete(&k).await;
                }
            }
        }
        let _ = self.delete(&format!(".ferry/uploads/{id}/state")).await;
        lock(&self.sessions).remove(id);
    }

    pub async fn upload_cancel(&self, id: &str) -> Result<()> {
        let l = self.session_lock(id);
        let _g = l.lock().await;
        let s = self.load_session(id).await?;
        if let Some(mid) = &s.multipart {
            let _ = self
                .s3
                .abort_multipart(&self.path(&format!(".ferry/uploads/{id}/data")), mid)
                .await;
        }
        self.drop_session(id).await;
        Ok(())
    }

    /// End sessions idle for longer than `max_age` (their multipart uploads are aborted). A
    /// session is idle when none of its objects changed for that long; objects of a session
    /// whose state is gone or unreadable (a process killed while ending it) go the same way.
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let mut sessions: HashMap<String, (Duration, bool)> = HashMap::new();
        for (k, m) in self.list(".ferry/uploads/").await? {
            let Some((id, name)) = k
                .strip_prefix(".ferry/uploads/")
                .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            let e = sessions
                .entry(id.to_owned())
                .or_insert((Duration::MAX, false));
            e.0 = e.0.min(age_of(&m));
            e.1 |= name == "state";
        }
        let mut n = 0;
        for (id, (idle, has_state)) in sessions {
            if idle < max_age {
                continue;
            }
            if has_state {
                match self.upload_cancel(&id).await {
                    Ok(()) => {
                        n += 1;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "an expired upload session's state is unreadable; removing its objects");
                    }
                }
            }
            let l = self.session_lock(&id);
            let _g = l.lock().await;
            self.drop_session(&id).await;
            n += 1;
        }
        Ok(n)
    }

    /// Sessions this process has touched and not ended (others may hold more).
    pub fn sessions_here(&self) -> usize {
        lock(&self.sessions).len()
    }
}
