"""broker.Requests against a real nats-server: each request settles exactly once, with
its reply, no-responders, its own timeout, or not at all once abandoned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from moonwire.broker import ConnectOptions, NoResponders, Outbox, Requests, RequestTimeout, connect
from moonwire.node import ServerProcess


@pytest.fixture
async def requests(nats_server: ServerProcess) -> AsyncIterator[tuple[NatsClient, Requests]]:
    nc = await connect(ConnectOptions(servers=[nats_server.address]))  # the node's own client
    outbox = Outbox(nc)
    drain = asyncio.create_task(outbox.run())
    requests = Requests(nc, outbox)
    await requests.start()
    try:
        yield nc, requests
    finally:
        await requests.stop()
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        await nc.close()


async def echo(msg: Msg) -> None:
    await msg.respond(msg.data)


async def ignore(msg: Msg) -> None:
    """A responder that never answers."""


class Settled:
    """Collects what each request settled with, in order, and lets a test await them."""

    def __init__(self) -> None:
        self.results: list[tuple[str, Msg | Exception]] = []
        self._changed = asyncio.Event()

    def callback(self, name: str):  # type: ignore[no-untyped-def]
        def settle(result: Msg | Exception) -> None:
            self.results.append((name, result))
            self._changed.set()
        return settle

    async def count(self, n: int) -> None:
        while len(self.results) < n:
            await asyncio.wait_for(self._changed.wait(), 10)
            self._changed.clear()


async def test_replies_no_responders_and_timeouts_each_settle_once(requests: tuple[NatsClient, Requests]) -> None:
    nc, req = requests
    await nc.subscribe("t.echo", cb=echo)
    await nc.subscribe("t.silent", cb=ignore)
    await nc.flush()
    settled = Settled()
    # The long timeout goes first: the shorter one issued after it must still fire first.
    req.request_nowait("t.silent", b"", timeout=30, callback=settled.callback("long"))
    req.request_nowait("t.silent", b"", timeout=0.3, callback=settled.callback("short"))
    req.request_nowait("t.echo", b"hi", timeout=0.3, callback=settled.callback("echo"))
    req.request_nowait("t.nobody", b"", timeout=30, callback=settled.callback("nobody"))
    await settled.count(3)
    by_name = dict(settled.results)
    assert isinstance(by_name["echo"], Msg) and by_name["echo"].data == b"hi"
    assert isinstance(by_name["nobody"], NoResponders)
    assert isinstance(by_name["short"], RequestTimeout)
    assert settled.results[-1][0] == "short"  # after the answers that came at once
    assert "long" not in by_name  # still waiting: its own timeout is far off

    await req.stop()  # stopping settles what is left, with CancelledError
    assert len(settled.results) == 4
    assert isinstance(dict(settled.results)["long"], asyncio.CancelledError)


async def test_an_answered_request_never_times_out_and_an_abandoned_one_never_settles(
    requests: tuple[NatsClient, Requests]
) -> None:
    nc, req = requests
    await nc.subscribe("t.echo", cb=echo)
    await nc.subscribe("t.silent", cb=ignore)
    await nc.flush()
    settled = Settled()
    for i in range(500):  # many answered requests: their deadlines must not fire later
        req.request_nowait("t.echo", str(i).encode(), timeout=0.2, callback=settled.callback(f"echo{i}"))
    abandon = req.request_nowait("t.echo", b"abandoned", timeout=0.2, callback=settled.callback("abandoned"))
    abandon()
    await settled.count(500)
    assert all(isinstance(result, Msg) for _, result in settled.results)
    # Every deadline above passes while this one runs out: only it times out, and the
    # abandoned request stays silent.
    req.request_nowait("t.silent", b"", timeout=0.5, callback=settled.callback("late"))
    await settled.count(501)
    assert [name for name, _ in settled.results[500:]] == ["late"]
    assert isinstance(settled.results[500][1], RequestTimeout)
