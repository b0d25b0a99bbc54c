#!/usr/bin/env python3
"""The import graph of tugboat's sources, file by file: which file uses an item defined in
which other file (through `use` lines and inline `crate::`/`super::`/`tugboat::` paths,
following `pub use` re-exports to the file that defines the item). Prints the circles
(strongly connected groups of files) and the arrows that run up the floors below.

Usage: scripts/import-graph.py [SRC_DIR] [--edges]
Exits 1 when there is a circle or an upward arrow, so it can guard a change.
"""

import os
import re
import sys
from collections import defaultdict

# Floors, lowest first: a file may use files on its own floor or below, never above.
FLOORS = [
    ("0 foundations", ["errors", "digest", "size", "safe_path", "reference", "pause", "progress"]),
    ("1 parts", ["registry", "artifact", "cache"]),
    ("2 shaping", ["materialize", "policy", "tenancy"]),
    ("3 pipelines", ["pull", "push", "inspect"]),
    ("4 modes", ["warm", "csi", "metrics", "advertise"]),
    ("5 daemon", ["node"]),
    ("6 command line", ["bin"]),
]
FLOOR_OF = {top: i for i, (_, tops) in enumerate(FLOORS) for top in tops}

ITEM = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+|unsafe\s+|const\s+)*"
    r"(struct|enum|fn|trait|type|const|static|mod|union)\s+([A-Za-z_][A-Za-z0-9_]*)",
    re.M,
)
USE = re.compile(r"^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M | re.S)
INLINE = re.compile(r"\b((?:crate|super|tugboat)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
COMMENT = re.compile(r"//[^\n]*")


def module_of(src, path):
    """The module path of a file: ('crate', 'pull', 'fetch') or ('bin', 'cli', ...)."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"],):
        return ("crate",)
    if rel == ["main"]:
        return ("bin",)
    if rel[0] == "cli":
        return ("bin",) + tuple(rel)
    return ("crate",) + tuple(rel)


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` -> [['a','b'], ['a','c','d'], ['a','c','e']]."""
    tree = re.sub(r"\s+", " ", tree)
    tree = re.sub(r"\s*(::|\{|\}|,)\s*", r"\1", tree).strip()
    out = []

    def walk(prefix, text):
        depth, start, parts = 0, 0, []
        for i, ch in enumerate(text):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(text[start:i])
                start = i + 1
        parts.append(text[start:])
        for part in filter(None, parts):
            if "{" in part:
                head, rest = part.split("{", 1)
                walk(prefix + [s for s in head.split("::") if s], rest[:-1])
            else:
                leaf = part.split(" as ")[0]
                out.append(prefix + [s for s in leaf.split("::") if s])

    walk([], tree)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_edges = "--edges" in sys.argv
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    src = os.path.normpath(src)
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[module_of(src, path)] = path

    texts = {m: COMMENT.sub("", open(p, encoding="utf-8").read()) for m, p in files.items()}
    # Test modules inside a file are not part of the graph.
    for m, t in texts.items():
        cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests", t)
        if cut:
            texts[m] = t[: cut.start()]
    defined = {m: {name for _, name in ITEM.findall(t)} for m, t in texts.items()}
    reexports = defaultdict(dict)  # module -> name -> absolute path segments
    uses = defaultdict(list)  # module -> [absolute path segments]

    def absolute(module, segs):
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            base = (module[0],)
            segs = segs[1:]
        elif head == "tugboat":
            base = ("crate",)
            segs = segs[1:]
        elif head == "super":
            base = module
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
        elif head == "self":
            base, segs = module, segs[1:]
        elif module + (head,) in files:
            base = module
        else:
            return None  # an external crate or a prelude name
        return base + tuple(segs)

    for m, t in texts.items():
        for vis, tree in USE.findall(t):
            for segs in expand_use(tree):
                full = absolute(m, segs)
                if full is None:
                    continue
                uses[m].append(full)
                if vis:
                    reexports[m][full[-1]] = full
        for path in INLINE.findall(t):
            full = absolute(m, path.split("::"))
            if full is not None:
                uses[m].append(full)

    def resolve(full, depth=0):
        """The file that defines what `full` names, or None."""
        for cut in range(len(full), 0, -1):
            module = full[:cut]
            if module not in files:
                continue
            rest = full[cut:]
            if not rest or rest[0] == "self":
                return module
            name = rest[0]
            if name in defined[module] and module + (name,) not in files:
                return module
            if name in reexports[module] and depth < 8:
                target = reexports[module][name]
                if target != full:
                    return resolve(target, depth + 1) or module
            return module
        return None

    edges = defaultdict(set)
    for m, paths in uses.items():
        for full in paths:
            target = resolve(full)
            if target and target != m and target in files:
                edges[m].add(target)

    def name(m):
        return os.path.relpath(files[m], src)

    def floor(m):
        top = m[1] if len(m) > 1 and m[0] == "crate" else ("bin" if m[0] == "bin" else None)
        return FLOOR_OF.get(top)

    # Tarjan's strongly connected components.
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if is_parent_child(v, w):
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                sccs.append(sorted(group))

    def is_parent_child(a, b):
        # `mod.rs` re-exporting what its own children define, and children using their
        # parent's items, is how a Rust module is assembled, not a circle between jobs.
        return (len(a) + 1 == len(b) and b[: len(a)] == a) or (
            len(b) + 1 == len(a) and a[: len(b)] == b
        )

    for v in sorted(files):
        if v not in index:
            strong(v)

    upward = []
    for a in sorted(edges):
        for b in sorted(edges[a]):
            fa, fb = floor(a), floor(b)
            if fa is not None and fb is not None and fb > fa:
                upward.append((a, b, fa, fb))

    print(f"files: {len(files)}, arrows: {sum(len(v) for v in edges.values())}")
    print(f"circles: {len(sccs)}")
    for group in sccs:
        print("  " + " <-> ".join(name(m) for m in group))
    print(f"arrows that run up: {len(upward)}")
    for a, b, fa, fb in upward:
        print(f"  {name(a)} (floor {FLOORS[fa][0]}) -> {name(b)} (floor {FLOORS[fb][0]})")
    if show_edges:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{name(a)} -> {name(b)}")
    sys.exit(1 if sccs or upward else 0)


if __name__ == "__main__":
    main()
