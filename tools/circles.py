#!/usr/bin/env python3
"""Import circles between the files of a crate: file A -> file B when A names `crate::b::...`
(or `super::b`, `self::b`) in code. Prints each strongly connected component of size > 1.
usage: circles.py CRATE_SRC_DIR [...]"""
import os, re, sys

def modpath(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)

def analyse(src):
    files = {}
    for d, _, fs in os.walk(src):
        for f in fs:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                files[modpath(src, p)] = p
    mods = set(files)
    edges = {m: set() for m in mods}
    # re-exports: (module, name) -> child module that defines it
    reexp = {}
    for m, p in files.items():
        t = open(p).read()
        for mt in re.finditer(r"pub(?:\(crate\))?\s+use\s+(?:self::)?(\w+)::(\{[^}]*\}|\w+)", t, re.S):
            child = m + (mt.group(1),)
            if child in mods:
                for name in re.findall(r"\w+", mt.group(2)):
                    reexp[(m, name)] = child
    for m, p in files.items():
        text = "\n".join(l for l in open(p).read().split("\n") if not l.strip().startswith("//"))
        # strip #[cfg(test)] mod tests { ... } roughly: cut at "#[cfg(test)]"
        i = text.find("#[cfg(test)]")
        if i >= 0:
            text = text[:i]
        refs = set()
        for mt in re.finditer(r"\bcrate((?:::\w+)+)", text):
            refs.add(tuple(mt.group(1).split("::")[1:]))
        for mt in re.finditer(r"\bsuper((?:::\w+)+)", text):
            base = m[:-1]
            refs.add(base + tuple(mt.group(1).split("::")[1:]))
        for mt in re.finditer(r"use\s+crate::\{([^}]*)\}", text, re.S):
            for part in re.split(r",", mt.group(1)):
                part = part.strip().split("::")
                if part and part[0]:
                    refs.add(tuple(part))
        for mt in re.finditer(r"use\s+super::\{([^}]*)\}", text, re.S):
            base = m[:-1]
            for part in mt.group(1).split(","):
                part = part.strip().split("::")
                if part and part[0]:
                    refs.add(base + tuple(part) if part[0] != "self" else base)
        # a parent's own use of a child module (re-exports and `mod` lines are not uses)
        own = m if files[m].endswith(("mod.rs", "lib.rs", "main.rs")) else None
        if own is not None:
            for line in text.split("\n"):
                ls = line.strip()
                if ls.startswith(("pub use", "pub(crate) use", "mod ", "pub mod", "pub(crate) mod")):
                    continue
                for mt in re.finditer(r"(?<![:\w])(?:self::)?(\w+)::", ls):
                    if own + (mt.group(1),) in mods:
                        refs.add(own + (mt.group(1),))
        for r in refs:
            # longest prefix that is a module
            for k in range(len(r), 0, -1):
                if r[:k] in mods:
                    t = r[:k]
                    if k < len(r) and (t, r[k]) in reexp:
                        t = reexp[(t, r[k])]
                    if t != m and t != ():
                        edges[m].add(t)
                    break
    return edges

def sccs(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    for v in edges:
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]

total = 0
for src in sys.argv[1:]:
    for c in sccs(analyse(src)):
        total += 1
        print(f"{src}: circle of {len(c)}: " + ", ".join(sorted("::".join(x) or "crate" for x in c)))
print(f"{total} circle(s)")
