//! A bucket's records: one object per tag and per untagged manifest a repository holds.

use super::*;

impl Bucket {
    /// Every record, as an index.json would hold them. Reads only records whose ETag changed
    /// since the last load.
    pub async fn load_index(&self) -> Result<IndexFile> {
        let listed = self.list(".ferry/refs/").await?;
        let mut known: HashMap<String, (Option<String>, Descriptor)> =
            std::mem::take(&mut *lock(&self.records));
        let mut fresh = HashMap::with_capacity(listed.len());
        for (k, m) in listed {
            match known.remove(&k) {
                Some((etag, d)) if etag.is_some() && etag == m.e_tag => {
                    fresh.insert(k, (etag, d));
                }
                _ => {
                    let bytes = match self.get_small(&k, 64 << 10).await {
                        Ok(Some(b)) => b,
                        Ok(None) => continue, // deleted since the listing
                        // A record no ferry wrote (too large): named and skipped, as a bad
                        // index.json entry is; the others still load.
                        Err(Error::Layout(why)) => {
                            tracing::warn!(store = %self.describe(), "record skipped: {why}");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    match serde_json::from_slice::<Descriptor>(&bytes) {
                        Ok(d) => {
                            fresh.insert(k, (m.e_tag, d));
                        }
                        Err(e) => {
                            tracing::warn!(store = %self.describe(), key = %k, "record skipped: {e}")
                        }
                    }
                }
            }
        }
        let mut keys: Vec<&String> = fresh.keys().collect();
        keys.sort();
        let file = IndexFile {
            manifests: keys.iter().map(|k| fresh[*k].1.clone()).collect(),
            ..Default::default()
        };
        *lock(&self.records) = fresh;
        Ok(file)
    }

    /// The descriptor a tag names, read fresh (one request).
    pub async fn tag_record(&self, repo: &str, tag: &str) -> Result<Option<Descriptor>> {
        let Some(bytes) = self.get_small(&tag_key(repo, tag), 64 << 10).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Write what changed between two versions of the records: untagged manifests first, then
    /// tags (tags last, as in a directory), then removals.
    pub async fn write_index_diff(&self, before: &IndexFile, after: &IndexFile) -> Result<()> {
        let keyed = |f: &IndexFile| -> HashMap<String, Descriptor> {
            f.manifests
                .iter()
                .map(|d| (record_key(d), d.clone()))
                .collect()
        };
        let (old, new) = (keyed(before), keyed(after));
        let mut puts: Vec<(&String, &Descriptor)> = new
            .iter()
            .filter(|(k, d)| old.get(*k) != Some(*d))
            .collect();
        puts.sort_by_key(|(k, _)| (k.contains("/_tags/"), (*k).clone()));
        for (k, d) in puts {
            let body = serde_json::to_vec(d).map_err(|e| Error::Layout(e.to_string()))?;
            self.put(k, Bytes::from(body)).await?;
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            self.delete(k).await?;
        }
        Ok(())
    }
}
