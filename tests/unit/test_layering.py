"""The package layering of chime_actors (docs/architecture.md, "Layering").

The import graph between chime_actors' parts (a subpackage, or a top-level
module, is one part) is read from the source with ``ast``, every import
counted (``TYPE_CHECKING`` ones too: a type is a dependency). It must have no
cycle, and every import must go to a part in the same or a lower layer.
"""

from __future__ import annotations

import ast
import collections
from collections.abc import Iterable, Mapping
from pathlib import Path

import chime_actors

PACKAGE = Path(chime_actors.__file__).parent

# Lowest first. A part may import parts of its own layer or of lower layers.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "foundation",
        frozenset(
            {
                "errors",
                "config",
                "logs",
                "metrics",
                "ids",
                "records",
                "protocol",
                "auth",
                "open_files",
                "client",
                "devservices",
            }
        ),
    ),
    ("storage adapters", frozenset({"storage"})),
    ("runtime", frozenset({"runtime"})),
    ("core: presence", frozenset({"presence"})),
    ("core: bus", frozenset({"bus"})),
    ("core: persister", frozenset({"persister"})),
    ("core: handlers", frozenset({"handlers"})),
    ("core: gateway", frozenset({"gateway"})),
    ("core: api", frozenset({"api"})),
    ("process actors", frozenset({"actors"})),
    ("composition root", frozenset({"server", "launcher"})),
    ("tools", frozenset({"bench", "cli", "__main__"})),
)
CORES = frozenset({"gateway", "persister", "api", "bus", "presence", "handlers"})
# The modules of the process actors' cores: they receive their adapters, built in
# one place (actors/wiring.py), and name none of the adapters' factories.
CORE_MODULES = (
    "gateway/core.py",
    "persister/core.py",
    "api/core.py",
    "handlers/core.py",
    "bus/redis_bridge.py",
)
WIRING = "actors/wiring.py"
ADAPTER_FACTORIES = frozenset(
    {
        "make_store",
        "SqliteStore",
        "CassandraStore",
        "MemoryStore",
        "redis_client",
        "RedisIds",
        "RedisLease",
        "RedisFeed",
    }
)


def _part(module: str) -> str | None:
    """The part of chime_actors a dotted module name belongs to (None: not ours)."""
    names = module.split(".")
    if names[0] != "chime_actors" or len(names) < 2:
        return None
    return names[1]


def _imported(tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            # ``from chime_actors import runtime`` names the part in the alias.
            if node.module == "chime_actors":
                yield from (f"chime_actors.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def import_graph(package: Path = PACKAGE) -> dict[tuple[str, str], set[str]]:
    """``(importer, imported)`` part pairs, each with the files that make it."""
    edges: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative == Path("__init__.py"):
            continue  # the package's own docstring and version
        source = relative.parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relatives = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert relatives == [], f"{relative}: relative import (only absolute ones are read)"
        for module in _imported(tree):
            target = _part(module)
            if target is not None and target != source:
                edges[(source, target)].add(str(relative))
    return edges


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one part (Tarjan)."""
    successors: dict[str, set[str]] = collections.defaultdict(set)
    for source, target in edges:
        successors[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(successors.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(sorted(component))

    for root in sorted(successors):
        if root not in index:
            visit(root)
    return found


def _layer_of() -> Mapping[str, int]:
    return {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


def _annotations(tree: ast.AST) -> set[int]:
    """The ids of every node inside a type annotation of ``tree``."""
    roots: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def factories_used(path: Path) -> list[str]:
    """Where the module at ``path`` calls or refers to an adapter's factory.

    A type (``ids: RedisIds | None``), its import and a definition (``def
    redis_client``) are no use; a call is, and so is a reference, as in
    ``partial(RedisFeed, ...)``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing = _annotations(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in typing:
            continue
        if isinstance(node, ast.Name) and node.id in ADAPTER_FACTORIES:
            found.append(f"{node.id} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and node.attr in ADAPTER_FACTORIES:
            found.append(f"{node.attr} (line {node.lineno})")
    return found


def test_the_graph_is_read_from_the_source() -> None:
    edges = import_graph()
    # Known edges, so that a graph read wrong (empty) cannot pass the checks below.
    assert ("actors", "gateway") in edges
    assert ("gateway", "runtime") in edges


def test_no_import_cycle_between_parts() -> None:
    edges = import_graph()
    found = cycles(edges)
    detail = [
        f"{a} -> {b}: {sorted(edges[(a, b)])}"
        for component in found
        for a in component
        for b in component
        if (a, b) in edges
    ]
    assert found == [], "\n".join(detail)


def test_every_part_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    unplaced = (packages | modules) - set(_layer_of())
    assert unplaced == set(), "place these in LAYERS and in docs/architecture.md, Layering"


def test_no_part_imports_one_above_it() -> None:
    layer = _layer_of()
    upward = [
        f"{a} ({LAYERS[layer[a]][0]}) -> {b} ({LAYERS[layer[b]][0]}): {sorted(files)}"
        for (a, b), files in sorted(import_graph().items())
        if a in layer and b in layer and layer[b] > layer[a]
    ]
    assert upward == []


def test_the_runtime_imports_no_core() -> None:
    above = CORES | {"actors", "server", "launcher", "storage"}
    imports = {
        target: files for (source, target), files in import_graph().items() if source == "runtime"
    }
    assert {t: sorted(f) for t, f in imports.items() if t in above} == {}


def test_no_core_builds_its_adapters() -> None:
    named = {module: factories_used(PACKAGE / module) for module in CORE_MODULES}
    assert {module: uses for module, uses in named.items() if uses} == {}


def test_the_adapters_are_built_in_the_wiring_module() -> None:
    # The scan above passes on a module it cannot read right; this shows it can fail.
    named = " ".join(factories_used(PACKAGE / WIRING))
    for factory in ("make_store", "redis_client", "RedisIds", "RedisLease", "RedisFeed"):
        assert factory in named


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The checks above pass on an empty result; this shows the finder can fail them.
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")]
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles([("a", "b"), ("b", "c")]) == []
