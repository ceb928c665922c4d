"""Upgrades, for the process table (``_table.py``): ``process.upgrade`` (wippy-modules
§12.1) and the OUTDATED event a code reload sends (``moonwire run --watch``).

An upgrade replaces a process's code and nothing else. Outcomes, for the process P that
asks for it:

* a function call (it has no code of its own to replace): ``nil, err`` (Invalid);
* arguments Lua cannot copy: ``nil, err`` (the unit checks them; P is untouched);
* no such entry, not a ``process.lua`` entry, or code that does not compile: P exits
  abnormally with ``upgrade: create failed: <why>`` (kind of the cause);
* its chunk raises while it loads, or has no such method: P exits abnormally with
  ``upgrade: init failed: <why>``;
* otherwise the new code's method runs with the arguments, as the same unit: PID,
  record, mailbox (what was not received stays, in order), names, monitors and links
  (both ends), ``pg`` memberships, cluster names, locks, context, actor and scope, and
  the options ``trap_links`` and ``upgradable`` are kept; threads, channels, timers,
  pending calls, subscriptions (``inbox``, ``events``, ``listen``, ``pg`` monitors)
  and a pending OUTDATED go. Nobody is told: a monitor or link, here or on another
  node, sees the process exit only when it really exits.

The new instance is made in P's own Lua state (its shard), so a process never moves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from moonwire.lua import Answer, Kind, LuaCode, MoonwireError, Outcome, Pending, Unit, invalid, not_found

from ..functions import CodeLoader
from ..project import ProcessEntry, Project
from ._records import FUNCTION_HOST, ProcessRecord

log = logging.getLogger("moonwire.processes")


class Upgrading:
    """The upgrade half of :class:`~._table.ProcessTable` (a mixin: it uses the table's
    records, project and code loader)."""

    project: Project
    code: CodeLoader
    records: dict[str, ProcessRecord]

    if TYPE_CHECKING:
        def _unwatch_groups(self, pid: str) -> None: ...

    def upgrade(self, unit: Unit, entry: str | None, args: list[Any]) -> Answer:
        record: ProcessRecord | None = unit.record
        if record is None or record.shard is None or record.host == FUNCTION_HOST or record.unit is not unit:
            return Outcome(error=invalid("process.upgrade: only a process can upgrade; a function call has no "
                                         "code of its own to replace"))
        state = record.shard.state
        target = record.entry if entry is None else entry
        try:
            code = self.code.code(self._upgrade_entry(target))
            state.prepare(code)
        except MoonwireError as err:
            return self._upgrade_failed(unit, "create", err)
        try:
            export = state.instantiate(code)
            self._unwatch_groups(record.pid)
            unit.replace(export, args)
        except MoonwireError as err:
            return self._upgrade_failed(unit, "init", err)
        record.entry = unit.label = code.id
        record.code = code
        log.debug("process %s upgraded to %s", record.pid, code.key)
        return Pending()  # never settled: the thread that asked is gone with the old code

    def _upgrade_entry(self, entry_id: str) -> ProcessEntry:
        found = self.project.get(entry_id)
        if found is None:
            hint = "" if ":" in entry_id else " (an entry id is namespace:name)"
            raise not_found(f"no entry {entry_id}{hint}")
        if not isinstance(found, ProcessEntry):
            raise invalid(f"{entry_id} is a {found.kind}, not a process.lua entry")
        return found

    @staticmethod
    def _upgrade_failed(unit: Unit, step: str, cause: MoonwireError) -> Outcome:
        """A failed upgrade ends the process abnormally (wippy-modules §12.1)."""
        error = MoonwireError(f"upgrade: {step} failed: {cause.message}", cause.kind or Kind.INTERNAL,
                              retryable=False, details=cause.details, stack=cause.stack)
        unit.abort(error)
        return Outcome(error=error)

    def outdated(self, current: Callable[[str], LuaCode | None]) -> int:
        """After a code reload: tell every upgradable process whose code (its entry's or
        an import's, at any depth) is no longer ``current`` (OUTDATED, with the ids of
        the entries whose own code changed as ``sources``). A process whose entry is gone, or no longer a process, is
        not told (an upgrade to it would fail). Returns how many were told."""
        told = 0
        now = time.time()
        for record in list(self.records.values()):
            unit = record.unit
            if not unit.upgradable or record.code is None or unit.outcome is not None or unit.mailbox is None:
                continue
            if not isinstance(self.project.get(record.entry), ProcessEntry):
                continue
            sources = [code.id for code in _closure(record.code) if _changed(code, current(code.id))]
            if not sources and current(record.code.id) is not record.code:  # only how it imports changed
                sources = [record.code.id]
            if sources:
                unit.mailbox.post_outdated(sources, now)
                told += 1
        return told


def _changed(running: LuaCode, current: LuaCode | None) -> bool:
    """Whether ``current`` differs from ``running`` in its own code (source, method,
    modules, kind), not merely in what it imports (the import is a source of its own)."""
    if current is running:
        return False
    return current is None or replace(current, imports=(), revision=0) != replace(running, imports=(), revision=0)


def _closure(code: LuaCode) -> Iterator[LuaCode]:
    """``code`` and every code it imports, at any depth, each once."""
    seen: set[str] = set()
    stack = [code]
    while stack:
        item = stack.pop()
        if item.key in seen:
            continue
        seen.add(item.key)
        yield item
        stack.extend(library for _, library in item.imports)
