"""How walkable the package is, measured the same way before and after a refactor.

Reads ``edgedl/`` as text and syntax trees (runs none of it) and writes JSON with:

- the longest functions (lines from ``def`` to the last statement) and how many exceed 60 lines;
- the widest signatures (parameters, ``self``/``cls`` not counted) and how many take more than 8;
- import cycles between edgedl's modules, counting imports inside functions too (a lazy
  import still makes one module depend on another's internals);
- private names imported across modules (``from edgedl.x import _helper``);
- the ``duplicates`` tool's pair count over ``edgedl/`` when the tool is on PATH.

    python benchmarks/codebase.py                      # the working tree
    python benchmarks/codebase.py --rev bf6eb5f        # a commit, read through git
    python benchmarks/codebase.py --rev bf6eb5f -o benchmarks/results/codebase_before.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_tree(base: Path) -> dict[str, ast.Module]:
    trees = {}
    for path in sorted((base / "edgedl").rglob("*.py")):
        trees[module_name(path, base)] = (path.relative_to(base).as_posix(), ast.parse(path.read_text()))
    return trees


def functions(trees):
    for module, (file, tree) in trees.items():
        stack = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}{child.name}"
                    args = child.args
                    params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                    params = [p for p in params if p not in ("self", "cls")]
                    lines = child.end_lineno - child.lineno + 1
                    yield {"where": f"{file}:{child.lineno}", "function": f"{module}.{name}",
                           "lines": lines, "params": len(params)}
                    stack.append((child, f"{name}."))
                elif isinstance(child, ast.ClassDef):
                    stack.append((child, f"{prefix}{child.name}."))


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def imports(trees):
    """Edges module -> edgedl module, and the private names imported across modules."""
    names = set(trees)
    edges: dict[str, set[str]] = {m: set() for m in trees}
    private = []
    for module, (file, tree) in trees.items():
        is_package = file.endswith("__init__.py")
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = resolve(module, node, is_package)
                if source is None:
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    # ``from edgedl import _io`` imports a module, not a private name in one.
                    targets.append((sub, None) if sub in names else (source, alias.name))
            for target, name in targets:
                while target and target not in names:
                    target = target.rpartition(".")[0]
                if not target or not target.startswith("edgedl") or target == module:
                    continue
                edges[module].add(target)
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append(f"{module} imports {target}.{name}")
    return edges, sorted(set(private))


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

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
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    # A package importing its own submodules (edgedl.data -> edgedl.data.mnist) is how packages
    # re-export; cycles made only of that and the submodule reaching back are still listed.
    return sorted(out)


def duplicates(base: Path):
    tool = shutil.which("duplicates")
    if tool is None:
        return None
    out = subprocess.run([tool, "--repo", str(base / "edgedl"), "--most", "200", "--seconds", "120"],
                         capture_output=True, text=True, cwd=base / "edgedl").stdout
    first = out.splitlines()[0] if out else ""
    match = re.match(r"(\d+) pairs?", first)
    rows = [line for line in out.splitlines() if re.match(r"\s*D\d+ ", line)]
    return {"pairs": int(match.group(1)) if match else 0, "summary": first,
            "shape_only": sum("shape" in r for r in rows), "rows": rows[:40]}


def measure(base: Path) -> dict:
    trees = read_tree(base)
    funcs = list(functions(trees))
    edges, private = imports(trees)
    loops = cycles(edges)
    longest = sorted(funcs, key=lambda f: -f["lines"])
    widest = sorted(funcs, key=lambda f: -f["params"])
    return {
        "modules": len(trees),
        "lines": sum(len(Path(base / f).read_text().splitlines()) for f, _ in trees.values()),
        "functions": len(funcs),
        "functions_over_60_lines": sum(f["lines"] > 60 for f in funcs),
        "functions_over_8_params": sum(f["params"] > 8 for f in funcs),
        "longest": longest[:12],
        "widest": widest[:12],
        "import_cycles": loops,
        "modules_in_cycles": sum(len(c) for c in loops),
        "private_imports_across_modules": len(private),
        "private_imports": private,
        "duplicates": duplicates(base),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a git revision to measure instead of the working tree")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON here (default: stdout)")
    args = parser.parse_args()
    if args.rev:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["git", "worktree", "add", "--detach", tmp, args.rev], cwd=ROOT,
                           check=True, capture_output=True)
            try:
                result = measure(Path(tmp))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=ROOT, capture_output=True)
        rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    else:
        result = measure(ROOT)
        rev = "working tree"
    result = {"revision": rev, **result}
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    print(f"{rev}: {result['functions_over_60_lines']} functions over 60 lines "
          f"(longest {result['longest'][0]['lines']}: {result['longest'][0]['function']}), "
          f"{result['functions_over_8_params']} over 8 parameters "
          f"(widest {result['widest'][0]['params']}: {result['widest'][0]['function']}), "
          f"{len(result['import_cycles'])} import cycles over {result['modules_in_cycles']} modules, "
          f"{result['private_imports_across_modules']} private names imported across modules, "
          f"duplicates: {result['duplicates'] and result['duplicates']['summary']}", file=sys.stderr)


if __name__ == "__main__":
    main()
