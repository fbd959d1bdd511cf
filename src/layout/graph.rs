//! The content graph of a store as GC, verify and retention walk it: each manifest read and
//! parsed once, however many roots reach it. It lives with the store (the store's own walks,
//! what a repository holds, use it) and the keepers (`gc`, `verify`, `retention`) build on it.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::error::{Error, Result};
use crate::layout::Store;
use crate::vocab::digest::Digest;
use crate::vocab::media::{self, EdgeKind};

/// Everything reachable from one manifest: (digests, digests missing from the store).
///
/// A store that cannot answer (an I/O error, an object store's 503) is an error, never
/// "missing": GC marks with this, and a child left unmarked because a request failed would be
/// swept. Walking many roots, use one [`Graph`]: each manifest is then read once.
pub fn reachable(
    store: &Store,
    root: &Digest,
    media_type: &str,
) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
    Graph::new(store).reachable(root, media_type)
}

/// A node of the graph as reached: its digest, and the media type it is read as when it is a
/// manifest (`None`: a blob). One digest can be both (a legacy cache index's children are
/// blobs, the same bytes elsewhere a manifest), and the two are walked apart.
type Key = (Digest, Option<String>);

/// What one node is: absent from the store, or present with these children.
struct Node {
    present: bool,
    children: Vec<Key>,
}

/// The content graph of a store as GC, verify and retention walk it, each manifest read and
/// parsed once however many roots reach it: a tag of an index of indexes, each recorded in its
/// repository, made GC and verify quadratic when every root re-read its whole subtree.
pub struct Graph<'a> {
    store: &'a Store,
    nodes: HashMap<Key, Node>,
}

impl<'a> Graph<'a> {
    pub fn new(store: &'a Store) -> Graph<'a> {
        Graph {
            store,
            nodes: HashMap::new(),
        }
    }

    fn load(&mut self, key: &Key) -> Result<&Node> {
        if !self.nodes.contains_key(key) {
            let node = self.read(key)?;
            self.nodes.insert(key.clone(), node);
        }
        Ok(&self.nodes[key])
    }

    fn read(&self, (d, mt): &Key) -> Result<Node> {
        let absent = Node {
            present: false,
            children: Vec::new(),
        };
        // Present means a regular file (or a symlink inside the layout to one): a FIFO or a
        // symlink leaving the layout under this name is missing content, and never opened.
        let Some(size) = self.store.wait(self.store.blob_size(d))? else {
            return Ok(absent);
        };
        let mut node = Node {
            present: true,
            children: Vec::new(),
        };
        let Some(mt) = mt else { return Ok(node) };
        if size > media::MAX_MANIFEST_BYTES {
            return Ok(node);
        }
        let bytes = match self
            .store
            .wait(self.store.read_small(d, media::MAX_MANIFEST_BYTES))
        {
            Ok(b) => b,
            Err(Error::BlobUnknown(_) | Error::BlobUnreadable { .. }) => return Ok(absent),
            Err(e) => return Err(e),
        };
        if let Ok(info) = media::parse_manifest(&bytes, Some(mt)) {
            node.children = info
                .edges
                .into_iter()
                .map(|e| {
                    let child_mt = (e.kind == EdgeKind::Manifest).then_some(e.media_type);
                    (e.digest, child_mt)
                })
                .collect();
        }
        Ok(node)
    }

    /// Walk from `roots`, each node once, calling `visit` with every node reached and whether
    /// it is present. `seen` carries over between calls when given the same set.
    fn walk(
        &mut self,
        roots: Vec<Key>,
        seen: &mut HashSet<Key>,
        mut visit: impl FnMut(&Digest, bool),
    ) -> Result<()> {
        let mut stack = roots;
        while let Some(key) = stack.pop() {
            if !seen.insert(key.clone()) {
                continue;
            }
            let node = self.load(&key)?;
            visit(&key.0, node.present);
            stack.extend(node.children.iter().cloned());
        }
        Ok(())
    }

    /// [`reachable`], with what was read before reused.
    pub fn reachable(
        &mut self,
        root: &Digest,
        media_type: &str,
    ) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
        let (mut reach, mut missing) = (BTreeSet::new(), BTreeSet::new());
        let root = (root.clone(), Some(media_type.to_owned()));
        self.walk(vec![root], &mut HashSet::new(), |d, present| {
            reach.insert(d.clone());
            if !present {
                missing.insert(d.clone());
            }
        })?;
        Ok((reach, missing))
    }

    /// Everything reachable from any of `roots` (GC's mark): one walk, each node once.
    pub fn mark<'r>(
        &mut self,
        roots: impl IntoIterator<Item = (&'r Digest, &'r str)>,
    ) -> Result<BTreeSet<Digest>> {
        let roots = roots
            .into_iter()
            .map(|(d, mt)| (d.clone(), Some(mt.to_owned())))
            .collect();
        let mut live = BTreeSet::new();
        self.walk(roots, &mut HashSet::new(), |d, _| {
            live.insert(d.clone());
        })?;
        Ok(live)
    }

    /// For each root, the digests below it (itself included) that are absent or in `bad`: the
    /// sets are built bottom-up once per node, so a root costs its own children, not its subtree.
    pub fn lacking<'r>(
        &mut self,
        roots: impl IntoIterator<Item = (&'r Digest, &'r str)>,
        bad: &HashSet<Digest>,
    ) -> Result<Vec<BTreeSet<Digest>>> {
        let mut memo: HashMap<Key, std::rc::Rc<BTreeSet<Digest>>> = HashMap::new();
        let mut out = Vec::new();
        for (d, mt) in roots {
            let root = (d.clone(), Some(mt.to_owned()));
            // Post-order without recursion (an index of 10,000 nested indexes is only a file).
            let mut stack = vec![(root.clone(), false)];
            while let Some((key, expanded)) = stack.pop() {
                if memo.contains_key(&key) {
                    continue;
                }
                let node = self.load(&key)?;
                if !expanded {
                    let children: Vec<Key> = node
                        .children
                        .iter()
                        .filter(|c| !memo.contains_key(*c))
                        .cloned()
                        .collect();
                    stack.push((key, true));
                    stack.extend(children.into_iter().map(|c| (c, false)));
                    continue;
                }
                let mut set = BTreeSet::new();
                if !node.present || bad.contains(&key.0) {
                    set.insert(key.0.clone());
                }
                for c in &node.children {
                    if let Some(s) = memo.get(c) {
                        set.extend(s.iter().cloned());
                    }
                }
                memo.insert(key, std::rc::Rc::new(set));
            }
            out.push(memo.get(&root).map(|s| (**s).clone()).unwrap_or_default());
        }
        Ok(out)
    }
}
