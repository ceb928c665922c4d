"""Functions as distributed workers (DESIGN §8): served on NATS queue groups by real node
processes, called from another node, from the CLI and from a plain NATS client."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgpack
import nats
import pytest

from moonwire.node import ServerProcess
from support import run_cli, write_project

SERVER = {
    "app.yaml": """
        namespace: app
        entries:
          - {name: add, kind: function.lua, source: file://add.lua, method: add}
          - {name: echo, kind: function.lua, source: file://echo.lua}
          - {name: fail, kind: function.lua, source: file://fail.lua}
          - {name: whoami, kind: function.lua, source: file://whoami.lua, modules: [ctx]}
          - {name: spin, kind: function.lua, source: file://spin.lua, pool: {instruction_budget: 1000000}}
          - {name: hog, kind: function.lua, source: file://hog.lua, pool: {memory_limit: 16MiB}}
    """,
    "spin.lua": "return function() while true do end end",
    "hog.lua": "return function() local t = {} while true do t[#t + 1] = string.rep('x', 4096) .. #t end end",
    "add.lua": "return { add = function(a, b) return a + b end }",
    "echo.lua": "return function(...) return {...} end",
    "fail.lua": "return function() return nil, errors.new({message = 'nope', kind = errors.CONFLICT, retryable = false}) end",
    "whoami.lua": "local ctx = require('ctx') return function() return ctx.get('user') end",
}

CALLER = {
    "b.yaml": """
        namespace: b
        entries:
          - {name: main, kind: function.lua, source: file://main.lua, modules: [funcs]}
    """,
    "main.lua": """
        local funcs = require("funcs")
        return function()
          local sum = funcs.call("app:add", 40, 2)
          local me = funcs.new():with_context({user = "carol"}):call("app:whoami")
          local _, err = funcs.call("app:fail")
          local _, missing = funcs.call("app:missing")
          return {sum = sum, me = me, kind = err:kind(), retryable = err:retryable(), missing = missing:kind()}
        end
    """,
}


@pytest.fixture
async def serving_node(tmp_path: Path, nats_server: ServerProcess, spawn_node):
    project = write_project(tmp_path / "server", SERVER)
    node = await spawn_node(project, f"fn-{time.monotonic_ns() % 10**8}", nats_url=nats_server.address)
    await node.wait_for_line(r"serving 6 function\(s\)")
    return node


async def test_plain_nats_client_json_and_msgpack(serving_node, nats_server: ServerProcess) -> None:
    nc = await nats.connect(nats_server.address)
    try:
        reply = await nc.request("mw.fn.app:add", b"[1, 2]", timeout=10)
        assert json.loads(reply.data) == {"result": 3}
        reply = await nc.request("mw.fn.app:echo", b"hello there", timeout=10)  # not JSON: one string argument
        assert json.loads(reply.data) == {"result": ["hello there"]}
        body = msgpack.packb({"args": [5, 6], "ctx": {}})
        reply = await nc.request("mw.fn.app:add", body, timeout=10, headers={"Content-Type": "application/msgpack"})
        assert reply.headers["Content-Type"] == "application/msgpack"
        assert msgpack.unpackb(reply.data) == {"result": 11}
        reply = await nc.request("mw.fn.app:fail", b"", timeout=10)
        assert json.loads(reply.data) == {"error": {"message": "nope", "kind": "Conflict", "retryable": False}}
    finally:
        await nc.close()


async def test_malformed_request_gets_an_error_reply_and_the_node_carries_on(serving_node, nats_server) -> None:
    nc = await nats.connect(nats_server.address)
    try:
        reply = await nc.request("mw.fn.app:add", b"\xc1\xff garbage", timeout=10,
                                 headers={"Content-Type": "application/msgpack"})
        error = msgpack.unpackb(reply.data, ext_hook=lambda code, data: msgpack.unpackb(data))["error"]
        assert error["kind"] == "Invalid" and "malformed msgpack body" in error["message"]
        reply = await nc.request("mw.fn.app:add", b'{"args": 5}', timeout=10)
        assert json.loads(reply.data)["error"]["message"] == "request field 'args' must be a list"
        reply = await nc.request("mw.fn.app:add", b'["a", {}]', timeout=10)  # a Lua error inside the function
        assert "add.lua:1: attempt to add" in json.loads(reply.data)["error"]["message"]
        reply = await nc.request("mw.fn.app:add", b"[2, 2]", timeout=10)
        assert json.loads(reply.data) == {"result": 4}
    finally:
        await nc.close()
    await serving_node.wait_for_line(r"bad request for app:add: malformed msgpack body")


async def test_another_node_calls_through_the_queue_group(serving_node, tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "caller", CALLER)
    code, out, err = await run_cli("run", str(project), "--node", "caller", "--nats", nats_server.address,
                                   "-x", "b:main")
    assert code == 0, err
    assert json.loads(out) == {"sum": 42, "me": "carol", "kind": "Conflict", "retryable": False, "missing": "NotFound"}


async def test_cli_call(serving_node, nats_server: ServerProcess, tmp_path: Path) -> None:
    code, out, err = await run_cli("call", "app:add", "20", "22", "--nats", nats_server.address, cwd=tmp_path)
    assert (code, json.loads(out)) == (0, 42), err
    code, out, err = await run_cli("call", "app:fail", "--nats", nats_server.address, cwd=tmp_path)
    assert code == 1
    assert json.loads(out)["error"]["kind"] == "Conflict"
    assert "error: Conflict: nope" in err


async def test_nobody_serving_is_not_found_at_once(nats_server: ServerProcess, tmp_path: Path) -> None:
    started = time.monotonic()
    code, out, err = await run_cli("call", "nobody:home", "--nats", nats_server.address, "--timeout", "30s", cwd=tmp_path)
    assert code == 1 and json.loads(out)["error"]["kind"] == "NotFound"
    assert time.monotonic() - started < 10  # no-responders, not the 30 s timeout


async def test_a_malformed_function_id_is_invalid(nats_server: ServerProcess, tmp_path: Path) -> None:
    code, out, err = await run_cli("call", "app:two words", "--nats", nats_server.address, cwd=tmp_path)
    assert code == 1 and json.loads(out)["error"]["kind"] == "Invalid"
    assert "invalid function id 'app:two words'" in err


async def test_load_spreads_over_the_nodes_serving_a_function(tmp_path: Path, nats_server, spawn_node) -> None:
    projects = []
    for name in ("w1", "w2"):
        project = write_project(tmp_path / name, {
            "w.yaml": "namespace: w\nentries:\n  - {name: who, kind: function.lua, source: file://who.lua}\n",
            "who.lua": f"return function() return '{name}' end",
        })
        projects.append(await spawn_node(project, f"spread-{name}", nats_url=nats_server.address))
    for node in projects:
        await node.wait_for_line(r"serving 1 function")
    nc = await nats.connect(nats_server.address)
    try:
        replies = await asyncio.gather(*(nc.request("mw.fn.w:who", b"", timeout=10) for _ in range(200)))
    finally:
        await nc.close()
    counts: dict[str, int] = {}
    for reply in replies:
        who = json.loads(reply.data)["result"]
        counts[who] = counts.get(who, 0) + 1
    assert set(counts) == {"w1", "w2"} and min(counts.values()) > 20, counts


async def test_runaway_functions_fail_with_the_limit_they_hit_and_the_node_carries_on(serving_node, nats_server) -> None:
    nc = await nats.connect(nats_server.address)
    try:
        spin, hog, add = await asyncio.gather(
            nc.request("mw.fn.app:spin", b"", timeout=30),
            nc.request("mw.fn.app:hog", b"", timeout=30),
            nc.request("mw.fn.app:add", b"[1, 1]", timeout=30),
        )
        assert json.loads(add.data) == {"result": 2}
        assert json.loads(spin.data)["error"]["message"] == (
            "instruction budget exceeded: more than 1000000 instructions without yielding")
        assert json.loads(hog.data)["error"]["message"] == "memory limit exceeded: the Lua state may hold at most 16 MiB"
        again = await nc.request("mw.fn.app:hog", b"", timeout=30)  # a fresh state replaced the poisoned one
        assert "memory limit exceeded" in json.loads(again.data)["error"]["message"]
        assert json.loads((await nc.request("mw.fn.app:add", b"[2, 3]", timeout=10)).data) == {"result": 5}
    finally:
        await nc.close()
