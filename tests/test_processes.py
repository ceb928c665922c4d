"""The process API on one node (wippy-surface §2.1, §2.2, §3.1, §3.2, §3.6, §3.7):
messages, routing, spawning, the name registry and options. Each test runs a Lua
driver process with `run -x` semantics (Runtime.execute) on a real scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import LocalRuntime, process_project

ECHO = """
return { main = function()
  local inbox = process.inbox()
  while true do
    local msg = inbox:receive()
    if msg:topic() == "stop" then return "stopped" end
    process.send(msg:from(), "echo", msg:payload():data())
  end
end }
"""


async def run(tmp_path: Path, driver: str, *args: Any, **others: str) -> Any:
    async with LocalRuntime(tmp_path, process_project({"driver": driver, **others})) as runtime:
        outcome = await runtime.execute("app:driver", list(args))
    assert outcome.error is None, outcome.error
    return outcome.value


async def test_send_and_receive_with_sender_topic_and_payload(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local pid = process.spawn("app:echo", "app:host")
          assert(process.send(pid, "ping", {n = 1, s = "x"}))
          local msg = process.inbox():receive()
          process.send(pid, "stop")
          return { topic = msg:topic(), from_echo = msg:from() == pid, data = msg:payload():data(),
                   me = process.pid(), pid_is_string = type(pid) == "string" }
        end }""", echo=ECHO)
    assert value["topic"] == "echo" and value["from_echo"] is True and value["pid_is_string"] is True
    assert value["data"] == {"n": 1, "s": "x"}
    assert value["me"].startswith("{t1@terminal|")


async def test_payload_counts_none_one_several(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local me = process.pid()
          process.send(me, "t")
          process.send(me, "t", 7)
          process.send(me, "t", 1, "two", 3)
          local inbox = process.inbox()
          local none, one, several = inbox:receive(), inbox:receive(), inbox:receive()
          local many = several:payload()
          return { none = none:payload() == nil, one = one:payload():data(), n = #many,
                   second = many[2]:data() }
        end }""")
    assert value == {"none": True, "one": 7, "n": 3, "second": "two"}


async def test_fifo_per_sender(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local me = process.pid()
          local sender = [[unused]]
          for i = 1, 3 do
            process.spawn("app:counter", "app:host", me, i, 500)
          end
          local last = {0, 0, 0}
          local inbox = process.inbox()
          for _ = 1, 1500 do
            local v = inbox:receive():payload():data()
            if v.seq ~= last[v.from] + 1 then return "out of order" end
            last[v.from] = v.seq
          end
          return last
        end }""", counter="""
        return { main = function(to, id, n)
          for i = 1, n do process.send(to, "n", {from = id, seq = i}) end
        end }""")
    assert value == [500, 500, 500]


async def test_messages_before_listening_are_held_not_lost(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local pid = process.spawn("app:late", "app:host", process.pid())
          process.send(pid, "a", 1)
          process.send(pid, "b", 2)
          process.send(pid, "a", 3)
          return process.inbox():receive():payload():data()
        end }""", late="""
        return { main = function(parent)
          -- The parent sends all three before it blocks, and a spawned process first runs
          -- once its parent yields: every message is here before this process subscribes.
          local a = process.listen("a")
          local got = { (a:receive()), (a:receive()) }
          local rest = process.inbox():receive()
          process.send(parent, "done", { a = got, rest_topic = rest:topic(), rest = rest:payload():data() })
        end }""")
    assert value == {"a": [1, 3], "rest_topic": "b", "rest": 2}


async def test_unlistened_topics_fall_back_to_the_inbox_and_unlisten_returns_them(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local me = process.pid()
          local jobs = process.listen("job", { message = true })
          process.send(me, "job", "j1")
          process.send(me, "inbox", "i1")
          local first = jobs:receive()
          process.send(me, "job", "j2")
          process.unlisten(jobs)
          local _, ok = jobs:receive()
          local inbox = process.inbox()
          local a, b = inbox:receive(), inbox:receive()
          return { job = first:payload():data(), job_from = first:from() == me, closed = not ok,
                   order = { a:topic() .. "=" .. a:payload():data(), b:topic() .. "=" .. b:payload():data() } }
        end }""")
    assert value == {"job": "j1", "job_from": True, "closed": True, "order": ["inbox=i1", "job=j2"]}


async def test_inbox_and_events_return_the_same_channel(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          return { process.inbox() == process.inbox(), process.events() == process.events(),
                   process.listen("x") == process.listen("x") }
        end }""")
    assert value == [True, True, True]


async def test_bad_topics_and_destinations(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local me = process.pid()
          local out = {}
          for _, topic in ipairs({ "@inbox", "@events", "" }) do
            local ok, err = process.send(me, topic, 1)
            out[#out + 1] = (ok == nil) and err:kind()
          end
          local ok, err = pcall(process.listen, "@events")
          out[#out + 1] = ok
          local _, e2 = process.send("nobody-by-that-name", "t")
          out[#out + 1] = e2:kind()
          local _, e3 = process.send(123, "t")
          out[#out + 1] = e3:kind()
          local ch = process.inbox()
          local sent, e4 = pcall(ch.send, ch, 1)
          out[#out + 1] = sent
          return out
        end }""")
    assert value == ["Invalid", "Invalid", "Invalid", False, "NotFound", "Invalid", False]


async def test_send_to_an_exited_local_process_is_an_error(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local pid = process.spawn_monitored("app:quick", "app:host")
          process.events():receive()
          local ok, err = process.send(pid, "t", 1)
          return { ok == nil, err:kind(), err:message():find("not found") ~= nil }
        end }""", quick="return { main = function() return 1 end }")
    assert value == [True, "NotFound", True]


async def test_spawn_errors_are_values(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local out = {}
          local function kind(pid, err) return pid == nil and err:kind() or "spawned" end
          out.unknown_entry = kind(process.spawn("app:nope", "app:host"))
          out.unknown_host = kind(process.spawn("app:quick", "app:nohost"))
          out.not_a_process = kind(process.spawn("app:host", "app:host"))
          out.bad_id = kind(process.spawn(123, "app:host"))
          out.syntax = kind(process.spawn("app:broken", "app:host"))
          out.raises = kind(process.spawn("app:raises", "app:host"))
          local _, err = process.spawn("app:broken", "app:host")
          out.syntax_message = err:message()
          return out
        end }""", quick="return { main = function() return 1 end }", broken="return { main = function( end }",
        raises="error('top-level failure')")
    assert value["unknown_entry"] == "NotFound" and value["unknown_host"] == "NotFound"
    assert value["not_a_process"] == "Invalid" and value["bad_id"] == "Invalid"
    assert value["syntax"] == "Invalid" and "broken.lua:1" in value["syntax_message"]
    assert value["raises"] == "Internal"


async def test_exec_returns_the_result_or_the_error(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local v = process.exec("app:child", "app:host", 20)
          local none, err = process.exec("app:child", "app:host", -1)
          return { v = v, none = none == nil, kind = err:kind(), message = err:message() }
        end }""", child="""
        local time = require("time")
        return { main = function(n)
          if n < 0 then return nil, errors.new({ message = "negative", kind = errors.INVALID }) end
          time.sleep("1ms")
          return n * 2
        end }""")
    assert value == {"v": 40, "none": True, "kind": "Invalid", "message": "negative"}


async def test_spawner_builder(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local me = process.pid()
          local pid = process.with_context({ tenant = "acme" })
            :with_name("worker-1")
            :with_message("first", "hello")
            :spawn("app:child", "app:host", me)
          local same_pid = process.registry.lookup("worker-1") == pid
          process.send("worker-1", "second", "by name")
          local report = process.inbox():receive():payload():data()
          report.same_pid = same_pid
          report.exec = process.with_context({ tenant = "other" }):exec("app:ctx", "app:host")
          return report
        end }""", child="""
        local ctx = require("ctx")
        return { main = function(parent)
          local inbox = process.inbox()
          local a, b = inbox:receive(), inbox:receive()
          process.send(parent, "report", { tenant = ctx.get("tenant"), first = a:topic(), first_from = a:from() == parent,
                                           second = b:payload():data() })
        end }""", ctx="""
        local ctx = require("ctx")
        return { main = function() return ctx.get("tenant") end }""")
    assert value == {"tenant": "acme", "first": "first", "first_from": True,
                     "second": "by name", "same_pid": True, "exec": "other"}


async def test_name_registry(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local r = process.registry
          local me = process.pid()
          local out = {}
          out.register = r.register("me")
          out.again = r.register("me")
          local other = process.spawn_monitored("app:idle", "app:host")
          local _, clash = r.register("me", other)
          out.clash = clash:kind()
          out.lookup = r.lookup("me") == me
          local _, missing = r.lookup("ghost")
          out.missing = missing:kind()
          out.other = r.register("idle", other)
          process.send("idle", "stop")
          process.events():receive()
          local _, released = r.lookup("idle")
          out.released = released:kind()
          out.unregister = r.unregister("me")
          out.unregister_again = r.unregister("me")
          local _, scope = r.register("x", nil, r.CONSISTENT)
          out.scope = scope:kind()
          return out
        end }""", idle="return { main = function() process.inbox():receive() end }")
    assert value == {"register": True, "again": True, "clash": "AlreadyExists", "lookup": True, "missing": "NotFound",
                     "other": True, "released": "NotFound", "unregister": True, "unregister_again": False,
                     "scope": "Unavailable"}


async def test_options(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local before = process.get_options().trap_links
          local ok = process.set_options({ trap_links = true })
          local bad, err = process.set_options({ nope = 1 })
          local bad2, err2 = process.set_options({ trap_links = "yes" })
          return { before = before, ok = ok, after = process.get_options().trap_links,
                   bad = bad, kind = err:kind(), bad2 = bad2, kind2 = err2:kind() }
        end }""")
    assert value == {"before": False, "ok": True, "after": True, "bad": False, "kind": "Invalid", "bad2": False,
                     "kind2": "Invalid"}


async def test_processes_do_not_share_globals_or_module_state(tmp_path: Path) -> None:
    value = await run(tmp_path, """
        return { main = function()
          local me = process.pid()
          local a = process.spawn("app:counter", "app:host", me)
          local b = process.spawn("app:counter", "app:host", me)
          for _ = 1, 3 do process.send(a, "bump") end
          process.send(b, "bump")
          process.send(a, "report"); process.send(b, "report")
          local inbox = process.inbox()
          local reports = {}  -- a and b run in parallel: either may report first
          for _ = 1, 2 do
            local msg = inbox:receive()
            reports[msg:from() == a and 1 or 2] = msg:payload():data()
          end
          return { reports[1], reports[2], shared == nil }
        end }""", counter="""
        count = 0
        local calls = 0
        return { main = function(parent)
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            if msg:topic() == "report" then process.send(parent, "r", { count, calls }); return end
            count = count + 1; calls = calls + 1; shared = true
          end
        end }""")
    assert value == [[3, 3], [1, 1], True]


async def test_a_function_has_a_pid_for_the_call(tmp_path: Path) -> None:
    files = process_project({"driver": """
        local funcs = require("funcs")
        return { main = function()
          local result = funcs.call("app:spawner")
          local ok, err = process.send(result.me, "t", 1)
          return { child_value = result.exit.value, kind = result.exit.kind, from_child = result.from_child,
                   reply = result.reply, gone = err and err:kind() }
        end }""", "child": """
        return { main = function(parent) process.send(parent, "hi", "from child"); return 99 end }"""},
        extra_yaml="""
          - name: spawner
            kind: function.lua
            source: file://spawner.lua
            method: run
        """)
    files["spawner.lua"] = """
        return { run = function()
          local me = process.pid()
          local child = process.spawn_monitored("app:child", "app:host", me)
          local msg = process.inbox():receive()
          local exit = process.events():receive()
          return { me = me, reply = msg:payload():data(), exit = { value = exit.result.value, kind = exit.kind },
                   from_child = exit.from == child }
        end }"""
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])
    assert outcome.error is None, outcome.error
    assert outcome.value == {"child_value": 99, "kind": "pid.exit", "from_child": True, "reply": "from child",
                             "gone": "NotFound"}


async def test_process_objects_hold_no_python(tmp_path: Path) -> None:
    # Lua never reaches Python: a Python object would show up as userdata somewhere.
    value = await run(tmp_path, """
        local function walk(v, path, seen)
          -- A Python object would be userdata with a metatable; the runtime's own opaque
          -- objects (payloads, errors) hide theirs.
          if type(v) == "userdata" then return getmetatable(v) ~= false and path or nil end
          if type(v) == "function" then return nil end
          if type(v) ~= "table" or seen[v] then return nil end
          seen[v] = true
          if getmetatable(v) ~= nil and getmetatable(v) ~= false then return path .. " (metatable)" end
          for k, x in pairs(v) do
            local found = walk(x, path .. "." .. tostring(k), seen)
            if found then return found end
          end
        end
        return { main = function()
          local me = process.pid()
          local child = process.spawn_monitored("app:quick", "app:host")
          process.send(me, "t", { a = 1 }, "b")
          local msg = process.inbox():receive()
          local ev = process.events():receive()
          local objects = { process = process, registry = process.registry, msg = msg, event = ev,
                            inbox = process.inbox(), events = process.events(), topic = process.listen("x"),
                            spawner = process.with_context({ a = 1 }):with_message("m", 1),
                            payloads = msg:payload(), options = process.get_options() }
          for name, obj in pairs(objects) do
            local found = walk(obj, name, {})
            if found then return found end
          end
          return "clean"
        end }""", quick="return { main = function() return 1 end }")
    assert value == "clean"


async def test_a_function_has_the_process_api_as_soon_as_the_runtime_exists(tmp_path: Path) -> None:
    """A node serves workflow activities and spawns from other nodes before its runtime's
    start (the services) has run: a function called then still has the process API."""
    from moonwire.broker import Subjects
    from moonwire.lua import settled
    from moonwire.node import load_project
    from moonwire.node._runtime import Runtime
    from support import write_project

    files = process_project({}, extra_yaml="""
          - name: whoami
            kind: function.lua
            source: file://whoami.lua
            method: run
        """)
    files["whoami.lua"] = "return { run = function() return process.pid() end }"
    runtime = Runtime("t1", load_project(write_project(tmp_path, files)), Subjects())  # not started
    try:
        outcome = await settled(runtime.functions.call(None, "app:whoami", [], {}, {}))
        assert outcome.error is None, outcome.error
        assert outcome.value.startswith("{t1@funcs|")
    finally:
        await runtime.stop(1.0)
