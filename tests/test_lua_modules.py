"""The core Lua modules, with the semantics and return conventions of wippy-surface §2."""

from __future__ import annotations

import time as pytime
import uuid as pyuuid

import pytest

from moonwire.lua import Kind, LuaState
from support import run_lua


async def value_of(source: str, *args: object, **kwargs: object) -> object:
    outcome = await run_lua(source, *args, **kwargs)
    assert outcome.error is None, outcome.error
    return outcome.value


# Errors, payload and json: tests/test_lua_errors_data.py.


# ------------------------------------------------------------------ time

# In test_lua_time.py.


# ------------------------------------------------------------------ channels, select, coroutines


async def test_unbuffered_and_buffered_channels() -> None:
    assert await value_of("""
        return function()
          local ch = channel.new()
          local got = {}
          coroutine.spawn(function() for i = 1, 3 do ch:send(i) end ch:close() end)
          while true do
            local v, ok = ch:receive()
            if not ok then break end
            got[#got + 1] = v
          end
          local b = channel.new(2)
          b:send("x") b:send("y") b:close()
          local x = b:receive() local y = b:receive() local z, zok = b:receive()
          local sent_on_closed = pcall(function() b:send(1) end)
          b:close() -- idempotent
          return {got, x, y, z == nil, zok, sent_on_closed}
        end""") == [[1, 2, 3], "x", "y", True, False, False]


async def test_close_wakes_blocked_receivers_and_fails_blocked_senders() -> None:
    assert await value_of("""
        local time = require("time")
        return function()
          local ch = channel.new()
          local results = {}
          coroutine.spawn(function() local v, ok = ch:receive() results.recv = ok end)
          local full = channel.new()
          coroutine.spawn(function() results.send = pcall(function() full:send(1) end) end)
          time.sleep("1ms")
          ch:close() full:close()
          time.sleep("1ms")
          return {results.recv, results.send}
        end""") == [False, False]


async def test_select_with_default_and_channel_identity() -> None:
    assert await value_of("""
        local time = require("time")
        return function()
          local a, b = channel.new(1), channel.new(1)
          local r0 = channel.select({a:case_receive(), b:case_receive(), default = true})
          b:send("from b")
          local r1 = channel.select({a:case_receive(), b:case_receive()})
          coroutine.spawn(function() time.sleep("2ms") a:send("late") end)
          local r2 = channel.select({a:case_receive(), time.after("1s"):case_receive()})
          local out = channel.new(1)
          local r3 = channel.select({out:case_send("v")})
          return {r0.default, r0.ok, r1.channel == b, r1.value, r1.ok, r2.channel == a, r2.value, r3.channel == out,
                  (out:receive())}
        end""") == [True, True, True, "from b", True, True, "late", True, "v"]


async def test_invalid_select_case_raises() -> None:
    outcome = await run_lua("return function() channel.select({42}) end")
    assert outcome.error is not None and "is not a case" in outcome.error.message


async def test_spawned_coroutines_die_with_main() -> None:
    state = LuaState()
    outcome = await run_lua("""
        local time = require("time")
        return function()
          coroutine.spawn(function() while true do time.sleep("1ms") end end)
          coroutine.spawn(function() channel.new():receive() end)
          time.sleep("3ms")
          return "done"
        end""", state=state)
    assert outcome.value == "done"
    assert state.core.thread_count() == 0  # both spawned threads were killed with main


async def test_an_error_in_a_spawned_coroutine_fails_the_unit() -> None:
    outcome = await run_lua("""
        local time = require("time")
        return function() coroutine.spawn(function() error("inner", 0) end) time.sleep("1s") end""")
    assert outcome.error is not None and outcome.error.message == "coroutine failed: inner"


# ------------------------------------------------------------------ ctx, uuid, logger


async def test_ctx_get_and_all() -> None:
    assert await value_of("""
        local ctx = require("ctx")
        return function()
          local v = ctx.get("tenant")
          local missing, err = ctx.get("nope")
          local empty, eerr = ctx.get("")
          return {v, missing == nil, err:kind(), eerr:kind(), ctx.all().tenant}
        end""", context={"tenant": "acme"}) == ["acme", True, "NotFound", "Invalid", "acme"]


async def test_uuid_versions_and_helpers() -> None:
    v4, v7a, v7b, v5, valid, invalid, fmt, parsed = await value_of("""
        local uuid = require("uuid")
        return function()
          local a, b = uuid.v7(), uuid.v7()
          return {uuid.v4(), a, b, uuid.v5("dns", "example.com"), uuid.validate(uuid.v1()), uuid.validate("nope"),
                  uuid.format("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "simple"), uuid.parse(a)}
        end""")
    assert pyuuid.UUID(v4).version == 4
    assert pyuuid.UUID(v7a).version == 7 and v7a < v7b  # time-ordered
    assert v5 == str(pyuuid.uuid5(pyuuid.NAMESPACE_DNS, "example.com"))
    assert (valid, invalid, fmt) == (True, False, "6ba7b8109dad11d180b400c04fd430c8")
    assert parsed["version"] == 7 and abs(parsed["timestamp"] - pytime.time()) < 60  # unix seconds


async def test_unlisted_module_does_not_exist() -> None:
    outcome = await run_lua("return function() return require('json') end", modules=("time",))
    assert outcome.error is not None and "module 'json' not found" in outcome.error.message


@pytest.mark.parametrize("call", ["logger:info('hi', {a = 1})", "logger:named('x'):with({b = 2}):warn('w')", "print('p', 1, nil)"])
async def test_logging_goes_to_the_structured_log(call: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="moonwire.lua")
    outcome = await run_lua(f"local logger = require('logger') return function() {call} return true end")
    assert outcome.value is True
    record = caplog.records[-1]
    assert record.name.startswith("moonwire.lua")
    assert getattr(record, "entry") == "test:fn"
    assert len(getattr(record, "trace_id")) == 32  # a unit that logs begins a trace


async def test_system_answers_role_leader_and_addr_as_wippy_without_raft() -> None:
    outcome = await run_lua("""
        return function()
          local addr, err = system.node.addr()
          return {system.node.role(), system.cluster.leader(), addr == nil, err:kind()}
        end""", modules=("system",))
    assert outcome.value == ["non-member", "", True, "Internal"], outcome
