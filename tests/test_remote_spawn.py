"""Spawning on other nodes (DESIGN §5): through the host's queue group or a pinned node,
every spawn variant with its monitor and link in place from the first instant, exec,
startup messages, names looked up on a node, and the errors when no node can do it.
Three real node OS processes on one NATS server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from support import LocalRuntime, process_project, run_cli, write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")

# Nodes na and nc run the host w:pool; nb runs none and spawns there.
WORKERS = {
    "_index.yaml": """
        namespace: w
        entries:
          - {name: pool, kind: process.host}
          - {name: child, kind: process.lua, source: file://child.lua}
    """,
    "child.lua": """
        return function(how, arg)
          if how == "return" then return "v:" .. tostring(arg) end
          if how == "raise" then error("boom") end
          if how == "first" then
            local msg = process.inbox():receive()
            return msg:topic() .. "=" .. tostring(msg:payload():data()) .. " from parent: " .. tostring(msg:from() ~= "")
          end
          process.inbox():receive()  -- "wait": until terminated
        end""",
}

SPAWNER = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: main, kind: process.lua, source: file://main.lua, modules: [time]}
    """,
    "main.lua": """
        local time = require("time")
        local function node_of(pid) return pid and pid:match("^{([%w_-]+)@") end
        return function()
          local out = {}
          local events = process.events()
          process.set_options({ trap_links = true })
          local function next_event()
            local r = channel.select({ events:case_receive(), time.after("10s"):case_receive() })
            if r.channel ~= events then return { kind = "timeout" } end
            local ev, err = r.value, r.value.result and r.value.result.error
            return { kind = ev.kind, value = ev.result and ev.result.value, error = err and err:message(),
                     from = ev.from }
          end

          -- Any node running w:pool answers; both get some of 20 spawns.
          local waiting, nodes = {}, {}
          for i = 1, 20 do
            local pid = assert(process.spawn("w:child", "w:pool", "wait"))
            waiting[#waiting + 1] = pid
            nodes[node_of(pid)] = (nodes[node_of(pid)] or 0) + 1
          end
          out.spread = nodes

          local m = process.spawn_monitored("w:child", "w:pool", "return", 1)
          local ev = next_event()
          out.monitored = { ev.kind, ev.value, ev.from == m }

          local l = process.spawn_linked("w:child", "w:pool", "raise")
          ev = next_event()
          out.linked = { ev.kind, ev.from == l, ev.error ~= nil and ev.error:find("boom") ~= nil }

          process.spawn_linked_monitored("w:child", "w:pool", "raise")
          out.linked_monitored = { next_event().kind, next_event().kind }

          -- Children that exit at once, 50 of them: every monitor fires, once.
          local exits = 0
          for i = 1, 50 do assert(process.spawn_monitored("w:child", "w:pool", "return", i)) end
          for i = 1, 50 do if next_event().kind == process.event.EXIT then exits = exits + 1 end end
          out.instant_exits = exits

          out.exec = process.exec("w:child", "w:pool", "return", 2)
          local _, exec_err = process.exec("w:child", "w:pool", "raise")
          out.exec_error = exec_err and exec_err:message():find("boom") ~= nil

          process.with_message("hello", "world"):spawn_monitored("w:child", "w:pool", "first")
          out.with_message = next_event().value

          local pinned = process.with_options({ node = "nc" }):with_name("svc"):spawn("w:child", "w:pool", "wait")
          out.pinned = node_of(pinned)
          out.lookup = process.registry.lookup("svc", "nc") == pinned
          local _, lookup_err = process.registry.lookup("svc", "na")
          out.lookup_elsewhere = lookup_err and lookup_err:kind()

          local _, no_host = process.spawn("w:child", "w:nowhere")
          out.no_host = { no_host:kind(), no_host:message() }
          local _, no_node = process.with_options({ node = "ghost" }):spawn("w:child", "w:pool")
          out.no_node = { no_node:kind(), no_node:message() }

          local _, unknown = process.terminate((pinned:gsub("%-%w+}$", "-zzzzzz}")))
          out.terminate_unknown = unknown and unknown:kind()
          local _, unknown_cancel = process.cancel((pinned:gsub("%-%w+}$", "-zzzzzz}")), "why")
          out.cancel_unknown = unknown_cancel and unknown_cancel:kind()

          assert(process.monitor(pinned))
          assert(process.terminate(pinned))
          ev = next_event()
          out.terminated = { ev.kind, ev.from == pinned, ev.error }
          for _, pid in ipairs(waiting) do assert(process.terminate(pid)) end
          return out
        end""",
}


async def test_spawn_on_other_nodes(tmp_path: Path, nats_urls: str, spawn_node) -> None:
    for name in ("na", "nc"):
        await spawn_node(write_project(tmp_path / name, WORKERS), name, nats_url=nats_urls, args=FAST_LIVENESS)
    b = await spawn_node(write_project(tmp_path / "b", SPAWNER), "nb", nats_url=nats_urls, ready=None,
                         args=(*FAST_LIVENESS, "-x", "b:main"))
    assert await b.wait(60) == 0, b.output
    out = json.loads(b.lines[-1])
    assert set(out["spread"]) == {"na", "nc"} and sum(out["spread"].values()) == 20
    assert out["monitored"] == ["pid.exit", "v:1", True]
    assert out["linked"] == ["pid.link.down", True, True]
    assert out["linked_monitored"] == ["pid.exit", "pid.link.down"]
    assert out["instant_exits"] == 50
    assert out["exec"] == "v:2"
    assert out["exec_error"] is True
    assert out["with_message"] == "hello=world from parent: true"
    assert out["pinned"] == "nc"
    assert out["lookup"] is True
    assert out["lookup_elsewhere"] == "NotFound"
    assert out["no_host"] == ["NotFound", "no node runs process host w:nowhere"]
    assert out["no_node"][0] == "Unavailable" and "node ghost" in out["no_node"][1]
    assert out["terminate_unknown"] == "NotFound"
    assert out["cancel_unknown"] == "NotFound"
    assert out["terminated"] == ["pid.exit", True, "process terminated"]


# ---------------------------------------------------------------- pure logic

PARENT = """
return { main = function(how)
  if how == "link" then return process.spawn_linked("app:child", "x:elsewhere") end
  if how == "exec" then
    local value, err = process.exec("app:child", "x:elsewhere")
    return { value = value }
  end
  local pid = process.spawn_monitored("app:child", "x:elsewhere")
  local ev = process.events():receive()
  return { pid = pid, kind = ev.kind, from_child = ev.from == pid, value = ev.result.value }
end }
"""


class HeldSpawns:
    """Stands in for the route to other nodes (a RemoteTarget): holds each remote spawn's
    reply until the test gives it, and records the events it is asked to tell."""

    def __init__(self) -> None:
        self.replies: list[Any] = []
        self.arrived = asyncio.Event()
        self.events: list[tuple[str, str, Any]] = []

    def spawn(self, request: Any, parent: str, node: str | None, on_reply: Any) -> Any:
        self.replies.append((parent, on_reply))
        self.arrived.set()
        return lambda: None

    def forget(self, watcher: str, pid: Any) -> None:
        pass

    def expect(self, pid: Any) -> None:
        pass

    def tell(self, pid: Any, event: Any) -> None:
        self.events.append((pid.node, pid.uid, event))


@pytest.mark.parametrize("how", ["monitor", "exec"])
async def test_a_childs_exit_that_overtakes_its_pid_is_held_until_the_pid_arrives(tmp_path: Path, how: str) -> None:
    """The EXIT of a child on another node travels on the parent's inbox subject, its PID
    on the reply subject; the EXIT can come first. It must still reach the parent."""
    from moonwire.lua import Event, Outcome, SpawnRequest

    held = HeldSpawns()
    async with LocalRuntime(tmp_path, process_project({"parent": PARENT, "child": "return {main = print}"}),
                            remote=held) as runtime:
        table = runtime.processes
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        table.start(SpawnRequest("app:parent", "app:host", [how]), on_exit=done.set_result)
        await held.arrived.wait()
        parent, reply = held.replies[0]
        child = "{nz@x:elsewhere|abc-1}"
        uid = parent[parent.index("|") + 1:-1]
        table.deliver_event(uid, Event("pid.exit", "{nz@x:elsewhere|abc-2}", time.time(), "not mine", None))
        table.deliver_event(uid, Event("pid.exit", child, time.time(), "result", None))
        reply(Outcome(value=child))
        outcome = await asyncio.wait_for(done, 10)
    if how == "exec":
        assert outcome.value == {"value": "result"}
    else:
        assert outcome.value == {"pid": child, "kind": "pid.exit", "from_child": True, "value": "result"}


# ---------------------------------------------------------------- the CLI


async def test_cli_spawn_ps_and_nodes(tmp_path: Path, nats_server, spawn_node) -> None:
    nodes = {name: await spawn_node(write_project(tmp_path / name, WORKERS), name, nats_url=nats_server.address,
                                    args=("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=30s"))
             for name in ("na", "nc")}
    cli = ("--nats", nats_server.address)
    # Each node has seen the other's heartbeat, so each answer names both.
    for node in nodes.values():
        await node.wait_for_line(r"node n[ac] is up")

    code, out, err = await run_cli("spawn", "w:child", "wait", "--host", "w:pool", "--node", "nc", *cli, cwd=tmp_path)
    assert code == 0, err
    on_c = out.strip()
    assert on_c.startswith("{nc@w:pool|")
    code, out, err = await run_cli("spawn", "w:child", "wait", "--host", "w:pool", *cli, cwd=tmp_path)
    assert code == 0, err
    anywhere = out.strip()
    code, out, err = await run_cli("spawn", "w:child", "--host", "w:nowhere", *cli, cwd=tmp_path)
    assert code == 1 and "no node runs process host w:nowhere" in err

    code, out, err = await run_cli("ps", "--json", *cli, cwd=tmp_path)
    assert code == 0, err
    listed = json.loads(out)
    assert sorted(listed["nodes"]) == ["na", "nc"] and listed["missing"] == []
    rows = {p["pid"]: p for answer in listed["nodes"].values() for p in answer["list"]}
    assert {on_c, anywhere} <= set(rows)
    assert rows[on_c]["entry"] == "w:child" and rows[on_c]["host"] == "w:pool"
    assert rows[on_c]["state"] == "waiting" and rows[on_c]["inbox"] == 0

    code, out, err = await run_cli("ps", "--node", "nc", *cli, cwd=tmp_path)
    assert code == 0, err
    assert on_c in out and "na@" not in out
    assert out.splitlines()[0].split() == ["PID", "ENTRY", "HOST", "STATE", "INBOX", "UPTIME"]

    code, out, err = await run_cli("nodes", *cli, cwd=tmp_path)
    assert code == 0, err
    table = [line.split() for line in out.splitlines()]
    assert table[0] == ["NODE", "INCARNATION", "HOSTS", "PROCESSES", "UPTIME", "HEARTBEAT", "FLAPS", "DROPPED"]
    assert [row[0] for row in table[1:]] == ["na", "nc"] and all(row[2] == "w:pool" for row in table[1:])

    # The broadcast subject answers questions only: a spawn asked of every node is refused.
    from moonwire.node.wire._payload import CONTENT_TYPE, MSGPACK, pack, unpack
    from moonwire.node.wire import encode_spawn
    from moonwire.lua import SpawnRequest
    nc = await nats.connect(nats_server.address)
    try:
        reply = await nc.request("mw.nodes.spawn", pack(encode_spawn(SpawnRequest("w:child", "w:pool", ["wait"]), "")),
                                 headers={CONTENT_TYPE: MSGPACK}, timeout=5)
        assert "unknown control request 'spawn'" in unpack(reply.data, MSGPACK)["error"]["message"]
        # Malformed control requests get an error reply naming the problem.
        bad = {"mw.ctl.nc.monitor": pack({"target": on_c}), "mw.ctl.nc.spawn": b"\xc1",
               "mw.spawn.w:pool": pack({"request": {"entry": "w:child", "bogus": 1}})}
        for subject, body in bad.items():
            reply = await nc.request(subject, body, headers={CONTENT_TYPE: MSGPACK}, timeout=5)
            error = unpack(reply.data, MSGPACK)["error"]
            assert error["kind"] == "Invalid" and "malformed" in error["message"], (subject, error)
    finally:
        await nc.close()
    code, out, _ = await run_cli("ps", "--json", *cli, cwd=tmp_path)
    assert sum(len(a["list"]) for a in json.loads(out)["nodes"].values()) == 2

    # A node that is alive to its peers but does not answer (stopped) is named.
    os.kill(nodes["nc"].pid, signal.SIGSTOP)
    try:
        code, out, err = await run_cli("nodes", *cli, cwd=tmp_path)
        assert code == 1 and "no answer from node(s): nc" in err
        assert "(no answer)" in out
        code, out, err = await run_cli("ps", *cli, cwd=tmp_path)
        assert code == 1 and "no answer from node(s): nc" in err
        assert on_c not in out  # nc's processes are not listed: nc did not answer
    finally:
        os.kill(nodes["nc"].pid, signal.SIGCONT)


async def test_a_parent_that_dies_before_its_remote_childs_pid_arrives_still_takes_the_link_down(
        tmp_path: Path) -> None:
    from moonwire.lua import Outcome, SpawnRequest

    held = HeldSpawns()
    async with LocalRuntime(tmp_path, process_project({"parent": PARENT, "child": "return {main = print}"}),
                            remote=held) as runtime:
        table = runtime.processes
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        table.start(SpawnRequest("app:parent", "app:host", ["link"]), on_exit=done.set_result)
        await held.arrived.wait()
        parent, reply = held.replies[0]
        assert table.terminate(None, parent) is None
        assert (await asyncio.wait_for(done, 10)).error is not None
        reply(Outcome(value="{nz@x:elsewhere|abc-1}"))
    [(node, uid, event)] = held.events
    assert (node, uid, event.kind, event.sender) == ("nz", "abc-1", "pid.link.down", parent)
    assert event.error.message == "process terminated"
