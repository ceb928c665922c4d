"""Spawning, for the process table (``_table.py``): here, on another node, or as a
workflow (wippy-surface §3.2, DESIGN §6).

A spawn runs here when this node runs the host and the spawner pins no other node;
on a ``temporal.worker`` host it starts a workflow; otherwise it is a request to the
nodes that run the host. The parent's monitor and link are in place before the
child's first instruction runs, wherever the child runs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from moonwire.broker import Pid, PidAllocator
from moonwire.lua import (LINK_DOWN, Answer, Event, Kind, Mailbox, Message, MoonwireError, Outcome, Pending,
                          SpawnRequest, Unit, invalid, not_found)

from ..functions import CodeLoader, Functions
from ..project import ProcessEntry, Project
from ..telemetry import ProcessCounts
from ._hosts import ProcessHost
from ._clustered import check_scope
from ._records import ExitHook, ProcessRecord, link, monitor
from ._targets import RemoteTarget, WorkflowTarget

if TYPE_CHECKING:
    from ..cluster import Cluster


class Spawning:
    """The spawning half of :class:`~._table.ProcessTable` (a mixin: it uses the table's
    records and its ``pid_of``, ``_add``, ``_name``, ``_fire`` and ``_tell``)."""

    node: str
    project: Project
    functions: Functions
    code: CodeLoader
    hosts: dict[str, ProcessHost]
    pids: PidAllocator
    records: dict[str, ProcessRecord]
    names: dict[str, str]
    remote: RemoteTarget
    workflows: WorkflowTarget
    counts: ProcessCounts

    if TYPE_CHECKING:
        def _cluster(self) -> Cluster: ...

        def control(self, verb: str, data: dict[str, Any]) -> Any: ...

    def spawn_hosts(self) -> list[str]:
        """The hosts other nodes may spawn on here: process hosts (all but the built-in
        terminal host) and Temporal workers."""
        return self.project.spawn_hosts()

    def spawn(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._spawn(unit, request, wait_exit=False)

    def spawns_here(self, request: SpawnRequest) -> bool:
        return (request.host in self.hosts and request.options.get("node") in (None, self.node)
                and (request.name is None or request.scope == "local") and not self.workflows.serves(request.host))

    def exec(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._spawn(unit, request, wait_exit=True)

    def call_process(self, request: SpawnRequest, reason: str) -> Answer:
        """A process entry called as a function (wippy-modules §12.2): start it here, on
        its ``default_host``, with no parent; the answer is its exit result, and the
        exit hook is the hidden watcher. Dropping the answer (the caller gave up) posts
        CANCEL with ``reason``; the process decides what to do with it."""
        pending = Pending()
        try:
            pid = self.start(request, on_exit=pending.settle)
        except MoonwireError as err:
            return Outcome(error=err)

        def cancel() -> None:
            record = self.records.get(pid)
            if record is not None and record.unit.outcome is None:
                self.control("cancel", {"target": pid, "reason": reason})

        pending.abandon = cancel
        return pending

    def _spawn(self, unit: Unit | None, request: SpawnRequest, wait_exit: bool) -> Answer:
        """Spawn here when this node runs the host (and the spawner pins no other node),
        else on another node. With ``wait_exit``, the answer is the child's result."""
        try:
            node = request.options.get("node")
            if node is not None and not isinstance(node, str):
                raise invalid("spawn option 'node' must be a node name")
            if self.workflows.serves(request.host):
                return self._spawn_workflow(unit, request, wait_exit)
            remote = node not in (None, self.node) or (node is None and request.host not in self.hosts)
            # A parent PID only when something refers to it (a remote exec waits on its EXIT).
            parent = self.pid_of(unit) if unit is not None and (
                request.monitor or request.link or request.messages or (remote and wait_exit)) else ""
            if remote:
                if wait_exit and not parent:
                    raise invalid("exec on another node needs a calling process")
                return self._spawn_remote(parent, request, node, wait_exit)
            if not wait_exit:
                return self.start_here(request, parent)
            pending = Pending()
            started = self.start_here(request, parent, on_exit=pending.settle)
            if isinstance(started, Pending):  # a cluster name first: a failure is the answer
                started.listen(lambda outcome: None if outcome.ok else pending.settle(outcome))
                pending.abandon = started.drop
            elif not started.ok:
                return started
            return pending
        except MoonwireError as err:
            return Outcome(error=err)

    def _spawn_workflow(self, unit: Unit | None, request: SpawnRequest, wait_exit: bool) -> Answer:
        """Start a workflow: a Temporal client call from this node, wherever its workers run."""
        parent = self.pid_of(unit) if unit is not None and (request.monitor or request.link or request.messages) \
            else ""
        me = self.records.get(parent)
        pending = Pending()

        def started(outcome: Outcome) -> None:
            # Not called once the parent has ended: its end drops ``pending``, which
            # cancels the start, and its exit stops the watches it held.
            if me is not None and outcome.ok and not wait_exit:
                if request.monitor:
                    me.watching = (me.watching or set()) | {outcome.value}
                if request.link:
                    me.links = (me.links or set()) | {outcome.value}
            pending.settle(outcome)

        answer = self.workflows.spawn(request, parent, wait_exit, self._tell)
        answer.listen(started)
        pending.abandon = answer.drop
        return pending

    def _spawn_remote(self, parent: str, request: SpawnRequest, node: str | None, wait_exit: bool) -> Pending:
        """Spawn through another node. The monitor and link are recorded on the child's
        node before it starts (they travel in the request); events about the child that
        arrive here before its PID does are held until then (see :meth:`deliver_event`)."""
        me = self.records.get(parent)
        watched = request.monitor or request.link or wait_exit
        if wait_exit:
            request = replace(request, monitor=True)  # the child's EXIT carries the result
        if me is not None and watched:
            me.spawning += 1
        pending = Pending()

        def spawned(outcome: Outcome) -> None:
            if me is None or not watched:
                pending.settle(outcome)
                return
            me.spawning -= 1
            child = outcome.value
            if not (outcome.ok and isinstance(child, str)):
                pending.settle(outcome)
            elif me.unit.outcome is not None:
                self._orphaned(me, child, request)  # nobody waits on ``pending`` any more
            else:
                if request.monitor:
                    me.watching = me.watching or set()
                    me.watching.add(child)
                if request.link:
                    me.links = me.links or set()
                    me.links.add(child)
                if (remote := Pid.parse(child)) is not None and not remote.is_workflow:
                    self.remote.expect(remote)
                if wait_exit:
                    me.exec_waits = me.exec_waits or {}
                    me.exec_waits[child] = pending
                else:
                    pending.settle(outcome)
            early = me.early or []
            me.early = [e for e in early if e.sender != child] if me.spawning else None
            for event in early:
                if event.sender == child:
                    self._fire(me, event)

        # Never abandoned: if the parent ends while this is on the way, the reply still
        # comes back here so the child's node learns of it (_orphaned).
        self.remote.spawn(request, parent, node, spawned)
        return pending

    def _orphaned(self, parent: ProcessRecord, child: str, request: SpawnRequest) -> None:
        """The parent exited while its remote spawn was on the way: tell the child's node
        what the parent's exit would have told it."""
        remote = Pid.parse(child)
        outcome = parent.unit.outcome
        if remote is None or outcome is None:
            return
        if request.monitor:
            self.remote.forget(parent.pid, remote)
        if request.link:
            self.remote.tell(remote, Event(LINK_DOWN, parent.pid, time.time(), outcome.value, outcome.error))

    def start_here(self, request: SpawnRequest, parent: str = "", on_exit: ExitHook | None = None) -> Answer:
        """:meth:`start`, answered with the PID. A name in a cluster scope is registered
        first, to the PID the child will have, so it is in place before the child's
        first instruction; when it is taken (AlreadyExists) or the registry cannot be
        reached (Unavailable), no child starts and that is the answer."""
        if request.name is None or request.scope == "local":
            try:
                return Outcome(value=self.start(request, parent, on_exit))
            except MoonwireError as err:
                return Outcome(error=err)
        check_scope(request.scope)
        cluster = self._cluster()
        host = self._placement(request)[1]
        try:  # the child's slot is held while its name is registered: a full host refuses at once
            slot = host.reserve()
        except MoonwireError as err:
            return Outcome(error=err)
        pid, name = self.pids.next(host.id), request.name

        async def register_then_start() -> str:
            try:
                await cluster.names.register(name, pid)
                slot.release()  # and taken again by start(), with no await in between
                return self.start(request, parent, on_exit, pid=pid)
            except BaseException:
                # No child: a write that timed out may still land, now or later, for a
                # PID that will never run; abandoning it frees the name whenever it does.
                cluster.names.abandon(pid)
                raise
            finally:
                slot.release()

        def abandoned() -> None:  # the spawner ended while registering: the same
            slot.release()
            cluster.names.abandon(pid)

        return cluster.call(register_then_start(), f"spawning {request.entry} as cluster name {name!r}",
                            on_abandon=abandoned)

    def _placement(self, request: SpawnRequest) -> tuple[ProcessEntry, ProcessHost]:
        """The entry and the host of a spawn here.

        Raises:
            MoonwireError: NotFound (no such entry or host), Invalid (not a process.lua entry).
        """
        entry = self.project.get(request.entry)
        if entry is None:
            raise not_found(f"no entry {request.entry}")
        if not isinstance(entry, ProcessEntry):
            raise invalid(f"{request.entry} is a {entry.kind}, not a process.lua entry")
        host = self.hosts.get(request.host)
        if host is None:
            raise not_found(f"no process host {request.host} on node {self.node}")
        return entry, host

    def start(self, request: SpawnRequest, parent: str = "", on_exit: ExitHook | None = None, *,
              pid: str | None = None) -> str:
        """Start a process for ``request`` here and return its PID. ``parent`` (a PID here
        or on another node) gets the monitor and link the request asks for and is the
        sender of its queued messages. Monitor, link, name and queued messages are in
        place before the child's first instruction runs; ``on_exit`` is called with its
        outcome when it exits.

        Raises:
            MoonwireError: NotFound (no such entry or host), Invalid (not a process.lua
                entry), AlreadyExists (``with_name`` taken), or the entry's load error.
        """
        entry, host = self._placement(request)
        local_name = request.name if request.scope == "local" else None  # a cluster name is registered already
        if local_name is not None and local_name in self.names:
            raise MoonwireError(f"name {request.name!r} is already registered to {self.names[request.name]}",
                                Kind.ALREADY_EXISTS, retryable=False)
        if local_name is not None and Pid.parse(local_name) is not None:
            raise invalid(f"name {local_name!r} looks like a PID")
        local_parent = self.records.get(parent) if parent else None
        remote_parent = Pid.parse(parent) if parent and local_parent is None else None
        if parent and local_parent is None and remote_parent is None:
            raise invalid(f"parent {parent!r} is not a PID")
        code = self.code.code(entry)
        shard, export = host.instantiate(code)

        pid = pid or self.pids.next(host.id)
        child = Unit(shard.state, entry.id, context=dict(request.context) if request.context else None, services=self.functions,
                     processes=self, loop=host.loop, security=request.security, trace=request.trace)
        child.pid = pid
        child.mailbox = Mailbox(shard.state, host.settings.mailbox_limit, child, local=True)
        child.notify = host.ready
        record = ProcessRecord(pid, child, entry.id, host.id, shard, code=code)
        self._add(record)
        self.counts.spawned(host.id)
        if local_name is not None:
            self._name(local_name, record)
        if local_parent is not None:
            if request.monitor:
                monitor(local_parent, record)
            if request.link:
                link(local_parent, record)
        elif remote_parent is not None and (request.monitor or request.link):
            if request.monitor:
                record.watchers = {parent}
            if request.link:
                record.links = {parent}
            if not remote_parent.is_workflow:
                self.remote.expect(remote_parent)
        if on_exit is not None:
            record.exit_hooks = [on_exit]
        for topic, payloads in request.messages:
            child.mailbox.post(Message(topic, payloads, parent, request.trace))
        try:
            child.start(export, request.args)
        except MoonwireError as err:  # arguments Lua cannot hold: it exits before it ran
            child.abort(err)
            raise
        return pid
