"""Lua never reaches Python, and cannot change what other code shares (DESIGN §10)."""

from __future__ import annotations

import asyncio

import pytest

from moonwire.lua import Kind, Limits, LuaCode, LuaState, MoonwireError, Unit
from support import run_lua


async def value_of(source: str, *args: object, **kwargs: object) -> object:
    outcome = await run_lua(source, *args, **kwargs)
    assert outcome.error is None, outcome.error
    return outcome.value


REMOVED = ["python", "load", "loadstring", "loadfile", "dofile", "collectgarbage", "rawlen", "io", "debug",
           "utf8", "package", "warn", "module", "setfenv", "getfenv", "newproxy"]


@pytest.mark.parametrize("name", REMOVED)
async def test_removed_globals_are_absent(name: str) -> None:
    assert await value_of(f"return function() return {name} == nil and _G.{name} == nil end") is True


@pytest.mark.parametrize("name", ["execute", "exit", "remove", "rename", "tmpname", "getenv", "setlocale"])
async def test_os_keeps_only_time_functions(name: str) -> None:
    assert await value_of(f"return function() return os.{name} == nil end") is True
    assert await value_of("return function() return type(os.time()) == 'number' and type(os.clock()) == 'number' end")


async def test_require_of_std_io_modules_fails_as_if_absent() -> None:
    for name in ("io", "debug", "package", "ffi", "python"):
        outcome = await run_lua(f"return function() return require('{name}') end")
        assert outcome.error is not None and f"module '{name}' not found" in outcome.error.message


async def test_require_of_a_global_gives_the_global_as_wippy_does() -> None:
    # wippy-modules §0: any global can be required, `os` being the limited one.
    assert await value_of("""
        return function()
          return require("os") == os and require("os").execute == nil and require("errors") == errors
                 and require("string") == string and require("process") == process
        end""") is True


async def test_an_entrys_modules_are_globals_before_its_chunk_runs() -> None:
    assert await value_of("""
        local at_load = json.encode({1})
        return function() return {at_load, json == require("json"), uuid ~= nil} end""",
        modules=("json",)) == ["[1]", True, False]


async def test_string_metatable_is_hidden_and_dump_is_gone() -> None:
    assert await value_of("""
        return function()
          return getmetatable("") == false and string.dump == nil and ("x").dump == nil
                 and ("abc"):upper() == "ABC"
        end""") is True


async def test_shared_libraries_are_read_only() -> None:
    outcome = await run_lua("return function() string.upper = function() return 'pwned' end end")
    assert outcome.error is not None and "read-only" in outcome.error.message
    outcome = await run_lua("return function() setmetatable(string, {}) end")
    assert outcome.error is not None and "protected metatable" in outcome.error.message


async def test_rawset_cannot_change_a_shared_table() -> None:
    state = LuaState()
    for target in ("string", "table", "errors", "channel"):
        evil = await run_lua(f"""
            return function()
              rawset({target}, "upper", function() return "pwned" end)
            end""", state=state, name=f"t:evil_{target}")
        assert evil.error is not None and "read-only" in evil.error.message, target
    other = await run_lua("return function() return string.upper('a') .. ('b'):upper() end", state=state, name="t:other")
    assert other.value == "AB"


async def test_instances_of_one_chunk_share_no_globals_or_library_state() -> None:
    state = LuaState()
    library = LuaCode(id="t:counter", source=b"local n = 0; return { bump = function() n = n + 1; return n end }",
                      chunkname="counter.lua", is_library=True)
    code = LuaCode(id="t:user", chunkname="user.lua", imports=(("counter", library),), source=b"""
        seen = 0
        local counter = require("counter")
        return function() seen = seen + 1; _G.other = true; return {seen, counter.bump(), counter.bump()} end
    """)
    first, second = state.instantiate(code), state.instantiate(code)
    assert (await Unit(state, "a").run(first, [])).value == [1, 1, 2]
    assert (await Unit(state, "b").run(first, [])).value == [2, 3, 4]
    assert (await Unit(state, "c").run(second, [])).value == [1, 1, 2]


async def test_globals_are_per_chunk() -> None:
    state = LuaState()
    await run_lua("return function() secret = 42; _G.also = 1 end", state=state, name="t:a")
    seen = await run_lua("return function() return secret == nil and also == nil end", state=state, name="t:b")
    assert seen.value is True


async def test_binary_chunks_never_load() -> None:
    state = LuaState()
    bytecode = state.runtime.eval("string.dump(function() return 1 end)")
    with pytest.raises(MoonwireError) as caught:
        state.load(LuaCode(id="t:bin", source=bytecode, chunkname="bin.lua"))
    assert caught.value.kind == Kind.INVALID and "binary chunk" in caught.value.message


async def test_internal_handles_are_not_reachable() -> None:
    # Channels, timers and futures keep their Python objects in private weak maps.
    assert await value_of("""
        local time = require("time")
        return function()
          local found = {}
          local ch = channel.new(1)
          local timer = time.timer("1h")
          for _, obj in ipairs({ch, timer, timer:channel()}) do
            if getmetatable(obj) ~= false then return "metatable visible" end
            if type(obj) == "table" then  -- a Timer is userdata: it has no fields to walk
              for k, v in pairs(obj) do
                local t = type(v)
                if t == "userdata" then return "userdata in field " .. tostring(k) end
              end
            end
          end
          timer:stop()
          return "clean"
        end""") == "clean"


async def test_scheduler_threads_cannot_be_resumed_by_user_code() -> None:
    outcome = await run_lua("""
        return function()
          local main = coroutine.running()
          local sibling
          coroutine.spawn(function() sibling = coroutine.running(); channel.new():receive() end)
          require("time").sleep("1ms")
          return coroutine.resume(sibling, "forged")
        end""")
    assert outcome.error is not None and "cannot resume a thread run by the scheduler" in outcome.error.message


async def test_deep_recursion_fails_cleanly() -> None:
    outcome = await run_lua("return function() local function f(n) return 1 + f(n + 1) end return f(1) end")
    assert outcome.error is not None and "stack overflow" in outcome.error.message


async def test_user_coroutines_work_and_can_block_inside() -> None:
    assert await value_of("""
        local time = require("time")
        return function()
          local gen = coroutine.wrap(function()
            for i = 1, 3 do time.sleep("1ms"); coroutine.yield(i) end
          end)
          return gen() + gen() + gen()
        end""") == 6


# ------------------------------------------------------------------ runaway protection


async def test_a_busy_loop_hits_the_instruction_budget() -> None:
    outcome = await run_lua("return function() while true do end end", limits=Limits(instructions=100_000))
    assert outcome.error is not None
    assert outcome.error.kind == Kind.INTERNAL
    assert "instruction budget exceeded: more than 100000 instructions without yielding" in outcome.error.message


async def test_pcall_cannot_outlive_the_budget() -> None:
    outcome = await run_lua("""
        return function()
          while true do pcall(function() while true do end end) end
        end""", limits=Limits(instructions=100_000))
    assert outcome.error is not None and "instruction budget exceeded" in outcome.error.message


async def test_a_loop_inside_a_user_coroutine_hits_the_budget() -> None:
    outcome = await run_lua("""
        return function()
          local co = coroutine.create(function() while true do end end)
          return coroutine.resume(co)
        end""", limits=Limits(instructions=100_000))
    # resume returns false, err; returned as `v, err` that is an abnormal exit with that error
    assert outcome.error is not None and "instruction budget exceeded" in outcome.error.message


async def test_yielding_resets_the_budget() -> None:
    assert await value_of("""
        local time = require("time")
        return function()
          local n = 0
          for i = 1, 20 do
            for j = 1, 20000 do n = n + 1 end
            time.sleep(0)
          end
          return n
        end""", limits=Limits(instructions=200_000)) == 400_000


async def test_unbounded_allocation_hits_the_memory_limit() -> None:
    state = LuaState(Limits(memory=8 * 1024 * 1024))
    outcome = await run_lua("""
        return function()
          local t = {}
          while true do t[#t + 1] = string.rep("x", 1024) .. #t end
        end""", state=state)
    assert outcome.error is not None
    assert outcome.error.message == "memory limit exceeded: the Lua state may hold at most 8 MiB"
    assert state.poisoned


async def test_other_units_carry_on_while_one_runs_away() -> None:
    healthy_state, runaway_state = LuaState(), LuaState(Limits(instructions=2_000_000, memory=8 * 1024 * 1024))
    healthy = asyncio.create_task(run_lua("""
        local time = require("time")
        return function() local n = 0 for i = 1, 5 do time.sleep("5ms") n = n + i end return n end""",
        state=healthy_state, name="t:healthy"))
    loops = [run_lua("return function() while true do end end", state=runaway_state, name=f"t:loop{i}") for i in range(3)]
    results = await asyncio.gather(*loops)
    assert all(r.error is not None and "instruction budget" in r.error.message for r in results)
    assert (await healthy).value == 15


async def test_lupas_metatable_stays_hidden_from_python_errors() -> None:
    """lupa gives every Python object in a state one shared metatable; a unit that got
    it could replace `__call` and see every host call of every unit. A Python exception
    that reaches Lua must not hand it out."""
    assert await value_of("""
        return function()
          -- A host function that raises (an overflow in Python): whatever pcall returns.
          local ok, err = pcall(time.date, 1e15, 1, 1, 0, 0, 0, 0, time.utc)
          return type(getmetatable(err))
        end""", modules=("time",)) != "table"


async def test_user_finalisers_never_run() -> None:
    # A `__gc` of user code would run inside whichever unit the collector interrupts
    # (test_lua_isolation.py shows one reading another's ctx), and, while dead wrappers
    # of Python objects are being released, it could hand Lua a new one (lua/_core.lua,
    # release_wrappers). It also was the way to bring an opaque object back after its
    # own finaliser had run.
    assert await value_of("""
        return function()
          local ran = 0
          local mt = {__gc = function() ran = ran + 1 end}
          for _ = 1, 200 do
            local holder = setmetatable({}, mt)
            holder.obj = errors.new("x")
            setmetatable({}, {__gc = true})  -- a placeholder first, a function later
          end
          mt.__gc = function() ran = ran + 1 end
          for i = 1, 20000 do local t = time.unix(i, 0) end  -- enough objects for a release
          local junk = {}
          for i = 1, 200000 do junk[i % 1000 + 1] = {i} end  -- let the collector run
          return {ran, type(rawget(mt, "__gc")), getmetatable(setmetatable({}, mt)) == mt}
        end""", modules=("time",)) == [0, "function", True]


async def test_a_finalised_opaque_object_never_shows_lupas_metatable() -> None:
    # An opaque object (core.new_object) is released by setting lupa's metatable back and
    # calling its __gc. Something that still reaches the object afterwards must find
    # neither lupa's metatable (shared and writable: replacing its __call intercepted
    # every call trusted code made into Python) nor a working object. A weak-keyed table
    # is such a thing: Lua removes a finalised key only at the next collection.
    assert await value_of("""
        return function()
          local weak = setmetatable({}, {__mode = "k"})
          weak[time.now()] = true
          local found
          for i = 1, 2000000 do
            local t = time.unix(i, 0)  -- enough objects for releases of dead ones
            if i % 1000 == 0 then
              for k in pairs(weak) do
                if getmetatable(k) ~= false or not pcall(function() return k:unix() end) then found = k end
              end
              if found then break end
            end
          end
          assert(found ~= nil, "the object was never finalised")
          local mt = getmetatable(found)
          local ok, err = pcall(function() return found:unix() end)
          return {type(found), mt == nil and "nil" or tostring(mt), ok}
        end""") == ["userdata", "false", False]
