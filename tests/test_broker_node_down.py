"""broker.Requests learns which node holds a request and fails it when that node goes
down (issue item 9), against a real nats-server: a notice (``Mw-Taken``) claims a
request to a queue group, a request addressed to a node is held by it, abandoning a
claimed request tells its node, and a probe of the live nodes finds a request that no
node claimed. The node's liveness is a stand-in here: membership is tested on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

import moonwire.broker._requests as requests_module
from moonwire.broker import (CALLER, TAKEN, ConnectOptions, Headers, NodeDown, Outbox, Requests, RequestTimeout,
                             connect)
from moonwire.node import ServerProcess


class Liveness:
    """What Requests asks of membership, as plain data."""

    def __init__(self, live: list[str], incarnations: dict[str, str]) -> None:
        self.live_nodes, self.incarnations, self.expected = live, incarnations, []

    def expect(self, node: str, incarnation: str) -> None:
        self.expected.append((node, incarnation))

    def incarnation_of(self, node: str) -> str | None:
        return self.incarnations.get(node)

    def live(self) -> list[str]:
        return self.live_nodes


@pytest.fixture
async def wired(nats_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[tuple[NatsClient, Requests, Liveness, list[tuple[str, str]]]]:
    monkeypatch.setattr(requests_module, "PROBE_AFTER", 0.05)
    monkeypatch.setattr(requests_module, "PROBE_TIMEOUT", 0.3)
    nc = await connect(ConnectOptions(servers=[nats_server.address]))
    outbox = Outbox(nc)
    drain = asyncio.create_task(outbox.run())
    requests = Requests(nc, outbox)
    await requests.start()
    requests.identify("me", "i0")
    liveness = Liveness([], {"b": "ib1"})
    requests.liveness = liveness
    abandoned: list[tuple[str, str]] = []
    requests.on_abandon = lambda node, reply: abandoned.append((node, reply))
    requests.probe = lambda peer: f"t.probe.{peer}"
    try:
        yield nc, requests, liveness, abandoned
    finally:
        await requests.stop()
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        await nc.close()


def notice_from(nc: NatsClient, who: str):  # type: ignore[no-untyped-def]
    """A responder that says ``who`` took the request (if the request names its caller) and never answers."""
    async def take(msg: Msg) -> None:
        assert msg.headers is not None and msg.headers[CALLER] == "me.i0"
        await nc.publish(msg.reply, b"", headers=Headers({TAKEN: who}))
    return take


async def ignore(msg: Msg) -> None:
    """The request is lost: nobody reads it, nobody says so."""


class Results:
    def __init__(self) -> None:
        self.got: dict[str, Msg | Exception] = {}
        self.changed = asyncio.Event()

    def to(self, name: str):  # type: ignore[no-untyped-def]
        def settle(result: Msg | Exception) -> None:
            assert name not in self.got, f"{name} settled twice"
            self.got[name] = result
            self.changed.set()
        return settle

    async def wait(self, *names: str) -> None:
        while not all(n in self.got for n in names):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


async def test_a_noticed_request_fails_when_its_node_goes_down(wired) -> None:
    nc, req, liveness, _ = wired
    await nc.subscribe("t.took.a", cb=notice_from(nc, "a.ia1"))
    await nc.subscribe("t.took.a2", cb=notice_from(nc, "a.ia1"))
    await nc.flush()
    results = Results()
    req.request_nowait("t.took.a", b"", timeout=30, callback=results.to("a"), headers=req.headers)
    req.request_nowait("t.took.a2", b"", timeout=30, callback=results.to("a2"), headers=req.headers)
    await wait_for(lambda: liveness.expected == [("a", "ia1")] * 2)  # a node never heard is watched from now on
    req.node_down("a", "ia0", "an older incarnation")  # not the one that took them
    req.node_down("a", "ia1", "no heartbeat for 2.6s")
    await results.wait("a", "a2")
    for name in ("a", "a2"):
        error = results.got[name]
        assert isinstance(error, NodeDown) and (error.node, error.reason) == ("a", "no heartbeat for 2.6s")


async def test_a_request_addressed_to_a_node_fails_when_that_incarnation_goes_down(wired) -> None:
    nc, req, _, _ = wired
    await nc.subscribe("t.silent", cb=ignore)
    await nc.flush()
    results = Results()
    req.request_nowait("t.silent", b"", timeout=30, callback=results.to("b"), node="b")
    req.request_nowait("t.silent", b"", timeout=30, callback=results.to("c"), node="c")  # unknown: any incarnation
    req.node_down("b", "ib0", "an incarnation before the one it was sent to")
    req.node_down("c", "ic7", "left the cluster")
    await results.wait("c")
    assert "b" not in results.got
    req.node_down("b", "ib1", "no heartbeat")
    await results.wait("b")
    assert isinstance(results.got["b"], NodeDown) and isinstance(results.got["c"], NodeDown)


async def test_giving_up_a_claimed_request_tells_the_node_that_took_it(wired) -> None:
    nc, req, liveness, abandoned = wired
    await nc.subscribe("t.took.x", cb=notice_from(nc, "x.ix1"))
    await nc.subscribe("t.silent", cb=ignore)
    await nc.flush()
    results = Results()
    give_up = req.request_nowait("t.took.x", b"", timeout=30, callback=results.to("abandoned"), headers=req.headers)
    req.request_nowait("t.took.x", b"", timeout=0.5, callback=results.to("timed out"), headers=req.headers)
    unclaimed = req.request_nowait("t.silent", b"", timeout=30, callback=results.to("unclaimed"))
    await wait_for(lambda: len(liveness.expected) == 2)
    give_up()
    unclaimed()
    await results.wait("timed out")
    assert isinstance(results.got["timed out"], RequestTimeout) and set(results.got) == {"timed out"}
    assert [node for node, _ in abandoned] == ["x", "x"]  # not for the request nobody claimed
    assert all(reply.startswith(req._prefix + ".") for _, reply in abandoned)


@pytest.mark.parametrize("peer", ["none", "answers", "silent"])
async def test_a_request_no_node_claimed_is_failed_by_a_probe_of_the_live_nodes(wired, peer: str) -> None:
    """``none``: no other node alive; ``answers``: a live node answers the probe, so
    anything it took it would have claimed first; ``silent``: a live node does not answer,
    and nothing can be concluded."""
    nc, req, liveness, _ = wired
    await nc.subscribe("t.lost", cb=ignore)
    await nc.subscribe("t.took.y", cb=notice_from(nc, "y.iy1"))
    probed = asyncio.Event()

    async def on_probe(msg: Msg) -> None:
        probed.set()
        if peer == "answers":
            await msg.respond(b"{}")

    if peer != "none":
        liveness.live_nodes = ["dead", "p"]  # the node going down is never asked
        await nc.subscribe("t.probe.p", cb=on_probe)
    await nc.flush()
    results = Results()
    req.request_nowait("t.lost", b"", timeout=30, callback=results.to("lost"), headers=req.headers)
    req.request_nowait("t.took.y", b"", timeout=30, callback=results.to("taken"), headers=req.headers)
    await wait_for(lambda: liveness.expected == [("y", "iy1")])
    req.node_down("dead", "id1", "no heartbeat for 2.6s")
    if peer == "silent":
        await asyncio.wait_for(probed.wait(), 10)
        await wait_for(lambda: len(req._pending) == 2)  # the probe timed out: only the two requests are left
        assert results.got == {}
        return
    await results.wait("lost")
    error = results.got["lost"]
    assert isinstance(error, NodeDown) and error.node == "dead"
    assert "taken" not in results.got  # claimed by a node that is alive


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")
