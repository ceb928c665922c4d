"""Workflows on Temporal (DESIGN §7, wippy-surface §3.9): workflow.lua entries run by
the Temporal workers inside real node processes, against a real Temporal dev server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from temporalio.client import Client, WorkflowExecutionStatus

from moonwire.node import ServerProcess
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
              - {{name: child, kind: workflow.lua, source: file://child.lua, modules: [workflow]}}
              - {{name: sleeper, kind: workflow.lua, source: file://sleeper.lua, modules: [time]}}
              - {{name: clocky, kind: workflow.lua, source: file://clocky.lua}}
              - {{name: parent, kind: workflow.lua, source: file://parent.lua, modules: [workflow]}}
              - {{name: linker, kind: process.lua, source: file://linker.lua}}
              - {{name: doomed, kind: process.lua, source: file://doomed.lua}}
        """,
        "child.lua": """
            local workflow = require("workflow")
            return function(n)
              if n < 0 then return nil, errors.new({ message = "negative", kind = errors.INVALID }) end
              return { n = n * 10, id = workflow.info().workflow_id }
            end
        """,
        "sleeper.lua": 'local time = require("time") return function() time.sleep("1h") end',
        "clocky.lua": "return function() return os.clock() end",
        "parent.lua": """
            local workflow = require("workflow")
            return function(n)
              local by_exec = workflow.exec("app:child", n)
              local _, negative = process.exec("app:child", "app:worker", -1)
              local spawned = process.with_name("kid-" .. workflow.info().workflow_id):spawn("app:child", "app:worker", n + 1)
              local exit = process.events():receive()  -- monitored without asking
              local sleeper = process.with_options({ ["temporal.workflow.execution_timeout"] = "500ms" })
                                     :spawn("app:sleeper", "app:worker")
              local timed_out = process.events():receive()
              local none, bad = process.with_options({ ["temporal.workflow.start_delay"] = "1s" })
                                       :spawn("app:sleeper", "app:worker")
              return {
                exec = by_exec, negative = { kind = negative:kind(), message = negative:message() },
                spawned = { pid = spawned, kind = exit.kind, from = exit.from == spawned, value = exit.result.value },
                timed_out = { from = timed_out.from == sleeper, kind = timed_out.result.error:kind() },
                bad_option = { none = none == nil, kind = bad:kind(), message = bad:message() },
              }
            end
        """,
        "linker.lua": """
            return function()
              process.set_options({ trap_links = true })
              local fine = process.spawn_linked("app:child", "app:worker", 1)
              process.monitor(fine)
              local first = process.events():receive()
              local failing = process.spawn_linked("app:child", "app:worker", -1)
              local second = process.events():receive()
              local doomed = process.spawn_monitored("app:doomed", "app:host")
              local third = process.events():receive()
              return {
                first = { kind = first.kind, from = first.from == fine },
                second = { kind = second.kind, from = second.from == failing, error = second.result.error:kind() },
                doomed = { kind = third.kind, from = third.from == doomed, error = third.result.error:kind(),
                           message = third.result.error:message() },
              }
            end
        """,
        "doomed.lua": """
            return function()
              process.spawn_linked("app:child", "app:worker", -2)
              process.inbox():receive()  -- killed by the link before anything arrives
            end
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
              if mode == "exec-parent" then
                local pid = process.spawn_monitored("app:parent", "app:worker", 3)
                local event = process.events():receive()
                local result = event.result.value or { error = tostring(event.result.error) }
                result.parent = pid:sub(pid:find("|", 1, true) + 1, -2)
                return result
              end
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
              if mode == "options" then
                local waiter = "opt-" .. suffix
                local timed = process.with_options({ ["temporal.workflow.execution_timeout"] = 700 })
                                     :spawn_monitored("app:sleeper", "app:worker")
                local timeout = process.events():receive()
                local fail = process.with_options({ ["temporal.workflow.id"] = waiter,
                                                    ["temporal.workflow.id_conflict_policy"] = "fail",
                                                    ["temporal.workflow.memo"] = { team = "blue" } })
                local first = fail:spawn("app:waiter", "app:worker")
                local _, exists = fail:spawn("app:waiter", "app:worker")
                local _, unknown = process.with_options({ ["temporal.workflow.bogus"] = 1 })
                                          :spawn("app:waiter", "app:worker")
                local _, child_only = process.with_options({ ["temporal.workflow.parent_close_policy"] = "abandon" })
                                             :spawn("app:waiter", "app:worker")
                local _, bad_value = process.with_options({ ["temporal.workflow.id_reuse_policy"] = "sometimes" })
                                            :spawn("app:waiter", "app:worker")
                return { timeout = { from = timeout.from == timed, kind = timeout.result.error:kind() },
                         first = first, exists = exists:kind(), unknown = unknown:message(),
                         child_only = child_only:message(), bad_value = bad_value:message() }
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


async def test_child_workflows_from_lua(project: Path, nats_server) -> None:
    code, out, err = await run_cli("run", str(project), "--node", "w4", "--nats", nats_server.address,
                                   "-x", "app:starter", "exec-parent")
    assert code == 0, err
    got = json.loads(out)
    assert got["exec"]["n"] == 30  # workflow.exec: a child on the parent's worker, its result
    assert got["negative"] == {"kind": "Invalid", "message": "negative"}  # a child's error keeps its kind
    spawned = got["spawned"]
    # A plain spawn is monitored without asking; with_name names the child workflow.
    assert spawned["kind"] == "pid.exit" and spawned["from"] is True and spawned["value"]["n"] == 40
    assert spawned["pid"] == "{@app:worker|kid-" + got["parent"] + "}" == \
        "{@app:worker|" + spawned["value"]["id"] + "}"
    assert got["timed_out"] == {"from": True, "kind": "Timeout"}  # temporal.workflow.execution_timeout
    assert got["bad_option"]["none"] is True and got["bad_option"]["kind"] == "Invalid"
    assert "does not apply to child workflows" in got["bad_option"]["message"]


async def test_start_options_from_a_process(project: Path, nats_server, temporal_server) -> None:
    suffix = str(time.monotonic_ns())
    code, out, err = await run_cli("run", str(project), "--node", "w5", "--nats", nats_server.address,
                                   "-x", "app:starter", "options", suffix)
    assert code == 0, err
    got = json.loads(out)
    assert got["timeout"] == {"from": True, "kind": "Timeout"}  # milliseconds, as Wippy's options
    assert got["first"] == f"{{@app:worker|opt-{suffix}}}"
    assert got["exists"] == "AlreadyExists"  # id_conflict_policy = fail: no dedupe
    assert "unknown workflow start option 'temporal.workflow.bogus'" in got["unknown"]
    assert "child workflows" in got["child_only"]
    assert "id_reuse_policy must be one of allow_duplicate" in got["bad_value"]
    client = await Client.connect(temporal_server.address)
    handle = client.get_workflow_handle(f"opt-{suffix}")
    assert await (await handle.describe()).memo() == {"team": "blue"}
    await handle.terminate()


async def test_a_link_to_a_workflow_fires_on_failure_only(project: Path, nats_server) -> None:
    code, out, err = await run_cli("run", str(project), "--node", "w6", "--nats", nats_server.address,
                                   "-x", "app:linker")
    assert code == 0, err
    got = json.loads(out)
    # The link to the child that succeeded stayed silent: the monitor's EXIT came first, and
    # the next event is the failing child's LINK_DOWN.
    assert got["first"] == {"kind": "pid.exit", "from": True}
    assert got["second"] == {"kind": "pid.link.down", "from": True, "error": "Invalid"}
    # A process that does not trap links dies of the link.
    assert got["doomed"] == {"kind": "pid.exit", "from": True, "error": "Internal",
                             "message": "linked process failed"}  # as for a process link


async def test_os_clock_fails_the_task_not_the_workflow(project: Path, nats_server, temporal_server,
                                                        spawn_node) -> None:
    await spawn_node(project, "w7", nats_url=nats_server.address)
    code, out, err = await run_cli("spawn", "app:clocky", "--host", "app:worker", "--nats", nats_server.address)
    assert code == 0, err
    pid = out.strip()
    client = await Client.connect(temporal_server.address)
    handle = client.get_workflow_handle(pid[pid.index("|") + 1:-1])
    failure = None
    async for event in handle.fetch_history_events(wait_new_event=True):  # long-polls the next event
        if event.HasField("workflow_task_failed_event_attributes"):
            failure = event.workflow_task_failed_event_attributes.failure.message
            break
    assert failure is not None and "os.clock" in failure
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING  # history is not corrupted
    await handle.terminate()
