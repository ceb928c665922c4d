"""``moonwire top``: the cluster at a glance, redrawn every interval (docs/operations.md).

Each sample asks every node for its ``ps`` answer (the control plane's status answer
with the process list, ``docs/wire.md``) and the dead-letter stream for its letters per
node. The answer is read through a small typed view, :class:`NodeStatus`: processes and
mailbox depth per host come from the process list; counters (messages, dead letters)
from the answer's ``metrics`` map, when the node has one; rates are the difference
between two samples over the time between them. A node that does not answer is shown
as such, with what the others say of it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient

from moonwire.broker import Subjects
from moonwire.lua import MoonwireError

from ..cluster import DeadLetterStore
from ..processes import survey
from ._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, talk
from ._listings import age, table
from ._watch import watching

MESSAGES = ("messages_delivered_total", "messages_delivered")
"""The counter of the ``metrics`` map that MSG/S is the rate of (the first present;
a ``moonwire_`` prefix is ignored)."""
DEAD_LETTERS = ("dead_letters_total", "dead_letters_published_total", "dead_letters")
"""The counter of dead letters; without it, DEAD/S is the rate at which the node's
letters grow in the dead-letter stream."""


@dataclass(frozen=True, slots=True)
class HostLoad:
    processes: int = 0
    """Its processes: the node's count (``host_processes``) when it gives one, else those
    listed."""
    mailbox: int = 0
    """Messages waiting in the mailboxes of its processes."""
    deepest: int = 0
    """The fullest mailbox."""


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What ``top`` reads of a node's status answer."""

    node: str
    uptime: float
    processes: int
    listed: int
    """Processes the answer listed (fewer than ``processes``: the per-host figures are
    of these only)."""
    hosts: dict[str, HostLoad]
    metrics: dict[str, float] = field(default_factory=dict)
    counted: frozenset[str] = frozenset()
    """Hosts whose process count is the node's own (``host_processes``), not the list's."""

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> NodeStatus:
        """Raises KeyError, TypeError, ValueError for an answer of another shape."""
        hosts: dict[str, HostLoad] = {str(host): HostLoad() for host in answer.get("hosts", ())}
        listed = answer.get("list", [])
        for process in listed:
            host = str(process["host"])
            load, depth = hosts.get(host, HostLoad()), int(process["inbox"])
            hosts[host] = HostLoad(load.processes + 1, load.mailbox + depth, max(load.deepest, depth))
        for host, count in (answer.get("host_processes") or {}).items():  # exact, whatever the list held
            load = hosts.get(str(host), HostLoad())
            hosts[str(host)] = HostLoad(int(count["processes"]), load.mailbox, load.deepest)
        metrics = {str(name).removeprefix("moonwire_"): float(value)
                   for name, value in (answer.get("metrics") or {}).items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        return cls(str(answer["node"]), float(answer["uptime"]), int(answer["processes"]), len(listed), hosts, metrics,
                   frozenset(str(host) for host in answer.get("host_processes") or {}))

    def counter(self, names: tuple[str, ...]) -> float | None:
        return next((self.metrics[name] for name in names if name in self.metrics), None)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    nodes: dict[str, NodeStatus]
    missing: list[str]
    """Nodes the others know of that did not answer."""
    letters: dict[str, int] | None
    """Dead letters kept per node; None: the stream could not be read."""


async def sample(nc: NatsClient, subjects: Subjects, limit: int) -> Sample:
    answers = await survey(nc, subjects, "ps", {"limit": limit})
    nodes: dict[str, NodeStatus] = {}
    for name, answer in answers.answers.items():
        try:
            nodes[name] = NodeStatus.from_answer(answer)
        except (KeyError, TypeError, ValueError):
            answers.missing.append(name)  # an answer top cannot read counts as none
    try:
        letters: dict[str, int] | None = await DeadLetterStore(nc, subjects, timeout=1.0).counts()
    except MoonwireError:
        letters = None
    return Sample(time.monotonic(), nodes, sorted(answers.missing), letters)


def _kept(sample: Sample | None, node: str) -> float | None:
    """The letters the stream kept for ``node`` at ``sample``; None: not known."""
    if sample is None or sample.letters is None:
        return None
    return float(sample.letters.get(node, 0))


def _rate(now: float | None, before: float | None, seconds: float) -> str:
    if now is None or before is None or seconds <= 0:
        return "-"
    return _number(max(now - before, 0.0) / seconds)


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def render(current: Sample, previous: Sample | None) -> int:
    """Print one frame; the exit status (1 when a node did not answer, or none did)."""
    seconds = current.at - previous.at if previous is not None else 0.0
    letters = current.letters or {}
    total = sum(status.processes for status in current.nodes.values())
    print(f"{len(current.nodes)} node(s), {total} process(es), "
          + (f"{sum(letters.values())} dead letter(s) kept" if current.letters is not None
             else "dead letters: the stream cannot be read"))
    print()
    rows = [["NODE", "UPTIME", "PROCS", "MSG/S", "MAILBOX", "DEEPEST", "DEAD", "DEAD/S"]]
    hosts = [["HOST", "NODE", "PROCS", "MAILBOX", "DEEPEST"]]
    for name in sorted(current.nodes):
        status = current.nodes[name]
        before = previous.nodes.get(name) if previous is not None else None
        dead_now = status.counter(DEAD_LETTERS)
        if dead_now is not None:
            dead_rate = _rate(dead_now, before.counter(DEAD_LETTERS) if before else None, seconds)
        else:  # without the node's counter: how fast its letters grow in the stream
            dead_rate = _rate(_kept(current, name), _kept(previous, name), seconds)
        loads = status.hosts.values()
        partial = "+" if status.listed < status.processes else ""
        rows.append([name, age(status.uptime), str(status.processes),
                     _rate(status.counter(MESSAGES), before.counter(MESSAGES) if before else None, seconds),
                     f"{sum(load.mailbox for load in loads)}{partial}", str(max((l.deepest for l in loads), default=0)),
                     str(letters.get(name, 0)) if current.letters is not None else "-", dead_rate])
        for host, load in sorted(status.hosts.items()):
            counted = "" if host in status.counted else partial
            hosts.append([host, name, f"{load.processes}{counted}", f"{load.mailbox}{partial}", str(load.deepest)])
    for name in current.missing:
        rows.append([name, "(no answer)", "?", "?", "?", "?", str(letters.get(name, "-")), "?"])
    table(rows)
    if len(hosts) > 1:
        print()
        table(hosts)
    if any(status.listed < status.processes for status in current.nodes.values()):
        print("\n+: of the processes listed only (raise --limit)")
    if not current.nodes:
        print("error: no node answered within a second", file=sys.stderr)
        return EXIT_FAILURE
    if current.missing:
        print(f"error: no answer from node(s): {', '.join(current.missing)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0 or args.count < 0 or args.limit < 0:
        print("error: --interval must be > 0, --count and --limit >= 0", file=sys.stderr)
        return EXIT_USAGE
    previous: list[Sample] = []

    async def frame(nc: NatsClient, subjects: Subjects) -> int:
        if not previous:  # rates need two samples: the first frame waits for the second
            previous.append(await sample(nc, subjects, args.limit))
            await asyncio.sleep(args.interval)
        current = await sample(nc, subjects, args.limit)
        status = render(current, previous[-1])
        previous[:] = [current]
        return status

    count = 1 if args.once else args.count
    return talk(args, lambda nc, subjects: watching(nc, subjects, frame, interval=args.interval,
                                                    title="moonwire top", count=count))
