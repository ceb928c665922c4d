"""Function call benchmarks, each beside a raw baseline measured in the same run.

(a) local ``funcs.call`` of a trivial function from Lua: calls/s and p50/p99 latency,
    beside a plain Lua function call in the same state;
(b) remote ``funcs.call`` through the queue group between two node processes, calls/s,
    beside raw nats-py request/reply between two processes with the same number of
    requests in flight.

    python bench/functions.py [--calls 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nats

from broker import Subjects
from lua import Outcome
from node import free_port, load_project, start_nats
from node._functions import Functions

from _support import pct, write

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
    functions.call(None, "b:driver", [200], {}, {})  # warm up both states
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


async def bench_raw_nats(url: str, calls: int, concurrency: int) -> float:
    responder = await asyncio.create_subprocess_exec(sys.executable, "-c", RAW_RESPONDER, url,
                                                     stdout=asyncio.subprocess.PIPE)
    try:
        assert responder.stdout is not None
        await responder.stdout.readline()
        nc = await nats.connect(url)
        per = calls // concurrency

        async def worker() -> None:
            for i in range(per):
                await nc.request("raw.noop", b"x", timeout=10)

        await asyncio.gather(*(nc.request("raw.noop", b"x", timeout=10) for _ in range(100)))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        await nc.close()
        return per * concurrency / elapsed
    finally:
        responder.kill()
        await responder.wait()


async def bench_remote(root: Path, url: str, calls: int, concurrency: int) -> float:
    server_dir = write(root / "server", SERVER_PROJECT)
    server = await asyncio.create_subprocess_exec(MOONWIRE, "run", str(server_dir), "--node", "bench-server",
                                                  "--nats", url, stdout=asyncio.subprocess.DEVNULL,
                                                  stderr=asyncio.subprocess.PIPE)
    try:
        assert server.stderr is not None
        while b"serving 1 function" not in await server.stderr.readline():
            pass
        driver_dir = write(root / "driver", REMOTE_DRIVER)
        best = 0.0
        for _ in range(2):  # the first run also warms the server's pool
            proc = await asyncio.create_subprocess_exec(
                MOONWIRE, "run", str(driver_dir), "--node", "bench-driver", "--nats", url, "--log-level", "warning",
                "-x", "d:drive", str(calls), str(concurrency), stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            data = json.loads(out)
            best = max(best, data["calls"] / data["seconds"])
        return best
    finally:
        server.terminate()
        await server.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local = await bench_local(root, args.calls)
        print(f"(a) local funcs.call      {local['calls_per_s']:>10.0f} calls/s   p50 {local['p50_us']:.1f} us"
              f"   p99 {local['p99_us']:.1f} us")
        print(f"    plain Lua call        {local['baseline_calls_per_s']:>10.0f} calls/s   p50 {local['baseline_p50_us']:.2f} us"
              "   (baseline: same state, no funcs)")
        server = await start_nats(root / "nats", port=free_port())
        try:
            raw = await bench_raw_nats(server.address, args.calls, args.concurrency)
            remote = await bench_remote(root, server.address, args.calls, args.concurrency)
        finally:
            await server.stop()
        print(f"(b) remote funcs.call     {remote:>10.0f} calls/s   ({args.concurrency} in flight, two node processes)")
        print(f"    raw nats-py req/reply {raw:>10.0f} calls/s   (baseline, same concurrency, two processes)")
        print(f"    ratio                 {remote / raw:>10.2f}")
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")


if __name__ == "__main__":
    asyncio.run(main())
