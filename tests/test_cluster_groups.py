"""Cluster-wide process groups (node/cluster/_groups.py, Erlang ``pg``) on real nats-servers.

Each "node" here is a :class:`ClusterGroups` on its own NATS connection. Every test has
its own subject prefix, so its own bucket and broadcast subjects. The tests wait on what
the nodes report (``on_change``, ``on_broadcast``), not on time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from conftest import monitor_json
from moonwire.broker import Client
from moonwire.lua import Kind, MoonwireError
from moonwire.node import ServerProcess
from moonwire.node.cluster import MAX_NAME, ClusterGroups
from support import HANG, freeze, wait_until


class Nodes:
    """Starts :class:`ClusterGroups` instances ("nodes") and records what each reports:
    every join and leave it saw, every broadcast it received. :meth:`until` wakes on each."""

    def __init__(self, stack: AsyncExitStack, prefix: str) -> None:
        self.stack = stack
        self.prefix = prefix
        self.events: list[tuple[str, str, str, bool]] = []
        """(node, group, PID, joined) for every join and leave any node reported."""
        self.received: list[tuple[str, str, str, str | None, bytes]] = []
        """(node, group, subject, Mw-Topic, body) for every broadcast any node received."""
        self.clients: dict[str, Client] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def _poke(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def start(self, url: str, node: str, incarnation: str = "a1", *, faulty: bool = False,
                    **kwargs: object) -> ClusterGroups:
        """A node on a connection of its own; ``faulty``: its callbacks raise after recording."""
        client = Client()
        await client.connect(servers=url.split(","), name=f"test-{node}-{self.prefix}", dont_randomize=True,
                             max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.stack.push_async_callback(client.close)
        self.clients[node] = client

        def changed(group: str, pid: str, joined: bool) -> None:
            self.events.append((node, group, pid, joined))
            self._poke()
            if faulty:
                raise RuntimeError("on_change bug")

        def broadcast(group: str, msg: Msg) -> None:
            self.received.append((node, group, msg.subject, (msg.headers or {}).get("Mw-Topic"), msg.data))
            self._poke()
            if faulty:
                raise RuntimeError("on_broadcast bug")

        groups = ClusterGroups(client, prefix=self.prefix, node=node, incarnation=incarnation, on_change=changed,
                               on_broadcast=broadcast, **kwargs)  # type: ignore[arg-type]
        await groups.start()
        self.stack.push_async_callback(groups.stop)
        return groups

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter

    def got(self, node: str, group: str) -> list[tuple[str, str | None, bytes]]:
        """What ``node`` received for ``group``: (subject, topic, body)."""
        return [(subject, topic, body) for n, g, subject, topic, body in self.received if (n, g) == (node, group)]


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    async with AsyncExitStack() as stack:
        yield Nodes(stack, f"t{uuid.uuid4().hex[:10]}")


def pid(node: str, n: int = 1, epoch: str = "e1") -> str:
    return f"{{{node}@host|{epoch}-{n}}}"


async def stored(url: str, bucket: str) -> dict[str, dict[str, object]]:
    """What the bucket holds, read by a client of the test's own."""
    client = await nats.connect(url.split(","))
    try:
        kv = await client.jetstream().key_value(bucket)
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return {}
        return {key: json.loads((await kv.get(key)).value or b"") for key in keys}
    finally:
        await client.close()


async def error_of(work: Awaitable[object]) -> MoonwireError:
    with pytest.raises(MoonwireError) as caught:
        await work
    return caught.value


async def join_soon(node: ClusterGroups, group: str, member: str, within: float = 30) -> None:
    """Join, trying again while the answer is Unavailable (a stream electing a leader)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await node.join(group, member)
        except MoonwireError as err:
            if err.kind != Kind.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------- membership


async def test_join_leave_and_members_across_three_nodes(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b, c = [await nodes.start(nats_server.address, n) for n in ("na", "nb", "nc")]
    await a.join("chat", pid("na", 1))
    assert a.members("chat") == [pid("na", 1)] and a.local_members("chat") == [pid("na", 1)]  # at once
    await b.join("chat", pid("nb", 1))
    await b.join("other", pid("nb", 1))
    both = sorted([pid("na", 1), pid("nb", 1)])
    await nodes.until(lambda: all(n.members("chat") == both for n in (a, b, c)) and c.members("other") == [pid("nb", 1)])
    assert c.local_members("chat") == [] and c.local_groups() == [] and c.groups() == ["chat", "other"]
    assert a.local_groups() == ["chat"] and b.local_groups() == ["chat", "other"]
    assert c.members("nobody") == [] and c.statistics().members == 3
    assert await a.leave("chat", pid("na", 2)) is False  # never joined
    assert await a.leave("chat", pid("na", 1)) is True
    assert a.local_members("chat") == [] and a.members("chat") in ([pid("nb", 1)], both)  # b's may lag
    await nodes.until(lambda: all(n.members("chat") == [pid("nb", 1)] for n in (a, b, c)))
    assert await a.leave("chat", pid("na", 1)) is False
    assert ("nc", "chat", pid("na", 1), False) in nodes.events
    assert list(await stored(nats_server.address, a.bucket)) == ["chat.nb.e1-1", "other.nb.e1-1"]


async def test_multi_join_needs_as_many_leaves(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    for _ in range(3):
        await a.join("multi", pid("na"))
    assert a.local_members("multi") == [pid("na")] * 3
    await nodes.until(lambda: b.members("multi") == [pid("na")] * 3)
    await nodes.until(lambda: nodes.events.count(("nb", "multi", pid("na"), True)) == 3)  # once per join
    assert (await stored(nats_server.address, a.bucket))["multi.na.e1-1"]["count"] == 3
    assert await a.leave("multi", pid("na")) is True
    await nodes.until(lambda: b.members("multi") == [pid("na")] * 2)
    assert await a.leave("multi", pid("na")) and await a.leave("multi", pid("na"))
    assert await a.leave("multi", pid("na")) is False  # three joins, three leaves
    await nodes.until(lambda: b.members("multi") == [] and b.groups() == [])
    assert nodes.events.count(("nb", "multi", pid("na"), False)) == 3


async def test_release_on_exit_leaves_every_group(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    await a.join("g1", pid("na", 1))
    await a.join("g1", pid("na", 1))
    await a.join("g2", pid("na", 1))
    await a.join("g2", pid("na", 2))
    await nodes.until(lambda: b.members("g1") == [pid("na", 1)] * 2 and len(b.members("g2")) == 2)
    assert await a.release(pid("na", 1)) == ["g1", "g2"]
    assert a.members("g1") == [] and a.local_members("g2") == [pid("na", 2)]  # at once
    assert a.release_soon(pid("na", 1)) is None  # in no group: no task
    await nodes.until(lambda: b.members("g1") == [] and b.members("g2") == [pid("na", 2)])
    task = a.release_soon(pid("na", 2))
    assert task is not None and await task == ["g2"]
    await nodes.until(lambda: b.groups() == [])
    assert await stored(nats_server.address, a.bucket) == {} and a.statistics().subscribed == 0


async def test_release_or_leave_racing_a_join_in_flight(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    # The first member of a group: the exit comes while the join subscribes.
    joining = asyncio.create_task(a.join("race", pid("na", 1)))
    await nodes.until(lambda: ("na", "race", pid("na", 1), True) in nodes.events)
    assert await a.release(pid("na", 1)) == ["race"]
    await joining
    assert a.members("race") == [] and a.statistics().subscribed == 0
    # A group this node serves already: the leave comes while the join's write is out.
    await a.join("race", pid("na", 2))
    joining = asyncio.create_task(a.join("race", pid("na", 3)))
    await nodes.until(lambda: ("na", "race", pid("na", 3), True) in nodes.events)
    assert await a.leave("race", pid("na", 3)) is True
    await joining
    assert a.local_members("race") == [pid("na", 2)]
    assert list(await stored(nats_server.address, a.bucket)) == ["race.na.e1-2"]
    await nodes.until(lambda: b.members("race") == [pid("na", 2)])


async def test_node_down_deletes_that_incarnations_members(nats_server: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(nats_server.address, "na", incarnation="k1")
    b, c = await nodes.start(nats_server.address, "nb"), await nodes.start(nats_server.address, "nc")
    await a.join("d", pid("na", 1))
    await a.join("d", pid("na", 1))
    await a.join("e", pid("na", 2))
    await b.join("d", pid("nb"))
    await nodes.until(lambda: all(len(n.members("d")) == 3 and n.members("e") for n in (b, c)))
    await nodes.clients["na"].close()  # na dies: nothing of it is released
    assert await b.node_down("na", "k0") == []  # another incarnation: nothing of it here
    freed_b, freed_c = await asyncio.gather(b.node_down("na", "k1"), c.node_down("na", "k1"))
    assert sorted(freed_b + freed_c) == [("d", pid("na", 1)), ("e", pid("na", 2))]  # each once
    assert b.members("d") == [pid("nb")] and b.members("e") == []  # at once, on the one that deleted it
    await nodes.until(lambda: c.members("d") == [pid("nb")] and c.groups() == ["d"])
    task = c.node_down_soon("na", "k1")
    assert task is not None and await task == []


async def test_node_down_of_itself_changes_nothing(nats_server: ServerProcess, nodes: Nodes,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    a = await nodes.start(nats_server.address, "na", incarnation="k1")
    await a.join("self", pid("na"))
    assert await a.node_down("na", "k1") == []
    assert "this node (na, incarnation k1) is down" in caplog.text
    assert a.members("self") == [pid("na")] and list(await stored(nats_server.address, a.bucket)) == ["self.na.e1-1"]


async def test_a_live_node_writes_back_what_another_deleted(nats_server: ServerProcess, nodes: Nodes) -> None:
    # Declared down while it is not (a partition, say): its own table is the authority.
    a = await nodes.start(nats_server.address, "na", incarnation="k1")
    b = await nodes.start(nats_server.address, "nb")
    await a.join("heal", pid("na"))
    await nodes.until(lambda: b.members("heal") == [pid("na")])
    assert await b.node_down("na", "k1") == [("heal", pid("na"))]
    await nodes.until(lambda: nodes.events.count(("nb", "heal", pid("na"), True)) == 2)
    assert b.members("heal") == [pid("na")] and a.members("heal") == [pid("na")]


async def test_start_deletes_members_of_an_earlier_incarnation(nats_server: ServerProcess, nodes: Nodes) -> None:
    old = await nodes.start(nats_server.address, "na", incarnation="lz1")
    other = await nodes.start(nats_server.address, "nb")
    await old.join("s", pid("na", 1, "lz1"))
    await old.join("t", pid("na", 2, "lz1"))
    await other.join("s", pid("nb"))
    await nodes.until(lambda: len(other.members("s")) == 2)
    await nodes.clients["na"].close()  # a crash
    new = await nodes.start(nats_server.address, "na", incarnation="lz2")
    assert new.members("s") == [pid("nb")] and new.members("t") == [] and new.statistics().freed == 2
    await nodes.until(lambda: other.members("s") == [pid("nb")] and other.members("t") == [])
    # An incarnation older than one with members deletes nothing: it is the stale one.
    await new.join("u", pid("na", 1, "lz2"))
    older = await nodes.start(nats_server.address, "na", incarnation="ly9")
    assert older.members("u") == [pid("na", 1, "lz2")] and older.statistics().freed == 0


async def test_a_value_that_is_not_ours_is_ignored(nats_server: ServerProcess, nodes: Nodes,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    a = await nodes.start(nats_server.address, "na")
    await a.join("g", pid("na"))
    client = await nats.connect(nats_server.address)
    nodes.stack.push_async_callback(client.close)
    kv = await client.jetstream().key_value(a.bucket)
    await kv.put("g.nx.e1-1", b"not json")
    await kv.put("g.nx.e1-2", json.dumps({"pid": pid("ny", 2), "node": "nx", "incarnation": "a", "count": 1}).encode())
    await kv.put("g.nx.e1-3", json.dumps({"pid": pid("nx", 3), "node": "nx", "incarnation": "a", "count": 0}).encode())
    await kv.put("flat", b"{}")
    await wait_until(lambda: a.statistics().ignored == 4, 10, "the watch to bring four foreign values")
    b = await nodes.start(nats_server.address, "nb")  # ... and when loading them
    assert a.members("g") == b.members("g") == [pid("na")] and b.statistics().ignored == 4
    assert "'g.nx.e1-1' in bucket" in caplog.text and "not a moonwire membership: ignored" in caplog.text


# ---------------------------------------------------------------- broadcasts


async def test_broadcast_reaches_every_node_with_members_once(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b, c = [await nodes.start(nats_server.address, n) for n in ("na", "nb", "nc")]
    await a.join("chat", pid("na", 1))
    await a.join("chat", pid("na", 2))  # two members, one message for the node
    await b.join("chat", pid("nb"))
    for node in (a, b, c):
        await node.join("mark", pid(node.node, 9))
    outside = await nats.connect(nats_server.address)
    nodes.stack.push_async_callback(outside.close)
    await c.publish("chat", "hello", b"\x81\xa1x\x01", {"Content-Type": "application/msgpack"})
    await outside.publish(f"{nodes.prefix}.g.chat.greet", b'{"y":2}')  # nats pub mw.g.chat.greet '{"y":2}'
    # Each publisher's messages arrive in order: once the marks are in, so is the chat.
    await c.publish("mark", "end", b"", {})
    await outside.publish(f"{nodes.prefix}.g.mark.end", b"")
    await nodes.until(lambda: all(len(nodes.got(n, "mark")) == 2 for n in ("na", "nb", "nc")))
    for node in ("na", "nb"):
        assert sorted(nodes.got(node, "chat")) == [(f"{nodes.prefix}.g.chat", "hello", b"\x81\xa1x\x01"),
                                                   (f"{nodes.prefix}.g.chat.greet", None, b'{"y":2}')]
    assert nodes.got("nc", "chat") == []
    assert a.statistics().broadcasts == 4 and c.statistics().broadcasts == 2


async def test_a_broadcast_right_after_join_is_received(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    for i in range(20):  # sent as soon as join returns
        await a.join(f"fresh{i}", pid("na", i))
        await b.publish(f"fresh{i}", "hi", str(i).encode(), {})
    for i in range(20, 200):  # sent as soon as another node sees the member, before join returns
        joining = asyncio.create_task(a.join(f"fresh{i}", pid("na", i)))
        await nodes.until(lambda: b.members(f"fresh{i}") == [pid("na", i)])
        await b.publish(f"fresh{i}", "hi", str(i).encode(), {})
        await joining
    await nodes.until(lambda: len([r for r in nodes.received if r[0] == "na"]) == 200)
    assert all(nodes.got("na", f"fresh{i}") == [(f"{nodes.prefix}.g.fresh{i}", "hi", str(i).encode())]
               for i in range(200))


async def test_subscription_dropped_after_the_last_leave(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    room = f"{nodes.prefix}.g.room"

    def subjects() -> set[str]:
        connections = monitor_json(nats_server, "connz?subs=1")["connections"]
        mine = [c for c in connections if c.get("name") == f"test-na-{nodes.prefix}"]
        return {s for c in mine for s in c.get("subscriptions_list", []) if s.startswith(room)}

    await a.join("room", pid("na", 1))
    await a.join("room", pid("na", 2))
    await a.join("mark", pid("na", 9))
    assert subjects() == {room, f"{room}.>"} and a.statistics().subscribed == 2
    await a.leave("room", pid("na", 1))
    assert subjects() == {room, f"{room}.>"}
    await a.leave("room", pid("na", 2))
    assert a.statistics().subscribed == 1
    await wait_until(lambda: subjects() == set(), 10, "the server to drop the subscriptions")
    await b.publish("room", "late", b"", {})
    await b.publish("mark", "end", b"", {})
    await nodes.until(lambda: len(nodes.got("na", "mark")) == 1)
    assert nodes.got("na", "room") == []


async def test_callbacks_that_raise_are_logged_and_the_node_carries_on(nats_server: ServerProcess, nodes: Nodes,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    a = await nodes.start(nats_server.address, "na")
    b = await nodes.start(nats_server.address, "nb", faulty=True)
    await b.join("bad", pid("nb"))
    for i in range(2):
        await a.join("bad", pid("na", i))
        await a.publish("bad", "t", str(i).encode(), {})
    await nodes.until(lambda: len(nodes.got("nb", "bad")) == 2 and b.members("bad") == sorted(
        [pid("na", 0), pid("na", 1), pid("nb")]))
    assert "on_change for 'bad' failed" in caplog.text and "on_broadcast for 'bad' failed" in caplog.text


# ---------------------------------------------------------------- what a group and a member may be


@pytest.mark.parametrize(("group", "says"), [
    ("", "cannot be empty"),
    ("chat.room", "may not hold '.'"),
    ("a b", "(space)"),
    ("*", "('*')"),
    (">", "('>')"),
    ("x" * (MAX_NAME + 1), f"the limit is {MAX_NAME}"),
    ("wörk", "('ö')"),
])
async def test_bad_group_names_are_invalid(nats_server: ServerProcess, nodes: Nodes, group: str, says: str) -> None:
    a = await nodes.start(nats_server.address, "na")
    for work in (a.join(group, pid("na")), a.leave(group, pid("na")), a.publish(group, "t", b"", {})):
        err = await error_of(work)
        assert err.kind == Kind.INVALID and says in err.message and "process group name" in err.message, err.message
    assert a.members(group) == [] and a.groups() == []


async def test_members_must_be_processes_of_this_node(nats_server: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(nats_server.address, "na")
    for member in (pid("nb"), "not a pid", "{@worker|wf-1}", "{na@host|a:b}"):
        assert (await error_of(a.join("g", member))).kind == Kind.INVALID
    assert (await error_of(a.publish("g", "", b"", {}))).kind == Kind.INVALID
    await a.join("x" * MAX_NAME, pid("na"))  # the longest name
    assert a.local_groups() == ["x" * MAX_NAME]


# ---------------------------------------------------------------- JetStream missing or silent


async def test_jetstream_missing_is_unavailable(plain_nats: ServerProcess, nodes: Nodes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="moonwire.cluster")
    a = await nodes.start(plain_nats.address, "na", retry_interval=0.05)
    assert a.available is False
    await wait_until(lambda: a.statistics().attempts >= 4, 10, "several attempts to open the bucket")
    warnings = [r for r in caplog.records if r.name == "moonwire.cluster" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "JetStream" in warnings[0].getMessage(), warnings
    err = await error_of(a.join("g", pid("na")))
    assert err.kind == Kind.UNAVAILABLE and err.retryable is True and "JetStream" in err.message
    assert a.local_members("g") == [] and a.statistics().subscribed == 0
    assert await a.leave("g", pid("na")) is False and await a.release(pid("na")) == []
    assert await a.node_down("nb", "a1") == [] and a.members("g") == []
    await a.publish("g", "t", b"", {})  # core NATS: no JetStream needed


async def test_jetstream_that_never_answers_is_unavailable_within_the_bound(plain_nats: ServerProcess,
                                                                            nodes: Nodes) -> None:
    silent = await nats.connect(plain_nats.address)
    nodes.stack.push_async_callback(silent.close)

    async def ignore(msg: object) -> None:
        pass

    await silent.subscribe("$JS.>", cb=ignore)
    await silent.flush()
    # The 60 s only guards against a hang; the bound start() used is the one in its reason.
    a = await asyncio.wait_for(nodes.start(plain_nats.address, "na", timeout=0.5, retry_interval=60), HANG)
    assert a.available is False
    assert "JetStream did not answer within 0.5s" in (a.unavailable_at_start or ""), a.unavailable_at_start


async def test_join_when_the_server_stops_answering_is_unavailable_within_the_bound(
        own_nats: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(own_nats.address, "na", timeout=0.5, retry_interval=0.1)
    await wait_until(lambda: a.available, 10, "the bucket to open")
    await join_soon(a, "before", pid("na", 1), within=10)
    await freeze(own_nats.process.pid)  # a server that hears nothing and says nothing
    try:
        for group in ("before", "fresh"):  # subscribed already: the write hangs; new: the flush does
            err = await asyncio.wait_for(error_of(a.join(group, pid("na", 2))), HANG)  # its bound: in the message
            assert err.kind == Kind.UNAVAILABLE and "within 0.5s" in err.message, err.message
            assert a.local_members(group) == ([pid("na", 1)] if group == "before" else [])  # not joined
        assert await a.leave("before", pid("na", 1)) is True  # local, at once; the write is retried
        assert a.members("before") == []
    finally:
        os.kill(own_nats.process.pid, signal.SIGCONT)
    # The frozen writes land late, after which the retries settle the bucket on what the
    # node's own table says: nobody.
    await join_soon(a, "after", pid("na", 3), within=10)
    await wait_until(lambda: a.statistics().subscribed == 1, 10, "the dropped subscriptions")

    async def settled() -> bool:
        return list(await stored(own_nats.address, a.bucket)) == ["after.na.e1-3"]

    deadline = time.monotonic() + 10
    while not await settled():  # no event for a retry's write landing: poll the bucket
        assert time.monotonic() < deadline, await stored(own_nats.address, a.bucket)
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------- a three-server cluster


async def test_cluster_of_three_keeps_groups_when_a_server_dies(nats_cluster: list[ServerProcess],
                                                                nodes: Nodes) -> None:
    members = []
    for i, server in enumerate(nats_cluster):  # each node on its own server first
        urls = ",".join(s.address for s in [server, *(s for s in nats_cluster if s is not server)])
        members.append(await nodes.start(urls, f"n{i}", replicas=3, retry_interval=0.2))
    await wait_until(lambda: all(m.available for m in members), 30, "JetStream on the cluster")
    for i, member in enumerate(members):
        await join_soon(member, "all", pid(member.node, 1))
    everyone = sorted(pid(m.node, 1) for m in members)
    await nodes.until(lambda: all(m.members("all") == everyone for m in members))

    # Kill the server that leads the bucket's stream: the hardest of the three to lose.
    client = await nats.connect(nats_cluster[1].address)
    nodes.stack.push_async_callback(client.close)
    info = await client.jetstream().stream_info(f"KV_{members[0].bucket}")
    assert info.config.num_replicas == 3 and info.cluster is not None
    leader = nats_cluster[int(info.cluster.leader.removeprefix("s")) - 1]  # type: ignore[union-attr]
    leader.process.kill()
    await leader.process.wait()

    for member in members:  # one lost its server, the others a peer
        await join_soon(member, "after", pid(member.node, 2))
    assert all(m.members("all") == everyone for m in members)  # what was there is still there
    await members[0].publish("all", "still", b"", {})
    await nodes.until(lambda: all(len(nodes.got(m.node, "all")) == 1 for m in members), timeout=20)
    await nodes.until(lambda: all(m.members("after") == sorted(pid(n.node, 2) for n in members) for m in members),
                      timeout=40)
