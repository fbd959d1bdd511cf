//! Retention: which tags to let go, so that GC can return their space.
//!
//! Rules apply to the repositories matching `--repo` (all by default). A tag is kept when any
//! rule keeps it: it is among the newest `keep_last` of its repository (by the time ferry
//! published it), it matches `keep_tags`, or it was read within `keep_read_within`. Then, if the
//! store is larger than `max_size`, further tags go, least recently read first (never read: oldest
//! published first), until what the remaining tags reach fits. Space is counted per blob, once,
//! however many tags share it. Applying a plan removes the tags (and the repository's untagged
//! records of manifests only they reached); the GC sweep that follows returns the space.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::digest::Digest;
use crate::error::Result;
use crate::layout::Store;
use crate::verify::reachable;

#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub repo: Option<regex::Regex>,
    pub keep_last: Option<usize>,
    pub keep_tags: Option<regex::Regex>,
    pub keep_read_within: Option<Duration>,
    pub max_size: Option<u64>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_tags.is_none()
            && self.keep_read_within.is_none()
            && self.max_size.is_none()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Removal {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub remove: Vec<Removal>,
    /// Bytes that only the removed tags reach (what GC then returns).
    pub bytes_freed: u64,
    pub bytes_before: u64,
    #[serde(skip)]
    orphaned: HashMap<(String, String), BTreeSet<Digest>>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.remove {
            writeln!(
                f,
                "remove {}:{} ({}): {}",
                r.repo, r.tag, r.digest, r.reason
            )?;
        }
        write!(
            f,
            "retention: {} tag(s) to remove, {} of {} bytes to return",
            self.remove.len(),
            self.bytes_freed,
            self.bytes_before
        )
    }
}

struct TagInfo {
    repo: String,
    tag: String,
    digest: Digest,
    tagged: u64,
    read: Option<SystemTime>,
    reach: BTreeSet<Digest>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Work out what the policy removes. Reads the store; changes nothing.
pub fn plan(store: &Store, policy: &Policy) -> Result<Plan> {
    let idx = store.index()?;
    let now = SystemTime::now();
    let mut tags: Vec<TagInfo> = Vec::new();
    for d in &idx.file.manifests {
        let (Some(repo), Some(tag)) = d.repo_and_tag() else {
            continue;
        };
        let (reach, _) = reachable(store, &d.digest, &d.media_type);
        let tagged = d.tagged_at().unwrap_or_else(|| {
            std::fs::metadata(store.blob_path(&d.digest))
                .and_then(|m| m.modified())
                .map_or(0, millis)
        });
        tags.push(TagInfo {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            digest: d.digest.clone(),
            tagged,
            read: store.last_read(&d.digest),
            reach,
        });
    }
    // Blob sizes and how many tags reach each blob.
    let mut size: HashMap<Digest, u64> = HashMap::new();
    let mut refs: HashMap<Digest, usize> = HashMap::new();
    for t in &tags {
        for b in &t.reach {
            *refs.entry(b.clone()).or_default() += 1;
            size.entry(b.clone())
                .or_insert_with(|| std::fs::metadata(store.blob_path(b)).map_or(0, |m| m.len()));
        }
    }
    let mut plan = Plan {
        bytes_before: size.values().sum(),
        ..Default::default()
    };
    let applies = |t: &TagInfo| policy.repo.as_ref().is_none_or(|r| r.is_match(&t.repo));
    let mut removed = vec![false; tags.len()];
    let remove = |i: usize,
                  why: &str,
                  plan: &mut Plan,
                  refs: &mut HashMap<Digest, usize>,
                  removed: &mut Vec<bool>| {
        removed[i] = true;
        let t = &tags[i];
        let mut orphaned = BTreeSet::new();
        for b in &t.reach {
            if let Some(n) = refs.get_mut(b) {
                *n -= 1;
                if *n == 0 {
                    plan.bytes_freed += size.get(b).copied().unwrap_or(0);
                    orphaned.insert(b.clone());
                }
            }
        }
        plan.orphaned
            .insert((t.repo.clone(), t.tag.clone()), orphaned);
        plan.remove.push(Removal {
            repo: t.repo.clone(),
            tag: t.tag.clone(),
            digest: t.digest.to_string(),
            reason: why.to_owned(),
        });
    };

    // 1. Rules, per repository.
    if policy.keep_last.is_some() || policy.keep_tags.is_some() || policy.keep_read_within.is_some()
    {
        let mut by_repo: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, t) in tags.iter().enumerate().filter(|(_, t)| applies(t)) {
            by_repo.entry(t.repo.as_str()).or_default().push(i);
        }
        let mut repos: Vec<_> = by_repo.into_iter().collect();
        repos.sort();
        for (_, mut idxs) in repos {
            idxs.sort_by(|&a, &b| {
                tags[b]
                    .tagged
                    .cmp(&tags[a].tagged)
                    .then(tags[a].tag.cmp(&tags[b].tag))
            });
            for (rank, &i) in idxs.iter().enumerate() {
                let t = &tags[i];
                let newest = policy.keep_last.is_some_and(|n| rank < n);
                let named = policy
                    .keep_tags
                    .as_ref()
                    .is_some_and(|re| re.is_match(&t.tag));
                let read = policy.keep_read_within.is_some_and(|d| {
                    t.read
                        .is_some_and(|r| now.duration_since(r).unwrap_or_default() <= d)
                });
                if !(newest || named || read) {
                    remove(
                        i,
                        "no retention rule keeps it",
                        &mut plan,
                        &mut refs,
                        &mut removed,
                    );
                }
            }
        }
    }
    // 2. The size budget, least recently read first.
    if let Some(budget) = policy.max_size {
        let mut order: Vec<usize> = (0..tags.len())
            .filter(|&i| !removed[i] && applies(&tags[i]))
            .collect();
        order.sort_by_key(|&i| (tags[i].read.map_or(0, millis), tags[i].tagged));
        for i in order {
            if plan.bytes_before - plan.bytes_freed <= budget {
                break;
            }
            remove(
                i,
                "over the size budget (least recently read)",
                &mut plan,
                &mut refs,
                &mut removed,
            );
        }
    }
    Ok(plan)
}

/// Remove the planned tags from `index.json`.
pub async fn apply(store: &Store, plan: &Plan) -> Result<usize> {
    let work: Vec<(String, String, BTreeSet<Digest>)> = plan
        .remove
        .iter()
        .map(|r| {
            let orphaned = plan
                .orphaned
                .get(&(r.repo.clone(), r.tag.clone()))
                .cloned()
                .unwrap_or_default();
            (r.repo.clone(), r.tag.clone(), orphaned)
        })
        .collect();
    store
        .update_index(move |f| {
            let mut n = 0;
            for (repo, tag, orphaned) in &work {
                if f.drop_tag(repo, tag, orphaned) {
                    n += 1;
                }
            }
            Ok((n, n > 0))
        })
        .await
}

/// Parse `500M`, `10G`, `2T` or plain bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("bad size unit in {s:?} (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}
