"""``process.upgrade`` on one node (wippy-modules §12.1): a process replaces its code and
keeps its PID, mailbox, names, monitors and links; a failed upgrade ends it abnormally.
Each test runs Lua processes on a real scheduler (a node's runtime, no broker: this is
local semantics); tests/test_upgrade_nodes.py covers watchers on other nodes."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from moonwire.lua import Mailbox, Message, Pending
from moonwire.lua._channel import Channel
from moonwire.lua._holdings import Holdings, Timer
from support import LocalRuntime
from support import process_project as plain_project


def process_project(sources: dict[str, str], *, extra_yaml: str = "") -> dict[str, str]:
    """support.process_project, with the ``security`` module for every process too."""
    files = plain_project(sources, extra_yaml=extra_yaml)
    files["_index.yaml"] = files["_index.yaml"].replace("modules: [time, json, funcs, ctx, uuid]",
                                                        "modules: [time, json, funcs, ctx, uuid, security]")
    return files

# A process that answers "who" with its PID, the names it has, its options, its
# context value and actor, and the version of its code; "fail" ends it with an error;
# "upgrade" replaces its code with the entry named (nil: its own) and the arguments.
def versioned(version: str) -> str:
    return f"""
        local security = require("security")
        return {{ main = function(arg)
          local inbox = process.inbox()
          while true do
            local m = inbox:receive()
            local topic, data = m:topic(), m:payload() and m:payload():data()
            if topic == "who" then
              local actor = security.actor()
              process.send(m:from(), "me", {{ version = "{version}", arg = arg, pid = process.pid(),
                name = process.registry.lookup("p"), options = process.get_options(),
                ctx = ctx.get("k"), actor = actor and actor:id() }})
            elseif topic == "fail" then
              error("failed on purpose")
            elseif topic == "upgrade" then
              process.upgrade(data.entry, data.arg)
            elseif topic == "watch" then
              process.send(m:from(), "ok", process.monitor(data))
            elseif topic == "event" then
              local e = process.events():receive()
              process.send(m:from(), "ev", {{ kind = e.kind, from = e.from }})
            end
          end
        end }}"""


UPGRADE_DRIVER = """
    local security = require("security")
    return { main = function()
      local me = process.pid()
      process.set_options({ trap_links = true })
      local events, inbox = process.events(), process.inbox()
      local p = process.with_context({ k = "kept" }):with_actor(security.new_actor("alice"))
        :spawn_linked_monitored("app:v1", "app:host", "first")
      local function ask(topic, data)
        process.send(p, topic, data)
        return inbox:receive():payload():data()
      end
      local before = ask("who")
      assert(process.registry.register("p", p))
      local watched = process.spawn("app:idle", "app:host")
      assert(ask("watch", watched))                    -- p monitors a process of its own
      process.send(p, "upgrade", { entry = "app:v2", arg = "second" })
      local after = ask("who")
      -- An EXIT or LINK_DOWN of the upgrade would be here by now: local exits are posted
      -- synchronously, and p answered after it upgraded.
      local quiet = channel.select({ events:case_receive(), default = true }).default == true
      process.send(p, "upgrade", { arg = "third" })   -- nil entry: its own (now app:v2)
      local again = ask("who")
      process.send(watched, "stop")
      local seen = ask("event")                        -- p's monitor, made before the upgrades
      process.send(p, "fail")
      local exit1, exit2 = events:receive(), events:receive()
      local name_after, name_err = process.registry.lookup("p")
      return { before = before, after = after, again = again, quiet = quiet, p = p,
               seen = { seen.kind, seen.from == watched },
               kinds = { exit1.kind, exit2.kind }, from = { exit1.from == p, exit2.from == p },
               errors = { tostring(exit1.result.error), tostring(exit2.result.error) },
               name_after = name_after, name_err = name_err and name_err:kind() }
    end }"""


async def execute(runtime: Any, entry: str, *args: Any) -> Any:
    outcome = await runtime.execute(entry, list(args))
    assert outcome.error is None, outcome.error
    return outcome.value


async def test_upgrade_keeps_pid_names_monitors_links_context_and_options(tmp_path: Path) -> None:
    files = process_project({"driver": UPGRADE_DRIVER, "v1": versioned("v1"), "v2": versioned("v2"),
                             "idle": "return { main = function() process.inbox():receive() end }"})
    files["v1.lua"] = files["v1.lua"].replace('local inbox = process.inbox()',
                                              'process.set_options({ upgradable = true })\n'
                                              '          local inbox = process.inbox()', 1)
    async with LocalRuntime(tmp_path, files) as runtime:
        value = await execute(runtime, "app:driver")
    before, after, again = value["before"], value["after"], value["again"]
    assert (before["version"], after["version"], again["version"]) == ("v1", "v2", "v2")
    assert (before["arg"], after["arg"], again["arg"]) == ("first", "second", "third")
    assert before["pid"] == after["pid"] == again["pid"] == value["p"]
    assert after["name"] == again["name"] == value["p"]                      # its name is kept
    assert after["ctx"] == "kept" and after["actor"] == "alice"               # context and actor too
    assert after["options"] == {"trap_links": False, "upgradable": True}     # and its options
    assert value["quiet"] is True                                            # nobody heard of the upgrades
    assert value["seen"] == ["pid.exit", True]                               # what it monitors, it still does
    # The monitor and the link made before the upgrades fire once, when it really exits.
    assert sorted(value["kinds"]) == ["pid.exit", "pid.link.down"] and value["from"] == [True, True]
    assert all("failed on purpose" in err for err in value["errors"])
    assert "name_after" not in value and value["name_err"] == "NotFound"     # released at the exit


# Messages are numbered 1..N; the receiver upgrades after every STEP it took, and reports
# every number it received, in order, once N arrived.
FLOOD_N, FLOOD_STEP = 3000, 97

FLOOD_RECEIVER = f"""
    return {{ main = function(parent, got)
      got = got or {{}}
      local inbox = process.inbox()
      for _ = 1, {FLOOD_STEP} do
        local n = inbox:receive():payload():data()
        got[#got + 1] = n
        if n == {FLOOD_N} then process.send(parent, "got", got) return end
      end
      process.upgrade(nil, parent, got)
    end }}"""

FLOOD_SENDER = f"""
    return {{ main = function(to)
      -- process.send yields every 64 sends: the receiver runs, and upgrades, meanwhile.
      for i = 1, {FLOOD_N} do process.send(to, "n", i) end
    end }}"""

FLOOD_DRIVER = """
    return { main = function()
      local receiver = process.spawn("app:receiver", "app:host", process.pid())
      process.spawn("app:sender", "app:host", receiver)
      return process.inbox():receive():payload():data()
    end }"""


async def test_upgrade_under_a_flood_loses_and_reorders_nothing(tmp_path: Path) -> None:
    files = process_project({"driver": FLOOD_DRIVER, "receiver": FLOOD_RECEIVER, "sender": FLOOD_SENDER})
    async with LocalRuntime(tmp_path, files) as runtime:
        got = await execute(runtime, "app:driver")
    assert got == list(range(1, FLOOD_N + 1))


# What the old code subscribed but did not read goes back to the mailbox in arrival
# order, across topics; so does a message handed to a coroutine of the old code that had
# not run yet when a sibling upgraded.
MERGE_PROCESS = """
    return { main = function(parent, phase)
      if phase == "new" then
        local inbox, got = process.inbox(), {}
        for i = 1, 6 do local m = inbox:receive() got[i] = m:topic() .. m:payload():data() end
        process.send(parent, "got", got)
        return
      end
      local b = process.listen("b")                      -- never read: b's wait in its channel
      local inbox = process.inbox()                      -- a's and c's: read only by the coroutine
      local go = process.listen("go")
      coroutine.spawn(function() inbox:receive() error("never runs: the upgrade comes first") end)
      process.send(parent, "ready")
      go:receive()                                       -- woken before the coroutine (see driver)
      process.upgrade(nil, parent, "new")
    end }"""

MERGE_DRIVER = """
    return { main = function()
      local inbox = process.inbox()
      local p = process.spawn("app:merge", "app:host", process.pid())
      inbox:receive()                                    -- ready: both threads of p wait
      -- In one step: "go" wakes p's main thread, then "a1" is handed to its coroutine,
      -- which is queued behind it; the rest wait in channels.
      process.send(p, "go", "")
      process.send(p, "a", "1")
      process.send(p, "b", "2")
      process.send(p, "a", "3")
      process.send(p, "b", "4")
      process.send(p, "c", "5")
      process.send(p, "b", "6")
      return inbox:receive():payload():data()
    end }"""


async def test_upgrade_keeps_unread_messages_in_arrival_order_across_topics(tmp_path: Path) -> None:
    files = process_project({"driver": MERGE_DRIVER, "merge": MERGE_PROCESS})
    async with LocalRuntime(tmp_path, files) as runtime:
        got = await execute(runtime, "app:driver")
    assert got == ["a1", "b2", "a3", "b4", "c5", "b6"]


FAILING = {
    "broken": "return { main = function() end ",           # does not compile
    "raises": "error('no config') return { main = function() end }",
    "nomethod": "return { other = function() end }",
    "target": versioned("target"),
}

FAILURE_DRIVER = """
    return { main = function(cases)
      process.set_options({ trap_links = true })
      local events, out = process.events(), {}
      for _, to in ipairs(cases) do
        local p = process.spawn_linked_monitored("app:target", "app:host")
        process.send(p, "upgrade", { entry = to, arg = 1 })
        local a, b = events:receive(), events:receive()
        local err = a.result.error
        out[#out + 1] = { kinds = a.kind .. "+" .. b.kind, message = err:message(), kind = err:kind(),
                          same = tostring(b.result.error) == tostring(err) }
      end
      return out
    end }"""


async def test_failed_upgrades_end_the_process_abnormally(tmp_path: Path) -> None:
    cases = ["app:nope", "nope", "app:fn", "app:broken", "app:raises", "app:nomethod"]
    extra = "- {name: fn, kind: function.lua, source: file://fn.lua}"
    files = process_project({"driver": FAILURE_DRIVER, **FAILING}, extra_yaml=extra)
    files["fn.lua"] = "return function() return 1 end"
    async with LocalRuntime(tmp_path, files) as runtime:
        got = await execute(runtime, "app:driver", cases)
    for case, result in zip(cases, got, strict=True):
        assert result["kinds"] in ("pid.exit+pid.link.down", "pid.link.down+pid.exit"), (case, result)
        assert result["same"], (case, result)
    messages = [result["message"] for result in got]
    assert messages[0] == "upgrade: create failed: no entry app:nope" and got[0]["kind"] == "NotFound"
    assert messages[1].startswith("upgrade: create failed: no entry nope (an entry id is namespace:name)")
    assert messages[2] == "upgrade: create failed: app:fn is a function.lua, not a process.lua entry"
    assert messages[3].startswith("upgrade: create failed: syntax error in app:broken: broken.lua:1:")
    assert messages[4].startswith("upgrade: init failed: app:raises failed to load:") and "no config" in messages[4]
    assert messages[5].startswith("upgrade: init failed: app:nomethod: method 'main' not found")


UPGRADE_IN_FUNCTION = """
    return function()
      local ok, err = process.upgrade("app:target")
      return { failed = ok == nil, kind = err:kind(), message = err:message() }
    end"""

BAD_ARGUMENTS = """
    return { main = function(parent)
      local ok, err = process.upgrade(nil, function() end)
      process.send(parent, "answer", { failed = ok == nil, kind = err:kind(), alive = true })
    end }"""


async def test_upgrade_outside_a_process_or_with_uncopyable_arguments_returns_an_error(tmp_path: Path) -> None:
    extra = "- {name: fn, kind: function.lua, source: file://fn.lua}"
    files = process_project({"target": versioned("t"), "bad": BAD_ARGUMENTS, "driver": """
        local funcs = require("funcs")
        return { main = function()
          process.spawn("app:bad", "app:host", process.pid())
          return { fn = funcs.call("app:fn"), bad = process.inbox():receive():payload():data() }
        end }"""}, extra_yaml=extra)
    files["fn.lua"] = UPGRADE_IN_FUNCTION
    async with LocalRuntime(tmp_path, files) as runtime:
        value = await execute(runtime, "app:driver")
    assert value["fn"]["failed"] is True and value["fn"]["kind"] == "Invalid"
    assert "only a process can upgrade" in value["fn"]["message"]
    assert value["bad"] == {"failed": True, "kind": "Invalid", "alive": True}


# The old code leaves a timer, a sleeping coroutine, a call in flight, a channel and
# subscriptions behind; none of it survives, and none of it reaches the new code.
LEFTOVERS = """
    local time, funcs = require("time"), require("funcs")
    return { main = function(parent, phase)
      if phase == "new" then
        process.send(parent, "upgraded", process.pid())
        local m = process.inbox():receive()               -- the first thing the new code gets
        process.send(parent, "first", m:topic())
        return
      end
      local tick = time.after("30ms")
      coroutine.spawn(function() tick:receive() process.send(parent, "stray", "timer") end)
      coroutine.spawn(function() time.sleep("30ms") process.send(parent, "stray", "sleep") end)
      local ch = channel.new()
      coroutine.spawn(function() ch:receive() end)
      local later = funcs.async("app:slow")
      coroutine.spawn(function() funcs.call("app:slow") process.send(parent, "stray", "call") end)
      process.listen("x")
      process.events()
      local go = process.listen("go")
      process.send(parent, "ready")                      -- the coroutines wait by now
      go:receive()
      process.upgrade(nil, parent, "new")
    end }"""

LEFTOVERS_DRIVER = """
    local funcs = require("funcs")
    return { main = function()
      local inbox = process.inbox()
      local p = process.spawn("app:leftovers", "app:host", process.pid())
      inbox:receive()
      process.send(p, "go", true)
      local m = inbox:receive()
      -- On a slow machine the old code's timer may fire before the upgrade: such a stray
      -- was sent by the old code, legitimately. None may come after the upgrade.
      while m:topic() == "stray" do m = inbox:receive() end
      local upgraded = m:payload():data()
      funcs.call("app:slow")                            -- longer than the old timer, sleep and call
      local stray = channel.select({ inbox:case_receive(), default = true })
      process.send(p, "report")
      local first = inbox:receive():payload():data()
      return { upgraded = upgraded == p, stray = not stray.default, first = first }
    end }"""


async def test_upgrade_drops_the_old_threads_timers_calls_and_subscriptions(tmp_path: Path) -> None:
    extra = "- {name: slow, kind: function.lua, source: file://slow.lua, modules: [time]}"
    files = process_project({"driver": LEFTOVERS_DRIVER, "leftovers": LEFTOVERS}, extra_yaml=extra)
    files["slow.lua"] = "local time = require('time') return function() time.sleep('60ms') return 1 end"
    async with LocalRuntime(tmp_path, files) as runtime:
        value = await execute(runtime, "app:driver")
    assert value == {"upgraded": True, "stray": False, "first": "report"}


# A process that upgrades itself in a loop, leaving the same litter each time.
LOOPER = """
    local time, funcs = require("time"), require("funcs")
    return { main = function(n, parent, busy)
      if busy then local x = 0 for i = 1, 4000000 do x = x + i end end  -- longer than a turn
      process.inbox() process.events() process.listen("x")
      local t = time.after("1h")
      local ch = channel.new()
      coroutine.spawn(function() ch:receive() end)
      local f = funcs.async("app:slow")
      if n > 0 then process.upgrade(nil, n - 1, parent, busy) end
      process.send(parent, "reached")
      local m = process.inbox():receive():payload():data()
      if m.n < 0 then return end
      process.upgrade(nil, m.n, m.parent, m.busy)
    end }"""

LOOP_DRIVER = """
    return { main = function(n, busy)
      local me = process.pid()
      local p, err = process.registry.lookup("looper")
      if p then
        process.send(p, "again", { n = n, parent = me, busy = busy })
      else
        p = process.with_options({}):with_name("looper"):spawn("app:looper", "app:host", n, me)
      end
      process.inbox():receive()
      return p
    end }"""


def _python_objects() -> dict[str, int]:
    gc.collect()
    kinds = (Channel, Timer, Holdings, Pending, Mailbox)
    counts = dict.fromkeys((kind.__name__ for kind in kinds), 0)
    for obj in gc.get_objects():
        for kind in kinds:
            if isinstance(obj, kind):
                counts[kind.__name__] += 1
    return counts


# Counts the Lua objects reachable in a state, by type, leaving out lupa's table of
# references to Python objects: it keeps a slot for every wrapper alive since the last
# release (lua/_core.lua, release_wrappers), so its size follows the objects processes
# made, upgraded or not; everything else must stay put.
REACHABLE = """
local seen, counts, skip = {}, {}, debug.getregistry().LUPA_PYTHON_REFERENCES_TABLE
local stack = { debug.getregistry() }
while #stack > 0 do
  local v = table.remove(stack)
  local t = type(v)
  if not seen[v] and v ~= skip and (t == "table" or t == "function" or t == "userdata" or t == "thread") then
    seen[v] = true
    counts[t] = (counts[t] or 0) + 1
    if t == "table" then
      for k, x in next, v do stack[#stack + 1] = k stack[#stack + 1] = x end
    elseif t == "function" then
      local i = 1
      while true do local name, x = debug.getupvalue(v, i) if not name then break end stack[#stack + 1] = x i = i + 1 end
    end
    local mt = debug.getmetatable(v)
    if mt then stack[#stack + 1] = mt end
    if t == "userdata" then stack[#stack + 1] = debug.getuservalue(v) end
  end
end
local references = 0
for _ in next, skip do references = references + 1 end
return counts.table or 0, counts["function"] or 0, counts.userdata or 0, counts.thread or 0, references
"""


async def test_an_upgrade_loop_leaves_memory_flat_and_the_loop_free(tmp_path: Path) -> None:
    from test_loop_turns import Probe

    extra = "- {name: slow, kind: function.lua, source: file://slow.lua, modules: [time]}"
    files = process_project({"driver": LOOP_DRIVER, "looper": LOOPER}, extra_yaml=extra)
    files["slow.lua"] = "local time = require('time') return function() time.sleep('1h') end"
    async with LocalRuntime(tmp_path, files) as runtime:
        host = runtime.hosts["app:host"]

        def measure() -> tuple[int, tuple[int, ...], int, dict[str, int]]:
            for each in runtime.hosts.values():  # Lua's garbage holds Python objects until collected
                for other in each._shards:
                    for _ in range(3):  # what has a finaliser goes in the cycle after it ran
                        other.state.core.collect()
            (shard,) = host._shards
            *reachable, references = shard.state.runtime.execute(REACHABLE)
            return shard.state.memory_used(), tuple(reachable), references, _python_objects()

        pid = await execute(runtime, "app:driver", 200, False)
        memory1, lua1, refs1, python1 = measure()
        assert await execute(runtime, "app:driver", 2000, False) == pid
        memory2, lua2, refs2, python2 = measure()
        # 20 upgrades in a row, each longer than a turn: chained in one step they would
        # hold the loop for all of them (test_loop_turns.py counts turns the same way).
        async with Probe() as probe:
            assert await execute(runtime, "app:driver", 20, True) == pid
        unit = runtime.processes.records[pid].unit
        holdings = unit.holdings()
        # What the last incarnation holds, and nothing of the 2200 before it.
        assert len(unit.threads) == 2  # main and its coroutine
        assert (len(holdings.timers), len(holdings.children), len(holdings.sleeping)) == (1, 1, 0)
        runtime.processes.route(pid, Message("again", [{"n": -1}]))  # ends it
    assert python2 == python1, (python1, python2)
    # Tables, functions, userdata, threads: each incarnation made some of each; nothing
    # is left of them (userdata vary with the pool of tokens, refilled 64 at a time).
    assert all(abs(after - before) <= 70 for before, after in zip(lua1, lua2, strict=True)), (lua1, lua2)
    # The memory: no more than lupa's reference table can have grown by (it doubles:
    # 48 bytes a hash node, up to the next power of two), and the collector's slack. The
    # counts above are the sharp check: whatever a leak kept would be reachable.
    assert memory2 - memory1 <= 48 * (1 << refs2.bit_length()) + 32 * 1024, (memory1, memory2, refs1, refs2)
    assert probe.turns >= 10


HUGE = """
    return { main = function(parent, n, state)
      if state then process.send(parent, "carried", #state) return end
      local big = {}
      for i = 1, n do big[i] = i end
      process.upgrade(nil, parent, n, big)
    end }"""


async def test_upgrade_arguments_are_charged_like_a_send(tmp_path: Path) -> None:
    """The state an upgrade carries is copied within the process's instruction budget:
    a large one passes, a huge one ends the process with the budget's error instead of
    holding the event loop while it converts."""
    files = process_project({"huge": HUGE, "driver": """
        return { main = function()
          process.set_options({ trap_links = true })
          local me, events = process.pid(), process.events()
          process.spawn_monitored("app:huge", "app:host", me, 5000)
          local carried = process.inbox():receive():payload():data()
          events:receive()
          process.spawn_monitored("app:huge", "app:host", me, 500000)
          local err = events:receive().result.error
          return { carried = carried, error = err and err:message() }
        end }"""})
    async with LocalRuntime(tmp_path, files) as runtime:
        value = await execute(runtime, "app:driver")
    assert value["carried"] == 5000
    assert "instruction budget exceeded" in value["error"]


# Answers "read" with the OUTDATED events it has (without waiting); "upgrade": the same,
# from its next incarnation.
OUTDATED_READER = """
    return { main = function(upgradable, reply_to)
      process.set_options({ upgradable = upgradable })
      local inbox, events = process.inbox(), process.events()
      local function report(to)
        local seen = {}
        while true do
          local r = channel.select({ events:case_receive(), default = true })
          if r.default then break end
          seen[#seen + 1] = { kind = r.value.kind, sources = r.value.sources, from = r.value.from }
        end
        process.send(to, "seen", seen)
      end
      if reply_to then report(reply_to) end
      while true do
        local m = inbox:receive()
        if m:topic() == "upgrade" then process.upgrade(nil, upgradable, m:from()) end
        report(m:from())
      end
    end }"""

READ_DRIVER = """
    return { main = function(pid, topic)
      process.send(pid, topic or "read")
      return process.inbox():receive():payload():data()
    end }"""


async def test_outdated_goes_to_upgradable_processes_once_until_received(tmp_path: Path) -> None:
    from dataclasses import replace

    from moonwire.lua import SpawnRequest

    files = process_project({"reader": OUTDATED_READER, "driver": READ_DRIVER, "lib": "return {}"})
    files["_index.yaml"] = files["_index.yaml"].replace(
        "source: file://reader.lua\n    method: main\n",
        "source: file://reader.lua\n    method: main\n    imports: {lib: app:lib}\n")
    async with LocalRuntime(tmp_path, files) as runtime:
        table = runtime.processes
        told = table.start(SpawnRequest("app:reader", "app:host", [True]))
        untold = table.start(SpawnRequest("app:reader", "app:host", [False]))
        assert not await execute(runtime, "app:driver", told)  # running, nothing yet
        code = table.records[told].code
        lib = dict(code.imports)["lib"]
        new_reader = replace(code, source=code.source + b"\n")
        new_lib = replace(lib, source=b"return { v = 2 }")

        def current(changed: dict[str, Any]) -> Any:
            return lambda entry_id: changed.get(entry_id, {code.id: code, lib.id: lib}.get(entry_id))

        assert table.outdated(current({code.id: new_reader})) == 1            # the untold one is not told
        assert table.outdated(current({code.id: new_reader, lib.id: new_lib})) == 1
        first = await execute(runtime, "app:driver", told)
        assert first == [{"kind": "pid.outdated", "sources": ["app:reader", "app:lib"], "from": ""}]
        assert not await execute(runtime, "app:driver", untold)
        table.outdated(current({lib.id: new_lib}))                            # after it was received: anew
        assert await execute(runtime, "app:driver", told) == [
            {"kind": "pid.outdated", "sources": ["app:lib"], "from": ""}]
        table.outdated(current({lib.id: new_lib}))
        assert not await execute(runtime, "app:driver", told, "upgrade")     # the upgrade dropped it
        table.terminate(None, told)
        table.terminate(None, untold)
