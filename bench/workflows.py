"""Workflow benchmarks: moonwire's Lua workflows against the same workflows written
directly against temporalio, measured in the same run on the same Temporal dev server
(tuned as the embedded one is).

  (a) end-to-end latency of a workflow that calls one trivial activity, p50 and p99
      (target: moonwire's p50 at most 1.1x raw's)
  (b) throughput of BURST such workflows started at once (target: at least 1.0 of raw's)
  (c) signal round trip: signal a waiting workflow, await its result

Both sides are started by the same temporalio client; the moonwire side runs the
node's Temporal worker (dynamic Lua workflow, the function as an activity), the raw
side a Python workflow and activity on an unsandboxed worker, like moonwire's. Both
workers run with the SDK's default settings (concurrent workflow tasks and activities,
sticky cache, workflow thread pool), in this one process. Each round runs (a), (b) and
(c) for both sides (interleaved in (a) and (c); in (a) and (b) the side that goes first
alternates); the figures are the medians of the rounds.

    python bench/workflows.py [--rounds 3] [--runs 100] [--burst 200] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys (each of a round also
with ``_rounds``, its value in every round): ``machine``; ``a.moonwire_p50_ms``,
``a.moonwire_p99_ms``, ``a.raw_p50_ms``, ``a.raw_p99_ms``, ``a.ratio_p50``, ``a.ratio_paired``
(the median of each moonwire run's time over the raw run's beside it);
``b.moonwire_per_s``, ``b.raw_per_s``, ``b.ratio``, ``b.moonwire_cpu_ms``, ``b.raw_cpu_ms``,
``b.cpu_ratio`` (this process's CPU time per workflow during the burst: all but the server's); ``c.moonwire_p50_ms``,
``c.moonwire_p99_ms``, ``c.raw_p50_ms``, ``c.raw_p99_ms``; and ``states.built`` (Lua
states the moonwire worker built, against ``states.runs`` workflow runs: the rest reused
one, ``node/workflows/_states.py``).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RawValue
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from _support import Figures, lua_workflows, parser, pct, run

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


SIDES = ("moonwire", "raw")


async def latency(runners: dict[str, Callable[[], Awaitable[None]]], runs: int) -> dict[str, list[float]]:
    """(a): ``runs`` workflows of each side one after another, interleaved so drift hits
    both alike, the side that goes first alternating (what one side's worker does after
    its workflow ends overlaps the start of the next, whichever side that is)."""
    found: dict[str, list[float]] = {side: [] for side in SIDES}
    for number in range(runs):
        for side in SIDES if number % 2 else SIDES[::-1]:
            start = time.perf_counter()
            await runners[side]()
            found[side].append((time.perf_counter() - start) * 1000)
    return found


async def throughput(runners: dict[str, Callable[[], Awaitable[None]]], burst: int, order: tuple[str, ...]
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """(b): workflows per second of ``burst`` started at once, side by side in ``order``;
    and this process's CPU time per workflow meanwhile (client, worker and the SDK's core:
    all but the server), which the machine's other load does not change."""
    rates, cpu = {}, {}
    for side in order:
        start, used = time.perf_counter(), time.process_time()
        await asyncio.gather(*(runners[side]() for _ in range(burst)))
        rates[side] = burst / (time.perf_counter() - start)
        cpu[side] = (time.process_time() - used) / burst * 1000
    return rates, cpu


async def signal_round_trip(client: Client, runs: int) -> dict[str, list[float]]:
    """(c): signal a waiting workflow of each side, until its result."""
    found: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(runs):
        lua = await client.start_workflow("b:waiter", id=f"lw-{uuid.uuid4()}", task_queue="bench-lua",
                                          result_type=RawValue)
        plain = await client.start_workflow(RawWaiter.run, id=f"rw-{uuid.uuid4()}", task_queue="bench-raw")
        await asyncio.sleep(0.05)  # let both reach their wait, so only the signal is timed
        start = time.perf_counter()
        await lua.signal("go")
        await lua.result()
        found["moonwire"].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        await plain.signal(RawWaiter.go, "go")
        await plain.result()
        found["raw"].append((time.perf_counter() - start) * 1000)
    return found


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    logging.basicConfig(level=logging.WARNING)
    rounds: dict[str, list[float]] = {}

    def keep(key: str, value: float) -> None:
        rounds.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        async with lua_workflows(Path(tmp), PROJECT) as (client, workflows):
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

            runners = {"moonwire": lua_one, "raw": raw_one}
            try:
                for _ in range(10):  # warm up both workers (and the server's caches)
                    await lua_one()
                    await raw_one()
                for number in range(args.rounds):
                    times = await latency(runners, args.runs)
                    for side in SIDES:
                        keep(f"a.{side}_p50_ms", pct(times[side], 0.5))
                        keep(f"a.{side}_p99_ms", pct(times[side], 0.99))
                    keep("a.ratio_p50", pct(times["moonwire"], 0.5) / pct(times["raw"], 0.5))
                    # Each moonwire run against the raw run beside it: steadier than the
                    # ratio of p50s when the machine's load drifts within a round.
                    keep("a.ratio_paired", statistics.median(m / r for m, r in zip(times["moonwire"], times["raw"])))
                    rates, cpu = await throughput(runners, args.burst, SIDES if number % 2 else SIDES[::-1])
                    for side in SIDES:
                        keep(f"b.{side}_per_s", rates[side])
                        keep(f"b.{side}_cpu_ms", cpu[side])
                    keep("b.ratio", rates["moonwire"] / rates["raw"])
                    keep("b.cpu_ratio", cpu["moonwire"] / cpu["raw"])
                    signals = await signal_round_trip(client, max(args.runs // 2, 10))
                    for side in SIDES:
                        keep(f"c.{side}_p50_ms", pct(signals[side], 0.5))
                        keep(f"c.{side}_p99_ms", pct(signals[side], 0.99))
                    print(f"round {number + 1}: (a) p50 {rounds['a.moonwire_p50_ms'][-1]:.1f} / "
                          f"{rounds['a.raw_p50_ms'][-1]:.1f} ms = {rounds['a.ratio_p50'][-1]:.2f}x   (b) "
                          f"{rates['moonwire']:.1f} / {rates['raw']:.1f} per s = {rounds['b.ratio'][-1]:.2f}",
                          flush=True)
            finally:
                await raw.shutdown()
                await raw_task
            context = workflows.hosts["b:worker"].context
            assert context is not None
            figures.add("states.built", context.states.built)
            figures.add("states.runs", 10 + args.rounds * (args.runs + args.burst + max(args.runs // 2, 10)))

    median = {key: figures.median(key, values) for key, values in rounds.items()}
    print(f"medians of {args.rounds} rounds (moonwire beside raw temporalio, same run):")
    print(f"(a) one-activity workflow, end to end ({args.runs} runs each)")
    for side in SIDES:
        print(f"    {side:<9} p50 {median[f'a.{side}_p50_ms']:7.1f} ms   p99 {median[f'a.{side}_p99_ms']:7.1f} ms")
    print(f"    moonwire / raw p50: {median['a.ratio_p50']:.2f}x (target <= 1.1x); "
          f"median of run-by-run ratios {median['a.ratio_paired']:.2f}x")
    print(f"(b) {args.burst} workflows started at once")
    for side in SIDES:
        print(f"    {side:<9} {median[f'b.{side}_per_s']:7.1f} workflows/s")
    print(f"    moonwire / raw: {median['b.ratio']:.2f} (target >= 1.0)")
    print(f"    CPU of this process per workflow: moonwire {median['b.moonwire_cpu_ms']:.2f} ms, raw "
          f"{median['b.raw_cpu_ms']:.2f} ms ({median['b.cpu_ratio']:.2f}x)")
    print("(c) signal into a waiting workflow until its result")
    for side in SIDES:
        print(f"    {side:<9} p50 {median[f'c.{side}_p50_ms']:7.1f} ms   p99 {median[f'c.{side}_p99_ms']:7.1f} ms")
    print(f"Lua states built: {figures.values['states.built']} for {figures.values['states.runs']} runs")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--rounds", type=int, default=3)
PARSER.add_argument("--runs", type=int, default=100)
PARSER.add_argument("--burst", type=int, default=200)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
