"""broker.Client: nats-py's client with pre-encoded and cached header blocks, against a
real nats-server. What goes on the wire and what a receiver sees must be exactly what
plain nats-py gives. Each test runs with the fast paths on (unless this process has them
off: MOONWIRE_FAST_PATHS=0) and off."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncio
import logging

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from moonwire.broker import (FAST_PATH, MSGPACK_HEADERS, Client, ConnectOptions, Envelope, Headers, Outbox, TOPIC_HEADER, connect)
from moonwire.broker._nats_internals import missing
from moonwire.node import ServerProcess


@pytest.fixture(params=[
    pytest.param(True, id="fast", marks=pytest.mark.skipif(not FAST_PATH, reason="fast paths off in this process")),
    pytest.param(False, id="public"),
])
async def client(nats_server: ServerProcess, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    if request.param:
        nc = await connect(ConnectOptions(servers=[nats_server.address]))
        assert isinstance(nc, Client) and nc.fast_paths
    else:
        nc = Client(fast_paths=False)
        await nc.connect(servers=[nats_server.address])
    try:
        yield nc
    finally:
        await nc.close()


def record_commands(client: Client) -> list[bytes]:
    """What nats-py's publish queues for the wire from now on, command by command."""
    sent: list[bytes] = []
    send_command = client._send_command

    async def record(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))
        await send_command(cmd, priority)

    client._send_command = record  # type: ignore[method-assign]
    return sent


def test_the_installed_nats_py_has_what_the_fast_path_hooks() -> None:
    # When this fails after a nats-py upgrade, moonwire still works, at nats-py's speed:
    # read broker/_client.py against the new nats-py before changing anything.
    assert missing() == []


async def test_pre_encoded_headers_go_on_the_wire_as_nats_py_encodes_them(client: Client) -> None:
    sent = record_commands(client)
    fields = {"Content-Type": "application/msgpack", "Mw-Topic": " status ", "Mw-From": "{a@b|c}"}
    await client.publish("t.wire", b"body", reply="t.reply", headers=dict(fields))  # nats-py encodes
    await client.publish("t.wire", b"body", reply="t.reply", headers=Headers(fields))  # pre-encoded
    assert len(sent) == 2 and sent[0] == sent[1]
    assert MSGPACK_HEADERS.block == b"NATS/1.0\r\nContent-Type: application/msgpack\r\n\r\n"


async def test_receivers_see_the_same_headers_every_time_and_may_change_them(
    client: Client, nats_server: ServerProcess
) -> None:
    plain = NatsClient()
    await plain.connect(nats_server.address)
    try:
        subscription = await client.subscribe("t.recv")
        await client.flush()
        for _ in range(3):  # the same block, parsed once and then served from the cache
            await plain.publish("t.recv", b"x", headers={"Content-Type": "application/msgpack", "K": "v"})
        await plain.publish("t.recv", b"y", headers={"K": "other"})
        await plain.publish("t.recv", b"z")
        received = [await subscription.next_msg(timeout=5) for _ in range(5)]
    finally:
        await plain.close()
    first = received[0].headers
    assert first == {"Content-Type": "application/msgpack", "K": "v"}
    first["K"] = "changed by a receiver"
    assert received[1].headers == received[2].headers == {"Content-Type": "application/msgpack", "K": "v"}
    assert received[3].headers == {"K": "other"}
    assert received[4].headers is None
    assert len(client._parsed_blocks) == (2 if client.fast_paths else 0)  # each block was parsed once


async def test_status_replies_still_read_as_nats_py_reads_them(client: Client, nats_server: ServerProcess) -> None:
    plain = NatsClient()
    await plain.connect(nats_server.address)
    try:
        statuses = []
        for nc in (plain, client, client):  # the second time, ours comes from the cache
            inbox = nc.new_inbox()
            subscription = await nc.subscribe(inbox)
            await nc.publish("t.nobody.home", b"", reply=inbox)
            statuses.append((await subscription.next_msg(timeout=5)).headers)
    finally:
        await plain.close()
    assert statuses[0] is not None and statuses[0]["Status"] == "503"
    assert statuses[1] == statuses[0] and statuses[2] == statuses[0]


def test_headers_are_read_only_and_checked() -> None:
    headers = Headers({"Content-Type": "application/msgpack"})
    with pytest.raises(TypeError):
        headers["Mw-Topic"] = "x"
    with pytest.raises(TypeError):
        headers.update({"Mw-Topic": "x"})
    assert headers == {"Content-Type": "application/msgpack"}
    with pytest.raises(ValueError, match="bad header name"):
        Headers({"Bad Name": "x"})
    with pytest.raises(ValueError, match="line break"):
        Headers({"Mw-Topic": "a\r\nPUB injected 0"})


async def test_try_publish_puts_on_the_wire_what_publish_would(client: Client) -> None:
    if not client.fast_paths:
        pytest.skip("without the fast paths try_publish takes nothing (test_broker_fast_paths.py)")
    sent = record_commands(client)
    subscription = await client.subscribe("t.now")
    await client.flush()
    sent.clear()
    for headers in (None, MSGPACK_HEADERS):
        await client.publish("t.now", b"body", reply="t.reply", headers=headers)
    pending = len(client._pending)
    assert client.try_publish("t.now", b"body", "t.reply", None)
    assert client.try_publish("t.now", b"body", "t.reply", MSGPACK_HEADERS)
    assert client._pending[pending:] == sent  # byte for byte what publish queued
    received = [await subscription.next_msg(timeout=5) for _ in range(4)]
    assert [(m.data, m.reply, m.headers) for m in received[2:]] == [(m.data, m.reply, m.headers) for m in received[:2]]


async def test_try_publish_leaves_to_publish_what_only_publish_can_take(client: Client) -> None:
    assert not client.try_publish("t.bad subject", b"x")  # publish raises BadSubjectError
    assert not client.try_publish("t.ok", b"x", "t.bad\r\nreply")
    assert not client.try_publish("t.ok", b"x", "", {"Content-Type": "text/plain"})  # nats-py encodes these
    assert not client.try_publish("t.ok", b"x" * (client.max_payload + 1))  # MaxPayloadError
    assert client.stats["out_msgs"] == 0 and not client._pending
    await client.close()
    assert not client.try_publish("t.ok", b"x")


async def test_the_outbox_keeps_order_when_messages_wait_in_its_queue(client: Client) -> None:
    outbox = Outbox(client)
    subscription = await client.subscribe("t.order")
    await client.flush()
    outbox.publish_nowait("t.order", b"1")  # straight onto the connection
    outbox.send_nowait("t.order", Envelope(topic="t", sender="{n@a|b}", payloads=b"\x91\x02"))  # queued
    outbox.publish_nowait("t.order", b"3")  # must wait behind it
    drain = asyncio.create_task(outbox.run())
    try:
        received = [await subscription.next_msg(timeout=5) for _ in range(3)]
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    assert [m.data for m in received] == [b"1", b"\x91\x02", b"3"]
    assert received[1].headers is not None and received[1].headers[TOPIC_HEADER] == "t"


async def test_direct_subscriptions_deliver_in_order_past_a_failing_handler(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Msg] = []
    enough = asyncio.Event()

    callers: list[asyncio.Task[object] | None] = []

    def handle(msg: Msg) -> None:
        callers.append(asyncio.current_task())
        if msg.data == b"boom":
            raise ValueError("handler bug")
        got.append(msg)
        if len(got) == 3:
            enough.set()

    subscription = await client.subscribe_direct("t.direct", handle, queue="q")
    await client.flush()
    with caplog.at_level(logging.ERROR, logger="moonwire.broker"):
        for body in (b"a", b"boom", b"b"):
            await client.publish("t.direct", body, headers=MSGPACK_HEADERS)
        await client.publish("t.direct", b"c")
        await asyncio.wait_for(enough.wait(), 5)
    assert [m.data for m in got] == [b"a", b"b", b"c"]
    # Straight from the connection's read loop, not from the subscription's own task
    # (which is how messages come without the fast paths).
    assert callers and all((task is client._reading_task) == client.fast_paths for task in callers)
    assert got[0].headers == {"Content-Type": "application/msgpack"} and got[2].headers is None
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records)
    got[0].headers["K"] = "a receiver may change its copy"
    assert got[1].headers == {"Content-Type": "application/msgpack"}
    # Unsubscribed: nothing more arrives. A message that would arrive comes before one
    # published after it on the same connection.
    await subscription.unsubscribe()
    after = await client.subscribe("t.after")
    await client.flush()
    await client.publish("t.direct", b"late")
    await client.publish("t.after", b"")
    await after.next_msg(timeout=5)
    assert [m.data for m in got] == [b"a", b"b", b"c"]
