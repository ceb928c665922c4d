"""Workflow runs reuse Lua states (node/workflows/_states.py): a reused state carries
nothing from one run to the next, and draws exactly what a new state would, so a run
replays the same on either."""

from __future__ import annotations

import random
import textwrap
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.common import RawValue

from moonwire.broker import Subjects
from moonwire.lua import Limits, LuaCode, LuaState, Outcome, Replay, Unit
from moonwire.node import ServerProcess, load_project, workflow_replayer
from moonwire.node.functions._functions import Functions
from moonwire.node.workflows._payloads import decode
from moonwire.node.workflows._states import WorkflowStates
from moonwire.node.workflows._workflows import Workflows
from support import write_project

# What a run can draw and leave behind: globals, a module's table, math.random, the
# clock, uuids. Returns what it found of an earlier run, and what it drew.
RUN = """
local uuid = require("uuid")
local time = require("time")
return function(tag)
  local found = {none = true, global = leftover, module_field = string.leftover, math_field = math.leftover}
  leftover = tag
  pcall(function() string.leftover = tag end)
  pcall(function() math.leftover = tag end)
  return {found = found, draws = {math.random(1, 1000000000), math.random(1, 1000000000)},
          now = time.now():unix(), os_time = os.time(), uuid = uuid.v4()}
end
"""


async def run_once(state: LuaState, tag: str) -> Outcome:
    code = LuaCode(id="t:run", source=textwrap.dedent(RUN).encode(), chunkname="run.lua",
                   modules=frozenset({"uuid", "time"}))
    unit = Unit(state, "t:run")
    return await unit.run(state.instantiate(code), [tag])


def replay(seed: int, now_s: int) -> Replay:
    return Replay(now_ns=lambda: now_s * 1_000_000_000, random=random.Random(seed))


async def test_a_rebound_state_carries_nothing_and_draws_what_a_new_state_would() -> None:
    fresh = await run_once(LuaState(replay=replay(7, 1_700_000_000)), "second")

    reused = LuaState(replay=replay(3, 1_600_000_000))
    first = await run_once(reused, "first")
    assert first.ok and first.value["found"] == {"none": True}
    reused.rebind(replay(7, 1_700_000_000))
    second = await run_once(reused, "second")

    assert second.ok and second.value["found"] == {"none": True}  # nothing of the first run
    assert second.value == fresh.value  # the same draws, clock and uuid as a new state
    assert second.value["now"] == second.value["os_time"] == 1_700_000_000
    assert second.value["draws"] != first.value["draws"]


def test_only_a_workflow_state_can_be_rebound() -> None:
    try:
        LuaState().rebind(replay(1, 0))  # its string hashes are seeded at random: pairs() would not replay
    except ValueError:
        return
    raise AssertionError("a process state was rebound")


async def test_the_pool_gives_back_only_states_that_ended_whole() -> None:
    states = WorkflowStates(idle=2)
    limits = Limits()
    taken = [states.take(limits, replay(n, 0)) for n in range(4)]
    assert states.built == 4 and len(states) == 0
    taken[1].poisoned = True  # ran out of memory once
    taken[2].violation = "os.clock"  # refused: a fixed deploy resumes it on a new state
    for state in taken:
        states.give(state)
    assert len(states) == 2  # the two sound ones, within the idle bound
    again = states.take(limits, replay(9, 0))
    assert again in (taken[0], taken[3]) and states.built == 4
    assert states.take(Limits(memory=None), replay(9, 0)) not in taken  # other limits: another state
    big = states.take(limits, replay(1, 0))
    big.runtime.execute(b"hold = {} for i = 1, 200000 do hold[i] = {i} end")  # still held after a collection
    states.give(big)
    assert big not in [states.take(limits, replay(1, 0)) for _ in range(2)]


PROJECT = {
    "_index.yaml": """
        namespace: t
        entries:
          - {name: temporal, kind: temporal.client, address: "ADDRESS"}
          - {name: worker, kind: temporal.worker, client: temporal, task_queue: QUEUE}
          - {name: echo0, kind: function.lua, source: file://echo.lua}
          - {name: echo1, kind: function.lua, source: file://echo.lua}
          - {name: echo2, kind: function.lua, source: file://echo.lua}
          - {name: echo3, kind: function.lua, source: file://echo.lua}
          - {name: run, kind: workflow.lua, source: file://run.lua, modules: [uuid, time, funcs, workflow]}
    """,
    "echo.lua": "return function(value) return value end",
}
# As RUN, with activities named by its draws (a replay that drew otherwise would issue
# other commands than its history holds, and fail), and the id `workflow.info` answers.
PROJECT["run.lua"] = RUN.replace('local time = require("time")', """local time = require("time")
local funcs = require("funcs")
local workflow = require("workflow")""").replace("  return {found", """  for _, draw in ipairs({math.random(0, 3), math.random(0, 3), math.random(0, 3)}) do
    funcs.call("t:echo" .. draw, draw)
  end
  return {id = workflow.info().workflow_id, pid = workflow.info().pid, found""")


async def test_runs_on_one_worker_share_a_state_and_replay_on_a_new_one(tmp_path: Path,
                                                                        temporal_server: ServerProcess) -> None:
    queue = f"states-{uuid.uuid4().hex[:8]}"
    files = {name: text.replace("ADDRESS", temporal_server.address).replace("QUEUE", queue)
             for name, text in PROJECT.items()}
    project = load_project(write_project(tmp_path / "p", files))
    functions = Functions(project, Subjects())
    workflows = Workflows("t1", project, Subjects(), functions, functions.code)
    await workflows.start(None, lambda dest, message: None)
    try:
        client = await Client.connect(temporal_server.address)
        results, histories = [], []
        for tag in ("first", "second", "third"):
            handle = await client.start_workflow("t:run", tag, id=f"{queue}-{tag}", task_queue=queue,
                                                 result_type=RawValue)
            results.append(decode(await handle.result()))
            histories.append(await handle.fetch_history())
        context = workflows.hosts["t:worker"].context
        assert context is not None
        assert context.states.built == 1  # one state served all three runs, one after another
    finally:
        await workflows.stop()
    assert [r["found"] for r in results] == [{"none": True}] * 3
    ids = [f"{queue}-{tag}" for tag in ("first", "second", "third")]
    assert [(r["id"], r["pid"]) for r in results] == [(i, f"{{@t:worker|{i}}}") for i in ids]  # each its own
    # Each run replays on a new state, then (in the other order) on reused ones, drawing
    # what it drew on the worker's reused state.
    for history in histories:
        replayed = await workflow_replayer(project).replay_workflow(history, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, replayed.replay_failure
    replayer = workflow_replayer(project)
    for history in reversed(histories):
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, replayed.replay_failure


# Two coroutines take turns on a buffered channel; where each yields to the other
# depends on the state's preemption count. `warm` receives move that count first.
INTERLEAVE = """
return function(warm)
  local ch = channel.new(1000)
  for i = 1, warm do ch:send(i) end
  for _ = 1, warm do ch:receive() end
  local log, done, buf = {}, channel.new(2), channel.new(1000)
  for i = 1, 200 do buf:send(i) end
  for _, name in ipairs({"a", "b"}) do
    coroutine.spawn(function()
      for _ = 1, 100 do buf:receive() log[#log + 1] = name end
      done:send(true)
    end)
  end
  done:receive() done:receive()
  return table.concat(log)
end
"""


async def interleave(state: LuaState, warm: int) -> Outcome:
    code = LuaCode(id="t:interleave", source=textwrap.dedent(INTERLEAVE).encode(), chunkname="interleave.lua")
    unit = Unit(state, "t:interleave")
    return await unit.run(state.instantiate(code), [warm])


async def test_a_rebound_state_interleaves_coroutines_as_a_new_state_would() -> None:
    # The preemption count belongs to the state: left where the last run left it, a
    # reused state yields at other points than a new one, and the replay diverges.
    fresh = await interleave(LuaState(replay=replay(7, 1_700_000_000)), 0)
    reused = LuaState(replay=replay(3, 1_600_000_000))
    assert (await interleave(reused, 30)).ok
    reused.rebind(replay(7, 1_700_000_000))
    second = await interleave(reused, 0)
    assert fresh.ok and second.ok, (fresh.error, second.error)
    assert second.value == fresh.value
