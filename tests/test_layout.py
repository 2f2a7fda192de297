"""Import-graph checks of the package layout: pure `ast`, nothing of automix is imported.

Every .py file under automix/, kernels/ (automix.kernels.*) and dashboards/ (automix.dashboards.*)
is parsed; every import (nested ones too, except under `if TYPE_CHECKING:`) becomes an edge.
Strings (lazy registries, importlib.import_module) are not followed. Checked:
  1. no import cycle between our modules;
  2. automix.bench is imported only from automix/bench/, automix/commands/ and automix/testing.py
     (its re-export of the generated problems), automix.testing only from automix/bench/;
  3. optuna's private API (any `_name` component) only in automix/search/_optuna_compat.py;
  4. layering: each layer imports only the layers in ALLOWED below (no torch in automix/search,
     study reaches trial only through the `automix.trial` package entry point);
  5. every nested import of our own modules has a `# lazy: <reason>` comment on its line or the
     line above;
  6. no cycle between packages either (the layers below, e.g. quant -> kernels -> quant);
  7. a dependency's private attributes (`study._get_trials`: any `obj._name` whose name no module
     of ours defines) are read only in the compat modules (COMPAT);
plus: every import of `automix...` resolves to a module of the tree.

Run:  python -m pytest tests/test_layout.py -q     or     python tests/test_layout.py  (report)
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"automix": "automix", "automix.kernels": "kernels", "automix.dashboards": "dashboards"}

LAYERS = ["config", "reporting", "arch", "quant", "kernels", "methods", "trial", "search", "study", "builtin",
          "export", "commands", "cli", "dashboards", "bench", "testing", "automix"]
ALL = set(LAYERS)
# layer -> layers it may import (its own layer is always allowed).
ALLOWED = {
    "config": set(),
    "reporting": set(),  # a running trial's reports to its driver: a leaf, torch-free (Ray workers import it)
    "search": {"config"},
    "arch": {"config"},
    "quant": {"config", "arch", "kernels"},
    "kernels": {"config", "arch"},
    "methods": {"config", "arch", "quant", "kernels"},
    "builtin": {"config", "arch"},  # a leaf below trial (pretraining, which reads trial.data, is in trial/)
    "trial": {"config", "reporting", "arch", "quant", "kernels", "methods", "builtin"},
    "study": {"config", "reporting", "arch", "search", "builtin", "trial"},
    "export": ALL - {"bench", "testing"},
    "dashboards": ALL - {"bench", "testing"},
    "commands": ALL - {"testing"},
    "cli": ALL - {"testing"},
    "automix": ALL - {"testing"},
    "bench": ALL,
    "testing": ALL,
}
ENTRY_POINT_ONLY = {("study", "trial")}  # (importer, imported): only the package __init__ itself
NO_TORCH = {"search"}
OPTUNA_COMPAT = "automix.search._optuna_compat"
# the modules that may use dependencies' private API (one per dependency)
COMPAT = {"automix/search/_optuna_compat.py", "automix/study/_ray_compat.py", "automix/trial/_torch_compat.py"}
LAZY_NOTE = re.compile(r"#\s*lazy:\s*\S")


@dataclass(frozen=True)
class Imp:
    src: str            # importing module
    where: str          # "file:line"
    module: str         # absolute module of the statement
    name: str | None    # imported name for `from module import name`
    nested: bool        # inside a function
    lazy_note: bool     # carries a `# lazy: reason` comment


def module_name(prefix: str, rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join([prefix, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def parse_imports(mod: str, is_pkg: bool, source: str, file: str) -> list[Imp]:
    lines = source.splitlines()
    package = mod if is_pkg else mod.rpartition(".")[0]
    out: list[Imp] = []

    def lazy(node: ast.stmt) -> bool:
        span = lines[max(node.lineno - 2, 0): node.end_lineno or node.lineno]
        return any(LAZY_NOTE.search(line) for line in span)

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.expr, ast.arguments)):  # imports are statements: skip
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in (
                    getattr(child.test, "id", None), getattr(child.test, "attr", None)):
                for stmt in child.orelse:  # the `else:` branch of `if TYPE_CHECKING:` still runs
                    visit_stmt(stmt, nested)
            else:
                visit_stmt(child, nested)

    def visit_stmt(node: ast.AST, nested: bool) -> None:
        where = f"{file}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out.extend(Imp(mod, where, a.name, None, nested, lazy(node)) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.extend(Imp(mod, where, base, a.name, nested, lazy(node)) for a in node.names)
        visit(node, nested or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source, filename=file), False)
    return out


def build(files: dict[str, tuple[str, str]]) -> tuple[set[str], list[Imp]]:
    """files: relative path (under a SOURCES folder, e.g. "automix/a.py") -> (prefix, source)."""
    modules, imports = set(), []
    for rel, (prefix, source) in files.items():
        sub = rel.split("/", 1)[1]
        mod = module_name(prefix, sub)
        modules.add(mod)
        imports += parse_imports(mod, sub.endswith("__init__.py"), source, rel)
    return modules, imports


@lru_cache(maxsize=None)
def sources() -> dict[str, tuple[str, str]]:
    """relative path -> (module prefix, source) of every file of the tree."""
    files = {}
    for prefix, folder in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            files[path.relative_to(ROOT).as_posix()] = (prefix, path.read_text(encoding="utf-8"))
    return files


@lru_cache(maxsize=None)
def tree() -> tuple[set[str], list[Imp]]:
    return build(sources())


def target(imp: Imp, modules: set[str]) -> str:
    """The module an import loads: `from a.b import c` goes to a.b.c when that is a module."""
    if imp.name and f"{imp.module}.{imp.name}" in modules:
        return f"{imp.module}.{imp.name}"
    return imp.module


def own_edges(modules: set[str], imports: list[Imp]) -> list[tuple[Imp, str]]:
    """(import, target module) for imports of our own modules, one per statement and target."""
    edges = {(i.src, i.where, t): (i, t) for i in imports if (t := target(i, modules)) in modules}
    return list(edges.values())


def layer(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) > 1 and parts[1] == "__main__":
        return "cli"  # `python -m automix` is the command line
    return "automix" if len(parts) == 1 else parts[1]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (a -> ... -> a) per strongly connected component that has one."""
    def reach(v: str) -> set[str]:
        seen, todo = set(), list(graph.get(v, ()))
        while todo:
            if (w := todo.pop()) not in seen:
                seen.add(w)
                todo.extend(graph.get(w, ()))
        return seen

    reachable = {v: reach(v) for v in graph}
    components = {frozenset(w for w in reachable[v] if v in reachable.get(w, ()))
                  for v in graph if v in reachable[v]}
    cycles = []
    for comp in components:  # shortest path from the smallest module back to itself (BFS)
        start = min(comp)
        paths, seen = [[start]], set()
        while start not in graph[paths[0][-1]]:
            path = paths.pop(0)
            for w in sorted(graph[path[-1]] & comp - seen):
                seen.add(w)
                paths.append(path + [w])
        cycles.append(paths[0] + [start])
    return sorted(cycles)


# ---- checks: each returns a list of messages, empty when fine ----

def check_cycles(modules, imports) -> list[str]:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for imp, t in own_edges(modules, imports):
        graph.setdefault(imp.src, set()).add(t)
        where.setdefault((imp.src, t), imp.where)
    return ["cycle: " + " -> ".join(c) + "  (" + ", ".join(where[e] for e in zip(c, c[1:])) + ")"
            for c in find_cycles(graph)]


def check_bench_and_testing(modules, imports) -> list[str]:
    bad = []
    for imp, t in own_edges(modules, imports):
        src, dst = layer(imp.src), layer(t)
        # testing.py re-exports the generated problems (automix.bench.problems) it once held
        if dst == "bench" and src not in ("bench", "commands", "testing"):
            bad.append(f"{imp.where}: {imp.src} imports {t} (bench only from bench/, commands/ and testing.py)")
        if dst == "testing" and src not in ("bench", "testing"):
            bad.append(f"{imp.where}: {imp.src} imports {t} (testing only from bench/)")
    return bad


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def check_optuna_private(modules, imports) -> list[str]:
    return [f"{i.where}: {i.src} imports optuna private API {i.module}"
            + (f" : {i.name}" if i.name else "") + f" (only in {OPTUNA_COMPAT})"
            for i in imports if i.src != OPTUNA_COMPAT and i.module.split(".")[0] == "optuna"
            and any(map(_private, i.module.split(".") + ([i.name] if i.name else [])))]


def check_layers(modules, imports) -> list[str]:
    bad = [f"{m}: no layer (first component not in LAYERS)" for m in sorted(modules)
           if layer(m) not in ALLOWED]
    for imp, t in own_edges(modules, imports):
        src, dst = layer(imp.src), layer(t)
        if src == dst or src not in ALLOWED or dst not in ALLOWED:
            continue
        if dst not in ALLOWED[src]:
            bad.append(f"{imp.where}: {imp.src} ({src}) imports {t} ({dst}): not allowed")
        elif (src, dst) in ENTRY_POINT_ONLY and t != f"automix.{dst}":
            bad.append(f"{imp.where}: {imp.src} imports {t}: {src} uses only automix.{dst}")
    bad += [f"{i.where}: {i.src} imports {i.module} ({layer(i.src)} works without torch)"
            for i in imports if layer(i.src) in NO_TORCH and i.module.split(".")[0] == "torch"]
    return bad


def check_lazy_notes(modules, imports) -> list[str]:
    return [f"{imp.where}: nested import of {t} in {imp.src} lacks '# lazy: <reason>'"
            for imp, t in own_edges(modules, imports) if imp.nested and not imp.lazy_note]


def check_resolved(modules, imports) -> list[str]:
    return [f"{i.where}: {i.src} imports {target(i, modules)}: no such module in the tree"
            for i in imports if i.module.split(".")[0] == "automix" and target(i, modules) not in modules]


def package_graph(modules, imports) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp, t in own_edges(modules, imports):
        if layer(imp.src) != layer(t):
            graph.setdefault(layer(imp.src), set()).add(layer(t))
    return graph


def check_package_cycles(modules, imports) -> list[str]:
    graph = package_graph(modules, imports)
    out = []
    for c in find_cycles(graph):
        where = [next(i.where for i, t in own_edges(modules, imports) if layer(i.src) == a and layer(t) == b)
                 for a, b in zip(c, c[1:])]
        out.append("package cycle: " + " -> ".join(c) + "  (" + ", ".join(where) + ")")
    return out


def private_reads(files: dict[str, tuple[str, str]]) -> list[str]:
    """`obj._name` reads of names no module of ours defines, outside the compat modules."""
    ours: set[str] = set()
    trees = {rel: ast.parse(src, filename=rel) for rel, (_, src) in files.items()}
    for t in trees.values():
        for node in ast.walk(t):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ours.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                ours.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                ours.add(node.attr)
            elif isinstance(node, ast.arg):
                ours.add(node.arg)
            elif isinstance(node, ast.alias):
                ours.add(node.asname or node.name.split(".")[-1])
    bad = []
    for rel, t in trees.items():
        if rel in COMPAT:
            continue
        for node in ast.walk(t):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _private(node.attr) \
                    and node.attr not in ours:
                bad.append(f"{rel}:{node.lineno}: .{node.attr} is a dependency's private API (only in {sorted(COMPAT)})")
    return bad


def check_private_attributes(modules, imports) -> list[str]:
    return private_reads(sources())


CHECKS = [check_cycles, check_bench_and_testing, check_optuna_private, check_layers,
          check_lazy_notes, check_resolved, check_package_cycles, check_private_attributes]


def _run(check) -> None:
    __tracebackhide__ = True
    if bad := check(*tree()):
        raise AssertionError(f"{len(bad)} problem(s):\n" + "\n".join(bad))


def test_no_import_cycles(): _run(check_cycles)
def test_bench_and_testing_stay_out_of_the_library(): _run(check_bench_and_testing)
def test_optuna_private_api_only_in_compat_module(): _run(check_optuna_private)
def test_layering(): _run(check_layers)
def test_nested_own_imports_say_why(): _run(check_lazy_notes)
def test_own_imports_resolve(): _run(check_resolved)
def test_no_package_cycles(): _run(check_package_cycles)
def test_dependencies_private_api_only_in_compat_modules(): _run(check_private_attributes)


def test_checker_on_synthetic_sources():
    space = """from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import torch
def f():
    from ..config import C
    from optuna.samplers import _base
    import optuna.trial._state
    from optuna import __version__
    import torch.nn
    import automix.trial  # lazy: registry
"""
    fake = {
        "automix/__init__.py": "from automix.config import C\n",
        "automix/config.py": "import automix.search.space\n",
        "automix/search/__init__.py": "from . import space\nfrom .space import S\n",
        "automix/search/space.py": space,
        "automix/search/_optuna_compat.py": "from optuna.samplers._base import _x\n",
        "kernels/a.py": "def g():\n    # lazy: measured 0.3 s at start-up\n    import automix.bench.x\n",
        "automix/bench/x.py": "from automix.testing import fake\n",
        "automix/trial/__init__.py": "", "automix/trial/models.py": "",
        "automix/study/run.py": "from automix.trial import run\nfrom automix.trial import models\n",
    }
    modules, imports = build({k: (("automix.kernels" if k.startswith("kernels") else "automix"), v)
                              for k, v in fake.items()})
    assert "automix.kernels.a" in modules and "automix.search" in modules
    edges = {(i.src, t) for i, t in own_edges(modules, imports)}
    assert ("automix.search", "automix.search.space") in edges  # relative, `from . import module`
    assert ("automix.search.space", "automix.config") in edges  # relative, two levels, nested
    assert not any(i.module == "torch" for i in imports)  # TYPE_CHECKING block ignored
    cycles = check_cycles(modules, imports)
    assert len(cycles) == 1 and "automix.config -> automix.search.space -> automix.config" in cycles[0]
    private = check_optuna_private(modules, imports)
    assert len(private) == 2 and all("space.py:" in m for m in private), private
    lazy = check_lazy_notes(modules, imports)
    assert len(lazy) == 1 and "space.py:5" in lazy[0]  # kernels/a.py's note is on the line above
    assert any("kernels/a.py:3" in m for m in check_bench_and_testing(modules, imports))
    assert any("no such module" in m for m in check_resolved(modules, imports))  # automix.testing
    layers = check_layers(modules, imports)  # study/run.py:1 (the trial package itself) is fine
    assert sorted(m.split(": ")[0] for m in layers) == [
        "automix/config.py:1", "automix/search/space.py:10", "automix/search/space.py:9",
        "automix/study/run.py:2", "kernels/a.py:3"], layers
    assert "torch" in layers[-1] and "uses only automix.trial" in layers[-2]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]] and find_cycles({"a": {"b"}, "b": set()}) == []
    # package cycles: config -> search -> config (through space.py)
    assert any("config -> search -> config" in m for m in check_package_cycles(modules, imports))
    reads = private_reads({"automix/search/s.py": ("automix", "class A:\n    def __init__(self): self._x = 1\n"
                                                              "    def _own(self): return self._x\n"
                                                              "def f(study, a):\n    a._own()\n"
                                                              "    return study._get_trials()\n"),
                           "automix/search/_optuna_compat.py": ("automix", "def g(s):\n    return s._storage\n")})
    assert reads == ["automix/search/s.py:6: ._get_trials is a dependency's private API "
                     f"(only in {sorted(COMPAT)})"], reads


def main() -> int:
    modules, imports = tree()
    deps: dict[str, set[str]] = {name: set() for name in LAYERS + sorted({layer(m) for m in modules})}
    for imp, t in own_edges(modules, imports):
        deps[layer(imp.src)].add(layer(t))
    print(f"{len(modules)} modules, {len(imports)} import names\n\nlayer -> layers it imports:")
    for name, used in deps.items():
        print(f"  {name:<12} -> {', '.join(sorted(used - {name})) or '-'}")
    cycles = check_cycles(modules, imports)
    print("\ncycles: " + ("none" if not cycles else "\n  " + "\n  ".join(cycles)))
    failed = bool(cycles)
    for check in CHECKS[1:]:
        bad = check(modules, imports)
        failed |= bool(bad)
        print(f"\n{check.__name__}: " + ("ok" if not bad else f"{len(bad)}\n  " + "\n  ".join(bad)))
    print("\nFAILED" if failed else "\nOK")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
