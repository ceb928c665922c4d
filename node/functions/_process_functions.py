"""Process entries called as functions (wippy-modules §12.2).

A ``process.lua`` entry with ``meta.options.default_host`` (which wins) or
``meta.default_host`` is also a function under its own id: ``funcs.call("ns:proc", a, b)``
starts the process on that host with the call's arguments as its ``method``'s, waits
for it to exit, and returns what it returned (or its abnormal exit's error). Nothing of
the caller travels with it: no context values, actor or scope (wippy-modules §5.3).

The call is served like a function's: locally when this node has the entry (every
node that has it runs its host, the loader checked that the host exists), and on the
function's queue group ``mw.fn.<id>`` for other nodes and clients outside moonwire.
The process always starts on the node serving the call, through the process table
(``ProcessServices.call_process``), whose exit hook is the hidden watcher.

A call given up (the caller's thread or process ended, ``future:cancel()``, the call's
``timeout`` option ran out, the calling node went down or abandoned the request)
sends the process CANCEL with "caller context canceled", as Wippy does; the process
decides what to do with it, and its eventual result goes to nobody.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any, Protocol

from moonwire.lua import Answer, MoonwireError, Outcome, Pending, ProcessServices, Security, SpawnRequest

from ..project import ProcessEntry, Project
from ..telemetry import CallCounts
from ._options import timed_out, timeout_seconds

log = logging.getLogger("moonwire.functions")

CALLER_CANCELED = "caller context canceled"
"""The reason of the CANCEL a process called as a function gets when the call is given up."""


class HasProcesses(Protocol):
    """Where a process-function finds the process table (``Functions.processes``, handed
    over once the table exists)."""

    processes: ProcessServices
    calls: CallCounts


class ProcessFunction:
    """One process entry served as a function: what ``Functions`` calls and serves
    beside its pools (the same ``entry`` and ``call``)."""

    __slots__ = ("entry", "host", "functions", "stats")

    def __init__(self, entry: ProcessEntry, host: str, functions: HasProcesses) -> None:
        self.entry = entry
        self.host = host
        self.functions = functions
        self.stats = functions.calls.of(entry.id)  # as a pool's: the metrics, $SRV.STATS

    def call(self, args: list[Any], context: dict[str, Any], options: dict[str, Any],
             security: Security | None = None, trace: str | None = None) -> Answer:
        """Start the process and answer with its exit result. ``context`` and
        ``security`` are the caller's and are not passed on (wippy-modules §5.3);
        ``options`` may bound the call (``timeout``); the process works in ``trace``."""
        started = perf_counter()
        try:
            timeout = timeout_seconds(options)
            answer = self.functions.processes.call_process(
                SpawnRequest(self.entry.id, self.host, list(args), trace=trace), CALLER_CANCELED)
        except MoonwireError as err:
            answer = Outcome(error=err)
        if timeout is not None and isinstance(answer, Pending):
            answer = _within(answer, timeout, self.entry.id)
        return self.stats.timed(started, answer)  # type: ignore[return-value]


def _within(answer: Pending, timeout: float, target: str) -> Pending:
    """``answer``, or a Timeout error after ``timeout`` seconds, which gives it up (the
    process gets its CANCEL)."""
    bounded = Pending()

    def expire() -> None:
        answer.drop()
        bounded.settle(Outcome(error=timed_out(target, timeout)))

    timer = asyncio.get_running_loop().call_later(timeout, expire)

    def done(outcome: Outcome) -> None:
        timer.cancel()
        bounded.settle(outcome)

    def give_up() -> None:
        timer.cancel()
        answer.drop()

    answer.listen(done)
    bounded.abandon = give_up
    return bounded


def process_functions(project: Project, functions: HasProcesses) -> dict[str, ProcessFunction]:
    """Every process entry of ``project`` that is also a function, by id. Not one whose
    host the node does not run: a host a code reload added runs only after a restart
    (the reload keeps the hosts the node started with), and serving its calls here
    would fail them on a queue group that nodes running the host share."""
    found: dict[str, ProcessFunction] = {}
    for entry in project.of_kind("process.lua"):
        if isinstance(entry, ProcessEntry) and (host := entry.default_host) is not None:
            running = project.get(host)
            if running is None or running.kind != "process.host":
                log.warning("%s is not served as a function here: its default host %s is not running on this "
                            "node (a host a reload added needs a restart)", entry.id, host)
                continue
            found[entry.id] = ProcessFunction(entry, host, functions)
    return found
