"""A flood at one process's inbox, and what it does to everything else on its node.

Two node processes (``fa``, flooded, and ``fb``) on a real nats-server. In each trial an
outside nats-py client (its own OS process) publishes ``--messages`` messages as fast as
it can at one process on ``fa``, while this script calls a function served by ``fa``
(``mw.fn.app:ping``, one call in flight, nats-py request/reply) and a raw nats-py
responder (its own OS process) in turn. Printed per trial and overall:

* function-call latency p50/p99 while flooded, beside the same calls with no flood and
  beside raw nats-py request/reply measured in the same run (flooded and not);
* node-down lines either node logged (target: none);
* whether every flood message was delivered or dead-lettered (process count + dead
  letters == messages) and how long that took.

    python bench/flood.py [--messages 200000] [--trials 10] [--calls 300] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys (latencies in ms):
``machine``; ``quiet.p50_ms``, ``quiet.p99_ms``, ``quiet.raw_p50_ms``, ``quiet.raw_p99_ms``,
``quiet.ratio_p50``; over the trials (the median, the trials under ``KEY_rounds``):
``flood.p50_ms``, ``flood.p99_ms``, ``flood.max_ms``, ``flood.raw_p50_ms``,
``flood.raw_p99_ms``, ``flood.ratio_p50``, ``flood.published_s``, ``flood.handled_s``;
and ``flood.p99_worst_ms``, ``flood.node_down_lines`` (total), ``flood.all_accounted``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nats

from moonwire.node import free_port, start_nats

from _support import CHILD_LOOP, Figures, parser, pct, run, write

MOONWIRE = str(Path(sys.executable).parent / "moonwire")

# The flooded node's project and the flooder are the flood test's, so the bench measures
# what the test checks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_floods import FLOODED, FLOODER  # noqa: E402

OTHER = {
    "_index.yaml": """
        namespace: other
        entries:
          - {name: noop, kind: function.lua, source: file://noop.lua}
    """,
    "noop.lua": "return function(x) return x end",
}

RAW_RESPONDER = CHILD_LOOP + """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def handle(msg):
        await msg.respond(msg.data)
    await nc.subscribe("raw.ping", cb=handle)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

COUNTER = CHILD_LOOP + """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    count = 0
    async def handle(msg):
        nonlocal count
        count += 1
    await nc.subscribe(sys.argv[2], cb=handle, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.flush()
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        print(count, flush=True)
asyncio.run(main())
"""
"""Counts the messages on a subject (in its own process, so that reading them costs the
measuring client nothing); prints the count for each line it reads."""

DOWN = re.compile(r"node \S+ is down")
ECHO = bool(os.environ.get("FLOOD_ECHO"))
"""FLOOD_ECHO=1: print the nodes' output as it comes."""


class Node:
    """``moonwire run`` as an OS process, its output in a list."""

    def __init__(self, project: Path, name: str, url: str) -> None:
        self.argv = [MOONWIRE, "run", str(project), "--node", name, "--nats", url]
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self, ready: str) -> None:
        self.process = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.STDOUT)
        self.reader = asyncio.create_task(self._read())
        await self.wait_for(ready)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())
            if ECHO:
                print(self.argv[4], self.lines[-1], flush=True)

    async def wait_for(self, pattern: str, timeout: float = 60.0) -> None:
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        while not any(regex.search(line) for line in self.lines):
            if time.monotonic() > deadline or (self.reader is not None and self.reader.done()):
                raise RuntimeError(f"no /{pattern}/ from {self.argv}:\n" + "\n".join(self.lines[-30:]))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if self.reader is not None:
            await self.reader


async def sequential_calls(nc: nats.NATS, subject: str, until: asyncio.Event | None, count: int) -> list[float]:
    """Latencies (s) of requests made one after another: ``count`` of them, or until
    ``until`` is set (at least one)."""
    samples: list[float] = []
    while (len(samples) < count) if until is None else (not until.is_set() or not samples):
        started = time.perf_counter()
        reply = await nc.request(subject, b"[1]", timeout=30)
        samples.append(time.perf_counter() - started)
        assert reply.data == b"[1]" or json.loads(reply.data).get("result") == 1, reply.data
    return samples


async def trial(nc: nats.NATS, url: str, sink: str, messages: int, nodes: list[Node]) -> dict[str, float]:
    counter = await asyncio.create_subprocess_exec(sys.executable, "-c", COUNTER, url, "mw.dlq.fa",
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert counter.stdin is not None and counter.stdout is not None
    await counter.stdout.readline()

    async def dead_letters() -> int:
        assert counter.stdin is not None and counter.stdout is not None
        counter.stdin.write(b"?\n")
        return int(await counter.stdout.readline())
    lines_before = [len(n.lines) for n in nodes]
    accounted = asyncio.Event()
    uid = sink[sink.index("|") + 1:-1]
    ours = asyncio.create_task(sequential_calls(nc, "mw.fn.app:ping", accounted, 0))
    raw = asyncio.create_task(sequential_calls(nc, "raw.ping", accounted, 0))
    started = time.perf_counter()
    flooder = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD_LOOP + FLOODER, url,
                                                   f"mw.p.fa.{uid}.flood", str(messages))
    await flooder.wait()
    published = time.perf_counter() - started
    received = 0
    while True:  # no event says "the flood is all handled": poll the sink's count
        reply = json.loads((await nc.request("mw.fn.app:report", b"[]", timeout=30)).data)
        received += reply.get("result", 0)  # an error while its mailbox is full
        dead = await dead_letters()
        if received + dead >= messages:
            break
        await asyncio.sleep(0.2)
    handled = time.perf_counter() - started
    accounted.set()
    ours_samples, raw_samples = await ours, await raw
    counter.kill()
    await counter.wait()
    downs = sum(1 for n, before in zip(nodes, lines_before) for line in n.lines[before:] if DOWN.search(line))
    dead_log = sum(1 for line in nodes[0].lines[lines_before[0]:] if "undeliverable message" in line)
    return {"p50": pct(ours_samples, 0.5), "p99": pct(ours_samples, 0.99), "max": max(ours_samples),
            "calls": len(ours_samples), "raw_p50": pct(raw_samples, 0.5), "raw_p99": pct(raw_samples, 0.99),
            "received": received, "dead": dead, "downs": downs, "published_s": published, "handled_s": handled,
            "dead_log_lines": dead_log}


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = await start_nats(root / "nats", port=free_port())
        fa = Node(write(root / "fa", FLOODED), "fa", server.address)
        fb = Node(write(root / "fb", OTHER), "fb", server.address)
        responder = None
        nc = None
        try:
            await fa.start(r"node fa running")
            await fb.start(r"node fb running")
            await fa.wait_for(r"node fb is up")
            await fb.wait_for(r"node fa is up")
            responder = await asyncio.create_subprocess_exec(sys.executable, "-c", RAW_RESPONDER, server.address,
                                                             stdout=asyncio.subprocess.PIPE)
            assert responder.stdout is not None
            await responder.stdout.readline()
            nc = await nats.connect(server.address)
            sink = json.loads((await nc.request("mw.fn.app:where", b"[]", timeout=10)).data)["result"]
            await sequential_calls(nc, "mw.fn.app:ping", None, 100)  # warm up
            quiet = await sequential_calls(nc, "mw.fn.app:ping", None, args.calls)
            quiet_raw = await sequential_calls(nc, "raw.ping", None, args.calls)
            for key, value in (("p50_ms", pct(quiet, 0.5)), ("p99_ms", pct(quiet, 0.99)),
                               ("raw_p50_ms", pct(quiet_raw, 0.5)), ("raw_p99_ms", pct(quiet_raw, 0.99))):
                figures.add(f"quiet.{key}", value * 1e3)
            figures.add("quiet.ratio_p50", pct(quiet, 0.5) / pct(quiet_raw, 0.5))
            print(f"no flood      funcs.call p50 {pct(quiet, 0.5) * 1e3:6.2f} ms  p99 {pct(quiet, 0.99) * 1e3:6.2f} ms"
                  f"   raw nats-py req/reply p50 {pct(quiet_raw, 0.5) * 1e3:6.2f} ms  p99 "
                  f"{pct(quiet_raw, 0.99) * 1e3:6.2f} ms   ratio p50 {figures.values['quiet.ratio_p50']:.2f}   "
                  f"({args.calls} calls each, one in flight)")
            results = []
            for n in range(args.trials):
                r = await trial(nc, server.address, sink, args.messages, [fa, fb])
                results.append(r)
                print(f"trial {n + 1:2}     funcs.call p50 {r['p50'] * 1e3:6.2f} ms  p99 {r['p99'] * 1e3:6.2f} ms"
                      f"  max {r['max'] * 1e3:7.2f} ms ({r['calls']:4} calls)   raw p50 {r['raw_p50'] * 1e3:6.2f} ms"
                      f"  p99 {r['raw_p99'] * 1e3:6.2f} ms   node-down {r['downs']}   delivered {r['received']}"
                      f" + dead-lettered {r['dead']} = {r['received'] + r['dead']}"
                      f"   published in {r['published_s']:.1f} s, handled in {r['handled_s']:.1f} s"
                      f"   dead-letter log lines {r['dead_log_lines']}")
            for key in ("p50", "p99", "max", "raw_p50", "raw_p99"):
                figures.median(f"flood.{key}_ms", [r[key] * 1e3 for r in results])
            flood_ratio = figures.median("flood.ratio_p50", [r["p50"] / r["raw_p50"] for r in results])
            figures.median("flood.published_s", [r["published_s"] for r in results])
            figures.median("flood.handled_s", [r["handled_s"] for r in results])
            worst = figures.add("flood.p99_worst_ms", max(r["p99"] for r in results) * 1e3)
            downs = figures.add("flood.node_down_lines", sum(r["downs"] for r in results))
            accounted = figures.add("flood.all_accounted",
                                    all(r["received"] + r["dead"] == args.messages for r in results))
            print(f"over {args.trials} trials of {args.messages} messages: funcs.call p99 median "
                  f"{figures.values['flood.p99_ms']:.2f} ms, worst {worst:.2f} ms; p50 ratio to raw (median) "
                  f"{flood_ratio:.2f}; node-down lines {downs}; all accounted: {accounted}")
            print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, loop {args.loop}")
        finally:
            if nc is not None:
                await nc.close()
            if responder is not None:
                responder.kill()
                await responder.wait()
            await fb.stop()
            await fa.stop()
            await server.stop()
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--messages", type=int, default=200_000)
PARSER.add_argument("--trials", type=int, default=10)
PARSER.add_argument("--calls", type=int, default=300, help="calls of each kind with no flood")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
