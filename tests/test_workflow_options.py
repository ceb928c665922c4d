"""Workflow options (wippy-modules §12.6, wippy-surface §3.9) against the real Temporal
dev server: values as JSON payloads (msgpack where JSON would change them), search
attributes and memo at start and from ``workflow.attrs``,
``execution_error_when_already_started``, ``meta.temporal.workflow.name``, and
histories recorded by the previous (msgpack) codec."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.common import RawValue, SearchAttributeKey

from moonwire.lua import Kind, MoonwireError
from moonwire.node import ServerProcess, load_project
from moonwire.node.wire import pack
from moonwire.node.project import TemporalClientEntry
from moonwire.node.workflows import workflow_replayer
from moonwire.node.workflows._payloads import decode, encode, json_form
from moonwire.node.workflows._search import memo, register
from moonwire.node.workflows._temporal import workflow_types
from support import run_cli, write_project

LEGACY = Path(__file__).parent / "data" / "legacy_workflow"

SEARCH = "{MwCustomer: Keyword, MwTotal: Double, MwPriority: Int, MwUrgent: Bool, MwTags: KeywordList, MwDue: Datetime}"


def project_files(temporal: ServerProcess, queue: str) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: temporal, kind: temporal.client, address: "{temporal.address}", search_attributes: {SEARCH}}}
              - {{name: worker, kind: temporal.worker, client: temporal, task_queue: {queue}}}
              - {{name: double, kind: function.lua, source: file://double.lua}}
              - {{name: echo, kind: workflow.lua, source: file://echo.lua, modules: [funcs]}}
              - {{name: mirror, kind: workflow.lua, source: file://mirror.lua, modules: [funcs]}}
              - {{name: tracked, kind: workflow.lua, source: file://tracked.lua, modules: [workflow]}}
              - {{name: quick, kind: workflow.lua, source: file://quick.lua}}
              - {{name: waiting, kind: workflow.lua, source: file://waiting.lua}}
              - name: renamed
                kind: workflow.lua
                source: file://renamed.lua
                modules: [workflow]
                meta: {{temporal: {{workflow: {{name: MwOrderFlow}}}}}}
              - {{name: starter, kind: process.lua, source: file://starter.lua, method: main}}
        """,
        "double.lua": "return function(v) if math.type(v) == 'integer' then return v * 2 end return v end",
        "echo.lua": """
            local funcs = require("funcs")
            return function(order)
              local doubled = funcs.call("app:double", order.order_id)
              local msg = process.inbox():receive()
              return { order_id = order.order_id, doubled = doubled, by = msg:payload():data().by, from = msg:from() }
            end
        """,
        "mirror.lua": 'local funcs = require("funcs") return function(v) return funcs.call("app:double", v) end',
        "quick.lua": "return function() return 1 end",
        "waiting.lua": "return function() return process.inbox():receive():topic() end",
        "tracked.lua": """
            local workflow = require("workflow")
            local function try(...)
              local ok, err = workflow.attrs(...)
              return { ok = ok, kind = err and err:kind(), message = err and err:message() }
            end
            return function()
              local r = {}
              r.set = try({ search = { MwPriority = 5, MwTotal = 12, MwTags = { "a", "b" }, MwUrgent = true },
                            memo = { note = "hi", nested = { deep = { 1, 2.5 } }, odd = "\\255" } })
              r.integral_float = try({ search = { MwPriority = 6.0 } })  -- an integral float is an Int
              r.undeclared = try({ search = { MwNope = 1 } })
              r.wrong = try({ search = { MwPriority = "high" } })
              r.fraction = try({ search = { MwPriority = 6.5 } })
              r.list = try({ search = { MwTags = { "a", 1 } } })
              r.time = try({ search = { MwDue = "tomorrow" } })
              r.big = try({ search = { MwCustomer = string.rep("x", 3000) } })
              r.neither = try({})
              r.not_table = try("x")
              r.search_not_table = try({ search = 5 })
              r.memo_keys = try({ memo = { [1] = "a", x = 2 } })
              local cycle = {} cycle.me = cycle
              r.cycle = try({ memo = { c = cycle } })
              process.inbox():receive()  -- "done"
              return r
            end
        """,
        "renamed.lua": """
            local workflow = require("workflow")
            return function(mode, parent)
              if mode == "child" then
                process.send(parent, "pong", { n = 1 })  -- signals from workflow to workflow
                process.inbox():receive()  -- "bye"
                return workflow.info().workflow_type
              end
              local child = process.spawn("app:renamed", "app:worker", "child", process.pid())
              local got = {}
              for _ = 1, 2 do local m = process.inbox():receive() got[m:topic()] = m end  -- "pong", "go"
              process.send(got.pong:from(), "bye")
              local exit = process.events():receive()
              return { type = workflow.info().workflow_type, child = exit.result.value,
                       pong = got.pong:payload():data(), pong_from = got.pong:from() == child }
            end
        """,
        "starter.lua": """
            local function same(a, b)
              if type(a) ~= type(b) then return false end
              if type(a) == "number" then
                if a ~= a then return b ~= b end
                return a == b and math.type(a) == math.type(b)
              end
              if type(a) ~= "table" then return a == b end
              for k, v in pairs(a) do if not same(v, b[k]) then return false end end
              for k in pairs(b) do if a[k] == nil then return false end end
              return true
            end
            local function kind(err) return err and { kind = err:kind(), message = err:message() } end
            return { main = function(mode, suffix)
              if mode == "json" then
                local pid = process.spawn_monitored("app:echo", "app:worker", { order_id = 7 })
                process.send(pid, "approve", { by = "bob" })
                local exit = process.events():receive()
                return { pid = pid, result = exit.result.value, me = process.pid() }
              end
              if mode == "odd" then
                local odd = { 1.0, math.maxinteger, 0/0, math.huge, "\\255\\0", "caf\\xc3\\xa9",
                              { [1] = "a", [2] = "b", x = 1 }, { [3] = "sparse" }, { [true] = "bool key" },
                              { [1.5] = "float key" }, {} }
                local pid = process.spawn_monitored("app:mirror", "app:worker", odd)
                local back = process.events():receive().result.value
                local report = { pid = pid, all = same(odd, back) }
                for i = 1, #odd do report[i] = same(odd[i], back[i]) end
                return report
              end
              if mode == "search" then
                local pid, err = process.with_options({
                  ["workflow.search_attributes"] = { MwCustomer = "c-" .. suffix, MwDue = "2026-01-02T03:04:05Z" },
                  ["workflow.memo"] = { team = "blue" },
                }):spawn("app:tracked", "app:worker")
                local _, undeclared = process.with_options({ ["temporal.workflow.search_attributes"] = { MwNope = "x" } })
                                             :spawn("app:tracked", "app:worker")
                local _, wrong = process.with_options({ ["temporal.workflow.search_attributes"] = { MwPriority = "high" } })
                                        :spawn("app:tracked", "app:worker")
                return { pid = pid, err = kind(err), undeclared = kind(undeclared), wrong = kind(wrong) }
              end
              if mode == "already" then
                local id = "once-" .. suffix
                local a = process.with_options({ ["workflow.id"] = id }):spawn("app:waiting", "app:worker")
                local same_pid = process.with_options({ ["workflow.id"] = id }):spawn("app:waiting", "app:worker")
                local _, refused = process.with_options({ ["workflow.id"] = id,
                  ["workflow.execution_error_when_already_started"] = true }):spawn("app:waiting", "app:worker")
                local explicit = process.with_options({ ["workflow.id"] = id, ["workflow.id_conflict_policy"] = "use_existing",
                  ["workflow.execution_error_when_already_started"] = true }):spawn("app:waiting", "app:worker")
                local _, not_bool = process.with_options({ ["temporal.workflow.id"] = id,
                  ["temporal.workflow.execution_error_when_already_started"] = "yes" }):spawn("app:waiting", "app:worker")
                process.send(a, "stop")
                local closed = { ["workflow.id"] = "quick-" .. suffix, ["workflow.id_reuse_policy"] = "reject_duplicate" }
                local q = process.with_options(closed):spawn_monitored("app:quick", "app:worker")
                process.events():receive()
                local again = process.with_options(closed):spawn("app:quick", "app:worker")
                closed["workflow.execution_error_when_already_started"] = true
                local _, closed_refused = process.with_options(closed):spawn("app:quick", "app:worker")
                return { same = same_pid == a, refused = kind(refused), explicit = explicit == a,
                         not_bool = kind(not_bool), again = again == q, closed_refused = kind(closed_refused) }
              end
            end }
        """,
    }


@pytest.fixture
def project(tmp_path: Path, temporal_server: ServerProcess) -> Path:
    return write_project(tmp_path / "wf", project_files(temporal_server, f"wfo-{time.monotonic_ns()}"))


async def run_starter(project: Path, nats: ServerProcess, node: str, *args: str) -> Any:
    code, out, err = await run_cli("run", str(project), "--node", node, "--nats", nats.address,
                                   "-x", "app:starter", *args)
    assert code == 0, err
    return json.loads(out)


def handle_of(client: Client, pid: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(pid[pid.index("|") + 1:-1])


async def events(handle: WorkflowHandle[Any, Any], kind: int) -> list[Any]:
    return [e async for e in handle.fetch_history_events() if e.event_type == kind]


def shown(payload: Payload) -> tuple[bytes, bytes]:
    return payload.metadata["encoding"], payload.data


# ---------------------------------------------------------------- payloads


async def test_inputs_results_signals_and_activities_are_json(project: Path, nats_server, temporal_server) -> None:
    got = await run_starter(project, nats_server, "wo1", "json")
    assert got["result"] == {"order_id": 7, "doubled": 14, "by": "bob", "from": got["me"]}
    assert isinstance(got["result"]["doubled"], int)  # an integer stays one through JSON
    handle = handle_of(await Client.connect(temporal_server.address), got["pid"])

    started = (await events(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED))[0]
    attributes = started.workflow_execution_started_event_attributes
    assert [shown(p) for p in attributes.input.payloads] == [(b"json/plain", b'{"order_id":7}')]
    # moonwire's own fields travel in a header, readable too.
    assert shown(attributes.header.fields["moonwire"]) == (b"json/plain", json.dumps(
        {"parent": got["me"]}, separators=(",", ":")).encode())
    scheduled = (await events(handle, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED))[0]
    assert [shown(p) for p in scheduled.activity_task_scheduled_event_attributes.input.payloads] == \
        [(b"json/plain", b"7")]
    completed = (await events(handle, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED))[0]
    assert [shown(p) for p in completed.activity_task_completed_event_attributes.result.payloads] == \
        [(b"json/plain", b"14")]
    signaled = (await events(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED))[0]
    signal = signaled.workflow_execution_signaled_event_attributes
    assert signal.signal_name == "approve"
    assert [shown(p) for p in signal.input.payloads] == [(b"json/plain", b'{"by":"bob"}')]
    assert json.loads(signal.header.fields["moonwire"].data) == {"from": got["me"]}
    done = (await events(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED))[0]
    result = done.workflow_execution_completed_event_attributes.result.payloads
    assert result[0].metadata["encoding"] == b"json/plain"
    assert json.loads(result[0].data) == got["result"]
    # Any Temporal client reads the result without knowing moonwire.
    assert await handle.result() == got["result"]


async def test_values_json_would_change_travel_as_msgpack(project: Path, nats_server, temporal_server) -> None:
    got = await run_starter(project, nats_server, "wo2", "odd")
    # float 1.0, maxinteger, NaN, inf, binary, UTF-8, mixed keys, sparse, boolean and float keys, {}
    assert got["all"] is True and all(got[str(i)] is True for i in range(1, 12)), got
    handle = handle_of(await Client.connect(temporal_server.address), got["pid"])
    started = (await events(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED))[0]
    assert [p.metadata["encoding"] for p in started.workflow_execution_started_event_attributes.input.payloads] == \
        [b"binary/msgpack"]
    completed = (await events(handle, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED))[0]
    assert completed.activity_task_completed_event_attributes.result.payloads[0].metadata["encoding"] == \
        b"binary/msgpack"


def test_the_codec_keeps_every_value_and_picks_json_only_when_it_is_exact() -> None:
    exact = [None, True, 0, -7, 2**63 - 1, 1.0, -0.0, 1e300, "", "café", [], [1, [2.5, None]],
             {"a": {"b": [{"c": "d"}]}}, "\u2028"]
    for value in exact:
        raw = encode(value)
        assert raw.payload.metadata["encoding"] == b"json/plain", value
        back = decode(raw)
        assert back == value and type(back) is type(value), value
    assert json_form(1.0) == b"1.0" and json_form({"order_id": 7}) == b'{"order_id":7}'
    changed = [b"\xff", {1: "a"}, {"a": {2: "b"}}, {True: 1}, {1.5: 2}, float("nan"), float("inf"),
               MoonwireError("boom", Kind.INVALID, details={"n": 1})]
    for value in changed:
        raw = encode(value)
        assert raw.payload.metadata["encoding"] == b"binary/msgpack", value
    with pytest.raises(MoonwireError, match="cannot send this value"):  # no Lua string is one (_values.py)
        encode(["\ud800"])
    assert math.isnan(decode(encode(float("nan"))))
    assert decode(encode({1: "a"})) == {1: "a"} and decode(encode(b"\xff")) == b"\xff"
    error = decode(encode(MoonwireError("boom", Kind.INVALID, details={"n": 1})))
    assert isinstance(error, MoonwireError) and error.kind == Kind.INVALID and error.details == {"n": 1}
    # What the previous codec wrote (msgpack marked binary/plain) and an SDK's None.
    assert decode(Payload(metadata={"encoding": b"binary/plain"}, data=pack({"args": [1]}))) == {"args": [1]}
    assert decode(Payload(metadata={"encoding": b"binary/null"})) is None


@pytest.mark.parametrize("payload, reason", [
    (Payload(metadata={"encoding": b"json/plain"}, data=b"{not json"), "not JSON"),
    (Payload(metadata={"encoding": b"json/plain"}, data=b"\xff\xfe"), "not JSON"),
    (Payload(metadata={"encoding": b"json/plain"}, data=b"[" * 10_000 + b"]" * 10_000), "nested deeper"),
    (Payload(metadata={"encoding": b"binary/msgpack"}, data=b"\xc1"), "malformed msgpack"),
    (Payload(metadata={"encoding": b"binary/msgpack"}, data=b"\xd4\x07\x00"), "extension type 7"),
    (Payload(metadata={"encoding": b"binary/protobuf"}, data=b""), "binary/protobuf"),
    (Payload(metadata={}, data=b"7"), "encoding 'none'"),
    (Payload(metadata={"encoding": b"json/plain"}, data=b"1" * (8 * 1024 * 1024 + 1)), "over the limit"),
])
def test_a_payload_that_does_not_decode_is_invalid_naming_why(payload: Payload, reason: str) -> None:
    with pytest.raises(MoonwireError) as caught:
        decode(payload)
    assert caught.value.kind == Kind.INVALID and reason in caught.value.message


# ---------------------------------------------------------------- search attributes and memo


async def test_search_attributes_at_start_and_from_attrs(project: Path, nats_server, temporal_server,
                                                         spawn_node) -> None:
    await spawn_node(project, "wo3", nats_url=nats_server.address)  # runs the workflow past the starter
    suffix = str(time.monotonic_ns())
    got = await run_starter(project, nats_server, "wo3s", "search", suffix)
    assert "err" not in got, got
    assert got["undeclared"]["kind"] == "Invalid" and "'MwNope' is not declared" in got["undeclared"]["message"]
    assert "temporal.client app:temporal" in got["undeclared"]["message"]
    assert got["wrong"]["kind"] == "Invalid"
    assert "MwPriority is declared Int: an integer expected, got a string" in got["wrong"]["message"]

    client = await Client.connect(temporal_server.address)
    query = f'MwCustomer = "c-{suffix}" AND MwPriority = 6 AND MwUrgent = true AND MwTags = "b"'
    deadline = time.monotonic() + 15
    while not [w async for w in client.list_workflows(query)]:  # visibility is updated shortly after
        assert time.monotonic() < deadline, f"no workflow matches {query}"
        await asyncio.sleep(0.1)
    handle = handle_of(client, got["pid"])
    described = await handle.describe()
    attributes = described.typed_search_attributes
    assert attributes.get(SearchAttributeKey.for_keyword("MwCustomer")) == f"c-{suffix}"
    assert attributes.get(SearchAttributeKey.for_int("MwPriority")) == 6
    assert attributes.get(SearchAttributeKey.for_float("MwTotal")) == 12.0  # an integer, declared Double
    assert attributes.get(SearchAttributeKey.for_keyword_list("MwTags")) == ["a", "b"]
    assert attributes.get(SearchAttributeKey.for_datetime("MwDue")).isoformat() == "2026-01-02T03:04:05+00:00"
    raw_memo = described.raw_info.memo.fields
    assert shown(raw_memo["team"]) == (b"json/plain", b'"blue"')  # at start
    assert shown(raw_memo["nested"]) == (b"json/plain", b'{"deep":[1,2.5]}')  # from workflow.attrs
    assert raw_memo["odd"].metadata["encoding"] == b"binary/msgpack" and decode(raw_memo["odd"]) == b"\xff"

    await handle.signal("done")  # from a plain Temporal client: no moonwire header needed
    r = await handle.result()
    assert r["set"] == {"ok": True} and r["integral_float"] == {"ok": True}
    for name, part in (("undeclared", "'MwNope' is not declared"),
                       ("wrong", "MwPriority is declared Int: an integer expected, got a string"),
                       ("fraction", "MwPriority is declared Int: an integer expected, got a float"),
                       ("list", "MwTags is declared KeywordList: an array of strings expected"),
                       ("time", "MwDue is declared Datetime: an RFC 3339 time string"),
                       ("big", "MwCustomer is 3002 bytes, over Temporal's limit of 2048"),
                       ("neither", "give search, memo or both"),
                       ("not_table", "expects a table"),
                       ("search_not_table", "search must be a table"),
                       ("memo_keys", "keys must be non-empty strings, not an integer"),
                       ("cycle", "nested deeper than 128")):
        assert r[name]["kind"] == "Invalid" and part in r[name]["message"], (name, r[name])
    # Refused calls change nothing: the workflow ran on.
    assert (await handle.describe()).typed_search_attributes.get(SearchAttributeKey.for_int("MwPriority")) == 6


async def test_declared_attributes_are_registered_and_a_clash_stops_the_node(tmp_path: Path,
                                                                               temporal_server) -> None:
    suffix = time.monotonic_ns()
    project = load_project(write_project(tmp_path / "p", {"_index.yaml": f"""
        namespace: app
        entries:
          - {{name: temporal, kind: temporal.client, address: "{temporal_server.address}",
              search_attributes: {{MwA{suffix}: keyword_list, MwB{suffix}: int}}}}
    """}))
    entry = project.get("app:temporal")
    assert isinstance(entry, TemporalClientEntry)
    assert entry.search_attributes == {f"MwA{suffix}": "KeywordList", f"MwB{suffix}": "Int"}
    client = await Client.connect(temporal_server.address)
    await register(client, entry)
    await register(client, entry)  # again (another node starting): nothing to add, no error
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
    assert listed.custom_attributes[f"MwA{suffix}"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST
    clash = entry.model_copy(update={"search_attributes": {f"MwB{suffix}": "Keyword"}})
    with pytest.raises(MoonwireError) as caught:
        await register(client, clash)
    assert f"search attribute MwB{suffix} is declared Keyword, but namespace default has it as Int" in \
        caught.value.message
    with pytest.raises(ValueError, match="type 'Integer' is not one of Keyword, Text, Int"):
        TemporalClientEntry(id="app:t", search_attributes={"X": "Integer"})


def test_a_memo_over_temporals_payload_limit_is_invalid() -> None:
    assert memo({"a": "x" * 1000}, "m")["a"].payload.metadata["encoding"] == b"json/plain"
    with pytest.raises(MoonwireError, match="memo of 2097154 bytes, over Temporal's payload limit"):
        memo({"a": "x" * (2 * 1024 * 1024)}, "m")


# ---------------------------------------------------------------- start options


async def test_execution_error_when_already_started(project: Path, nats_server) -> None:
    got = await run_starter(project, nats_server, "wo4", "already", str(time.monotonic_ns()))
    assert got["same"] is True  # an explicit id dedupes by default
    assert got["refused"]["kind"] == "AlreadyExists"  # ... unless asked to fail
    assert got["explicit"] is True  # an explicit id_conflict_policy wins over the flag
    assert got["not_bool"]["kind"] == "Invalid" and "must be a boolean" in got["not_bool"]["message"]
    # Closed, and the reuse policy refuses a new run: the existing PID, as Wippy (the Go
    # SDK's flag) answers, or AlreadyExists when the flag asks for it.
    assert got["again"] is True
    assert got["closed_refused"]["kind"] == "AlreadyExists"


async def test_a_workflow_type_name_of_its_own(project: Path, nats_server, temporal_server, spawn_node) -> None:
    await spawn_node(project, "wo5", nats_url=nats_server.address)
    cli = ("--nats", nats_server.address)
    code, out, err = await run_cli("spawn", "app:renamed", '"top"', "--host", "app:worker", *cli)
    assert code == 0, err
    pid = out.strip()
    client = await Client.connect(temporal_server.address)
    handle = handle_of(client, pid)
    assert (await handle.describe()).workflow_type == "MwOrderFlow"
    code, out, err = await run_cli("workflow", "show", pid, "--json", *cli)
    assert code == 0, err
    assert json.loads(out)["type"] == "app:renamed" and json.loads(out)["workflow_type"] == "MwOrderFlow"
    deadline = time.monotonic() + 60  # only against a hang: each `ps` is a CLI process, slow on a loaded machine
    while True:  # ps names the entry (visibility is updated shortly after the start)
        code, out, err = await run_cli("ps", "--json", *cli)
        assert code == 0, err
        listed = {w["pid"]: w["type"] for w in json.loads(out)["workflows"]["app:worker"]["list"]}
        if pid in listed:
            assert listed[pid] == "app:renamed"
            break
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.1)
    code, _, err = await run_cli("send", pid, "go", *cli)
    assert code == 0, err
    child = (await events(handle, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED))[0]
    child_attributes = child.start_child_workflow_execution_initiated_event_attributes
    assert child_attributes.workflow_type.name == "MwOrderFlow"
    assert await handle.result() == {"type": "MwOrderFlow", "child": "MwOrderFlow", "pong": {"n": 1},
                                     "pong_from": True}
    replayed = await workflow_replayer(load_project(project)).replay_workflow(await handle.fetch_history(),
                                                                              raise_on_replay_failure=False)
    assert replayed.replay_failure is None


def test_two_workflows_with_one_type_name_do_not_start(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path / "p", {"_index.yaml": """
        namespace: app
        entries:
          - {name: a, kind: workflow.lua, source: file://w.lua, meta: {temporal: {workflow: {name: app:b}}}}
          - {name: b, kind: workflow.lua, source: file://w.lua}
    """, "w.lua": "return function() end"}))
    with pytest.raises(MoonwireError) as caught:
        workflow_types(project)
    assert caught.value.kind == Kind.INVALID
    assert "app:a and app:b both have Temporal type 'app:b'" in caught.value.message


# ---------------------------------------------------------------- the previous codec


def legacy_project(root: Path, address: str, queue: str) -> Path:
    files = {f.name: f.read_text().replace("ADDRESS", address).replace("QUEUE", queue)
             for f in LEGACY.iterdir() if f.suffix in (".yaml", ".lua")}
    return write_project(root, files)


async def test_a_history_recorded_by_the_msgpack_codec_replays(tmp_path: Path) -> None:
    """``data/legacy_workflow/history.json`` was recorded by moonwire before this codec
    (main at 1604a32): input, startup message, context, activity, child workflow and
    signal all msgpack marked binary/plain. Each value the workflow receives is checked
    in its Lua code, so one decoded differently fails the replay."""
    history = WorkflowHistory.from_json("legacy-flow-1", (LEGACY / "history.json").read_text())
    encodings = {p.metadata["encoding"] for e in history.events
                 for p in e.workflow_execution_started_event_attributes.input.payloads}
    assert encodings == {b"binary/plain"}
    project = load_project(legacy_project(tmp_path / "p", "127.0.0.1:7233", "legacy-rec"))
    replayed = await workflow_replayer(project).replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, replayed.replay_failure


async def test_a_workflow_started_by_the_msgpack_codec_runs_on(tmp_path: Path, nats_server, temporal_server,
                                                               spawn_node) -> None:
    """A workflow started and signalled as the previous codec did (what a node of the
    previous version sends during an upgrade) runs to its end on the current one."""
    queue = f"legacy-{time.monotonic_ns()}"
    await spawn_node(legacy_project(tmp_path / "p", temporal_server.address, queue), "wo6",
                     nats_url=nats_server.address)
    client = await Client.connect(temporal_server.address)  # the SDK writes bytes as binary/plain
    starter = "{n1@app:host|starter}"
    body = pack({"args": [{"order_id": 7, "total": 12.5}, "rush"], "ctx": {"tenant": "t1"}, "parent": starter,
                 "messages": [["hello", ["m1"], starter]]})
    handle = await client.start_workflow("legacy:flow", body, id=f"legacy-{queue}", task_queue=queue,
                                         result_type=RawValue)
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            break
    await handle.signal("go", pack({"from": "{n1@app:host|sender}", "payloads": [{"ok": True}, b"\xff\x00"]}))
    result = await handle.result()
    assert decode(result) == {"order": 7, "doubled": 14, "half": 1.25, "raw": b"\xff\x00"}
