"""Dead letters kept: a JetStream stream over ``<prefix>.dlq.>`` (docs/operations.md,
*Dead letters*).

Every node republishes what it cannot deliver to ``<prefix>.dlq.<node>`` (processes'
``DeadLetters``). Published only, a dead letter reached whoever was subscribed at that
moment and nobody else. The stream ``<prefix>_dlq`` (each ``.`` of the prefix as ``_``)
keeps them, bounded (:data:`LIMITS`: the oldest go first), so that ``moonwire dlq``
lists them later with their reasons, replays them to the subject they failed on, and
purges them. Each node creates the stream at start when it is missing and otherwise uses
it as it is (its limits are an operator's to change: ``nats stream edit``). Nothing on
the node's path changes: the dead-letter publish stays a core NATS publish, which the
server stores as it passes.

A replay publishes a letter again, as it first came (its own headers, less the
dead-letter ones and the node-to-node stream's, which would make the receiver drop it as
a resend), with ``Mw-Dlq-Replays`` counting the replays, then deletes it from the
stream. Letters dead-lettered during a replay are stored after the last one the replay
read, so it never reads them again: a letter that fails again is back in the stream with
its new reason and a higher count, never replayed in a loop. Only the data plane is
replayed (process inboxes, cluster names, groups, workflows, functions): a letter naming
any other subject, a control subject say, is left where it is and reported, since
anyone may publish to the dead-letter subject.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from moonwire.broker import AFTER_HEADER, SEQ_HEADER, Subjects
from moonwire.lua import MoonwireError

from ..wire import DLQ_REASON, DLQ_SUBJECT
from ._jetstream import bounded

log = logging.getLogger("moonwire.cluster")

REPLAYS_HEADER = "Mw-Dlq-Replays"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the stream keeps at most; past any of them the oldest letters go."""

    messages: int = 100_000
    bytes: int = 256 * 1024 * 1024
    age: float = 7 * 24 * 3600.0
    """Seconds."""


LIMITS = Limits()

REPLAYABLE = ("p", "n", "g", "wf", "fn")
"""The subject kinds under the prefix a replay may publish to: the data plane."""

_NOT_REPLAYED = frozenset({DLQ_REASON, DLQ_SUBJECT, REPLAYS_HEADER, SEQ_HEADER, AFTER_HEADER})
"""Headers a replay leaves out: the letter's own, and the node-to-node stream's."""


def stream_name(prefix: str) -> str:
    return prefix.replace(".", "_") + "_dlq"


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """One dead letter as the stream keeps it."""

    seq: int
    """Its id: the stream sequence number."""
    time: datetime
    node: str
    """The node that dead-lettered it."""
    subject: str
    """Where it failed (and where a replay sends it)."""
    reason: str
    replays: int
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


async def keep_dead_letters(nc: NatsClient, subjects: Subjects, *, replicas: int, timeout: float,
                            limits: Limits = LIMITS, level: int = logging.WARNING) -> bool:
    """Create the dead-letter stream when it is missing. False (and one line at
    ``level``) when JetStream does not answer: dead letters are then only published,
    until a node starts with JetStream there."""
    js = nc.jetstream(timeout=timeout)
    name = stream_name(subjects.prefix)

    async def ensure() -> None:
        try:
            await js.stream_info(name)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = StreamConfig(name=name, subjects=[subjects.dead_letters(">")], retention=RetentionPolicy.LIMITS,
                              max_msgs=limits.messages, max_bytes=limits.bytes, max_age=limits.age,
                              discard=DiscardPolicy.OLD, storage=StorageType.FILE, num_replicas=replicas,
                              description="moonwire dead letters (docs/operations.md)")
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.stream_info(name)  # created by another node at the same moment: theirs

    try:
        await bounded(ensure(), timeout, f"keeping dead letters in the stream {name!r}")
    except MoonwireError as err:
        log.log(level, "dead letters are published but not kept: %s", err.message)
        return False
    return True


class DeadLetterStore:
    """The dead-letter stream as ``moonwire dlq`` reads and changes it.

    Raises (every method): :class:`MoonwireError` (Unavailable) when JetStream does not
    answer or the stream does not exist (no node has run with JetStream under this prefix).
    """

    def __init__(self, nc: NatsClient, subjects: Subjects, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.subjects = subjects
        self.js = nc.jetstream(timeout=timeout)
        self.name = stream_name(subjects.prefix)
        self.timeout = timeout
        self._prefix = subjects.dead_letters("")

    def _filter(self, node: str | None) -> str:
        return self.subjects.dead_letters(node or ">")

    async def counts(self) -> dict[str, int]:
        """Letters kept per node."""
        info = await bounded(self.js.stream_info(self.name, subjects_filter=self._filter(None)), self.timeout,
                             f"reading the stream {self.name!r}")
        return {subject[len(self._prefix):]: count for subject, count in (info.state.subjects or {}).items()}

    async def letters(self, node: str | None = None, *, until: int | None = None) -> AsyncIterator[StoredLetter]:
        """Every letter kept (of ``node``), oldest first, up to sequence ``until``."""
        counts = await self.counts()
        if not any(count for name, count in counts.items() if node is None or name == node):
            return  # else the consumer would wait its timeout for a first letter
        last = await self.last_seq() if until is None else until
        subscription = await bounded(self.js.subscribe(self._filter(node), stream=self.name, ordered_consumer=True,
                                                       deliver_policy=DeliverPolicy.ALL),
                                     self.timeout, f"reading the stream {self.name!r}")
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=self.timeout)
                except nats.errors.TimeoutError:
                    return  # nothing more (of this node) up to now
                meta = msg.metadata
                if meta.sequence.stream > last:
                    return
                headers = dict(msg.headers or {})
                yield StoredLetter(meta.sequence.stream, meta.timestamp, msg.subject[len(self._prefix):],
                                   headers.get(DLQ_SUBJECT, ""), headers.get(DLQ_REASON, ""),
                                   _count(headers.get(REPLAYS_HEADER)), headers, msg.data)
                if meta.num_pending == 0 or meta.sequence.stream >= last:
                    return
        finally:
            await subscription.unsubscribe()

    def refusal(self, letter: StoredLetter) -> str | None:
        """Why ``letter`` is not replayed, or None when it may be."""
        prefix = self.subjects.prefix + "."
        kind = letter.subject[len(prefix):].partition(".")[0] if letter.subject.startswith(prefix) else ""
        if kind not in REPLAYABLE or letter.subject.count(".") < prefix.count(".") + 1:
            return f"its subject {letter.subject or '(none)'!r} is not a process, name, group, workflow or " \
                   "function subject"
        return None

    async def replay(self, letter: StoredLetter) -> None:
        """Publish ``letter`` to its subject as it first came (one replay more), then
        delete it from the stream. The caller checked :meth:`refusal`."""
        headers = {k: v for k, v in letter.headers.items() if k not in _NOT_REPLAYED and not k.startswith("Nats-")}
        headers[REPLAYS_HEADER] = str(letter.replays + 1)
        await self.nc.publish(letter.subject, letter.body, headers=headers)

    async def delete(self, seqs: list[int]) -> None:
        """Delete these letters (already gone ones are no error)."""
        async def one(seq: int) -> None:
            try:
                await self.js.delete_msg(self.name, seq)
            except nats.js.errors.NotFoundError:
                pass
            except nats.js.errors.APIError as err:
                if err.err_code != 10057:  # JSStreamMsgDeleteFailedF: already gone
                    raise

        for start in range(0, len(seqs), 64):  # a few in flight: a replayed flood is deleted in seconds
            await bounded(asyncio.gather(*(one(seq) for seq in seqs[start:start + 64])), self.timeout * 2,
                          f"deleting replayed letters from {self.name!r}")

    async def purge(self, node: str | None = None) -> int:
        """Delete every letter (of ``node``); how many there were."""
        counts = await self.counts()
        await bounded(self.js.purge_stream(self.name, subject=self._filter(node)), self.timeout,
                      f"purging the stream {self.name!r}")
        return sum(count for name, count in counts.items() if node is None or name == node)

    async def last_seq(self) -> int:
        info = await bounded(self.js.stream_info(self.name), self.timeout, f"reading the stream {self.name!r}")
        return int(info.state.last_seq)


def _count(value: str | None) -> int:
    try:
        return max(int(value or 0), 0)
    except ValueError:
        return 0
