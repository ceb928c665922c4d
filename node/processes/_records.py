"""What the process table keeps for each process with a PID on this node."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moonwire.lua import Event, LuaCode, Outcome, Pending, Unit

from ._hosts import Shard

FUNCTION_HOST = "funcs"
TERMINAL_HOST = "terminal"
LINKED_FAILURE = "linked process failed"

ExitHook = Callable[[Outcome], None]


@dataclass(eq=False, slots=True)
class ProcessRecord:
    pid: str
    unit: Unit
    entry: str
    host: str
    shard: Shard | None
    started: float = field(default_factory=time.monotonic)
    names: list[str] | None = None
    watchers: set[str] | None = None      # PIDs monitoring this process
    watching: set[str] | None = None      # PIDs this process monitors
    links: set[str] | None = None
    exit_hooks: list[ExitHook] | None = None
    exec_waits: dict[str, Pending] | None = None  # remote children this process execs
    spawning: int = 0  # remote spawns with a monitor, link or exec awaiting the child's PID
    early: list[Event] | None = None  # events from other nodes that arrived before that PID
    code: LuaCode | None = None  # what a process runs (a function call's PID: None), for reloads


def monitor(watcher: ProcessRecord, target: ProcessRecord) -> None:
    """``watcher`` monitors ``target`` (both on this node)."""
    if target.watchers is None:
        target.watchers = set()
    target.watchers.add(watcher.pid)
    if watcher.watching is None:
        watcher.watching = set()
    watcher.watching.add(target.pid)


def link(a: ProcessRecord, b: ProcessRecord) -> None:
    """``a`` and ``b`` (both on this node) are linked."""
    if a.links is None:
        a.links = set()
    if b.links is None:
        b.links = set()
    a.links.add(b.pid)
    b.links.add(a.pid)
