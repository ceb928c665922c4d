"""Loading a project in Wippy's format (wippy-surface §1.1) into validated entries.

Loading never stops at the first mistake: every problem in every file is collected,
so ``moonwire check`` can list them all, each as ``file:line entry-id field: reason``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._checks import host_findings
from ._commands import command_findings
from ._config import CONFIG_FILE
from ._entries import KNOWN_KINDS, Entry, InertEntry, LuaEntry
from ._yaml import LocatedList, LocatedMap, YamlError, interpolate_env, line_of, load_yaml

log = logging.getLogger("moonwire.project")

_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SKIP_DIRS = {"node_modules", "__pycache__", "venv"}
"""Folders the loader never looks in (nor `--watch`), besides hidden ones."""
_LOCK_FILE = "wippy.lock"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a project, located as precisely as we can."""

    file: str
    line: int | None
    entry: str | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        subject = " ".join(part for part in (self.entry, self.field) if part)
        return f"{where} {subject}: {self.reason}" if subject else f"{where}: {self.reason}"


class ProjectInvalid(Exception):
    """The project has problems; ``problems`` lists all of them."""

    def __init__(self, problems: list[Problem], warnings: list[Problem]) -> None:
        self.problems = problems
        self.warnings = warnings
        super().__init__(f"{len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Location:
    file: Path
    line: int


@dataclass(slots=True)
class Project:
    """A loaded, validated project: entries by id, with where each was defined."""

    root: Path
    entries: dict[str, Entry] = field(default_factory=dict)
    locations: dict[str, Location] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[Entry]:
        return [entry for entry in self.entries.values() if entry.kind in kinds]

    def get(self, entry_id: str) -> Entry | None:
        return self.entries.get(entry_id)

    def spawn_hosts(self) -> list[str]:
        """The hosts a node running this project serves spawns on (and announces in its
        heartbeats): its process hosts and its Temporal workers."""
        return sorted(entry.id for entry in self.of_kind("process.host", "temporal.worker"))


def is_entry_id(text: str) -> bool:
    """Whether ``text`` is shaped like an entry id (``namespace:name``) the loader accepts."""
    namespace, colon, name = text.partition(":")
    return bool(colon and _NAMESPACE.match(namespace) and _NAME.match(name))


def qualify(reference: str, namespace: str) -> str:
    """A bare name refers to an entry in the referring file's namespace."""
    return reference if ":" in reference else f"{namespace}:{reference}"


def load_project(root: Path, *, environ: Mapping[str, str] | None = None) -> Project:
    """Load and validate every definition file under ``root``.

    Raises:
        ProjectInvalid: anything is wrong; it lists every problem found.
    """
    loader = _Loader(root.resolve(), dict(os.environ if environ is None else environ))
    project = loader.load()
    for warning in loader.warnings:
        log.warning("%s", warning)
    if loader.problems:
        raise ProjectInvalid(loader.problems, loader.warnings)
    return project


@dataclass(slots=True)
class _Raw:
    """An entry as read, before validation."""

    id: str
    kind: str
    namespace: str
    data: LocatedMap
    file: Path
    line: int
    refs: list[tuple[tuple[Any, ...], str, tuple[str, ...]]] = field(default_factory=list)
    """``(field path, target id, accepted kinds)`` for each reference, qualified."""


class _Loader:
    def __init__(self, root: Path, environ: dict[str, str]) -> None:
        self.root = root
        self.environ = environ
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def problem(self, file: Path, line: int | None, entry: str | None, fld: str | None, reason: str) -> None:
        self.problems.append(Problem(self._rel(file), line, entry, fld, reason))

    # -------------------------------------------------------------- discovery

    def scan_roots(self) -> list[Path]:
        lock = self.root / _LOCK_FILE
        if not lock.is_file():
            return [self.root]
        try:
            document = load_yaml(lock)
        except YamlError as err:
            self.problem(lock, err.line, None, None, err.reason)
            return []
        directories = document.get("directories") if isinstance(document, Mapping) else None
        if not isinstance(directories, Mapping) or not directories:
            return [self.root]
        roots = []
        for key, value in directories.items():
            path = (self.root / str(value)).resolve()
            if not path.is_relative_to(self.root):
                self.problem(lock, line_of(document, ("directories", key)), None, f"directories.{key}",
                             f"{value!r} is outside the project")
            elif path.is_dir():
                roots.append(path)
            else:
                self.problem(lock, line_of(document, ("directories", key)), None, f"directories.{key}",
                             f"directory {value!r} does not exist")
        return roots

    def yaml_files(self) -> Iterator[Path]:
        seen: set[Path] = set()
        for scan_root in self.scan_roots():
            for dirpath, dirnames, filenames in os.walk(scan_root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
                for name in sorted(filenames):
                    path = Path(dirpath, name)
                    if path.suffix not in (".yaml", ".yml") or path in seen:
                        continue
                    if path.parent == self.root and name == CONFIG_FILE:
                        continue  # node configuration, not definitions
                    seen.add(path)
                    yield path

    # -------------------------------------------------------------- reading

    def read_file(self, path: Path) -> list[_Raw]:
        try:
            document = load_yaml(path)
        except YamlError as err:
            self.problem(path, err.line, None, None, err.reason)
            return []
        if not isinstance(document, LocatedMap):
            return []  # not a definition file (e.g. a compose file or a list)
        if "entries" in document:
            items = document["entries"]
            if items is None:
                items = LocatedList()
            if not isinstance(items, LocatedList):
                self.problem(path, line_of(document, ("entries",)), None, "entries", "expected a list of entries")
                return []
        elif "name" in document and "kind" in document:
            # A file holding one entry: its own fields, less the file-level keys.
            entry = LocatedMap({k: v for k, v in document.items() if k not in ("namespace", "version")},
                               line=document.line)
            entry.key_lines = document.key_lines
            items = LocatedList([entry], line=document.line)
            items.item_lines.append(document.line)
        else:
            return []

        namespace = document.get("namespace")
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            reason = "missing namespace" if namespace is None else f"invalid namespace {namespace!r}: use dot-separated [A-Za-z0-9_-] segments"
            self.problem(path, line_of(document, ("namespace",)), None, "namespace", reason)
            return []

        raws = []
        for index, item in enumerate(items):
            line = items.item_lines[index] if index < len(items.item_lines) else items.line
            if not isinstance(item, LocatedMap):
                self.problem(path, line, None, f"entries[{index}]", "expected a mapping with name and kind")
                continue
            name, kind = item.get("name"), item.get("kind")
            label = f"{namespace}:{name}" if isinstance(name, str) else None
            if not isinstance(name, str) or not _NAME.match(name):
                self.problem(path, line_of(item, ("name",)), None, f"entries[{index}].name",
                             "missing name" if name is None else f"invalid name {name!r}")
                continue
            if not isinstance(kind, str) or not kind:
                self.problem(path, line_of(item, ("kind",)), label, "kind", "missing kind")
                continue
            raws.append(_Raw(id=label, kind=kind, namespace=namespace, data=item, file=path, line=item.line))  # type: ignore[arg-type]
        return raws

    # -------------------------------------------------------------- validation

    def build(self, raw: _Raw) -> Entry | None:
        missing: list[tuple[tuple[Any, ...], str]] = []
        interpolate_env(raw.data, self.environ, lambda path, name: missing.append((path, name)))
        for path, name in missing:
            self.problem(raw.file, line_of(raw.data, path), raw.id, _dotted(path), f"environment variable {name} is not set")
        if missing:
            return None
        fields = {key: value for key, value in raw.data.items() if key not in ("name", "kind")}
        model = KNOWN_KINDS.get(raw.kind)
        if model is None:
            self.warnings.append(Problem(self._rel(raw.file), line_of(raw.data, ("kind",)), raw.id, "kind",
                                         f"unknown kind {raw.kind!r}; entry kept, inert"))
            return InertEntry(id=raw.id, kind=raw.kind, **fields)

        if issubclass(model, LuaEntry):
            fields["source"] = self.resolve_source(raw)
            if fields["source"] is None:
                return None
        # References are collected before validation, so they are checked even when
        # the entry itself is invalid.
        for path, kinds in model.references:
            for container, key, value, loc in _slots(fields, path.split(".")):
                if isinstance(value, str) and value:
                    container[key] = qualify(value, raw.namespace)
                    raw.refs.append((loc, container[key], kinds))
        # An unknown key of a known kind is a warning, as Wippy's loader ignores it: the
        # models stay strict (extra="forbid") for code that builds them, and here each
        # key they reject is reported, dropped, and the entry validated again. The loop
        # ends: every round removes at least one key.
        unknown: set[tuple[Any, ...]] = set()
        while True:
            try:
                return model.model_validate({**fields, "id": raw.id, "kind": raw.kind})
            except ValidationError as err:
                errors = err.errors()
                extra = [(loc, line_of(raw.data, loc) or raw.line)
                         for loc in (tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden")
                         if loc not in unknown]
                extra = [(loc, line) for loc, line in extra if _drop(fields, loc)]
                if not extra:
                    for error in errors:
                        loc = tuple(error["loc"])
                        if error["type"] == "extra_forbidden":
                            continue  # reported as a warning
                        message = error["msg"].removeprefix("Value error, ")
                        self.problem(raw.file, line_of(raw.data, loc) or raw.line, raw.id, _dotted(loc) or None,
                                     message)
                    return None
                for loc, line in extra:
                    unknown.add(loc)
                    self.warnings.append(Problem(self._rel(raw.file), line, raw.id, _dotted(loc),
                                                 f"unknown key for kind {raw.kind}; ignored"))

    def resolve_source(self, raw: _Raw) -> Path | None:
        value = raw.data.get("source")
        line = line_of(raw.data, ("source",)) or raw.line
        if value is None:
            self.problem(raw.file, line, raw.id, "source", "missing source (file://path/to/code.lua)")
            return None
        if not isinstance(value, str) or not value.startswith("file://"):
            self.problem(raw.file, line, raw.id, "source", f"expected a file:// path, got {value!r}")
            return None
        rel = value.removeprefix("file://")
        path = (Path(rel) if rel.startswith("/") else raw.file.parent / rel).resolve()
        if not path.is_relative_to(self.root):
            self.problem(raw.file, line, raw.id, "source", f"{value} leaves the project")
            return None
        if not path.is_file():
            self.problem(raw.file, line, raw.id, "source", f"file not found: {self._rel(path)}")
            return None
        return path

    def check_references(self, raws: dict[str, _Raw]) -> None:
        for raw in raws.values():
            for loc, target, kinds in raw.refs:
                line = line_of(raw.data, loc) or raw.line
                other = raws.get(target)
                if other is None:
                    self.problem(raw.file, line, raw.id, _dotted(loc), f"references {target}, which does not exist")
                elif other.kind not in kinds:
                    self.problem(raw.file, line, raw.id, _dotted(loc),
                                 f"references {target}, a {other.kind}; expected {' or '.join(kinds)}")

    def check_cycles(self, raws: dict[str, _Raw]) -> None:
        for root_field, what in (("imports", "import cycle"), ("lifecycle", "dependency cycle")):
            graph = {
                raw.id: [target for loc, target, _ in raw.refs if loc[0] == root_field and target in raws]
                for raw in raws.values()
            }
            for cycle in _cycles(graph):
                raw = raws[cycle[0]]
                loc = next(loc for loc, target, _ in raw.refs if loc[0] == root_field and target == cycle[1 % len(cycle)])
                self.problem(raw.file, line_of(raw.data, loc) or raw.line, cycle[0], _dotted(loc),
                             f"{what}: {' -> '.join([*cycle, cycle[0]])}")

    def check_entries(self, project: Project, raws: dict[str, _Raw]) -> None:
        """Commands, and host settings accepted but ignored (``_checks.py``)."""
        def where(entry_id: str) -> str:
            return f"{self._rel(raws[entry_id].file)}:{raws[entry_id].line}"

        for finding in (*command_findings(project.entries, where), *host_findings(project.entries)):
            raw = raws[finding.entry]
            found = Problem(self._rel(raw.file), line_of(raw.data, finding.loc) or raw.line, raw.id,
                            _dotted(finding.loc), finding.reason)
            (self.problems if finding.error else self.warnings).append(found)

    def load(self) -> Project:
        project = Project(root=self.root)
        raws: dict[str, _Raw] = {}
        for path in self.yaml_files():
            for raw in self.read_file(path):
                if raw.id in raws:
                    first = raws[raw.id]
                    self.problem(raw.file, raw.line, raw.id, None,
                                 f"duplicate entry id; first defined at {self._rel(first.file)}:{first.line}")
                    continue
                raws[raw.id] = raw
                entry = self.build(raw)
                if entry is not None:
                    project.entries[raw.id] = entry
                    project.locations[raw.id] = Location(raw.file, raw.line)
        self.check_references(raws)
        self.check_cycles(raws)
        self.check_entries(project, raws)
        self.problems.sort(key=lambda p: (p.file, p.line or 0))
        self.warnings.sort(key=lambda p: (p.file, p.line or 0))
        project.warnings = self.warnings
        return project


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _drop(data: Any, loc: tuple[Any, ...]) -> bool:
    """Remove the key at ``loc`` (a pydantic error location) from ``data``; whether it was there."""
    for part in loc[:-1]:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    if isinstance(data, dict) and loc and loc[-1] in data:
        del data[loc[-1]]
        return True
    return False


def _slots(data: Any, path: list[str], loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, Any, Any, tuple[Any, ...]]]:
    """Yield ``(container, key, value, loc)`` for each reference at ``path``; a list or
    dict at the end of the path expands to its items, and ``loc`` is the item's full path."""
    if not isinstance(data, dict) or path[0] not in data:
        return
    value = data[path[0]]
    here = (*loc, path[0])
    if len(path) > 1:
        yield from _slots(value, path[1:], here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index, item, (*here, index)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield value, key, item, (*here, key)
    else:
        yield data, path[0], value, here


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each elementary cycle reachable in ``graph``, reported once, starting at its smallest id."""
    found: dict[tuple[str, ...], list[str]] = {}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):]
                start = cycle.index(min(cycle))
                rotated = cycle[start:] + cycle[:start]
                found.setdefault(tuple(rotated), rotated)
            elif nxt in graph and state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)
    return list(found.values())
