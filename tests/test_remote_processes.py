"""Monitors, links, cancel and terminate across real node processes, the noproc rule,
and node-down detection when a node is killed or stops (DESIGN §5-§6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support import run_cli, write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")

NODE_A = {
    "_index.yaml": """
        namespace: a
        entries:
          - {name: host, kind: process.host}
          - {name: child, kind: process.lua, source: file://child.lua}
          - {name: start, kind: function.lua, source: file://start.lua}
    """,
    # Waits for "go" (or a CANCEL), then ends as told.
    "child.lua": """
        return function(how)
          local inbox, events = process.inbox(), process.events()
          local r = channel.select({ inbox:case_receive(), events:case_receive() })
          if r.channel == events then return "cleaned: " .. tostring(r.value.reason) end
          if how == "return" then return "v" end
          if how == "nil_err" then return nil, errors.new({ message = "bad", kind = errors.INVALID }) end
          if how == "raise" then error("boom") end
          inbox:receive()  -- "wait": until terminated or the node dies
        end""",
    "start.lua": "return function(how) return process.spawn('a:child', 'a:host', how) end",
}

NODE_B = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: watch, kind: process.lua, source: file://watch.lua, modules: [funcs, time]}
    """,
    # Monitors and links (trapping) a child on node na, acts on it, then reports every
    # event about it that arrives within a grace period after its EXIT.
    "watch.lua": """
        local funcs = require("funcs")
        local time = require("time")
        return function(how, act, grace)
          process.set_options({ trap_links = true })
          local pid = assert(funcs.call("a:start", how))
          if act == "noproc" then
            -- Same node and incarnation, a uid that was never issued: a process that does not exist.
            pid = pid:gsub("%-%w+}$", "-zzzzzz}")
          end
          assert(process.monitor(pid))
          assert(process.link(pid))
          if act == "terminate" then process.terminate(pid)
          elseif act == "cancel" then process.cancel(pid, "please")
          elseif act == "go" then process.send(pid, "go")
          elseif act == "wait" then print("watching " .. pid) end
          local events, seen, deadline = process.events(), {}, nil
          while true do
            local cases = { events:case_receive() }
            if deadline then cases[2] = deadline:case_receive() end
            local r = channel.select(cases)
            if r.channel ~= events then break end
            local ev = r.value
            local err = ev.result and ev.result.error
            seen[#seen + 1] = { kind = ev.kind, from_child = ev.from == pid, value = ev.result and ev.result.value,
                                error_kind = err and err:kind(), message = err and err:message() }
            if ev.kind == process.event.EXIT and not deadline then deadline = time.after(grace or "300ms") end
          end
          return seen
        end""",
}


async def start_a(tmp_path: Path, urls: str, spawn_node, *extra: str):
    return await spawn_node(write_project(tmp_path / "a", NODE_A), "na", nats_url=urls,
                            args=(*FAST_LIVENESS, *extra))


async def run_b(tmp_path: Path, urls: str, spawn_node, *args: str) -> list[dict]:
    node = await spawn_node(write_project(tmp_path / "b", NODE_B), "nb", nats_url=urls,
                            ready=None, args=(*FAST_LIVENESS, "-x", "b:watch", *args))
    assert await node.wait(60) == 0, node.output
    return json.loads(next(line for line in reversed(node.lines) if line.startswith("[")))


@pytest.mark.parametrize(("how", "act", "expected"), [
    ("return", "go", [{"kind": "pid.exit", "value": "v"}]),
    ("nil_err", "go", [{"kind": "pid.exit", "error_kind": "Invalid", "message": "bad"},
                       {"kind": "pid.link.down", "error_kind": "Invalid", "message": "bad"}]),
    ("raise", "go", [{"kind": "pid.exit", "error_kind": ""}, {"kind": "pid.link.down", "error_kind": ""}]),
    ("wait", "terminate", [{"kind": "pid.exit", "error_kind": "Canceled", "message": "process terminated"},
                           {"kind": "pid.link.down", "error_kind": "Canceled", "message": "process terminated"}]),
    ("return", "cancel", [{"kind": "pid.exit", "value": "cleaned: please"}]),
])
async def test_remote_monitor_and_link_for_each_exit(tmp_path: Path, nats_server, spawn_node, how: str, act: str,
                                                    expected: list[dict]) -> None:
    await start_a(tmp_path, nats_server.address, spawn_node)
    seen = await run_b(tmp_path, nats_server.address, spawn_node, how, act)
    for event in seen:
        assert event.pop("from_child") is True
        if how == "raise":
            assert "boom" in event.pop("message")
    assert seen == expected


async def test_monitoring_a_process_that_is_gone_exits_at_once_with_noproc(tmp_path: Path, nats_server,
                                                                          spawn_node) -> None:
    await start_a(tmp_path, nats_server.address, spawn_node)
    seen = await run_b(tmp_path, nats_server.address, spawn_node, "return", "noproc")
    assert [(e["kind"], e["error_kind"]) for e in seen] == [("pid.exit", "NotFound"), ("pid.link.down", "NotFound")]
    assert all(e["message"].startswith("noproc:") for e in seen)


async def test_kill_9_fires_monitors_and_links_once_within_the_window(tmp_path: Path, nats_urls: str,
                                                                     spawn_node) -> None:
    a = await start_a(tmp_path, nats_urls, spawn_node)
    b = await spawn_node(write_project(tmp_path / "b", NODE_B), "nb", nats_url=nats_urls,
                         ready=r"watching \{na@", args=(*FAST_LIVENESS, "-x", "b:watch", "wait", "wait", "2s"))
    await a.kill()
    assert await b.wait(60) == 0, b.output
    seen = json.loads(next(line for line in reversed(b.lines) if line.startswith("[")))
    assert [(e["kind"], e["error_kind"], e["from_child"]) for e in seen] == [
        ("pid.exit", "Unavailable", True), ("pid.link.down", "Unavailable", True)]
    assert all(e["message"].startswith("node down: node na") for e in seen)
    assert "node na is down: no heartbeat for" in b.output


async def test_clean_shutdown_delivers_the_real_exit_once(tmp_path: Path, nats_server, spawn_node) -> None:
    a = await start_a(tmp_path, nats_server.address, spawn_node)
    b = await spawn_node(write_project(tmp_path / "b", NODE_B), "nb", nats_url=nats_server.address,
                         ready=r"watching \{na@", args=(*FAST_LIVENESS, "-x", "b:watch", "wait", "wait", "2s"))
    await a.stop()  # the child gets CANCEL and returns normally; then node na says goodbye
    assert await b.wait(60) == 0, b.output
    seen = json.loads(next(line for line in reversed(b.lines) if line.startswith("[")))
    # The real EXIT, once; a normal exit fires no link; the goodbye adds nothing.
    assert seen == [{"kind": "pid.exit", "from_child": True, "value": "cleaned: node shutting down"}]
    assert "node na is down: left the cluster" in b.output


RESTARTING = {
    **NODE_A,
    # Returns its first message.
    "child.lua": """
        return function()
          local msg = process.inbox():receive()
          return msg:topic() .. "=" .. tostring(msg:payload():data())
        end""",
}

WATCH_RESTART = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: main, kind: process.lua, source: file://main.lua, modules: [funcs, time]}
    """,
    # Watches a child on na through na's death; once na is back (a:start answers
    # again), sends to the old PID and the new one and reports what the new one got.
    "main.lua": """
        local funcs, time = require("funcs"), require("time")
        return function()
          local old = assert(funcs.call("a:start"))
          assert(process.monitor(old))
          print("watching " .. old)
          local events = process.events()
          local down = events:receive()
          local new
          repeat
            new = funcs.call("a:start")  -- NotFound while no node serves it
            if not new then time.sleep("100ms") end
          until new
          assert(process.send(old, "stale", 1))
          assert(process.monitor(new))
          assert(process.send(new, "fresh", 2))
          local exit = events:receive()
          local again = channel.select({ events:case_receive(), time.after("500ms"):case_receive() })
          return { old = old, new = new, down = { down.kind, down.from == old, down.result.error:kind() },
                   got = exit.result.value, from_new = exit.from == new, more_events = again.channel == events }
        end""",
}


async def test_a_node_restarting_under_the_same_name_is_a_new_incarnation(tmp_path: Path, nats_server,
                                                                         spawn_node) -> None:
    project = write_project(tmp_path / "a", RESTARTING)
    a = await spawn_node(project, "na", nats_url=nats_server.address, args=FAST_LIVENESS)
    b = await spawn_node(write_project(tmp_path / "b", WATCH_RESTART), "nb", nats_url=nats_server.address,
                         ready=r"watching \{na@", args=(*FAST_LIVENESS, "-x", "b:main"))
    await a.kill()
    again = await spawn_node(project, "na", nats_url=nats_server.address, args=FAST_LIVENESS)
    assert await b.wait(60) == 0, b.output
    out = json.loads(b.lines[-1])
    old_uid, new_uid = (out[k].split("|")[1].rstrip("}") for k in ("old", "new"))
    assert out["old"].startswith("{na@a:host|") and out["new"].startswith("{na@a:host|")
    assert old_uid.split("-")[0] != new_uid.split("-")[0]  # a new incarnation's uids
    assert out["down"] == ["pid.exit", True, "Unavailable"]  # once, as node down
    assert out["got"] == "fresh=2" and out["from_new"] is True and out["more_events"] is False

    # The old PID from outside (the CLI knows nothing of incarnations): the new node
    # has no such process; the message goes to the dead-letter queue, to nobody.
    code, _, err = await run_cli("send", out["old"], "stale", "3", "--nats", nats_server.address, cwd=tmp_path)
    assert code == 0, err
    line = await again.wait_for_line(r"undeliverable message on mw\.p\.na\." + re.escape(old_uid))
    assert "no process with uid" in line
