#!/usr/bin/env python3
"""Module import graph of src/: reports import circles between top-level modules and between files.

An edge A -> B means file A names module B by path: `use crate::b::...`, `crate::b::x()` inline,
`super::...`, `self::...`, or a bare path through a child module or a module imported by `use`.
`mod b;` declarations are not edges (a parent contains its children; it depends on them only when it
names them). Test code (`tests.rs`, `*_tests.rs`, `tests/` folders, inline `#[cfg(test)] mod ... { }`)
and comments are ignored unless `--tests` is given. main.rs (and its `cli` and `demo` modules) is its own
crate; `pgveil::` counts as `crate::`. The workspace's other crates (crates/) import nothing of pgveil.

Usage: scripts/import_graph.py [--tests] [--edges] [--dot] [SRC_DIR]
  default: print the cycles between top-level modules and between files of different top-level modules,
  each with the edges that close it, then the file cycles inside one module (parent <-> child); exit
  status 1 when there is a cycle between top-level modules.
  --edges: also print every top-level edge with the file pairs behind it, and the edges of every cycle.
  --dot: print the top-level graph in Graphviz dot format and exit.
"""

import os
import re
import signal
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments(text):
    """Removes // and /* */ comments, keeping string literals (naively: "..." with escapes)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == '"':
            # A string literal: blank it (paths in strings are not imports). Raw strings r#"..."# are rare
            # enough in src/ and contain no `crate::`.
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'" and i + 2 < n and (text[i + 2] == "'" or (text[i + 1] == "\\" and "'" in text[i + 2 : i + 12])):
            # A char literal such as '"' or '\n' (lifetimes like 'a are left alone).
            j = text.index("'", i + 2) if text[i + 1] == "\\" else i + 2
            out.append("' '")
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_cfg_test(text):
    """Removes `#[cfg(test)]` items written inline: `mod x { ... }` blocks and single items up to `;` or `}`."""
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        j = m.end()
        # Skip the item: up to the first `;` at depth 0, or the matching `}` of the first `{`.
        depth = 0
        while j < len(text):
            ch = text[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif ch == ";" and depth == 0:
                j += 1
                break
            j += 1
        i = j


def is_test_file(rel):
    parts = rel.split(os.sep)
    name = parts[-1]
    return name == "tests.rs" or name.endswith("_tests.rs") or "tests" in parts[:-1]


def module_of(rel):
    """src-relative file path -> module path tuple (lib.rs -> ())."""
    p = rel[:-3].split(os.sep)
    if p == ["lib"] or p == ["main"]:
        return ()
    if p[-1] == "mod":
        p = p[:-1]
    return tuple(p)


def expand_use(body):
    """`a::{b, c::{d, e as f}, self}` -> [(path segments, alias)]."""
    body = re.sub(r"\s+as\s+", " AS ", body)
    body = re.sub(r"\s+", "", body.replace(" AS ", "\x00")).replace("\x00", " as ")
    results = []

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def rec(prefix, s):
        for part in split_top(s):
            if "{" in part:
                head, rest = part.split("{", 1)
                rest = rest[: rest.rfind("}")]
                rec(prefix + [x for x in head.split("::") if x], rest)
            else:
                alias = None
                if " as " in part:
                    part, alias = part.split(" as ", 1)
                segs = [x for x in part.split("::") if x]
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                results.append((prefix + segs, alias))

    rec([], body)
    return results


class Graph:
    def __init__(self, src, tests):
        self.src = src
        self.files = {}  # module tuple -> rel path
        self.text = {}
        for root, _, names in os.walk(src):
            for name in names:
                if not name.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(root, name), src)
                if not tests and is_test_file(rel):
                    continue
                if rel == "main.rs":
                    mod = ("<main>",)
                else:
                    mod = module_of(rel)
                self.files[mod] = rel
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    t = strip_comments(f.read())
                self.text[mod] = t if tests else strip_cfg_test(t)
        self.edges = defaultdict(set)  # file -> files

    def resolve(self, segs):
        """Longest prefix of segs that is a module file, or None."""
        for k in range(len(segs), 0, -1):
            if tuple(segs[:k]) in self.files:
                return tuple(segs[:k])
        return None

    def absolute(self, mod, segs, scope):
        """Turns a path as written in module `mod` into absolute segments, or None for external paths."""
        if not segs:
            return None
        head = segs[0]
        base = [] if mod == ("<main>",) else list(mod)
        if head in ("crate", "pgveil"):
            return segs[1:]
        if head == "self":
            return base + segs[1:]
        if head == "super":
            b = base
            while segs and segs[0] == "super":
                b = b[:-1]
                segs = segs[1:]
            return b + segs
        if head in scope:
            return list(scope[head]) + segs[1:]
        return None

    def build(self):
        for mod, text in self.text.items():
            scope = {}
            base = [] if mod == ("<main>",) else list(mod)
            for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*;", text):
                child = tuple(base + [m.group(1)])
                if child in self.files or True:
                    scope[m.group(1)] = child
            targets = set()
            uses = list(re.finditer(r"\buse\s+([^;]+);", text))
            for u in uses:
                for segs, alias in expand_use(u.group(1)):
                    ab = self.absolute(mod, segs, scope)
                    if ab is None:
                        continue
                    r = self.resolve(ab)
                    if r is not None:
                        targets.add(r)
                        if tuple(ab) in self.files and (alias or (segs and segs[-1])):
                            scope[alias or ab[-1]] = tuple(ab)
            body = re.sub(r"\buse\s+[^;]+;", "", text)
            for m in re.finditer(r"(?<![A-Za-z0-9_:])(" + IDENT + r")((?:::" + IDENT + r")+)", body):
                segs = [m.group(1)] + [s for s in m.group(2).split("::") if s]
                ab = self.absolute(mod, segs, scope)
                if ab is None:
                    continue
                r = self.resolve(ab)
                if r is not None:
                    targets.add(r)
            targets.discard(mod)
            self.edges[mod] |= targets


def sccs(nodes, edges):
    """Tarjan's strongly connected components (iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def top(mod):
    return mod[0] if mod else "lib"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    src = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    g = Graph(src, "--tests" in flags)
    g.build()

    top_edges = defaultdict(set)
    why = defaultdict(list)
    for a, bs in g.edges.items():
        for b in bs:
            if top(a) != top(b) and a != () and b != ():
                top_edges[top(a)].add(top(b))
                why[(top(a), top(b))].append((g.files[a], g.files[b]))

    if "--dot" in flags:
        print("digraph pgveil {")
        for a in sorted(top_edges):
            for b in sorted(top_edges[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return 0

    if "--edges" in flags:
        print("top-level edges:")
        for (a, b), pairs in sorted(why.items()):
            print(f"  {a} -> {b}: " + ", ".join(f"{x}->{y}" for x, y in sorted(pairs)))
        print()

    nodes = {top(m) for m in g.files if m != ()}
    top_cycles = sccs(nodes, top_edges)
    print(f"top-level module cycles: {len(top_cycles)}")
    for comp in top_cycles:
        print(f"  cycle of {len(comp)}: {', '.join(comp)}")
        members = set(comp)
        for (a, b), pairs in sorted(why.items()):
            if a in members and b in members:
                print(f"    {a} -> {b}: " + ", ".join(f"{x}->{y}" for x, y in sorted(pairs)))

    file_nodes = {m for m in g.files if m != ()}
    file_edges = {a: {b for b in bs if b != ()} for a, bs in g.edges.items() if a != ()}
    file_cycles = sccs(file_nodes, file_edges)
    across = [c for c in file_cycles if len({top(m) for m in c}) > 1]
    inside = [c for c in file_cycles if len({top(m) for m in c}) == 1]
    print(f"file cycles across top-level modules: {len(across)}")
    for comp in across:
        members = set(comp)
        print(f"  cycle of {len(comp)} files: {', '.join(g.files[m] for m in comp)}")
        for a in comp:
            for b in sorted(file_edges.get(a, ())):
                if b in members:
                    print(f"    {g.files[a]} -> {g.files[b]}")
    # A parent module naming its children and children using their parent's types is ordinary Rust; listed
    # for reference, without edges unless --edges.
    print(f"file cycles inside one top-level module: {len(inside)}")
    for comp in inside:
        members = set(comp)
        print(f"  {top(comp[0])}: {', '.join(g.files[m] for m in comp)}")
        if "--edges" in flags:
            for a in comp:
                for b in sorted(file_edges.get(a, ())):
                    if b in members:
                        print(f"    {g.files[a]} -> {g.files[b]}")
    return 1 if top_cycles else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
