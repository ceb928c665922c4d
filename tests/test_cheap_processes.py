"""Cheap processes (issue 20): what an idle process keeps, and the spawn that needs no
request. Each runs Lua processes on a real scheduler (Runtime.execute, as `run -x`)."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from support import LocalRuntime, process_project

IDLE = """
return { main = function(parent)
  process.send(parent, "ready")
  local msg = process.inbox():receive()
  return msg:payload():data() * 2
end }
"""


async def test_an_idle_process_keeps_no_queue_and_still_takes_its_message(tmp_path: Path) -> None:
    # An empty deque is 760 bytes: three of them were most of an idle process's Python.
    files = process_project({"idle": IDLE, "start": """
        return { main = function()
          local pid = process.spawn("app:idle", "app:host", process.pid())
          process.inbox():receive()  -- "ready": the idle one waits on its inbox by now
          return pid
        end }""", "finish": """
        return { main = function(pid)
          process.monitor(pid)
          process.send(pid, "go", 21)
          return process.events():receive().result.value
        end }"""})
    async with LocalRuntime(tmp_path, files) as runtime:
        started = await runtime.execute("app:start", [])  # type: ignore[attr-defined]
        assert started.error is None, started.error
        unit: Any = runtime.processes.records[started.value].unit  # type: ignore[attr-defined]
        inbox = unit.mailbox._inbox.channel
        assert not isinstance(unit.ready, deque) and not unit.ready
        assert not isinstance(inbox.buffer, deque) and not inbox.buffer
        assert not isinstance(inbox._receivers, deque) and len(inbox._receivers) == 1
        finished = await runtime.execute("app:finish", [started.value])  # type: ignore[attr-defined]
    assert finished.error is None and finished.value == 42


async def test_spawn_where_a_thread_cannot_yield_and_the_exits_still_come(tmp_path: Path) -> None:
    # A plain spawn on a host here is a direct call: it works inside a C function's
    # callback (string.gsub), where a request (a yield) fails; monitors and links hold.
    files = process_project({"driver": """
        return { main = function()
          local pids = {}
          string.gsub("abc", "%a", function(c)
            pids[#pids + 1] = assert(process.spawn_monitored("app:child", "app:host", c))
          end)
          local linked = assert(process.spawn_linked_monitored("app:child", "app:host", "d"))
          local missing, err = process.spawn("app:nothing", "app:host")
          local events, got = process.events(), {}
          for _ = 1, 4 do
            local ev = events:receive()
            got[#got + 1] = ev.result.value
          end
          table.sort(got)
          return { n = #pids, distinct = pids[1] ~= pids[2] and pids[2] ~= pids[3], got = got,
                   linked = type(linked), missing = missing == nil and err:kind() }
        end }""", "child": "return { main = function(c) return c .. '!' end }"})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value == {"n": 3, "distinct": True, "got": ["a!", "b!", "c!", "d!"], "linked": "string",
                             "missing": "NotFound"}


async def test_many_receivers_on_one_channel_are_served_in_order(tmp_path: Path) -> None:
    # A guard for the waiters' queue: a list while few wait, a deque past eight.
    files = process_project({"driver": """
        return { main = function()
          local ch, order, done = channel.new(), {}, channel.new(20)
          for i = 1, 20 do
            coroutine.spawn(function() local v = ch:receive() order[#order + 1] = i .. ":" .. v done:send(true) end)
          end
          time.sleep("1ms")  -- the coroutines, ready before it, all wait on `ch` by then
          for v = 1, 20 do ch:send(v) end
          for _ = 1, 20 do done:receive() end
          return order
        end }"""})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value == [f"{i}:{i}" for i in range(1, 21)]


async def test_what_idle_processes_share_while_empty_carries_nothing_between_them(tmp_path: Path) -> None:
    # Processes that never listened, never buffered and got no context share empty
    # placeholders (no dict, deque or queue of their own): one's listen, buffered
    # messages and context must never show in another's.
    files = process_project({"listener": """
        return { main = function(parent)
          local ch = process.listen("t")
          process.send(parent, "ready")
          local value = ch:receive()
          return value
        end }""", "plain": """
        return { main = function(parent)
          process.send(parent, "ready")
          local msg = process.inbox():receive()
          return { topic = msg:topic(), data = msg:payload():data(), ctx = ctx.all() }
        end }""", "driver": """
        return { main = function()
          local me = process.pid()
          local a = process.with_context({ secret = "a's" }):spawn_monitored("app:listener", "app:host", me)
          local b = process.spawn_monitored("app:plain", "app:host", me)
          local inbox = process.inbox()
          inbox:receive() inbox:receive()
          process.send(b, "t", "for b")
          process.send(a, "t", "for a")
          local results = {}
          for _ = 1, 2 do
            local ev = process.events():receive()
            results[ev.from == a and "a" or "b"] = ev.result.value
          end
          return results
        end }"""})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value == {"a": "for a", "b": {"topic": "t", "data": "for b", "ctx": []}}  # an empty table: an empty list


def test_the_lua_matchers_compact_classes_agree_with_lstrlib_for_every_letter_and_byte() -> None:
    # A guard for the class tables every state holds (members only, complements shared,
    # none for a letter that is no class): %x and [%x], for every letter x and byte.
    import lupa.lua55 as lupa

    from moonwire.lua import _state

    runtime = lupa.LuaRuntime(encoding=None)
    patterns = runtime.execute(_state.PATTERNS_SOURCE)
    differing = runtime.execute(b"""
        local C, L = ...
        local out = {}
        for l in ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):gmatch(".") do
          if l ~= "b" and l ~= "f" then
            for c = 0, 255 do
              for _, p in ipairs({ "^%" .. l, "^[%" .. l .. "]", "^[^%" .. l .. "]" }) do
                local s = string.char(c)
                if C.find(s, p) ~= L.find(s, p) then out[#out + 1] = p .. " " .. c end
              end
            end
          end
        end
        return #out, out[1]
    """, runtime.eval("string"), patterns.lua)
    assert differing == (0, None)
