"""Hostile Lua against the event loop (issue 14, finding 3), each figure beside a raw
baseline measured in the same run.

(a) Worst event-loop lag per hostile snippet (tests/test_lua_limits.py's list), each run
    as a process with default limits while a 5 ms probe timer measures how late it fires,
    beside the same figure for a plain `while true do end` that runs out of the same
    10M-instruction budget (what the budget allowed before this work, by design).
(b) The instruction budget's count hook: a tight Lua loop with no hook, with the previous
    scheme (one count hook at the budget), and with the chargeable one (a Lua hook every
    TICK instructions adding to a counter).
(c) The pattern and library wrappers on ordinary calls: ns per call of short find, match,
    gmatch, gsub, format, rep, sub, table.concat and table.sort in a budgeted state,
    beside the C functions called directly in a plain lupa runtime.

    python bench/hostile.py [--rounds 3] [--calls 100000] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys: ``machine``; for each
snippet ``S`` of (a) (``spin_10M``, the baseline; ``calls_10M``; every name in
tests/test_lua_limits.py's ``HOSTILE``): ``a.S.lag_ms`` and ``a.S.ratio`` (to the
baseline); for each scheme ``M`` of (b) (``raw``, ``before``, ``now``): ``b.M.ms`` and
``b.M.ratio`` (to raw); for each call ``C`` of (c) (``find_plain``, ``find_pattern``,
``match``, ``gmatch``, ``gsub``, ``format``, ``rep``, ``sub``, ``concat``, ``sort_8``):
``c.C.now_ns``, ``c.C.before_ns``, ``c.C.raw_ns`` and ``c.C.ratio`` (now over before).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import lupa.lua55 as lupa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import LocalRuntime  # noqa: E402
from test_lua_limits import HOSTILE, LagProbe, hostile_project  # noqa: E402

from moonwire.lua import Limits, LuaState

from _support import Figures, parser, run

BASELINE = "spin_10M"
CALLS = "calls_10M"  # plain Lua too: a loop of function calls, slower per instruction


async def lag_of(runtime: object, name: str) -> float:
    probe = LagProbe()
    task = asyncio.create_task(probe.run())
    try:
        await probe.ticking.wait()
        await runtime.execute("app:hostile", [name])  # type: ignore[attr-defined]
        probe.ticking.clear()
        await probe.ticking.wait()
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return probe.worst


async def loop_lags(rounds: int, figures: Figures) -> None:
    print(f"(a) worst event-loop lag per snippet, ms (max of {rounds} rounds); "
          f"baseline {BASELINE}: a plain loop running out of the same budget; {CALLS}: the same with a call per "
          "iteration (plain Lua, unchanged by this work)")
    files = hostile_project()
    files["hostile.lua"] = files["hostile.lua"].replace(
        "local cases = {", f"local cases = {{\n  [{BASELINE!r}] = function() while true do end end,\n"
        f"  [{CALLS!r}] = function() local function f(x) return x end while true do f(1) end end,", 1)
    names = [BASELINE, CALLS, *HOSTILE]
    worst: dict[str, list[float]] = {name: [] for name in names}
    import logging
    logging.getLogger("moonwire").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as root:
        async with LocalRuntime(Path(root), files) as runtime:
            for _ in range(rounds):
                for name in names:  # interleaved, so load on the machine hits all alike
                    worst[name].append(await lag_of(runtime, name))
    base = max(worst[BASELINE])
    for name in names:
        lag = max(worst[name])
        figures.add(f"a.{name}.lag_ms", lag * 1000), figures.add(f"a.{name}.ratio", lag / base)
        print(f"  {name:22s} {lag * 1000:7.1f} ms   x{lag / base:4.2f} of baseline")


def hook_overhead(rounds: int, figures: Figures) -> None:
    runtime = lupa.LuaRuntime(encoding=None)
    spin = runtime.eval(b"""function(mode, tick)
      local used = 0
      local function hook() used = used + tick end
      local co = coroutine.create(function() local x = 0 for i = 1, 5000000 do x = x + i % 7 end return x end)
      if mode == 1 then debug.sethook(co, function() end, "", 10000000)
      elseif mode == 2 then debug.sethook(co, hook, "", tick) end
      local t0 = os.clock(); coroutine.resume(co); return os.clock() - t0
    end""")
    print("(b) tight loop, 5M iterations (~20M instructions), best of rounds")
    results: dict[str, list[float]] = {"no hook (raw)": [], "count hook at the budget (before)": [],
                                       "hook every 1000 (now)": []}
    for _ in range(rounds * 3):
        results["no hook (raw)"].append(spin(0, 0))
        results["count hook at the budget (before)"].append(spin(1, 0))
        results["hook every 1000 (now)"].append(spin(2, 1000))
    raw = min(results["no hook (raw)"])
    for (label, times), key in zip(results.items(), ("raw", "before", "now")):
        figures.add(f"b.{key}.ms", min(times) * 1000), figures.add(f"b.{key}.ratio", min(times) / raw)
        print(f"  {label:36s} {min(times) * 1000:7.1f} ms   x{min(times) / raw:4.2f} of raw")


ORDINARY = b"""
return function(n, clock)
  local s, words = "hello world, the quick brown fox 42", { "a", "b", "c", "d", "e", "f", "g", "h" }
  local out = {}
  local function time(name, f)
    local t0 = clock()
    for i = 1, n do f() end
    out[#out + 1] = name .. "=" .. ((clock() - t0) / n * 1e9)
  end
  time("find plain", function() return s:find("fox", 1, true) end)
  time("find pattern", function() return s:find("%d+") end)
  time("match", function() return s:match("^(%w+)") end)
  time("gmatch", function() for w in s:gmatch("%a+") do end end)
  time("gsub", function() return s:gsub("%s", "_") end)
  time("format", function() return string.format("%s=%d", "x", 42) end)
  time("rep", function() return string.rep("ab", 10) end)
  time("sub", function() return s:sub(3, 9) end)
  time("concat", function() return table.concat(words, ",") end)
  time("sort 8", function() local t = { 5, 3, 8, 1, 7, 2, 6, 4 } table.sort(t) end)
  return table.concat(out, ";")
end
"""


def parse(text: bytes) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=") for item in text.decode().split(";"))}


def wrapper_overhead(rounds: int, calls: int, figures: Figures) -> None:
    state = LuaState(Limits(instructions=10**12))  # budgeted (metered) but never running out
    runner = state.runtime.execute(b"local core = ... return function(f, ...) "
                                   b"local id = core.spawn(f) return core.resume(id, ...) end", state.core)
    bounded = state.runtime.execute(ORDINARY)
    bounded = state.runtime.execute(b"local f = ... return function(n) return f(n, os.clock) end", bounded)
    raw_runtime = lupa.LuaRuntime(encoding=None)
    raw = raw_runtime.execute(ORDINARY)
    raw_clock = raw_runtime.eval(b"os.clock")
    # Before this work: the C functions, under one count hook set at the budget.
    hooked = raw_runtime.eval(b"""function(f, n, clock)
      local co = coroutine.create(f)
      debug.sethook(co, function() end, "", 1000000000)
      local _, out = coroutine.resume(co, n, clock)
      return out
    end""")
    print(f"(c) ordinary calls, ns per call (median of {rounds} rounds x {calls} calls); raw: the C function in a "
          "plain runtime with no hook; before: the same under the previous count hook; now: moonwire's")
    ours: list[dict[str, float]] = []
    plain: list[dict[str, float]] = []
    before: list[dict[str, float]] = []
    for _ in range(rounds):
        plain.append(parse(raw(calls, raw_clock)))
        before.append(parse(hooked(raw, calls, raw_clock)))
        ours.append(parse(runner(bounded, calls)[1]))
    for name in ours[0]:
        a = statistics.median(r[name] for r in ours)
        b = statistics.median(r[name] for r in plain)
        c = statistics.median(r[name] for r in before)
        key = "c." + name.replace(" ", "_")
        figures.add(f"{key}.now_ns", a), figures.add(f"{key}.before_ns", c), figures.add(f"{key}.raw_ns", b)
        figures.add(f"{key}.ratio", a / c)
        print(f"  {name:14s} now {a:6.0f} ns   before {c:6.0f} ns   raw {b:6.0f} ns   now/before x{a / c:4.2f}")


async def main() -> None:
    args = ARGS
    figures = Figures(args)
    await loop_lags(args.rounds, figures)
    hook_overhead(args.rounds, figures)  # (b) and (c) are plain Lua: the loop plays no part
    wrapper_overhead(args.rounds, args.calls, figures)
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--rounds", type=int, default=3)
PARSER.add_argument("--calls", type=int, default=100_000)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
