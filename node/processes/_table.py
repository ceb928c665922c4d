"""The node's processes: PIDs, the local name registry, monitors and links, message
delivery, and what happens when a process exits (wippy-surface §3.1-§3.7).

Every unit that has a PID is a :class:`ProcessRecord` here: processes on this node's
hosts, and function calls that used the process API (they get a PID for the length of
the call). Delivery between local processes is synchronous: ``send`` puts the message in
the receiver's mailbox before it returns, so messages from one sender arrive in send
order, and an EXIT (posted when the sender has exited) arrives after all of them.

The table is assembled from these files: this one (records, lookups, messages,
monitors and links, names, the control verbs other nodes ask for), ``_spawning.py``
(spawn here, on another node, or as a workflow), ``_exits.py`` (what an exit tells
whom, node-down, shutdown) and ``_upgrading.py`` (``process.upgrade``, OUTDATED). A PID that is not here is asked of its target
(``_targets.py``), chosen once from the PID by :meth:`ProcessTable._elsewhere`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from moonwire.broker import Pid, PidAllocator
from moonwire.lua import (CANCEL, EXIT, Answer, Event, Kind, Mailbox, Message, MoonwireError, Outcome,
                          Unit, invalid, not_found)

from ..cluster import Cluster
from ..functions import CodeLoader, Functions
from ..project import HostSettings, Project
from ..telemetry import ProcessCounts
from ..wire import decode_spawn, noproc
from ._clustered import ClusterCalls
from ._exits import Exits
from ._hosts import ProcessHost
from ._records import FUNCTION_HOST, TERMINAL_HOST, ProcessRecord, link, monitor
from ._spawning import Spawning
from ._targets import NO_WORKFLOWS, UNREACHABLE, RemoteTarget, Target, WorkflowTarget
from ._upgrading import Upgrading

log = logging.getLogger("moonwire.processes")


class ProcessTable(Spawning, Exits, ClusterCalls, Upgrading):
    """Implements :class:`lua.ProcessServices` for every unit on this node."""

    def __init__(self, node: str, project: Project, functions: Functions, hosts: dict[str, ProcessHost], *,
                 pids: PidAllocator | None = None, remote: RemoteTarget = UNREACHABLE,
                 workflows: WorkflowTarget = NO_WORKFLOWS, cluster: Cluster | None = None) -> None:
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
        self.cluster = cluster
        """Cluster names, locks and groups (None: a runtime without a broker)."""
        self._group_watchers: dict[str, set[str]] = {}
        self._groups_watched: dict[str, set[str]] = {}
        self._watched_prefixes: set[str] = set()
        if cluster is not None:
            cluster.on_group_change = self._group_changed
            cluster.alive = self.records.__contains__
        self._exits: deque[ProcessRecord] = deque()
        self._exiting = False
        self._empty = asyncio.Event()
        self._empty.set()
        self.mailbox_limit = HostSettings().mailbox_limit
        self.started = time.monotonic()
        self.counts = ProcessCounts(node)
        self.counts.in_lua = lambda: sum(host.delivered_in_lua() for host in self.hosts.values())
        self.metrics: Callable[[], dict[str, float]] | None = None
        """The node's metrics by name, for ``info`` and ``ps`` (``moonwire nodes``, ``top``); set by the node."""

    # ------------------------------------------------------------ lookups

    def _resolve(self, dest: str) -> ProcessRecord:
        """The live local process ``dest`` names (a PID or a registered name).

        Raises:
            MoonwireError: NotFound for an exited or unknown PID or an unknown name;
                Unavailable for a PID of another node (``register`` of one, say: the
                registry is this node's).
        """
        record = self.records.get(dest)
        if record is not None:
            return record
        pid = Pid.parse(dest)
        if pid is None:
            dest = self._named(dest)
            record = self.records.get(dest)
            if record is not None:
                return record
            pid = Pid.parse(dest)
            if pid is None:
                raise not_found(f"no process {dest!r}")
        if pid.node != self.node:
            raise MoonwireError(f"process {dest} is on node {pid.node}, which this node cannot reach",
                                Kind.UNAVAILABLE, retryable=True)
        raise not_found(f"process {dest} not found: it has exited or never existed")

    def pid_of(self, unit: Unit) -> str:
        if unit.pid is None:  # a function call using the process API: a PID for the call
            pid = self.pids.next(FUNCTION_HOST)
            unit.pid = pid
            unit.mailbox = Mailbox(unit.state, self.mailbox_limit, unit)
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
        self.route(dest, Message(topic, payloads, self.pid_of(unit), unit.traceparent()) if unit is not None
                   else Message(topic, payloads))

    def route(self, dest: str, message: Message) -> None:
        """Deliver ``message`` to ``dest``: a local process, a process on another node,
        or a workflow (a signal)."""
        local = self.records.get(dest)
        if local is not None:  # the common case, without parsing the PID
            self._post(local, message)
            return
        if not dest.startswith("{"):  # a name: cluster-wide first, then this node's
            dest = self._named(dest)
            local = self.records.get(dest)
            if local is not None:
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
        self.counts.received(message.sender)

    def route_in(self, dest: str, message: Message) -> None:
        """:meth:`route` for a message that entered this node other than from one of its
        processes (a cluster name's or group's subject, a workflow's send activity):
        counted by its origin."""
        self.route(dest, message)
        self.counts.received(message.sender)

    def _post(self, target: ProcessRecord, message: Message) -> None:
        assert target.unit.mailbox is not None
        if not target.unit.mailbox.post(message):
            raise MoonwireError(f"mailbox of {target.pid} is full ({target.unit.mailbox.limit} unread messages)",
                                Kind.UNAVAILABLE, retryable=True)
        self.counts.delivered += 1  # by origin: see route_in

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

    def update(self, unit: Unit | None, dest: str, name: str, args: list[Any], options: dict[str, Any]) -> Answer:
        """``process.update``: Temporal update ``name`` to the workflow ``dest`` names."""
        pid = Pid.parse(self._pid_of_dest(dest))
        if pid is None or not pid.is_workflow:
            raise invalid(f"process.update sends to a workflow: {dest!r} is not a workflow PID")
        return self.workflows.update(pid, name, args, options)

    def _signal(self, unit: Unit | None, verb: str, dest: str, body: dict[str, Any]) -> Answer | None:
        """``cancel`` or ``terminate``: done here for a local target (None), else an answer
        settled once the target's node has done it (NotFound when it does not exist)."""
        by = self.pid_of(unit) if unit is not None else ""
        dest = self._pid_of_dest(dest)
        elsewhere = self._elsewhere(dest)
        if elsewhere is not None:
            target, pid = elsewhere
            return target.end(pid, verb, by, str(body.get("reason", "")))
        self.control(verb, {**body, "target": self._resolve(dest).pid, "by": by})
        return None

    def _tell(self, watcher: str, event: Event) -> None:
        """An EXIT or LINK_DOWN from elsewhere (a workflow, a node that did not answer) for
        ``watcher``: here, or on the node that asked for it in a spawn request."""
        record = self.records.get(watcher)
        if record is not None:
            self._fire(record, event)
        elif (elsewhere := self._elsewhere(watcher)) is not None:
            target, pid = elsewhere
            target.tell(pid, event)

    # ------------------------------------------------------------ monitors and links

    def watch(self, unit: Unit, verb: str, dest: str) -> Answer | None:
        me = self.records[self.pid_of(unit)]
        # A name resolves first (cluster-wide, then here); undoing a watch by a name no
        # one holds any more leaves it as it is (it matches nothing then).
        dest = self._pid_of_dest(dest) if verb in ("monitor", "link") else self._pid_for(dest)
        elsewhere = self._elsewhere(dest)
        if elsewhere is not None:
            return self._watch_elsewhere(me, verb, dest, *elsewhere)
        if verb == "monitor":
            target = self._resolve(dest)
            if target.watchers and me.pid in target.watchers:
                raise MoonwireError(f"already monitoring {target.pid}", Kind.ALREADY_EXISTS, retryable=False)
            monitor(me, target)
        elif verb == "link":
            target = self._resolve(dest)
            if target is me:
                raise invalid("a process cannot link to itself")
            link(me, target)
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
        """A control request from another node (``_control.py``); returns the answer.

        Raises:
            MoonwireError: NotFound (noproc) when the target does not exist; what
                :meth:`start` raises for ``spawn``.
        """
        if verb == "spawn":
            request, parent = decode_spawn(data)
            if self.workflows.serves(request.host):
                return self.workflows.spawn(request, parent, False, self._tell)
            started = self.start_here(request, parent)
            if isinstance(started, Outcome):
                if started.error is not None:
                    raise started.error
                return started.value
            return started  # a Pending: a cluster name is being registered first
        if verb == "lookup":  # cluster-wide first, unless only this node's LOCAL registry is asked
            name = str(data.get("name"))
            if data.get("scope") != "local" and (pid := self.cluster_lookup(name)) is not None:
                return pid
            return self._registered(name)
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
            "host_processes": {h.id: {"processes": h.processes, "starting": h.starting,
                                      "max_processes": h.settings.max_processes}
                               for h in self.hosts.values() if h.id != TERMINAL_HOST},
        }
        if self.metrics is not None:
            info["metrics"] = self.metrics()
        if processes:
            info["list"] = [
                {"pid": r.pid, "entry": r.entry, "host": r.host,
                 "state": "running" if r.unit.scheduled or r.unit.ready else "waiting",
                 "inbox": r.unit.mailbox.depth() if r.unit.mailbox is not None else 0,
                 "uptime": now - r.started}
                for r in itertools.islice(self.records.values(), max(limit, 0))]
        return info

    def _pid_for(self, dest: str) -> str:
        """``dest`` as a PID for undoing a watch: an unknown name stays as it is."""
        if Pid.parse(dest) is not None:
            return dest
        return self.cluster_lookup(dest) or self.names.get(dest, dest)

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
        """The PID registered as ``name``: cluster-wide, else on this node; or, given
        ``node``, in that node's LOCAL registry (NotFound: none)."""
        if node is not None and node != self.node:
            return self.remote.lookup(node, name)
        try:
            if node is None and (pid := self.cluster_lookup(name)) is not None:
                return Outcome(value=pid)
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
