"""Workflow benchmarks: moonwire's Lua workflows against the same workflows written
directly against temporalio, measured in the same run on the same Temporal dev server
(tuned as the embedded one is).

  (a) end-to-end latency of a workflow that calls one trivial activity, p50 and p99
  (b) throughput of 200 such workflows started at once
  (c) signal round trip: signal a waiting workflow, await its result

Both sides are started by the same temporalio client; the moonwire side runs the
node's Temporal worker (dynamic Lua workflow, the function as an activity), the raw
side a Python workflow and activity on an unsandboxed worker, like moonwire's.

    python bench/workflows.py [--runs 100] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.common import RawValue
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from _support import lua_workflows, pct

PROJECT = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: temporal, kind: temporal.client, address: "ADDRESS"}
          - {name: worker, kind: temporal.worker, client: temporal, task_queue: bench-lua}
          - {name: noop, kind: function.lua, source: file://noop.lua}
          - {name: one, kind: workflow.lua, source: file://one.lua, modules: [funcs]}
          - {name: waiter, kind: workflow.lua, source: file://waiter.lua}
    """,
    "noop.lua": "return function() return 1 end",
    "one.lua": "local funcs = require('funcs') return function() return funcs.call('b:noop') end",
    "waiter.lua": "return function() return process.inbox():receive():topic() end",
}


@activity.defn
async def raw_noop() -> int:
    return 1


@workflow.defn
class RawOne:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity(raw_noop, start_to_close_timeout=timedelta(minutes=10))


@workflow.defn
class RawWaiter:
    def __init__(self) -> None:
        self.topic: str | None = None

    @workflow.signal
    def go(self, topic: str) -> None:
        self.topic = topic

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.topic is not None)
        assert self.topic is not None
        return self.topic


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        async with lua_workflows(Path(tmp), PROJECT) as (client, _):
            # Unsandboxed, as moonwire's Lua workflow is: with the SDK's sandbox, 100 raw
            # workflows at once took over 5 s per task on a 2-core machine.
            raw = Worker(client, task_queue="bench-raw", workflows=[RawOne, RawWaiter], activities=[raw_noop],
                         workflow_runner=UnsandboxedWorkflowRunner())
            raw_task = asyncio.create_task(raw.run())
            # A plain client starts and signals the Lua workflows: no arguments, no moonwire header.
            async def lua_one() -> None:
                await client.execute_workflow("b:one", id=f"l-{uuid.uuid4()}", task_queue="bench-lua",
                                              result_type=RawValue)

            async def raw_one() -> None:
                await client.execute_workflow(RawOne.run, id=f"r-{uuid.uuid4()}", task_queue="bench-raw")

            for _ in range(10):  # warm up both workers (and the server's caches)
                await lua_one()
                await raw_one()

            latency: dict[str, list[float]] = {"moonwire": [], "raw temporalio": []}
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                for name, run in (("moonwire", lua_one), ("raw temporalio", raw_one)):
                    start = time.perf_counter()
                    await run()
                    latency[name].append((time.perf_counter() - start) * 1000)
            print(f"(a) one-activity workflow, end to end ({args.runs} runs each)")
            for name, values in latency.items():
                print(f"    {name:<16} p50 {pct(values, 0.5):7.1f} ms   p99 {pct(values, 0.99):7.1f} ms")
            ratio = pct(latency["moonwire"], 0.5) / pct(latency["raw temporalio"], 0.5)
            print(f"    moonwire / raw p50: {ratio:.2f}x (target <= 1.3x)")

            print(f"(b) {args.burst} workflows started at once")
            rates = {}
            for name, run in (("raw temporalio", raw_one), ("moonwire", lua_one)):
                start = time.perf_counter()
                await asyncio.gather(*(run() for _ in range(args.burst)))
                rates[name] = args.burst / (time.perf_counter() - start)
                print(f"    {name:<16} {rates[name]:7.1f} workflows/s")
            print(f"    moonwire / raw: {rates['moonwire'] / rates['raw temporalio']:.2f} (target >= 0.7)")

            signal_rt: dict[str, list[float]] = {"moonwire": [], "raw temporalio": []}
            for _ in range(max(args.runs // 2, 10)):
                lua = await client.start_workflow("b:waiter", id=f"lw-{uuid.uuid4()}",
                                                  task_queue="bench-lua", result_type=RawValue)
                plain = await client.start_workflow(RawWaiter.run, id=f"rw-{uuid.uuid4()}", task_queue="bench-raw")
                await asyncio.sleep(0.05)  # let both reach their wait, so only the signal is timed
                start = time.perf_counter()
                await lua.signal("go")
                await lua.result()
                signal_rt["moonwire"].append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                await plain.signal(RawWaiter.go, "go")
                await plain.result()
                signal_rt["raw temporalio"].append((time.perf_counter() - start) * 1000)
            print("(c) signal into a waiting workflow until its result")
            for name, values in signal_rt.items():
                print(f"    {name:<16} p50 {pct(values, 0.5):7.1f} ms   p99 {pct(values, 0.99):7.1f} ms")

            await raw.shutdown()
            await raw_task


if __name__ == "__main__":
    asyncio.run(main())
