"""Entry code as :class:`LuaCode`: read from disk once per entry, and read again when a
reload (``moonwire run --watch``) asks for it.

A reload is two steps, so that a broken change replaces nothing: :meth:`CodeLoader.plan`
reads every Lua entry of the new project (off the event loop, if the caller likes) and
finds what changed, and :meth:`CodeLoader.commit` makes that the code every later call,
spawn, upgrade and workflow run gets. Code that did not change keeps its object, so a
running process can tell whether its code is current by identity.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path

from moonwire.lua import LuaCode

from ..project import LibraryEntry, LuaEntry, Project


@dataclass(frozen=True, slots=True)
class CodePlan:
    """What a reload would load: every Lua entry's code, and which of them are new
    readings (changed since the last commit, or new entries)."""

    codes: dict[str, LuaCode]
    changed: frozenset[str]


class CodeLoader:
    """Entry code as :class:`LuaCode`, read from disk once per entry."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._cache: dict[str, LuaCode] = {}
        self._revisions = itertools.count(1)

    def code(self, entry: LuaEntry) -> LuaCode:
        cached = self._cache.get(entry.id)
        if cached is not None:
            return cached
        return self._read(entry, self.project, self._cache, reuse=False)

    def current(self, entry_id: str) -> LuaCode | None:
        """The code loaded for ``entry_id`` now (None: not loaded, or no such entry)."""
        return self._cache.get(entry_id)

    def load_all(self) -> None:
        """Read every Lua entry's code now rather than on first use (a node that reloads
        compares what runs with what is on disk)."""
        for entry in self.project.entries.values():
            if isinstance(entry, LuaEntry):
                self.code(entry)

    def plan(self, project: Project) -> CodePlan:
        """Read every Lua entry of ``project``; what did not change keeps its code object.
        Safe to run in another thread while the loader serves the event loop.

        Raises:
            OSError: a source file cannot be read.
        """
        fresh: dict[str, LuaCode] = {}
        for entry in project.entries.values():
            if isinstance(entry, LuaEntry):
                self._read(entry, project, fresh, reuse=True)
        changed = frozenset(entry_id for entry_id, code in fresh.items() if self._cache.get(entry_id) is not code)
        return CodePlan(fresh, changed)

    def commit(self, plan: CodePlan) -> None:
        """From now on, the code of ``plan`` (whose entries the loader's project now has)."""
        self._cache = dict(plan.codes)

    def _read(self, entry: LuaEntry, project: Project, into: dict[str, LuaCode], *, reuse: bool) -> LuaCode:
        """``entry``'s code (and its imports', first) into ``into``. With ``reuse``, the
        code loaded now is kept when nothing in it changed, else the reading gets a new
        revision."""
        done = into.get(entry.id)
        if done is not None:
            return done
        imports = []
        for alias, target in entry.imports.items():
            # Any Lua entry (the loader checked the kind and that imports form no cycle);
            # the importer gets its chunk's value, whatever the kind.
            imported = project.entries[target]
            assert isinstance(imported, LuaEntry)
            imports.append((alias, self._read(imported, project, into, reuse=reuse)))
        code = LuaCode(
            id=entry.id,
            source=Path(entry.source).read_bytes(),
            chunkname=str(Path(entry.source).relative_to(project.root)),
            method=entry.method,
            modules=frozenset(entry.modules),
            imports=tuple(imports),
            is_library=isinstance(entry, LibraryEntry),
        )
        if reuse:
            # Imports compare by revision: an import read anew makes its importer new too.
            loaded = self._cache.get(entry.id)
            code = loaded if loaded is not None and replace(code, revision=loaded.revision) == loaded \
                else replace(code, revision=next(self._revisions))
        into[entry.id] = code
        return code
