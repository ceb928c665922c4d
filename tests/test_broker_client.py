"""broker.Client: nats-py's client with pre-encoded and cached header blocks, against a
real nats-server. What goes on the wire and what a receiver sees must be exactly what
plain nats-py gives."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from broker import FAST_PATH, MSGPACK_HEADERS, Client, ConnectOptions, Headers, connect
from node import ServerProcess


@pytest.fixture
async def client(nats_server: ServerProcess) -> AsyncIterator[Client]:
    nc = await connect(ConnectOptions(servers=[nats_server.address]))
    assert isinstance(nc, Client)
    try:
        yield nc
    finally:
        await nc.close()


def test_the_installed_nats_py_has_what_the_fast_path_hooks() -> None:
    # When this fails after a nats-py upgrade, moonwire still works, at nats-py's speed:
    # read broker/_client.py against the new nats-py before changing anything.
    assert FAST_PATH


async def test_pre_encoded_headers_go_on_the_wire_as_nats_py_encodes_them(client: Client) -> None:
    sent: list[bytes] = []
    send_command = client._send_command

    async def record(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))
        await send_command(cmd, priority)

    client._send_command = record  # type: ignore[method-assign]
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
