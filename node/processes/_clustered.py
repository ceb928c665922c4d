"""The cluster, for the process table (``_table.py``): names in the cluster scopes,
locks, process groups and the cluster view, as the ``process.registry``, ``system`` and
``pg`` modules reach them (wippy-surface §3.7, wippy-modules §9-§10, docs/cluster.md).

A name resolves cluster-wide first, then on this node (a cluster name shadows a local
one); the cluster's replica answers without a round trip. The three cluster scopes,
EVENTUAL, CONSISTENT and STRONG, share the one consistent store (docs/cluster.md says
why). Writes wait for JetStream and answer later; a name or lock is freed when its
holder exits (``Exits._exit`` calls :meth:`ClusterCalls._left_cluster`) or its node
goes down.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from moonwire.broker import Pid
from moonwire.lua import SECOND, Answer, Event, Kind, Message, MoonwireError, Unit, invalid, not_found

from ..cluster import Cluster
from ..wire import REGISTRY_SCOPES
from ._inboxes import encode
from ._records import ProcessRecord
from ._targets import RemoteTarget

SCOPES = frozenset(REGISTRY_SCOPES)
"""``process.registry``'s scopes, by the values of its constants."""
LOCAL = "local"
PG_JOINED = "pg.member.joined"
PG_LEFT = "pg.member.left"
"""The kinds of the events ``pg.monitor`` delivers (``event.group`` names the group)."""
_GROUP_READS = frozenset({"pg.members", "pg.local_members", "pg.groups", "pg.local_groups", "pg.monitor",
                          "pg.demonitor", "pg.monitor_prefix", "pg.demonitor_prefix"})
PREFIX_MARK = "*"
"""Ends the key of a watch on every group whose name starts with the key's prefix (a
``pg`` scope's ``events()``); no group name holds it, so the keys never collide."""


def check_scope(scope: Any) -> str:
    """The scope ``scope`` names (None: LOCAL).

    Raises:
        MoonwireError: Invalid, for anything but a registry scope.
    """
    if scope is None:
        return LOCAL
    if not isinstance(scope, str) or scope not in SCOPES:
        raise invalid(f"unknown registry scope {scope!r}: use process.registry.LOCAL, EVENTUAL, CONSISTENT "
                      "or STRONG")
    return scope


class ClusterCalls:
    """The cluster half of :class:`~._table.ProcessTable` (a mixin: it uses the table's
    records, names and ``pid_of``)."""

    node: str
    records: dict[str, ProcessRecord]
    names: dict[str, str]
    remote: RemoteTarget
    cluster: Cluster | None
    _group_watchers: dict[str, set[str]]
    """Group (or prefix + PREFIX_MARK) -> the local processes monitoring it (``pg.monitor``)."""
    _watched_prefixes: set[str]
    """The prefixes some local process watches (``pg.monitor_prefix``)."""
    _groups_watched: dict[str, set[str]]
    """PID -> the groups it monitors, to drop them when it exits."""

    if TYPE_CHECKING:
        def pid_of(self, unit: Unit) -> str: ...

        # ------------------------------------------------------------ names

    def _named(self, name: str) -> str:
        """The PID ``name`` resolves to: the cluster's holder, else this node's.

        Raises:
            MoonwireError: NotFound when no process holds it.
        """
        if self.cluster is not None and (pid := self.cluster.names.lookup(name)) is not None:
            return pid
        pid = self.names.get(name)
        if pid is None:
            raise not_found(f"no process registered as {name!r}")
        return pid

    def _pid_of_dest(self, dest: str) -> str:
        """``dest`` as a PID: itself when it is one, else the PID its name resolves to."""
        return dest if dest.startswith("{") and Pid.parse(dest) is not None else self._named(dest)

    def cluster_lookup(self, name: str) -> str | None:
        """The cluster-wide holder of ``name`` from the replica (None: no one, or no cluster)."""
        return self.cluster.names.lookup(name) if self.cluster is not None else None

    # ------------------------------------------------------------ calls from Lua

    def cluster_call(self, unit: Unit, verb: str, args: list[Any]) -> Answer | None:
        """The calls that wait for JetStream or the broker: ``register``/``unregister``
        in a cluster scope, ``lock.acquire``/``lock.release``, ``pg.join``/``pg.leave``
        and ``pg.broadcast``; each answered later, from a task the Cluster owns."""
        cluster = self._cluster()
        if verb == "register":
            name, pid, _ = _args(args, 3)
            target = self._holder_pid(unit, pid)
            return cluster.call(_done(cluster.names.register(_text(name, "name"), target)),
                                f"registering cluster name {name!r}")
        if verb == "unregister":
            name, _ = _args(args, 2)
            return cluster.call(cluster.names.unregister(_text(name, "name"), self.pid_of(unit)),
                                f"unregistering cluster name {name!r}")
        if verb == "lock.acquire":
            name, wait_ns = _args(args, 2)
            wait = 0.0 if wait_ns is None else max(float(wait_ns), 0.0) / SECOND
            return cluster.call(_done(cluster.locks.acquire(_text(name, "lock name"), self.pid_of(unit), wait)),
                                f"acquiring lock {name!r}")
        if verb == "lock.release":
            (name,) = _args(args, 1)
            return cluster.call(cluster.locks.release(_text(name, "lock name"), self.pid_of(unit)),
                                f"releasing lock {name!r}")
        if verb in ("pg.join", "pg.leave"):
            group, pid = _args(args, 2)
            member = self._holder_pid(unit, pid)
            if verb == "pg.join":
                return cluster.call(_done(cluster.groups.join(_text(group, "group"), member)),
                                    f"joining process group {group!r}")
            return cluster.call(cluster.groups.leave(_text(group, "group"), member), f"leaving process group {group!r}")
        if verb == "pg.broadcast":
            group, topic, *payloads = args
            body, headers = encode(Message(_text(topic, "topic"), payloads, self.pid_of(unit), unit.traceparent()))
            return cluster.call(_done(cluster.groups.publish(_text(group, "group"), topic, body, headers)),
                                f"broadcasting to process group {group!r}")
        raise invalid(f"unknown cluster request {verb!r}")

    def cluster_now(self, unit: Unit, verb: str, args: list[Any]) -> Any:
        """``node.id``, ``cluster.members`` and the ``pg`` reads and monitors: answered
        at once from what this node knows (its liveness view, the groups' replica)."""
        if verb == "node.id":
            return self.node
        if verb == "cluster.members":
            return self.cluster_members()
        if verb in _GROUP_READS:
            groups = self._cluster().groups
            if verb == "pg.groups":
                return groups.groups()
            if verb == "pg.local_groups":
                return groups.local_groups()
            group = _text(_args(args, 1)[0], "group")
            if verb == "pg.members":
                return groups.members(group)
            if verb == "pg.local_members":
                return groups.local_members(group)
            me = self.pid_of(unit)
            if verb == "pg.monitor":
                self._watch_group(me, group)
                return groups.members(group)  # the snapshot, from the moment events start
            if verb == "pg.monitor_prefix":  # every group of a pg scope: {group = members}
                self._watch_group(me, group + PREFIX_MARK)
                self._watched_prefixes.add(group)
                return {name: groups.members(name) for name in groups.groups() if name.startswith(group)}
            if verb == "pg.demonitor_prefix":
                return self._unwatch_group(me, group + PREFIX_MARK)
            return self._unwatch_group(me, group)  # pg.demonitor
        raise invalid(f"unknown cluster call {verb!r}")

    def _group_changed(self, group: str, pid: str, joined: bool) -> None:
        """A join or leave seen cluster-wide: an event for each process monitoring
        ``group`` (``pg.monitor``)."""
        watchers = self._group_watchers.get(group)
        for prefix in self._watched_prefixes:
            if group.startswith(prefix):
                watchers = (watchers or set()) | self._group_watchers.get(prefix + PREFIX_MARK, set())
        if not watchers:
            return
        event = Event(PG_JOINED if joined else PG_LEFT, pid, time.time(), group=group)
        for watcher in watchers:
            record = self.records.get(watcher)
            if record is not None and record.unit.mailbox is not None:
                record.unit.mailbox.post_event(event)

    def _watch_group(self, pid: str, key: str) -> None:
        self._group_watchers.setdefault(key, set()).add(pid)
        self._groups_watched.setdefault(pid, set()).add(key)

    def _unwatch_group(self, pid: str, group: str) -> bool:
        watchers = self._group_watchers.get(group)
        if not watchers or pid not in watchers:
            return False
        watchers.discard(pid)
        if not watchers:
            del self._group_watchers[group]
            if group.endswith(PREFIX_MARK):
                self._watched_prefixes.discard(group[:-1])
        if (mine := self._groups_watched.get(pid)) is not None:
            mine.discard(group)
            if not mine:
                del self._groups_watched[pid]
        return True

    def cluster_members(self) -> list[dict[str, Any]]:
        """The live nodes as this node sees them (heartbeats): itself first, then the
        others by name, each with its hosts."""
        me = {"id": self.node, "is_local": True, "hosts": self.spawn_hosts()}
        peers = self.remote.describe().get("peers", [])
        return [me] + [{"id": p["node"], "is_local": False, "hosts": list(p.get("hosts", []))}
                       for p in sorted(peers, key=lambda p: p["node"])]

    def _cluster(self) -> Cluster:
        if self.cluster is None:
            raise MoonwireError("cluster scopes, locks and groups need the node's broker with JetStream; this "
                                "runtime runs without one", Kind.UNAVAILABLE, retryable=False)
        return self.cluster

    def _holder_pid(self, unit: Unit, pid: Any) -> str:
        """The process a cluster name is registered to: the caller, or ``pid``, which
        must be a live process of this node (its node frees the name if it goes down)."""
        if pid is None:
            return self.pid_of(unit)
        target = _text(pid, "pid")
        if target not in self.records:
            parsed = Pid.parse(target)
            if parsed is not None and parsed.node != self.node:
                raise invalid(f"a cluster name is registered on the node of its process: {target} runs on node "
                              f"{parsed.node}, not {self.node}")
            raise not_found(f"process {target} not found: it has exited or never existed")
        return target

    def _left_cluster(self, pid: str) -> None:
        """``pid`` exited: free its cluster names, locks and memberships, and drop its
        group monitors (a look-up per store when it has none)."""
        if self.cluster is not None:
            self.cluster.exited(pid)
        self._unwatch_groups(pid)

    def _unwatch_groups(self, pid: str) -> None:
        """Drop every group monitor of ``pid`` (it exited, or upgraded: its subscriptions went)."""
        watched = self._groups_watched.get(pid)
        if watched:  # the exit path: nothing built for the many processes that monitor no group
            for group in list(watched):
                self._unwatch_group(pid, group)


async def _done(work: Awaitable[None]) -> bool:
    """True once ``work`` is done: what Lua gets for a registration or a lock taken."""
    await work
    return True


def _args(args: list[Any], count: int) -> list[Any]:
    return (list(args) + [None] * count)[:count]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"{what} must be a non-empty string")
    return value
