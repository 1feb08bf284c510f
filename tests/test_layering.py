"""The library never imports streamlit; the CLI is installed and fast to start; no module of
``skin_core`` is part of an import cycle, and lower layers never import upper ones.

The import graph is read with :mod:`ast` from the source, not by importing: **every** import
counts, at module level, inside functions (the usual way to hide a cycle from Python's import
machinery) and under ``if TYPE_CHECKING:``. A function-level import still ties the two modules
together: neither can be read, tested or moved without the other, and a cycle only fails later
(at call time) instead of at import time. Imports built from strings at run time
(``importlib.import_module(f"skin_core.cli.{name}")``, how the CLI finds its verbs) are not
seen.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import skin_core

#: Layers, lowest first. A module belongs to the layer of its longest matching prefix; a module
#: may import its own layer and the layers below it, never one above. Chosen from the imports as
#: they are: ``analysis`` sits below ``models`` and ``training`` because training reports its
#: metrics with ``analysis.metrics``; ``models.bundle`` serves (it loads the meta predictors),
#: so it sits with ``predict`` rather than with ``models.registry``.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("skin_core", "skin_core.constants", "skin_core.errors", "skin_core.io",
              "skin_core.progress", "skin_core.access")),
    ("data", ("skin_core.data",)),
    ("analysis", ("skin_core.analysis",)),
    ("models", ("skin_core.models",)),
    ("training", ("skin_core.training",)),
    ("meta", ("skin_core.meta",)),
    ("serving", ("skin_core.models.bundle", "skin_core.predict", "skin_core.explain",
                 "skin_core.served", "skin_core.retrieval", "skin_core.indexing",
                 "skin_core.evaluation")),
    ("application", ("skin_core.study", "skin_core.report", "skin_core.demo", "skin_core.jobs",
                     "skin_core.workspace", "skin_core.app", "skin_core.app_support",
                     "skin_core.pipeline", "skin_core.runs")),
    ("cli", ("skin_core.cli", "skin_core.__main__")),
)

#: Upward imports that exist in the code today, each with its reason. Remove an entry when the
#: import goes (the test fails on entries that no longer exist, so the list stays true).
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    # The study runs every step through the CLI verb itself (skin_core.cli.invoke), so the
    # study and the command line cannot drift apart (docs/architecture.md). Moving `invoke`
    # (and the verb table) into a module of the application layer would remove it.
    ("skin_core.study", "skin_core.cli"): "study steps run CLI verbs in-process",
}

#: Import cycles that exist in the code today (edges to break), each with its reason. Same
#: rule: an entry that no longer closes a cycle fails the test.
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}  # none today (the last, meta/features.py
# <-> meta/referral.py through function-level imports, is gone: the ensemble features live in
# referral.py alone)


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """Module -> {imported module of the same package: first line}, from every ``import``
    statement anywhere in each file (module level, functions, ``TYPE_CHECKING`` blocks)."""
    modules = _modules(root, package)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from mod import x`, mod
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in modules else name
                           for a in node.names]
            for t in targets:
                if t == package or t.startswith(package + "."):
                    target = resolve(t)
                    if target and target != mod:
                        edges.setdefault(target, node.lineno)
        graph[mod] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix matching ``module`` (-1: none)."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(Path(skin_core.__file__).parent, "skin_core")


def test_the_graph_sees_function_level_and_package_imports(graph):
    # a function-level import inside a handler, and `from skin_core.meta import ...`
    assert "skin_core.meta" in graph["skin_core.cli.meta"]
    assert "skin_core.meta.io" in graph["skin_core.meta.evaluate"]
    assert "skin_core.meta.io" in graph["skin_core.models.bundle"]  # inside functions


def test_the_guard_finds_a_cycle_hidden_in_function_level_imports(tmp_path):
    # the old meta cycle: features.py and referral.py imported each other inside functions
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "meta" / "__init__.py").write_text("")
    (pkg / "meta" / "features.py").write_text(
        "def arrays():\n    from pkg.meta.referral import _entropy\n    return _entropy\n")
    (pkg / "meta" / "referral.py").write_text(
        "def _entropy():\n    pass\n\n\ndef frame():\n"
        "    from pkg.meta.features import arrays  # one implementation for both\n")
    (pkg / "meta" / "io.py").write_text("from . import features\nfrom .referral import frame\n")
    g = import_graph(pkg, "pkg")
    assert g["pkg.meta.io"] == {"pkg.meta.features": 1, "pkg.meta.referral": 2}
    assert import_cycles(g) == [["pkg.meta.features", "pkg.meta.referral"]]


def test_no_module_is_part_of_an_import_cycle(graph):
    known = {e for e in KNOWN_CYCLE_EDGES if e[1] in graph.get(e[0], {})}
    stale = sorted(set(KNOWN_CYCLE_EDGES) - known)
    assert not stale, f"KNOWN_CYCLE_EDGES lists imports that are gone, remove them: {stale}"
    pruned = {m: {t: line for t, line in edges.items() if (m, t) not in known}
              for m, edges in graph.items()}
    cycles = import_cycles(pruned)
    detail = [" <-> ".join(c) + ": " + "; ".join(
        f"{m} imports {t} (line {pruned[m][t]})" for m in c for t in pruned[m] if t in c)
        for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)
    for a, b in known:  # each known edge really closes a cycle (else it is not needed)
        assert any({a, b} <= set(c) for c in import_cycles(graph)), (a, b)


def test_every_module_has_a_layer(graph):
    lost = sorted(m for m in graph if layer_of(m) < 0)
    assert not lost, f"modules without a layer (add them to LAYERS): {lost}"


def test_lower_layers_never_import_upper_ones(graph):
    upward = {(m, t): line for m, edges in graph.items() for t, line in edges.items()
              if layer_of(t) > layer_of(m)}
    stale = sorted(set(KNOWN_UPWARD) - set(upward))
    assert not stale, f"KNOWN_UPWARD lists imports that are gone, remove them: {stale}"
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]}), line {line}"
           for (m, t), line in sorted(upward.items()) if (m, t) not in KNOWN_UPWARD]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_importing_all_of_skin_core_does_not_import_streamlit():
    code = (
        "import importlib, pkgutil, sys, skin_core\n"
        "for m in pkgutil.walk_packages(skin_core.__path__, 'skin_core.'):\n"
        "    if m.name != 'skin_core.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k == 'streamlit' or k.startswith('streamlit.'))\n"
        "print(len(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(skin_core.__path__, "skin_core.")
             if m.name != "skin_core.__main__"]
    assert "skin_core.data.images" in names
    for name in names:
        importlib.import_module(name)


def test_cli_help_lists_verbs_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "skin_core", "--help"], capture_output=True,
                         text=True, check=True)
    assert "data" in out.stdout and "demo-data" in out.stdout


def test_cli_help_does_not_import_torch():
    code = ("import sys\nfrom skin_core.cli import build_parser\nbuild_parser()\n"
            "print('torch' in sys.modules, 'lightgbm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
