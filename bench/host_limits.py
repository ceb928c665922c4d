"""What ``max_processes`` costs, beside the same work on a host without a limit, in the
same run, on one node with no broker:

(a) spawn-and-exit rate of a trivial monitored process on a host with
    ``max_processes: 100000`` (never reached), beside a host without a limit;
(b) a spawn flood against a full host: refusals per second (each one a Lua
    ``nil, err`` back to the spawner), beside (a)'s rate of spawns that start.

    python bench/host_limits.py [--spawns 50000] [--trials 3] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys (each the median of the
trials, with the trials under ``KEY_rounds``): ``machine``; ``a.limited_per_s``,
``a.unlimited_per_s``, ``a.ratio``; ``b.refused_per_s``, ``b.ratio`` (to (a) unlimited).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from moonwire.broker import Subjects
from moonwire.node import load_project
from moonwire.node._runtime import Runtime

from _support import Figures, parser, run, write

PROJECT = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: free, kind: process.host}
          - {name: limited, kind: process.host, host: {max_processes: 100000}}
          - {name: full, kind: process.host, host: {max_processes: 1}}
          - {name: trivial, kind: process.lua, source: file://trivial.lua}
          - {name: idle, kind: process.lua, source: file://idle.lua}
          - {name: spawner, kind: process.lua, source: file://spawner.lua}
          - {name: flood, kind: process.lua, source: file://flood.lua}
    """,
    "trivial.lua": "return function() return true end",
    "idle.lua": "return function() process.inbox():receive() end",
    "spawner.lua": """
        return function(host, n)
          local events = process.events()
          for i = 1, n do assert(process.spawn_monitored("b:trivial", host)) end
          for i = 1, n do events:receive() end
        end""",
    "flood.lua": """
        return function(n)
          local holder = assert(process.spawn("b:idle", "b:full"))
          local refused = 0
          for i = 1, n do
            local pid, err = process.spawn("b:trivial", "b:full")
            if err then refused = refused + 1 end
          end
          process.send(holder, "stop")
          return refused
        end""",
}


async def main() -> None:
    opts = ARGS
    figures = Figures(opts)
    trials: dict[str, list[float]] = {key: [] for key in ("a.limited_per_s", "a.unlimited_per_s", "a.ratio",
                                                          "b.refused_per_s", "b.ratio")}

    root = write(Path(tempfile.mkdtemp(prefix="mw-bench-")), PROJECT)
    runtime = Runtime("bench", load_project(root), Subjects())
    await runtime.start()
    try:
        async def rate(entry: str, *args: object) -> tuple[float, object]:
            start = time.perf_counter()
            outcome = await runtime.execute(entry, list(args))
            assert outcome.error is None, outcome.error
            return opts.spawns / (time.perf_counter() - start), outcome.value

        for trial in range(1, opts.trials + 1):
            free, _ = await rate("b:spawner", "b:free", opts.spawns)
            limited, _ = await rate("b:spawner", "b:limited", opts.spawns)
            refusals, refused = await rate("b:flood", opts.spawns)
            assert refused == opts.spawns, refused
            for key, value in zip(trials, (limited, free, limited / free, refusals, refusals / free)):
                trials[key].append(value)
            print(f"trial {trial}: (a) spawn+exit  limited {limited:>9,.0f}/s   unlimited {free:>9,.0f}/s   "
                  f"ratio {limited / free:.3f}   (b) refused spawns {refusals:>9,.0f}/s   "
                  f"ratio to (a) unlimited {refusals / free:.2f}")
        median = {key: figures.median(key, values) for key, values in trials.items()}
        print(f"median: (a) limited {median['a.limited_per_s']:>9,.0f}/s   unlimited "
              f"{median['a.unlimited_per_s']:>9,.0f}/s   ratio {median['a.ratio']:.3f}   (b) refused "
              f"{median['b.refused_per_s']:>9,.0f}/s   ratio {median['b.ratio']:.2f}")
    finally:
        await runtime.stop(5.0)
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--spawns", type=int, default=50_000)
PARSER.add_argument("--trials", type=int, default=3)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
