"""Process benchmarks across nodes, each beside raw nats-py measured in the same run.

(a) message throughput from a Lua process on one node to a Lua process on another,
    beside raw nats-py publish -> subscribe between two OS processes (target: at least
    0.6 of it);
(b) request/reply round trip between Lua processes on two nodes, p50 and p99, beside
    raw nats-py request/reply between two OS processes (target: p50 at most 1.5x);
(c) node-down detection after ``kill -9`` at the default liveness settings: from the
    kill to the EXIT a monitor on another node receives, p50 and max over the trials
    (target: at most 3 s);
(d) sends by cluster name (CONSISTENT, resolved from the local replica) beside sends by
    PID, the same Lua sender and receiver on two nodes (target: at least 0.9 of it);
(e) cluster name register + unregister from Lua, pairs per second, one after the other;
(f) pg.broadcast from a third node to members spread over two nodes (1,000 by
    default): broadcasts/s and deliveries/s, beside raw nats-py publish -> subscribe (a).

All on one real nats-server started here. (a) and (b) run ``--repeat`` times, each
repeat running the raw baseline and then moonwire back to back (the machine is shared
and noisy), and report the median of the repeats' figures and of their ratios.

    python bench/cluster.py [--messages 100000] [--rounds 5000] [--trials 10] [--members 1000]
                            [--broadcasts 200] [--repeat 3] [--only abcdef] [--json]
                            [--loop asyncio|uvloop]

``--loop`` is this process's loop (the raw baselines); the nodes run as ``moonwire run``.
With ``--json`` the last line is one JSON object with these keys (each figure with a
``_rounds`` list beside it is the median of the repeats): ``machine``;
``a.moonwire_msgs_per_s``, ``a.raw_msgs_per_s``, ``a.ratio``, ``a.nats_msgs_per_msg``,
``a.raw_headed_msgs_per_s``, ``a.receiver_cpu_us`` and ``a.raw_receiver_cpu_us`` (CPU
per message of the receiving node and of the raw sink);
``b.moonwire_p50_us``, ``b.moonwire_p99_us``,
``b.raw_p50_us``, ``b.raw_p99_us``, ``b.ratio_p50``; ``c.p50_s``, ``c.max_s``;
``d.by_pid_msgs_per_s``, ``d.by_name_msgs_per_s``, ``d.ratio``; ``e.pairs_per_s``;
``f.broadcasts_per_s``, ``f.deliveries_per_s``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nats

from moonwire.node import ServerProcess, free_port, start_nats

from _support import Figures, cpu_seconds, parser, pct, run, write

MOONWIRE = str(Path(sys.executable).parent / "moonwire")

SERVING = {
    "_index.yaml": """
        namespace: a
        entries:
          - {name: host, kind: process.host, host: {mailbox_limit: 10000000}}
          - {name: sink, kind: process.lua, source: file://sink.lua, modules: [time]}
          - {name: echo, kind: process.lua, source: file://echo.lua}
          - {name: idle, kind: process.lua, source: file://idle.lua}
          - {name: start, kind: function.lua, source: file://start.lua}
          - {name: start_named, kind: function.lua, source: file://start_named.lua}
          - {name: member, kind: process.lua, source: file://member.lua, modules: [pg]}
    """,
    "start_named.lua": """
        return function(name, n)
          return process.with_name(name, process.registry.CONSISTENT):spawn("a:sink", "a:host", n)
        end""",
    # Joins `group`, then tells `driver` once it has `count` broadcasts.
    "member.lua": """
        local pg = require("pg")
        return function(group, count, driver)
          assert(pg.join(group))
          process.send(driver, "joined")
          local inbox = process.inbox()
          for _ = 1, count do inbox:receive() end
          process.send(driver, "got", count)
        end""",

    # Receives n messages, then tells the sender when the last one arrived.
    "sink.lua": """
        local time = require("time")
        return function(n)
          local inbox = process.inbox()
          local first = inbox:receive()
          for _ = 2, n do inbox:receive() end
          process.send(first:from(), "done", time.now():unix_nano())
        end""",
    "echo.lua": """
        return function()
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            if msg:topic() == "stop" then return end
            process.send(msg:from(), "pong", msg:payload():data())
          end
        end""",
    "idle.lua": "return function() process.inbox():receive() end",
    "start.lua": "return function(what, ...) return process.spawn('a:' .. what, 'a:host', ...) end",
}

DRIVER = {
    "_index.yaml": """
        namespace: d
        entries:
          - {name: throughput, kind: process.lua, source: file://throughput.lua, modules: [funcs, time]}
          - {name: latency, kind: process.lua, source: file://latency.lua, modules: [funcs, time]}
          - {name: watch, kind: process.lua, source: file://watch.lua, modules: [funcs, time]}
          - {name: named, kind: process.lua, source: file://named.lua, modules: [funcs, time]}
          - {name: registry, kind: process.lua, source: file://registry.lua, modules: [time]}
          - {name: broadcast, kind: process.lua, source: file://broadcast.lua, modules: [time, pg]}
    """,
    # As throughput.lua, to a sink holding a cluster name, sent to by name.
    "named.lua": """
        local funcs, time = require("funcs"), require("time")
        return function(n)
          assert(funcs.call("a:start_named", "bench-sink", n))
          while not process.registry.lookup("bench-sink") do time.sleep("1ms") end  -- the replica has it
          local t0 = time.now():unix_nano()
          for i = 1, n do process.send("bench-sink", "m", i) end
          local done = process.inbox():receive()
          return { seconds = (time.now():unix_nano() - t0) / 1e9, messages = n }
        end""",
    "registry.lua": """
        local time = require("time")
        return function(n)
          local r = process.registry
          local t0 = time.now():unix_nano()
          for i = 1, n do
            assert(r.register("bench-name", nil, r.CONSISTENT))
            assert(r.unregister("bench-name", r.CONSISTENT))
          end
          return { seconds = (time.now():unix_nano() - t0) / 1e9, pairs = n }
        end""",
    # Members on the two serving nodes (half each), then `count` broadcasts; done when
    # every member has them all.
    "broadcast.lua": """
        local time, pg = require("time"), require("pg")
        return function(members, count)
          local me, inbox = process.pid(), process.inbox()
          for i = 1, members do
            local node = (i % 2 == 0) and "na" or "nb"
            assert(process.with_options({ node = node }):spawn("a:member", "a:host", "bench", count, me))
          end
          for _ = 1, members do inbox:receive() end  -- joined
          while #pg.members("bench") < members do time.sleep("1ms") end  -- in this node's replica
          local t0 = time.now():unix_nano()
          for i = 1, count do assert(pg.broadcast("bench", "m", i)) end
          for _ = 1, members do inbox:receive() end  -- each has them all
          return { seconds = (time.now():unix_nano() - t0) / 1e9, broadcasts = count, members = members }
        end""",
    "throughput.lua": """
        local funcs, time = require("funcs"), require("time")
        return function(n)
          local sink = assert(funcs.call("a:start", "sink", n))
          local t0 = time.now():unix_nano()
          for i = 1, n do process.send(sink, "m", i) end
          local done = process.inbox():receive()
          return { seconds = (time.now():unix_nano() - t0) / 1e9, messages = n }
        end""",
    "latency.lua": """
        local funcs, time = require("funcs"), require("time")
        return function(rounds)
          local echo = assert(funcs.call("a:start", "echo"))
          local inbox, samples = process.inbox(), {}
          for i = 1, 200 do process.send(echo, "ping", i); inbox:receive() end  -- warm up
          for i = 1, rounds do
            local t0 = time.now():unix_nano()
            process.send(echo, "ping", i)
            inbox:receive()
            samples[i] = (time.now():unix_nano() - t0) / 1e3
          end
          process.send(echo, "stop")
          return samples
        end""",
    "watch.lua": """
        local funcs, time = require("funcs"), require("time")
        return function()
          local victim = assert(funcs.call("a:start", "idle"))
          assert(process.monitor(victim))
          print("watching " .. victim)
          local ev = process.events():receive()
          return { at = time.now():unix_nano() / 1e9, error = ev.result.error:message() }
        end""",
}

RAW_SINK = """
import asyncio, sys, time, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    n, seen = int(sys.argv[2]), 0
    done = asyncio.Event()
    async def on_msg(msg):
        nonlocal seen
        seen += 1
        if seen == n:
            await nc.publish("raw.done", str(time.time_ns()).encode())
            done.set()
    await nc.subscribe("raw.sink", cb=on_msg)
    await nc.flush()
    print("ready", flush=True)
    await done.wait()
    await nc.flush()
asyncio.run(main())
"""

RAW_ECHO = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def handle(msg):
        await msg.respond(msg.data)
    await nc.subscribe("raw.echo", cb=handle)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def python_child(script: str, *args: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    await child.stdout.readline()  # ready
    return child


# What a moonwire message between nodes carries besides its body (node/_inboxes.py).
MOONWIRE_HEADERS = {"Content-Type": "application/msgpack", "Mw-Topic": "m", "Mw-From": "{nd@terminal|mwq3snax-1}"}


async def raw_throughput(url: str, n: int, headers: dict[str, str] | None = None) -> tuple[float, float]:
    """msg/s from this process to a raw sink process, and the sink's CPU seconds per message."""
    sink = await python_child(RAW_SINK, url, str(n))
    try:
        nc = await nats.connect(url)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_done(msg: object) -> None:
            if not done.done():
                done.set_result(None)

        await nc.subscribe("raw.done", cb=on_done)
        await nc.flush()
        started, cpu = time.perf_counter(), cpu_seconds(sink.pid)
        for i in range(n):
            await nc.publish("raw.sink", str(i).encode(), headers=headers)
        await done
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(sink.pid) - cpu
        await nc.close()
        return n / elapsed, cpu / n
    finally:
        sink.kill()
        await sink.wait()


async def raw_latency(url: str, rounds: int) -> list[float]:
    echo = await python_child(RAW_ECHO, url)
    try:
        nc = await nats.connect(url)
        for i in range(200):
            await nc.request("raw.echo", b"%d" % i, timeout=10)
        samples = []
        for i in range(rounds):
            t0 = time.perf_counter()
            await nc.request("raw.echo", b"%d" % i, timeout=10)
            samples.append((time.perf_counter() - t0) * 1e6)
        await nc.close()
        return samples
    finally:
        echo.kill()
        await echo.wait()


class Node:
    """A ``moonwire run`` OS process; its output lines are kept."""

    def __init__(self, project: Path, name: str, url: str, *args: str) -> None:
        self.argv = [MOONWIRE, "run", str(project), "--node", name, "--nats", url, *args]
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, ready: str | None) -> Node:
        self.process = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.STDOUT)
        if ready is not None:
            await self.wait_for(ready)
        return self

    async def wait_for(self, pattern: str) -> str:
        assert self.process is not None and self.process.stdout is not None
        while True:
            raw = await self.process.stdout.readline()
            if not raw:
                raise RuntimeError(f"{self.argv} ended:\n" + "\n".join(self.lines))
            line = raw.decode().rstrip()
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    async def result(self) -> object:
        assert self.process is not None and self.process.stdout is not None
        out = await self.process.stdout.read()
        self.lines += out.decode().splitlines()
        await self.process.wait()
        return json.loads(next(line for line in reversed(self.lines) if line[:1] in "[{"))

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await self.process.wait()


def nats_messages_in(server: ServerProcess) -> int:
    """How many messages nats-server has received from clients."""
    assert server.monitor_url is not None
    with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=5) as response:
        return int(json.loads(response.read())["in_msgs"])


async def moonwire_throughput(root: Path, server: ServerProcess, n: int,
                              repeat: int) -> list[tuple[float, float, float, float, float]]:
    """``repeat`` rounds of (moonwire msg/s, raw msg/s, NATS messages per moonwire message
    (below 1: batches; heartbeats included), CPU seconds per message of the receiving node
    and of the raw sink), raw then moonwire in each, on one serving node warmed first."""
    url = server.address
    serving = await Node(write(root / "a", SERVING), "na", url).start(r"node na running")
    try:
        await driver_run(root, url, "throughput", n)  # warms the serving node
        rounds = []
        for _ in range(repeat):
            raw, raw_cpu = await raw_throughput(url, n)
            before, cpu = nats_messages_in(server), cpu_seconds(serving.process.pid)
            data = await driver_run(root, url, "throughput", n)
            assert isinstance(data, dict)
            rounds.append((data["messages"] / data["seconds"], raw, (nats_messages_in(server) - before) / n,
                           (cpu_seconds(serving.process.pid) - cpu) / n, raw_cpu))
        return rounds
    finally:
        await serving.stop()


async def driver_run(root: Path, url: str, entry: str, *args: int) -> object:
    """Run ``d:<entry>`` on a driver node to its end; its result."""
    driver = await Node(write(root / "d", DRIVER), "nd", url, "--log-level", "warning",
                        "-x", f"d:{entry}", *map(str, args)).start(None)
    return await driver.result()


async def moonwire_latency(root: Path, url: str, rounds: int, repeat: int) -> list[tuple[list[float], list[float]]]:
    """``repeat`` pairs of (moonwire, raw) round-trip samples in µs, each pair run back to back."""
    serving = await Node(write(root / "a", SERVING), "na", url).start(r"node na running")
    try:
        pairs = []
        for _ in range(repeat):
            raw = await raw_latency(url, rounds)
            samples = await driver_run(root, url, "latency", rounds)
            assert isinstance(samples, list)
            pairs.append(([float(s) for s in samples], raw))
        return pairs
    finally:
        await serving.stop()


async def detection(root: Path, url: str) -> float:
    victim = await Node(write(root / "a", SERVING), "nv", url).start(r"node nv running")
    try:
        watcher = await Node(write(root / "d", DRIVER), "nw", url, "-x", "d:watch").start(r"watching \{nv@")
        killed_at = time.time()
        await victim.stop(signal.SIGKILL)
        data = await watcher.result()
        assert isinstance(data, dict) and data["error"].startswith("node down"), data
        return data["at"] - killed_at
    finally:
        await victim.stop(signal.SIGKILL)


async def moonwire_named(root: Path, url: str, n: int) -> tuple[float, float]:
    """(d): the best of two runs each, by PID and by cluster name, msg/s."""
    serving = await Node(write(root / "a", SERVING), "na", url).start(r"node na running")
    try:
        best = {"throughput": 0.0, "named": 0.0}
        for _ in range(2):
            for entry in best:
                data = await driver_run(root, url, entry, n)
                assert isinstance(data, dict), data
                best[entry] = max(best[entry], data["messages"] / data["seconds"])
        return best["throughput"], best["named"]
    finally:
        await serving.stop()


async def moonwire_registry(root: Path, url: str, n: int) -> float:
    """(e): register + unregister pairs per second."""
    data = await driver_run(root, url, "registry", n)
    assert isinstance(data, dict), data
    return data["pairs"] / data["seconds"]


async def moonwire_broadcast(root: Path, url: str, members: int, count: int) -> dict[str, float]:
    """(f): members on na and nb, broadcasts from nd."""
    serving = [await Node(write(root / "a", SERVING), name, url).start(rf"node {name} running")
               for name in ("na", "nb")]
    try:
        data = await driver_run(root, url, "broadcast", members, count)
        assert isinstance(data, dict), data
        return data
    finally:
        for node in serving:
            await node.stop()


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    median = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = await start_nats(root / "nats", port=free_port(), monitor_port=free_port())
        try:
            raw = 0.0
            if "a" in args.only:
                rounds = await moonwire_throughput(root, server, args.messages, args.repeat)
                keys = ("moonwire_msgs_per_s", "raw_msgs_per_s", "nats_msgs_per_msg", "receiver_cpu_us",
                        "raw_receiver_cpu_us")
                ours, raw, per_message, cpu_us, raw_cpu_us = (figures.median(
                    f"a.{key}", [r[i] * (1e6 if i > 2 else 1) for r in rounds]) for i, key in enumerate(keys))
                ratio = figures.median("a.ratio", [r[0] / r[1] for r in rounds])
                raw_headed = figures.add("a.raw_headed_msgs_per_s",
                                         (await raw_throughput(server.address, args.messages, MOONWIRE_HEADERS))[0])
                print(f"(a) Lua process -> Lua process, two nodes {ours:>10.0f} msg/s   "
                      f"({per_message:.3f} NATS messages per message: sends queued in a row leave as one batch)")
                print(f"    raw nats-py publish -> subscribe      {raw:>10.0f} msg/s   (baseline, two processes)")
                print(f"    receiving node CPU per message {cpu_us:.2f} us, raw sink {raw_cpu_us:.2f} us (medians)")
                print(f"    ratio per round                        {'  '.join(f'{r[0] / r[1]:.2f}' for r in rounds)}")
                print(f"    ratio {ratio:>42.2f}   (median of {args.repeat}; target 1.0)")
                print(f"    raw nats-py with moonwire's headers   {raw_headed:>10.0f} msg/s   "
                      f"(ratio {raw_headed / raw:.2f}: what one NATS message per send would cost)")

            if "b" in args.only:
                pairs = await moonwire_latency(root, server.address, args.rounds, args.repeat)
                ours50, ours99, raw50, raw99 = (figures.median(f"b.{who}_p{q}_us", [pct(p[i], q / 100) for p in pairs])
                                                for i, who in enumerate(("moonwire", "raw")) for q in (50, 99))
                ratios = [pct(p[0], 0.5) / pct(p[1], 0.5) for p in pairs]
                ratio = figures.median("b.ratio_p50", ratios)
                print(f"(b) request/reply, Lua processes on two nodes  p50 {ours50:7.1f} us   p99 {ours99:7.1f} us")
                print(f"    raw nats-py request/reply                  p50 {raw50:7.1f} us   p99 {raw99:7.1f} us"
                      "   (baseline, two processes)")
                print(f"    p50 ratio per round                        {'  '.join(f'{r:.2f}' for r in ratios)}")
                print(f"    p50 ratio {ratio:40.2f}   (median of {args.repeat}; target at most 1.2)")

            if "c" in args.only:
                times = [await detection(root, server.address) for _ in range(args.trials)]
                figures.add("c.p50_s", median(times)), figures.add("c.max_s", max(times))
                print(f"(c) node down after kill -9 (defaults: heartbeat 500ms, down after 2.5s), {args.trials} "
                      f"trials: p50 {median(times):.2f} s   max {max(times):.2f} s   (target at most 3 s)")

            if "d" in args.only:
                by_pid, by_name = await moonwire_named(root, server.address, args.messages)
                figures.add("d.by_pid_msgs_per_s", by_pid), figures.add("d.by_name_msgs_per_s", by_name)
                figures.add("d.ratio", by_name / by_pid)
                print(f"(d) send by PID, two nodes                {by_pid:>10.0f} msg/s")
                print(f"    send by cluster name (CONSISTENT)     {by_name:>10.0f} msg/s   "
                      f"(ratio {by_name / by_pid:.2f}, target 0.9)")
            if "e" in args.only:
                pairs_per_s = figures.add("e.pairs_per_s", await moonwire_registry(root, server.address, 2000))
                print(f"(e) cluster name register + unregister    {pairs_per_s:>10.0f} pairs/s   "
                      f"({1e6 / pairs_per_s / 2:.0f} us a round trip; raw request/reply p50 above)")
            if "f" in args.only:
                data = await moonwire_broadcast(root, server.address, args.members, args.broadcasts)
                per_s = figures.add("f.broadcasts_per_s", data["broadcasts"] / data["seconds"])
                figures.add("f.deliveries_per_s", per_s * data["members"])
                print(f"(f) pg.broadcast to {args.members} members on 2 nodes, from a third: {per_s:>8.0f} broadcasts/s"
                      f"   {per_s * data['members']:>10.0f} deliveries/s"
                      + (f"   (raw pub -> sub above: {raw:.0f} msg/s)" if raw else ""))
        finally:
            await server.stop()
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--messages", type=int, default=100_000)
PARSER.add_argument("--rounds", type=int, default=5000, help="round trips per repeat of (b)")
PARSER.add_argument("--repeat", type=int, default=3, help="raw-then-moonwire repeats of (a) and (b)")
PARSER.add_argument("--trials", type=int, default=10)
PARSER.add_argument("--members", type=int, default=1000)
PARSER.add_argument("--broadcasts", type=int, default=200)
PARSER.add_argument("--only", default="abcdef", help="which parts to run, e.g. def")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
