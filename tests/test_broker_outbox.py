"""The outbox's flush on the loop's next turn, and the header blocks of process messages
between nodes, against a real nats-server: what is queued in one turn leaves in one
batch, nothing waits for a batch to fill, order is kept across flushes, and the
per-message header blocks (a sequence number after a block that repeats) are encoded
and read as nats-py would, without being parsed or cached one by one. Each test that
can runs with the fast paths on (unless this process has them off) and off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from moonwire.broker import (BATCH_HEADER, FAST_PATH, REPLIES_HEADER, TOPIC_HEADER, Client, ConnectOptions, Envelope,
                             Headers, Outbox, Requests, Streams, batch_items, connect)
from moonwire.broker._streams import SEQ_HEADER
from moonwire.node import ServerProcess

from test_broker_client import client  # noqa: F401 - the fixture: a client with the fast paths on, and off
from test_broker_requests import Settled

SENDER = "{n@a|b}"


@pytest.fixture
async def outbox(client: Client) -> AsyncIterator[Outbox]:
    outbox = Outbox(client)
    drain = asyncio.create_task(outbox.run())
    try:
        yield outbox
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)


def envelope(n: int) -> Envelope:
    return Envelope(topic="t", sender=SENDER, payloads=b"\x91" + bytes([n]))


async def next_messages(subscription: object, count: int) -> list[Msg]:
    return [await subscription.next_msg(timeout=5) for _ in range(count)]  # type: ignore[attr-defined]


async def test_what_one_turn_queues_leaves_as_one_batch_and_a_lone_send_does_not_wait(
    client: Client, outbox: Outbox
) -> None:
    subscription = await client.subscribe("t.inbox")
    await client.flush()
    for n in range(3):  # one turn of the loop: one batch
        outbox.send_nowait("t.inbox", envelope(n))
    (batch,) = await next_messages(subscription, 1)
    assert batch.headers is not None and batch.headers[BATCH_HEADER] == "3"
    outbox.send_nowait("t.inbox", envelope(3))  # alone: delivered with nothing sent after it
    (alone,) = await next_messages(subscription, 1)
    assert alone.data == b"\x91\x03" and alone.headers is not None and BATCH_HEADER not in alone.headers


async def test_order_is_kept_across_flushes_and_between_kinds_of_message(client: Client, outbox: Outbox) -> None:
    subscription = await client.subscribe("t.inbox")
    await client.flush()
    outbox.send_nowait("t.inbox", envelope(1))
    outbox.send_nowait("t.inbox", envelope(2))
    outbox.publish_nowait("t.inbox", b"plain")  # behind the batch, before what follows
    outbox.send_nowait("t.inbox", envelope(3))
    await asyncio.sleep(0)  # the flush runs on this turn
    outbox.send_nowait("t.inbox", envelope(4))  # the next flush
    outbox.send_nowait("t.inbox", envelope(5))
    seen: list[object] = []
    while len(seen) < 6:
        got = payloads((await next_messages(subscription, 1))[0])
        seen += [got] if isinstance(got, bytes) else got
    assert seen == [[1], [2], b"plain", [3], [4], [5]]


def payloads(msg: Msg) -> list[list[int]] | bytes:
    """The payloads of each process message a NATS message carries (its body if none)."""
    headers = msg.headers or {}
    if BATCH_HEADER in headers:
        return [msgpack.unpackb(item)[2] for item in batch_items(msg.data)]
    if TOPIC_HEADER in headers:
        return [msgpack.unpackb(msg.data)]
    return msg.data


@pytest.mark.skipif(not FAST_PATH, reason="fast paths off in this process")
async def test_with_the_fast_paths_queued_messages_leave_without_the_outbox_task(nats_server: ServerProcess) -> None:
    nc = await connect(ConnectOptions(servers=[nats_server.address]))
    try:
        outbox = Outbox(nc)  # run() never started: only the flush on the next turn publishes
        subscription = await nc.subscribe("t.inbox")
        await nc.flush()
        outbox.send_nowait("t.inbox", envelope(1))
        outbox.publish_nowait("t.inbox", b"after")
        received = await next_messages(subscription, 2)
        assert [m.data for m in received] == [b"\x91\x01", b"after"]
    finally:
        await nc.close()


def test_a_header_added_to_an_encoded_block_encodes_as_a_new_block() -> None:
    base = Headers({"Content-Type": "application/msgpack", "Mw-Topic": "t"})
    stamped = base.with_header(SEQ_HEADER, " n.1.7.3 ")
    assert type(stamped) is Headers and stamped == {**base, SEQ_HEADER: " n.1.7.3 "}
    assert stamped.block == Headers({**base, SEQ_HEADER: " n.1.7.3 "}).block
    assert base.with_header("Mw-Topic", "u").block == Headers({**base, "Mw-Topic": "u"}).block  # replaced
    assert SEQ_HEADER not in base
    with pytest.raises(ValueError):
        base.with_header("Mw-Seq", "a\r\nb")
    with pytest.raises(ValueError):
        base.with_header("bad name", "x")
    with pytest.raises(TypeError):
        stamped["x"] = "y"


def test_a_stream_stamps_encoded_headers_without_encoding_them_again() -> None:
    streams: Streams[object] = Streams("n", "1", lambda *_: None, lambda node: f"ack.{node}")
    body, headers = envelope(1).alone()
    assert type(headers) is Headers  # process messages' blocks are encoded once
    stamped = streams.stamp("m", "t.inbox", body, headers)
    assert type(stamped) is Headers and stamped[SEQ_HEADER] == "n.1.1.1"
    assert stamped.block == Headers(dict(stamped)).block
    assert type(streams.after("m", headers)) is Headers


async def test_blocks_that_differ_by_their_last_line_read_as_nats_py_reads_them(
    client: Client, nats_server: ServerProcess
) -> None:
    plain = NatsClient()
    await plain.connect(nats_server.address)
    try:
        got: list[Msg] = []
        done = asyncio.Event()

        def on_message(msg: Msg) -> None:
            got.append(msg)
            if len(got) == 2000:
                done.set()

        await client.subscribe_direct("t.stamped", on_message)
        mine = await plain.subscribe("t.stamped")
        await client.flush()
        for i in range(2000):
            if i >= 1990:  # a block read from a head, repeated: cached whole
                last = {"Mw-Caller": "n.2"}
            else:
                last = {"Mw-Seq": f"n.1.{i}.1"} if i % 3 else {"Odd": f" {i}:x ", "Mw-Topic": "again"}
            await plain.publish("t.stamped", b"x", headers={"Content-Type": "application/msgpack",
                                                             "Mw-Topic": "t", **last})
        await asyncio.wait_for(done.wait(), 30)
        theirs = [await mine.next_msg(timeout=5) for _ in range(2000)]
    finally:
        await plain.close()
    assert [m.headers for m in got] == [m.headers for m in theirs]  # as plain nats-py parsed them
    if client.fast_paths:  # the head was parsed once; blocks that never repeat are not kept
        assert len(client._parsed_blocks) < 10 and len(client._parsed_heads) < 10
        assert any(b"Mw-Caller: n.2" in block for block in client._parsed_blocks)


async def test_replies_one_turn_queues_for_a_caller_leave_as_one_batch_and_settle_each_request(
    client: Client, outbox: Outbox, nats_server: ServerProcess
) -> None:
    requests = Requests(client, outbox)
    requests.identify("caller", "1")  # asks for batched replies
    await requests.start()
    tap = NatsClient()
    await tap.connect(nats_server.address)
    try:
        on_the_wire = await tap.subscribe(requests._prefix + ".*")
        taken: list[Msg] = []

        def serve(msg: Msg) -> None:  # answers once all five are here, in one turn
            taken.append(msg)
            if len(taken) == 5:
                for request in taken:
                    assert request.headers is not None and request.headers[REPLIES_HEADER] == "batch"
                    outbox.reply_nowait(request.reply, msgpack.packb({"result": request.data.decode()}))

        await client.subscribe_direct("t.fn", serve)
        await tap.flush()
        await client.flush()
        settled = Settled()
        for n in range(5):
            requests.request_nowait("t.fn", str(n).encode(), timeout=10, callback=settled.callback(str(n)),
                                    headers=requests.headers)
        await settled.count(5)
        (batch,) = await next_messages(on_the_wire, 1)
    finally:
        await requests.stop()
        await tap.close()
    assert batch.subject == requests._prefix + ".0" and batch.headers is not None
    assert batch.headers[BATCH_HEADER] == "5"
    for n, result in settled.results:
        assert isinstance(result, Msg) and msgpack.unpackb(result.data) == {"result": n}
        assert result.headers == {"Content-Type": "application/msgpack"}
