"""The layout tells the architecture (STYLE.md §2, §14), checked from the source text.

Every ``.py`` file under ``broker/``, ``lua/`` and ``node/`` is parsed with :mod:`ast`,
never imported, and every import statement counts: at module level, under
``if TYPE_CHECKING:``, inside a function. Three rules:

* ``broker`` and ``lua`` use neither each other nor ``node`` (``node`` uses both).
* Inside each package (``node`` with its subpackages) the modules import each other
  without a cycle.
* No file is longer than :data:`MAX_LINES`.

How an import becomes an edge of the module graph: ``from .x import y`` is an import of
module ``x``, and of ``y`` too when ``y`` is a submodule of ``x``; ``from . import y``
is an import of submodule ``y`` when there is one, else of the package itself (its
``__init__``); ``from ..room import Name`` is an import of ``room``'s ``__init__``
(which imports room's modules). Importing a module also runs the ``__init__`` of every
package above it that the importer is not itself inside, so ``from ..room._m import X``
is an import of ``room`` as well as of ``room._m``. A module's own packages are already
being imported, so they are edges only when named explicitly (``from .. import X``,
``from . import Name``): then they are real edges back up, and the ``__init__`` importing
that module closes a cycle.

Not seen: ``importlib.import_module`` and other imports by computed name.

The bottom half checks the checker: each rule runs on small trees written to
``tmp_path``, clean and with one bad import added, so the suite shows the rules can fail.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
"""The repository's top level, installed as the ``moonwire`` package."""
TOP = "moonwire"
PACKAGES = ("broker", "lua", "node")
FORBIDDEN = {"broker": ("node", "lua"), "lua": ("node", "broker")}
"""What each lower package must not import."""
MAX_LINES = 500


# ---------------------------------------------------------------- the checker


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module, as written at ``path:line`` of module ``source``."""

    source: str
    target: str
    path: Path
    line: int
    implicit: bool = False
    """A package ``__init__`` run on the way to ``target``'s submodule, not named itself."""

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def python_files(root: Path, package: str) -> list[Path]:
    return sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(root: Path, path: Path) -> str:
    parts = [TOP, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known_modules(root: Path) -> set[str]:
    """Every module and package under the checked packages, by dotted name."""
    return {module_name(root, path) for package in PACKAGES for path in python_files(root, package)}


def _ancestors(module: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(root: Path, path: Path, modules: set[str]) -> Iterator[Import]:
    """Every module ``path`` imports, resolved to a dotted name (relative imports too).

    A relative import that climbs above the top package resolves to a name starting
    with ``..`` so that rules see it leave the tree.
    """
    source = module_name(root, path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _with_parents(Import(source, alias.name, path, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                up = node.level - 1
                if up >= len(parts):
                    base = "." * (up - len(parts) + 2)  # beyond the top: not a module of ours
                    yield Import(source, base + (node.module or ""), path, node.lineno)
                    continue
                base = ".".join(parts[:len(parts) - up])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            named = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
            # The names that are not submodules come from the module (or __init__) itself;
            # a submodule's import runs that __init__ anyway, unless it is the importer's own.
            if len(named) < len(node.names):
                yield from _with_parents(Import(source, target, path, node.lineno))
            for submodule in named:
                yield from _with_parents(Import(source, submodule, path, node.lineno))


def _with_parents(imp: Import) -> Iterator[Import]:
    """``imp``, preceded by the packages its target's import runs first: those above the
    target that the importer is not inside (its own packages are already importing)."""
    own = {*_ancestors(imp.source), imp.source}
    for parent in _ancestors(imp.target):
        if parent not in own and parent != TOP:
            yield Import(imp.source, parent, imp.path, imp.line, implicit=True)
    yield imp


def layering_violations(root: Path) -> list[str]:
    """``broker`` or ``lua`` importing a package it must not, one line per import,
    naming the file and line."""
    modules = known_modules(root)
    problems = []
    for package, forbidden in FORBIDDEN.items():
        home = f"{TOP}.{package}"
        for path in python_files(root, package):
            for imp in imports_of(root, path, modules):
                if imp.implicit:
                    continue
                target = imp.target
                if target.startswith("."):
                    problems.append(f"{imp.where(root)}: relative import climbs out of {TOP} ({target!r})")
                elif target == TOP:
                    problems.append(f"{imp.where(root)}: imports {TOP} itself (it re-exports {TOP}.node), "
                                    f"from {package}")
                elif any(target == name or target.startswith(f"{name}.")
                         for other in forbidden for name in (f"{TOP}.{other}", other)):
                    problems.append(f"{imp.where(root)}: {package} imports {target}")
                elif target.startswith(f"{TOP}.") and not (target == home or target.startswith(f"{home}.")):
                    problems.append(f"{imp.where(root)}: {package} imports {target}, outside {home}")
    return problems


Graph = dict[str, dict[str, Import]]
"""module -> imported module -> the import statement shown for that edge."""


def import_graph(root: Path, package: str) -> tuple[Graph, list[str]]:
    """The import graph among the modules of ``package`` (imports of anything else are
    left out), and the imports inside it that name no module there."""
    modules = known_modules(root)
    home = f"{TOP}.{package}"
    graph: Graph = {}
    unresolved = []
    for path in python_files(root, package):
        source = module_name(root, path)
        edges = graph.setdefault(source, {})
        for imp in imports_of(root, path, modules):
            if imp.target == home or imp.target.startswith(f"{home}."):
                if imp.target in modules:
                    first = edges.get(imp.target)
                    # Show the import that names the module, the earliest one.
                    if first is None or (imp.implicit, imp.line) < (first.implicit, first.line):
                        edges[imp.target] = imp
                else:
                    unresolved.append(f"{imp.where(root)}: no module {imp.target}")
    return graph, unresolved


def _components(graph: Graph) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component))
    return found


def _shortest_cycle(graph: Graph, members: list[str]) -> list[str]:
    """A shortest cycle inside one strongly connected component, as a closed path
    (first and last the same module)."""
    inside = set(members)
    best: list[str] = []
    for start in members:
        previous: dict[str, str] = {}
        queue = deque([start])
        last = None
        while queue and last is None:  # breadth first: the first way back is a shortest
            node = queue.popleft()
            for succ in sorted(graph[node]):
                if succ == start:
                    last = node
                    break
                if succ in inside and succ not in previous:
                    previous[succ] = node
                    queue.append(succ)
        if last is None:
            continue
        back = []
        while last != start:
            back.append(last)
            last = previous[last]
        cycle = [start, *reversed(back), start]
        if not best or len(cycle) < len(best):
            best = cycle
    return best


@dataclass(frozen=True, slots=True)
class Cycle:
    path: list[str]
    """A shortest cycle, closed: ``path[0] == path[-1]``."""
    members: list[str]
    """Every module in the circle it belongs to (the strongly connected component)."""


def find_cycles(graph: Graph) -> list[Cycle]:
    """One :class:`Cycle` per group of modules that import each other in a circle."""
    return [Cycle(_shortest_cycle(graph, members), members) for members in _components(graph)
            if len(members) > 1 or members[0] in graph[members[0]]]


def describe(root: Path, graph: Graph, cycle: Cycle) -> str:
    """The cycle, each step with the file and line of its import."""
    steps = [cycle.path[0]]
    for source, target in zip(cycle.path, cycle.path[1:]):
        imp = graph[source][target]
        how = " (runs that package's __init__ first)" if imp.implicit else ""
        steps.append(f"  -> {target}   [{imp.where(root)}{how}]")
    if len(cycle.members) > len(cycle.path) - 1:
        steps.append(f"  ({len(cycle.members)} modules in this circle: {', '.join(cycle.members)}; "
                     "the imports among them:")
        inside = set(cycle.members)
        steps.extend(f"     {source} -> {target}   [{imp.where(root)}]" for source in cycle.members
                     for target, imp in sorted(graph[source].items()) if target in inside)
        steps[-1] += ")"
    return "\n".join(steps)


def long_files(root: Path, package: str, limit: int = MAX_LINES) -> list[str]:
    lengths = ((path, len(path.read_bytes().splitlines())) for path in python_files(root, package))
    return [f"{path.relative_to(root)}: {n} lines" for path, n in lengths if n > limit]


# ---------------------------------------------------------------- the repository


def test_broker_and_lua_import_neither_each_other_nor_node() -> None:
    problems = layering_violations(ROOT)
    assert not problems, "imports against the layering (node uses broker and lua, not back):\n" + "\n".join(problems)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph, unresolved = import_graph(ROOT, package)
    assert not unresolved, "imports of modules that do not exist:\n" + "\n".join(unresolved)
    cycles = [describe(ROOT, graph, cycle) for cycle in find_cycles(graph)]
    assert not cycles, f"import cycles in {package}/ (TYPE_CHECKING and local imports count):\n" + "\n".join(cycles)


@pytest.mark.parametrize("package", PACKAGES)
def test_files_fit_in_one_reading(package: str) -> None:
    offenders = long_files(ROOT, package)
    assert not offenders, f"files over {MAX_LINES} lines in {package}/:\n" + "\n".join(offenders)


def test_the_checker_sees_every_package() -> None:
    # The graph covers the installed packages: a folder with an __init__ is a package.
    graph, _ = import_graph(ROOT, "node")
    assert {"moonwire.node", "moonwire.node.processes", "moonwire.node.workflows"} <= set(graph)
    graph, _ = import_graph(ROOT, "lua")
    assert "moonwire.lua._state" in graph and "moonwire.lua._unit" in graph["moonwire.lua"]


# ---------------------------------------------------------------- the checker, checked


def _tree(root: Path, files: dict[str, str]) -> Path:
    base = {
        "broker/__init__.py": "from ._client import Client\n",
        "broker/_client.py": "import asyncio\n",
        "lua/__init__.py": "from ._state import LuaState\nfrom ._values import to_lua\n",
        "lua/_state.py": "from ._values import to_lua\nfrom . import _gotime\n",
        "lua/_values.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._errors import E\n",
        "lua/_errors.py": "",
        "lua/_gotime.py": "",
        "node/__init__.py": "from ._node import Node\nfrom .room import Name\n",
        "node/_node.py": "from moonwire.broker import Client\nfrom moonwire.lua import LuaState\nfrom .room import Name\n",
        "node/room/__init__.py": "from ._a import Name\n",
        "node/room/_a.py": "from ._b import helper\nfrom ..other import Thing\n",
        "node/room/_b.py": "def helper():\n    from .. import _util\n",
        "node/_util.py": "",
        "node/other/__init__.py": "from ._thing import Thing\n",
        "node/other/_thing.py": "",
    }
    for name, text in {**base, **files}.items():
        path = root / name
        if text is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _cycles(root: Path, package: str) -> tuple[Graph, list[Cycle]]:
    graph, unresolved = import_graph(root, package)
    assert not unresolved
    return graph, find_cycles(graph)


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, {})
    assert layering_violations(root) == []
    for package in PACKAGES:
        assert _cycles(root, package)[1] == []
        assert long_files(root, package) == []


@pytest.mark.parametrize(("name", "text", "wanted"), [
    ("broker/_bad.py", "from moonwire.node import Node\n", "broker/_bad.py:1: broker imports moonwire.node"),
    ("broker/_bad.py", "import x\nimport moonwire.lua._state\n", "broker/_bad.py:2: broker imports moonwire.lua._state"),
    ("broker/_bad.py", "from ..lua import to_lua\n", "broker/_bad.py:1: broker imports moonwire.lua"),
    ("broker/_bad.py", "from .. import node\n", "broker/_bad.py:1: broker imports moonwire.node"),
    ("broker/_bad.py", "from .. import __version__\n", "broker/_bad.py:1: imports moonwire itself"),
    ("broker/_bad.py", "from ... import x\n", "broker/_bad.py:1: relative import climbs out"),
    ("broker/_bad.py", "import node\n", "broker/_bad.py:1: broker imports node"),
    ("lua/_bad.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from moonwire.node import Node\n",
     "lua/_bad.py:3: lua imports moonwire.node"),
    ("lua/_bad.py", "def f():\n    from ..broker import Pid\n", "lua/_bad.py:2: lua imports moonwire.broker"),
    ("lua/_bad.py", "from moonwire import broker\n", "lua/_bad.py:1: lua imports moonwire.broker"),
])
def test_checker_finds_a_forbidden_import(tmp_path: Path, name: str, text: str, wanted: str) -> None:
    problems = layering_violations(_tree(tmp_path, {name: text}))
    assert len(problems) == 1 and problems[0].startswith(wanted), problems


def test_checker_allows_node_to_use_both(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"node/_more.py": "from ..broker import Client\nimport moonwire.lua\n"})
    assert layering_violations(root) == []


@pytest.mark.parametrize(("files", "package", "circle"), [
    # A TYPE_CHECKING import counts.
    ({"lua/_errors.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._values import x\n"},
     "lua", ["moonwire.lua._errors", "moonwire.lua._values"]),
    # So does a function-local one.
    ({"lua/_gotime.py": "def now():\n    from ._state import LuaState\n"},
     "lua", ["moonwire.lua._gotime", "moonwire.lua._state"]),
    # A name (not a submodule) from the own package is an edge to its __init__.
    ({"lua/_gotime.py": "from . import LuaState\n"},
     "lua", ["moonwire.lua", "moonwire.lua._gotime", "moonwire.lua._state"]),
    ({"broker/_client.py": "from moonwire.broker import Client\n"}, "broker", ["moonwire.broker", "moonwire.broker._client"]),
    # ... as is `from .. import x` from a subpackage, x a name of the package above.
    ({"node/other/_thing.py": "from .. import Node\n"},
     "node", ["moonwire.node", "moonwire.node._node", "moonwire.node.other", "moonwire.node.other._thing",
              "moonwire.node.room", "moonwire.node.room._a"]),
    # `from ..room import Name` goes through room's __init__, which imports room's modules.
    ({"node/other/_thing.py": "from ..room import Name\n"},
     "node", ["moonwire.node.other", "moonwire.node.other._thing", "moonwire.node.room", "moonwire.node.room._a"]),
    # Importing a submodule of another package runs that package's __init__ first.
    ({"node/other/_thing.py": "from ..room._b import helper\n"},
     "node", ["moonwire.node.other", "moonwire.node.other._thing", "moonwire.node.room", "moonwire.node.room._a"]),
    # A module importing itself.
    ({"node/_util.py": "from . import _util\n"}, "node", ["moonwire.node._util"]),
])
def test_checker_finds_a_cycle(tmp_path: Path, files: dict[str, str], package: str, circle: list[str]) -> None:
    root = _tree(tmp_path, files)
    graph, cycles = _cycles(root, package)
    assert len(cycles) == 1, cycles
    assert cycles[0].members == circle
    text = describe(root, graph, cycles[0])
    assert f"[{next(iter(files))}:" in text, text  # the bad import's file and line are named


def test_checker_reports_each_step_of_a_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "lua/_errors.py": "import json\nfrom ._values import x\n",
        "lua/_values.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._errors import E\n",
    })
    graph, (cycle,) = _cycles(root, "lua")
    assert describe(root, graph, cycle) == ("moonwire.lua._errors\n"
                                            "  -> moonwire.lua._values   [lua/_errors.py:2]\n"
                                            "  -> moonwire.lua._errors   [lua/_values.py:3]")


def test_checker_names_the_whole_circle(tmp_path: Path) -> None:
    # Two ways round: the shortest is shown, and every module caught in the circle named.
    root = _tree(tmp_path, {
        "lua/_errors.py": "from ._gotime import x\nfrom ._values import y\n",
        "lua/_gotime.py": "from ._values import z\n",
        "lua/_values.py": "from ._errors import E\n",
    })
    graph, (cycle,) = _cycles(root, "lua")
    assert cycle.path == ["moonwire.lua._errors", "moonwire.lua._values", "moonwire.lua._errors"]
    assert cycle.members == ["moonwire.lua._errors", "moonwire.lua._gotime", "moonwire.lua._values"]
    assert describe(root, graph, cycle).endswith(
        "(3 modules in this circle: moonwire.lua._errors, moonwire.lua._gotime, moonwire.lua._values; "
        "the imports among them:\n"
        "     moonwire.lua._errors -> moonwire.lua._gotime   [lua/_errors.py:1]\n"
        "     moonwire.lua._errors -> moonwire.lua._values   [lua/_errors.py:2]\n"
        "     moonwire.lua._gotime -> moonwire.lua._values   [lua/_gotime.py:1]\n"
        "     moonwire.lua._values -> moonwire.lua._errors   [lua/_values.py:1])")


def test_checker_tells_submodules_from_names(tmp_path: Path) -> None:
    # `from . import _gotime` in lua/_state.py (in the clean tree) is an import of
    # _gotime, not of lua/__init__: no cycle. `from .room import _b, Name` is both.
    root = _tree(tmp_path, {"node/_node.py": "from .room import _b, Name\n"})
    graph, _ = import_graph(root, "node")
    assert set(graph["moonwire.node._node"]) == {"moonwire.node.room", "moonwire.node.room._b"}
    graph, _ = import_graph(root, "lua")
    assert set(graph["moonwire.lua._state"]) == {"moonwire.lua._gotime", "moonwire.lua._values"}


def test_checker_finds_imports_of_missing_modules(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"node/room/_a.py": "from ._gone import x\n"})
    _, unresolved = import_graph(root, "node")
    assert unresolved == ["node/room/_a.py:1: no module moonwire.node.room._gone"]


def test_checker_finds_long_files(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"lua/_long.py": "x = 1\n" * (MAX_LINES + 1), "lua/_ok.py": "x = 1\n" * MAX_LINES})
    assert long_files(root, "lua") == [f"lua/_long.py: {MAX_LINES + 1} lines"]
    assert long_files(root, "broker") == []
