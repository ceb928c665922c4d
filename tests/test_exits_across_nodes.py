"""Exits always cross nodes (issue 14, finding 6): an exit whose error nests other errors
reaches a monitor on another node whole, and a watcher that cannot be told never stops
the others from being told (node-down handling included)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgpack
import pytest

from moonwire.broker import Pid, Subjects
from moonwire.lua import EXIT, Event, Kind, MoonwireError
from moonwire.node import load_project
from moonwire.node.wire._payload import MSGPACK, pack, to_json, unpack
from moonwire.node.wire import decode_event, encode_event
from moonwire.node._runtime import Runtime
from support import wait_until, write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")

NODE_A = {
    "_index.yaml": """
        namespace: a
        entries:
          - {name: host, kind: process.host}
          - {name: victim, kind: process.lua, source: file://victim.lua}
          - {name: crasher, kind: process.lua, source: file://crasher.lua}
          - {name: start, kind: function.lua, source: file://start.lua}
    """,
    # Linked to a crasher (not trapping links): dies of "linked process failed" when the
    # crasher fails, an error whose details hold the crasher's error.
    "victim.lua": """
        return function()
          local crasher = process.spawn_linked("a:crasher", "a:host")
          process.inbox():receive()         -- "go"
          process.send(crasher, "go")
          process.inbox():receive()         -- never: the link kills this process first
        end""",
    "crasher.lua": """
        return function()
          process.inbox():receive()
          error(errors.new({ message = "disk on fire", kind = errors.UNAVAILABLE,
                             details = { disk = "sda", cause = errors.new("smoke") } }))
        end""",
    "start.lua": "return function() return process.spawn('a:victim', 'a:host') end",
}

NODE_B = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: watch, kind: process.lua, source: file://watch.lua, modules: [funcs]}
    """,
    # Monitors the victim on node na, sets it off, and reports its EXIT as Lua reads it.
    "watch.lua": """
        local funcs = require("funcs")
        return function()
          local victim = assert(funcs.call("a:start"))
          assert(process.monitor(victim))
          process.send(victim, "go")
          local ev = process.events():receive()
          local err = ev.result.error
          local details = err:details()
          local cause = details.error
          return { kind = ev.kind, from_victim = ev.from == victim, message = err:message(),
                   linked_from = details.from, cause_message = cause:message(), cause_kind = cause:kind(),
                   disk = cause:details().disk, inner = cause:details().cause:message() }
        end""",
}


async def test_monitor_remote_exit_with_nested_error(tmp_path: Path, nats_server, spawn_node) -> None:
    node_a = await spawn_node(write_project(tmp_path / "a", NODE_A), "na", nats_url=nats_server.address,
                              args=FAST_LIVENESS)
    node_b = await spawn_node(write_project(tmp_path / "b", NODE_B), "nb", nats_url=nats_server.address,
                              ready=None, args=(*FAST_LIVENESS, "-x", "b:watch"))
    assert await node_b.wait(60) == 0, node_b.output + "\n--- na ---\n" + node_a.output
    seen = json.loads(next(line for line in reversed(node_b.lines) if line.startswith("{")))
    linked_from = seen.pop("linked_from")
    assert Pid.parse(linked_from) is not None and Pid.parse(linked_from).node == "na"
    assert seen == {"kind": "pid.exit", "from_victim": True, "message": "linked process failed",
                    "cause_message": "disk on fire", "cause_kind": "Unavailable",
                    "disk": "sda", "inner": "smoke"}
    assert "can not serialize" not in node_a.output and "Traceback" not in node_a.output, node_a.output


def nested_error(depth: int) -> MoonwireError:
    error = MoonwireError("leaf", Kind.INVALID, retryable=False, details={"list": [MoonwireError("in a list")]})
    for n in range(depth):
        error = MoonwireError("linked process failed", Kind.INTERNAL,
                              details={"from": f"{{na@host|1-{n}}}", "error": error,
                                       "all": [MoonwireError(f"sibling {n}")]})
    return error


def test_errors_that_share_parts_encode_in_bounded_time() -> None:
    """Details that hold the same error twice at each level would expand to 2**200
    copies; the encoder stops at MAX_VALUES values and marks the rest dropped."""
    error = MoonwireError("leaf")
    for _ in range(200):
        error = MoonwireError("twice", details=[error, error])
    assert unpack(pack({"error": error}), MSGPACK)["error"].message == "twice"
    assert json.loads(to_json(error))["message"] == "twice"


@pytest.mark.parametrize("depth", [1, 3, 500])
def test_one_encoder_for_nested_errors(depth: int) -> None:
    """EXIT events, replies (msgpack and JSON) and workflow failures share one encoder:
    errors in details, in lists inside details, in errors; a chain too deep to carry is
    cut, never a failure, and what is written always decodes."""
    error = nested_error(depth)
    event = decode_event(EXIT, encode_event(Event(EXIT, "{na@host|1-1}", 1.0, None, error))[0])
    assert isinstance(event.error, MoonwireError) and event.error.message == error.message
    inner = event.error
    levels = 0
    while isinstance(inner.details, dict) and isinstance(inner.details.get("error"), MoonwireError):
        siblings = inner.details["all"]
        assert isinstance(siblings[0], MoonwireError) or "dropped" in siblings  # cut at the limit
        inner, levels = inner.details["error"], levels + 1
    if depth < 10:
        assert levels == depth and inner.message == "leaf"
        assert isinstance(inner.details["list"][0], MoonwireError)
    else:
        assert 10 < levels < depth  # cut where the wire's depth limit is reached
    reply = unpack(pack({"error": error}), MSGPACK)
    assert reply["error"].message == error.message
    as_json = json.loads(to_json({"error": error}))
    assert as_json["error"]["message"] == error.message
    if depth < 10:
        assert as_json["error"]["details"]["error"]["kind"] == Kind.INTERNAL if depth > 1 else Kind.INVALID


def test_error_extension_holding_an_error_decodes_to_errors() -> None:
    """What nodes before this change wrote for an error (an extension of its fields) still
    decodes, and an error inside an error's details is an error again, not raw bytes."""
    inner = msgpack.ExtType(1, msgpack.packb({"message": "inner", "kind": "Invalid"}))
    outer = msgpack.ExtType(1, msgpack.packb({"message": "outer", "kind": "", "details": {"error": inner}}))
    value = unpack(msgpack.packb({"error": outer}), MSGPACK)
    assert value["error"].details["error"].message == "inner"


LINKER = "return function() process.inbox():receive() end"


async def test_node_down_tells_every_watcher_when_one_cannot_be_told(tmp_path: Path, caplog) -> None:
    """Node-down handling with one watcher whose notification fails still tells the
    others. The real ProcessTable with its real processes; the one failure is a cluster
    whose publish raises for one PID."""
    files = {
        "_index.yaml": """
            namespace: app
            entries:
              - {name: host, kind: process.host}
              - {name: linker, kind: process.lua, source: file://linker.lua}
        """,
        "linker.lua": LINKER,
    }
    published: list[tuple[str, str, Event]] = []

    class Remote:
        """Stands in for the broker side only (the route to other nodes): records what
        would be published, and fails for one destination node (as an encoding or
        publish failure would)."""

        def tell(self, pid: Pid, event: Event) -> None:
            if pid.node == "far":
                raise TypeError("can not serialize 'MoonwireError' object")
            published.append((pid.node, pid.uid, event))

        def forget(self, watcher: str, pid: Pid) -> None:
            pass

        def expect(self, pid: Pid) -> None:
            pass

    project = load_project(write_project(tmp_path, files))
    runtime = Runtime("t1", project, Subjects(), remote=Remote())  # type: ignore[arg-type]
    await runtime.start()
    table = runtime.processes
    from moonwire.lua import SpawnRequest

    try:
        pids = [table.start(SpawnRequest("app:linker", "app:host", [])) for _ in range(3)]
        await wait_until(lambda: all(table.records[p].unit.mailbox is not None for p in pids), 5, "started")
        remote = "{gone@host|abc-1}"
        unreachable = "{far@host|xyz-1}"
        for pid in pids:
            table.records[pid].links = {remote}
        # Each linked process dies of the node-down; its own exit must tell a monitor on
        # another node; the first one's monitor is on a node whose notice fails.
        table.records[pids[0]].watchers = {unreachable}
        table.records[pids[1]].watchers = {"{other@host|def-1}"}
        table.records[pids[2]].watchers = {"{other@host|def-2}"}
        with caplog.at_level(logging.ERROR, logger="moonwire.processes"):
            table.node_down("gone", "abc", "no heartbeat")
        await wait_until(lambda: not any(p in table.records for p in pids), 5, "every linked process ended")
        assert sorted(uid for _, uid, _ in published) == ["def-1", "def-2"]
        for _, _, event in published:
            assert event.kind == EXIT and event.error is not None and event.error.message == "linked process failed"
            assert "node down" in event.error.details["error"].message
        failures = [r for r in caplog.records if "exit notices failed" in r.getMessage()]
        assert len(failures) == 1 and "far@host" in failures[0].getMessage()
    finally:
        await runtime.stop(2.0)
