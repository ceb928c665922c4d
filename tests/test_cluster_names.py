"""Cluster-wide names (node/cluster, wippy-surface §3.7 CONSISTENT) on real nats-servers.

Each "node" here is a :class:`ClusterNames` on its own NATS connection. Every test has
its own subject prefix, so its own bucket. Replicas converge through their watches: the
tests wait on ``on_change`` notifications, not on time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import nats
import pytest

from moonwire.lua import Kind, MoonwireError
from moonwire.node import ServerProcess
from moonwire.node.cluster import MAX_NAME, ClusterNames, Holder
from moonwire.node.cluster._replica import Replica
from support import HANG, freeze, wait_until


class Nodes:
    """Starts :class:`ClusterNames` instances ("nodes") and lets a test await a state
    of their replicas: every change to any replica wakes :meth:`until`."""

    def __init__(self, stack: AsyncExitStack, prefix: str) -> None:
        self.stack = stack
        self.prefix = prefix
        self.changed = asyncio.Condition()
        self.events: list[tuple[str, str, str | None, str | None]] = []
        """(node, name, PID before, PID after) for every change any replica saw."""

    def _notifier(self, node: str) -> Callable[[str, Holder | None, Holder | None], None]:
        def changed(name: str, before: Holder | None, after: Holder | None) -> None:
            self.events.append((node, name, before and before.pid, after and after.pid))
            asyncio.get_running_loop().create_task(self._wake())
        return changed

    async def _wake(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def start(self, url: str, node: str, incarnation: str = "a1", **kwargs: object) -> ClusterNames:
        client = await nats.connect(url.split(","), name=f"test-{node}", dont_randomize=True,
                                    max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.stack.push_async_callback(client.close)
        names = ClusterNames(client, prefix=self.prefix, node=node, incarnation=incarnation,
                             on_change=self._notifier(node), **kwargs)  # type: ignore[arg-type]
        await names.start()
        self.stack.push_async_callback(names.stop)
        return names

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    async with AsyncExitStack() as stack:
        yield Nodes(stack, f"t{uuid.uuid4().hex[:10]}")


def pid(node: str, n: int = 1) -> str:
    return f"{{{node}@host|e1-{n}}}"


async def register_soon(member: ClusterNames, name: str, owner: str, within: float = 30) -> None:
    """Register, trying again while the answer is Unavailable (a server coming back, a
    stream electing a leader), for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await member.register(name, owner)
        except MoonwireError as err:
            if err.kind != Kind.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def error_of(work: Awaitable[object]) -> MoonwireError:
    with pytest.raises(MoonwireError) as caught:
        await work
    return caught.value


# ---------------------------------------------------------------- first writer wins


async def test_register_race_one_owner_per_name_and_replicas_agree(nats_server: ServerProcess, nodes: Nodes) -> None:
    members = [await nodes.start(nats_server.address, f"n{i}") for i in range(4)]
    names = [f"svc.{i}" for i in range(50)]

    async def attempt(member: ClusterNames, name: str) -> str | MoonwireError:
        try:
            await member.register(name, pid(member.node))
            return pid(member.node)
        except MoonwireError as err:
            return err

    outcomes = await asyncio.gather(*(attempt(m, name) for name in names for m in members))
    owners = {}
    for i, name in enumerate(names):
        row = outcomes[i * len(members):(i + 1) * len(members)]
        won = [o for o in row if isinstance(o, str)]
        lost = [o for o in row if isinstance(o, MoonwireError)]
        assert len(won) == 1, (name, row)
        owners[name] = won[0]
        assert len(lost) == len(members) - 1
        for err in lost:
            assert err.kind == Kind.ALREADY_EXISTS and won[0] in err.message, err
    await nodes.until(lambda: all(m.lookup(name) == owners[name] for m in members for name in names))
    assert all(len(m) == 50 for m in members)
    # The winner's own replica knew at once (write-through), before any watch brought it.
    assert sum(len(m.names_of(pid(m.node))) for m in members) == 50


async def test_register_taken_names_the_holder(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    await a.register("lead", pid("na"))
    assert a.lookup("lead") == pid("na")  # at once, from its own write
    err = await error_of(b.register("lead", pid("nb")))
    assert err.kind == Kind.ALREADY_EXISTS and err.retryable is False
    assert err.message == f"cluster name 'lead' is already registered to {pid('na')} (node na)"
    assert err.details == {"pid": pid("na"), "node": "na"}
    # The loser learns the holder even before its watch brings it; after, both agree.
    await nodes.until(lambda: b.lookup("lead") == pid("na"))
    assert b.statistics().conflicts == 1


async def test_register_again_by_the_holder_is_idempotent(nats_server: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(nats_server.address, "na")
    await a.register("one", pid("na"))
    revision = a.holder("one").revision  # type: ignore[union-attr]
    await a.register("one", pid("na"))
    await a.register("one", pid("na"))
    assert a.holder("one").revision == revision  # type: ignore[union-attr]  (no new write)
    assert a.names_of(pid("na")) == ["one"]


# ---------------------------------------------------------------- unregister


async def test_unregister_only_by_the_owner(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    await a.register("mine", pid("na"))
    await nodes.until(lambda: b.lookup("mine") == pid("na"))
    assert await b.unregister("mine", pid("nb")) is False  # not the owner
    assert await a.unregister("mine", pid("na", 2)) is False  # another process of the same node
    assert await a.unregister("nobody", pid("na")) is False  # not held at all
    assert a.lookup("mine") == pid("na")
    assert await a.unregister("mine", pid("na")) is True
    assert a.lookup("mine") is None  # at once, from its own delete
    assert await a.unregister("mine", pid("na")) is False  # already freed
    await b.register("mine", pid("nb"))
    await nodes.until(lambda: a.lookup("mine") == pid("nb") and b.lookup("mine") == pid("nb"))


async def test_unregister_by_the_owner_through_a_lagging_replica(nats_server: ServerProcess, nodes: Nodes) -> None:
    # The owner's PID registered through one node and unregistered through another whose
    # replica may not have it yet: the bucket, not the replica, decides.
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    await a.register("moved", pid("na"))
    assert await b.unregister("moved", pid("na")) is True
    await nodes.until(lambda: a.lookup("moved") is None and b.lookup("moved") is None)


# ---------------------------------------------------------------- owner exit, node down


async def test_release_frees_every_name_of_the_exited_pid(nats_server: ServerProcess, nodes: Nodes) -> None:
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    for name in ("r1", "r2", "r3"):
        await a.register(name, pid("na", 1))
    await a.register("other", pid("na", 2))
    assert await a.release(pid("na", 1)) == ["r1", "r2", "r3"]  # at once: no watch needed
    assert a.names_of(pid("na", 1)) == [] and a.lookup("other") == pid("na", 2)
    assert a.release_soon(pid("na", 1)) is None  # holds nothing: no task
    for name in ("r1", "r2", "r3"):
        await b.register(name, pid("nb"))
    await nodes.until(lambda: all(a.lookup(n) == pid("nb") for n in ("r1", "r2", "r3")))
    assert await a.release(pid("na", 1)) == []  # the names are someone else's now


async def test_release_soon_is_an_owned_task(nats_server: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(nats_server.address, "na")
    await a.register("bg", pid("na"))
    task = a.release_soon(pid("na"))
    assert task is not None and await task == ["bg"]


async def test_release_during_register_wins(nats_server: ServerProcess, nodes: Nodes) -> None:
    # The owner exits while its register is on the wire: the name must not outlive it.
    a, b = await nodes.start(nats_server.address, "na"), await nodes.start(nats_server.address, "nb")
    registering = asyncio.create_task(a.register("racy", pid("na")))
    await asyncio.sleep(0)  # the request is out, its answer (on a loaded machine, perhaps) not yet in
    await a.release(pid("na"))  # frees nothing yet, or the name if the answer was in first
    await registering  # succeeds: the name was written
    # ... and then freed again: b sees it come and go.
    # (a's replica hears the delete too, perhaps after b's: each follows the bucket alone)
    await nodes.until(lambda: ("nb", "racy", None, pid("na")) in nodes.events
                      and ("nb", "racy", pid("na"), None) in nodes.events and a.lookup("racy") is None)
    assert a.names_of(pid("na")) == []
    await b.register("racy", pid("nb"))


async def test_node_down_frees_that_incarnations_names(nats_server: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(nats_server.address, "na", incarnation="k1")
    b, c = await nodes.start(nats_server.address, "nb"), await nodes.start(nats_server.address, "nc")
    await a.register("d1", pid("na", 1))
    await a.register("d2", pid("na", 2))
    await b.register("d3", pid("nb"))
    await nodes.until(lambda: all(m.lookup("d1") and m.lookup("d2") and m.lookup("d3") for m in (b, c)))
    assert await a.node_down("na", "k1") == []  # never about itself
    await a.stop()  # dead (a live one would register its names again: the next test)
    assert await b.node_down("na", "k0") == []  # another incarnation: nothing of it here
    # Both survivors race to clean up; each name is freed once, by one of them.
    freed_b, freed_c = await asyncio.gather(b.node_down("na", "k1"), c.node_down("na", "k1"))
    assert sorted(freed_b + freed_c) == ["d1", "d2"]
    await c.register("d1", pid("nc"))
    await nodes.until(lambda: b.lookup("d1") == pid("nc") and b.lookup("d2") is None and b.lookup("d3") == pid("nb"))


async def test_a_false_node_down_is_healed_by_the_live_holder(nats_server: ServerProcess, nodes: Nodes) -> None:
    """b takes a for down while a is alive (a partition, a long pause): b deletes a's
    names, a sees it through its watch and registers them again (unless one was taken
    in between: then it stays taken, with a warning)."""
    a = await nodes.start(nats_server.address, "ha", incarnation="k1")
    b = await nodes.start(nats_server.address, "hb")
    await a.register("h1", pid("ha", 1))
    await a.register("h2", pid("ha", 2))
    await nodes.until(lambda: b.lookup("h1") and b.lookup("h2"))
    assert sorted(await b.node_down("ha", "k1")) == ["h1", "h2"]
    await nodes.until(lambda: b.lookup("h1") == pid("ha", 1) and b.lookup("h2") == pid("ha", 2))
    await nodes.until(lambda: a.statistics().healed == 2)  # b may see a's writes before a has their acks


async def test_start_frees_names_of_an_earlier_incarnation(nats_server: ServerProcess, nodes: Nodes) -> None:
    old = await nodes.start(nats_server.address, "na", incarnation="lz1")
    other = await nodes.start(nats_server.address, "nb")
    await old.register("stale1", pid("na", 1))
    await old.register("stale2", pid("na", 2))
    await other.register("kept", pid("nb"))
    await old.stop()  # as a crash: nothing released
    # "lz2" is later than "lz1"; the names of "lz1" are dead and go at start.
    new = await nodes.start(nats_server.address, "na", incarnation="lz2")
    assert new.lookup("stale1") is None and new.lookup("stale2") is None and new.lookup("kept") == pid("nb")
    assert new.statistics().freed == 2
    await nodes.until(lambda: other.lookup("stale1") is None and other.lookup("stale2") is None)
    # An incarnation older than what holds names deletes nothing: it is the stale one.
    await new.register("newer", pid("na", 3))
    older = await nodes.start(nats_server.address, "na", incarnation="ly9")
    assert older.lookup("newer") == pid("na", 3) and older.statistics().freed == 0


# ---------------------------------------------------------------- what a name may be


@pytest.mark.parametrize(("name", "says"), [
    ("", "cannot be empty"),
    ("a b", "(space)"),
    ("svc.*", "('*')"),
    ("svc.>", "('>')"),
    ("tab\t", "('\\t')"),
    ("x" * (MAX_NAME + 1), f"the limit is {MAX_NAME}"),
    (".lead", "may not start or end with '.'"),
    ("lead.", "may not start or end with '.'"),
    ("wörk", "('ö')"),
    ("{n@h|1}", "('@', '{', '|', '}')"),
])
async def test_register_invalid_name(nats_server: ServerProcess, nodes: Nodes, name: str, says: str) -> None:
    a = await nodes.start(nats_server.address, "na")
    err = await error_of(a.register(name, pid("na")))
    assert err.kind == Kind.INVALID and err.retryable is False
    assert says in err.message, err.message
    assert (await error_of(a.unregister(name, pid("na")))).kind == Kind.INVALID


async def test_register_longest_and_oddest_valid_names(nats_server: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(nats_server.address, "na")
    for name in ("x" * MAX_NAME, "a/b=c-d_e.f", "A.9"):
        await a.register(name, pid("na"))
        assert a.lookup(name) == pid("na")


# ---------------------------------------------------------------- JetStream missing or silent


async def test_jetstream_missing_is_unavailable(plain_nats: ServerProcess, nodes: Nodes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="moonwire.cluster")
    a = await nodes.start(plain_nats.address, "na", retry_interval=0.05)
    assert a.available is False
    await asyncio.sleep(0.3)  # several retries: still one warning
    warnings = [r for r in caplog.records if r.name == "moonwire.cluster" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "JetStream" in warnings[0].getMessage(), warnings
    for work in (a.register("x", pid("na")), a.unregister("x", pid("na"))):
        err = await error_of(work)
        assert err.kind == Kind.UNAVAILABLE and err.retryable is True and "JetStream" in err.message
    assert a.lookup("x") is None and await a.release(pid("na")) == [] and await a.node_down("nb", "a1") == []


async def test_jetstream_that_never_answers_is_unavailable_within_the_bound(plain_nats: ServerProcess,
                                                                            nodes: Nodes) -> None:
    # Something takes JetStream's requests and never answers (as a JetStream cut off
    # from its leader looks to a client): start() gives up within its bound.
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


async def test_register_when_the_server_stops_answering_is_unavailable_within_the_bound(
        own_nats: ServerProcess, nodes: Nodes) -> None:
    a = await nodes.start(own_nats.address, "na", timeout=0.5, retry_interval=0.1)
    # A fresh server on a busy machine may take longer than 0.5 s to make the bucket.
    await wait_until(lambda: a.available, 10, "the bucket to open")
    await register_soon(a, "before", pid("na"), within=10)
    await freeze(own_nats.process.pid)  # a server that hears nothing and says nothing
    try:
        for work in (a.register("during", pid("na")), a.unregister("before", pid("na"))):
            err = await asyncio.wait_for(error_of(work), HANG)  # the bound is the one the error names
            assert err.kind == Kind.UNAVAILABLE and err.retryable is True and "did not answer within 0.5s" in err.message
        assert a.lookup("before") == pid("na")  # reading needs no round trip
    finally:
        os.kill(own_nats.process.pid, signal.SIGCONT)
    # It carries on when the server does (the unanswered write may have landed: the
    # register says so, idempotently).
    await register_soon(a, "during", pid("na"), within=10)
    assert await a.unregister("during", pid("na")) is True


# ---------------------------------------------------------------- a three-server cluster


async def test_cluster_of_three_keeps_names_when_a_server_dies(nats_cluster: list[ServerProcess], nodes: Nodes) -> None:
    members = []
    for i, server in enumerate(nats_cluster):  # each node on its own server first
        urls = ",".join(s.address for s in [server, *(s for s in nats_cluster if s is not server)])
        members.append(await nodes.start(urls, f"n{i}", replicas=3, retry_interval=0.2))
    # Clustered JetStream elects its meta leader after the routes are up: no event to await.
    await wait_until(lambda: all(m.available for m in members), 30, "JetStream on the cluster")
    for i in range(10):
        await members[i % 3].register(f"c{i}", pid(members[i % 3].node, i))
    await nodes.until(lambda: all(m.lookup(f"c{i}") for m in members for i in range(10)))

    # Kill the server that leads the bucket's stream: the hardest of the three to lose.
    client = await nats.connect(nats_cluster[1].address)
    nodes.stack.push_async_callback(client.close)
    info = await client.jetstream().stream_info(f"KV_{members[0].bucket}")
    assert info.config.num_replicas == 3 and info.cluster is not None
    leader = nats_cluster[int(info.cluster.leader.removeprefix("s")) - 1]  # type: ignore[union-attr]
    leader.process.kill()
    await leader.process.wait()

    for i, member in enumerate(members):  # one lost its server, the others their peer
        await register_soon(member, f"after{i}", pid(member.node, 100 + i))
    err = await error_of(register_soon(members[1], "c0", pid("n1", 999)))
    assert err.kind == Kind.ALREADY_EXISTS  # what was there is still there
    await nodes.until(lambda: all(m.lookup(f"after{i}") == pid(members[i].node, 100 + i)
                                  for m in members for i in range(3)), timeout=40)
    assert all(m.lookup("c5") == pid("n2", 5) for m in members)


# ---------------------------------------------------------------- the replica alone


def test_replica_write_through_then_the_watch() -> None:
    r = Replica()
    r.wrote("n", Holder("p1", "a", "1", 5))
    r.watched("x", 4, Holder("q", "b", "1", 4))  # the watch is behind
    assert r.get("n").pid == "p1" and r.position == 4  # type: ignore[union-attr]
    r.watched("n", 5, Holder("p1", "a", "1", 5))  # it brings ours: nothing changes
    r.deleted("n", 7)  # our delete, acknowledged before the watch has it
    r.watched("n", 6, Holder("p2", "a", "1", 6))  # an older value of the name: stays deleted
    assert r.get("n") is None
    r.watched("n", 7, None)
    r.watched("n", 8, Holder("p3", "c", "1", 8))
    assert r.get("n").pid == "p3" and r.names_of("p3") == ["n"] and r.names_of("p1") == []  # type: ignore[union-attr]
    r.wrote("n", Holder("p9", "a", "1", 3))  # an acknowledgement the watch has passed
    assert r.get("n").pid == "p3"  # type: ignore[union-attr]


def test_replica_survives_a_failing_listener(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, before: Holder | None, after: Holder | None) -> None:
        raise RuntimeError("listener bug")

    r = Replica(broken)
    r.watched("n", 1, Holder("p", "a", "1", 1))
    assert r.get("n") is not None and "on_change for 'n' failed" in caplog.text
