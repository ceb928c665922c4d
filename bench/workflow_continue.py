"""Continue-as-new: history length per run, and signals sent against signals delivered,
for a Lua workflow that loops and is signalled throughout, with continue-as-new every
EVERY iterations and (the baseline, in the same run, on the same server) without.

The loop runs ITERATIONS iterations of pure Lua and takes one message every PACE
(waiting when none is there); two senders signal it through a Temporal client, each
as fast as it can, each numbering its signals, so the loop ends after taking every one
of them. The workflow's result lists what it took, in order.

Also printed: the latency of each signal RPC. One that reaches the workflow while a
run is closing waits about a second at the server; a raw temporalio workflow that
continues as new the same way measured the same (~1 s each, 10 s for 100 signals over
17 runs), so it is Temporal's, and it is what the continue-as-new variant's time is.

    python bench/workflow_continue.py [--iterations 10000] [--every 500] [--pace 100] [--rounds 1]
                                      [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys, for ``continue`` (the
variant that continues as new every EVERY iterations) and ``never`` (the baseline); each
number is the median of the rounds (and is also under ``<key>_rounds``): ``machine``;
``<variant>.runs`` (runs the loop took), ``<variant>.history_min``, ``.history_median``,
``.history_max``, ``.history_total`` (events per run, and in all runs),
``<variant>.signals_sent``, ``.signals_recorded``, ``.signals_delivered``,
``<variant>.in_order`` (every round delivered each sender's signals in order),
``<variant>.refused`` (closings refused for a late signal), ``<variant>.seconds``,
``<variant>.signal_p50_ms``, ``.signal_max_ms``, ``.slow_signals`` (signal RPCs over 500 ms).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client
from temporalio.common import RawValue

from moonwire.node.workflows._payloads import decode

from _support import Figures, lua_workflows, parser, pct, run

PROJECT = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: temporal, kind: temporal.client, address: "ADDRESS"}
          - {name: worker, kind: temporal.worker, client: temporal, task_queue: bench-can}
          - {name: loop, kind: workflow.lua, source: file://loop.lua, modules: [workflow]}
    """,
    "loop.lua": """
        local workflow = require("workflow")
        return function(state)
          state.runs = state.runs + 1
          local inbox = process.inbox()
          while state.iter < state.iterations do
            state.iter = state.iter + 1
            state.acc = (state.acc * 31 + state.iter) % 1000003
            if state.iter % state.pace == 0 then
              local msg = inbox:receive()
              local list = state.got[msg:topic()]
              list[#list + 1] = msg:payload():data()
            end
            if state.iter % state.every == 0 and state.iter < state.iterations then
              local _, err = process.upgrade(nil, state)
              return nil, err
            end
          end
          return state
        end
    """,
}

REFUSED = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND


async def run_once(client: Client, iterations: int, every: int, pace: int) -> dict[str, Any]:
    signals = iterations // pace
    counts = {"tick": signals // 2 - 1, "poke": signals - signals // 2 - 1}
    state = {"iterations": iterations, "every": every, "pace": pace, "iter": 0, "acc": 1, "runs": 0,
             "got": {"tick": [], "poke": [], "done": []}}
    workflow_id = f"can-{uuid.uuid4()}"
    start = time.perf_counter()
    # A plain Temporal client: the state goes as JSON, the signals carry no sender.
    handle = await client.start_workflow("b:loop", state, id=workflow_id, task_queue="bench-can",
                                         result_type=RawValue)

    latencies: list[float] = []

    async def sender(topic: str) -> None:
        for n in range(1, counts[topic] + 1):
            sent = time.perf_counter()
            await handle.signal(topic, n)
            latencies.append((time.perf_counter() - sent) * 1000)
        await handle.signal("done", topic)

    await asyncio.gather(sender("tick"), sender("poke"))
    result = decode(await handle.result())
    elapsed = time.perf_counter() - start

    lengths: list[int] = []
    recorded = refused = 0
    run_id = handle.first_execution_run_id
    while run_id:  # follow the chain from the first run: each continued run names the next
        events = (await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()).events
        lengths.append(len(events))
        recorded += sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in events)
        refused += sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
                       and e.workflow_task_failed_event_attributes.cause == REFUSED for e in events)
        last = events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW else None)
    got = result["got"]
    in_order = all(got[topic] == list(range(1, counts[topic] + 1)) for topic in counts)
    return {"runs": result["runs"], "history_min": min(lengths), "history_median": statistics.median(lengths),
            "history_max": max(lengths), "history_total": sum(lengths), "signals_sent": signals,
            "signals_recorded": recorded, "signals_delivered": sum(len(v) for v in got.values()),
            "in_order": in_order, "refused": refused, "seconds": elapsed, "signal_p50_ms": pct(latencies, 0.5),
            "signal_max_ms": max(latencies), "slow_signals": sum(ms > 500 for ms in latencies)}


def show(name: str, r: dict[str, Any]) -> None:
    print(f"    {name:<22} runs {r['runs']:>3}   history per run: min {r['history_min']:>4} median "
          f"{r['history_median']:>6.0f} max {r['history_max']:>4} (all runs {r['history_total']:>5})   "
          f"signals sent {r['signals_sent']} recorded {r['signals_recorded']} delivered {r['signals_delivered']} "
          f"(each sender's in order: {r['in_order']})   {r['refused']} closings refused for a late signal   "
          f"{r['seconds']:.1f} s")
    print(f"    {'':<22} signal RPC p50 {r['signal_p50_ms']:.1f} ms, max {r['signal_max_ms']:.0f} ms, "
          f"{r['slow_signals']} over 500 ms")


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    logging.basicConfig(level=logging.WARNING)
    variants = {"continue": args.every, "never": args.iterations + 1}
    found: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as tmp:
        # As the tests' server: runs of one workflow may follow each other within a second.
        async with lua_workflows(Path(tmp), PROJECT, server_args=(
                "--dynamic-config-value", 'history.workflowIdReuseMinimalInterval="0s"')) as (client, _):
            print(f"{args.iterations} iterations, a message taken every {args.pace} "
                  f"({args.iterations // args.pace} signals from two senders)")
            for number in range(args.rounds):
                for variant, every in variants.items():
                    found[variant].append(await run_once(client, args.iterations, every, args.pace))
                    name = f"continue every {args.every}" if variant == "continue" else "never (baseline)"
                    show(f"{name}" + (f", round {number + 1}" if args.rounds > 1 else ""), found[variant][-1])
    for variant, results in found.items():
        for key in results[0]:
            if key == "in_order":
                figures.add(f"{variant}.in_order", all(r["in_order"] for r in results))
            else:
                figures.median(f"{variant}.{key}", [r[key] for r in results])
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--iterations", type=int, default=10_000)
PARSER.add_argument("--every", type=int, default=500)
PARSER.add_argument("--pace", type=int, default=100)
PARSER.add_argument("--rounds", type=int, default=1)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
