"""Function call benchmarks, each beside a raw baseline measured in the same run.

(a) local ``funcs.call`` of a trivial function from Lua: calls/s and p50/p99 latency,
    beside a plain Lua function call in the same state;
(b) remote ``funcs.call`` through the queue group between two node processes, calls/s,
    beside raw nats-py request/reply between two processes with the same number of
    requests in flight.

    python bench/functions.py [--calls 20000] [--concurrency 64] [--rounds 5] [--metrics]
                              [--json] [--loop asyncio|uvloop]

    The remote figure is run in rounds, each running raw then moonwire back to back, and
    the ratio reported is the median of the rounds' ratios. ``--loop`` is this process's
    loop ((a) and the raw pair); the nodes of (b) run as ``moonwire run``.

    --metrics: both nodes serve Prometheus metrics (``--metrics``), and while moonwire's
    calls run this process scrapes the serving node's /metrics and asks its ``$SRV.STATS``
    every 100 ms (``nats micro`` discovery is on in every run; it answers only when asked).

With ``--json`` the last line is one JSON object with these keys: ``machine``;
``a.moonwire_calls_per_s``, ``a.moonwire_p50_us``, ``a.moonwire_p99_us``,
``a.plain_calls_per_s``, ``a.plain_p50_us``; ``b.moonwire_calls_per_s``,
``b.raw_calls_per_s``, ``b.ratio`` (medians of the rounds, each with a ``_rounds`` list),
``b.best_ratio`` (best against best), ``b.server_cpu_us`` (the serving node's CPU per
call, median of the rounds after the first), ``b.scrapes`` (with ``--metrics``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nats

from moonwire.broker import Subjects
from moonwire.lua import Outcome
from moonwire.node import free_port, load_project, start_nats
from moonwire.node.functions._functions import Functions

from _support import Figures, cpu_seconds, parser, pct, run, write

MOONWIRE = str(Path(sys.executable).parent / "moonwire")

LOCAL_PROJECT = {
    "b.yaml": """
        namespace: b
        entries:
          - {name: noop, kind: function.lua, source: file://noop.lua}
          - {name: driver, kind: function.lua, source: file://driver.lua, modules: [funcs]}
    """,
    "noop.lua": "return function(x) return x end",
    "driver.lua": """
        local funcs = require("funcs")
        local function plain(x) return x end
        return function(n)
          local clock = os.clock
          local samples, baseline = {}, {}
          for i = 1, n do
            local t0 = clock()
            funcs.call("b:noop", i)
            samples[i] = clock() - t0
          end
          for i = 1, n do
            local t0 = clock()
            plain(i)
            baseline[i] = clock() - t0
          end
          local t0 = clock()
          for i = 1, n do funcs.call("b:noop", i) end
          local total = clock() - t0
          t0 = clock()
          for i = 1, n do plain(i) end
          return {samples = samples, baseline = baseline, total = total, baseline_total = clock() - t0}
        end
    """,
}

REMOTE_DRIVER = {
    "d.yaml": """
        namespace: d
        entries:
          - {name: drive, kind: function.lua, source: file://drive.lua, modules: [funcs, time]}
    """,
    "drive.lua": """
        local funcs = require("funcs")
        local time = require("time")
        return function(n, concurrency)
          local done = channel.new(concurrency)
          local per = n // concurrency
          local t0 = time.now()
          for c = 1, concurrency do
            coroutine.spawn(function()
              for i = 1, per do
                local _, err = funcs.call("s:noop", i)
                if err then error(err) end
              end
              done:send(true)
            end)
          end
          for c = 1, concurrency do done:receive() end
          return {calls = per * concurrency, seconds = time.now():sub(t0):seconds()}
        end
    """,
}

SERVER_PROJECT = {
    "s.yaml": "namespace: s\nentries:\n  - {name: noop, kind: function.lua, source: file://noop.lua, pool: {max_size: 64}}\n",
    "noop.lua": "return function(x) return x end",
}

RAW_RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def handle(msg):
        await msg.respond(msg.data)
    await nc.subscribe("raw.noop", queue="q", cb=handle)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def bench_local(root: Path, calls: int) -> dict[str, float]:
    functions = Functions(load_project(write(root / "local", LOCAL_PROJECT), environ={}), Subjects())
    warm = functions.call(None, "b:driver", [200], {}, {})  # warm up both states
    if not isinstance(warm, Outcome):
        await warm
    result = functions.call(None, "b:driver", [calls], {}, {})
    outcome = result if isinstance(result, Outcome) else await result
    assert outcome.ok, outcome.error
    data = outcome.value
    return {
        "calls_per_s": calls / data["total"],
        "p50_us": pct(data["samples"], 0.5) * 1e6,
        "p99_us": pct(data["samples"], 0.99) * 1e6,
        "baseline_calls_per_s": calls / max(data["baseline_total"], 1e-9),
        "baseline_p50_us": pct(data["baseline"], 0.5) * 1e6,
    }


class RawPair:
    """Raw nats-py request/reply between this process and a responder process."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url, self.concurrency = url, concurrency

    async def __aenter__(self) -> RawPair:
        self.responder = await asyncio.create_subprocess_exec(sys.executable, "-c", RAW_RESPONDER, self.url,
                                                              stdout=asyncio.subprocess.PIPE)
        assert self.responder.stdout is not None
        await self.responder.stdout.readline()
        self.nc = await nats.connect(self.url)
        await asyncio.gather(*(self.nc.request("raw.noop", b"x", timeout=10) for _ in range(100)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()
        self.responder.kill()
        await self.responder.wait()

    async def run(self, calls: int) -> float:
        per = calls // self.concurrency

        async def worker() -> None:
            for _ in range(per):
                await self.nc.request("raw.noop", b"x", timeout=10)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return per * self.concurrency / (time.perf_counter() - started)


class RemotePair:
    """moonwire: a driver node calling a function served by another node process."""

    def __init__(self, root: Path, url: str, concurrency: int, metrics: bool = False) -> None:
        self.root, self.url, self.concurrency = root, url, concurrency
        self.metrics = f"127.0.0.1:{free_port()}" if metrics else None
        self.scrapes = 0
        self.server_cpu: list[float] = []
        """CPU seconds of the serving node per call, each run: steadier than calls/s
        on a shared machine, and where the serving path's own work shows."""

    def _metrics_args(self) -> list[str]:
        return ["--metrics", f"127.0.0.1:{free_port()}"] if self.metrics else []

    async def __aenter__(self) -> RemotePair:
        server_dir = write(self.root / "server", SERVER_PROJECT)
        self.driver_dir = write(self.root / "driver", REMOTE_DRIVER)
        self.server = await asyncio.create_subprocess_exec(
            MOONWIRE, "run", str(server_dir), "--node", "bench-server", "--nats", self.url,
            *(["--metrics", self.metrics] if self.metrics else []),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.server.stderr is not None
        while b"serving 1 function" not in await self.server.stderr.readline():
            pass
        await self.run(self.concurrency * 32)  # warms the server's pool
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.terminate()
        await self.server.wait()

    async def run(self, calls: int) -> float:
        proc = await asyncio.create_subprocess_exec(
            MOONWIRE, "run", str(self.driver_dir), "--node", "bench-driver", "--nats", self.url,
            "--log-level", "warning", *self._metrics_args(), "-x", "d:drive", str(calls), str(self.concurrency),
            stdout=asyncio.subprocess.PIPE)
        scraping = asyncio.create_task(self._scrape()) if self.metrics else None
        cpu = cpu_seconds(self.server.pid)
        try:
            out, _ = await proc.communicate()
        finally:
            if scraping is not None:
                scraping.cancel()
                await asyncio.gather(scraping, return_exceptions=True)
        data = json.loads(out)
        self.server_cpu.append((cpu_seconds(self.server.pid) - cpu) / data["calls"])
        return data["calls"] / data["seconds"]

    async def _scrape(self) -> None:
        """What a Prometheus and a `nats micro stats` would ask of the serving node, far
        more often than they would (every 100 ms), while the calls run."""
        nc = await nats.connect(self.url)
        try:
            while True:
                await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{self.metrics}/metrics").read())
                await nc.request("$SRV.STATS.moonwire.bench-server", b"", timeout=5)
                self.scrapes += 1
                await asyncio.sleep(0.1)
        finally:
            await nc.close()


async def bench_remote(root: Path, url: str, calls: int, concurrency: int,
                       rounds: int, metrics: bool = False) -> tuple[list[tuple[float, float]], RemotePair]:
    """``rounds`` pairs of (moonwire, raw) calls/s, each pair run back to back so that
    both see the same machine (the raw figure swings by a third between minutes here)."""
    pairs = []
    async with RawPair(url, concurrency) as raw, RemotePair(root, url, concurrency, metrics) as remote:
        for _ in range(rounds):
            raw_rate = await raw.run(calls)
            pairs.append((await remote.run(calls), raw_rate))
    return pairs, remote


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local = await bench_local(root, args.calls)
        for key in ("calls_per_s", "p50_us", "p99_us"):
            figures.add(f"a.moonwire_{key}", local[key])
            if f"baseline_{key}" in local:
                figures.add(f"a.plain_{key}", local[f"baseline_{key}"])
        print(f"(a) local funcs.call      {local['calls_per_s']:>10.0f} calls/s   p50 {local['p50_us']:.1f} us"
              f"   p99 {local['p99_us']:.1f} us")
        print(f"    plain Lua call        {local['baseline_calls_per_s']:>10.0f} calls/s   p50 {local['baseline_p50_us']:.2f} us"
              "   (baseline: same state, no funcs)")
        server = await start_nats(root / "nats", port=free_port())
        try:
            pairs, remote = await bench_remote(root, server.address, args.calls, args.concurrency, args.rounds,
                                               args.metrics)
        finally:
            await server.stop()
        if args.metrics:
            figures.add("b.scrapes", remote.scrapes)
            print(f"    (scraped /metrics and $SRV.STATS {remote.scrapes} times while moonwire's calls ran)")
        cpu = remote.server_cpu
        cpu_us = figures.add("b.server_cpu_us", statistics.median(cpu[1:] or cpu) * 1e6)
        print(f"    serving node CPU per call {'  '.join(f'{c * 1e6:.1f}' for c in cpu)} us   "
              f"(median {cpu_us:.1f}; the first run warms up)")
        ours = figures.median("b.moonwire_calls_per_s", [p[0] for p in pairs])
        raw = figures.median("b.raw_calls_per_s", [p[1] for p in pairs])
        ratios = [p[0] / p[1] for p in pairs]
        ratio = figures.median("b.ratio", ratios)
        best = figures.add("b.best_ratio", max(p[0] for p in pairs) / max(p[1] for p in pairs))
        print(f"(b) remote funcs.call     {ours:>10.0f} calls/s   (median of {args.rounds}; {args.concurrency} in "
              "flight, two node processes)")
        print(f"    raw nats-py req/reply {raw:>10.0f} calls/s   (baseline, median of {args.rounds}; same "
              "concurrency, two processes)")
        print(f"    ratio per round       {'  '.join(f'{r:.2f}' for r in ratios)}   "
              "(each round runs raw, then moonwire)")
        print(f"    ratio                 {ratio:>10.2f}   median of rounds   (best against best: {best:.2f};"
              " target 0.9)")
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--calls", type=int, default=20000)
PARSER.add_argument("--concurrency", type=int, default=64)
PARSER.add_argument("--rounds", type=int, default=5)
PARSER.add_argument("--metrics", action="store_true", help="nodes serve metrics, scraped while calls run")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
