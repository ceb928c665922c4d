"""Process entries called as functions (wippy-modules §12.2, ``meta.default_host``):
``funcs.call`` and ``funcs.async`` spawn the process on its default host, return its exit
result or error, and a call given up sends the process CANCEL "caller context canceled".

The local semantics run on a node's runtime without a broker (``LocalRuntime``); calls
between node processes, from the CLI and from a raw NATS client are at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from moonwire.lua import settled
from moonwire.node import ProjectInvalid, ServerProcess, load_project
from support import LocalRuntime, run_cli, write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")

# app:add returns; app:fail exits abnormally with a kind; app:crash raises; app:whoami
# shows what of the caller reached it; app:where runs on meta.options.default_host;
# app:wait tells the process registered as "observer" that it started, runs until
# CANCEL and reports that too (and prints it); app:plain has no default host, so it is
# no function.
PROCESSES = {
    "add": "return { main = function(a, b) return a + b end }",
    "fail": """return { main = function(why)
        return nil, errors.new({ message = "refused: " .. why, kind = errors.CONFLICT, retryable = false })
      end }""",
    "crash": "return { main = function() error('boom') end }",
    "whoami": """return { main = function()
        return { user = ctx.get("user"), actor = security.actor() ~= nil, pid = process.pid() }
      end }""",
    "where": "return { main = function() return process.pid() end }",
    "wait": """return { main = function(tag)
        process.send("observer", "started", tag)
        local ev = process.events():receive()
        local seen = { tag = tag, kind = ev.kind, reason = ev.reason }
        print("process-function " .. tostring(tag) .. " got " .. ev.kind .. ": " .. tostring(ev.reason))
        process.send("observer", "cancelled", seen)
        return "cancelled"
      end }""",
    "plain": "return { main = function() return 1 end }",
}
HOSTED = {"add": "host", "fail": "host", "crash": "host", "whoami": "host", "wait": "host"}


def project_files(extra: dict[str, str] | None = None, drivers: dict[str, str] | None = None) -> dict[str, str]:
    """The processes above as ``app:*`` (with their default hosts), plus function entries
    ``app:<name>`` for ``drivers`` (modules funcs, time, ctx)."""
    entries = ["  - {name: host, kind: process.host}", "  - {name: other, kind: process.host}"]
    files: dict[str, str] = {}
    for name, source in {**PROCESSES, **(extra or {})}.items():
        meta = f", meta: {{default_host: {HOSTED[name]}}}" if name in HOSTED else ""
        if name == "where":  # meta.options.default_host wins over meta.default_host
            meta = ", meta: {default_host: host, options: {default_host: app:other}}"
        entries.append(f"  - {{name: {name}, kind: process.lua, source: file://{name}.lua, method: main,"
                       f" modules: [ctx, security]{meta}}}")
        files[f"{name}.lua"] = source
    for name, source in (drivers or {}).items():
        entries.append(f"  - {{name: {name}, kind: process.lua, source: file://{name}.lua, method: main,"
                       " modules: [funcs, time, ctx, security]}")
        files[f"{name}.lua"] = source
    files["_index.yaml"] = "namespace: app\nentries:\n" + "\n".join(entries) + "\n"
    return files


async def drive(tmp_path: Path, driver: str) -> Any:
    async with LocalRuntime(tmp_path, project_files(drivers={"driver": driver})) as runtime:
        outcome = await runtime.execute("app:driver", [])
    assert outcome.error is None, outcome.error
    return outcome.value


async def test_call_returns_the_exit_value_and_async_works_too(tmp_path: Path) -> None:
    value = await drive(tmp_path, """
        return { main = function()
          local sum, err = funcs.call("app:add", 40, 2)
          local future = funcs.async("app:add", 1, 2)
          local got = future:channel():receive()
          return { sum = sum, err = err, async = got:data(), where = funcs.call("app:where") }
        end }""")
    assert value["sum"] == 42 and "err" not in value and value["async"] == 3
    assert "@app:other|" in value["where"]  # meta.options.default_host wins


async def test_abnormal_exit_is_the_calls_error_with_its_kind(tmp_path: Path) -> None:
    value = await drive(tmp_path, """
        return { main = function()
          local _, failed = funcs.call("app:fail", "no stock")
          local _, crashed = funcs.call("app:crash")
          local _, plain = funcs.call("app:plain")
          return { kind = failed:kind(), message = failed:message(), retryable = failed:retryable(),
                   crash = tostring(crashed), plain = plain:kind() }
        end }""")
    assert value["kind"] == "Conflict" and value["message"] == "refused: no stock" and value["retryable"] is False
    assert "boom" in value["crash"]
    assert value["plain"] == "NotFound"  # a process entry without default_host is not a function


async def test_the_callers_context_and_actor_are_not_passed(tmp_path: Path) -> None:
    value = await drive(tmp_path, """
        return { main = function()
          local executor = funcs.new():with_context({ user = "carol" }):with_actor(security.new_actor("alice"))
          return executor:call("app:whoami")
        end }""")
    assert "user" not in value and value["actor"] is False
    assert "@app:host|" in value["pid"]


CANCELLING = """
    return { main = function(how)
      process.registry.register("observer")
      local inbox = process.inbox()
      local function next_message()
        local r = channel.select({ inbox:case_receive(), time.after("10s"):case_receive() })
        return r.channel == inbox and r.value or nil
      end
      if how == "cancel" then
        local future = funcs.async("app:wait", how)
        assert(next_message():topic() == "started")
        future:cancel()
      elseif how == "timeout" then
        local _, err = funcs.new():with_options({ timeout = "100ms" }):call("app:wait", how)
        assert(err:kind() == errors.TIMEOUT, tostring(err))
        assert(next_message():topic() == "started")
      elseif how == "caller exits" then
        local caller = process.spawn("app:caller", "app:host")
        assert(next_message():topic() == "started")
        process.terminate(caller)
      end
      local cancelled = next_message()
      return cancelled and cancelled:payload():data() or "the process got no CANCEL"
    end }"""


@pytest.mark.parametrize("how", ["cancel", "timeout", "caller exits"])
async def test_a_call_given_up_sends_the_process_cancel(tmp_path: Path, how: str) -> None:
    files = project_files(drivers={
        "driver": CANCELLING,
        "caller": "return { main = function() return funcs.call('app:wait', 'caller exits') end }"})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [how])
    assert outcome.error is None, outcome.error
    assert outcome.value == {"tag": how, "kind": "pid.cancel", "reason": "caller context canceled"}


async def test_served_without_a_broker_only_locally(tmp_path: Path) -> None:
    async with LocalRuntime(tmp_path, project_files()) as runtime:
        outcome = await settled(runtime.functions.call(None, "app:add", [2, 3], {}, {}))
    assert outcome.value == 5


@pytest.mark.parametrize(("meta", "problem"), [
    ("{default_host: nowhere}", "meta.default_host: references app:nowhere, which does not exist"),
    ("{options: {default_host: fn}}", "meta.options.default_host: references app:fn, a function.lua; "
                                      "expected process.host"),
    ("{default_host: 5}", "meta: default_host must be a process.host id (namespace:name), got 5"),
])
def test_a_bad_default_host_is_a_load_error_with_its_line(tmp_path: Path, meta: str, problem: str) -> None:
    write_project(tmp_path, {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: host, kind: process.host}}
              - {{name: fn, kind: function.lua, source: file://p.lua}}
              - {{name: proc, kind: process.lua, source: file://p.lua, meta: {meta}}}
        """,
        "p.lua": "return function() end",
    })
    with pytest.raises(ProjectInvalid) as caught:
        load_project(tmp_path)
    assert [str(p) for p in caught.value.problems] == [f"_index.yaml:5 app:proc {problem}"]


REMOTE_CALLER = {
    "_index.yaml": """
        namespace: d
        entries:
          - {name: drive, kind: process.lua, source: file://drive.lua, modules: [funcs]}
    """,
    # None of the app:* entries here: every call goes to the queue group mw.fn.<id>.
    "drive.lua": """
        local funcs = require("funcs")
        return function()
          local sum = funcs.call("app:add", 40, 2)
          local future = funcs.async("app:add", 1, 2)
          local _, failed = funcs.call("app:fail", "remote")
          return { sum = sum, async = future:channel():receive():data(), kind = failed:kind(),
                   message = failed:message() }
        end""",
}


async def test_served_to_other_nodes_the_cli_and_plain_nats_clients(tmp_path: Path, nats_server: ServerProcess,
                                                                    spawn_node) -> None:
    url = nats_server.address
    name = f"pfsrv{time.monotonic_ns() % 10**8}"
    server = await spawn_node(write_project(tmp_path / "server", project_files()), name, nats_url=url)
    await server.wait_for_line(r"serving 6 function\(s\): app:add, app:crash, app:fail, app:wait, app:where, "
                               r"app:whoami")
    caller = await spawn_node(write_project(tmp_path / "caller", REMOTE_CALLER), f"{name}c", nats_url=url,
                              ready=None, args=("-x", "d:drive"))
    assert await caller.wait(60) == 0, caller.output
    assert json.loads(caller.lines[-1]) == {"sum": 42, "async": 3, "kind": "Conflict", "message": "refused: remote"}

    nc = await nats.connect(url)  # as `nats req mw.fn.app:add '[2, 3]'` would
    try:
        reply = await nc.request("mw.fn.app:add", b"[2, 3]", timeout=10)
        assert json.loads(reply.data) == {"result": 5}
        reply = await nc.request("mw.fn.app:fail", b'["raw"]', timeout=10)
        assert json.loads(reply.data) == {"error": {"message": "refused: raw", "kind": "Conflict", "retryable": False}}
    finally:
        await nc.close()

    code, out, err = await run_cli("call", "app:add", "20", "22", "--nats", url, cwd=tmp_path)
    assert (code, json.loads(out)) == (0, 42), err


async def test_calls_are_counted_and_timed_as_a_functions_are(tmp_path: Path) -> None:
    """What the metrics and ``$SRV.STATS`` read: a process-function's calls end in its
    latency histogram when the process exits, its errors by kind."""
    driver = """return { main = function()
        local funcs = require("funcs")
        assert(funcs.call("app:add", 1, 2) == 3)
        local _, err = funcs.call("app:fail", "no")
        return err:kind()
      end }"""
    async with LocalRuntime(tmp_path, project_files(drivers={"driver": driver})) as runtime:
        outcome = await runtime.execute("app:driver", [])
        assert outcome.error is None, outcome.error
        add, fail = runtime.functions.calls.of("app:add"), runtime.functions.calls.of("app:fail")
        assert (add.calls, add.error_count) == (1, 0)
        assert (fail.calls, fail.error_count, fail.errors) == (1, 1, {"Conflict": 1})
        assert fail.last_error.startswith("Conflict: refused: no")
