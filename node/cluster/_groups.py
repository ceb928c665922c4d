"""Cluster-wide process groups (Erlang ``pg``, wippy-modules §10) in a JetStream
key-value bucket, and the broadcast subjects that reach their members.

A membership is one key, ``<group>.<node>.<uid>``, holding how many times the PID
joined, written only by the PID's node, whose own table is the authority: every write
is a plain put of the count of the moment (a delete at zero), one at a time per key, so
a leave or an exit racing a join ends with the key deleted. Other nodes follow the
bucket through a watch, and only delete a key, for a node incarnation that went down,
conditionally on the revision they saw. docs/cluster.md ("Process groups") has more.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from moonwire.broker import TOPIC_HEADER, Client, Pid
from moonwire.lua import MoonwireError, invalid

from ._jetstream import BucketStore, delete_key, delete_keys, earlier_incarnation
from ._replica import name_problem

log = logging.getLogger("moonwire.cluster")

def group_problem(group: object) -> str | None:
    """Why ``group`` cannot name a process group, or None when it can: the rules of a
    cluster name (``name_problem``), and no ``.``: a group is exactly one subject token,
    so that ``<prefix>.g.<group>.<topic>`` splits one way."""
    if (problem := name_problem(group)) is not None:
        return problem.replace("cluster name", "process group name")
    if "." in str(group):
        return f"process group name {group!r} may not hold '.': a group is one subject token"
    return None


@dataclass(frozen=True, slots=True)
class Member:
    """One PID's membership of one group as the bucket holds it; ``count`` joins (≥ 1)."""

    group: str
    pid: str
    node: str
    incarnation: str
    count: int
    revision: int

    def encode(self) -> bytes:
        return json.dumps({"pid": self.pid, "node": self.node, "incarnation": self.incarnation, "count": self.count},
                          separators=(",", ":")).encode()

    @staticmethod
    def decode(key: str, value: bytes | None, revision: int) -> Member | None:
        """The membership an entry holds, or None when it is not one of ours: a key of
        another shape, another value, or a PID that is not the key's."""
        parts = key.split(".")
        try:
            data = json.loads(value or b"")
            pid, node, incarnation, count = data["pid"], data["node"], data["incarnation"], data["count"]
            parsed = Pid.parse(pid)
        except (ValueError, TypeError, KeyError):
            return None
        if (len(parts) != 3 or parsed is None or (node, parsed.node, parsed.uid) != (parts[1], parts[1], parts[2])
                or not isinstance(incarnation, str) or not incarnation or type(count) is not int or count < 1):
            return None
        return Member(parts[0], pid, node, incarnation, count, revision)


@dataclass(slots=True, eq=False)
class _Local:
    """One PID of this node in one group: the authoritative ``count``, and ``written``,
    the count the bucket holds (0: no key; None: unknown, while a write is in flight or
    after one failed) at ``revision``, this node's last write. ``lock`` is held while the
    key is written; ``releases`` counts releases, so a join failing later undoes nothing."""

    group: str
    pid: str
    key: str
    count: int = 0
    written: int | None = 0
    revision: int = 0
    releases: int = 0
    tidying: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True, eq=False)
class _Group:
    """A group with members here (PID -> membership, count ≥ 1), and the subscriptions
    serving them; ``lock`` is held while subscribing or unsubscribing."""

    members: dict[str, _Local] = field(default_factory=dict)
    subscriptions: list[Subscription] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class GroupsStatistics:
    """What :meth:`ClusterGroups.statistics` reports. ``groups``, ``members``: cluster-wide
    (a PID in two groups is two members; joins are not counted); ``subscribed``: groups
    whose subjects this node holds; ``released``: memberships ended by an exit or a stop;
    ``freed``: keys deleted for a gone incarnation; ``unavailable``: calls that raised it
    and failed writes; ``ignored``: entries that are not ours; ``attempts``: bucket opens."""

    available: bool
    groups: int
    members: int
    local_groups: int
    local_members: int
    subscribed: int
    joins: int
    leaves: int
    released: int
    freed: int
    broadcasts: int
    unavailable: int
    ignored: int
    attempts: int


class ClusterGroups(BucketStore):
    """Process groups cluster-wide, for one node (``node`` at ``incarnation``), on a
    :class:`~._jetstream.BucketStore`.

    Args:
        nats: a connected client; broadcasts arrive through its ``subscribe_direct``.
        prefix: the subject prefix (``mw``): bucket ``<prefix>_groups`` (``.`` as ``_``),
            broadcasts on ``<prefix>.g.<group>``.
        node, incarnation: this node and its incarnation (its PID epoch, base 36).
        replicas: copies of the bucket when this node creates it (1 on one server, 3 on
            a cluster); an existing bucket is used as it is.
        timeout: the bound on every round trip to NATS or JetStream, in seconds.
        retry_interval: how often to try again when JetStream was missing at start or a
            write failed.
        on_change: called with ``(group, pid, joined)`` once per join and once per leave
            seen cluster-wide: this node's at once, other nodes' as the watch brings
            them (a count that moves by N is N calls).
        on_broadcast: called with ``(group, msg)`` for each broadcast to a group with
            members here, from the connection's read loop, so it must not wait.
    """

    def __init__(self, nats: Client, *, prefix: str, node: str, incarnation: str, replicas: int = 1,
                 timeout: float = 2.0, retry_interval: float = 5.0,
                 on_change: Callable[[str, str, bool], None] | None = None,
                 on_broadcast: Callable[[str, Msg], None] | None = None) -> None:
        super().__init__(nats, bucket=prefix.replace(".", "_") + "_groups", what="cluster process groups",
                         replicas=replicas, timeout=timeout, retry_interval=retry_interval)
        self.nats: Client = nats
        self.prefix = prefix
        self.node = node
        self.incarnation = incarnation
        self._on_change = on_change
        self._on_broadcast = on_broadcast
        self._entries: dict[str, Member] = {}
        """The replica, key -> membership, of every key but this incarnation's own."""
        self._by_group: dict[str, dict[str, Member]] = {}
        self._local: dict[str, dict[str, _Local]] = {}
        """This node's memberships, PID -> group -> membership, while joined or unsettled."""
        self._keys: dict[str, _Local] = {}
        self._groups: dict[str, _Group] = {}

    # ------------------------------------------------------------ lifecycle

    async def stop(self) -> None:
        """Take this node's processes out of every group they are still in (each write
        bounded by ``timeout``; a key that fails to go stays until node-down or the next
        incarnation deletes it), stop following the bucket, drop the subscriptions."""
        if self._tasks is None:
            return
        await asyncio.gather(*(self.release(pid) for pid in list(self._local)))  # unsubscribes too
        await self._stop_following()

    def _reset(self) -> None:
        for key in list(self._entries):  # what an earlier attempt loaded: a clean slate
            self._set(key, None)

    async def _opened(self) -> None:
        """At start: delete the memberships an earlier incarnation of this node left."""
        earlier = [(key, member) for key, member in self._entries.items()
                   if member.node == self.node and earlier_incarnation(member.incarnation, self.incarnation)]
        await self._free(earlier, f"an earlier incarnation of node {self.node}")

    def _apply(self, entry: KeyValue.Entry) -> None:
        """The watch delivered ``entry`` (in stream order, so newer than what is held)."""
        key, revision, member = entry.key, entry.revision or 0, None
        if entry.operation not in (KV_DEL, KV_PURGE) and (member := Member.decode(key, entry.value, revision)) is None:
            self._stats["ignored"] += 1
            log.warning("process group entry %r in bucket %s is not a moonwire membership: ignored", key, self.bucket)
        if (local := self._keys.get(key)) is not None:  # one of this node's own keys
            # Deleted by another node (a node-down while cut off): the table here is the
            # authority. Not puts: two twins (same name, incarnation) would never stop.
            if (member is None and local.count and local.written == local.count and revision > local.revision
                    and not local.lock.locked()):
                log.warning("process group key %r was deleted by another node; writing it again", key)
                local.written = None
                self._tidy_soon(local, 0.0)
        elif member is None or member.node != self.node or member.incarnation != self.incarnation:
            self._set(key, member)  # (not a late echo of this node's write of a membership gone since)

    # ------------------------------------------------------------ reading (no round trip)

    def members(self, group: str) -> list[str]:
        """Every member of ``group`` cluster-wide, sorted, a PID once per join: this node's
        from its own table, the others' from the replica. ``[]`` for a group nobody is in."""
        pids = [member.pid for member in self._by_group.get(group, {}).values() for _ in range(member.count)]
        return sorted(pids + self.local_members(group))

    def local_members(self, group: str) -> list[str]:
        """The members of ``group`` on this node, sorted, a PID once per join."""
        local = self._groups.get(group)
        return sorted(m.pid for m in local.members.values() for _ in range(m.count)) if local is not None else []

    def groups(self) -> list[str]:
        """Every group with a member anywhere, sorted."""
        return sorted(set(self._by_group) | set(self.local_groups()))

    def local_groups(self) -> list[str]:
        """The groups with a member on this node, sorted."""
        return sorted(name for name, group in self._groups.items() if group.members)

    def statistics(self) -> GroupsStatistics:
        s, local = self._stats, sum(len(group.members) for group in self._groups.values())
        return GroupsStatistics(
            self.available, len(self.groups()), len(self._entries) + local, len(self.local_groups()), local,
            sum(group.subscriptions is not None for group in self._groups.values()), s["joins"], s["leaves"],
            s["released"], s["freed"], s["broadcasts"], s["unavailable"],
            s["ignored"], s["attempts"])

    # ------------------------------------------------------------ joining and leaving

    async def join(self, group: str, pid: str) -> None:
        """Add ``pid``, a process of this node, to ``group`` (once more, if it is in it).
        On return the server knows this node's subscription and the bucket holds the
        membership: a broadcast sent after it, from any node, reaches ``pid``. A
        :meth:`leave` or :meth:`release` of ``pid`` meanwhile wins.

        Raises:
            MoonwireError: Invalid: a bad group name (:func:`group_problem`), or a PID
                not of this node. Unavailable: JetStream is missing, or did not answer
                within ``timeout``; ``pid`` did not join (a write that landed anyway is
                undone in the background).
        """
        key = self._key(group, pid)
        self._require(f"join {pid} to process group {group!r}")
        memberships = self._local.setdefault(pid, {})
        if (local := memberships.get(group)) is None:
            local = memberships[group] = self._keys[key] = _Local(group, pid, key)
        releases = local.releases
        self._count(local, 1)
        try:
            await self._subscription(group)
            await self._settle(local)
        except BaseException:
            if local.releases == releases and local.count > 0:
                self._count(local, -1)
            self._tidy_soon(local, self.retry_interval)
            raise
        self._stats["joins"] += 1

    async def leave(self, group: str, pid: str) -> bool:
        """Take ``pid`` out of ``group`` once (N joins need N leaves); False when it is
        not a member here. Never Unavailable: a write that fails is logged and tried again
        in the background. Raises MoonwireError Invalid as :meth:`join` does."""
        self._key(group, pid)
        local = self._local.get(pid, {}).get(group)
        if local is None or local.count == 0:
            return False
        self._count(local, -1)
        self._stats["leaves"] += 1
        await self._converge(local)
        return True

    async def release(self, pid: str) -> list[str]:
        """``pid`` exited: it leaves every group it is in, however many times it joined.
        Never raises (what fails is logged and tried again). Returns the groups it left."""
        memberships = self._local.get(pid)
        if not memberships:
            return []
        left = []
        for local in list(memberships.values()):
            local.releases += 1
            if local.count:
                left.append(local.group)
                self._count(local, -local.count)
        self._stats["released"] += len(left)
        await asyncio.gather(*(self._converge(local) for local in list(memberships.values())))
        return sorted(left)

    def release_soon(self, pid: str) -> asyncio.Task[list[str]] | None:
        """:meth:`release` as a task owned here, for an exit path that cannot wait; None
        when ``pid`` is in no group (the common case: one dictionary look-up)."""
        return self._soon(self.release(pid), f"release {pid}") if pid in self._local else None

    async def node_down(self, node: str, incarnation: str) -> list[tuple[str, str]]:
        """``incarnation`` of ``node`` is gone: delete its memberships. Every surviving
        node may do this at once; deletes conditional on the revision seen make that
        harmless and keep a key written since. Never raises. Returns the ``(group, pid)``
        memberships this call deleted."""
        if node == self.node and incarnation == self.incarnation:
            log.warning("process groups: told that this node (%s, incarnation %s) is down; its memberships stay",
                        node, incarnation)
            return []
        held = [(k, m) for k, m in self._entries.items() if m.node == node and m.incarnation == incarnation]
        return await self._free(held, f"node {node} (incarnation {incarnation}) is down")

    def node_down_soon(self, node: str, incarnation: str) -> asyncio.Task[list[tuple[str, str]]] | None:
        """:meth:`node_down` as a task owned here (membership's ``on_down`` is not async)."""
        return self._soon(self.node_down(node, incarnation), f"node {node} down")

    # ------------------------------------------------------------ broadcasts

    async def publish(self, group: str, topic: str, body: bytes, headers: dict[str, str]) -> None:
        """Send one message that reaches every node with members of ``group``: one
        publish on ``<prefix>.g.<group>``, ``topic`` in the ``Mw-Topic`` header.

        Raises:
            MoonwireError: Invalid: a bad group name, or a topic that is empty or has a
                line break. Unavailable: the connection is closed.
        """
        if (problem := group_problem(group)) is not None:
            raise invalid(problem)
        if not isinstance(topic, str) or not topic or "\r" in topic or "\n" in topic:
            raise invalid(f"a broadcast topic is a non-empty string on one line, not {topic!r}")
        try:
            await self.nats.publish(f"{self.prefix}.g.{group}", body, headers={**headers, TOPIC_HEADER: topic})
        except nats.errors.MaxPayloadError as err:  # no retry makes it fit
            raise invalid(f"broadcast to process group {group!r} is too large for the NATS server: {err}") from err
        except nats.errors.Error as err:
            raise self._unavailable(f"broadcasting to process group {group!r}: {type(err).__name__}: {err}") from err

    def _deliver(self, group: str, msg: Msg) -> None:
        self._stats["broadcasts"] += 1
        try:
            if self._on_broadcast is not None:
                self._on_broadcast(group, msg)
        except Exception:  # one listener's bug must not end the subscription
            log.exception("process groups: on_broadcast for %r failed (subject %s)", group, msg.subject)

    async def _subscription(self, name: str) -> None:
        """Hold ``name``'s broadcast subscriptions exactly while it has members here."""
        group = self._groups.get(name)
        if group is None or (bool(group.members) == (group.subscriptions is not None) and not group.lock.locked()):
            return
        async with group.lock:
            if group.members and group.subscriptions is None:
                group.subscriptions = await self._subscribe(name)
            elif not group.members and group.subscriptions is not None:
                subscriptions, group.subscriptions = group.subscriptions, None
                await self._unsubscribe(subscriptions)
            if not group.members and group.subscriptions is None and self._groups.get(name) is group:
                del self._groups[name]

    async def _subscribe(self, group: str) -> list[Subscription]:
        """Subscribe to ``<prefix>.g.<group>`` and ``<prefix>.g.<group>.>``. No flush: the
        join's write follows on the same connection, so the server has both before that
        write, and a flush that times out can end nats-py's read loop (docs/cluster.md)."""
        subject, subscriptions = f"{self.prefix}.g.{group}", []
        try:
            for each in (subject, subject + ".>"):
                subscriptions.append(await self.nats.subscribe_direct(each, lambda msg: self._deliver(group, msg)))
        except nats.errors.Error as err:
            await self._unsubscribe(subscriptions)
            raise self._unavailable(f"subscribing to {subject}: {type(err).__name__}: {err}") from err
        return subscriptions

    async def _unsubscribe(self, subscriptions: list[Subscription]) -> None:
        for subscription in subscriptions:
            try:
                await subscription.unsubscribe()
            except nats.errors.Error as err:  # the connection is closed: nothing to undo
                log.debug("process groups: unsubscribing from %s: %s", subscription.subject, err)

    # ------------------------------------------------------------ writing

    def _count(self, local: _Local, delta: int) -> None:
        """Move ``local``'s count by ``delta`` and tell ``on_change``."""
        local.count += delta
        group = self._groups.get(local.group)
        if local.count > 0:
            if group is None:
                group = self._groups[local.group] = _Group()
            group.members[local.pid] = local
        elif group is not None:
            group.members.pop(local.pid, None)
        self._changed(local.group, local.pid, delta)

    async def _settle(self, local: _Local) -> None:
        """Write ``local``'s count (a delete at 0) until the bucket holds the count of the
        moment; then forget ``local`` if that is 0.

        Raises:
            MoonwireError: Unavailable; what the bucket holds is then unknown.
        """
        async with local.lock:
            while local.written != local.count:
                kv = self._require(f"write process group key {local.key!r}")
                count, local.written = local.count, None
                what = f"writing process group key {local.key!r}"
                if count:
                    value = Member(local.group, local.pid, self.node, self.incarnation, count, 0).encode()
                    revision = await self._call(kv.put(local.key, value), what)
                else:
                    revision = await self._call(delete_key(self._js, self.bucket, local.key, None,
                                                           timeout=self.timeout, what=what), what)
                local.written, local.revision = count, revision
            if local.count == 0 and local.written == 0:
                memberships = self._local.get(local.pid)
                if memberships is not None and memberships.get(local.group) is local:
                    del memberships[local.group]
                    if not memberships:
                        del self._local[local.pid]
                if self._keys.get(local.key) is local:
                    del self._keys[local.key]

    async def _converge(self, local: _Local) -> None:
        """Bring the subscription and the bucket in line with ``local``; what fails is
        logged and tried again in the background."""
        try:
            await self._subscription(local.group)
            await self._settle(local)
        except MoonwireError as err:
            log.warning("process group key %r may be stale: %s; trying again every %gs", local.key, err.message,
                        self.retry_interval)
            self._tidy_soon(local, self.retry_interval)

    def _tidy_soon(self, local: _Local, delay: float) -> None:
        """Settle ``local`` in an owned task, after ``delay`` and then every
        ``retry_interval`` until it works (or the groups stop)."""
        if local.tidying:
            return

        async def tidy(delay: float) -> None:
            try:
                while self._kv is not None:
                    await asyncio.sleep(delay)
                    delay = self.retry_interval
                    try:
                        await self._subscription(local.group)
                        return await self._settle(local)
                    except MoonwireError as err:
                        log.debug("process group key %r still unsettled: %s", local.key, err.message)
            finally:
                local.tidying = False

        local.tidying = self._soon(tidy(delay), f"settling {local.key}") is not None

    async def _free(self, held: list[tuple[str, Member]], why: str) -> list[tuple[str, str]]:
        """Delete each membership at the revision it was seen at; log what fails."""
        if not held or self._kv is None:
            return []
        seen = dict(held)
        deleted = [key for key, _ in await delete_keys(self._js, self.bucket, [(k, m.revision) for k, m in held],
                                                       timeout=self.timeout, what=why)]
        for key in deleted:  # at once, rather than when the watch brings the delete
            if (member := self._entries.get(key)) is not None and member.revision == seen[key].revision:
                self._set(key, None)
        self._stats["freed"] += len(deleted)
        log.info("process group memberships deleted (%s): %d", why, len(deleted))
        return [(seen[key].group, seen[key].pid) for key in deleted]

    # ------------------------------------------------------------ helpers

    def _set(self, key: str, member: Member | None) -> None:
        """Put ``member`` in the replica at ``key`` (None: take it out); tell ``on_change``."""
        if (before := self._entries.pop(key, None)) is not None:
            siblings = self._by_group[before.group]
            del siblings[key]
            if not siblings:
                del self._by_group[before.group]
        if member is not None:
            self._entries[key] = member
            self._by_group.setdefault(member.group, {})[key] = member
        if before is not None and (member is None or before.pid != member.pid):
            self._changed(before.group, before.pid, -before.count)
            before = None
        if member is not None:
            self._changed(member.group, member.pid, member.count - (before.count if before is not None else 0))

    def _changed(self, group: str, pid: str, delta: int) -> None:
        for _ in range(abs(delta) if self._on_change is not None else 0):
            try:
                self._on_change(group, pid, delta > 0)  # type: ignore[misc]
            except Exception:  # a listener's bug must not stop the watch that feeds every read
                log.exception("process groups: on_change for %r failed", group)

    def _key(self, group: str, pid: str) -> str:
        if (problem := group_problem(group)) is not None:
            raise invalid(problem)
        parsed = Pid.parse(pid) if isinstance(pid, str) else None
        if parsed is None or parsed.node != self.node or ":" in parsed.uid:
            raise invalid(f"only a process of this node ({self.node}) can be a group member here, not {pid!r}")
        return f"{group}.{parsed.node}.{parsed.uid}"
