"""Fault probes of the wire (``broker/_client.py``, ``broker/_requests.py``) against a
real nats-server, with the fast paths on (unless this process has them off) and off."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgpack
import nats
import pytest
from nats.errors import MaxPayloadError

from moonwire.broker import BATCH_HEADER, FAST_PATH, MSGPACK_HEADERS, Client, Envelope, Outbox, Streams
from moonwire.broker._streams import SEQ_HEADER
from moonwire.node import ServerProcess, free_port, start_nats
from support import write_project

from test_broker_client import client  # noqa: F401 - the fixture: a client with the fast paths on, and off
from test_broker_outbox import outbox  # noqa: F401 - the fixture: an outbox on that client, drained


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
    with pytest.raises(MaxPayloadError):  # no headers is still a header block (12 bytes)
        await client.publish("t.big", too_big, headers={})
    outbox.publish_nowait("t.big", too_big, headers=MSGPACK_HEADERS)  # logged, dropped
    outbox.publish_nowait("t.after", b"next", headers=MSGPACK_HEADERS)
    msg = await subscription.next_msg(timeout=10)
    assert msg.data == b"next"
    assert client.is_connected and client.stats["reconnects"] == 0


BIG = {
    "app.yaml": """
        namespace: app
        entries:
          - {name: big, kind: function.lua, source: file://big.lua}
    """,
    "big.lua": "return function(n) return string.rep('x', n) end",
}


async def test_an_answer_too_large_for_the_server_is_an_error_the_caller_hears(
    tmp_path: Path, nats_server: ServerProcess, spawn_node
) -> None:
    """A function's result over max_payload (or under it, but not with the reply's
    headers) cannot be published: the caller gets an error saying so, not a timeout."""
    node = await spawn_node(write_project(tmp_path / "server", BIG), f"big-{time.monotonic_ns() % 10**8}",
                            nats_url=nats_server.address)
    await node.wait_for_line(r"serving 1 function\(s\)")
    nc = await nats.connect(nats_server.address)
    try:
        limit = nc.max_payload
        for n in (2 * limit, limit - 30):  # the reply body is n + 13 bytes of JSON
            reply = await nc.request("mw.fn.app:big", json.dumps([n]).encode(), timeout=20)
            error = json.loads(reply.data)["error"]
            assert error["kind"] == "Internal" and "more than the NATS server takes" in error["message"]
        body = msgpack.packb({"args": [limit], "ctx": {}})
        reply = await nc.request("mw.fn.app:big", body, timeout=20, headers={"Content-Type": "application/msgpack"})
        assert "more than the NATS server takes" in msgpack.unpackb(reply.data)["error"]["message"]
        reply = await nc.request("mw.fn.app:big", b"[3]", timeout=20)
        assert json.loads(reply.data) == {"result": "xxx"}
    finally:
        await nc.close()


@pytest.mark.parametrize("fast", [pytest.param(True, marks=pytest.mark.skipif(not FAST_PATH, reason="fast paths off")),
                                  False], ids=["fast", "public"])
async def test_a_batch_of_replies_fits_a_small_max_payload_with_its_headers(tmp_path: Path, fast: bool) -> None:
    """Replies queued in one turn for one caller leave as one batch of up to the
    server's max_payload: counting the batch's headers and framing too, or the server
    refuses it and every reply in it is lost."""
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 65536\n")
    server = await start_nats(tmp_path / "nats", port=free_port(), jetstream=False, args=["-c", str(config)])
    nc = Client(fast_paths=fast)
    try:
        await nc.connect(servers=[server.address])
        assert nc.max_payload == 65536
        outbox = Outbox(nc)
        drain = asyncio.create_task(outbox.run())
        replies = await nc.subscribe("_INBOX.caller.*")
        await nc.flush()
        for token in ("1", "2", "3"):  # 3 × 21,830 bytes: the body alone fits, not with headers
            outbox.reply_nowait(f"_INBOX.caller.{token}", b"r" * 21_830)
        got = 0
        while got < 3:
            msg = await replies.next_msg(timeout=10)
            got += int(msg.headers[BATCH_HEADER]) if msg.headers and BATCH_HEADER in msg.headers else 1
        assert nc.is_connected
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    finally:
        await nc.close()
        await server.stop()


async def test_large_replies_to_one_caller_in_one_turn_leave_alone_and_all_arrive(
    client: Client, outbox: Outbox  # noqa: F811
) -> None:
    """Two replies of 600 KB for one caller queued in one turn would make a batch over
    the server's max_payload (1 MiB): they leave one by one, and both arrive."""
    replies = await client.subscribe("_INBOX.big.*")
    await client.flush()
    outbox.reply_nowait("_INBOX.big.1", b"a" * 600_000)
    outbox.reply_nowait("_INBOX.big.2", b"b" * 600_000)
    first, second = await replies.next_msg(timeout=10), await replies.next_msg(timeout=10)
    assert (first.subject, second.subject) == ("_INBOX.big.1", "_INBOX.big.2")
    assert first.headers is not None and BATCH_HEADER not in first.headers and client.is_connected


async def test_a_process_message_too_large_to_publish_takes_no_place_in_its_stream(client: Client) -> None:  # noqa: F811
    """A process message over max_payload can never be published. Numbered in its stream
    anyway, it left a gap the receiver waits on (GIVE_UP, 10 s) before anything sent
    after it to that node, while every resend of it failed again. It is dropped (and
    logged) before it takes a number: the next message is the stream's first."""
    streams: Streams[object] = Streams("n", "1", lambda *_: None, lambda node: f"ack.{node}")
    outbox = Outbox(client, streams)
    drain = asyncio.create_task(outbox.run())
    try:
        inbox = await client.subscribe("t.stream.inbox")
        await client.flush()
        outbox.send_nowait("t.stream.inbox", Envelope("t", "", b"\x91\xc6" + b"x" * (client.max_payload + 10)), "m")
        await asyncio.sleep(0)  # the next one in a turn of its own, too
        outbox.send_nowait("t.stream.inbox", Envelope("t", "", b"\x91\x01"), "m")
        msg = await inbox.next_msg(timeout=10)
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    assert msg.data == b"\x91\x01" and msg.headers is not None and msg.headers[SEQ_HEADER] == "n.1.1.1"


SENDER = {
    "app.yaml": """
        namespace: app
        entries:
          - {name: send, kind: function.lua, source: file://send.lua}
    """,
    "send.lua": """
        return function(dest, n)
          local ok, err = process.send(dest, "t", string.rep("x", n))
          if ok then return "sent" end
          return err:kind() .. ": " .. tostring(err)
        end""",
}


async def test_a_process_message_too_large_for_the_server_is_an_error_the_sender_hears(
    tmp_path: Path, nats_server: ServerProcess, spawn_node
) -> None:
    """A message to a process on another node that no NATS message can carry is refused
    at the send, with an error saying why, rather than logged and dropped on the way."""
    node = await spawn_node(write_project(tmp_path / "server", SENDER), f"snd-{time.monotonic_ns() % 10**8}",
                            nats_url=nats_server.address)
    await node.wait_for_line(r"serving 1 function\(s\)")
    nc = await nats.connect(nats_server.address)
    try:
        far = "{elsewhere@app:host|mx4zicsz-1}"
        reply = await nc.request("mw.fn.app:send", json.dumps([far, 2 * nc.max_payload]).encode(), timeout=20)
        answer = json.loads(reply.data)["result"]
        assert answer.startswith("Invalid: ") and "more than the NATS server takes" in answer, answer
        reply = await nc.request("mw.fn.app:send", json.dumps([far, 10]).encode(), timeout=20)
        assert json.loads(reply.data) == {"result": "sent"}
    finally:
        await nc.close()
