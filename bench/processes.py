"""Process benchmarks on one node, each beside a raw baseline measured in the same run.

(a) message throughput between two Lua processes sharing a Lua state (the local path:
    target at least 0.5 of it), and between two processes of different states (another
    host's shard), beside an ``asyncio.Queue`` between two tasks;
(b) request/reply round trip between two Lua processes, p50 and p99, sharing a state
    (target: p50 at most 2x raw) and in different states, beside a ping-pong over two
    ``asyncio.Queue``s; (a) and (b) run ``--repeat`` times, raw and moonwire interleaved,
    and each figure is the median of the repeats (its repeats under ``<key>_rounds``);
(c) spawn-and-exit rate of a trivial monitored process (target: at least 0.8 of the
    raw rate), beside creating and awaiting trivial asyncio tasks; the median of
    ``--spawn-rounds`` rounds, each raw then moonwire;
(d) ``--idle`` processes blocked on their inbox (100,000; ``--idle 1000000`` works on a
    24 GiB machine): memory per process (target: 2.5 KiB; Erlang's is 2.6 KiB), the
    time to spawn them all until every one waits, and the time a message sent from
    outside (``route_in``, as from the CLI) takes to reach one chosen at random, and
    that process to take it and exit, while all are alive (``--probes`` of them; p50
    and max); beside asyncio tasks blocked on a queue. The moonwire side and the raw
    side each run in a fresh child process, so neither reuses memory another part freed
    (before, the raw side's 380 MB, freed, made moonwire's look 4 KiB smaller); the
    child ends with ``os._exit`` after reporting (a node's orderly stop of them all is
    ``d.stop_s``, measured with ``--stop``).

The processes run on a real scheduler with no broker (local messages never touch NATS).

    python bench/processes.py [--messages 200000] [--rounds 20000] [--spawns 50000] [--spawn-rounds 3]
                              [--repeat 3] [--idle 100000] [--probes 20] [--stop] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys: ``machine``;
``a.moonwire_msgs_per_s``, ``a.raw_msgs_per_s``, ``a.ratio`` (same state),
``a.cross_msgs_per_s``, ``a.cross_ratio`` (different states); ``b.moonwire_p50_us``,
``b.moonwire_p99_us``, ``b.raw_p50_us``, ``b.raw_p99_us``, ``b.ratio_p50`` (same state),
``b.cross_p50_us``, ``b.cross_ratio_p50`` (different states);
``c.moonwire_per_s``, ``c.raw_per_s``, ``c.ratio`` (medians; each with ``_rounds``);
``d.moonwire_kib``, ``d.lua_heap_kib``, ``d.raw_kib``, ``d.alive``, ``d.states``, ``d.start_s``
(seconds to spawn them all until every one waits), ``d.start_cpu_s`` (the CPU seconds of that,
which a loaded machine does not stretch), ``d.spawn_per_s``,
``d.message_to_random_p50_us``, ``d.message_to_random_max_us``, ``d.stop_s`` (with ``--stop``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moonwire.broker import Subjects
from moonwire.node import load_project
from moonwire.node._runtime import Runtime

from _support import Figures, parser, pct, run, write

PROJECT = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: host, kind: process.host, host: {mailbox_limit: 10000000}}
          - {name: consumer, kind: process.lua, source: file://consumer.lua}
          - {name: producer, kind: process.lua, source: file://producer.lua}
          - {name: server, kind: process.lua, source: file://server.lua}
          - {name: client, kind: process.lua, source: file://client.lua, modules: [time]}
          - {name: driver, kind: process.lua, source: file://driver.lua}
          - {name: trivial, kind: process.lua, source: file://trivial.lua}
          - {name: spawner, kind: process.lua, source: file://spawner.lua}
          - {name: idle, kind: process.lua, source: file://idle.lua}
    """,
    "consumer.lua": """
        return function(n)
          local inbox = process.inbox()
          for _ = 1, n do inbox:receive() end
          return n
        end""",
    "producer.lua": """
        return function(n)
          local consumer = process.spawn_monitored("b:consumer", "b:host", n)
          local t0 = os.clock()
          for i = 1, n do process.send(consumer, "m", i) end
          process.events():receive()
          return os.clock() - t0
        end""",
    "server.lua": """
        return function()
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            if msg:topic() == "stop" then return end
            process.send(msg:from(), "pong", msg:payload():data())
          end
        end""",
    "client.lua": """
        local time = require("time")
        return function(rounds)
          local server = process.spawn("b:server", "b:host")
          local inbox, samples = process.inbox(), {}
          for i = 1, rounds do
            local t0 = time.now():unix_nano()
            process.send(server, "ping", i)
            inbox:receive()
            samples[i] = time.now():unix_nano() - t0
          end
          process.send(server, "stop")
          return samples
        end""",
    "driver.lua": """
        return function(entry, n)
          local events = process.events()
          process.spawn_monitored(entry, "b:host", n)
          local event = events:receive()
          if event.result.error then error(event.result.error) end
          return event.result.value
        end""",
    "trivial.lua": "return function() return true end",
    "spawner.lua": """
        return function(n)
          local events = process.events()
          local t0 = os.clock()
          for i = 1, n do process.spawn_monitored("b:trivial", "b:host") end
          for i = 1, n do events:receive() end
          return os.clock() - t0
        end""",
    "idle.lua": "return function() process.inbox():receive() end",
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def raw_queue_throughput(n: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def consume() -> None:
        for _ in range(n):
            await queue.get()

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for i in range(n):
        queue.put_nowait(i)
        if i % 256 == 0:
            await asyncio.sleep(0)
    await consumer
    return n / (time.perf_counter() - start)


async def raw_ping_pong(rounds: int) -> list[float]:
    ping: asyncio.Queue[int] = asyncio.Queue()
    pong: asyncio.Queue[int] = asyncio.Queue()

    async def server() -> None:
        while (value := await ping.get()) >= 0:
            pong.put_nowait(value)

    task = asyncio.create_task(server())
    samples = []
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        ping.put_nowait(i)
        await pong.get()
        samples.append(time.perf_counter_ns() - t0)
    ping.put_nowait(-1)
    await task
    return samples


async def raw_task_rate(n: int) -> float:
    async def trivial() -> bool:
        return True

    start = time.perf_counter()
    await asyncio.gather(*(asyncio.create_task(trivial()) for _ in range(n)))
    return n / (time.perf_counter() - start)


async def raw_idle_tasks(n: int) -> dict[str, float]:
    gc.collect()
    before = rss_bytes()
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(n)]
    tasks = [asyncio.create_task(q.get()) for q in queues]
    await asyncio.sleep(0)
    gc.collect()
    return {"raw_kib": (rss_bytes() - before) / n / 1024}


IDLE_BATCH = 10_000  # spawned between two turns of the loop: the first ones start waiting meanwhile


async def moonwire_idle(n: int, probes: int, stop: bool) -> dict[str, float]:
    """Part (d) in this (fresh) process: ``n`` idle processes, then ``probes`` messages
    to random ones; the figures by key (without the ``d.`` prefix)."""
    from moonwire.lua import Message, SpawnRequest

    root = write(Path(tempfile.mkdtemp(prefix="mw-bench-")), PROJECT)
    runtime = Runtime("bench", load_project(root), Subjects())
    await runtime.start()
    table, host = runtime.processes, runtime.hosts["b:host"]
    request = SpawnRequest("b:idle", "b:host", [])
    gc.collect()
    before = rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    pids = []
    for i in range(0, n, IDLE_BATCH):
        pids.extend(table.start(request) for _ in range(min(IDLE_BATCH, n - i)))
        await asyncio.sleep(0)
    while host.queued():
        await asyncio.sleep(0.01)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    gc.collect()
    stats = host.statistics()
    out = {"moonwire_kib": (rss_bytes() - before) / n / 1024, "lua_heap_kib": stats.memory_bytes / n / 1024,
           "alive": n, "states": stats.states, "start_s": took, "start_cpu_s": cpu, "spawn_per_s": n / took}
    samples = []
    for pid in random.Random(20).sample(pids, min(probes, n)):
        # An idle process returns once it has a message: its exit is the sign it took it.
        reached = asyncio.get_running_loop().create_future()
        table.records[pid].exit_hooks = [lambda outcome, f=reached: f.set_result(time.perf_counter_ns())]
        t0 = time.perf_counter_ns()
        table.route_in(pid, Message("ping", [1]))
        samples.append((await reached - t0) / 1e3)
    out["message_to_random_p50_us"], out["message_to_random_max_us"] = pct(samples, .5), max(samples)
    if stop:
        start = time.perf_counter()
        await runtime.stop(0.1)
        out["stop_s"] = time.perf_counter() - start
    return out


def idle_in_child(side: str) -> dict[str, float]:
    """Part (d)'s ``side`` (moonwire, raw) in a fresh child process."""
    command = [sys.executable, __file__, "--idle-child", side, "--idle", str(ARGS.idle), "--probes",
               str(ARGS.probes), "--loop", ARGS.loop] + (["--stop"] if ARGS.stop else [])
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


async def idle_child() -> None:
    side = ARGS.idle_child
    out = await (raw_idle_tasks(ARGS.idle) if side == "raw" else moonwire_idle(ARGS.idle, ARGS.probes, ARGS.stop))
    print(json.dumps(out), flush=True)
    os._exit(0)  # not a million teardowns: the memory goes with the process


async def main() -> None:
    opts = ARGS
    figures = Figures(opts)

    root = write(Path(tempfile.mkdtemp(prefix="mw-bench-")), PROJECT)
    runtime = Runtime("bench", load_project(root), Subjects())
    await runtime.start()
    try:
        async def timed(entry: str, arg: object) -> tuple[float, object]:
            """Seconds to run ``entry`` to completion, and its result."""
            start = time.perf_counter()
            outcome = await runtime.execute(entry, arg if isinstance(arg, list) else [arg])
            assert outcome.error is None, outcome.error
            return time.perf_counter() - start, outcome.value

        async def here(entry: str, arg: int) -> tuple[float, object]:
            """:func:`timed` for ``entry`` run on ``b:host``, so that the processes it spawns
            there share its Lua state (the driver on the terminal host waits for it)."""
            return await timed("b:driver", [entry, arg])

        # (a) throughput: the producer on b:host shares its consumer's state; on the
        # terminal host, it sends to another state
        rounds: dict[str, list[float]] = {"raw": [], "local": [], "cross": []}
        for _ in range(opts.repeat):
            rounds["raw"].append(await raw_queue_throughput(opts.messages))
            seconds, _ = await here("b:producer", opts.messages)
            rounds["local"].append(opts.messages / seconds)
            seconds, _ = await timed("b:producer", opts.messages)
            rounds["cross"].append(opts.messages / seconds)
        raw = figures.median("a.raw_msgs_per_s", rounds["raw"])
        lua = figures.median("a.moonwire_msgs_per_s", rounds["local"])
        cross = figures.median("a.cross_msgs_per_s", rounds["cross"])
        figures.add("a.ratio", lua / raw), figures.add("a.cross_ratio", cross / raw)
        print(f"(a) throughput     moonwire {lua:>10,.0f} msg/s (ratio {lua / raw:.3f}, target >= 0.5)   "
              f"across states {cross:>10,.0f} msg/s (ratio {cross / raw:.3f})   raw asyncio.Queue {raw:>10,.0f} msg/s")

        # (b) round trip, same state and across states
        rounds = {}
        for _ in range(opts.repeat):
            raw_rt = await raw_ping_pong(opts.rounds)
            _, samples = await here("b:client", opts.rounds)
            rt = [float(s) for s in samples]  # type: ignore[attr-defined]
            _, samples = await timed("b:client", opts.rounds)
            cross_rt = [float(s) for s in samples]  # type: ignore[attr-defined]
            for key, values, q in (("raw_p50", raw_rt, .5), ("raw_p99", raw_rt, .99), ("p50", rt, .5),
                                   ("p99", rt, .99), ("cross_p50", cross_rt, .5)):
                rounds.setdefault(key, []).append(pct(values, q) / 1e3)
        p50, p99 = figures.median("b.moonwire_p50_us", rounds["p50"]), figures.median("b.moonwire_p99_us", rounds["p99"])
        raw50, raw99 = figures.median("b.raw_p50_us", rounds["raw_p50"]), figures.median("b.raw_p99_us", rounds["raw_p99"])
        cross50 = figures.median("b.cross_p50_us", rounds["cross_p50"])
        figures.add("b.ratio_p50", p50 / raw50), figures.add("b.cross_ratio_p50", cross50 / raw50)
        print(f"(b) round trip     moonwire p50 {p50:6.1f} us p99 {p99:6.1f} us (p50 ratio {p50 / raw50:.2f}, "
              f"target <= 2)   across states p50 {cross50:6.1f} us   raw queues p50 {raw50:6.1f} us p99 {raw99:6.1f} us")

        # (c) spawn and exit: rounds of raw then moonwire, so both see the same load
        raws, rates = [], []
        for _ in range(opts.spawn_rounds):
            raws.append(await raw_task_rate(opts.spawns))
            seconds, _ = await timed("b:spawner", opts.spawns)
            rates.append(opts.spawns / seconds)
        rate, raw_rate = figures.median("c.moonwire_per_s", rates), figures.median("c.raw_per_s", raws)
        ratio = figures.median("c.ratio", [m / r for m, r in zip(rates, raws)])
        print(f"(c) spawn+exit     moonwire {rate:>10,.0f} /s      raw asyncio tasks {raw_rate:>10,.0f} /s   "
              f"ratio {ratio:.2f}  (target >= 0.8; medians of {opts.spawn_rounds})")
    finally:
        await runtime.stop(5.0)

    # (d) idle processes, each side in a fresh process
    d = {**idle_in_child("raw"), **idle_in_child("moonwire")}
    for key, value in d.items():
        figures.add(f"d.{key}", value)
    stop = f", stopped in {d['stop_s']:.1f}s" if "stop_s" in d else ""
    print(f"(d) idle           moonwire {d['moonwire_kib']:6.2f} KiB/process ({opts.idle:,} alive, {d['states']} Lua "
          f"states, Lua heap {d['lua_heap_kib']:.2f} KiB each; spawned in {d['start_s']:.1f}s "
          f"({d['start_cpu_s']:.1f}s CPU), "
          f"{d['spawn_per_s']:,.0f}/s{stop})   raw asyncio task {d['raw_kib']:.2f} KiB   "
          f"(target <= 2.5 KiB; Erlang 2.6 KiB)\n"
          f"                   a message to a random one: p50 {d['message_to_random_p50_us']:.0f} us, "
          f"max {d['message_to_random_max_us']:.0f} us ({opts.probes} probes)")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--messages", type=int, default=200_000)
PARSER.add_argument("--rounds", type=int, default=20_000)
PARSER.add_argument("--spawns", type=int, default=50_000)
PARSER.add_argument("--spawn-rounds", type=int, default=3)
PARSER.add_argument("--idle", type=int, default=100_000)
PARSER.add_argument("--probes", type=int, default=20)
PARSER.add_argument("--stop", action="store_true", help="(d): also time the node's orderly stop of them all")
PARSER.add_argument("--idle-child", choices=("moonwire", "raw"), help=argparse.SUPPRESS)
PARSER.add_argument("--repeat", type=int, default=3, help="rounds of (a) and (b); figures are their medians")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(idle_child if ARGS.idle_child else main, ARGS.loop)
