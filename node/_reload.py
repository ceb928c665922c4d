"""Code reload for ``moonwire run --watch``: the node's Lua code follows its files.

A task the node owns polls the project's YAML and Lua files (``project.snapshot``) and,
once a change has settled (an editor writes a file in several steps), loads the project
again. A reload is all or nothing:

* refused, when the project does not load (a YAML or entry problem) or a changed Lua
  file does not compile: each problem is logged with its ``file:line``, and the node
  keeps all of its code as it was;
* applied, otherwise, to the Lua entries (``function.lua``, ``process.lua``,
  ``library.lua``, ``workflow.lua``): new function calls, spawns, upgrades and workflow
  runs get the new code; a new function is served, a removed one is not (calls to it
  fail NotFound); calls in flight finish on the code they started with; running
  processes keep theirs, and each upgradable one whose code or imported code changed
  gets OUTDATED (``process.upgrade`` then loads the new code);
* everything else (hosts, services, Temporal clients and workers, ``env`` entries,
  ``moonwire.yaml``) is read once at start: a change to it is logged as needing a
  restart, and the node keeps running it as it started.

Reading and compiling happen off the event loop; what the loop does is swap references.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moonwire.lua import syntax_error

from .functions import CodePlan, reload_pools
from .project import CONFIG_FILE, LUA_KINDS, LuaEntry, Project, ProjectEntries, ProjectInvalid, load_project, snapshot
from ._runtime import Runtime

log = logging.getLogger("moonwire.reload")

POLL = 0.5
"""Seconds between two looks at the project's files."""
SETTLE = 0.3
"""Seconds the files must stay unchanged before a reload: an editor's save is over."""


@dataclass(frozen=True, slots=True)
class _Reading:
    """The project as read from disk, and its code; or why it cannot be loaded."""

    project: Project | None
    plan: CodePlan | None
    problems: list[str]


class CodeReload:
    """Reloads ``runtime``'s code when its project's files change."""

    def __init__(self, runtime: Runtime, *, poll: float = POLL, settle: float = SETTLE) -> None:
        self.runtime = runtime
        self.project = runtime.project
        self.poll, self.settle = poll, settle
        self.code = runtime.functions.code
        self.code.load_all()  # what runs now, to compare with what a reload reads
        self._seen = self._scan()
        self.applied = 0
        self.refused = 0

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        sources = [entry.source for entry in self.project.entries.values() if isinstance(entry, LuaEntry)]
        return snapshot(self.project.root, sources)

    async def run(self) -> None:
        """Watch until cancelled. A reload that fails for a reason of ours is logged and
        the watch goes on: the node keeps serving the code it has."""
        log.info("watching %s for changes to its YAML and Lua files", self.project.root)
        while True:
            await asyncio.sleep(self.poll)
            now = await asyncio.to_thread(self._scan)
            if now == self._seen:
                continue
            while True:  # until the files stay as they are for `settle`
                await asyncio.sleep(self.settle)
                again = await asyncio.to_thread(self._scan)
                if again == now:
                    break
                now = again
            changed = sorted(path for path in now.keys() | self._seen.keys() if now.get(path) != self._seen.get(path))
            self._seen = now
            try:
                await self.reload(changed)
            except Exception:  # noqa: BLE001 - a bug in a reload must not stop the node
                log.exception("reloading %s failed; the node keeps the code it had", self.project.root)

    async def reload(self, changed_files: Sequence[str] = ()) -> bool:
        """Load the project again and apply it (True), or log why not and keep the code (False)."""
        started = time.monotonic()
        if any(path == str(self.project.root / CONFIG_FILE) for path in changed_files):
            log.warning("%s changed: the node's configuration is read at start; restart the node to apply it",
                        CONFIG_FILE)
        reading = await asyncio.to_thread(self._read)
        if reading.project is None or reading.plan is None:
            self.refused += 1
            for problem in reading.problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused (%d problem(s)); the node keeps the code it had", len(reading.problems))
            return False
        await self._apply(reading.project, reading.plan, started)
        return True

    def _read(self) -> _Reading:
        """Off the loop: the project, its code, and whether every changed file compiles."""
        try:
            fresh = load_project(self.project.root)
        except ProjectInvalid as err:
            return _Reading(None, None, [str(problem) for problem in err.problems])
        try:
            plan = self.code.plan(fresh)
        except OSError as err:
            return _Reading(None, None, [f"cannot read {err.filename}: {err.strerror}"])
        problems = []
        for entry_id in sorted(plan.changed):
            code = plan.codes[entry_id]
            if (problem := syntax_error(code.source, code.chunkname)) is not None:
                problems.append(f"{problem} (entry {entry_id})")
        return _Reading(None if problems else fresh, plan, problems)

    async def _apply(self, fresh: Project, plan: CodePlan, started: float) -> None:
        project, runtime = self.project, self.runtime
        entries, locations, restart = _merge(project, fresh)
        for note in restart:
            log.warning("reload: %s; it needs a restart, until then the node runs it as it started", note)
        project.entries, project.locations, project.warnings = entries, locations, fresh.warnings
        self.code.commit(plan)
        runtime.functions.registry.entries = ProjectEntries(project)
        added, changed, removed = await reload_pools(runtime.functions)
        told = runtime.processes.outdated(self.code.current)
        self.applied += 1
        processes = sorted(entry_id for entry_id in plan.changed if project.entries[entry_id].kind == "process.lua")
        parts = [f"{len(plan.changed)} entr{'y' if len(plan.changed) == 1 else 'ies'} with new code"
                 + (f" ({', '.join(sorted(plan.changed))})" if plan.changed else "")]
        parts += [f"functions {what}: {', '.join(ids)}" for what, ids in
                  (("added", added), ("changed", changed), ("removed", removed)) if ids]
        if processes:
            parts.append(f"running processes of {', '.join(processes)} keep their code until they upgrade; "
                         f"{told} upgradable process(es) told OUTDATED")
        log.info("reloaded %s in %.0f ms: %s", project.root, (time.monotonic() - started) * 1000, "; ".join(parts))


def _merge(project: Project, fresh: Project) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The entries (and their locations) the node runs after a reload: the Lua entries as
    ``fresh`` has them, everything else as the node started with it. Also what differs
    in the rest, which needs a restart."""
    entries: dict[str, Any] = {}
    locations: dict[str, Any] = {}
    restart: list[str] = []
    for entry_id in {**project.entries, **fresh.entries}:
        old, new = project.entries.get(entry_id), fresh.entries.get(entry_id)
        lua_old = old is not None and old.kind in LUA_KINDS
        if new is not None and new.kind in LUA_KINDS and (old is None or lua_old):
            entries[entry_id], locations[entry_id] = new, fresh.locations[entry_id]
            continue
        if lua_old and new is None:  # a removed Lua entry: gone
            continue
        if old is not None:
            entries[entry_id], locations[entry_id] = old, project.locations[entry_id]
        if old != new:
            what = "added" if old is None else "removed" if new is None else "changed"
            restart.append(f"entry {entry_id} ({(new or old).kind}) was {what}")  # type: ignore[union-attr]
    return entries, locations, restart
