#!/usr/bin/env python3
"""Fail on import cycles between the modules of src/.

Builds the module graph from the paths the code names — `use crate::a::…`,
`crate::a::f(…)`, `use crate::{a, b::c}`, and `super::…` resolved against the
file's own module — with comments left out, and reports every strongly
connected component of more than one module.

Levels checked:
  * the top-level modules (`src/a.rs` or `src/a/…` is module `a`);
  * the submodules of each folder module (`src/a/b.rs` and `src/a/b/…` are
    `a::b`), among themselves.

Usage: scripts/check-imports.py [--src DIR] [--verbose] [--self-test]
Exit 0 when there is no cycle, 1 when there is (each printed with one
file and line per arrow), 2 on bad usage.
"""

import argparse
import os
import re
import sys
from collections import defaultdict

PATH = re.compile(r"\b((?:crate|super)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))*)(::\{)?")


def module_path(src, file):
    """`src/a/b.rs` -> ['a', 'b']; `src/a/mod.rs` -> ['a']; lib.rs -> []."""
    rel = os.path.relpath(file, src)[: -len(".rs")].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return []
    return rel


def strip_comments(text):
    """Remove // and /* */ comments and string literals (keeps line count)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_heads(text, start):
    """The first segment of each path in a `{…}` group starting at `start`."""
    depth, i, heads, cur = 1, start, [], ""
    expect_head = True
    while i < len(text) and depth:
        c = text[i]
        if c == "{":
            depth += 1
            expect_head = False
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 1:
            expect_head = True
            cur = ""
        elif depth == 1 and expect_head:
            if c.isalnum() or c == "_":
                cur += c
            elif cur:
                heads.append(cur)
                expect_head = False
        i += 1
    if cur and expect_head:
        heads.append(cur)
    return heads


def targets(own, text):
    """(line, absolute module path) for every crate/super path in `text`."""
    for m in PATH.finditer(text):
        parts = m.group(1).split("::")
        line = text.count("\n", 0, m.start()) + 1
        if parts[0] == "crate":
            base, rest = [], parts[1:]
        else:
            base = list(own)
            rest = parts
            while rest and rest[0] == "super":
                base = base[:-1]
                rest = rest[1:]
        if m.group(2):
            for head in group_heads(text, m.end()):
                if head != "self":
                    yield line, base + rest + [head]
                else:
                    yield line, base + rest
        else:
            yield line, base + rest


def root_aliases(src):
    """`pub use a::{b, c};` / `pub use a::b;` in lib.rs: `crate::b` is `crate::a::b`."""
    aliases = {}
    lib = os.path.join(src, "lib.rs")
    if not os.path.exists(lib):
        return aliases
    text = strip_comments(open(lib, encoding="utf-8").read())
    for m in re.finditer(r"pub\s+use\s+([A-Za-z_][A-Za-z0-9_:]*?)::(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))\s*;", text):
        base = m.group(1).split("::")
        if base[0] == "crate":
            base = base[1:]
        names = [n.strip() for n in (m.group(2) or m.group(3)).split(",") if n.strip()]
        for n in names:
            if " as " in n:
                n, alias = [x.strip() for x in n.split(" as ")]
            else:
                alias = n
            aliases[alias] = base + [n]
    return aliases


def sccs(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
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
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def self_test():
    """Check the checker on small trees with and without cycles."""
    import contextlib
    import io
    import tempfile

    cases = [
        # (files, expected exit code)
        ({"lib.rs": "pub mod a; pub mod b;", "a.rs": "use crate::b::X;", "b.rs": "use crate::a::Y;"}, 1),
        ({"lib.rs": "", "a.rs": "// use crate::b::X;\nconst S: &str = \"crate::b\";", "b.rs": "use crate::a::Y;"}, 0),
        ({"lib.rs": "", "a.rs": "use crate::{b::X, c};", "b.rs": "", "c.rs": "fn f() { crate::a::g() }"}, 1),
        ({"lib.rs": "", "a/mod.rs": "mod x; mod y;", "a/x.rs": "use super::y::T;", "a/y.rs": "use super::x::U;"}, 1),
        ({"lib.rs": "", "a/mod.rs": "use self::x::T;", "a/x.rs": "use super::Z;"}, 0),
        ({"lib.rs": "pub use w::{p};", "w/mod.rs": "", "w/p.rs": "use crate::q::A;", "q.rs": "use crate::p::B;"}, 1),
    ]
    failed = 0
    for i, (files, want) in enumerate(cases):
        with tempfile.TemporaryDirectory() as d:
            for name, text in files.items():
                path = os.path.join(d, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
            with contextlib.redirect_stdout(io.StringIO()) as out:
                got = check(d, verbose=False)
            if got != want:
                failed += 1
                print(f"self-test case {i}: exit {got}, expected {want}\n{out.getvalue()}")
    print("self-test passed" if not failed else f"self-test: {failed} case(s) failed")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src"))
    ap.add_argument("--verbose", action="store_true", help="print the whole graph")
    ap.add_argument("--self-test", action="store_true", help="check the checker and exit")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    return check(os.path.normpath(args.src), args.verbose)


def check(src, verbose):
    files = []
    for root, _, names in os.walk(src):
        files += [os.path.join(root, f) for f in names if f.endswith(".rs")]
    modules = {tuple(module_path(src, f)) for f in files}
    aliases = root_aliases(src)
    # (level prefix) -> graph among the children of that prefix
    graphs = defaultdict(lambda: defaultdict(dict))
    for f in sorted(files):
        own = module_path(src, f)
        if not own:
            continue
        text = strip_comments(open(f, encoding="utf-8").read())
        for line, path in targets(own, text):
            # a module re-exported at the root under its old name
            if path and path[0] in aliases and (path[0],) not in modules:
                path = aliases[path[0]] + path[1:]
            # the longest prefix of `path` that is a module
            while path and tuple(path) not in modules:
                path = path[:-1]
            if not path:
                continue
            # compare at each level where the two paths share a parent
            for depth in range(min(len(own), len(path))):
                if own[:depth] != path[:depth]:
                    break
                a, b = own[depth], path[depth]
                if a != b:
                    where = f"{os.path.relpath(f, os.path.dirname(src))}:{line}"
                    graphs[tuple(own[:depth])][a].setdefault(b, where)
                    break
    cycles = 0
    for prefix in sorted(graphs):
        g = graphs[prefix]
        nodes = set(g) | {b for a in g for b in g[a]}
        edges = defaultdict(set, {a: set(g[a]) for a in g})
        label = "::".join(prefix) or "crate"
        if verbose:
            for a in sorted(g):
                print(f"{label}: {a} -> {', '.join(sorted(g[a]))}")
        for comp in sccs(nodes, edges):
            if len(comp) < 2:
                continue
            cycles += 1
            print(f"cycle in {label}: {' <-> '.join(comp)}")
            for a in comp:
                for b in sorted(g.get(a, {})):
                    if b in comp:
                        print(f"    {a} -> {b}   ({g[a][b]})")
    if cycles:
        print(f"{cycles} import cycle(s)")
        return 1
    print("no import cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
