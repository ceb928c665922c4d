"""Probes of the local message path, cheap processes and reused workflow states."""

from __future__ import annotations

from pathlib import Path

from support import LocalRuntime, process_project


async def test_sends_inside_a_c_callback_never_yield_across_it(tmp_path: Path) -> None:
    files = process_project({"driver": """
        return { main = function()
          local me = process.pid()
          process.inbox()
          local n = 0
          local ok, err = pcall(string.gsub, string.rep("a", 2000), "a", function()
            n = n + 1
            assert(process.send(me, "t", n))
          end)
          local t = {}
          for i = 1, 300 do t[i] = 301 - i end
          local ok2, err2 = pcall(table.sort, t, function(a, b) process.send(me, "s", a) return a < b end)
          return { ok = ok, err = tostring(err), ok2 = ok2, err2 = tostring(err2) }
        end }"""})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value["ok"] is True and outcome.value["ok2"] is True, outcome.value

