#!/usr/bin/env python3
"""Fails when files of a crate import each other in a circle.

A file is a module; it depends on another when it names it by path (`crate::a::b`,
`super::b`, `child::c`, in `use` or inline), test modules left out. A module and the
modules inside it referring to each other (`mod child;` and `use super::*`) are one
module's inside, not a circle; a circle among the modules inside one, or through two
modules neither of which is inside the other, is.

    python3 .ci/circles.py [ROOT]
"""
import os
import re
import sys

CRATES = ["spec", "image", "registry", "runtime", "gateway", "node", "cli"]


def module_of(src, path):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def without_tests(text):
    m = re.search(r"\n#\[cfg\(test\)\]\s*\nmod \w+ \{", text)
    text = text[: m.start()] if m else text
    text = re.sub(r"//[^\n]*", "", text)
    # `pub(in crate::a)` says who may see an item, not what it uses.
    return re.sub(r"pub\(in [^)]*\)", "pub", text)


def edges_of(src):
    files = [
        os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".rs")
    ]
    modules = {module_of(src, f): f for f in files}

    def existing(path):
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in modules:
                return tuple(path[:n])
        return None

    edges = {m: set() for m in modules}
    for m, f in modules.items():
        with open(f) as fh:
            text = without_tests(fh.read())
        children = set(re.findall(r"\bmod (\w+);", text))
        for ref in re.findall(r"(?<![:\w])((?:crate|super|\w+)(?:::\w+)+)", text):
            parts = ref.split("::")
            if parts[0] in children:
                path = list(m) + parts
            elif parts[0] == "crate":
                path = parts[1:]
            elif parts[0] != "super":
                continue
            else:
                base, i = list(m), 0
                while i < len(parts) and parts[i] == "super":
                    base, i = base[:-1], i + 1
                path = base + parts[i:]
            target = existing(path)
            if target and target != m:
                edges[m].add(target)
    return edges


def components(edges):
    """Strongly connected components (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
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
                out.append(comp)
    return out


def circles(edges):
    found = []
    for comp in components(edges):
        if len(comp) < 2:
            continue
        top = min(comp, key=len)
        inside = all(m[: len(top)] == top for m in comp)
        if inside and sum(1 for m in comp if len(m) == len(top)) == 1:
            # A parent with its descendants: a circle among the descendants alone is one.
            rest = {m: {t for t in edges[m] if t in comp and t != top} for m in comp if m != top}
            found.extend(circles(rest) if rest else [])
            continue
        found.append(sorted(comp))
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    bad = False
    for crate in CRATES:
        src = os.path.join(root, crate, "src")
        if not os.path.isdir(src):
            continue
        for circle in circles(edges_of(src)):
            names = ", ".join("/".join(m) or "(root)" for m in circle)
            print(f"{crate}: import circle: {names}")
            bad = True
    if bad:
        sys.exit(1)
    print("no import circles in " + ", ".join(CRATES))


if __name__ == "__main__":
    main()
