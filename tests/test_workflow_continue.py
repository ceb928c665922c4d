"""Continue-as-new (wippy-modules §12.4): ``process.upgrade`` inside a workflow, against a
real Temporal dev server and real node processes. The PID stays, the history of each
run stays bounded, and nothing sent to the workflow is lost or delivered twice on the
way from one run to the next; a monitor sees one EXIT, at the end of the chain."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgpack
import nats
from temporalio.api.enums.v1 import EventType
from temporalio.api.enums.v1 import WorkflowTaskFailedCause
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from moonwire.node import ServerProcess, load_project, workflow_replayer
from moonwire.node.workflows._payloads import decode
from support import run_cli, write_project

ITERATIONS, EVERY, PACE = 10_000, 500, 250
"""The loop continues as new every EVERY iterations, and takes a message every PACE."""
RUNS = ITERATIONS // EVERY
SIGNALS = ITERATIONS // PACE
"""Every signal the senders send, and the messages the loop takes."""
POKES_AT_ONCE, POKE_AT = 3, (5, 10, 15)
"""The test's signals: some at once, one at each of these progress reports (sent while
the run that reported is closing: Temporal holds such a signal about a second, as it
does for a raw temporalio workflow, so a few make the point)."""
POKES = POKES_AT_ONCE + len(POKE_AT)
TICKS = SIGNALS - POKES - 2  # and a "done" from each sender
UNHANDLED_COMMAND = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
HISTORY_BOUND = 150
"""Events a run may have: without continue-as-new the one run would hold every signal
and a workflow task per wait for one."""


def continue_project(temporal: ServerProcess, queue: str) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: temporal, kind: temporal.client, address: "{temporal.address}",
                  search_attributes: {{MwCustomer: Keyword, MwPriority: Int}}}}
              - {{name: worker, kind: temporal.worker, client: temporal, task_queue: {queue}}}
              - {{name: other, kind: temporal.worker, client: temporal, task_queue: {queue}-other}}
              - {{name: host, kind: process.host}}
              - {{name: loop, kind: workflow.lua, source: file://loop.lua, modules: [workflow]}}
              - {{name: first, kind: workflow.lua, source: file://first.lua}}
              - name: second
                kind: workflow.lua
                source: file://second.lua
                modules: [workflow, ctx]
                meta: {{temporal: {{workflow: {{name: MwSecond}}}}}}
              - name: marked
                kind: workflow.lua
                source: file://marked.lua
                modules: [workflow]
                meta: {{temporal: {{workflow: {{name: MwMarked}}}}}}
              - name: elsewhere
                kind: workflow.lua
                source: file://second.lua
                modules: [workflow, ctx]
                meta: {{temporal: {{workflow: {{worker: other}}}}}}
              - {{name: driver, kind: process.lua, source: file://driver.lua, method: main}}
              - {{name: chain, kind: process.lua, source: file://chain.lua, method: main}}
              - {{name: marking, kind: process.lua, source: file://marking.lua, method: main}}
              - {{name: parting, kind: workflow.lua, source: file://parting.lua}}
              - {{name: farewell, kind: process.lua, source: file://farewell.lua, method: main, modules: [time]}}
        """,
        # 10,000 iterations of pure Lua; each 250th takes one message (waiting for it when
        # none is there: 40 in all, every one the senders send); each 500th tells the
        # driver and continues as new with the state.
        "loop.lua": f"""
            local workflow = require("workflow")
            return function(state)
              local info = workflow.info()
              state.runs[#state.runs + 1] = {{ run_id = info.run_id, pid = process.pid() }}
              local inbox = process.inbox()
              while state.iter < {ITERATIONS} do
                state.iter = state.iter + 1
                state.acc = (state.acc * 31 + state.iter) % 1000003
                if state.iter % {PACE} == 0 then
                  local msg = inbox:receive()
                  local list = state.got[msg:topic()]
                  list[#list + 1] = msg:payload():data()
                end
                if state.iter % {EVERY} == 0 and state.iter < {ITERATIONS} then
                  process.send(state.driver, "progress", state.iter)
                  local _, err = process.upgrade(nil, state)
                  return nil, err  -- only when the upgrade failed
                end
              end
              return state
            end
        """,
        # Spawns the loop monitored and signals it, all at once; passes each progress
        # report on to the test's observer (the test signals too).
        "driver.lua": f"""
            return {{ main = function(id, observer)
              local state = {{ iter = 0, acc = 1, runs = {{}}, got = {{ tick = {{}}, poke = {{}}, done = {{}} }},
                              driver = process.pid() }}
              local pid, err = process.with_name(id):spawn_monitored("app:loop", "app:worker", state)
              if not pid then return nil, err end
              process.send(observer, "started", pid)
              for i = 1, {TICKS} do process.send(pid, "tick", i) end
              process.send(pid, "done", "driver")
              local progress, inbox, events = {{}}, process.inbox(), process.events()
              while true do
                local r = channel.select({{ inbox:case_receive(), events:case_receive() }})
                if r.channel == events then
                  local ev = r.value
                  return {{ pid = pid, progress = progress, kind = ev.kind, from = ev.from,
                           result = ev.result.value, error = ev.result.error and tostring(ev.result.error) }}
                end
                progress[#progress + 1] = r.value:payload():data()
                process.send(observer, "progress", #progress)
              end
            end }}
        """,
        # Continues as another type; carries startup messages and context values.
        "first.lua": """
            return function(n)
              local none, missing = process.upgrade("app:nope", n)
              local _, elsewhere = process.upgrade("app:elsewhere", n)
              local _, big = process.upgrade(nil, string.rep("x", 2 * 1024 * 1024))
              process.upgrade("app:second", n + 1, {
                none = none == nil, missing = missing:kind() .. " " .. missing:message(),
                elsewhere = elsewhere:kind(), big = big:kind() .. " " .. big:message() })
            end
        """,
        "second.lua": """
            local workflow = require("workflow")
            return function(n, errs)
              local inbox = process.inbox()
              local a, b = inbox:receive(), inbox:receive()
              return { n = n, errs = errs, type = workflow.info().workflow_type, pid = process.pid(),
                       got = { a:topic() .. "=" .. a:payload():data(), b:topic() .. "=" .. b:payload():data() },
                       ctx = ctx.get("k") }
            end
        """,
        # Sets search attributes and memo in its first run, then continues as new; the
        # last run sees a memo value no JSON holds, so it is msgpack.
        "marked.lua": """
            local workflow = require("workflow")
            return function(run)
              if run == 1 then
                local ok, err = workflow.attrs({ search = { MwPriority = 7 },
                                                 memo = { note = { by = "run 1" }, odd = "\\xff" } })
                if not ok then return nil, err end
                process.upgrade(nil, 2)
              end
              return { run = run, type = workflow.info().workflow_type }
            end
        """,
        "marking.lua": """
            return { main = function(customer)
              local pid, err = process.with_options({ ["workflow.search_attributes"] = { MwCustomer = customer },
                                                      ["workflow.memo"] = { team = "blue" } })
                                      :spawn_monitored("app:marked", "app:worker", 1)
              if not pid then return nil, err end
              local ev = process.events():receive()
              return { pid = pid, result = ev.result.value, error = ev.result.error and tostring(ev.result.error) }
            end }
        """,
        # Sends and returns at once: the send must still leave (the run winds down first).
        "parting.lua": """
            return function(to)
              process.send(to, "bye", "from the workflow")
              return "done"
            end
        """,
        "farewell.lua": """
            return { main = function()
              local pid = process.spawn_monitored("app:parting", "app:worker", process.pid())
              local inbox, events, give_up = process.inbox(), process.events(), time.after("20s")
              local got = {}
              while got.bye == nil or got.exit == nil do
                local r = channel.select({ inbox:case_receive(), events:case_receive(), give_up:case_receive() })
                if r.channel == give_up then break end
                if r.channel == events then got.exit = r.value.result.value else got.bye = r.value:payload():data() end
              end
              return got
            end }
        """,
        "chain.lua": """
            return { main = function()
              local pid, err = process.with_context({ k = "v" }):with_message("hello", 1)
                                      :spawn_monitored("app:first", "app:worker", 41)
              if not pid then return nil, err end
              process.send(pid, "world", 2)
              local events = process.events()
              local ev = events:receive()
              return { pid = pid, kind = ev.kind, from = ev.from, result = ev.result.value,
                       error = ev.result.error and tostring(ev.result.error) }
            end }
        """,
    }


async def run_histories(client: Client, workflow_id: str, run_ids: list[str]) -> list[list]:
    return [(await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()).events
            for run_id in run_ids]


async def test_10000_iterations_continuing_as_new_lose_no_signal(tmp_path: Path, nats_server: ServerProcess,
                                                                 temporal_server: ServerProcess, spawn_node) -> None:
    project = write_project(tmp_path / "wf", continue_project(temporal_server, f"can-{time.monotonic_ns()}"))
    workflow_id = f"loop-{time.monotonic_ns()}"
    client = await Client.connect(temporal_server.address)
    handle = client.get_workflow_handle(workflow_id)
    nc = await nats.connect(nats_server.address)
    observed: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    async def observe(msg) -> None:
        await observed.put((msg.headers["Mw-Topic"], msgpack.unpackb(msg.data)[0]))

    await nc.subscribe("mw.p.obs.>", cb=observe)
    driver = asyncio.create_task(run_cli("run", str(project), "--node", "can1", "--nats", nats_server.address,
                                         "-x", "app:driver", workflow_id, json.dumps("{obs@test|1}"), timeout=90))
    try:
        # A second sender, straight through Temporal: a few signals at first, then one at
        # some progress reports, so they arrive while a run is continuing as new.
        poked = 0

        async def poke(n: int) -> None:
            nonlocal poked
            for _ in range(n):
                poked += 1
                await handle.signal("poke", poked)  # plain JSON, no moonwire header

        assert await asyncio.wait_for(observed.get(), 60) == ("started", f"{{@app:worker|{workflow_id}}}")
        await poke(POKES_AT_ONCE)
        for report in range(1, RUNS):
            assert await asyncio.wait_for(observed.get(), 60) == ("progress", report)
            if report in POKE_AT:
                await poke(1)
        await handle.signal("done", "test")
    finally:
        await nc.close()

    code, out, err = await driver
    assert code == 0, err
    got = json.loads(out)
    assert got["kind"] == "pid.exit" and got["from"] == got["pid"] and "error" not in got  # one EXIT: the end
    state = got["result"]
    assert state["iter"] == ITERATIONS
    assert got["progress"] == list(range(EVERY, ITERATIONS, EVERY))  # each send made just before upgrading arrived
    # Every signal exactly once, each sender's in the order sent, across 20 runs.
    assert state["got"]["tick"] == list(range(1, TICKS + 1))
    assert state["got"]["poke"] == list(range(1, POKES + 1))
    assert sorted(state["got"]["done"]) == ["driver", "test"]
    runs = state["runs"]
    assert len(runs) == RUNS and len({r["run_id"] for r in runs}) == RUNS
    assert {r["pid"] for r in runs} == {got["pid"]} == {f"{{@app:worker|{workflow_id}}}"}

    histories = await run_histories(client, workflow_id, [r["run_id"] for r in runs])
    lengths = [len(events) for events in histories]
    signaled = sum(1 for events in histories for e in events
                   if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    in_last_task = sum(1 for events in histories for e in events
                       if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED and
                       e.workflow_task_failed_event_attributes.cause == UNHANDLED_COMMAND)
    ends = [events[-1].event_type for events in histories]
    assert ends[:-1] == [EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW] * (RUNS - 1)
    assert ends[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    assert max(lengths) < HISTORY_BOUND, lengths
    delivered = sum(len(received) for received in state["got"].values())
    assert signaled == SIGNALS == delivered
    print(f"\ncontinue-as-new: {RUNS} runs, history length per run min {min(lengths)} max {max(lengths)} "
          f"(sum {sum(lengths)}); signals sent {SIGNALS}, recorded {signaled}, delivered {delivered}; "
          f"{in_last_task} continue-as-new completions refused for signals arriving in their task")

    # The recorded runs replay against the code (the Replayer path).
    replayer = workflow_replayer(load_project(project))
    for run_id in (runs[0]["run_id"], runs[RUNS // 2]["run_id"], runs[-1]["run_id"]):
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, result.replay_failure


async def run_entry(tmp_path: Path, nats_server: ServerProcess, temporal_server: ServerProcess, node: str,
                    entry: str, *args: str) -> Any:
    """Run ``entry`` of the project (``run -x``) on a node of its own: what it returned."""
    project = write_project(tmp_path / "wf", continue_project(temporal_server, f"can-{time.monotonic_ns()}"))
    code, out, err = await run_cli("run", str(project), "--node", node, "--nats", nats_server.address,
                                   "-x", entry, *args)
    assert code == 0, err
    return json.loads(out)


async def test_continue_as_another_type_carries_messages_and_context(tmp_path: Path, nats_server: ServerProcess,
                                                                     temporal_server: ServerProcess) -> None:
    got = await run_entry(tmp_path, nats_server, temporal_server, "can3", "app:chain")
    assert got["kind"] == "pid.exit" and got["from"] == got["pid"] and "error" not in got
    result = got["result"]
    # Continued as entry app:second, whose Temporal type is MwSecond (meta.temporal.workflow.name).
    assert result["type"] == "MwSecond" and result["n"] == 42 and result["pid"] == got["pid"]
    # The first run read nothing: its startup message and the send that followed moved on,
    # in order, in the next run's moonwire header with the context values.
    assert result["got"] == ["hello=1", "world=2"]
    assert result["ctx"] == "v"
    errs = result["errs"]
    assert errs["none"] is True
    assert errs["missing"].startswith("NotFound upgrade: no workflow.lua entry app:nope")
    assert errs["elsewhere"] == "NotFound"  # registered with another worker
    assert errs["big"].startswith("Invalid upgrade: the next run's input would be")


async def test_memo_and_search_attributes_carry_over(tmp_path: Path, nats_server: ServerProcess,
                                                     temporal_server: ServerProcess) -> None:
    customer = f"c-{time.monotonic_ns()}"
    got = await run_entry(tmp_path, nats_server, temporal_server, "can4", "app:marking", json.dumps(customer))
    assert got["result"] == {"run": 2, "type": "MwMarked"}, got  # upgrade(nil): its own type name, kept
    client = await Client.connect(temporal_server.address)
    workflow_id = got["pid"][got["pid"].index("|") + 1:-1]
    last = await client.get_workflow_handle(workflow_id).describe()
    assert last.raw_info.execution.run_id != last.raw_info.first_run_id  # the run that continued
    # Set at start, and by workflow.attrs in the first run: typed, in the last run.
    attributes = last.typed_search_attributes
    assert attributes.get(SearchAttributeKey.for_keyword("MwCustomer")) == customer
    assert attributes.get(SearchAttributeKey.for_int("MwPriority")) == 7
    memo = last.raw_info.memo.fields
    assert (memo["team"].metadata["encoding"], memo["team"].data) == (b"json/plain", b'"blue"')
    assert (memo["note"].metadata["encoding"], memo["note"].data) == (b"json/plain", b'{"by":"run 1"}')
    assert memo["odd"].metadata["encoding"] == b"binary/msgpack" and decode(memo["odd"]) == b"\xff"


async def test_a_send_just_before_returning_leaves(tmp_path: Path, nats_server: ServerProcess,
                                                  temporal_server: ServerProcess) -> None:
    got = await run_entry(tmp_path, nats_server, temporal_server, "can5", "app:farewell")
    assert got == {"bye": "from the workflow", "exit": "done"}


def test_messages_arriving_while_a_run_winds_down_are_carried_only_while_the_next_input_has_room() -> None:
    """A signal that reaches a closing run is carried to the next one, unless it would
    take that run's input over MAX_INPUT (Temporal would then fail its first task again
    and again): it is refused, as a full inbox refuses one, and the rest still fit."""
    from moonwire.lua import Message
    from moonwire.node.workflows._continue import MAX_INPUT, Continuation, input_size
    from moonwire.node.workflows._workflow_codec import WorkflowInput

    started = WorkflowInput(["arg"], {"user": "u"}, [])
    plan = Continuation("app:loop", [1], started)
    plan.size = input_size(plan.next_input())
    big = Message("big", ["x" * (MAX_INPUT // 2)], "{@w|sender}")
    assert plan.carry(big)
    assert plan.carry(Message("small", [1], "{@w|sender}"))
    assert not plan.carry(big)  # a second one would not fit
    assert [m.topic for m in plan.messages] == ["big", "small"]
    assert input_size(plan.next_input()) <= plan.size <= MAX_INPUT  # the running count never underestimates
