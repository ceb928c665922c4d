"""A Python object handed to Lua stays itself.

lupa 2.8 can hand Lua another live Python object than the one it was given (lupa issue
#294): its bookkeeping of wrappers races Lua's collector, on Lua 5.5 and, once the timing
is arranged, on 5.4. moonwire keeps lupa's table of wrappers strong and lets dead
wrappers go only inside one full collection (lua/_core.lua, release_wrappers; the
reasons in docs/architecture.md, "The Lua runtime"). bench/identity.py is the long probe.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lupa.lua55 as lupa
import pytest

from moonwire.lua import Limits, LuaState

from support import run_lua

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import identity  # noqa: E402  (bench/identity.py: the probe's project and lupa's table's health)


class _Thing:
    def __init__(self, n: int) -> None:
        self.n = n


# The race, step by step, in a state's raw runtime: wrappers are dropped and the
# collector stepped until their slots are cleared with their finalisers still due; an
# object handed over then can take such a slot; `release` runs those finalisers (the
# late one frees the slot under it); the next object handed over takes the slot; and
# handing the first object over again gives Lua the second.
RACE = b"""
local new, get, name, release = ...
local T = debug.getregistry().LUPA_PYTHON_REFERENCES_TABLE
local function slot_state(i) local v = rawget(T, i) return v == nil and "cleared" or type(v) end
local function slot_of(u) for k, v in next, T do if rawequal(v, u) then return k end end end
local ballast = {}  -- enough heap that a collector step does part of a cycle
for i = 1, 100000 do ballast[i] = {} end
local held = {}
for i = 1, 50 do held[i] = new() end
local dropped = slot_of(held[50])
for i = 41, 50 do held[i] = nil end
local cycles = 0
while slot_state(dropped) == "userdata" and cycles < 3 do
  if collectgarbage("step", 0) then cycles = cycles + 1 end
end
local first = new()
release()
local second = new()
local again = get(name(first))
return name(first), name(again), name(second)
"""


def _race(runtime: Any, release: Any) -> tuple[int, int, int]:
    made: dict[int, _Thing] = {}

    def new() -> _Thing:
        thing = _Thing(len(made) + 1)
        made[thing.n] = thing
        return thing

    first, again, second = runtime.execute(RACE, new, made.__getitem__, lambda thing: thing.n, release)
    return first, again, second


def test_an_object_handed_to_lua_again_is_the_same_object() -> None:
    state = LuaState(Limits())
    first, again, second = _race(state.runtime, state.core.collect)
    assert again == first, f"handed object {first} back to Lua, it got object {again} (object {second}'s wrapper)"


@pytest.mark.xfail(reason="lupa issue #294: lupa by itself still mixes up Python objects; when this "
                          "passes, lupa fixed it and the strong table in lua/_core.lua can go", strict=False)
def test_lupa_by_itself_keeps_objects_apart() -> None:
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    first, again, _ = _race(runtime, runtime.eval("function() collectgarbage() end"))
    assert again == first


async def test_processes_in_one_shard_see_only_their_own_objects_and_lupas_table_stays_sound(tmp_path: Path) -> None:
    # Before the strong table, this run left a loop in lupa's free list (a slot freed
    # twice) every time, and the table had grown by a slot for most objects handed over.
    verdict, health = await identity.probe(16, 100)
    assert verdict["checks"] > 50_000 and verdict["bad"] == 0, verdict
    assert len(health) == 1
    shard = health[0]
    assert shard["bad_free_links"] == 0 and shard["holes"] == 0, shard
    assert shard["size"] < 4 * 4096, shard


async def test_lupas_table_does_not_grow_with_the_objects_handed_to_lua() -> None:
    state = LuaState(Limits())
    source = """
        local time = require("time")
        return function(n)
          for i = 1, n do local t, e, c = time.unix(i, 0), errors.new("x"), channel.new(1) end
        end"""
    sizes = []
    for _ in range(3):
        outcome = await run_lua(source, 10_000, state=state)
        assert outcome.error is None, outcome.error
        sizes.append(identity.table_health(state)["size"])
    # 30,000 objects a round; before, the table had some 25,000 more slots each round.
    assert sizes[2] - sizes[0] < 64 and sizes[0] < 2 * 4096, sizes


async def test_dead_channels_wait_for_a_release_within_a_bound() -> None:
    # A dead channel's Python object (about 1 KiB) lives until its wrapper is released;
    # releases come often enough that a flood of channels pins only so many.
    import gc

    from moonwire.lua._channel import Channel

    state = LuaState(Limits())
    outcome = await run_lua("return function(n) for _ = 1, n do channel.new(1) end end", 50_000, state=state)
    assert outcome.error is None, outcome.error
    gc.collect()
    alive = sum(isinstance(obj, Channel) for obj in gc.get_objects())
    assert alive < 2_000, alive
