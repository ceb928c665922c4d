"""Exit semantics (wippy-surface §3.3-§3.6): the outcome matrix row by row, events and
their fields, link topologies, and EXIT ordering after a process's messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support import LocalRuntime, process_project

CHILD = """
local time = require("time")
return { main = function(how)
  if how == "return" then return "v" end
  if how == "nil_err" then return nil, errors.new({ message = "bad", kind = errors.INVALID }) end
  if how == "nil_string" then return nil, "oops" end
  if how == "raise" then error("boom") end
  if how == "terminate" then process.inbox():receive() end
  if how == "cancel_return" then
    local ev = process.events():receive()
    return "cleaned: " .. ev.reason
  end
  if how == "link_death" then
    process.spawn_linked("app:child", "app:host", "raise")
    process.inbox():receive()
  end
end }
"""

# Spawn a linked and monitored child while trapping links, act on it, and report the
# EXIT and whether a LINK_DOWN came.
MATRIX_DRIVER = """
return { main = function(how)
  process.set_options({ trap_links = true })
  local pid = process.spawn_linked_monitored("app:child", "app:host", how)
  if how == "terminate" then assert(process.terminate(pid)) end
  if how == "cancel_return" then assert(process.cancel(pid, "please")) end
  local events = process.events()
  local exit, link_down
  while exit == nil do
    local ev = events:receive()
    if ev.from == pid and ev.kind == process.event.EXIT then exit = ev end
    if ev.from == pid and ev.kind == process.event.LINK_DOWN then link_down = ev end
  end
  -- Links fire in the same step as monitors: a LINK_DOWN, if any, is queued by now.
  local r = channel.select({ events:case_receive(), default = true })
  if not r.default and r.value.kind == process.event.LINK_DOWN then link_down = r.value end
  local err = exit.result.error
  return {
    value = exit.result.value,
    kind = err and err:kind() or nil,
    message = err and err:message() or nil,
    link_down = link_down ~= nil,
    link_down_message = link_down and link_down.result.error:message() or nil,
    at = type(exit.at) == "number" and exit.at > 1.7e9,
  }
end }
"""


async def run(tmp_path: Path, sources: dict[str, str], *args: Any) -> Any:
    async with LocalRuntime(tmp_path, process_project(sources)) as runtime:
        outcome = await runtime.execute("app:driver", list(args))
    assert outcome.error is None, outcome.error
    return outcome.value


@pytest.mark.parametrize(("how", "expected"), [
    ("return", {"value": "v", "link_down": False}),
    ("nil_err", {"kind": "Invalid", "message": "bad", "link_down": True}),
    ("nil_string", {"kind": "", "message": "oops", "link_down": True}),
    ("raise", {"kind": "", "link_down": True}),
    ("terminate", {"kind": "Canceled", "message": "process terminated", "link_down": True}),
    ("cancel_return", {"value": "cleaned: please", "link_down": False}),
    ("link_death", {"kind": "Internal", "message": "linked process failed", "link_down": True}),
])
async def test_outcome_matrix(tmp_path: Path, how: str, expected: dict[str, Any]) -> None:
    value = await run(tmp_path, {"driver": MATRIX_DRIVER, "child": CHILD}, how)
    assert value.pop("at") is True
    if value.get("link_down"):
        assert value.pop("link_down_message") == value.get("message")
    if how == "raise":
        assert "boom" in value.pop("message")
    assert value == expected


async def test_cancel_event_fields(tmp_path: Path) -> None:
    value = await run(tmp_path, {"driver": """
        return { main = function()
          local pid = process.spawn_monitored("app:child", "app:host", process.pid())
          process.inbox():receive()  -- the child listens for events
          process.cancel(pid, "time to go")
          return process.inbox():receive():payload():data()
        end }""", "child": """
        return { main = function(parent)
          local events = process.events()
          process.send(parent, "ready")
          local ev = events:receive()
          process.send(parent, "got", { kind = ev.kind, from_parent = ev.from == parent, reason = ev.reason,
                                        at = type(ev.at) == "number" })
        end }"""})
    assert value == {"kind": "pid.cancel", "from_parent": True, "reason": "time to go", "at": True}


async def test_exit_arrives_after_every_message_the_process_sent(tmp_path: Path) -> None:
    value = await run(tmp_path, {"driver": """
        return { main = function()
          local pid = process.spawn_monitored("app:child", "app:host", process.pid())
          process.events():receive()
          local inbox, n = process.inbox(), 0
          while true do
            local r = channel.select({ inbox:case_receive(), default = true })
            if r.default then break end
            n = n + 1
            if r.value:payload():data() ~= n then return "out of order at " .. n end
          end
          return n
        end }""", "child": """
        return { main = function(parent)
          for i = 1, 100 do process.send(parent, "n", i) end
          error("and then it failed")
        end }"""})
    assert value == 100


async def test_star_ten_trapping_children_of_a_failing_parent(tmp_path: Path) -> None:
    value = await run(tmp_path, {"driver": """
        return { main = function()
          process.spawn("app:parent", "app:host", process.pid())
          local inbox, seen = process.inbox(), {}
          for _ = 1, 10 do
            local report = inbox:receive():payload():data()
            seen[#seen + 1] = report.kind .. ":" .. report.message
          end
          return seen
        end }""", "parent": """
        return { main = function(driver)
          for i = 1, 10 do process.spawn_linked("app:child", "app:host", process.pid(), driver) end
          local inbox = process.inbox()
          for i = 1, 10 do inbox:receive() end  -- every child traps links now
          error("parent failed")
        end }""", "child": """
        return { main = function(parent, driver)
          process.set_options({ trap_links = true })
          local events = process.events()
          process.send(parent, "ready")
          local ev = events:receive()
          process.send(driver, "report", { kind = ev.kind, message = ev.result.error:message():match("parent failed") })
        end }"""})
    assert value == ["pid.link.down:parent failed"] * 10


async def test_chain_of_five_untrapped_links_cascades(tmp_path: Path) -> None:
    value = await run(tmp_path, {"driver": """
        return { main = function()
          local top = process.spawn_monitored("app:level", "app:host", 1)
          local ev = process.events():receive()
          local alive = 0
          for i = 1, 5 do
            if process.registry.lookup("level-" .. i) then alive = alive + 1 end
          end
          return { from_top = ev.from == top, message = ev.result.error:message(), alive = alive }
        end }""", "level": """
        return { main = function(depth)
          process.registry.register("level-" .. depth)
          if depth == 5 then error("bottom failed") end
          process.spawn_linked("app:level", "app:host", depth + 1)
          process.inbox():receive()
        end }"""})
    assert value == {"from_top": True, "message": "linked process failed", "alive": 0}


async def test_mixed_links_and_monitors(tmp_path: Path) -> None:
    value = await run(tmp_path, {"driver": """
        return { main = function()
          local me = process.pid()
          process.set_options({ trap_links = true })
          local b = process.spawn("app:b", "app:host")
          local trapper = process.spawn_monitored("app:peer", "app:host", b, true, me)
          local plain = process.spawn_monitored("app:peer", "app:host", b, false, me)
          assert(process.monitor(b))
          local inbox = process.inbox()
          inbox:receive(); inbox:receive()      -- both peers linked to b
          process.send(b, "fail")
          local events, seen = process.events(), {}
          for _ = 1, 2 do
            local ev = events:receive()
            local who = ev.from == b and "b" or ev.from == plain and "plain" or "other"
            seen[who] = ev.kind .. ":" .. ev.result.error:message()
          end
          seen.trapper = inbox:receive():payload():data()
          -- the trapping peer survived, reported and returned normally
          local ev = events:receive()
          seen.trapper_exit = ev.from == trapper and ev.result.error == nil
          return seen
        end }""", "b": """
        return { main = function() process.inbox():receive(); error("b failed") end }""", "peer": """
        return { main = function(b, trap, driver)
          process.set_options({ trap_links = trap })
          process.link(b)
          local events = process.events()
          process.send(driver, "linked")
          local ev = events:receive()
          process.send(driver, "report", ev.kind)
        end }"""})
    assert value["b"].startswith("pid.exit:") and "b failed" in value["b"]
    assert value["plain"] == "pid.exit:linked process failed"
    assert value["trapper"] == "pid.link.down" and value["trapper_exit"] is True


async def test_normal_exit_fires_no_link(tmp_path: Path) -> None:
    value = await run(tmp_path, {"driver": """
        return { main = function()
          local child = process.spawn_linked("app:quick", "app:host")
          local watcher = process.spawn_monitored("app:quick", "app:host")
          process.events():receive()
          return process.send(child, "t", 1) == nil  -- the child is gone; this process is alive
        end }""", "quick": "return { main = function() return 1 end }"})
    assert value is True


async def test_watch_edge_cases(tmp_path: Path) -> None:
    value = await run(tmp_path, {"driver": """
        return { main = function()
          local out = {}
          local idle = process.spawn("app:idle", "app:host")
          local _, e1 = process.monitor("{t1@app:host|zz-1}")
          out.monitor_unknown = e1:kind()
          out.monitor = process.monitor(idle)
          local _, e2 = process.monitor(idle)
          out.monitor_twice = e2:kind()
          out.unmonitor = process.unmonitor(idle)
          out.link = process.link(idle)
          out.link_again = process.link(idle)
          out.unlink = process.unlink(idle)
          local _, e3 = process.link("{t1@app:host|zz-1}")
          out.link_unknown = e3:kind()
          local _, e4 = process.terminate("{t1@app:host|zz-1}")
          out.terminate_unknown = e4:kind()
          -- after unmonitor and unlink, terminating it sends this process nothing
          process.terminate(idle)
          local r = channel.select({ process.events():case_receive(), default = true })
          out.nothing = r.default == true
          return out
        end }""", "idle": "return { main = function() process.inbox():receive() end }"})
    assert value == {"monitor_unknown": "NotFound", "monitor": True, "monitor_twice": "AlreadyExists",
                     "unmonitor": True, "link": True, "link_again": True, "unlink": True,
                     "link_unknown": "NotFound", "terminate_unknown": "NotFound", "nothing": True}
