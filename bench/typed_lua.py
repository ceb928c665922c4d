"""The typed-Lua pass (lua/_typed.py) beside what loading the same code costs anyway,
measured in the same run.

(a) Stripping a typed source of about 2,000 lines (200 typed functions with a declared
    record type each, casts, annotated locals and loop variables), first time and from
    the cache, beside compiling the stripped, plain source with Lua's own `load` in a
    plain lupa runtime (the work every load does regardless).
(b) A plain (untyped) source of the same size: what the pass costs code that needs none
    (it is compiled first and never reaches the pass), beside the same `load`.

    python bench/typed_lua.py [--rounds 5] [--blocks 200] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys: ``machine``;
``a.lines``, ``a.strip_ms``, ``a.cached_us``, ``a.raw_load_ms``, ``a.ratio`` (strip over
raw load); ``b.lines``, ``b.in_state_ms``, ``b.raw_load_ms``, ``b.ratio``.
"""

from __future__ import annotations

import statistics
import time

import lupa.lua55 as lupa

from moonwire.lua import LuaCode, LuaState
from moonwire.lua._typed import _strip, strip

from _support import Figures, parser, run

TYPED = """
type Point{n} = {{x: number, y: number, label: string?}}
function M.dist{n}(a: Point{n}, b: Point{n}): number
  local dx: number = a.x - b.x
  local dy: number = (a.y - b.y) :: number
  for i: integer = 1, 3 do
    if i > 2 and dx < dy then dx = dx + i end
  end
  local s = tostring(a.label) .. "x: y" -- a comment : with :: colons
  return math.sqrt(dx * dx + dy * dy) as number
end
"""

PLAIN = """
function M.dist{n}(a, b)
  local dx = a.x - b.x
  local dy = (a.y - b.y)
  for i = 1, 3 do
    if i > 2 and dx < dy then dx = dx + i end
  end
  local s = tostring(a.label) .. "x: y" -- a comment : with :: colons
  return math.sqrt(dx * dx + dy * dy)
end
"""


def median_ms(work: object, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def main() -> None:  # nothing to await: async only for the shared run()
    opts = ARGS
    figures = Figures(opts)

    typed = ("local M = {}\n" + "".join(TYPED.format(n=i) for i in range(opts.blocks)) + "return M\n").encode()
    plain = ("local M = {}\n" + "".join(PLAIN.format(n=i) for i in range(opts.blocks)) + "return M\n").encode()
    lines = typed.count(b"\n")
    raw = lupa.LuaRuntime(encoding=None)
    load = raw.eval("function(s) local f, err = load(s, '=x', 't') assert(f, err) return f end")
    stripped = strip(typed, "big.lua").source

    def strip_fresh() -> None:
        _strip.cache_clear()
        strip(typed, "big.lua")

    first = median_ms(strip_fresh, opts.rounds)
    strip(typed, "big.lua")
    cached = median_ms(lambda: strip(typed, "big.lua"), opts.rounds)
    compile_stripped = median_ms(lambda: load(stripped), opts.rounds)
    figures.add("a.lines", lines), figures.add("a.strip_ms", first), figures.add("a.cached_us", cached * 1000)
    figures.add("a.raw_load_ms", compile_stripped), figures.add("a.ratio", first / compile_stripped)
    print(f"(a) typed source, {lines:,} lines: strip {first:.1f} ms, from the cache {cached * 1000:.1f} us   "
          f"raw Lua load of the stripped source {compile_stripped:.1f} ms   "
          f"ratio {first / compile_stripped:.1f}x")

    def register(source: bytes) -> None:
        LuaState().load(LuaCode(id="b:x", source=source, chunkname="x.lua", is_library=True))

    plain_in_state = median_ms(lambda: register(plain), opts.rounds)
    empty_state = median_ms(lambda: LuaState(), opts.rounds)
    compile_plain = median_ms(lambda: load(plain), opts.rounds)
    plain_lines = plain.count(b"\n")
    figures.add("b.lines", plain_lines), figures.add("b.in_state_ms", plain_in_state - empty_state)
    figures.add("b.raw_load_ms", compile_plain), figures.add("b.ratio", (plain_in_state - empty_state) / compile_plain)
    print(f"(b) plain source, {plain_lines:,} lines: loaded in a state "
          f"{plain_in_state - empty_state:.1f} ms (state creation taken off)   raw Lua load {compile_plain:.1f} ms   "
          f"ratio {figures.values['b.ratio']:.1f}x")
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--rounds", type=int, default=5)
PARSER.add_argument("--blocks", type=int, default=200)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
