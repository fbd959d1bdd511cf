//! Retention: which tags to let go, so that GC can return their space.
//!
//! A [`Policy`] is a list of [`Rule`]s, each for the repositories its pattern matches, and an
//! optional size budget. A tag in a repository that some rule governs is kept when any of those
//! rules keeps it: it is among the newest `keep_last` of its repository (by the time ferry
//! published it), it matches `keep_tags`, or it was read within `keep_read_within`. Tags in
//! repositories no rule governs are left to the budget alone. Then, if the store is larger than
//! `max_size`, further tags go, least recently read first (never read: oldest published first),
//! until what the remaining tags reach fits. Space is counted per blob, once, however many tags
//! share it. Applying a plan removes the tags (and the repository's untagged records of manifests
//! only they reached); the GC sweep that follows returns the space.
//!
//! The rules come from `ferry gc`'s flags (one rule) or from a file (`--retention FILE`, for
//! `ferry gc` and for the server's schedule), parsed by [`Policy::from_toml`]:
//!
//! ```toml
//! max-size = "200G"            # the whole store; optional
//!
//! [repo."cache/.*"]            # a regular expression matching the whole repository name
//! keep-last = 3
//! keep-read-within = "14d"
//!
//! [repo.".*"]
//! keep-last = 10
//! keep-tags = "^(release|stable)-"
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::Store;
use crate::vocab::digest::Digest;

/// What to keep in the repositories `repo` matches (all, when `None`).
#[derive(Clone, Debug, Default)]
pub struct Rule {
    pub repo: Option<regex::Regex>,
    pub keep_last: Option<usize>,
    pub keep_tags: Option<regex::Regex>,
    pub keep_read_within: Option<Duration>,
}

impl Rule {
    /// Whether the rule says anything (a rule with no `keep_*` would keep nothing).
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none() && self.keep_tags.is_none() && self.keep_read_within.is_none()
    }

    fn governs(&self, repo: &str) -> bool {
        self.repo.as_ref().is_none_or(|r| r.is_match(repo))
    }
}

#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub max_size: Option<u64>,
    /// The repositories whose tags the size budget may remove (all, when `None`).
    pub budget_repo: Option<regex::Regex>,
}

impl Policy {
    /// `ferry gc`'s flags: one rule for the repositories `--repo` matches, which also bounds
    /// what `--max-size` may remove.
    pub fn from_flags(
        repo: Option<regex::Regex>,
        keep_last: Option<usize>,
        keep_tags: Option<regex::Regex>,
        keep_read_within: Option<Duration>,
        max_size: Option<u64>,
    ) -> Policy {
        let rule = Rule {
            repo: repo.clone(),
            keep_last,
            keep_tags,
            keep_read_within,
        };
        Policy {
            rules: if rule.is_empty() { vec![] } else { vec![rule] },
            max_size,
            budget_repo: repo,
        }
    }

    /// A retention file (see the module docs). Unknown keys are errors, not silently ignored: a
    /// misspelt `keep_last` must not turn into "keep nothing".
    pub fn from_toml(text: &str) -> std::result::Result<Policy, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct File {
            max_size: Option<SizeValue>,
            #[serde(default)]
            repo: BTreeMap<String, FileRule>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum SizeValue {
            Bytes(u64),
            Text(String),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct FileRule {
            keep_last: Option<usize>,
            keep_tags: Option<String>,
            keep_read_within: Option<String>,
        }
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for (pattern, r) in f.repo {
            let what = |k: &str| format!("[repo.{pattern:?}] {k}");
            let repo = regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| format!("[repo.{pattern:?}]: {e}"))?;
            let rule = Rule {
                repo: Some(repo),
                keep_last: r.keep_last,
                keep_tags: r
                    .keep_tags
                    .map(|t| {
                        regex::Regex::new(&t).map_err(|e| format!("{}: {e}", what("keep-tags")))
                    })
                    .transpose()?,
                keep_read_within: r
                    .keep_read_within
                    .map(|d| {
                        crate::vocab::duration::parse_duration(&d)
                            .map_err(|e| format!("{}: {e}", what("keep-read-within")))
                    })
                    .transpose()?,
            };
            if rule.is_empty() {
                return Err(format!(
                    "[repo.{pattern:?}] has no keep-last, keep-tags or keep-read-within; \
                     to let every tag of those repositories go, say keep-last = 0"
                ));
            }
            rules.push(rule);
        }
        let max_size = match f.max_size {
            None => None,
            Some(SizeValue::Bytes(n)) => Some(n),
            Some(SizeValue::Text(t)) => Some(parse_size(&t).map_err(|e| format!("max-size: {e}"))?),
        };
        if rules.is_empty() && max_size.is_none() {
            return Err("no [repo.\"PATTERN\"] table and no max-size: nothing to do".into());
        }
        Ok(Policy {
            rules,
            max_size,
            budget_repo: None,
        })
    }

    /// [`Policy::from_toml`] on a file, with the file's name in the error.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("--retention {}: {e}", path.display())))?;
        Policy::from_toml(&text)
            .map_err(|e| Error::Usage(format!("--retention {}: {e}", path.display())))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.iter().all(Rule::is_empty) && self.max_size.is_none()
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
    let idx = store.wait(store.index())?;
    let now = SystemTime::now();
    let mut tags: Vec<TagInfo> = Vec::new();
    let mut graph = crate::layout::graph::Graph::new(store);
    for d in &idx.file.manifests {
        let (Some(repo), Some(tag)) = d.repo_and_tag() else {
            continue;
        };
        let (reach, _) = graph.reachable(&d.digest, &d.media_type)?;
        let tagged = d
            .tagged_at()
            .unwrap_or_else(|| store.wait(store.stored_at(&d.digest)).map_or(0, millis));
        tags.push(TagInfo {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            digest: d.digest.clone(),
            tagged,
            read: store.wait(store.last_read(&d.digest)),
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
                .or_insert_with(|| store.wait(store.blob_size(b)).ok().flatten().unwrap_or(0));
        }
    }
    let mut plan = Plan {
        bytes_before: size.values().sum(),
        ..Default::default()
    };
    let in_budget = |t: &TagInfo| {
        policy
            .budget_repo
            .as_ref()
            .is_none_or(|r| r.is_match(&t.repo))
    };
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

    // 1. Rules, per repository: a tag goes when rules govern its repository and none keeps it.
    let rules: Vec<&Rule> = policy.rules.iter().filter(|r| !r.is_empty()).collect();
    if !rules.is_empty() {
        let mut by_repo: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, t) in tags.iter().enumerate() {
            by_repo.entry(t.repo.as_str()).or_default().push(i);
        }
        let mut repos: Vec<_> = by_repo.into_iter().collect();
        repos.sort();
        for (repo, mut idxs) in repos {
            let governing: Vec<&&Rule> = rules.iter().filter(|r| r.governs(repo)).collect();
            if governing.is_empty() {
                continue;
            }
            idxs.sort_by(|&a, &b| {
                tags[b]
                    .tagged
                    .cmp(&tags[a].tagged)
                    .then(tags[a].tag.cmp(&tags[b].tag))
            });
            for (rank, &i) in idxs.iter().enumerate() {
                let t = &tags[i];
                let kept = governing.iter().any(|rule| {
                    let newest = rule.keep_last.is_some_and(|n| rank < n);
                    let named = rule
                        .keep_tags
                        .as_ref()
                        .is_some_and(|re| re.is_match(&t.tag));
                    let read = rule.keep_read_within.is_some_and(|d| {
                        t.read
                            .is_some_and(|r| now.duration_since(r).unwrap_or_default() <= d)
                    });
                    newest || named || read
                });
                if !kept {
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
            .filter(|&i| !removed[i] && in_budget(&tags[i]))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_file() {
        let p = Policy::from_toml(
            r#"
            max-size = "2G"
            [repo."cache/.*"]
            keep-last = 3
            keep-read-within = "14d"
            [repo."app"]
            keep-tags = "^release-"
            "#,
        )
        .unwrap();
        assert_eq!(p.max_size, Some(2 << 30));
        assert_eq!(p.rules.len(), 2);
        let cache = p.rules.iter().find(|r| r.keep_last == Some(3)).unwrap();
        assert!(cache.governs("cache/app"));
        assert!(
            !cache.governs("mycache/app"),
            "patterns match the whole name"
        );
        assert_eq!(
            cache.keep_read_within,
            Some(Duration::from_secs(14 * 86400))
        );
        assert_eq!(
            Policy::from_toml("max-size = 1000").unwrap().max_size,
            Some(1000)
        );
        for (bad, why) in [
            ("[repo.\"a\"]\nkeep_last = 3", "unknown field"),
            ("[repo.\"a\"]\n", "keep-last = 0"),
            ("[repo.\"(\"]\nkeep-last = 1", "regex"),
            (
                "[repo.\"a\"]\nkeep-read-within = \"3 weeks\"",
                "keep-read-within",
            ),
            ("max-size = \"lots\"", "max-size"),
            ("", "nothing to do"),
            ("keep-last = 3", "unknown field"),
        ] {
            let e = Policy::from_toml(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
