"""The `security` module (wippy-modules §5): Actor and Scope objects, `can` without
policies, and the actor and scope a unit passes on (§5.3): to functions it calls and
processes it spawns (not to those it execs), on this node and across nodes."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest

from moonwire.lua import Actor, Kind, MoonwireError, Security, SpawnRequest
from moonwire.node import ServerProcess
from moonwire.node.wire import decode_spawn, encode_spawn, pack, unpack
from support import LocalRuntime, run_lua, write_project


async def value_of(source: str, *, security: Security | None = None) -> Any:
    """Run ``source`` (a chunk returning a function) as one unit running as ``security``."""
    from moonwire.lua import LuaCode, LuaState, Unit

    state = LuaState()
    fn = state.load(LuaCode(id="test:fn", source=textwrap.dedent(source).encode(), chunkname="test.lua",
                            modules=frozenset({"security", "funcs", "ctx"})))
    outcome = await Unit(state, "test:fn", security=security).run(fn, [])
    assert outcome.error is None, outcome.error
    return outcome.value


# ------------------------------------------------------------------ the module


async def test_actor_and_scope_are_userdata_with_their_methods() -> None:
    value = await value_of("""
        return function()
          local a = security.new_actor("alice", {role = "admin", n = 3, tags = {"x", "y"}})
          local meta = a:meta()
          meta.role = "changed"                      -- a copy: the actor keeps its own
          local s = security.new_scope()
          local t = security.new_scope({"app:p", {ns = "app", name = "q"}})  -- not Policies: skipped
          return {
            types = {type(a), type(s), type(t)},
            id = a:id(), meta = a:meta(), fresh = a:meta() ~= a:meta(),
            empty_meta = security.new_actor("bob"):meta(),
            contains = {s:contains("app:p"), t:contains({ns = "app", name = "p"})},
            without = type(s:without("app:p")), policies = #t:policies(),
            evaluate = s:evaluate(a, "read", "doc:1"),
            no_next = pcall(next, a), no_write = pcall(function() a.id = 1 end),
          }
        end""")
    assert value["types"] == ["userdata", "userdata", "userdata"]
    assert value["id"] == "alice" and value["fresh"] is True
    assert value["meta"] == {"role": "admin", "n": 3, "tags": ["x", "y"]}
    assert value["empty_meta"] == []  # an empty table
    assert value["contains"] == [False, False] and value["without"] == "userdata" and value["policies"] == 0
    assert value["evaluate"] == "undefined"
    assert value["no_next"] is False and value["no_write"] is False


async def test_wrong_arguments_raise() -> None:
    value = await value_of("""
        return function()
          local a = security.new_actor("alice")
          local s = security.new_scope()
          local function msg(f, ...) local ok, err = pcall(f, ...) return ok and "no error" or tostring(err) end
          return {
            id = msg(security.new_actor, 7),
            meta_type = msg(security.new_actor, "x", "meta"),
            receiver = msg(a.id, s),
            with = msg(s.with, s, "app:p"),
            contains = msg(s.contains, s, 42),
            can = msg(security.can, nil, "r"),
            executor_nil = msg(function() return funcs.new():with_actor(nil) end),
            executor_scope = msg(function() return funcs.new():with_scope(a) end),
          }
        end""")
    assert "bad argument #1 to 'new_actor' (string expected, got number)" in value["id"]
    assert "bad argument #2 to 'new_actor' (table expected, got string)" in value["meta_type"]
    assert "(Actor expected, got userdata)" in value["receiver"]
    assert "bad argument #1 to 'with' (Policy expected, got string)" in value["with"]
    assert "bad argument #1 to 'contains'" in value["contains"]
    assert "bad argument #1 to 'can' (string expected, got nil)" in value["can"]
    assert "bad argument #1 to 'with_actor' (Actor expected, got nil)" in value["executor_nil"]
    assert "bad argument #1 to 'with_scope' (Scope expected, got userdata)" in value["executor_scope"]


@pytest.mark.parametrize("meta", [
    "{f = function() end}", "{nested = {co = coroutine.create(print)}}", "{[1] = 'a', x = 'b'}",
    "{'a', 'b'}", "{bad = '\\255'}", "{n = 0/0}", "{e = errors.new('x')}",
])
async def test_actor_meta_must_be_json_like_data(meta: str) -> None:
    value = await value_of(f"""
        return function()
          local ok, err = pcall(security.new_actor, "alice", {meta})
          return {{ok, errors.is(err, errors.INVALID), tostring(err)}}
        end""")
    assert value[0] is False and value[1] is True, value
    assert "bad argument #2 to 'new_actor'" in value[2]


async def test_without_context_can_allows_and_actor_and_scope_are_nil() -> None:
    value = await value_of("""
        return function()
          return {security.actor() == nil, security.scope() == nil, security.can("read", "doc:1"),
                  security.can("write", "doc:1", {x = 1})}
        end""")
    assert value == [True, True, True, True]


async def test_policies_named_scopes_and_token_stores_are_not_found() -> None:
    value = await value_of("""
        return function()
          local out = {}
          for _, f in ipairs({security.policy, security.named_scope, security.token_store}) do
            local v, err = f("app:x")
            out[#out + 1] = {v == nil, err:kind(), err:message()}
          end
          return out
        end""")
    for is_nil, kind, message in value:
        assert is_nil is True and kind == Kind.NOT_FOUND and "not support" in message


async def test_the_unit_runs_as_its_security() -> None:
    security = Security(Actor("alice", {"role": "admin"}), ())
    value = await value_of("""
        return function()
          local a, s = security.actor(), security.scope()
          local values = ctx.all()
          return {a:id(), a:meta(), type(s), #s:policies(), security.can("read", "doc:1"), values}
        end""", security=security)
    # An actor and a scope: the (empty) scope decides, and "undefined" denies (§5.4).
    # ctx shows values only, never the actor or scope.
    assert value == ["alice", {"role": "admin"}, "userdata", 0, False, []]
    value = await value_of("""
        return function() return {security.actor():id(), security.scope() == nil, security.can("r", "x")} end""",
        security=Security(Actor("bob")))
    assert value == ["bob", True, True]  # no scope: allowed (not strict)


async def test_not_in_workflows() -> None:
    import random

    from moonwire.lua import LuaState, Replay
    state = LuaState(replay=Replay(now_ns=lambda: 0, random=random.Random(1)))
    outcome = await run_lua("""
        return function()
          local ok, err = pcall(require, "security")
          local bad = pcall(function() return funcs.new():with_actor({}) end)
          return {ok, tostring(err), security == nil, bad}
        end""", modules=("security", "funcs"), state=state)
    assert outcome.error is None, outcome.error
    assert outcome.value[0] is False and "module 'security' not found" in outcome.value[1]
    assert outcome.value[2:] == [True, False]


# ------------------------------------------------------------------ inheritance on one node

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: whoami, kind: function.lua, source: file://whoami.lua, modules: [security]}
          - {name: driver, kind: process.lua, source: file://driver.lua, modules: [security, funcs]}
          - {name: child, kind: process.lua, source: file://child.lua, modules: [security]}
          - {name: grandchild, kind: process.lua, source: file://child.lua, modules: [security]}
    """,
    "whoami.lua": """
        return function()
          local a, s = security.actor(), security.scope()
          return {actor = a and a:id(), meta = a and a:meta(), scope = s ~= nil}
        end""",
    # Reports what it runs as to `to`; "deeper" first spawns another and reports its answer.
    "child.lua": """
        return function(to, deeper)
          local a, s = security.actor(), security.scope()
          local mine = {actor = a and a:id(), meta = a and a:meta(), scope = s ~= nil}
          if deeper then
            assert(process.spawn("app:grandchild", "app:host", process.pid()))
            mine.grandchild = process.inbox():receive():payload():data()
          end
          if to then process.send(to, "me", mine) else return mine end
        end""",
    "driver.lua": """
        -- What a child spawned by `spawner` (nil: process.spawn) runs as.
        local function spawned(spawner, deeper)
          if spawner then
            assert(spawner:spawn("app:child", "app:host", process.pid(), deeper))
          else
            assert(process.spawn("app:child", "app:host", process.pid(), deeper))
          end
          return process.inbox():receive():payload():data()
        end
        return function()
          local out = {}
          out.call_plain = funcs.call("app:whoami")
          out.spawn_plain = spawned(nil)

          local alice = security.new_actor("alice", {role = "admin", n = 7})
          local bob = security.new_actor("bob", {role = "guest"})
          local scope = security.new_scope()
          local as_alice = funcs.new():with_actor(alice):with_scope(scope)
          out.call_with_actor = as_alice:call("app:whoami")
          local future = as_alice:async("app:whoami")
          out.async_with_actor = future:response():receive():data()
          -- The callee passes on what it runs as; an executor's with_actor replaces it.
          out.nested = as_alice:call("app:nested")
          out.spawn_with_actor = spawned(process.with_actor(bob))
          out.spawn_with_actor_deeper = spawned(process.with_actor(bob):with_scope(scope), true)
          out.exec_plain = process.exec("app:child", "app:host")
          out.exec_with_actor = process.with_actor(bob):exec("app:child", "app:host")
          out.context_key_is_a_value = funcs.new():with_context({["@actor"] = "mallory"}):call("app:whoami")
          return out
        end""",
}
PROJECT["_index.yaml"] += """
          - {name: nested, kind: function.lua, source: file://nested.lua, modules: [security, funcs]}
"""
PROJECT["nested.lua"] = """
    return function()
      local carol = security.new_actor("carol")
      return {inherited = funcs.call("app:whoami"), replaced = funcs.new():with_actor(carol):call("app:whoami"),
              spawned = process.exec("app:child", "app:host")}
    end"""


async def test_functions_and_spawned_processes_run_as_their_caller(tmp_path: Path) -> None:
    """Called functions and spawned processes run as the caller (§5.3); with_actor and
    with_scope on an executor or spawner replace it; an exec'd process runs as nobody."""
    async with LocalRuntime(tmp_path, PROJECT) as runtime:
        outcome = await runtime.execute("app:driver", [])
    assert outcome.error is None, outcome.error
    out = outcome.value
    nobody = {"scope": False}
    alice = {"actor": "alice", "meta": {"role": "admin", "n": 7}, "scope": True}
    bob = {"actor": "bob", "meta": {"role": "guest"}, "scope": False}
    assert out["call_plain"] == nobody and out["spawn_plain"] == nobody
    assert out["call_with_actor"] == alice and out["async_with_actor"] == alice
    assert out["nested"] == {"inherited": alice, "replaced": {**alice, "actor": "carol", "meta": []},
                             "spawned": nobody}
    assert out["spawn_with_actor"] == bob
    assert out["spawn_with_actor_deeper"] == {**bob, "scope": True, "grandchild": {**bob, "scope": True}}
    assert out["exec_plain"] == nobody
    assert out["exec_with_actor"] == bob  # the spawner's own, never the caller's
    assert out["context_key_is_a_value"] == nobody


# ------------------------------------------------------------------ the wire


def test_spawn_body_carries_security_beside_the_request() -> None:
    security = Security(Actor("alice", {"role": "admin"}), ("app:p",))
    body = encode_spawn(SpawnRequest("app:child", "app:host", [1], security=security), "")
    assert "security" not in body["request"]  # a node that does not know the field ignores it
    assert body["security"] == {"actor": {"id": "alice", "meta": {"role": "admin"}}, "policies": ["app:p"]}
    request, _ = decode_spawn(unpack(pack(body), "application/msgpack"))
    assert request.security == security
    plain = encode_spawn(SpawnRequest("app:child", "app:host", []), "")
    assert "security" not in plain and decode_spawn(plain)[0].security is None


@pytest.mark.parametrize("bad", [
    "alice", {"actor": "alice"}, {"actor": {"id": 7}}, {"actor": {"id": "a", "meta": [1]}},
    {"actor": {"id": "a", "meta": {"k": b"\xff"}}}, {"policies": "app:p"}, {"policies": [1]}, {"who": "me"},
])
def test_malformed_security_on_the_wire_is_invalid(bad: Any) -> None:
    body = encode_spawn(SpawnRequest("app:child", "app:host", []), "")
    body["security"] = bad
    with pytest.raises(MoonwireError) as caught:
        decode_spawn(body)
    assert caught.value.kind == Kind.INVALID


# ------------------------------------------------------------------ across nodes

SERVER = {
    "_index.yaml": """
        namespace: srv
        entries:
          - {name: pool, kind: process.host}
          - {name: whoami, kind: function.lua, source: file://whoami.lua, modules: [security, system]}
          - {name: child, kind: process.lua, source: file://child.lua, modules: [security, system]}
    """,
    "whoami.lua": """
        return function()
          local a, s = security.actor(), security.scope()
          return {actor = a and a:id(), meta = a and a:meta(), scope = s ~= nil, node = system.node.id()}
        end""",
    "child.lua": """
        return function(to)
          local a, s = security.actor(), security.scope()
          process.send(to, "me", {actor = a and a:id(), meta = a and a:meta(), scope = s ~= nil,
                                  node = system.node.id()})
        end""",
}

CALLER = {
    "_index.yaml": """
        namespace: cli
        entries:
          - {name: main, kind: process.lua, source: file://main.lua, modules: [security, funcs]}
    """,
    "main.lua": """
        return function()
          local alice = security.new_actor("alice", {role = "admin", teams = {"a", "b"}, level = 3})
          local out = {}
          out.call = funcs.new():with_actor(alice):with_scope(security.new_scope()):call("srv:whoami")
          assert(process.with_actor(alice):spawn("srv:child", "srv:pool", process.pid()))
          out.spawn = process.inbox():receive():payload():data()
          out.plain = funcs.call("srv:whoami")
          return out
        end""",
}


async def test_remote_call_and_spawn_run_as_the_caller(tmp_path: Path, nats_server: ServerProcess,
                                                       spawn_node) -> None:
    """Two node OS processes: the caller's actor (id and meta) and scope reach a function
    and a process on the other node."""
    suffix = time.monotonic_ns() % 10**8
    server, caller = f"srv-{suffix}", f"cli-{suffix}"
    node = await spawn_node(write_project(tmp_path / "server", SERVER), server, nats_url=nats_server.address)
    await node.wait_for_line(r"serving 1 function\(s\)")
    main = await spawn_node(write_project(tmp_path / "caller", CALLER), caller, nats_url=nats_server.address,
                            ready=None, args=("-x", "cli:main"))
    assert await main.wait(60) == 0, main.output
    out = json.loads(main.lines[-1])
    alice = {"actor": "alice", "meta": {"role": "admin", "teams": ["a", "b"], "level": 3}, "node": server}
    assert out["call"] == {**alice, "scope": True}
    assert out["spawn"] == {**alice, "scope": False}
    assert out["plain"] == {"scope": False, "node": server}

    # The field as any client sends it; a malformed one is Invalid and nothing runs.
    nc = await nats.connect(nats_server.address)
    try:
        headers = {"Content-Type": "application/msgpack"}
        body = {"args": [], "ctx": {}, "security": {"actor": {"id": "dave", "meta": {"k": 1}}}}
        reply = await nc.request("mw.fn.srv:whoami", msgpack.packb(body), timeout=10, headers=headers)
        assert msgpack.unpackb(reply.data) == {"result": {"actor": "dave", "meta": {"k": 1}, "scope": False,
                                                          "node": server}}
        body["security"] = {"actor": {"id": 7}}
        reply = await nc.request("mw.fn.srv:whoami", msgpack.packb(body), timeout=10, headers=headers)
        error = msgpack.unpackb(reply.data)["error"]
        assert error["kind"] == Kind.INVALID and "malformed security" in error["message"]
    finally:
        await nc.close()
