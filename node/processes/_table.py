"""The node's processes: PIDs, the local name registry, monitors and links, message
delivery, and what happens when a process exits (wippy-surface §3.1-§3.7).

Every unit that has a PID is a :class:`ProcessRecord` here: processes on this node's
hosts, and function calls that used the process API (they get a PID for the length of
the call). Delivery between local processes is synchronous: ``send`` puts the message in
the receiver's mailbox before it returns, so messages from one sender arrive in send
order, and an EXIT (posted when the sender has exited) arrives after all of them.

Exit outcomes (``_exit``), for the process P that ended:

* every monitor of P gets EXIT ``{kind, from, at, result = {value, error}}``;
* on an abnormal exit (an error of any kind, terminate included), every process linked
  to P gets LINK_DOWN when it traps links, and otherwise dies with "linked process
  failed", which is itself abnormal and cascades along its own links;
* on a normal exit (a return without error), links fire nothing;
* P's names are released and the monitors and links it held are forgotten.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from moonwire.broker import Pid, PidAllocator
from moonwire.lua import (CANCEL, EXIT, LINK_DOWN, Answer, Event, Kind, Mailbox, Message, MoonwireError, Outcome,
                          Pending, SpawnRequest, Unit, invalid, not_found)

from ..functions import CodeLoader, Functions
from ..project import HostSettings, ProcessEntry, Project
from ..wire import decode_spawn, noproc
from ..wire import node_down as node_down_error
from ._hosts import ProcessHost, Shard
from ._targets import NO_WORKFLOWS, UNREACHABLE, RemoteTarget, Target, WorkflowTarget

log = logging.getLogger("moonwire.processes")

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


class ProcessTable:
    """Implements :class:`lua.ProcessServices` for every unit on this node."""

    def __init__(self, node: str, project: Project, functions: Functions, hosts: dict[str, ProcessHost], *,
                 pids: PidAllocator | None = None, remote: RemoteTarget = UNREACHABLE,
                 workflows: WorkflowTarget = NO_WORKFLOWS) -> None:
        self.node = node
        self.project = project
        self.functions = functions
        self.code: CodeLoader = functions.code
        self.hosts = hosts
        self.pids = pids if pids is not None else PidAllocator(node)
        self.records: dict[str, ProcessRecord] = {}
        self.names: dict[str, str] = {}
        self.uids: dict[str, ProcessRecord] = {}
        self.remote = remote
        """Processes on other nodes."""
        self.workflows = workflows
        """Workflows as processes: spawn on a temporal.worker, send, watch."""
        self._exits: deque[ProcessRecord] = deque()
        self._exiting = False
        self._empty = asyncio.Event()
        self._empty.set()
        self.mailbox_limit = HostSettings().mailbox_limit
        self.started = time.monotonic()

    # ------------------------------------------------------------ lookups

    def _resolve(self, dest: str) -> ProcessRecord:
        """The live local process ``dest`` names (a PID or a registered name).

        Raises:
            MoonwireError: NotFound for an exited or unknown PID or an unknown name;
                Unavailable for a PID of another node (not reachable from here yet).
        """
        record = self.records.get(dest)
        if record is not None:
            return record
        pid = Pid.parse(dest)
        if pid is None:
            registered = self.names.get(dest)
            if registered is not None:
                return self.records[registered]
            raise not_found(f"no process registered as {dest!r}")
        if pid.node != self.node:
            raise MoonwireError(f"process {dest} is on node {pid.node}, which this node cannot reach",
                                Kind.UNAVAILABLE, retryable=True)
        raise not_found(f"process {dest} not found: it has exited or never existed")

    def pid_of(self, unit: Unit) -> str:
        if unit.pid is None:  # a function call using the process API: a PID for the call
            pid = self.pids.next(FUNCTION_HOST)
            unit.pid = pid
            unit.mailbox = Mailbox(unit.state, self.mailbox_limit)
            self._add(ProcessRecord(pid, unit, unit.label, FUNCTION_HOST, None))
        return unit.pid

    def _add(self, record: ProcessRecord) -> None:
        record.unit.record = record
        record.unit.on_end = self._ended
        self.records[record.pid] = record
        self.uids[record.pid[record.pid.index("|") + 1:-1]] = record
        self._empty.clear()

    # ------------------------------------------------------------ messages

    def send(self, unit: Unit | None, dest: str, topic: str, payloads: list[Any]) -> None:
        self.route(dest, Message(topic, payloads, self.pid_of(unit) if unit is not None else ""))

    def route(self, dest: str, message: Message) -> None:
        """Deliver ``message`` to ``dest``: a local process, a process on another node,
        or a workflow (a signal)."""
        local = self.records.get(dest)
        if local is not None:  # the common case, without parsing the PID
            self._post(local, message)
            return
        elsewhere = self._elsewhere(dest)
        if elsewhere is not None:
            target, pid = elsewhere
            target.send(pid, message)
            return
        self._post(self._resolve(dest), message)

    def deliver(self, uid: str, message: Message) -> None:
        """A message from the wire for the process with ``uid``.

        Raises:
            MoonwireError: no such process on this node, or its mailbox is full.
        """
        record = self.uids.get(uid)
        if record is None:
            raise not_found(f"no process with uid {uid} on node {self.node}")
        self._post(record, message)

    @staticmethod
    def _post(target: ProcessRecord, message: Message) -> None:
        assert target.unit.mailbox is not None
        if not target.unit.mailbox.post(message):
            raise MoonwireError(f"mailbox of {target.pid} is full ({target.unit.mailbox.limit} unread messages)",
                                Kind.UNAVAILABLE, retryable=True)

    def _elsewhere(self, dest: str) -> tuple[Target, Pid] | None:
        """Where ``dest`` lives when it is the PID of a workflow or of a process on
        another node (the one place that chooses); None for a local PID or a name."""
        if not dest.startswith("{"):
            return None
        pid = Pid.parse(dest)
        if pid is None:
            return None
        if pid.is_workflow:
            return self.workflows, pid
        if pid.node != self.node:
            return self.remote, pid
        return None

    def cancel(self, unit: Unit | None, dest: str, reason: str) -> Answer | None:
        return self._signal(unit, "cancel", dest, {"reason": reason})

    def terminate(self, unit: Unit | None, dest: str) -> Answer | None:
        return self._signal(unit, "terminate", dest, {})

    def _signal(self, unit: Unit | None, verb: str, dest: str, body: dict[str, Any]) -> Answer | None:
        """``cancel`` or ``terminate``: done here for a local target (None), else an answer
        settled once the target's node has done it (NotFound when it does not exist)."""
        by = self.pid_of(unit) if unit is not None else ""
        elsewhere = self._elsewhere(dest)
        if elsewhere is not None:
            target, pid = elsewhere
            return target.end(pid, verb, by, str(body.get("reason", "")))
        self.control(verb, {**body, "target": self._resolve(dest).pid, "by": by})
        return None

    # ------------------------------------------------------------ spawning

    def spawn_hosts(self) -> list[str]:
        """The hosts other nodes may spawn on here: process hosts (all but the built-in
        terminal host) and Temporal workers."""
        return self.project.spawn_hosts()

    def spawn(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._spawn(unit, request, wait_exit=False)

    def exec(self, unit: Unit | None, request: SpawnRequest) -> Answer:
        return self._spawn(unit, request, wait_exit=True)

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
                return Outcome(value=self.start(request, parent))
            pending = Pending()
            self.start(request, parent, on_exit=pending.settle)
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

    def _tell(self, watcher: str, event: Event) -> None:
        """An EXIT or LINK_DOWN from elsewhere (a workflow, a node that did not answer) for
        ``watcher``: here, or on the node that asked for it in a spawn request."""
        record = self.records.get(watcher)
        if record is not None:
            self._fire(record, event)
        elif (elsewhere := self._elsewhere(watcher)) is not None:
            target, pid = elsewhere
            target.tell(pid, event)

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

    def start(self, request: SpawnRequest, parent: str = "", on_exit: ExitHook | None = None) -> str:
        """Start a process for ``request`` here and return its PID. ``parent`` (a PID here
        or on another node) gets the monitor and link the request asks for and is the
        sender of its queued messages. Monitor, link, name and queued messages are in
        place before the child's first instruction runs; ``on_exit`` is called with its
        outcome when it exits.

        Raises:
            MoonwireError: NotFound (no such entry or host), Invalid (not a process.lua
                entry), AlreadyExists (``with_name`` taken), or the entry's load error.
        """
        entry = self.project.get(request.entry)
        if entry is None:
            raise not_found(f"no entry {request.entry}")
        if not isinstance(entry, ProcessEntry):
            raise invalid(f"{request.entry} is a {entry.kind}, not a process.lua entry")
        host = self.hosts.get(request.host)
        if host is None:
            raise not_found(f"no process host {request.host} on node {self.node}")
        if request.name is not None and request.name in self.names:
            raise MoonwireError(f"name {request.name!r} is already registered to {self.names[request.name]}",
                                Kind.ALREADY_EXISTS, retryable=False)
        if request.name is not None and Pid.parse(request.name) is not None:
            raise invalid(f"name {request.name!r} looks like a PID")
        local_parent = self.records.get(parent) if parent else None
        remote_parent = Pid.parse(parent) if parent and local_parent is None else None
        if parent and local_parent is None and remote_parent is None:
            raise invalid(f"parent {parent!r} is not a PID")
        shard, export = host.instantiate(self.code.code(entry))

        pid = self.pids.next(host.id)
        child = Unit(shard.state, entry.id, context=dict(request.context), services=self.functions,
                     processes=self, loop=host.loop)
        child.pid = pid
        child.mailbox = Mailbox(shard.state, host.settings.mailbox_limit)
        child.notify = host.ready
        record = ProcessRecord(pid, child, entry.id, host.id, shard)
        self._add(record)
        if request.name is not None:
            self._name(request.name, record)
        if local_parent is not None:
            if request.monitor:
                self._monitor(local_parent, record)
            if request.link:
                self._link(local_parent, record)
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
            child.mailbox.post(Message(topic, payloads, parent))
        try:
            child.start(export, request.args)
        except MoonwireError as err:  # arguments Lua cannot hold: it exits before it ran
            child.abort(err)
            raise
        return pid

    # ------------------------------------------------------------ monitors and links

    def watch(self, unit: Unit, verb: str, dest: str) -> Answer | None:
        me = self.records[self.pid_of(unit)]
        elsewhere = self._elsewhere(dest)
        if elsewhere is not None:
            return self._watch_elsewhere(me, verb, dest, *elsewhere)
        if verb == "monitor":
            target = self._resolve(dest)
            if target.watchers and me.pid in target.watchers:
                raise MoonwireError(f"already monitoring {target.pid}", Kind.ALREADY_EXISTS, retryable=False)
            self._monitor(me, target)
        elif verb == "link":
            target = self._resolve(dest)
            if target is me:
                raise invalid("a process cannot link to itself")
            self._link(me, target)
        else:  # unmonitor, unlink: idempotent, also for a target already gone
            target_pid = self._pid_for(dest)
            target = self.records.get(target_pid)
            theirs = (target.watchers if verb == "unmonitor" else target.links) if target is not None else None
            if theirs:
                theirs.discard(me.pid)
            mine = me.watching if verb == "unmonitor" else me.links
            if mine:
                mine.discard(target_pid)
        return None

    def _watch_elsewhere(self, me: ProcessRecord, verb: str, dest: str, target: Target, pid: Pid) -> Answer | None:
        """Monitor, link, unmonitor or unlink a process on another node or a workflow.
        The pair is recorded here first, and what arrives for a pair this side no longer
        holds is dropped (``_fire``), so nothing is delivered after unmonitor/unlink
        returns. A link to a workflow goes one way (a process cannot kill a workflow)."""
        if verb == "monitor" and me.watching and dest in me.watching:
            raise MoonwireError(f"already monitoring {dest}", Kind.ALREADY_EXISTS, retryable=False)
        if verb == "monitor":
            me.watching = me.watching or set()
            me.watching.add(dest)
        elif verb == "link":
            me.links = me.links or set()
            me.links.add(dest)
        elif verb == "unmonitor" and me.watching:
            me.watching.discard(dest)
        elif verb == "unlink" and me.links:
            me.links.discard(dest)
        try:
            return target.watch(me.pid, pid, verb, self._tell)
        except MoonwireError:
            if verb == "monitor" and me.watching:
                me.watching.discard(dest)
            elif verb == "link" and me.links:
                me.links.discard(dest)
            raise

    def _remote_gone(self, local: str, remote: str, kind: str, error: MoonwireError) -> None:
        """The remote process ``remote`` does not exist or its node is gone: fire the
        monitor (EXIT) or link (LINK_DOWN) that ``local`` holds on it, once."""
        record = self.records.get(local)
        if record is not None:
            self._fire(record, Event(kind, remote, time.time(), None, error))

    def _fire(self, record: ProcessRecord, event: Event) -> None:
        """An EXIT or LINK_DOWN about ``event.sender`` from another node (or about its
        node): acted on only while ``record`` still holds that monitor or link, which it
        drops, so each fires once and nothing follows unmonitor/unlink."""
        if record.unit.outcome is not None:
            return
        if event.kind == EXIT:
            if record.watching and event.sender in record.watching:
                record.watching.discard(event.sender)
                waiting = record.exec_waits.pop(event.sender, None) if record.exec_waits else None
                if waiting is not None:  # an exec on another node: its result, not an event
                    waiting.settle(Outcome(event.value, event.error))
                    return
                assert record.unit.mailbox is not None
                record.unit.mailbox.post_event(event)
        elif event.kind == LINK_DOWN and record.links and event.sender in record.links:
            record.links.discard(event.sender)
            if event.error is not None:  # a normal exit only ends the link
                self._link_failed(record, event.sender, event.error)

    def _link_failed(self, record: ProcessRecord, peer: str, error: MoonwireError | None) -> None:
        """A process linked to ``record`` exited abnormally (or is gone)."""
        if record.unit.trap_links:
            assert record.unit.mailbox is not None
            record.unit.mailbox.post_event(Event(LINK_DOWN, peer, time.time(), None, error))
        else:
            record.unit.abort(MoonwireError(LINKED_FAILURE, Kind.INTERNAL, details={"from": peer, "error": error}))

    def deliver_event(self, uid: str, event: Event) -> None:
        """An EXIT or LINK_DOWN from another node for the local process ``uid``."""
        record = self.uids.get(uid)
        if record is None:
            return
        if record.spawning and event.sender not in ((record.watching if event.kind == EXIT else record.links) or ()):
            # Perhaps about a child whose PID is still on its way (see _spawn_remote).
            record.early = record.early or []
            record.early.append(event)
            return
        self._fire(record, event)

    def control(self, verb: str, data: dict[str, Any]) -> Any:
        """A control request from another node (see :class:`Cluster`); returns the answer.

        Raises:
            MoonwireError: NotFound (noproc) when the target does not exist; what
                :meth:`start` raises for ``spawn``.
        """
        if verb == "spawn":
            request, parent = decode_spawn(data)
            if self.workflows.serves(request.host):
                return self.workflows.spawn(request, parent, False, self._tell)
            return self.start(request, parent)
        if verb == "lookup":
            return self._registered(str(data.get("name")))
        if verb in ("info", "ps"):
            limit = data.get("limit")
            return self.describe(processes=verb == "ps", limit=limit if isinstance(limit, int) else 1000)
        target = data.get("target")
        if not isinstance(target, str):
            raise invalid("control request without a target")
        record = self.records.get(target)
        if verb in ("unmonitor", "unlink"):
            if record is not None:
                held = record.watchers if verb == "unmonitor" else record.links
                if held:
                    held.discard(str(data.get("watcher")))
            return
        if record is None or record.unit.outcome is not None:
            raise noproc(target)
        if verb == "monitor":
            record.watchers = (record.watchers or set()) | {str(data["watcher"])}
        elif verb == "link":
            record.links = (record.links or set()) | {str(data["watcher"])}
        elif verb == "cancel":
            assert record.unit.mailbox is not None
            record.unit.mailbox.post_event(Event(CANCEL, str(data.get("by", "")), time.time(),
                                                 reason=str(data.get("reason", ""))))
        elif verb == "terminate":
            by = str(data.get("by", ""))
            record.unit.abort(MoonwireError("process terminated", Kind.CANCELED, retryable=False,
                                            details={"by": by} if by else None))
        return True

    def describe(self, *, processes: bool, limit: int) -> dict[str, Any]:
        """This node for ``moonwire nodes`` and (with ``processes``) ``moonwire ps``."""
        now = time.monotonic()
        info: dict[str, Any] = {
            "node": self.node, "incarnation": self.pids.epoch, "hosts": self.spawn_hosts(),
            "workers": sorted(self.workflows.workers), "uptime": now - self.started, "processes": len(self.records),
            **self.remote.describe(),
        }
        if processes:
            info["list"] = [
                {"pid": r.pid, "entry": r.entry, "host": r.host,
                 "state": "running" if r.unit.scheduled or r.unit.ready else "waiting",
                 "inbox": r.unit.mailbox.depth() if r.unit.mailbox is not None else 0,
                 "uptime": now - r.started}
                for r in itertools.islice(self.records.values(), max(limit, 0))]
        return info

    def node_down(self, node: str, incarnation: str, reason: str) -> None:
        """Every monitor and link held here on a process of that incarnation of ``node``
        fires once (EXIT, LINK_DOWN or death) with a node-down error; watchers and
        links from there are forgotten."""
        error = node_down_error(node, reason)
        prefix = f"{incarnation}-"

        def there(pid: str) -> bool:
            parsed = Pid.parse(pid)
            return parsed is not None and parsed.node == node and parsed.uid.startswith(prefix)

        failed: list[str] = []
        for record in list(self.records.values()):
            if record.unit.outcome is not None:
                continue
            if record.watchers:
                record.watchers = {w for w in record.watchers if not there(w)}
            gone = [(t, EXIT) for t in record.watching or () if there(t)] + [
                (p, LINK_DOWN) for p in record.links or () if there(p)]
            # Each is told on its own: one that cannot be (its death, say, fails to
            # notify its own watchers elsewhere) never stops the others being told.
            for remote, kind in gone:
                try:
                    self._remote_gone(record.pid, remote, kind, error)
                except Exception as err:  # noqa: BLE001 - logged once below
                    failed.append(f"{kind} of {remote} to {record.pid}: {type(err).__name__}: {err}")
        if failed:
            log.error("node %s down: %d watcher(s) here could not be told (the others were): %s", node,
                      len(failed), "; ".join(failed[:5]))

    def _pid_for(self, dest: str) -> str:
        return self.names.get(dest, dest) if Pid.parse(dest) is None else dest

    @staticmethod
    def _monitor(watcher: ProcessRecord, target: ProcessRecord) -> None:
        if target.watchers is None:
            target.watchers = set()
        target.watchers.add(watcher.pid)
        if watcher.watching is None:
            watcher.watching = set()
        watcher.watching.add(target.pid)

    @staticmethod
    def _link(a: ProcessRecord, b: ProcessRecord) -> None:
        if a.links is None:
            a.links = set()
        if b.links is None:
            b.links = set()
        a.links.add(b.pid)
        b.links.add(a.pid)

    # ------------------------------------------------------------ names

    def register(self, unit: Unit, name: str, pid: str | None) -> None:
        if Pid.parse(name) is not None:
            raise invalid(f"name {name!r} looks like a PID")
        target = self._resolve(pid) if pid is not None else self.records[self.pid_of(unit)]
        holder = self.names.get(name)
        if holder == target.pid:
            return
        if holder is not None:
            raise MoonwireError(f"name {name!r} is already registered to {holder}", Kind.ALREADY_EXISTS,
                                retryable=False)
        self._name(name, target)

    def _name(self, name: str, record: ProcessRecord) -> None:
        self.names[name] = record.pid
        if record.names is None:
            record.names = []
        record.names.append(name)

    def lookup(self, unit: Unit | None, name: str, node: str | None = None) -> Answer:
        """The PID registered as ``name`` on this node, or on ``node`` (NotFound: none)."""
        if node is not None and node != self.node:
            return self.remote.lookup(node, name)
        try:
            return Outcome(value=self._registered(name))
        except MoonwireError as err:
            return Outcome(error=err)

    def _registered(self, name: str) -> str:
        pid = self.names.get(name)
        if pid is None:
            raise not_found(f"no process registered as {name!r} on node {self.node}")
        return pid

    def unregister(self, unit: Unit | None, name: str) -> bool:
        pid = self.names.pop(name, None)
        if pid is None:
            return False
        record = self.records.get(pid)
        if record is not None and record.names:
            record.names.remove(name)
        return True

    # ------------------------------------------------------------ exits

    def _ended(self, unit: Unit) -> None:
        """``Unit.on_end``. Exits are handled one at a time, in order, even when one
        exit kills linked processes (no recursion however long the chain)."""
        self._exits.append(unit.record)
        if self._exiting:
            return
        self._exiting = True
        try:
            while self._exits:
                self._exit(self._exits.popleft())
        finally:
            self._exiting = False

    def _exit(self, record: ProcessRecord) -> None:
        pid = record.pid
        del self.records[pid]
        del self.uids[pid[pid.index("|") + 1:-1]]
        outcome = record.unit.outcome
        assert outcome is not None
        if outcome.error is not None and outcome.error.kind != Kind.CANCELED:
            log.warning("process %s (%s) exited with an error: %s", pid, record.entry, outcome.error)
        if record.shard is not None:
            self.hosts[record.host].release(record.shard)
        for name in record.names or ():
            if self.names.get(name) == pid:
                del self.names[name]
        # Each watcher and linked process is told on its own: one that cannot be told
        # (a notice that fails to encode or publish) never stops the others.
        failed: list[str] = []
        if record.watching:
            for target_pid in record.watching:
                target = self.records.get(target_pid)
                if target is not None and target.watchers:
                    target.watchers.discard(pid)
                elif target is None and (elsewhere := self._elsewhere(target_pid)) is not None:
                    try:
                        elsewhere[0].forget(pid, elsewhere[1])
                    except Exception as err:  # noqa: BLE001 - logged once below
                        failed.append(f"unmonitor {target_pid}: {type(err).__name__}: {err}")
        now = time.time()
        exit_event = Event(EXIT, pid, now, outcome.value, outcome.error)
        for watcher_pid in record.watchers or ():
            try:
                self._tell_watcher(pid, watcher_pid, exit_event)
            except Exception as err:  # noqa: BLE001 - logged once below
                failed.append(f"EXIT to {watcher_pid}: {type(err).__name__}: {err}")
        for peer_pid in record.links or ():
            try:
                self._tell_linked(pid, peer_pid, outcome, now)
            except Exception as err:  # noqa: BLE001 - logged once below
                failed.append(f"LINK_DOWN to {peer_pid}: {type(err).__name__}: {err}")
        if failed:
            log.error("process %s exited; %d of its exit notices failed (the others were sent): %s", pid,
                      len(failed), "; ".join(failed[:5]))
        for hook in record.exit_hooks or ():
            try:
                hook(outcome)
            except Exception:  # noqa: BLE001 - one watcher's bug must not stop the others
                log.exception("exit hook of %s failed", pid)
        if not self.records:
            self._empty.set()

    def _tell_watcher(self, pid: str, watcher_pid: str, exit_event: Event) -> None:
        """EXIT of ``pid`` for one of its monitors, here or on another node."""
        watcher = self.records.get(watcher_pid)
        if watcher is None:
            if (elsewhere := self._elsewhere(watcher_pid)) is not None:
                elsewhere[0].tell(elsewhere[1], exit_event)
            return
        if watcher.watching:
            watcher.watching.discard(pid)
        assert watcher.unit.mailbox is not None
        watcher.unit.mailbox.post_event(exit_event)

    def _tell_linked(self, pid: str, peer_pid: str, outcome: Outcome, now: float) -> None:
        """``pid`` ended with ``outcome``: its link to ``peer_pid`` fires (or just ends)."""
        peer = self.records.get(peer_pid)
        if peer is None:
            # The remote side learns either way: a normal exit only ends the link.
            if (elsewhere := self._elsewhere(peer_pid)) is not None:
                elsewhere[0].tell(elsewhere[1], Event(LINK_DOWN, pid, now, outcome.value, outcome.error))
            return
        if peer.links:
            peer.links.discard(pid)
        if not outcome.ok:
            self._link_failed(peer, pid, outcome.error)

    # ------------------------------------------------------------ shutdown

    async def shutdown(self, timeout: float) -> None:
        """Send CANCEL to every process, wait up to ``timeout`` for them to exit, then
        terminate the rest."""
        if not self.records:
            return
        count = len(self.records)
        for record in list(self.records.values()):
            if record.unit.mailbox is not None:
                record.unit.mailbox.post_event(Event(CANCEL, "", time.time(), reason="node shutting down"))
        log.info("cancelled %d process(es); waiting up to %.1fs for them to exit", count, timeout)
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            remaining = list(self.records.values())
            log.warning("terminating %d process(es) still running after %.1fs", len(remaining), timeout)
            for record in remaining:
                if record.unit.outcome is None:
                    record.unit.abort(MoonwireError("process terminated: node shutting down", Kind.CANCELED,
                                                    retryable=False))
