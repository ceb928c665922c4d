"""Probes of the local message path, cheap processes and reused workflow states."""

from __future__ import annotations

import subprocess
import sys
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


# Runs app:spawner on app:host (the terminal host, where -x runs, is another state):
# its result, or its error as a string.
ON_HOST = """
return { main = function()
  process.spawn_monitored("app:spawner", "app:host")
  local result = process.events():receive().result
  return result.value or tostring(result.error)
end }"""


# Its top-level code runs about 60 000 instructions: well within the host's budget of
# 200 000, but ten of them are three times it.
HEAVY_LOAD = """
local n = 0
for i = 1, 20000 do n = n + i end
return { main = function() end }"""


async def test_the_children_a_direct_spawn_loads_count_to_the_spawner_s_budget(tmp_path: Path) -> None:
    # A direct spawn loads the child's chunk inside the spawner's call: that work holds
    # the event loop in the spawner's turn, so it is the spawner's to pay.
    files = process_project({"heavy": HEAVY_LOAD, "spawner": """
        return { main = function()
          for _ = 1, 10 do assert(process.spawn("app:heavy", "app:host")) end
          return "spawned ten"
        end }""", "driver": ON_HOST})
    files["_index.yaml"] = files["_index.yaml"].replace("name: host\n    kind: process.host\n",
                                                        "name: host\n    kind: process.host\n    host: {instruction_budget: 200000}\n")
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert "instruction budget exceeded" in outcome.value, outcome.value


async def test_a_direct_spawn_leaves_the_spawner_sending_as_itself(tmp_path: Path) -> None:
    files = process_project({"child": """
        return { main = function() process.inbox():receive() end }""", "echo": """
        return { main = function(parent)
          local inbox = process.inbox()
          process.send(parent, "ready")
          local m = inbox:receive()
          process.send(parent, "from", m:from())
        end }""", "driver": ON_HOST, "spawner": """
        return { main = function()
          local me, inbox = process.pid(), process.inbox()
          local echo = assert(process.spawn("app:echo", "app:host", me))
          inbox:receive()
          local child = assert(process.spawn("app:child", "app:host"))
          process.send(echo, "hi")
          local from = inbox:receive():payload():data()
          process.send(child, "bye")
          return { me = me, from = from, pid_after = process.pid() }
        end }"""})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value["from"] == outcome.value["me"] == outcome.value["pid_after"]


async def test_select_over_the_inbox_and_a_timer_keeps_the_box_s_order(tmp_path: Path) -> None:
    # The receiver's first select times out and leaves its box marked waiting; the
    # sender's messages then arrive in Lua, one through Python's hand-over; a second
    # select parks and wakes on a message; every one comes once, in order.
    files = process_project({"receiver": """
        return { main = function(parent)
          local inbox, got = process.inbox(), {}
          local r = channel.select({ inbox:case_receive(), time.after("1ms"):case_receive() })
          got[#got + 1] = r.channel == inbox and "early" or "timeout"
          local sender = process.spawn("app:sender", "app:host", process.pid(), 5)
          for _ = 1, 2 do
            r = channel.select({ inbox:case_receive(), time.after("10s"):case_receive() })
            got[#got + 1] = r.channel == inbox and r.value:payload():data() or "timeout"
          end
          for _ = 1, 3 do got[#got + 1] = inbox:receive():payload():data() end
          r = channel.select({ inbox:case_receive(), time.after("10s"):case_receive() })
          got[#got + 1] = r.channel == inbox and r.value:payload():data() or "timeout"
          return got
        end }""", "sender": """
        return { main = function(to, n)
          for i = 1, n do process.send(to, "n", i) end
          time.sleep("1ms")
          process.send(to, "n", "last")
        end }""", "driver": ON_HOST.replace("app:spawner", "app:receiver")})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value == ["timeout", 1, 2, 3, 4, 5, "last"]


async def test_a_chunk_that_sends_at_its_top_level_loads_whatever_the_state_s_count(tmp_path: Path) -> None:
    # A chunk's top level must not block, and a preemption yield there failed the load
    # ("a module cannot block while it loads") once the state's count reached its end:
    # a hundred sends always do.
    files = process_project({"child": """
        for i = 1, 100 do process.send("{t1@app:host|nobody}", "t", i) end
        return { main = function() return "loaded" end }""", "spawner": """
        return { main = function()
          local pid, err = process.spawn_monitored("app:child", "app:host")
          if not pid then return tostring(err) end
          return process.events():receive().result.value
        end }""", "driver": ON_HOST})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value == "loaded"


async def test_a_chunk_that_spawns_itself_at_its_top_level_fails_cleanly(tmp_path: Path) -> None:
    # Each direct spawn loaded the next copy inside the call: Python's stack ran out.
    files = process_project({"bomb": """
        local pid, err = process.spawn("app:bomb", "app:host")
        if not pid then error(err) end
        return { main = function() end }""", "spawner": """
        return { main = function()
          local pid, err = process.spawn("app:bomb", "app:host")
          return tostring(pid) .. " " .. tostring(err)
        end }""", "driver": ON_HOST})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
        left = len(runtime.processes.records)  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value.startswith("nil ") and "a module cannot block while it loads" in outcome.value
    assert "Recursion" not in outcome.value and left == 0


# Opens its inbox and reads nothing until cancelled; then counts what it holds.
HOLDER = """
return { main = function(parent)
  local inbox = process.inbox()
  process.send(parent, "ready")
  process.events():receive()
  local n = 0
  while true do
    local r = channel.select({ inbox:case_receive(), default = true })
    if r.default then break end
    n = n + 1
  end
  process.send(parent, "held", n)
end }"""


async def test_a_flood_spread_over_many_neighbours_cannot_fill_the_state(tmp_path: Path) -> None:
    # The memory check ran when one box reached a multiple of 256 messages: 200 fresh
    # 2 KB strings to each of 24 neighbours that do not read (9.6 MB, in a state limited
    # to 8 MiB) never triggered it, and the state ran out of memory.
    holders, each = 24, 200
    files = process_project({"holder": HOLDER, "spawner": """
        return { main = function(holders, each)
          local me, inbox, pids = process.pid(), process.inbox(), {}
          for i = 1, holders do pids[i] = process.spawn("app:holder", "app:host", me) end
          for _ = 1, holders do inbox:receive() end
          for k = 1, each do
            for i = 1, holders do
              local sent, err = process.send(pids[i], "n", string.rep("x", 2000) .. k)
              if not sent then return tostring(err) end
            end
          end
          for i = 1, holders do process.cancel(pids[i], "count now") end
          local total = 0
          for _ = 1, holders do total = total + inbox:receive():payload():data() end
          return total
        end }""", "driver": """
        return { main = function(holders, each)
          process.spawn_monitored("app:spawner", "app:host", holders, each)
          local result = process.events():receive().result
          return result.value or tostring(result.error)
        end }"""})
    files["_index.yaml"] = files["_index.yaml"].replace(
        "name: host\n    kind: process.host\n", "name: host\n    kind: process.host\n    host: {memory_limit: 8MiB}\n")
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [holders, each])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value == holders * each


# Sends from a coroutine that ends at once, to a receiver parked on its inbox, while
# making garbage: the Lua collector frees the coroutine before the receiver runs.
HAND_FROM_A_DEAD_THREAD = {"receiver": """
    return { main = function(parent)
      local inbox = process.inbox()
      process.send(parent, "ready")
      local got = 0
      for _ = 1, 50 do got = got + inbox:receive():payload():data() end
      return got
    end }""", "spawner": """
    return { main = function()
      local me, inbox = process.pid(), process.inbox()
      process.spawn_monitored("app:receiver", "app:host", me)
      local r = inbox:receive():from()
      for _ = 1, 50 do
        coroutine.wrap(function() process.send(r, "n", 1) end)()
        local junk = {}
        for k = 1, 2000 do junk[k] = string.rep("y", 100) .. k end
        time.sleep("1ms")
      end
      return process.events():receive().result.value
    end }""", "driver": ON_HOST}


async def hand_from_a_dead_thread(root: Path) -> object:
    """The outcome of HAND_FROM_A_DEAD_THREAD (run in a child interpreter: it crashed)."""
    async with LocalRuntime(root, process_project(HAND_FROM_A_DEAD_THREAD)) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    return outcome.value if outcome.error is None else str(outcome.error)


def test_a_message_handed_over_outlives_the_thread_that_sent_it() -> None:
    # A send to a waiting receiver passed the message to Python as an argument, and
    # lupa ties such a wrapper to the calling thread's Lua stack: once the sender's
    # coroutine was collected, releasing the wrapper wrote into freed memory (SIGSEGV).
    script = ("import asyncio, sys, tempfile; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
              "from test_local_path_probe import hand_from_a_dead_thread as run; "
              "print(asyncio.run(run(Path(tempfile.mkdtemp()))))")
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "50"
