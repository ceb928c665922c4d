"""Process hosts: the scheduler that runs ``process.lua`` processes (wippy-surface §1.7).

A host keeps its processes in a few shared Lua states ("shards"), each holding up to
``processes_per_state`` processes. A process is one instance of its entry's chunk (its
own globals and library copies, see :meth:`LuaState.instantiate`) and one Lua thread;
it is a :class:`Unit` in the host's table, not an asyncio task. A unit that has a thread
ready asks the host to run it (``Unit.notify``); the host runs ready units in batches
from one ``call_soon`` callback, so a process blocked on its inbox costs no CPU.

Why shards rather than one state per process: an empty Lua state costs about 25 KiB,
an instance in a shared state well under 1 KiB (docs/architecture.md has the figures).
Why not one state for all: a memory limit is per state, so a process that allocates
without bound can only disturb the processes of its own shard, and a shard that ran
out of memory takes no new processes and is dropped when its last process exits.

``max_processes`` bounds the processes a host holds, counting those on their way in (a
spawn with a cluster name holds a :class:`Reservation` while the name is registered):
a spawn past it is refused with a retryable Unavailable naming the host and the limit,
before anything is placed, and a slot is free again the moment a process has exited.
Wippy's other host settings (``workers``, ``queue_size``, ``local_queue_size``) are
accepted and ignored, with a warning at load (``project/_checks.py`` says why).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from moonwire.lua import TURN, Kind, Limits, LuaCode, LuaState, MoonwireError, Registry, Unit, internal

from ..project import HostSettings

log = logging.getLogger("moonwire.hosts")

_BATCH = 256  # units stepped per callback before the loop gets a turn


@dataclass(eq=False, slots=True)
class Shard:
    state: LuaState
    live: int = 0


@dataclass(frozen=True, slots=True)
class HostStatistics:
    host: str
    processes: int
    states: int
    memory_bytes: int
    ready: int
    steps: int
    starting: int = 0
    """Processes on their way in (a cluster name being registered); they count against the limit."""
    max_processes: int | None = None


class Reservation:
    """A slot of a host held for a spawn on its way in; :meth:`release` (idempotent)
    gives it back, just before the process takes its own slot or when it never will."""

    __slots__ = ("_host",)

    def __init__(self, host: ProcessHost) -> None:
        self._host: ProcessHost | None = host

    def release(self) -> None:
        if self._host is not None:
            self._host.starting -= 1
            self._host = None


class ProcessHost:
    """One ``process.host`` entry: where its processes' Lua runs and when."""

    def __init__(self, host_id: str, settings: HostSettings, loop: asyncio.AbstractEventLoop | None = None, *,
                 registry: Registry | None = None, node: str = "") -> None:
        self.id = host_id
        self.node = node
        self.registry = registry
        self.settings = settings
        self.limits = Limits(memory=settings.memory_limit, instructions=settings.instruction_budget)
        self.loop = loop or asyncio.get_running_loop()
        self._shards: list[Shard] = []
        self._run_queue: deque[Unit] = deque()
        self._drain_pending = False
        self._steps = 0
        self.processes = 0
        self.starting = 0
        """Reservations held (:meth:`reserve`)."""
        self._delivered_dropped = 0
        """Messages the local path delivered in shards since dropped."""

    def queued(self) -> int:
        """Processes waiting for their turn to run (``statistics().ready``, without asking
        every Lua state for its memory)."""
        return len(self._run_queue)

    def statistics(self) -> HostStatistics:
        return HostStatistics(self.id, self.processes, len(self._shards),
                              sum(shard.state.memory_used() for shard in self._shards), len(self._run_queue),
                              self._steps, self.starting, self.settings.max_processes)

    # ------------------------------------------------------------ admission

    def admit(self) -> None:
        """Whether one more process may come in (raises when not).

        Raises:
            MoonwireError: Unavailable (retryable), naming the host and its limit.
        """
        limit = self.settings.max_processes
        if limit is not None and self.processes + self.starting >= limit:
            where = f" on node {self.node}" if self.node else ""
            held = self.processes + self.starting
            starting = f", {self.starting} of them starting" if self.starting else ""
            raise MoonwireError(
                f"process host {self.id}{where} is full: max_processes {limit} reached "
                f"({held} process{'' if held == 1 else 'es'}{starting})", Kind.UNAVAILABLE, retryable=True,
                details={"host": self.id, "max_processes": limit})

    def reserve(self) -> Reservation:
        """A slot held for a process on its way in; see :class:`Reservation`.

        Raises:
            MoonwireError: Unavailable when the host is full (:meth:`admit`).
        """
        self.admit()
        self.starting += 1
        return Reservation(self)

    # ------------------------------------------------------------ placing processes

    def instantiate(self, code: LuaCode) -> tuple[Shard, Any]:
        """A new instance of ``code``'s export in a shard with room.

        Raises:
            MoonwireError: Unavailable when the host is full (:meth:`admit`), or the code
                does not compile or load (nothing is placed then).
        """
        self.admit()
        shard = self._shard_with_room()
        export = shard.state.instantiate(code)
        shard.live += 1
        self.processes += 1
        return shard, export

    def _shard_with_room(self) -> Shard:
        for shard in reversed(self._shards):
            if shard.live < self.settings.processes_per_state and not shard.state.poisoned:
                return shard
        shard = Shard(LuaState(self.limits, log=log, registry=self.registry))
        self._shards.append(shard)
        return shard

    def release(self, shard: Shard) -> None:
        """A process of ``shard`` ended; an empty shard other than the newest is dropped."""
        shard.live -= 1
        self.processes -= 1
        if shard.live == 0 and (shard.state.poisoned or shard is not self._shards[-1]):
            self._shards.remove(shard)
            self._delivered_dropped += shard.state.delivered_here()

    def delivered_in_lua(self) -> int:
        """Messages the local path delivered inside this host's shards, never seen by Python."""
        return self._delivered_dropped + sum(shard.state.delivered_here() for shard in self._shards)

    # ------------------------------------------------------------ scheduling

    def ready(self, unit: Unit) -> None:
        """``Unit.notify``: queue ``unit`` to run (once, however often it is woken)."""
        if unit.scheduled:
            return
        unit.scheduled = True
        if unit.preempted:  # cut short by lua.TURN: it goes on first, after the loop's turn
            unit.preempted = False
            self._run_queue.appendleft(unit)
        else:
            self._run_queue.append(unit)
        if not self._drain_pending:
            self._drain_pending = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        queue = self._run_queue
        turn_ends = time.perf_counter() + TURN  # many processes of a budget each must not chain either
        for _ in range(_BATCH):
            if not queue or time.perf_counter() > turn_ends:
                break
            unit = queue.popleft()
            unit.scheduled = False
            self._steps += 1
            try:
                unit.step()
            except MoonwireError as err:
                unit.abort(err)
            except Exception as err:  # noqa: BLE001 - a bug must end one process, not the scheduler
                log.exception("%s: scheduler error in %s", self.id, unit.pid, extra=unit.log_fields())
                unit.abort(internal(f"scheduler error: {type(err).__name__}: {err}"))
        if queue:
            self.loop.call_soon(self._drain)
        else:
            self._drain_pending = False
