"""broker's fast paths can be turned off, and are when nats-py lacks what they hook: the
import-time check of nats-py's private names, the MOONWIRE_FAST_PATHS switch, and
publishing, direct subscriptions and requests on nats-py's public paths against a
real nats-server."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.protocol.parser import Parser

from moonwire.broker import (FAST_PATH, MSGPACK_HEADERS, Client, Envelope, NoResponders, Outbox, Requests,
                             RequestTimeout)
from moonwire.broker import _nats_internals
from moonwire.node import ServerProcess


@pytest.fixture
async def public(nats_server: ServerProcess) -> AsyncIterator[Client]:
    """A client on nats-py's public paths only."""
    nc = Client(fast_paths=False)
    await nc.connect(servers=[nats_server.address])
    try:
        yield nc
    finally:
        await nc.close()


# The import-time check.

def test_the_check_names_a_missing_private_method(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delattr(NatsClient, "_build_message")
    with caplog.at_level(logging.WARNING, logger="moonwire.broker"):
        assert _nats_internals.missing() == ["Client._build_message"]
        assert not _nats_internals.decide({})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Client._build_message" in warnings[0].getMessage()


def test_the_check_names_private_names_of_another_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    async def process_msg(self: NatsClient, sid: int, subject: bytes, reply: bytes, data: bytes) -> None: ...

    def parse(self: Parser, data: bytes = b"") -> None: ...  # no longer a coroutine

    monkeypatch.setattr(NatsClient, "_process_msg", process_msg)
    monkeypatch.setattr(Parser, "parse", parse)
    monkeypatch.delattr("nats.aio.client._validate_subject")
    assert _nats_internals.missing() == ["Client._process_msg", "nats.aio.client._validate_subject", "Parser.parse"]


def test_the_check_names_a_changed_attribute_of_a_fresh_client(monkeypatch: pytest.MonkeyPatch) -> None:
    init = NatsClient.__init__

    def renamed(self: NatsClient) -> None:
        init(self)
        self._pending_buffer = self.__dict__.pop("_pending")

    monkeypatch.setattr(NatsClient, "__init__", renamed)
    assert _nats_internals.missing() == ["Client._pending"]


def test_the_switch_reads_the_environment(caplog: pytest.LogCaptureFixture) -> None:
    env = _nats_internals.ENV
    for value in ("0", "false", "No", " off "):
        assert not _nats_internals.wanted({env: value})
    for value in ("1", "true", "yes", "on", ""):
        assert _nats_internals.wanted({env: value})
    assert _nats_internals.wanted({})
    with caplog.at_level(logging.WARNING, logger="moonwire.broker"):
        assert _nats_internals.wanted({env: "sometimes"})
    assert env in caplog.text
    assert not _nats_internals.decide({env: "0"})  # whatever nats-py has


# The switch is honoured.

def test_this_process_uses_the_paths_its_environment_asks_for() -> None:
    assert FAST_PATH == (_nats_internals.wanted() and not _nats_internals.missing())
    client = Client()
    assert client.fast_paths == FAST_PATH
    assert (type(client._ps) is Parser) != FAST_PATH  # nats-py's own parser exactly when off


def probe(env: str | None, before: str = "") -> tuple[str, str]:
    """What a fresh interpreter reports about its Client (stdout, stderr)."""
    environ = dict(os.environ)
    environ.pop(_nats_internals.ENV, None)
    if env is not None:
        environ[_nats_internals.ENV] = env
    script = before + (
        "import moonwire.broker as b\n"
        "c = b.Client()\n"
        "print(b.FAST_PATH, c.fast_paths, type(c._ps).__module__, 'try_publish' in vars(b.Client),"
        " '_process_msg' in vars(b.Client))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip(), done.stderr


def test_the_switch_turns_off_every_hook_in_a_new_process() -> None:
    # try_publish stays (it returns False); no override of nats-py's methods remains.
    assert probe("0") == ("False False nats.protocol.parser True False", "")
    if not _nats_internals.missing():
        assert probe(None) == ("True True moonwire.broker._parser True True", "")
        assert probe("1") == ("True True moonwire.broker._parser True True", "")


def test_a_nats_py_without_a_private_name_turns_them_off_with_one_warning() -> None:
    out, err = probe(None, "import nats.aio.client\ndel nats.aio.client.Client._build_message\n")
    assert out == "False False nats.protocol.parser True False"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Client._build_message" in lines[0] and "fast paths" in lines[0], err


async def test_fast_paths_cannot_be_asked_for_when_the_process_has_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moonwire.broker._client.FAST_PATH", False)
    with pytest.raises(ValueError, match="off in this process"):
        Client(fast_paths=True)


# Publish, subscribe_direct and requests on the public paths.

async def test_public_paths_publish_pre_encoded_headers_as_nats_py_encodes_them(public: Client) -> None:
    subscription = await public.subscribe("t.pub")
    await public.flush()
    await public.publish("t.pub", b"a", reply="t.r", headers=MSGPACK_HEADERS)
    await public.publish("t.pub", b"b", headers=dict(MSGPACK_HEADERS))
    received = [await subscription.next_msg(timeout=5) for _ in range(2)]
    assert [(m.data, m.reply, m.headers) for m in received] == [
        (b"a", "t.r", dict(MSGPACK_HEADERS)), (b"b", "", dict(MSGPACK_HEADERS))]
    assert not public.try_publish("t.pub", b"c")  # takes nothing: callers publish
    assert type(public._ps) is Parser and not public._parsed_blocks


async def test_public_paths_deliver_direct_subscriptions_in_order_past_a_failing_handler(
    public: Client, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    def handle(msg: Msg) -> None:  # a plain callback, as on the fast path
        if msg.data == b"boom":
            raise ValueError("handler bug")
        got.append(msg.data)
        if msg.data == b"99":
            done.set()

    subscription = await public.subscribe_direct("t.direct", handle)
    await public.flush()
    with caplog.at_level(logging.ERROR, logger="moonwire.broker"):
        await public.publish("t.direct", b"boom")
        for i in range(100):
            await public.publish("t.direct", b"%d" % i, headers=MSGPACK_HEADERS if i % 2 else None)
        await asyncio.wait_for(done.wait(), 5)
    assert got == [b"%d" % i for i in range(100)]
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records)
    await subscription.unsubscribe()
    await public.publish("t.direct", b"late")
    await public.flush()
    await asyncio.sleep(0.05)  # nothing to wait for: the message must not come
    assert got[-1] == b"99"


async def test_public_paths_take_read_turns_from_direct_subscriptions(public: Client) -> None:
    handled: list[str] = []
    public.read_turn = 0.0  # a turn after every message

    async def after_read() -> None:
        handled.append("turn")
        await asyncio.sleep(0)

    public.after_read = after_read
    await public.subscribe_direct("t.turns", lambda msg: handled.append(msg.data.decode()))
    await public.flush()
    for body in (b"a", b"b"):
        await public.publish("t.turns", body)
    await public.flush()
    for _ in range(100):
        if len(handled) == 4:
            break
        await asyncio.sleep(0.01)
    assert handled == ["a", "turn", "b", "turn"]


async def test_public_paths_serve_requests_and_the_outbox_in_order(public: Client) -> None:
    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    async def ignore(msg: Msg) -> None:
        pass

    await public.subscribe("t.echo", cb=echo)
    await public.subscribe("t.silent", cb=ignore)
    order = await public.subscribe("t.order")
    outbox = Outbox(public)
    drain = asyncio.create_task(outbox.run())
    requests = Requests(public, outbox)
    await requests.start()
    try:
        await public.flush()
        results: dict[str, Msg | Exception] = {}
        settled = asyncio.Event()

        def callback(name: str):  # type: ignore[no-untyped-def]
            def settle(result: Msg | Exception) -> None:
                results[name] = result
                if len(results) == 3:
                    settled.set()
            return settle

        requests.request_nowait("t.echo", b"hi", timeout=5, callback=callback("echo"))
        requests.request_nowait("t.nobody", b"", timeout=5, callback=callback("nobody"))
        requests.request_nowait("t.silent", b"", timeout=0.2, callback=callback("silent"))
        await asyncio.wait_for(settled.wait(), 10)
        echoed = results["echo"]
        assert isinstance(echoed, Msg) and echoed.data == b"hi"
        assert isinstance(results["nobody"], NoResponders)
        assert isinstance(results["silent"], RequestTimeout)

        outbox.publish_nowait("t.order", b"1")
        outbox.send_nowait("t.order", Envelope(topic="t", sender="{n@a|b}", payloads=b"\x91\x02"))
        outbox.publish_nowait("t.order", b"3")
        received = [await order.next_msg(timeout=5) for _ in range(3)]
        assert [m.data for m in received] == [b"1", b"\x91\x02", b"3"]
    finally:
        await requests.stop()
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
