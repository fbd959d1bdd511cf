#!/usr/bin/env python3
"""Import circles between the files of src/ (issue #29): a file may name its own ancestors,
but no chain of `crate::…` / `super::…` paths may lead from a file back to itself.

Each .rs file is a module (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`); a path `crate::x::y::z`
names the longest module prefix that is a file (`x::y`), and a module that uses its child
(`bucket::Bucket`) depends on it. Test code (`#[cfg(test)] mod …` to the
end of the file, by this crate's convention) is left out. Prints each circle and exits 1 if any.

    python3 .ci/cycles.py [SRC_DIR]
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
src = os.path.normpath(src)

modules = {}  # module path (tuple) -> file
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel in (["lib"], ["main"]):
            rel = []
        if rel and rel[0] == "cli":  # the binary's modules: a crate of their own
            continue
        modules[tuple(rel)] = os.path.join(root, f)

path_re = re.compile(r"\b(crate|super)((?:::\w+)+)")
group_re = re.compile(r"\b(crate|super)((?:::\w+)*)::\{([^}]*)\}", re.S)


def resolve(here, kind, segs):
    """The file-module a path names (the longest prefix that is a module)."""
    if kind == "crate":
        base = []
    else:
        base = list(here[:-1])
        while segs and segs[0] == "super":
            base = base[:-1]
            segs = segs[1:]
    full = base + segs
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in modules:
            return tuple(full[:n])
    return None


edges = {m: set() for m in modules}
for m, f in modules.items():
    text = open(f, encoding="utf-8").read()
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+", text, re.M)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"//[^\n]*", "", text)
    refs = []
    for g in group_re.finditer(text):
        prefix = [s for s in g.group(2).split("::") if s]
        for item in g.group(3).split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                refs.append((g.group(1), prefix + [s for s in item.split("::") if s and s != "{"]))
            elif item == "self":
                refs.append((g.group(1), prefix))
    for p in path_re.finditer(text):
        refs.append((p.group(1), [s for s in p.group(2).split("::") if s]))
    # A module's own children, named without `crate::`/`self::` (`bucket::Bucket`, `use bucket::…`).
    for child in modules:
        if len(child) == len(m) + 1 and child[: len(m)] == m:
            if re.search(r"(?<![\w:])(?:self::)?" + child[-1] + r"::", text):
                edges[m].add(child)
    for kind, segs in refs:
        t = resolve(m, kind, segs)
        if t is None or t == m or m[: len(t)] == t:  # itself or an ancestor
            continue
        edges[m].add(t)

# Strongly connected components (Tarjan).
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)


sys.setrecursionlimit(10000)
for v in modules:
    if v not in index:
        strong(v)

name = lambda m: "::".join(m) or "crate"
for comp in sccs:
    members = set(comp)
    print("circle: " + ", ".join(sorted(name(m) for m in comp)))
    for m in sorted(comp):
        for t in sorted(edges[m] & members):
            print(f"  {name(m)} -> {name(t)}")
if sccs:
    sys.exit(1)
print(f"no import circles among {len(modules)} files")
