"""The instruction budget bounds one resume; these check that resumes cannot be chained
into a long hold of the event loop (issue 14, item 3): a unit whose requests are
answered at once (a local ``funcs.call``), and a host with many busy processes, both
give the loop a turn every ``lua.TURN`` seconds or so.

The assertion is on turns, not time: a probe task counts how often the loop ran it
while the Lua work went on. Before steps were cut into turns, the probe ran once or
not at all: the whole run was one step.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from support import LocalRuntime, process_project

ROUNDS = 20

# About 8M instructions: under the 10M budget, and longer than a turn (about 20 ms here;
# at half that, two rounds fit in one turn and the count sits right at ROUNDS // 2).
BUSY = "local function busy() local x = 0 for i = 1, 4000000 do x = x + i end return x end\n"

FUNCTIONS = """
- {name: noop, kind: function.lua, source: file://noop.lua}
- {name: chained, kind: function.lua, source: file://chained.lua, modules: [funcs]}
"""


class Probe:
    """Counts the event loop's turns while it runs."""

    def __init__(self) -> None:
        self.turns = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.turns += 1

    async def __aenter__(self) -> Probe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        self.turns = 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def project() -> dict[str, str]:
    files = process_project({
        # A process that chains busy resumes through local calls answered at once.
        "chain": BUSY + f"""
            local funcs = require("funcs")
            return {{ main = function()
              for _ = 1, {ROUNDS} do busy(); assert(funcs.call("app:noop")) end
              return "done"
            end }}""",
        # Many processes, each one busy resume, then done.
        "one": BUSY + "return { main = function() busy() return 'done' end }",
        # Spawns more monitored children than a mailbox holds, then collects their EXITs.
        # Its spawning loop is cut into turns, so children (on another host) run and
        # exit before it starts receiving: their EXITs must all wait for it.
        "collector": """
            return { main = function(n)
              for _ = 1, n do process.spawn_monitored("app:one_quick", "app:host") end
              local events, got = process.events(), 0
              for _ = 1, n do
                if events:receive().kind == process.event.EXIT then got = got + 1 end
              end
              return got
            end }""",
        "one_quick": "return { main = function() return true end }",
        "many": f"""
            return {{ main = function()
              for _ = 1, {ROUNDS} do process.spawn_monitored("app:one", "app:host") end
              local events = process.events()
              for _ = 1, {ROUNDS} do assert(events:receive().kind == process.event.EXIT) end
              return "done"
            end }}""",
    }, extra_yaml=FUNCTIONS)
    files["noop.lua"] = "return function() return true end"
    files["chained.lua"] = BUSY + f"""
        local funcs = require("funcs")
        return function()
          for _ = 1, {ROUNDS} do busy(); assert(funcs.call("app:noop")) end
          return "done"
        end"""
    return files


async def run_with_probe(tmp_path: Path, entry: str) -> tuple[Any, int]:
    async with LocalRuntime(tmp_path, project()) as runtime:
        async with Probe() as probe:
            outcome = await runtime.execute(entry, [])  # type: ignore[attr-defined]
        assert outcome.error is None, outcome.error
        return outcome.value, probe.turns


async def test_a_process_chaining_local_calls_gives_the_loop_turns(tmp_path: Path) -> None:
    value, turns = await run_with_probe(tmp_path, "app:chain")
    assert value == "done"
    assert turns >= ROUNDS // 2, turns


async def test_a_function_chaining_local_calls_gives_the_loop_turns(tmp_path: Path) -> None:
    value, turns = await run_with_probe(tmp_path, "app:chained")
    assert value == "done"
    assert turns >= ROUNDS // 2, turns


async def test_many_busy_processes_on_one_host_give_the_loop_turns(tmp_path: Path) -> None:
    value, turns = await run_with_probe(tmp_path, "app:many")
    assert value == "done"
    assert turns >= ROUNDS // 2, turns


async def test_a_process_that_monitors_more_children_than_its_mailbox_holds_gets_every_exit(tmp_path: Path) -> None:
    n = 12_000  # far over the default mailbox limit (4096)
    async with LocalRuntime(tmp_path, project()) as runtime:
        outcome = await asyncio.wait_for(runtime.execute("app:collector", [n]), 60)  # type: ignore[attr-defined]
    assert outcome.error is None and outcome.value == n, outcome
