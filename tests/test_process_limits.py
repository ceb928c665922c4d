"""Bad input and scale for processes: runaway loops and allocations, mailbox bounds,
and thousands of processes on one node."""

from __future__ import annotations

from pathlib import Path

from support import LocalRuntime, process_project


async def test_runaway_loop_and_allocation_end_only_that_process(tmp_path: Path) -> None:
    files = process_project({"driver": """
        return { main = function()
          local me = process.pid()
          local sibling = process.spawn("app:echo", "app:host")  -- shares a Lua state with the others
          local looper = process.spawn_monitored("app:looper", "app:host")
          local hog = process.spawn_monitored("app:hog", "app:host")
          local events, out = process.events(), {}
          for _ = 1, 2 do
            local ev = events:receive()
            out[ev.from == looper and "looper" or "hog"] = ev.result.error:message()
          end
          process.send(sibling, "ping", "still here")
          out.sibling = process.inbox():receive():payload():data()
          return out
        end }""", "looper": "return { main = function() while true do end end }", "hog": """
        return { main = function()
          local t, s = {}, "x"
          for i = 1, 1e9 do s = s .. s; t[i] = s end  -- string.rep is charged by size now
        end }""", "echo": """
        return { main = function()
          local msg = process.inbox():receive()
          process.send(msg:from(), "pong", msg:payload():data())
        end }"""}, extra_yaml="")
    files["_index.yaml"] = files["_index.yaml"].replace(
        "kind: process.host\n", "kind: process.host\n    host: {memory_limit: 32MiB, instruction_budget: 1000000}\n")
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])
        assert runtime.hosts["app:host"].statistics().processes == 0
    assert outcome.error is None, outcome.error
    assert "instruction budget exceeded" in outcome.value["looper"]
    assert "memory limit exceeded" in outcome.value["hog"]
    assert outcome.value["sibling"] == "still here"


async def test_a_full_mailbox_refuses_local_sends(tmp_path: Path) -> None:
    files = process_project({"driver": """
        return { main = function()
          local deaf = process.spawn("app:deaf", "app:host")
          local sent, err = 0, nil
          for i = 1, 100 do
            local ok, e = process.send(deaf, "t", i)
            if not ok then err = e; break end
            sent = sent + 1
          end
          process.terminate(deaf)
          return { sent = sent, kind = err:kind(), retryable = err:retryable(), full = err:message():find("full") ~= nil }
        end }""", "deaf": """
        local time = require("time")
        return { main = function() time.sleep("1h") end }"""})
    files["_index.yaml"] = files["_index.yaml"].replace(
        "kind: process.host\n", "kind: process.host\n    host: {mailbox_limit: 25}\n")
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])
    assert outcome.value == {"sent": 25, "kind": "Unavailable", "retryable": True, "full": True}


async def test_thousands_of_processes(tmp_path: Path) -> None:
    files = process_project({"driver": """
        return { main = function(n)
          local me, pids = process.pid(), {}
          for i = 1, n do pids[i] = process.spawn("app:worker", "app:host", me) end
          local inbox, sum = process.inbox(), 0
          -- All n are alive and waiting now. Jobs go out a thousand at a time, so the
          -- replies never pile up past this process's mailbox bound.
          for first = 1, n, 1000 do
            local last = math.min(first + 999, n)
            for i = first, last do process.send(pids[i], "job", i) end
            for _ = first, last do sum = sum + inbox:receive():payload():data() end
          end
          return sum
        end }""", "worker": """
        return { main = function(parent)
          local msg = process.inbox():receive()
          process.send(parent, "done", msg:payload():data() * 2)
        end }"""})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [5000])
        assert outcome.error is None, outcome.error
        stats = runtime.hosts["app:host"].statistics()
    assert outcome.value == 5000 * 5001
    assert stats.processes == 0
