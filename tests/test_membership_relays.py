"""Membership of a large cluster (issue 20, item 6): the lowest-named nodes relay every
heartbeat in a digest, the others read digests only, and the liveness rules of
``broker/_membership.py`` hold through the relay.

The rules are driven with a fake clock (a relay and a reader wired by hand, the digest
going through its real encoding); then real Membership instances, each with its own
connection to a real nats-server, find their roles themselves, and the server shows that
the readers no longer subscribe to every heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from moonwire.broker import ConnectOptions, Membership, Outbox, Subjects, connect
from moonwire.broker._membership import Digest, Heartbeat
from moonwire.node import ServerProcess

from conftest import monitor_json

INTERVAL, WINDOW = 0.5, 2.5


class FakeNats:
    is_connected = True


class FakeOutbox:
    def publish_nowait(self, subject: str, body: bytes, **_: object) -> None:
        pass


class Relayed:
    """A relay ``r1`` and a reader ``me`` that reads only r1's digests, on one fake clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.downs: list[tuple[str, str, str]] = []
        self.down_at: list[float] = []
        self.relay = self.membership("r1")
        self.reader = self.membership("me")
        self.reader.reading_digests = True
        self.deaf_relay = False  # r1 stops hearing the reader's beats

    def membership(self, node: str) -> Membership:
        m = Membership(FakeNats(), FakeOutbox(), Subjects(), node, "inc1", [],  # type: ignore[arg-type]
                       interval=INTERVAL, down_after=WINDOW, clock=lambda: self.now,
                       on_down=(lambda *down: (self.downs.append(down), self.down_at.append(self.now)))
                       if node == "me" else (lambda *_: None))
        return m

    def run(self, seconds: float, beating: tuple[str, ...] = ("me", "r1", "peer")) -> None:
        """Every interval the relay hears the nodes ``beating`` and sends its digest,
        which the reader reads; both check every 0.1 s."""
        end, next_beat = self.now + seconds, self.now
        while self.now < end - 1e-9:
            self.now = round(self.now + 0.1, 6)
            if self.now >= next_beat - 1e-9:
                for node in beating:
                    if not (node == "me" and self.deaf_relay):
                        self.relay.heard(Heartbeat(node, "p1" if node == "peer" else "inc1", [], False))
                self.reader.heard_digest(Digest.parse(self.relay.digest()))
                next_beat = self.now + INTERVAL
            self.relay.check()
            self.reader.check()


def test_a_reader_hears_peers_through_a_relay_and_judges_silence_by_the_relayed_age() -> None:
    c = Relayed()
    c.run(1.0)
    assert sorted(c.reader.live()) == ["peer", "r1"] and c.reader.hearing()
    last_beat = c.reader.peers["peer"].last_seen  # when r1 heard it last
    assert last_beat < c.now
    c.run(WINDOW + 1.0, beating=("me", "r1"))
    [(node, incarnation, reason)] = c.downs
    assert (node, incarnation) == ("peer", "p1") and reason.startswith("no heartbeat for")
    # Judged from when the relay last heard it, not from when a digest last named it.
    assert WINDOW < c.down_at[0] - last_beat <= WINDOW + 0.2


def test_a_slower_relay_naming_a_peer_later_brings_nothing_back() -> None:
    """Only news counts: a second relay that heard the peer's last beat earlier still
    names it (it has not declared it down yet), but that is no flap."""
    c = Relayed()
    slow = c.membership("r2")
    c.run(1.0)
    slow.heard(Heartbeat("peer", "p1", [], False))  # r2 heard the peer, once, now...
    slow.heard(Heartbeat("r2", "inc1", [], False))
    c.run(0.5)  # ...r1 heard it once more after that
    c.run(WINDOW + 0.3, beating=("me", "r1"))
    assert [d[0] for d in c.downs] == ["peer"]
    stale = Digest.parse(slow.digest())
    assert stale.roster is not None and "peer" in [e.node for e in stale.entries(stale.roster)]
    c.reader.heard_digest(stale)
    assert c.reader.known_down("peer", "p1") and [p["node"] for p in c.reader.down_view()] == ["peer"]


def test_a_goodbye_and_a_cut_arrive_through_the_relay() -> None:
    c = Relayed()
    c.run(1.0)
    c.relay.heard(Heartbeat("peer", "p1", [], False, {"me": ("inc1", 1)}))  # the peer cut us off
    c.reader.heard_digest(Digest.parse(c.relay.digest()))
    c.reader.heard_digest(Digest.parse(c.relay.digest()))
    assert c.downs == [("peer", "p1", "node peer declared this node down")]
    c.run(1.0)  # told once
    c.relay.heard(Heartbeat("peer", "p1", [], True))
    c.run(0.5, beating=("me", "r1"))
    assert c.downs[1:] == [("peer", "p1", "left the cluster")] and c.reader.known_down("peer", "p1")


def test_an_unchanged_roster_travels_as_its_id_and_two_bytes_a_node() -> None:
    """Ages only, once the reader has the roster whole; a reader without it (it missed the
    whole one) takes no news from the ages until the next whole one."""
    c = Relayed()
    c.run(0.2)  # the relay hears itself: it relays only beats heard since (test_membership_probe.py)
    for i in range(200):
        c.relay.heard(Heartbeat(f"node{i:03}", "p1", ["app:host"], False))
    c.run(1.0)
    compact = c.relay.digest()
    digest = Digest.parse(compact)
    assert digest.roster is None and len(compact) < 3 * 203 + 150  # not ~30 bytes a node
    assert len(c.reader.live()) == 202 and c.reader.peers["node007"].hosts == ["app:host"]
    late = c.membership("late")
    late.reading_digests = True
    late.heard_digest(digest)
    assert late.peers == {}
    for _ in range(10):  # the roster comes whole at least every ten digests
        late.heard_digest(Digest.parse(c.relay.digest()))
    assert len(late.live()) == 203  # the 200, r1, me and peer


def test_a_reader_the_relay_cannot_hear_judges_no_one() -> None:
    """Our own entry in a digest is our echo: a relay that does not hear us (so names us
    ever older) leaves us deaf, and a peer silent meanwhile is not judged by us."""
    c = Relayed()
    c.run(1.0)
    c.deaf_relay = True
    c.run(WINDOW * 2, beating=("r1",))
    assert not c.reader.hearing() and not c.reader.known_down("peer", "p1")
    # r1 judged us down meanwhile (we were silent to it): that much reaches us, as a cut.
    assert c.downs == [("r1", "inc1", "node r1 declared this node down")]


# ---------------------------------------------------------------- real connections

async def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.05)  # no event to await: roles are decided each interval
    raise AssertionError(f"not within 15 s: {what}")


@contextlib.asynccontextmanager
async def member(url: str, prefix: str, node: str, downs: asyncio.Queue[tuple[str, str]]) -> AsyncIterator[Membership]:
    nats = await connect(ConnectOptions(servers=[url], name=f"{prefix}-{node}"))
    outbox = Outbox(nats)
    m = Membership(nats, outbox, Subjects(prefix), node, "inc1", [], interval=0.2, down_after=2.0,
                   on_down=lambda peer, incarnation, reason: downs.put_nowait((node, peer)),
                   relays=1, mesh_up_to=2)
    tasks = [asyncio.create_task(outbox.run())]
    await m.start()
    tasks.append(asyncio.create_task(m.run()))
    try:
        yield m
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nats.close()  # no goodbye: to the others, this node died


prefixes = itertools.count()


async def test_readers_subscribe_to_digests_only_and_still_see_a_node_die(nats_server: ServerProcess) -> None:
    prefix = f"relays{next(prefixes)}x{id(nats_server) % 1000}"
    downs: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(member(nats_server.address, prefix, name, downs))
                 for name in ("a", "b", "c")]
        async with member(nats_server.address, prefix, "d", downs) as d:
            everyone = [*nodes, d]
            await wait_for(lambda: all(len(m.live()) == 3 for m in everyone), "every node knows every other")
            await wait_for(lambda: all(m.reading_digests for m in everyone[1:]), "b, c and d read digests")
            assert nodes[0].relaying and not nodes[0].reading_digests  # "a" sorts first
            for m in everyone:
                await m.nats.flush()  # the server has had every UNSUB
            connz = monitor_json(nats_server, "connz?subs=1&limit=1000")
            subs = {c.get("name"): c.get("subscriptions_list", []) for c in connz["connections"]}
            assert f"{prefix}.node.*.hb" in subs[f"{prefix}-a"]
            for name in "bcd":
                assert subs[f"{prefix}-{name}"] == [f"{prefix}.node.*.dg"], subs[f"{prefix}-{name}"]
        # d died without a goodbye: every other node, readers too, says so after the window.
        seen = {await asyncio.wait_for(downs.get(), 30) for _ in range(3)}
        assert seen == {("a", "d"), ("b", "d"), ("c", "d")}
        assert all(m.known_down("d", "inc1") for m in nodes) and downs.empty()


async def test_when_the_relay_dies_the_others_hear_every_beat_then_the_next_relays(
        nats_server: ServerProcess) -> None:
    """The only relay dies: its readers find themselves in no digest, hear every heartbeat
    again, report it down, and the next lowest-named node relays for the rest."""
    prefix = f"relays{next(prefixes)}y{id(nats_server) % 1000}"
    downs: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    async with contextlib.AsyncExitStack() as stack:
        async with member(nats_server.address, prefix, "a", downs) as a:
            nodes = [await stack.enter_async_context(member(nats_server.address, prefix, name, downs))
                     for name in ("b", "c", "d")]
            await wait_for(lambda: a.relaying and all(m.reading_digests for m in nodes), "a relays, b-d read")
        seen = {await asyncio.wait_for(downs.get(), 30) for _ in range(3)}
        assert seen == {("b", "a"), ("c", "a"), ("d", "a")}
        b, c, d = nodes
        await wait_for(lambda: b.relaying and c.reading_digests and d.reading_digests, "b relays, c and d read")
        assert not b.reading_digests and downs.empty()
