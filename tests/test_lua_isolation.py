"""No Lua code can change what another process or call sees (issue 14, finding 1).

An attacker walks everything it can reach from its environment, by every route Lua
offers (``pairs``/``next``/``ipairs`` and the state they hand out, ``rawget``,
``getmetatable`` and ``__index`` tables, values returned by library constructors,
``coroutine.running()``), and tries every way of writing into each table it finds
(assignment, ``rawset``, ``table.insert``/``remove``/``move``/``sort``,
``setmetatable``). A victim sharing the attacker's Lua state then takes a fingerprint
of everything it can reach the same way: it must equal the fingerprint taken before
the attack. The same runs between processes on one host (one shared state) and between
calls served by one function worker.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from moonwire.lua import LuaState
from support import LocalRuntime, process_project, run_lua

MODULES = ("time", "json", "uuid", "logger", "ctx", "funcs")

# Everything reachable from an environment: the globals every unit has, the modules,
# and what the constructors of library objects return. `walk(visit)` calls
# visit(path, value) once per distinct table and once per leaf, following every route.
WALKER = r"""
local function roots()
  local r = {
    ["_G"] = _G, string = string, table = table, math = math, os = os, coroutine = coroutine,
    errors = errors, channel = channel, payload = payload, process = process,
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    xpcall = xpcall, rawequal = rawequal, rawget = rawget, rawset = rawset, select = select,
    setmetatable = setmetatable, getmetatable = getmetatable, tonumber = tonumber,
    tostring = tostring, type = type, print = print, require = require,
  }
  for _, name in ipairs({"time", "json", "uuid", "logger", "ctx", "funcs"}) do
    local ok, m = pcall(require, name)
    if ok then r["module:" .. name] = m end
  end
  -- Values library functions hand out.
  local made = {
    funcs_new = function() return r["module:funcs"].new() end,
    channel = function() return channel.new(1) end,
    error = function() return errors.new("x") end,
    payload = function() return payload.new(1) end,
    now = function() return r["module:time"].now() end,
    duration = function() return (r["module:time"].parse_duration("1s")) end,
    utc = function() return r["module:time"].UTC end,
    location = function() return r["module:time"].now():location() end,
    logger = function() return r["module:logger"] end,
    spawner = function() return process and process.with_context({}) end,
    thread = function() return coroutine.running() end,
    string_meta = function() return getmetatable("") end,
    inbox = function() return process and process.inbox() end,
    events = function() return process and process.events() end,
  }
  for name, make in pairs(made) do
    local ok, v = pcall(make)
    if ok and v ~= nil then r["made:" .. name] = v end
  end
  return r
end

local function walk(visit)
  local seen = {}
  local function go(path, v, depth)
    local t = type(v)
    if t ~= "table" and t ~= "function" and t ~= "thread" then
      visit(path, v)
      return
    end
    if seen[v] then return end
    seen[v] = true
    visit(path, v)
    if t ~= "table" or depth > 6 then return end
    -- pairs and next, and whatever state their iterators hand out
    local okp, f, s, c = pcall(pairs, v)
    if okp then
      local guard = 0
      local okn, k, val = pcall(f, s, c)
      while okn and k ~= nil and guard < 10000 do
        guard = guard + 1
        go(path .. "." .. tostring(k), val, depth + 1)
        okn, k, val = pcall(f, s, k)
      end
      if type(s) == "table" then go(path .. "<pairs-state>", s, depth + 1) end
    end
    local ok, mt = pcall(getmetatable, v)
    if ok and type(mt) == "table" then
      go(path .. "<mt>", mt, depth + 1)
      if type(mt.__index) == "table" then go(path .. "<index>", mt.__index, depth + 1) end
    end
    local oki, _, is = pcall(ipairs, v)
    if oki and type(is) == "table" then go(path .. "<ipairs-state>", is, depth + 1) end
    local okx, k2, v2 = pcall(next, v)
    if okx and k2 ~= nil then go(path .. "<next>." .. tostring(k2), v2, depth + 1) end
  end
  for name, v in pairs(roots()) do go(name, v, 0) end
end

-- Names of distinct Lua values within one state (tostring of a function or table is
-- its address), with made objects' own identity ignored: they are new on every call.
local function fingerprint()
  local lines = {}
  walk(function(path, v)
    local t = type(v)
    local shown
    if t == "function" then shown = tostring(v)
    elseif t == "table" or t == "thread" then shown = t
    else shown = t .. ":" .. tostring(v) end
    -- Made objects are new on each call: their functions' identity, the clock and the
    -- caller's line in an error's frames differ.
    if not (path:find("^made:") and t == "function") and not path:find("^made:now")
       and not path:find("^made:error._frames") then
      lines[#lines + 1] = path .. "=" .. shown
    end
  end)
  table.sort(lines)
  return table.concat(lines, "\n")
end
"""

ATTACK = r"""
local function evil() return "pwned" end
local function attack()
  local tried, landed = 0, {}
  walk(function(path, v)
    -- Its own globals are its own to change (and a function worker keeps them).
    if type(v) ~= "table" or v == _G then return end
    local keys = {}
    local okp, f, s, c = pcall(pairs, v)
    if okp then
      local okn, k = pcall(f, s, c)
      local guard = 0
      while okn and k ~= nil and guard < 1000 do
        guard = guard + 1
        keys[#keys + 1] = k
        okn, k = pcall(f, s, k)
      end
    end
    keys[#keys + 1] = "__pwned"
    keys[#keys + 1] = "_ns"
    keys[#keys + 1] = "_zone"
    keys[#keys + 1] = "_context"
    keys[#keys + 1] = 1
    local function mark(how) landed[#landed + 1] = path .. " by " .. how end
    for _, k in ipairs(keys) do
      tried = tried + 2
      if pcall(function() v[k] = evil end) then mark("assignment of " .. tostring(k)) end
      if pcall(rawset, v, k, evil) then mark("rawset of " .. tostring(k)) end
    end
    tried = tried + 5
    if pcall(table.insert, v, evil) then mark("table.insert") end
    if pcall(table.remove, v, 1) then mark("table.remove") end
    if pcall(table.move, {evil}, 1, 1, 1, v) then mark("table.move") end
    pcall(table.sort, v)
    if pcall(setmetatable, v, {__index = function() return evil end}) then mark("setmetatable") end
  end)
  return tried, landed
end
"""


def attacker_source() -> str:
    return WALKER + ATTACK + "return function() local tried, landed = attack(); return {tried, #landed} end\n"


def fingerprint_source() -> str:
    return WALKER + "return function() return fingerprint() end\n"


async def test_the_walk_reaches_libraries_modules_and_made_objects() -> None:
    # The fingerprint is only worth something if it covers what an attacker would change.
    text = (await run_lua(fingerprint_source(), modules=MODULES)).value
    for path in ("string.format=function", "table.insert=function", "channel.new=function",
                 "errors.new=function", "funcs.call=function", ".RFC3339=string:2006-01-02T15:04:05Z07:00",
                 "made:funcs_new", "made:channel=table", "json.encode=function"):
        assert path in text, path  # modules are globals too: reached as _G.funcs or module:funcs


async def test_no_route_lets_one_unit_change_what_another_in_its_state_sees() -> None:
    state = LuaState()
    before = (await run_lua(fingerprint_source(), state=state, name="t:fingerprint", modules=MODULES)).value
    attack = await run_lua(attacker_source(), state=state, name="t:attacker", modules=MODULES)
    assert attack.error is None, attack.error
    tried, _landed_in_own_objects = attack.value
    assert tried > 500  # the attack really ran through many tables
    after = (await run_lua(fingerprint_source(), state=state, name="t:fingerprint", modules=MODULES)).value
    assert _diff(before, after) == [], "\n".join(_diff(before, after))
    victim = await run_lua("""
        local funcs = require("funcs")
        local time = require("time")
        return function()
          return {string.format("%d", 7), ("x"):rep(2), table.concat({"a", "b"}), math.max(1, 2),
                  os.time() > 0, errors.new("e"):message(), tostring(time.UTC), funcs.new()._context == nil}
        end""", state=state, name="t:victim", modules=MODULES)
    assert victim.value == ["7", "xx", "ab", 2, True, "e", "UTC", True]


async def test_the_pairs_route_of_the_original_finding() -> None:
    state = LuaState()
    for lib, key in (("string", "format"), ("table", "concat"), ("math", "max"), ("os", "time"),
                     ("coroutine", "wrap"), ("errors", "new"), ("channel", "new")):
        outcome = await run_lua(f"""
            return function()
              local _, s = pairs({lib})
              if type(s) == "table" then pcall(function() s.{key} = function() return "pwned" end end) end
              local n = 0
              for k, v in pairs({lib}) do n = n + 1 end
              return n
            end""", state=state, name=f"t:pairs_{lib}")
        assert outcome.error is None and outcome.value > 0, (lib, outcome.error)
    seen = await run_lua("""
        return function()
          return {string.format("%d", 1), table.concat({"a"}), math.max(3, 4), type(os.time()),
                  type(coroutine.wrap(function() end)), errors.new("x"):message(), type(channel.new(1))}
        end""", state=state, name="t:seen")
    assert seen.value == ["1", "a", 4, "number", "function", "x", "table"]


async def test_funcs_new_hands_out_a_fresh_executor() -> None:
    state = LuaState()
    await run_lua("""
        local funcs = require("funcs")
        return function() local e = funcs.new(); e._context = {["@actor"] = "mallory"} end""",
                  state=state, name="t:a", modules=MODULES)
    seen = await run_lua("""
        local funcs = require("funcs")
        return function() return funcs.new()._context == nil end""", state=state, name="t:b", modules=MODULES)
    assert seen.value is True


async def test_closing_the_running_unit_thread_is_a_clear_error() -> None:
    outcome = await run_lua("return function() coroutine.close(coroutine.running()); return 'went on' end")
    assert outcome.error is not None and "coroutine.close" in outcome.error.message
    # Inside a user coroutine, closing itself is Lua's own business, and the unit goes on.
    outcome = await run_lua("""
        return function()
          local co = coroutine.create(function() return coroutine.close(coroutine.running()) end)
          local ok, err = coroutine.resume(co)
          return {ok, coroutine.status(co)}
        end""")
    assert outcome.error is None and outcome.value[1] == "dead", outcome.value


async def test_processes_on_one_host_cannot_change_each_others_libraries(tmp_path: Path) -> None:
    files = process_project({
        "driver": textwrap.dedent("""
            return { main = function()
              local me = process.pid()
              local victim = process.spawn("app:victim", "app:host", me)
              assert(process.inbox():receive():topic() == "ready")
              local attacker = process.spawn_monitored("app:attacker", "app:host")
              local exit = process.events():receive()
              process.send(victim, "go")
              local verdict = process.inbox():receive():payload():data()
              return { attacker = exit.result and exit.result.value, verdict = verdict }
            end }
        """),
        "attacker": WALKER + ATTACK + "local function main() local tried = attack(); return tried end\nreturn { main = main }\n",
        "victim": WALKER + textwrap.dedent("""
            local function main(driver)
              local before = fingerprint()
              process.send(driver, "ready")
              process.inbox():receive()
              local same = before == fingerprint()
              process.send(driver, "verdict", same and string.format("%s", "unchanged") or "changed")
            end
            return { main = main }
        """),
    })
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])  # type: ignore[attr-defined]
    assert outcome.error is None, outcome.error
    assert outcome.value["attacker"] > 500
    assert outcome.value["verdict"] == "unchanged"


def _diff(before: str, after: str) -> list[str]:
    a, b = set(before.splitlines()), set(after.splitlines())
    return sorted(f"- {x}" for x in a - b) + sorted(f"+ {x}" for x in b - a)


async def test_calls_served_by_one_function_worker_cannot_change_what_later_calls_see(tmp_path: Path) -> None:
    # One static worker: every call below runs in the same Lua state, one after another.
    # (A function's own module-level locals do persist on its worker, as a warm instance
    # would; that is its own code, not another call's view of what is shared.)
    files = {
        "app.yaml": textwrap.dedent("""
            namespace: app
            entries:
              - name: fn
                kind: function.lua
                source: file://fn.lua
                modules: [time, json, uuid, logger, ctx, funcs]
                pool: {workers: 1}
        """),
        "fn.lua": WALKER + ATTACK + textwrap.dedent("""
            return function(mode)
              if mode == "attack" then return (attack()) end
              return fingerprint()
            end
        """),
    }
    async with LocalRuntime(tmp_path, files) as runtime:
        before = await runtime.execute("app:fn", ["fingerprint"])  # type: ignore[attr-defined]
        attack = await runtime.execute("app:fn", ["attack"])  # type: ignore[attr-defined]
        after = await runtime.execute("app:fn", ["fingerprint"])  # type: ignore[attr-defined]
    assert attack.error is None and attack.value > 500, attack
    assert before.error is None and _diff(before.value, after.value) == [], "\n".join(_diff(before.value, after.value))


async def test_a_finaliser_never_runs_inside_another_unit() -> None:
    # Lua runs a finaliser inside whatever code is running when the collector gets to
    # it: unit A's `__gc` ran during unit B and read B's context (and could have sent
    # messages as B). User finalisers never run now (lua/_core.lua, user_setmetatable).
    state = LuaState()
    planter = """
        local ctx = require("ctx")
        local seen = {}
        return function(mode)
          if mode == "plant" then
            for _ = 1, 50 do setmetatable({}, {__gc = function() seen[#seen + 1] = ctx.get("who") end}) end
          end
          return table.concat(seen, ",")
        end"""
    await run_lua(planter, "plant", state=state, name="t:a", context={"who": "A"}, modules=MODULES)
    churn = await run_lua("""
        return function() local t = {} for i = 1, 200000 do t[i % 1000] = {i} end end""",
                          state=state, name="t:b", context={"who": "B"}, modules=MODULES)
    assert churn.error is None
    seen = await run_lua(planter, "read", state=state, name="t:a", context={"who": "A"}, modules=MODULES)
    assert seen.value == "", f"unit A's finalisers ran inside unit B and saw: {seen.value}"
