"""Temporal updates and queries (wippy-modules §12.5), against a real Temporal dev server
and real node processes: an update reaches the workflow as a message from
``{update|<id>}`` and is answered with ``process.send`` there (ack, nak, ok, error);
callers are a Lua function (``process.update``), a Lua process, the CLI (``moonwire
workflow update|query``) and a plain Temporal client. Updates survive replay; across a
continue-as-new the unanswered ones fail clearly."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgpack
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from moonwire.node import ServerProcess, load_project, workflow_replayer
from support import run_cli, write_project


def update_project(temporal: ServerProcess, queue: str) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: temporal, kind: temporal.client, address: "{temporal.address}"}}
              - {{name: worker, kind: temporal.worker, client: temporal, task_queue: {queue}}}
              - {{name: host, kind: process.host}}
              - {{name: counter, kind: workflow.lua, source: file://counter.lua}}
              - {{name: stepper, kind: workflow.lua, source: file://stepper.lua}}
              - {{name: across, kind: process.lua, source: file://across.lua, method: main}}
        """,
        # Answers updates as Wippy's example does; each topic shows one rule of §12.5.
        "counter.lua": """
            return function()
              local inbox = process.inbox()
              local total = 0
              while true do
                local m = inbox:receive()
                local topic, from = m:topic(), m:from()
                if topic == "add" then
                  local n = m:payload():data()
                  if type(n) ~= "number" then
                    process.send(from, "nak", "add takes a number, not a " .. type(n))
                  else
                    local _, early = process.send(from, "ok", 0)  -- before "ack": refused
                    process.send(from, "ack")
                    local _, twice = process.send(from, "ack")
                    total = total + n
                    process.send(from, "ok", { total = total, from = from:sub(1, 8), early = early:message(),
                                               twice = twice:message() })
                  end
                elseif topic == "fail" then
                  process.send(from, "ack"); process.send(from, "error", "no luck")
                elseif topic == "conflict" then
                  process.send(from, "ack")
                  process.send(from, "error", errors.new({ message = "taken", kind = errors.CONFLICT }))
                elseif topic == "maybe" then
                  local _, wrong = process.send(from, "maybe")
                  process.send(from, "nak", wrong:message())
                elseif topic == "big" then
                  process.send(from, "ack")
                  local _, too_big = process.send(from, "ok", string.rep("x", 1100000))
                  process.send(from, "ok", too_big:message())
                elseif topic == "hang" then
                  process.send(from, "ack")  -- and never answered
                elseif topic == "total" then
                  process.send(from, "ack"); process.send(from, "ok", total)
                elseif topic == "stop" then
                  process.send(from, "ack"); process.send(from, "ok", total)
                  local _, gone = process.send(from, "ok", total)  -- answered already
                  return { total = total, gone = gone:message() }
                end
              end
            end
        """,
        # process.update from a function: each answer the workflow can give, and the
        # caller's own mistakes. It runs on a node of a project with no Temporal entries
        # (FAR_INDEX), which asks a node that has a client (the gateway).
        "caller.lua": """
            return function(pid)
              local r = {}
              local function fails(name, ...)
                local value, err = process.update(pid, name, ...)
                if err == nil then return { value = value } end
                return { kind = err:kind(), message = err:message(), retryable = err:retryable() }
              end
              r.add = process.update(pid, "add", 5)
              r.nak = fails("add", "five")
              r.fail = fails("fail")
              r.conflict = fails("conflict")
              r.maybe = fails("maybe")
              local _, slow = process.with_options({ ["update.timeout"] = "300ms" }):update(pid, "hang")
              r.hang = { kind = slow:kind(), message = slow:message() }
              local _, notwf = process.update(process.pid(), "add", 1)
              r.not_a_workflow = notwf:kind()
              local _, noproc = process.update("{@app:worker|nobody-here}", "add", 1)
              r.noproc = noproc:kind()
              local _, reserved = process.update(pid, "@add", 1)
              r.reserved = reserved:kind()
              local _, bad_timeout = process.with_options({ ["update.timeout"] = "soon" }):update(pid, "add", 1)
              r.bad_timeout = bad_timeout:kind()
              r.big = process.update(pid, "big")
              r.total = process.update(pid, "total")
              return r
            end
        """,
        # Round 1 accepts one update and leaves the next pending, then continues as new;
        # round 2 answers whatever comes.
        "stepper.lua": """
            return function(round)
              local inbox = process.inbox()
              if round == 1 then
                local first = inbox:receive()
                process.send(first:from(), "ack")
                inbox:receive()
                process.upgrade(nil, 2)
              end
              local m = inbox:receive()
              process.send(m:from(), "ack")
              process.send(m:from(), "ok", { round = round, topic = m:topic() })
              return round
            end
        """,
        "across.lua": """
            return { main = function()
              local pid = process.spawn_monitored("app:stepper", "app:worker", 1)
              local answers = channel.new(2)
              for _, name in ipairs({ "hold", "wait" }) do
                coroutine.spawn(function()
                  local _, err = process.update(pid, name)
                  answers:send({ message = err:message(), kind = err:kind(), retryable = err:retryable() })
                end)
              end
              local a, b = answers:receive(), answers:receive()
              local ping = process.update(pid, "ping")
              local exit = process.events():receive()
              return { pid = pid, answers = { a, b }, ping = ping, exit = exit.result.value, from = exit.from == pid }
            end }
        """,
    }


FAR_INDEX = """
    namespace: app
    entries:
      - {name: caller, kind: function.lua, source: file://caller.lua}
"""


@pytest.fixture
def project(tmp_path: Path, temporal_server: ServerProcess) -> Path:
    return write_project(tmp_path / "wf", update_project(temporal_server, f"upd-{time.monotonic_ns()}"))


def _legacy(value: object) -> RawValue:
    """An argument as moonwire wrote one before its payloads were JSON: msgpack, ``binary/plain``."""
    return RawValue(Payload(metadata={"encoding": b"binary/plain"}, data=msgpack.packb(value)))


async def test_updates_from_lua_the_cli_and_a_temporal_client(project: Path, nats_server: ServerProcess,
                                                              temporal_server: ServerProcess, spawn_node) -> None:
    await spawn_node(project, "up1", nats_url=nats_server.address)
    far = write_project(project.parent / "far", {"_index.yaml": FAR_INDEX,
                                                 "caller.lua": (project / "caller.lua").read_text()})
    await spawn_node(far, "up2", nats_url=nats_server.address)
    client = await Client.connect(temporal_server.address)
    workflow_id = f"counter-{time.monotonic_ns()}"
    pid = f"{{@app:worker|{workflow_id}}}"
    queue = load_project(project).get("app:worker").task_queue  # type: ignore[union-attr]
    handle = await client.start_workflow("app:counter", id=workflow_id, task_queue=queue)

    # From a Lua function (process.update) on a node without a client for the worker.
    code, out, err = await run_cli("call", "app:caller", json.dumps(pid), "--nats", nats_server.address)
    assert code == 0, err
    r = json.loads(out)
    assert r["add"] == {"total": 5, "from": "{update|", "early": 'update \'add\' not accepted (state: pending): '
                        'send "ack" first', "twice": "update 'add' already accepted"}
    assert r["nak"] == {"kind": "Invalid", "message": "add takes a number, not a string", "retryable": False}
    assert r["fail"]["message"] == "no luck" and r["fail"]["kind"] == ""
    assert r["conflict"]["kind"] == "Conflict" and r["conflict"]["message"] == "taken"
    assert r["maybe"]["kind"] == "Invalid" and r["maybe"]["message"] == \
        "unknown update response: maybe (expected ack/nak/ok/error)"
    assert r["hang"]["kind"] == "Timeout" and "not answered within 0.3s" in r["hang"]["message"]
    assert r["not_a_workflow"] == r["reserved"] == r["bad_timeout"] == "Invalid"
    assert r["noproc"] == "NotFound"
    assert r["big"].startswith("an update's answer may take 1048576 bytes, not 11000")
    assert r["total"] == 5

    # From the CLI, through a node's gateway.
    cli = ("--nats", nats_server.address)
    code, out, err = await run_cli("workflow", "update", pid, "add", "7", *cli)
    assert code == 0, err
    assert json.loads(out)["total"] == 12
    code, out, err = await run_cli("workflow", "update", "--timeout", "400ms", pid, "hang", *cli)
    assert code == 1 and "Timeout: update 'hang'" in err and json.loads(out)["error"]["kind"] == "Timeout"
    code, out, err = await run_cli("workflow", "query", pid, "pid", *cli)
    assert code == 0 and json.loads(out) == workflow_id, err
    code, out, err = await run_cli("workflow", "query", pid, "nope", *cli)
    assert code == 1 and "unknown query type: nope" in err

    # From a plain Temporal client: JSON arguments in, a JSON result out (what the UI
    # shows); msgpack arguments (the previous codec's binary/plain, binary/msgpack) are
    # read too; an argument that does not decode is refused before delivery, and nothing
    # of it is recorded.
    assert await handle.query("state") == {}
    answer = await handle.execute_update("add", 3, result_type=RawValue)
    assert answer.payload.metadata["encoding"] == b"json/plain"
    assert json.loads(answer.payload.data)["total"] == 15
    msgpacked = RawValue(Payload(metadata={"encoding": b"binary/msgpack"}, data=msgpack.packb(2)))
    assert (await handle.execute_update("add", msgpacked))["total"] == 17
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("add", RawValue(Payload(metadata={"encoding": b"binary/plain"}, data=b"\xc1")),
                                    id="undecodable")
    assert isinstance(refused.value.cause, ApplicationError) and refused.value.cause.type == "Invalid"
    assert "update argument 1 does not decode" in refused.value.cause.message

    # A flood: every update is answered or refused clearly; none is lost or counted twice.
    async def add_one(i: int) -> bool:
        try:
            await handle.execute_update("add", args=[_legacy(1)], id=f"flood-{i}")
            return True
        except RPCError as err:  # Temporal's bound on updates in flight per workflow
            assert "limit" in err.message.lower() or "exhausted" in err.message.lower(), err
            return False

    added = sum(await asyncio.gather(*(add_one(i) for i in range(40))))
    assert added > 0
    total = await handle.execute_update("total")
    assert total == 17 + added
    print(f"\nflood: {added} of 40 concurrent updates answered, {40 - added} refused (Temporal bounds those in flight)")
    assert await handle.execute_update("stop") == total
    final = await handle.result()
    assert final == {"total": total, "gone": "unknown update: " + final["gone"].split(": ", 1)[1]}
    assert final["gone"].startswith("unknown update: ")

    # The history (updates accepted, answered, rejected by nak) replays against the code;
    # the refused one left no trace.
    history = await handle.fetch_history()
    accepted = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
    assert accepted and all(e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
                            != "undecodable" for e in accepted)
    result = await workflow_replayer(load_project(project)).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_unanswered_updates_fail_clearly_across_continue_as_new(project: Path, nats_server: ServerProcess,
                                                                       temporal_server: ServerProcess) -> None:
    code, out, err = await run_cli("run", str(project), "--node", "up2", "--nats", nats_server.address,
                                   "-x", "app:across")
    assert code == 0, err
    got = json.loads(out)
    by_state = {a["retryable"]: a for a in got["answers"]}
    accepted, pending = by_state[False], by_state[True]
    assert accepted["kind"] == pending["kind"] == "Unavailable"
    assert "was accepted and never answered: the workflow continued as new" in accepted["message"]
    assert "was not accepted and never answered: the workflow continued as new" in pending["message"]
    assert got["ping"] == {"round": 2, "topic": "ping"}  # the next run takes the next update
    assert got["exit"] == 2 and got["from"] is True

    # Both runs (updates, then continue-as-new; the next run) replay against the code.
    client = await Client.connect(temporal_server.address)
    workflow_id = got["pid"][got["pid"].index("|") + 1:-1]
    last = await client.get_workflow_handle(workflow_id).fetch_history()
    previous = last.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    first = await client.get_workflow_handle(workflow_id, run_id=previous).fetch_history()
    assert first.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    replayer = workflow_replayer(load_project(project))
    for history in (first, last):
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, result.replay_failure


async def test_update_arguments_lua_cannot_pass_are_nil_err_not_the_callers_end(tmp_path: Path) -> None:
    # As process.send and process.upgrade: a function among the arguments (or the options)
    # is the caller's nil, err; the process goes on (no Temporal is reached).
    from support import LocalRuntime, process_project

    source = """return { main = function()
      local r, err = process.update("{wf@x|abc}", "set", function() end)
      local r2, err2 = process.with_options({ ["update.timeout"] = function() end }):update("{wf@x|abc}", "set")
      return { r = r == nil, err = tostring(err), r2 = r2 == nil, err2 = tostring(err2) }
    end }"""
    async with LocalRuntime(tmp_path, process_project({"p": source})) as runtime:
        outcome = await asyncio.wait_for(runtime.execute("app:p", []), 10)
    assert outcome.error is None, outcome.error
    assert outcome.value["r"] and "cannot pass a Lua function" in outcome.value["err"]
    assert outcome.value["r2"] and outcome.value["err2"] != "nil"
