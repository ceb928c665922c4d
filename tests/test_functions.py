"""function.lua entries: funcs.call/async/new, context, timeouts, cancellation, pools,
retries and bad code, run in-process without a broker (one node's view)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moonwire.broker import Subjects
from moonwire.lua import Kind, Outcome
from moonwire.node import load_project
from moonwire.node.functions._functions import Functions
from support import write_project

LIBRARY = """
namespace: app
entries:
  - {name: add, kind: function.lua, source: file://add.lua, method: add}
  - {name: caller, kind: function.lua, source: file://caller.lua, method: main, modules: [funcs, ctx, time]}
  - {name: whoami, kind: function.lua, source: file://whoami.lua, modules: [ctx]}
  - {name: fail, kind: function.lua, source: file://fail.lua}
  - {name: slow, kind: function.lua, source: file://slow.lua, modules: [time], pool: {workers: 1, buffer: 1}}
  - name: flaky
    kind: function.lua
    source: file://flaky.lua
    pool: {workers: 1}
    meta: {options: {retry: {max_attempts: 3, initial_delay: 1, backoff_factor: 2}}}
  - {name: broken, kind: function.lua, source: file://broken.lua}
  - {name: arity, kind: function.lua, source: file://arity.lua}
  - {name: lib, kind: library.lua, source: file://lib.lua}
  - {name: uses_lib, kind: function.lua, source: file://uses_lib.lua, imports: {helpers: lib}}
"""

FILES = {
    "app.yaml": LIBRARY,
    "add.lua": "return { add = function(a, b) return a + b end }",
    "whoami.lua": "local ctx = require('ctx') return function() return ctx.get('user') end",
    "fail.lua": """
        return function(kind, retryable)
          return nil, errors.new({message = "failed on purpose", kind = kind, retryable = retryable, details = {n = 1}})
        end""",
    "slow.lua": "local time = require('time') return function(ms) time.sleep(ms * time.MILLISECOND) return ms end",
    "flaky.lua": """
        local calls = 0
        return function()
          calls = calls + 1
          if calls < 3 then return nil, errors.new({message = "try again", kind = errors.UNAVAILABLE, retryable = true}) end
          return calls
        end""",
    "broken.lua": "return function()\n  local x = = 1\nend",
    "arity.lua": "return function(...) local a, b, c = ... return select('#', ...) .. ' ' .. tostring(a) .. ' ' .. tostring(b) .. ' ' .. tostring(c) end",
    "lib.lua": "return { double = function(x) return 2 * x end }",
    "uses_lib.lua": "local helpers = require('helpers') return function(x) return helpers.double(x) end",
    "caller.lua": "",  # each test writes its own
}


def make_functions(root: Path, caller: str) -> Functions:
    write_project(root, {**FILES, "caller.lua": caller})
    return Functions(load_project(root, environ={}), Subjects())


async def call(functions: Functions, target: str, *args: object, context: dict[str, object] | None = None,
               options: dict[str, object] | None = None) -> Outcome:
    result = functions.call(None, target, list(args), dict(context or {}), dict(options or {}))
    return result if isinstance(result, Outcome) else await result


async def test_call_returns_value_and_inherits_context(project_dir: Path) -> None:
    functions = make_functions(project_dir, """
        local funcs = require("funcs")
        return { main = function()
          local sum, err = funcs.call("app:add", 2, 3)
          local me = funcs.call("app:whoami")
          local overlaid = funcs.new():with_context({user = "bob"}):call("app:whoami")
          return {sum, err == nil, me, overlaid}
        end }""")
    outcome = await call(functions, "app:caller", context={"user": "alice"})
    assert outcome.value == [5, True, "alice", "bob"]


async def test_arguments_keep_their_positions_including_nils(project_dir: Path) -> None:
    functions = make_functions(project_dir, """
        local funcs = require("funcs")
        return { main = function()
          local called = funcs.call("app:arity", 1, nil, "c", nil)
          local future = funcs.async("app:arity", nil, nil, 3)
          local payload = future:response():receive()
          return {called, payload:data(), funcs.call("app:arity")}
        end }""")
    assert (await call(functions, "app:caller")).value == ["4 1 nil c", "3 nil nil 3", "0 nil nil nil"]


async def test_errors_keep_kind_retryable_and_details_across_the_call(project_dir: Path) -> None:
    functions = make_functions(project_dir, """
        local funcs = require("funcs")
        return { main = function()
          local v, err = funcs.call("app:fail", errors.CONFLICT, false)
          return {v == nil, err:kind(), err:message(), err:retryable(), err:details().n}
        end }""")
    assert (await call(functions, "app:caller")).value == [True, "Conflict", "failed on purpose", False, 1]


@pytest.mark.parametrize("target", ["", "nocolon", "a:b:c", "app:with space", "app:crlf\\r\\nPUB x 0", "app:wild*"])
async def test_invalid_target_is_invalid(project_dir: Path, target: str) -> None:
    functions = make_functions(project_dir, f"""
        local funcs = require("funcs")
        return {{ main = function() local v, err = funcs.call("{target}") return err:kind() end }}""")
    assert (await call(functions, "app:caller")).value == "Invalid"


async def test_unknown_function_is_not_found(project_dir: Path) -> None:
    functions = make_functions(project_dir, """
        local funcs = require("funcs")
        return { main = function() local v, err = funcs.call("app:nope") return err:kind() end }""")
    assert (await call(functions, "app:caller")).value == "NotFound"


async def test_timeout_option_is_milliseconds_and_cancels_the_callee(project_dir: Path) -> None:
    functions = make_functions(project_dir, """
        local funcs = require("funcs")
        return { main = function()
          local v, err = funcs.new():with_options({timeout = 20}):call("app:slow", 60000)
          return {v == nil, err:kind()}
        end }""")
    assert (await call(functions, "app:caller")).value == [True, "Timeout"]
    stats = functions.pools["app:slow"].statistics()
    assert (stats.workers, stats.idle) == (1, 1)  # the callee stopped and gave its worker back


async def test_cancelling_the_caller_cancels_the_callee(project_dir: Path) -> None:
    functions = make_functions(project_dir, """
        local funcs = require("funcs")
        return { main = function() return funcs.call("app:slow", 60000) end }""")
    pending = functions.call(None, "app:caller", [], {}, {})
    assert not isinstance(pending, Outcome)
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)  # let the call reach the callee
    assert functions.pools["app:slow"].statistics().idle == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert functions.pools["app:slow"].statistics().idle == 1


async def test_async_future_api(project_dir: Path) -> None:
    functions = make_functions(project_dir, """
        local funcs = require("funcs")
        local time = require("time")
        return { main = function()
          local f = funcs.async("app:slow", 10)
          local early_v, early_err = f:result()
          local payload = f:response():receive()
          local v = f:result():data()
          local g = funcs.async("app:slow", 60000)
          local canceled = g:cancel()
          local gv, gerr = g:result()
          local failing = funcs.async("app:fail", errors.INVALID, false)
          failing:response():receive()
          local ferr, has = failing:error()
          return {early_v == nil and early_err == nil, payload:data(), v, f:is_complete(), canceled,
                  g:is_canceled(), gv == nil, gerr:kind(), has, ferr:kind()}
        end }""")
    assert (await call(functions, "app:caller")).value == [True, 10, 10, True, True, True, True, "Canceled", True,
                                                           "Invalid"]


async def test_static_pool_queues_then_rejects(project_dir: Path) -> None:
    functions = make_functions(project_dir, "return {main = function() end}")
    first = functions.call(None, "app:slow", [50], {}, {})       # runs
    second = functions.call(None, "app:slow", [1], {}, {})       # queued (buffer 1)
    third = functions.call(None, "app:slow", [1], {}, {})        # rejected at once
    results = await asyncio.gather(*(r if not isinstance(r, Outcome) else asyncio.sleep(0, r) for r in (first, second, third)))
    assert results[0].value == 50 and results[1].value == 1
    assert results[2].error is not None and results[2].error.kind == Kind.UNAVAILABLE
    assert results[2].error.retryable is True


async def test_retry_interceptor_retries_retryable_errors(project_dir: Path) -> None:
    functions = make_functions(project_dir, "return {main = function() end}")
    assert (await call(functions, "app:flaky")).value == 3


async def test_syntax_error_fails_only_that_entry_with_file_and_line(project_dir: Path) -> None:
    functions = make_functions(project_dir, "return {main = function() end}")
    outcome = await call(functions, "app:broken")
    assert outcome.error is not None and outcome.error.kind == Kind.INVALID
    assert "broken.lua:2:" in outcome.error.message
    assert (await call(functions, "app:add", 1, 1)).value == 2


async def test_library_imports(project_dir: Path) -> None:
    functions = make_functions(project_dir, "return {main = function() end}")
    assert (await call(functions, "app:uses_lib", 21)).value == 42


async def test_method_not_found(project_dir: Path) -> None:
    write_project(project_dir, {"m.yaml": "namespace: m\nentries:\n  - {name: f, kind: function.lua, source: file://f.lua, method: nope}\n",
                                "f.lua": "return { main = function() end }"})
    functions = Functions(load_project(project_dir, environ={}), Subjects())
    outcome = await call(functions, "m:f")
    assert outcome.error is not None and outcome.error.kind == Kind.NOT_FOUND
    assert "method 'nope' not found" in outcome.error.message
