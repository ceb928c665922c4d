"""The node's share of the cluster: its stores on JetStream, started and stopped
together, and told together when a process exits or another node goes down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from moonwire.broker import Client, Pid, Subjects, TaskSet
from moonwire.lua import Kind, MoonwireError, Outcome, Pending, internal

from ._dead_letters import keep_dead_letters
from ._groups import ClusterGroups
from ._locks import ClusterLocks
from ._names import ClusterNames
from ._replica import Holder

log = logging.getLogger("moonwire.cluster")


class Cluster:
    """Cluster names, locks and process groups for one node (``node`` at
    ``incarnation``); the arguments are :class:`ClusterNames`'s. The groups run on
    ``data`` (the node's data connection: broadcasts are process traffic).

    ``expect(node, incarnation)`` is the liveness's (``broker.Membership.expect``): told
    of every other node incarnation that holds something, so one that dies before this
    node ever heard its heartbeat (or died before this node started) is still declared
    down after the window, and what it held freed.
    """

    def __init__(self, nats: NatsClient, data: Client, *, prefix: str, node: str, incarnation: str,
                 replicas: int = 1, timeout: float = 2.0, retry_interval: float = 5.0,
                 expect: Callable[[str, str], None] | None = None) -> None:
        self.node = node
        self.incarnation = incarnation
        self._expect = expect
        self._dead_letters = (nats, Subjects(prefix), replicas, timeout)
        self.names = ClusterNames(nats, prefix=prefix, node=node, incarnation=incarnation, replicas=replicas,
                                  timeout=timeout, retry_interval=retry_interval, on_change=self._held)
        self.locks = ClusterLocks(nats, prefix=prefix, node=node, incarnation=incarnation, replicas=replicas,
                                  timeout=timeout, retry_interval=retry_interval, on_change=self._held)
        self.on_group_change: Callable[[str, str, bool], None] | None = None
        """Set by the process table: a join or leave seen cluster-wide (``pg.monitor``)."""
        self.on_broadcast: Callable[[str, Msg], None] | None = None
        """Set by the inboxes: a broadcast for a group with members here (read loop: no waiting)."""
        self.groups = ClusterGroups(data, prefix=prefix, node=node, incarnation=incarnation, replicas=replicas,
                                    timeout=timeout, retry_interval=retry_interval, on_change=self._group_changed,
                                    on_broadcast=self._broadcast)
        self._calls = TaskSet(log)
        """Calls made for processes (:meth:`call`)."""

    async def start(self) -> None:
        """Open every store. Never raises for a missing JetStream: each store stays
        unavailable, says so once, and keeps trying."""
        stores = (self.names, self.locks.names, self.groups)
        for store in stores:
            store.unavailable_level = logging.INFO  # said once, below, for all of them
        await asyncio.gather(self.names.start(), self.locks.start(), self.groups.start())
        missing = [store for store in stores if store.unavailable_at_start is not None]
        # Kept, not only published: `moonwire dlq` reads them later (_dead_letters.py).
        nats, subjects, replicas, timeout = self._dead_letters
        await keep_dead_letters(nats, subjects, replicas=replicas, timeout=timeout,
                                level=logging.INFO if missing else logging.WARNING)
        if missing:
            log.warning("cluster names, locks and process groups are unavailable until JetStream answers: %s; "
                        "registering in a cluster scope, locks and pg answer Unavailable meanwhile (is the NATS "
                        "server running with -js?); trying again, at least every %gs",
                        missing[0].unavailable_at_start, missing[0].retry_interval)

    async def stop(self) -> None:
        """Stop following the stores, once the releases under way are done (bounded)."""
        await self._calls.stop()
        await asyncio.gather(self.names.stop(), self.locks.stop(), self.groups.stop())

    def call(self, work: Coroutine[Any, Any, Any], what: str, on_abandon: Callable[[], None] | None = None
             ) -> Pending:
        """Run ``work`` (a store call for a process) as a task owned here; the answer is
        its value, or its error (a :class:`MoonwireError` as it is, anything else as
        Internal). Dropping the answer cancels the task, then calls ``on_abandon``."""
        async def answered() -> Outcome:
            try:
                return Outcome(value=await work)
            except MoonwireError as err:  # an answer (AlreadyExists, Unavailable), not a failure
                return Outcome(error=err)

        task = self._calls.start(answered(), what)

        def abandon() -> None:
            task.cancel()
            if on_abandon is not None:
                on_abandon()

        pending = Pending(abandon)

        def done(task: asyncio.Task[Outcome]) -> None:
            if task.cancelled():
                pending.settle(Outcome(error=MoonwireError(f"{what}: cancelled", Kind.CANCELED, retryable=False)))
            elif (error := task.exception()) is not None:  # a bug: the task set has logged it
                pending.settle(Outcome(error=internal(f"{what}: {type(error).__name__}: {error}")))
            else:
                pending.settle(task.result())

        task.add_done_callback(done)
        return pending

    @property
    def alive(self) -> Callable[[str], bool] | None:
        """Whether a PID of this node is a live process (set by the process table): a
        name or lock of an exited process is never registered again by healing."""
        return self.names.alive

    @alive.setter
    def alive(self, alive: Callable[[str], bool] | None) -> None:
        self.names.alive = self.locks.names.alive = alive

    def _held(self, name: str, before: Holder | None, after: Holder | None) -> None:
        if after is not None and after.node != self.node and self._expect is not None:
            self._expect(after.node, after.incarnation)

    def _group_changed(self, group: str, pid: str, joined: bool) -> None:
        if joined and self._expect is not None and (member := Pid.parse(pid)) is not None \
                and member.node != self.node:
            self._expect(member.node, member.incarnation)
        if self.on_group_change is not None:
            self.on_group_change(group, pid, joined)

    def _broadcast(self, group: str, msg: Msg) -> None:
        if self.on_broadcast is not None:
            self.on_broadcast(group, msg)

    def exited(self, pid: str) -> None:
        """``pid`` (a process of this node) ended: free what it held. Costs a dictionary
        look-up per store when it held nothing."""
        self.names.release_soon(pid)
        self.locks.release_soon(pid)
        self.groups.release_soon(pid)

    def node_down(self, node: str, incarnation: str) -> None:
        """``incarnation`` of ``node`` is gone: free what its processes held."""
        self.names.node_down_soon(node, incarnation)
        self.locks.node_down_soon(node, incarnation)
        self.groups.node_down_soon(node, incarnation)
