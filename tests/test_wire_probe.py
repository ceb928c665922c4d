"""Fault probes of the wire (``broker/_client.py``, ``broker/_requests.py``) against a
real nats-server, with the fast paths on (unless this process has them off) and off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.errors import MaxPayloadError

from moonwire.broker import MSGPACK_HEADERS, Client, Outbox

from test_broker_client import client  # noqa: F401 - the fixture: a client with the fast paths on, and off


@pytest.fixture
async def outbox(client: Client) -> AsyncIterator[Outbox]:  # noqa: F811 - the fixture above
    outbox = Outbox(client)
    drain = asyncio.create_task(outbox.run())
    try:
        yield outbox
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)


async def test_a_payload_that_fits_only_without_its_headers_is_refused_not_sent(
    client: Client, outbox: Outbox  # noqa: F811
) -> None:
    """The server counts headers and payload against max_payload, and closes the
    connection on a message over it, losing what follows; nats-py counts the payload
    only. Such a message is refused (MaxPayloadError) and the connection lives on."""
    subscription = await client.subscribe("t.after")
    await client.flush()
    too_big = b"x" * (client.max_payload - 8)
    assert client.try_publish("t.big", too_big, headers=MSGPACK_HEADERS) is False
    with pytest.raises(MaxPayloadError):
        await client.publish("t.big", too_big, headers={"Content-Type": "application/msgpack"})
    outbox.publish_nowait("t.big", too_big, headers=MSGPACK_HEADERS)  # logged, dropped
    outbox.publish_nowait("t.after", b"next", headers=MSGPACK_HEADERS)
    msg = await subscription.next_msg(timeout=10)
    assert msg.data == b"next"
    assert client.is_connected and client.stats["reconnects"] == 0
