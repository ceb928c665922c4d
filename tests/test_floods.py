"""Floods from outside starve nothing (issue 14, item 4): a flood at one process's inbox
does not stop its node's heartbeats, function calls or peers; everything in it is
delivered or dead-lettered; dead letters are logged per interval, not per message; the
workflow gateway's queue is bounded and what it cannot signal is dead-lettered.

Latency under a flood is measured by ``bench/flood.py``, not asserted here."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import sys
import time
from pathlib import Path

import nats
from nats.aio.msg import Msg

from moonwire.node import ServerProcess, free_port, start_nats
from support import wait_until, write_project

FLOOD = 200_000

FLOODED = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: sink, kind: process.lua, source: file://sink.lua, modules: [time]}
          - name: sink.service
            kind: process.service
            process: sink
            host: host
            lifecycle: {auto_start: true}
          - {name: where, kind: function.lua, source: file://where.lua}
          - {name: report, kind: function.lua, source: file://report.lua}
          - {name: ping, kind: function.lua, source: file://ping.lua}
    """,
    # Counts what arrives, slower than a flood comes (a pause per 100 messages), so its
    # mailbox fills and the rest is dead-lettered; answers "report" with the count so
    # far and starts again from 0.
    "sink.lua": """
        local time = require("time")
        return function()
          process.registry.register("sink")
          local inbox, count = process.inbox(), 0
          while true do
            local msg = inbox:receive()
            if msg:topic() == "report" then
              process.send(msg:from(), "count", count)
              count = 0
            else
              count = count + 1
              if count % 100 == 0 then time.sleep("10ms") end
            end
          end
        end""",
    "where.lua": "return function() return process.registry.lookup('sink') end",
    # Fails while the sink's mailbox is full (a send to a full mailbox is an error).
    "report.lua": """
        return function()
          local ok, err = process.send("sink", "report")
          if not ok then return nil, err end
          return process.inbox():receive():payload():data()
        end""",
    "ping.lua": "return function(x) return x end",
}

PEER = {
    "_index.yaml": """
        namespace: peer
        entries:
          - {name: noop, kind: function.lua, source: file://noop.lua}
    """,
    "noop.lua": "return function(x) return x end",
}

# An outside client: plain nats-py, in its own OS process, publishing as fast as it can.
FLOODER = """
import asyncio, sys, nats
async def main(url, subject, n):
    nc = await nats.connect(url)
    for _ in range(n):
        await nc.publish(subject, b'"x"')
    await nc.flush(timeout=120)
    await nc.close()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

NODE_DOWN = re.compile(r"node \S+ is down")


async def flood(url: str, subject: str, count: int) -> None:
    flooder = await asyncio.create_subprocess_exec(sys.executable, "-c", FLOODER, url, subject, str(count))
    assert await flooder.wait() == 0


async def test_flood_at_an_inbox_starves_nothing(tmp_path: Path, nats_server: ServerProcess, spawn_node) -> None:
    flooded = await spawn_node(write_project(tmp_path / "a", FLOODED), "flood-a", nats_url=nats_server.address,
                               ready=r"started 1 service")
    peer = await spawn_node(write_project(tmp_path / "b", PEER), "flood-b", nats_url=nats_server.address)
    await flooded.wait_for_line(r"node flood-b is up")
    await peer.wait_for_line(r"node flood-a is up")
    nc = await nats.connect(nats_server.address)
    try:
        sink = json.loads((await nc.request("mw.fn.app:where", b"[]", timeout=10)).data)["result"]
        uid = sink[sink.index("|") + 1:-1]
        reasons: collections.Counter[str] = collections.Counter()

        async def dead_letter(msg: Msg) -> None:
            reasons[(msg.headers or {}).get("Mw-Dlq-Reason", "")] += 1

        # No pending limits here: a message this test dropped would read as one lost.
        dlq = await nc.subscribe("mw.dlq.flood-a", cb=dead_letter, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()

        accounted = asyncio.Event()

        async def call_until_accounted() -> int:
            """Function calls to the flooded node, one after another, from before the
            flood starts until all of it is accounted for; each must be answered."""
            calls = 0
            while not accounted.is_set() or calls == 0:
                reply = await nc.request("mw.fn.app:ping", b"[7]", timeout=30)
                assert json.loads(reply.data) == {"result": 7}, reply.data
                calls += 1
            return calls

        caller = asyncio.create_task(call_until_accounted())
        await flood(nats_server.address, f"mw.p.flood-a.{uid}.flood", FLOOD)
        # Published in full: the node has a backlog. A call now must overtake it, not
        # wait behind it (and its reply must not wait behind the dead letters it makes):
        # ``dlq.delivered`` counts the dead letters read off the wire before the reply.
        await nc.request("mw.fn.app:ping", b"[7]", timeout=30)
        dead_before_reply = dlq.delivered
        received, deadline = 0, time.monotonic() + 120
        while received + sum(reasons.values()) < FLOOD:  # no event says "all handled": poll
            assert time.monotonic() < deadline, (received, reasons)
            reply = json.loads((await nc.request("mw.fn.app:report", b"[]", timeout=30)).data)
            received += reply.get("result", 0)  # an error while the sink's mailbox is full
            await asyncio.sleep(0.2)
        accounted.set()
        calls = await caller
    finally:
        await nc.close()

    # Every message of the flood was delivered or dead-lettered, none twice.
    assert received + sum(reasons.values()) == FLOOD, (received, reasons)
    assert received > 0 and reasons, (received, reasons)  # both paths were taken
    assert all("is full" in reason for reason in reasons), reasons
    assert calls > 0
    # The call overtook the backlog (without a data plane of its own it waited behind
    # it: ~5,700 of ~190,000 dead letters came after its reply; with it, ~170,000).
    assert sum(reasons.values()) - dead_before_reply > FLOOD // 10, (dead_before_reply, sum(reasons.values()))
    # Neither node took the other for down: heartbeats flowed both ways all along.
    downs = [line for node in (flooded, peer) for line in node.lines if NODE_DOWN.search(line)]
    assert downs == []
    # Dead letters are logged per interval: the first in full, the rest in a summary.
    logged = [line for line in flooded.lines if "undeliverable message on" in line]
    assert 1 <= len(logged) <= 10, len(logged)
    await flooded.wait_for_line(r"\d+ more in the last \d+s not logged one by one: \d+ x mailbox of _ is full")


def gateway_project(temporal: ServerProcess) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: temporal, kind: temporal.client, address: "{temporal.address}"}}
              - {{name: worker, kind: temporal.worker, client: temporal, task_queue: floods-{time.monotonic_ns()}}}
        """,
    }


async def test_gateway_burst_to_an_unknown_workflow_is_bounded_and_dead_lettered(
        tmp_path: Path, nats_server: ServerProcess, temporal_server: ServerProcess, spawn_node) -> None:
    burst = 3000
    await spawn_node(write_project(tmp_path / "w", gateway_project(temporal_server)), "flood-w",
                     nats_url=nats_server.address)
    nc = await nats.connect(nats_server.address)
    try:
        reasons: collections.Counter[str] = collections.Counter()

        async def dead_letter(msg: Msg) -> None:
            headers = msg.headers or {}
            assert headers["Mw-Dlq-Subject"] == "mw.wf.app:worker.nosuch.poke" and msg.data == b'{"n": 1}'
            reasons[headers["Mw-Dlq-Reason"]] += 1

        await nc.subscribe("mw.dlq.flood-w", cb=dead_letter, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()
        for _ in range(burst):
            await nc.publish("mw.wf.app:worker.nosuch.poke", b'{"n": 1}')
        await nc.flush()
        deadline = time.monotonic() + 60
        while sum(reasons.values()) < burst:  # no event says "the last one is handled": poll
            assert time.monotonic() < deadline, reasons
            await asyncio.sleep(0.1)
    finally:
        await nc.close()

    # Each signal ended in the dead-letter queue with its reason: the ones that found the
    # queue full at once (it is bounded), the others when Temporal refused them.
    assert sum(reasons.values()) == burst
    full = sum(n for reason, n in reasons.items() if "signals are waiting to be sent to Temporal" in reason)
    unknown = sum(n for reason, n in reasons.items() if "no running workflow nosuch on worker app:worker" in reason)
    assert full > 0 and unknown > 0 and full + unknown == burst, reasons


async def test_messages_nats_py_drops_for_a_slow_subscription_are_counted_and_logged_once(
        tmp_path: Path, caplog) -> None:
    from moonwire.broker import ConnectOptions, connect

    # A server of its own: nothing a flood test before it left on the shared one can
    # delay these 100 messages (once, in CI, they did not all arrive within 10 s).
    server = await start_nats(tmp_path, port=free_port())
    release, entered = asyncio.Event(), 0

    async def slow(msg: Msg) -> None:
        nonlocal entered
        entered += 1
        await release.wait()

    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(server.stop)
        client = await connect(ConnectOptions(servers=[server.address], name="slow-test"))
        cleanup.push_async_callback(client.close)
        publisher = await nats.connect(server.address)
        cleanup.push_async_callback(publisher.close)
        cleanup.callback(release.set)
        subscription = await client.subscribe("slow.x", cb=slow, pending_msgs_limit=10)
        await client.flush()
        for _ in range(100):
            await publisher.publish("slow.x", b"x")
        await publisher.flush()
        # Neither flush promises the server has routed all 100 to the client yet.
        await wait_until(lambda: client.stats["in_msgs"] == 100, 10,
                         lambda: f"the client to read all 100 (read {client.stats['in_msgs']}, "
                                 f"{subscription.pending_msgs} pending, {entered} entered, "
                                 f"{client.slow_consumer_drops.total} dropped)")
        drops = client.slow_consumer_drops
        assert drops.total > 0 and drops.totals == {"slow.x": drops.total}
        assert drops.total + subscription.pending_msgs + entered == 100
        logged = [r for r in caplog.records if "slow consumer" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]
