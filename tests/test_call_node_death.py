"""Requests between nodes learn of node death (issue item 9): a call, a remote spawn or
a control request whose serving node dies mid-way fails with the node-down error once
membership declares that node down, not with the request's timeout; and a node that
serves a call for a node that dies gives the work up.

Real node processes, killed with ``kill -9``. To have a request *in flight* at a known
moment, the serving node is first frozen (SIGSTOP): the request then waits in its
socket, unread, and is lost with it. The node-down error says why the node is down
("no heartbeat for ..."); without detection the same requests end with their timeout
(a Timeout error, or for a control request "node down ... (no answer within 5s)")."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import nats
import pytest

from moonwire.node import ServerProcess
from conftest import monitor_json
from support import NodeProcess, freeze, wait_until, write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")
_names = itertools.count(1)

SERVER = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: add, kind: function.lua, source: file://add.lua}
          - {name: slow, kind: function.lua, source: file://slow.lua, modules: [time]}
          - {name: slowproc, kind: process.lua, source: file://slowproc.lua, meta: {default_host: host}}
          - {name: child, kind: process.lua, source: file://child.lua}
    """,
    "add.lua": "return function(a, b) return (a or 1) + (b or 1) end",
    "slow.lua": "return function() print('slow started') time.sleep('60s') return 'late' end",
    "slowproc.lua": """
        return function(tag)
          print("slowproc " .. tostring(tag) .. " started")
          local ev = process.events():receive()
          print("slowproc " .. tostring(tag) .. " got " .. ev.kind .. ": " .. tostring(ev.reason))
          return "cancelled"
        end""",
    "child.lua": "return function() process.inbox():receive() end",
}

# The caller's project has none of the server's entries, so its calls go over NATS.
# `drive(go, what, target, ...)`: prints its PID, waits for a "go" message when asked
# to (the test freezes the serving node first), then acts and returns what it got.
CALLER = {
    "_index.yaml": """
        namespace: d
        entries:
          - {name: drive, kind: process.lua, source: file://drive.lua, modules: [funcs, time]}
    """,
    "drive.lua": """
        local funcs = require("funcs")
        return function(go, what, target, option)
          local child
          if what == "cancel" then
            child = assert(process.with_options({ node = target }):spawn("app:child", "app:host"))
          end
          print("driver " .. process.pid())
          if go == "go" then process.inbox():receive() end
          print(what .. " " .. target)
          local value, err
          if what == "call" then
            value, err = funcs.new():with_options({ timeout = option or "30s" }):call(target)
          elseif what == "spawn" then
            value, err = process.with_options({ node = target }):spawn("app:child", "app:host")
          elseif what == "cancel" then
            value, err = process.cancel(child, "bye")
          end
          return { value = value, kind = err and err:kind(), message = err and err:message() }
        end""",
}


def names() -> tuple[str, str, str]:
    n = next(_names)
    return f"dsrv{n}", f"dcall{n}", f"dpeer{n}"


async def start_server(tmp_path: Path, url: str, spawn_node, name: str) -> NodeProcess:
    node = await spawn_node(write_project(tmp_path / "server", SERVER), name, nats_url=url, args=FAST_LIVENESS)
    await node.wait_for_line(r"serving 3 function\(s\)")
    return node


async def start_caller(tmp_path: Path, url: str, spawn_node, name: str, *args: str,
                       log_level: str = "info") -> NodeProcess:
    return await spawn_node(write_project(tmp_path / "caller", CALLER), name, nats_url=url, ready=None,
                            args=(*FAST_LIVENESS, "--log-level", log_level, "-x", "d:drive", *args))


async def result_of(node: NodeProcess) -> dict[str, Any]:
    await node.wait(60)
    return json.loads(next(line for line in reversed(node.lines) if line.startswith("{")))


async def send_go(url: str, node: NodeProcess) -> None:
    """Publish "go" to the driver's inbox (its PID is in its first line)."""
    line = await node.wait_for_line(r"driver \{")
    pid = re.search(r"\{(\S+)@\S+\|(\S+)\}", line)
    assert pid is not None, line
    nc = await nats.connect(url)
    try:
        await nc.publish(f"mw.p.{pid[1]}.{pid[2]}.go", b"")
        await nc.flush()
    finally:
        await nc.close()


def delivered_to(server: ServerProcess, node: str, subject: str) -> int:
    """Messages the broker has routed to ``node``'s subscriptions on ``subject`` (a
    subject ending in "." counts every subscription under it)."""
    connz = monitor_json(server, "connz?subs=detail")
    return sum(sub.get("msgs", 0) for conn in connz.get("connections", ())
               if (conn.get("name") or "").startswith(f"moonwire-{node}")
               for sub in conn.get("subscriptions_list_detail") or ()
               if sub["subject"] == subject or (subject.endswith(".") and sub["subject"].startswith(subject)))


def assert_node_down(result: dict[str, Any], node: str) -> None:
    assert result["kind"] == "Unavailable", result
    assert result["message"].startswith(f"node down: node {node} is unreachable (no heartbeat for"), result


@pytest.mark.parametrize("target", ["app:slow", "app:slowproc"])
async def test_a_call_taken_by_a_node_that_dies_fails_with_node_down(tmp_path: Path, nats_server: ServerProcess,
                                                                     spawn_node, target: str) -> None:
    """The serving node told the caller it took the call (the call waits there), then
    died, perhaps before the caller heard its first heartbeat: the notice is what makes
    the caller watch it."""
    server_name, caller_name, _ = names()
    server = await start_server(tmp_path, nats_server.address, spawn_node, server_name)
    caller = await start_caller(tmp_path, nats_server.address, spawn_node, caller_name, "now", "call", target,
                                log_level="debug")
    await caller.wait_for_line(rf"request \d+ taken by {server_name}\.")
    await server.kill()
    assert_node_down(await result_of(caller), server_name)
    assert "lost with node" not in caller.output  # the notice did it, not the probe


@pytest.mark.parametrize("what", ["call", "spawn", "cancel"])
async def test_a_request_lost_in_a_dying_node_fails_with_node_down(tmp_path: Path, nats_server: ServerProcess,
                                                                  spawn_node, what: str) -> None:
    """The serving node never read the request: a call to its queue group (no node took
    it; a probe of the live nodes shows it lost), a spawn pinned to it, a cancel of one
    of its processes (both addressed to it)."""
    server_name, caller_name, peer_name = names()
    url = nats_server.address
    server = await start_server(tmp_path, url, spawn_node, server_name)
    if what == "call":  # a live node that serves nothing: the probe must hear it before it counts the call lost
        await spawn_node(write_project(tmp_path / "peer", CALLER), peer_name, nats_url=url, args=FAST_LIVENESS)
    target = {"call": "app:add", "spawn": server_name, "cancel": server_name}[what]
    caller = await start_caller(tmp_path, url, spawn_node, caller_name, "go", what, target)
    await caller.wait_for_line(rf"node {server_name} is up")
    if what == "call":
        await caller.wait_for_line(rf"node {peer_name} is up")
    await caller.wait_for_line(r"driver \{")  # for a cancel, its child runs on the server by then
    await freeze(server.pid)
    subject = "mw.fn.app:add" if what == "call" else f"mw.ctl.{server_name}."
    before = delivered_to(nats_server, server_name, subject)
    await send_go(url, caller)
    await caller.wait_for_line(rf"{what} {target}")
    # In flight: the broker holds the request for the frozen node. Killed before the
    # request reached the broker, the node would have no subscription left to take it.
    await wait_until(lambda: delivered_to(nats_server, server_name, subject) > before, 10,
                     f"the {what} request to reach {server_name}'s subscription")
    await server.kill()
    assert_node_down(await result_of(caller), server_name)
    if what == "call":
        assert f"1 request(s) to a queue group lost with node {server_name}" in caller.output


async def test_a_call_whose_caller_dies_cancels_the_process(tmp_path: Path, nats_server: ServerProcess,
                                                            spawn_node) -> None:
    server_name, caller_name, _ = names()
    server = await start_server(tmp_path, nats_server.address, spawn_node, server_name)
    caller = await start_caller(tmp_path, nats_server.address, spawn_node, caller_name, "now", "call", "app:slowproc")
    await server.wait_for_line(r"slowproc nil started")
    await caller.kill()
    await server.wait_for_line(r"slowproc nil got pid.cancel: caller context canceled")
    await server.wait_for_line(rf"node {caller_name} is down")


async def test_a_call_the_caller_gives_up_cancels_the_process_on_the_serving_node(
        tmp_path: Path, nats_server: ServerProcess, spawn_node) -> None:
    server_name, caller_name, _ = names()
    server = await start_server(tmp_path, nats_server.address, spawn_node, server_name)
    caller = await start_caller(tmp_path, nats_server.address, spawn_node, caller_name, "now", "call", "app:slowproc",
                                "1s")
    result = await result_of(caller)
    assert result["kind"] == "Timeout", result
    await server.wait_for_line(r"slowproc nil got pid.cancel: caller context canceled")
