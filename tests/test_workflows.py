"""Workflows on Temporal (DESIGN §7, wippy-surface §3.9): workflow.lua entries run by
the Temporal workers inside real node processes, against a real Temporal dev server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from node import ServerProcess
from support import run_cli, write_project


def project_files(temporal: ServerProcess, queue: str) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: temporal, kind: temporal.client, address: "{temporal.address}"}}
              - {{name: worker, kind: temporal.worker, client: temporal, task_queue: {queue}}}
              - {{name: host, kind: process.host}}
              - {{name: double, kind: function.lua, source: file://double.lua}}
              - {{name: refuse, kind: function.lua, source: file://refuse.lua}}
              - name: order
                kind: workflow.lua
                source: file://order.lua
                modules: [funcs, time, workflow]
                meta: {{temporal: {{workflow: {{worker: worker}}}}}}
              - {{name: failing, kind: workflow.lua, source: file://failing.lua, modules: [funcs]}}
              - {{name: waiter, kind: workflow.lua, source: file://waiter.lua}}
              - {{name: starter, kind: process.lua, source: file://starter.lua, method: main, modules: [time]}}
        """,
        "double.lua": "return function(n) return n * 2 end",
        "refuse.lua": """
            return function()
              return nil, errors.new({message = "card declined", kind = errors.CONFLICT, retryable = false})
            end
        """,
        "order.lua": """
            local funcs = require("funcs")
            local time = require("time")
            local workflow = require("workflow")
            return function(id, n)
              local doubled, err = funcs.call("app:double", n)
              if err then return nil, err end
              local before = time.now()
              time.sleep("300ms")
              local slept = time.now():sub(before):milliseconds()
              local msg = process.inbox():receive()
              local info = workflow.info()
              return {
                id = id, doubled = doubled, slept = slept, topic = msg:topic(), by = msg:payload():data().by,
                from = msg:from(), type = info.workflow_type, pid = process.pid(), year = time.now():year(),
                version = workflow.version("v2", 1, 2), history = workflow.history_length() > 0,
              }
            end
        """,
        "failing.lua": """
            local funcs = require("funcs")
            return function()
              local _, err = funcs.call("app:refuse")
              return nil, err
            end
        """,
        "waiter.lua": """
            return function()
              local _, refused = process.monitor(process.pid())
              local got = {}
              local inbox, events = process.inbox(), process.events()
              while true do
                local r = channel.select({ inbox:case_receive(), events:case_receive() })
                if r.channel == events then
                  return { got = got, event = r.value.kind, refused = refused:kind() }
                end
                got[#got + 1] = r.value:topic()
                process.send(r.value:from(), "seen", r.value:topic())
              end
            end
        """,
        "starter.lua": """
            local time = require("time")
            return { main = function(mode, suffix)
              if mode == "exec" then
                return process.exec("app:order", "app:worker", "by-exec", 4)
              end
              if mode == "fail" then
                local _, err = process.exec("app:failing", "app:worker")
                return { kind = err:kind(), message = err:message(), retryable = err:retryable() }
              end
              if mode == "control" then
                local name = "waiter-" .. suffix
                local seen = process.listen("seen")
                local a = process.with_name(name):with_message("first"):spawn_monitored("app:waiter", "app:worker")
                local b = process.with_name(name):with_message("second"):spawn("app:waiter", "app:worker")
                process.send(a, "third")
                local order = { (seen:receive()), (seen:receive()), (seen:receive()) }
                process.cancel(a)
                local canceled = process.events():receive()
                local c = process.spawn_monitored("app:waiter", "app:worker")
                process.terminate(c)
                local terminated = process.events():receive()
                return { same = a == b, order = order, canceled = canceled.result.value,
                         terminated = { from = terminated.from == c, kind = terminated.result.error:kind(),
                                        message = terminated.result.error:message() } }
              end
              local pid, err = process.spawn_monitored("app:order", "app:worker", "o-1", 21)
              if not pid then return nil, err end
              process.send(pid, "approve", { by = "bob" })
              local event = process.events():receive()
              return { pid = pid, kind = event.kind, from = event.from, result = event.result.value,
                       me = process.pid() }
            end }
        """,
    }


@pytest.fixture
def project(tmp_path: Path, temporal_server: ServerProcess) -> Path:
    return write_project(tmp_path / "wf", project_files(temporal_server, f"wf-{time.monotonic_ns()}"))


async def test_a_process_spawns_monitors_and_signals_a_workflow(project: Path, nats_server) -> None:
    code, out, err = await run_cli("run", str(project), "--node", "w1", "--nats", nats_server.address,
                                   "-x", "app:starter", "monitor")
    assert code == 0, err
    got = json.loads(out)
    pid = got["pid"]
    assert pid.startswith("{@app:worker|app:order-") and got["kind"] == "pid.exit" and got["from"] == pid
    result = got["result"]
    assert result["id"] == "o-1" and result["doubled"] == 42  # an activity
    assert result["slept"] >= 300  # a durable timer, measured on the workflow's clock
    assert (result["topic"], result["by"], result["from"]) == ("approve", "bob", got["me"])  # a signal
    assert result["type"] == "app:order" and result["pid"] == pid
    assert result["year"] >= 2025 and result["version"] == 2 and result["history"] is True


async def test_exec_returns_the_result_and_errors_keep_their_kind(project: Path, nats_server) -> None:
    code, out, err = await run_cli("run", str(project), "--node", "w2", "--nats", nats_server.address,
                                   "-x", "app:starter", "fail")
    assert code == 0, err
    assert json.loads(out) == {"kind": "Conflict", "message": "card declined", "retryable": False}


async def test_dedupe_startup_messages_cancel_and_terminate(project: Path, nats_server) -> None:
    code, out, err = await run_cli("run", str(project), "--node", "w3", "--nats", nats_server.address,
                                   "-x", "app:starter", "control", str(time.monotonic_ns()))
    assert code == 0, err
    got = json.loads(out)
    assert got["same"] is True  # with_name: the running workflow's PID
    assert got["order"] == ["first", "second", "third"]  # startup messages (both spawns) before a send
    assert got["canceled"] == {"got": ["first", "second", "third"], "event": "pid.cancel", "refused": "Invalid"}
    assert got["terminated"] == {"from": True, "kind": "Canceled", "message": "workflow terminated"}
