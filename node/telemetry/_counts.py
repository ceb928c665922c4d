"""The counts a node keeps where things happen: plain integers and small lists, bumped
on the hot paths at the cost of a few attribute writes, and read only when someone asks
(a Prometheus scrape, a ``$SRV.STATS`` request, ``moonwire nodes``).

Why not prometheus-client's own ``Counter``/``Histogram`` on the hot paths: each
``labels(...).inc()`` takes a lock and looks the child up by its label tuple: an
``inc`` and an ``observe`` cost 2.8 µs here, a call timed by :class:`CallStats` 0.2 µs
(``docs/performance.md``). The collector (``_collector.py``) turns these counts into metric families at
scrape time, so a scrape costs the node something and a message costs it nearly nothing.

Every label value these counts produce comes from a bounded set: entry and host ids of
the project (anything else is :data:`OTHER`), error kinds (``lua.Kind``), and the small
enums below. A PID, a topic or a subject is never a label.
"""

from __future__ import annotations

import asyncio
import time
from time import perf_counter
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator
from typing import Any
from prometheus_client.utils import floatToGoString

from moonwire.lua import Kind, MoonwireError, Outcome, Pending

OUTCOMES = ("completed", "failed", "canceled", "continued_as_new")
"""How a workflow run ends, the ``outcome`` label of its counts (``_workflow_counts.py``)."""

OTHER = "(other)"
"""The label value of whatever is outside a bounded set (an entry id the project does
not define, a kind that is not one of ``lua.Kind``)."""

LATENCY_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the call latency histograms: a local call of a trivial
function takes ~10 µs, a remote one ~0.4 ms, a call that waits on I/O up to seconds."""

_KINDS = frozenset(kind.value for kind in Kind if kind is not Kind.UNKNOWN)


def kind_label(error: MoonwireError) -> str:
    """The error's kind as a label value: one of ``lua.Kind`` (as Lua spells it),
    ``Unknown`` for none (a Lua runtime error), else :data:`OTHER`."""
    kind = error.kind
    if kind in _KINDS:
        return kind
    return "Unknown" if not kind else OTHER


class Buckets:
    """A histogram with :data:`LATENCY_BUCKETS` (or ``bounds``): counts per bucket (not
    cumulative; the last is +Inf), and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class CallStats:
    """Calls of one function (or activity): how many ended, how many with an error (by
    kind, and the last error's text), how long they took. Kept by whoever runs the
    calls; read by the metrics and by the ``$SRV.STATS`` answers of ``nats micro``."""

    __slots__ = ("errors", "latency", "last_error")

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.latency = Buckets()
        self.last_error = ""

    @property
    def calls(self) -> int:
        """Calls that ended (each is in one latency bucket)."""
        return self.latency.count

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def record(self, outcome: Outcome, seconds: float) -> None:
        self.latency.observe(seconds)
        if outcome.error is not None:
            self.failed(outcome.error)

    def failed(self, error: MoonwireError) -> None:
        kind = kind_label(error)
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = f"{error.kind or 'Unknown'}: {error.message}"[:256]

    def timed(self, started: float, answer: Outcome | Awaitable[Outcome] | Pending
              ) -> Outcome | Awaitable[Outcome] | Pending:
        """``answer`` (of a call begun at ``perf_counter()`` ``started``), counted when it
        is settled: now for an Outcome, else when the coroutine it is ends.

        Written ``stats.timed(time.perf_counter(), run(...))``: the arguments are
        evaluated left to right, so the clock is read before the call runs."""
        if answer.__class__ is Outcome:  # the common case, inlined (a function call less)
            seconds = perf_counter() - started
            latency = self.latency
            latency.counts[bisect_left(latency.bounds, seconds)] += 1
            latency.sum += seconds
            if answer.error is not None:  # type: ignore[union-attr]
                self.failed(answer.error)  # type: ignore[union-attr]
            return answer
        if isinstance(answer, Outcome):
            self.record(answer, time.perf_counter() - started)
            return answer
        if isinstance(answer, Pending):  # a process called as a function: settled by its exit
            return self._timed_pending(started, answer)
        assert isinstance(answer, Coroutine)
        return _Timed(answer, self, started)

    def _timed_pending(self, started: float, answer: Pending) -> Pending:
        # A Pending has one listener, and that is its caller's: this one stands between.
        timed = Pending(abandon=answer.drop)

        def ended(outcome: Outcome) -> None:
            self.record(outcome, time.perf_counter() - started)
            timed.settle(outcome)

        answer.listen(ended)
        return timed


class _Timed(Coroutine[Any, Any, Outcome]):
    """A call's coroutine, counted in its :class:`CallStats` when it ends.

    Not a coroutine function wrapping it: a task cancelled before its first step throws
    into the coroutine it was given, and a wrapper would end there without ever starting
    the call's own coroutine (which then never runs its cleanup, and warns that it was
    never awaited). This object hands every step to the call's coroutine itself."""

    __slots__ = ("inner", "stats", "started")

    def __init__(self, inner: Coroutine[Any, Any, Outcome], stats: CallStats, started: float) -> None:
        self.inner, self.stats, self.started = inner, stats, started

    def send(self, value: Any) -> Any:
        try:
            return self.inner.send(value)
        except BaseException as end:
            self._ended(end)
            raise

    def throw(self, kind: Any, value: Any = None, trace: Any = None) -> Any:
        try:
            return self.inner.throw(kind) if value is None and trace is None else self.inner.throw(kind, value, trace)
        except BaseException as end:
            self._ended(end)
            raise

    def close(self) -> None:
        self.inner.close()

    def __await__(self) -> Generator[Any, Any, Outcome]:
        return self  # type: ignore[return-value]  # send/throw above: a generator in all but name

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def _ended(self, end: BaseException) -> None:
        seconds = time.perf_counter() - self.started
        if isinstance(end, StopIteration):
            self.stats.record(end.value, seconds)
        elif isinstance(end, asyncio.CancelledError):
            self.stats.record(_CANCELED, seconds)
        elif isinstance(end, MoonwireError):
            self.stats.record(Outcome(error=end), seconds)
        elif isinstance(end, Exception):
            self.stats.record(Outcome(error=MoonwireError(f"{type(end).__name__}: {end}", Kind.INTERNAL)), seconds)


_CANCELED = Outcome(error=MoonwireError("call canceled", Kind.CANCELED))


class CallCounts(dict[str, CallStats]):
    """:class:`CallStats` by entry id, for the entries in ``known`` (the rest share
    :data:`OTHER`), made on first use."""

    def __init__(self, known: Collection[str] = ()) -> None:
        super().__init__()
        self.known = known

    def of(self, name: str) -> CallStats:
        stats = self.get(name)
        if stats is None:
            if self.known and name not in self.known and name != OTHER:
                return self.of(OTHER)
            stats = self[name] = CallStats()
        return stats


# ---------------------------------------------------------------- processes

ORIGINS = ("local", "remote", "workflow", "outside")
"""Where a message delivered to a local process came from: a process or function call
of this node, of another node, a workflow, or outside moonwire (no sender: ``nats pub``,
``moonwire send``, a cluster name's or group's subject)."""


class ProcessCounts:
    """What the process table counts: spawns and exits per host (exits by reason: normal
    or the error's kind), messages delivered, node-down events by reason.

    Messages are counted by origin without classifying each local one: every delivery
    bumps ``delivered`` (one attribute add on the local path), and only those that
    entered the node from elsewhere (:meth:`received`: the inbox subscription, a cluster
    name's or group's subject, a workflow's send activity) are classified by sender;
    local is what is left."""

    __slots__ = ("spawns", "exits", "delivered", "remote", "workflow", "outside", "node_downs", "_mine", "in_lua")

    def __init__(self, node: str) -> None:
        self.spawns: dict[str, int] = {}
        self.exits: dict[tuple[str, str], int] = {}
        self.delivered = self.remote = self.workflow = self.outside = 0
        self.node_downs: dict[str, int] = {}
        self._mine = f"{{{node}@"
        self.in_lua: Callable[[], int] | None = None
        """Messages the local path delivered inside Lua states (never seen here one by
        one; read when asked): local ones too."""

    def spawned(self, host: str) -> None:
        self.spawns[host] = self.spawns.get(host, 0) + 1

    def exited(self, host: str, error: MoonwireError | None) -> None:
        key = (host, "normal" if error is None else kind_label(error))
        self.exits[key] = self.exits.get(key, 0) + 1

    def received(self, sender: str) -> None:
        """A message that entered this node from elsewhere, from ``sender`` (a PID, or ""
        from outside moonwire), was delivered (and counted in ``delivered``)."""
        if not sender:
            self.outside += 1
        elif sender.startswith("{@"):  # a workflow's PID names no node
            self.workflow += 1
        elif not sender.startswith(self._mine):  # one of ours, sent round (a group broadcast): local
            self.remote += 1

    def by_origin(self) -> dict[str, int]:
        entered = self.remote + self.workflow + self.outside
        in_lua = self.in_lua() if self.in_lua is not None else 0
        return {"local": self.delivered + in_lua - entered, "remote": self.remote, "workflow": self.workflow,
                "outside": self.outside}

    def node_down(self, reason: str) -> None:
        """A node was declared down (``broker.Membership``'s reason, as an enum)."""
        label = node_down_reason(reason)
        self.node_downs[label] = self.node_downs.get(label, 0) + 1


def node_down_reason(reason: str) -> str:
    """``Membership``'s reason text as one of: ``left`` (it said goodbye), ``restarted``
    (a new incarnation appeared), ``silent`` (no heartbeat for the window), ``cut``
    (the peer declared this node down), ``other``."""
    if reason.startswith("left"):
        return "left"
    if reason.startswith("restarted"):
        return "restarted"
    if reason.startswith("no heartbeat"):
        return "silent"
    if reason.endswith("declared this node down"):
        return "cut"
    return "other"


def bounded(name: str, known: Collection[str]) -> str:
    """``name`` when it is in ``known``, else :data:`OTHER`."""
    return name if name in known else OTHER


MAILBOX_BUCKETS: tuple[float, ...] = (0, 1, 4, 16, 64, 256, 1024, 4096, 16384)
"""Upper bounds of the mailbox depth histogram (messages waiting): empty, one, a few,
tens, hundreds, thousands; the default mailbox limit is 4096."""
