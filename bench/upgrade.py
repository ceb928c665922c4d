"""``process.upgrade`` and code reload, each beside a raw baseline measured in the same run.

(a) upgrades per second of a process that upgrades itself (its chunk run again, its
    threads and subscriptions replaced), beside spawn-and-exit of the same trivial
    process, monitored (restarting it is what an upgrade saves);
(b) a code reload (``moonwire run --watch``) of a project with ``--entries`` functions,
    one of them changed: the whole reload (load the project, read and compile what
    changed, swap it in), beside loading the project alone.

Runs on a real scheduler with no broker (neither touches NATS).

    python bench/upgrade.py [--upgrades 20000] [--entries 200] [--rounds 20] [--json] [--loop asyncio|uvloop]

With ``--json`` the last line is one JSON object with these keys: ``machine``;
``a.moonwire_per_s``, ``a.raw_per_s``, ``a.ratio``; ``b.moonwire_p50_ms``,
``b.moonwire_max_ms``, ``b.raw_p50_ms``, ``b.ratio_p50``, ``b.entries``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from moonwire.broker import Subjects
from moonwire.node import load_project
from moonwire.node._reload import CodeReload
from moonwire.node._runtime import Runtime

from _support import Figures, parser, pct, run, write

PROJECT = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: host, kind: process.host}
          - {name: looper, kind: process.lua, source: file://looper.lua}
          - {name: trivial, kind: process.lua, source: file://trivial.lua}
          - {name: spawner, kind: process.lua, source: file://spawner.lua}
    """,
    "looper.lua": """
        return function(n, parent, t0)
          process.inbox()                      -- a subscription, replaced each time
          if n > 0 then process.upgrade(nil, n - 1, parent, t0) end
          process.send(parent, "done", os.clock() - t0)
        end""",
    "trivial.lua": "return function() process.inbox() return true end",
    "spawner.lua": """
        return function(mode, n)
          local t0 = os.clock()
          if mode == "upgrade" then
            process.spawn("b:looper", "b:host", n, process.pid(), t0)
            return process.inbox():receive():payload():data()
          end
          local events = process.events()
          for _ = 1, n do
            process.spawn_monitored("b:trivial", "b:host")
            events:receive()
          end
          return os.clock() - t0
        end""",
}


def functions_project(count: int) -> dict[str, str]:
    entries = "".join(f"  - {{name: f{i}, kind: function.lua, source: file://f{i}.lua}}\n" for i in range(count))
    files = {"_index.yaml": "namespace: r\nentries:\n" + entries}
    files.update({f"f{i}.lua": f"return function(x) return x + {i} end\n" for i in range(count)})
    return files


async def main() -> None:
    opts = ARGS
    figures = Figures(opts)

    root = write(Path(tempfile.mkdtemp(prefix="mw-bench-")), PROJECT)
    runtime = Runtime("bench", load_project(root), Subjects())
    await runtime.start()
    try:
        async def seconds(mode: str, n: int) -> float:
            outcome = await runtime.execute("b:spawner", [mode, n])
            assert outcome.error is None, outcome.error
            return float(outcome.value)  # type: ignore[arg-type]

        raw = opts.upgrades / await seconds("spawn", opts.upgrades)
        rate = opts.upgrades / await seconds("upgrade", opts.upgrades)
        figures.add("a.moonwire_per_s", rate), figures.add("a.raw_per_s", raw), figures.add("a.ratio", rate / raw)
        print(f"(a) upgrades       moonwire {rate:>10,.0f} /s   raw spawn+exit of the same process "
              f"{raw:>10,.0f} /s   ratio {rate / raw:.2f}")
    finally:
        await runtime.stop(5.0)

    root = write(Path(tempfile.mkdtemp(prefix="mw-bench-")), functions_project(opts.entries))
    runtime = Runtime("bench", load_project(root), Subjects())
    await runtime.start()
    try:
        reload = CodeReload(runtime)
        loads, reloads = [], []
        for i in range(opts.rounds):
            (root / "f0.lua").write_text(f"return function(x) return x + {i + 1000} end\n")
            start = time.perf_counter()
            load_project(root)
            loads.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert await reload.reload()
            reloads.append(time.perf_counter() - start)
        outcome = await runtime.execute("r:f0", [1])
        assert outcome.value == opts.rounds + 1000, outcome
        figures.add("b.moonwire_p50_ms", pct(reloads, .5) * 1e3), figures.add("b.moonwire_max_ms", max(reloads) * 1e3)
        figures.add("b.raw_p50_ms", pct(loads, .5) * 1e3), figures.add("b.entries", opts.entries)
        print(f"(b) reload         moonwire p50 {pct(reloads, .5) * 1e3:6.1f} ms  max {max(reloads) * 1e3:6.1f} ms   "
              f"raw load_project p50 {pct(loads, .5) * 1e3:6.1f} ms   ratio "
              f"{figures.add('b.ratio_p50', pct(reloads, .5) / pct(loads, .5)):.2f}   ({opts.entries} functions, one changed)")
    finally:
        await runtime.stop(5.0)
    figures.emit()


PARSER = parser(__doc__)
PARSER.add_argument("--upgrades", type=int, default=20_000)
PARSER.add_argument("--entries", type=int, default=200)
PARSER.add_argument("--rounds", type=int, default=20)

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    run(main, ARGS.loop)
