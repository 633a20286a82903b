"""Print the shape of basin's code: the import graph between its modules (packages, file-level
cycles, imports of our own code inside functions) and function lengths (median, 90th percentile,
the longest ten). Reads the source with ``ast``; runs nothing.

    python bench/code_shape.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("basin", "analysis", "audit", "unlearn")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool, known) -> list[str]:
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            keep = len(parts) - node.level + (1 if is_package else 0)
            base = ".".join(parts[:keep] + ([base] if base else []))
        subs = [f"{base}.{alias.name}" for alias in node.names]
        names = [n for n in subs if n in known] if all(n in known for n in subs) else [base] + subs
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def graph():
    known = modules()
    edges, deferred = {m: set() for m in known}, []
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = [t for t in _resolve(node, module, is_package, known) if t != module]
            if not targets:
                continue
            if id(node) in top or _in_type_checking(tree, node):
                edges[module].update(targets)
            else:
                deferred.append((module, node.lineno, sorted(set(targets))))
    return known, edges, deferred


def _in_type_checking(tree, node) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, (ast.If, ast.Try)) and any(node is n for n in ast.walk(stmt)):
            return True
    return False


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def functions():
    rows = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return rows


def main() -> None:
    known, edges, deferred = graph()
    pkg_edges = sorted({(a.split(".")[0], b.split(".")[0]) for a, ts in edges.items() for b in ts
                        if a.split(".")[0] != b.split(".")[0]})
    pkg_deferred = sorted({(a.split(".")[0], b.split(".")[0]) for a, _, ts in deferred for b in ts
                           if a.split(".")[0] != b.split(".")[0]})
    print(f"modules: {len(known)} in {sorted({m.split('.')[0] for m in known})}")
    print("package arrows (file level):", ", ".join(f"{a}->{b}" for a, b in pkg_edges))
    print("package arrows (inside functions):", ", ".join(f"{a}->{b}" for a, b in pkg_deferred) or "none")
    found = cycles(edges)
    print(f"file-level import cycles: {len(found)}")
    for comp in found:
        print("  ", " <-> ".join(comp))
    every = {m: set(ts) for m, ts in edges.items()}
    for module, _, targets in deferred:
        every[module].update(targets)
    found = cycles(every)
    print(f"cycles counting in-function imports too: {len(found)}")
    for comp in found:
        print("  ", " <-> ".join(comp))
    print(f"in-function imports of our own code: {len(deferred)}")
    for module, line, targets in deferred:
        print(f"   {module}:{line} -> {', '.join(targets)}")
    rows = functions()
    lengths = np.array([n for n, _ in rows])
    print(f"functions: {len(rows)}; median {np.median(lengths):.0f} lines, "
          f"90th percentile {np.percentile(lengths, 90):.0f}, over 100 lines: {(lengths > 100).sum()}")
    for package in PACKAGES:
        own = np.array([n for n, where in rows if where.startswith(package + "/")])
        if own.size:
            print(f"   {package:9s} {own.size:4d} functions, median {np.median(own):.0f}, "
                  f"p90 {np.percentile(own, 90):.0f}")
    print("longest ten:")
    for n, where in sorted(rows, reverse=True)[:10]:
        print(f"   {n:4d}  {where}")


if __name__ == "__main__":
    main()
