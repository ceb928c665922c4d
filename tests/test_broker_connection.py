"""broker.connect: fail fast at start, reconnect for ever once connected."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from moonwire.broker import BrokerUnavailable, ConnectOptions, connect
from moonwire.node import free_port, start_nats
from support import wait_until


async def test_first_connect_fails_fast_naming_the_urls() -> None:
    urls = [f"nats://127.0.0.1:{free_port()}", f"nats://127.0.0.1:{free_port()}"]
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        await connect(ConnectOptions(servers=urls))
    assert time.monotonic() - started < 10
    assert str(caught.value).startswith(f"cannot connect to NATS at {urls[0]}, {urls[1]}")


async def test_reconnects_through_an_outage_longer_than_the_first_connect_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="moonwire.broker")
    port = free_port()
    server = await start_nats(tmp_path / "a", port=port)
    client = await connect(ConnectOptions(servers=[server.address]))
    try:
        await server.stop()

        def failed_attempts() -> int:
            return sum(1 for r in caplog.records if r.getMessage().startswith("NATS error"))

        # The first connect allows one retry per server; three failures show the limit is lifted.
        await wait_until(lambda: failed_attempts() >= 3, 15, "three failed reconnect attempts")
        server = await start_nats(tmp_path / "b", port=port)
        await wait_until(lambda: client.is_connected, 15, "the client to reconnect")
        sub = await client.subscribe("after.outage")
        await client.publish("after.outage", b"still here")
        assert (await sub.next_msg(timeout=5)).data == b"still here"
    finally:
        await client.close()
        await server.stop()
