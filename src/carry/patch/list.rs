//! A trip's list of patches ([`LIST`]): which layer each patch blob rebuilds, from which base.
//! A directory holds it at its top, an archive as a member; a signed statement names the same
//! pairs.

use std::collections::HashMap;
use std::fs::File;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::carry::place::Place;
use crate::error::{Error, Result};
use crate::layout::Store;
use crate::vocab::digest::Digest;

/// The trip's list of patches, at its top (a directory) or as a member (an archive).
pub const LIST: &str = "ferry-patches.json";
const LIST_FORMAT: &str = "ferry-patches/1";
const MAX_LIST_BYTES: u64 = 16 << 20;
/// One patched layer, as the trip lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub target: Digest,
    pub target_size: u64,
    pub base: Digest,
    pub base_size: u64,
    pub patch: Digest,
    pub patch_size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct List {
    pub format: String,
    pub patches: Vec<Entry>,
}

impl List {
    pub fn parse(bytes: &[u8]) -> Result<List> {
        let l: List = serde_json::from_slice(bytes)
            .map_err(|e| Error::Usage(format!("{LIST} is not valid: {e}")))?;
        if l.format != LIST_FORMAT {
            return Err(Error::Usage(format!(
                "{LIST}: format {:?}, this ferry reads {LIST_FORMAT}",
                l.format
            )));
        }
        Ok(l)
    }

    pub fn to_bytes(&self) -> Bytes {
        let l = List {
            format: LIST_FORMAT.into(),
            patches: self.patches.clone(),
        };
        Bytes::from(serde_json::to_vec_pretty(&l).unwrap_or_default())
    }
}

/// A place's patch list: a directory's file, an archive's member; none elsewhere.
pub async fn read_list(place: &Place) -> Result<HashMap<Digest, Entry>> {
    let bytes = match place {
        Place::Store(s) => match s.root() {
            Some(root) => read_dir_list(root).await?,
            None => None,
        },
        Place::Archive(a, _) if a.has(LIST) => Some(a.read_small(LIST, MAX_LIST_BYTES)?),
        _ => None,
    };
    match bytes {
        Some(b) => by_target(&b),
        None => Ok(HashMap::new()),
    }
}

fn by_target(bytes: &[u8]) -> Result<HashMap<Digest, Entry>> {
    Ok(List::parse(bytes)?
        .patches
        .into_iter()
        .map(|e| (e.target.clone(), e))
        .collect())
}

/// A directory trip's patch list (empty when it has none).
pub async fn read_dir(root: &std::path::Path) -> Result<HashMap<Digest, Entry>> {
    match read_dir_list(root).await? {
        Some(b) => by_target(&b),
        None => Ok(HashMap::new()),
    }
}

async fn read_dir_list(root: &std::path::Path) -> Result<Option<Vec<u8>>> {
    let path = root.join(LIST);
    match tokio::fs::symlink_metadata(&path).await {
        Ok(m) if !m.is_file() => Err(Error::Usage(format!(
            "{}: not a regular file",
            path.display()
        ))),
        Ok(m) if m.len() > MAX_LIST_BYTES => Err(Error::Usage(format!(
            "{}: {} bytes, more than the {MAX_LIST_BYTES} allowed",
            path.display(),
            m.len()
        ))),
        Ok(_) => Ok(Some(tokio::fs::read(&path).await?)),
        Err(_) => Ok(None),
    }
}

/// Write (or extend) a directory trip's patch list, atomically.
pub async fn write_list(store: &Store, entries: Vec<Entry>) -> Result<()> {
    let Some(root) = store.root().map(|p| p.to_owned()) else {
        return Err(Error::Usage(
            "patches are carried in a directory or an oci-archive, not a bucket".into(),
        ));
    };
    let mut list = List {
        format: LIST_FORMAT.into(),
        patches: match read_dir_list(&root).await? {
            Some(b) => List::parse(&b)?.patches,
            None => Vec::new(),
        },
    };
    for e in entries {
        list.patches.retain(|p| p.target != e.target);
        list.patches.push(e);
    }
    list.patches.sort_by(|a, b| a.target.cmp(&b.target));
    let bytes = list.to_bytes();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let tmp = root.join(format!(".{LIST}.tmp"));
        std::fs::write(&tmp, &bytes)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, root.join(LIST))?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?
}
