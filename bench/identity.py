"""Identity probe: can a process ever be handed another process's object?

lupa keeps one Lua userdata per Python object it hands to Lua, found again through a
table of references (``LUPA_PYTHON_REFERENCES_TABLE``) and a dict keyed by the
object's address. Garbage collection timing could corrupt that bookkeeping (lupa issue
#294; docs/architecture.md, "The Lua runtime"), after which handing Lua an object it
already holds gives it another object. This probe hammers the public Lua API with many
processes in one shard, each creating and dropping the kinds of Python-backed objects
moonwire has (channels, inbox messages, timers, futures, opaque objects: times, errors,
payloads) while checking that everything it reads back is its own; then it reads lupa's
table of references for signs of corrupted bookkeeping.

    python bench/identity.py [--processes 64] [--rounds 2000]
    python bench/identity.py --pause

Prints the checks made, the mismatches, and the table's health per shard. ``--pause``
instead times a release of dead wrappers (a full collection, lua/_core.lua) against the
size of the heap, beside a plain full collection.

With ``--json`` (and ``--loop asyncio|uvloop``, as every benchmark) the last line is one
JSON object with these keys: ``machine``; ``probe.processes``, ``probe.rounds``,
``probe.seconds``, ``probe.checks``, ``probe.mismatches``, ``probe.shards`` (one object per
shard: ``userdata``, ``free``, ``holes``, ``bad_free_links``, ``size``); with ``--pause``
instead, for each heap of ``N`` objects (100000, 1000000, 3000000): ``pause.N.heap_mib``,
``pause.N.release_ms``, ``pause.N.plain_ms`` and ``pause.N.ratio`` (release over plain).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from moonwire.broker import Subjects
from moonwire.lua import Limits, LuaState
from moonwire.node import load_project
from moonwire.node._runtime import Runtime

from _support import Figures, parser, run, write

PROJECT = {
    "_index.yaml": """
        namespace: p
        entries:
          - {name: host, kind: process.host}
          - {name: echo, kind: function.lua, source: file://echo.lua}
          - {name: driver, kind: process.lua, source: file://driver.lua}
          - {name: worker, kind: process.lua, source: file://worker.lua, modules: [time, funcs]}
    """,
    "echo.lua": "return function(v) return v end",
    "driver.lua": """
        return function(n, rounds)
          local me = process.pid()
          for id = 1, n do process.spawn("p:worker", "p:host", me, id, rounds) end
          local bad, checks = 0, 0
          for _ = 1, n do
            local v = process.inbox():receive():payload():data()
            bad, checks = bad + v.bad, checks + v.checks
          end
          return { bad = bad, checks = checks }
        end""",
    # Everything a worker reads back must be its own: its channels' values, its times'
    # seconds, its errors' messages, its payloads, its inbox, its timers and futures.
    "worker.lua": """
        local time, funcs = require("time"), require("funcs")
        return function(driver, id, rounds)
          local me = process.pid()
          local bad, checks = 0, 0
          local function check(ok) checks = checks + 1; if not ok then bad = bad + 1 end end
          -- A host function that raises hands Lua a wrapper of the Python exception; sent
          -- through a channel, the same exception is handed to Lua again.
          local function python_error()
            local _, err = pcall(time.date, 1e15, 1, 1, 0, 0, 0, 0, time.utc)
            return err
          end
          local keep = {}
          for i = 1, 6 do
            keep[i] = { ch = channel.new(1), tag = id .. ":" .. i, t = time.unix(id * 1000 + i, 0),
                        e = errors.new(id .. "/" .. i), p = payload.new(id * 10 + i), x = python_error() }
          end
          for r = 1, rounds do
            -- temporaries: fresh Python objects behind channels and opaque objects, dropped at once
            for j = 1, 3 do
              local c = channel.new(1); c:send(j); check(c:receive() == j)
              check(time.unix(j, 0):unix() == j)
              check(errors.new("t" .. j):message() == "t" .. j)
            end
            for i, k in ipairs(keep) do
              k.ch:send({ tag = k.tag, r = r })
              local v = k.ch:receive()
              check(type(v) == "table" and v.tag == k.tag and v.r == r)
              check(k.t:unix() == id * 1000 + i)
              check(k.e:message() == id .. "/" .. i)
              check(k.p:data() == id * 10 + i)
              k.ch:send(k.x)
              check(rawequal(k.ch:receive(), k.x))
            end
            -- a fresh exception, other objects handed over meanwhile, then the exception again
            local fresh = python_error()
            local c = channel.new(1)
            for j = 1, 3 do check(time.unix(j, 0):unix() == j) end
            c:send(fresh)
            check(rawequal(c:receive(), fresh))
            local which = keep[r % #keep + 1]
            which.ch:send(r)
            local got = channel.select({ keep[1].ch:case_receive(), which.ch:case_receive() })
            check(got.channel == which.ch and got.value == r)
            process.send(me, "self", { id = id, r = r })
            local m = process.inbox():receive()
            local d = m:payload():data()
            check(m:topic() == "self" and m:from() == me and d.id == id and d.r == r)
            if r % 50 == 0 then
              local tick = time.after("1ms")
              local fired, ok = tick:receive()
              check(ok and fired ~= nil and fired:unix() > 0)
              local f = funcs.async("p:echo", { id = id, r = r })
              local reply = f:channel():receive()
              local data = reply and reply:data()
              check(type(data) == "table" and data.id == id and data.r == r)
            end
            local g = {}
            for x = 1, 20 do g[x] = { x, tostring(x) } end
          end
          process.send(driver, "verdict", { bad = bad, checks = checks })
        end""",
}

# lupa's table of references, read in the state's raw runtime: slots holding a
# userdata, free slots (lupa's free list), holes (nil: cleared but never released),
# and free-list links that point at an occupied slot or loop (a slot released twice).
HEALTH = b"""
local T = debug.getregistry().LUPA_PYTHON_REFERENCES_TABLE
local used, numbers, holes, max = 0, 0, 0, 0
for k, v in next, T do
  if math.type(k) == "integer" and k > max then max = k end
  if type(v) == "userdata" then used = used + 1 elseif type(v) == "number" then numbers = numbers + 1 end
end
for i = 1, max do if rawget(T, i) == nil then holes = holes + 1 end end
-- lupa's free list starts at a fixed slot holding the first free index (Lua 5.5: 1; 5.4: 3)
local head_slot = _VERSION == "Lua 5.4" and 3 or 1
local bad_links, seen, i, steps = 0, {}, rawget(T, head_slot), 0
while type(i) == "number" and i ~= 0 and steps <= max do
  if seen[i] then bad_links = bad_links + 1 break end  -- a loop: released twice
  seen[i] = true
  local nxt = rawget(T, i)
  if type(nxt) ~= "number" then bad_links = bad_links + 1 break end  -- free, yet holding an object
  i, steps = nxt, steps + 1
end
return used, numbers, holes, bad_links, max
"""


def table_health(state: Any) -> dict[str, int]:
    """lupa's reference table in ``state`` (a LuaState), after a full collection."""
    state.core.collect()
    used, numbers, holes, bad_links, size = state.runtime.execute(HEALTH)
    return {"userdata": used, "free": numbers, "holes": holes, "bad_free_links": bad_links, "size": size}


async def probe(processes: int, rounds: int) -> tuple[dict[str, Any], list[dict[str, int]]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = write(Path(tmp), PROJECT)
        runtime = Runtime("probe", load_project(root), Subjects())
        await runtime.start()
        try:
            outcome = await runtime.execute("p:driver", [processes, rounds])
            assert outcome.error is None, outcome.error
            host = runtime.hosts["p:host"]
            return dict(outcome.value), [table_health(shard.state) for shard in host._shards]
        finally:
            await runtime.stop(2.0)


def pauses(figures: Figures) -> None:
    state = LuaState(Limits(memory=None, instructions=None))
    for n in (100_000, 1_000_000, 3_000_000):
        state.runtime.execute(f"keep = {{}} for i = 1, {n} do keep[i] = {{i, tostring(i)}} end".encode())
        kib = state.runtime.execute(b"return collectgarbage('count')")
        start = time.perf_counter()
        state.core.collect()
        release = time.perf_counter() - start
        start = time.perf_counter()
        state.runtime.execute(b"collectgarbage('collect')")
        plain = time.perf_counter() - start
        figures.add(f"pause.{n}.heap_mib", kib / 1024), figures.add(f"pause.{n}.release_ms", release * 1000)
        figures.add(f"pause.{n}.plain_ms", plain * 1000), figures.add(f"pause.{n}.ratio", release / plain)
        print(f"heap {kib / 1024:5.0f} MiB: release {release * 1000:4.0f} ms, plain full collection {plain * 1000:4.0f} ms")


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    if args.pause:
        pauses(figures)
        figures.emit()
        return
    start = time.perf_counter()
    verdict, health = await probe(args.processes, args.rounds)
    took = time.perf_counter() - start
    figures.add("probe.processes", args.processes), figures.add("probe.rounds", args.rounds)
    figures.add("probe.seconds", took), figures.add("probe.checks", verdict["checks"])
    figures.add("probe.mismatches", verdict["bad"]), figures.add("probe.shards", health)
    print(f"{args.processes} processes x {args.rounds} rounds in one shard, {took:.1f} s")
    print(f"checks {verdict['checks']:,}, mismatches {verdict['bad']:,}")
    for i, h in enumerate(health):
        print(f"shard {i}: lupa reference table {h}")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--processes", type=int, default=64)
PARSER.add_argument("--rounds", type=int, default=2000)
PARSER.add_argument("--pause", action="store_true", help="time releases against the heap's size instead")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
