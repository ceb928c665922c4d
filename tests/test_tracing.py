"""Trace ids across nodes (docs/operations.md, *Tracing*): one ``funcs.call`` chain over
three real node processes is followed by one trace id in their JSON logs; an outside
caller's ``traceparent`` is honoured, a malformed one ignored; a process message carries
its sender's trace, and a process works in the trace of the message it took."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest

from moonwire.broker import Envelope, batch_items
from moonwire.broker._envelope import batch
from moonwire.lua import parse_traceparent, run_trace
from moonwire.node.processes import decode
from moonwire.node.processes._inboxes import decode_item
from moonwire.node.wire import request_trace

from conftest import SpawnNode
from support import run_cli, wait_until, write_project

def calling(target: str) -> str:
    """A function that logs its tag, then calls ``target`` with it."""
    return f"""
    local funcs = require("funcs")
    local logger = require("logger")
    return function(tag)
      logger:info("calling {target}", {{tag = tag}})
      local r, err = funcs.call("{target}", tag)
      if err then error(err) end
      return r
    end"""


THIRD = """
    local logger = require("logger")
    return function(tag)
      logger:info("third", {tag = tag})
      return "done " .. tag
    end"""
RELAY = """
    local logger = require("logger")
    return function()
      assert(process.registry.register("relay"))
      local inbox = process.inbox()
      while true do
        local msg = inbox:receive()
        local tag = msg:payload():data()
        logger:info("relay", {tag = tag})
        local sink = assert(process.registry.lookup("sink", "tc3"))
        process.send(sink, "fwd", tag)
      end
    end"""
SINK = """
    local logger = require("logger")
    return function()
      assert(process.registry.register("sink"))
      local inbox = process.inbox()
      while true do
        logger:info("sink", {tag = inbox:receive():payload():data()})
      end
    end"""


def project(root: Path, namespace: str, functions: dict[str, str], service: str | None = None) -> Path:
    lines = [f"namespace: {namespace}", "entries:"]
    files: dict[str, str] = {}
    for name, source in functions.items():
        lines.append(f"  - {{name: {name}, kind: function.lua, source: file://{name}.lua, modules: [funcs, logger]}}")
        files[f"{name}.lua"] = source
    if service is not None:
        lines += ["  - {name: host, kind: process.host, lifecycle: {auto_start: true}}",
                  f"  - {{name: {service}, kind: process.lua, source: file://{service}.lua, modules: [logger]}}",
                  f"  - {{name: {service}.service, kind: process.service, process: {service}, host: host, "
                  "lifecycle: {auto_start: true}}"]
        files[f"{service}.lua"] = {"relay": RELAY, "sink": SINK}[service]
    files["_index.yaml"] = "\n".join(lines) + "\n"
    return write_project(root / namespace, files)


async def registered(nc: nats.NATS, prefix: str, node: str, name: str) -> str:
    """The PID registered as ``name`` on ``node``, once its service has registered it
    (a poll: the registration announces itself nowhere)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        reply = await nc.request(f"{prefix}.ctl.{node}.lookup", json.dumps({"name": name}).encode(), timeout=10)
        answer = json.loads(reply.data)
        if "result" in answer:
            return str(answer["result"])
        assert asyncio.get_running_loop().time() < deadline, answer
        await asyncio.sleep(0.05)


def lua_records(lines: list[str], tag: str) -> list[dict[str, Any]]:
    """The JSON log records the project's Lua wrote for ``tag``."""
    records = []
    for line in lines:
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record["logger"].startswith("moonwire.lua") and (record.get("fields") or {}).get("tag") == tag:
            records.append(record)
    return records


async def test_one_trace_id_follows_a_call_chain_across_three_nodes(
        tmp_path: Path, nats_server, spawn_node: SpawnNode) -> None:
    prefix = f"tr{uuid.uuid4().hex[:8]}"
    args = ("--prefix", prefix, "--log-format", "json")
    n1 = await spawn_node(project(tmp_path, "ta", {"first": calling("tb:second")}), "ta1", nats_url=nats_server.address, args=args)
    n2 = await spawn_node(project(tmp_path, "tb", {"second": calling("tc:third")}, "relay"), "tb2", nats_url=nats_server.address,
                          args=args)
    n3 = await spawn_node(project(tmp_path, "tc", {"third": THIRD}, "sink"), "tc3", nats_url=nats_server.address,
                          args=args)
    nodes = (n1, n2, n3)

    def chain(tag: str) -> list[dict[str, Any]]:
        return [record for node in nodes for record in lua_records(node.lines, tag)]

    async def logged(tag: str, count: int) -> list[dict[str, Any]]:
        await wait_until(lambda: len(chain(tag)) >= count, 20, f"{count} log records tagged {tag}")
        return chain(tag)

    # 1. From the CLI (no trace): the chain begins one at its first node.
    code, out, err = await run_cli("call", "ta:first", "cli", "--nats", nats_server.address, "--prefix", prefix)
    assert code == 0 and json.loads(out) == "done cli", err
    records = await logged("cli", 3)
    assert [(r["node"], r["entry"]) for r in records] == [
        ("ta1", "ta:first"), ("tb2", "tb:second"), ("tc3", "tc:third")]
    assert len({r["trace_id"] for r in records}) == 1 and re.fullmatch(r"[0-9a-f]{32}", records[0]["trace_id"])

    nc = await nats.connect(nats_server.address)
    try:
        # 2. An outside caller's traceparent is honoured all along the chain.
        outside = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        reply = await nc.request(f"{prefix}.fn.ta:first", json.dumps(["traced"]).encode(),
                                 headers={"traceparent": outside}, timeout=10)
        assert json.loads(reply.data) == {"result": "done traced"}
        assert {r["trace_id"] for r in await logged("traced", 3)} == {"4bf92f3577b34da6a3ce929d0e0e4736"}

        # 3. A malformed one (oversized, or not hex) is ignored: the call runs, in a trace of its own.
        for tag, bad in (("huge", "00-" + "a" * 5000),
                         ("nothex", "00-4bf92f3577b34da6a3ce929d0e0e473Z-00f067aa0ba902b7-01"),
                         ("zeros", f"00-{'0' * 32}-00f067aa0ba902b7-01")):
            reply = await nc.request(f"{prefix}.fn.ta:first", json.dumps([tag]).encode(),
                                     headers={"traceparent": bad}, timeout=10)
            assert json.loads(reply.data) == {"result": f"done {tag}"}
            ids = {r["trace_id"] for r in await logged(tag, 3)}
            assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", ids.pop())

        # 4. A message to a process: the relay (tb2) works in the message's trace and its
        # send to the sink on tc3 carries it; a message without one gets a trace of its own.
        relay = await registered(nc, prefix, "tb2", "relay")
        await registered(nc, prefix, "tc3", "sink")  # the relay looks it up
        inbox = f"{prefix}.p.tb2.{relay[relay.index('|') + 1:-1]}"
        other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        await nc.publish(f"{inbox}.hello", json.dumps("msg1").encode(), headers={"traceparent": other})
        await nc.publish(f"{inbox}.hello", json.dumps("msg2").encode())
        await nc.flush()
        first = await logged("msg1", 2)
        assert [(r["node"], r["entry"]) for r in first] == [("tb2", "tb:relay"), ("tc3", "tc:sink")]
        assert {r["trace_id"] for r in first} == {"0af7651916cd43dd8448eb211c80319c"}
        assert first[0]["pid"] == relay
        second = await logged("msg2", 2)
        assert len({r["trace_id"] for r in second}) == 1
        assert second[0]["trace_id"] != "0af7651916cd43dd8448eb211c80319c"
    finally:
        await nc.close()


def test_traceparent_is_checked_before_it_is_kept() -> None:
    valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(valid) == valid
    # A later version is read by its first fields and passed on as version 00.
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") == valid
    for bad in (None, 42, b"00-x", "", valid.upper(), valid + "-more", "ff" + valid[2:], "00-" + "a" * 600,
                valid.replace("00f067aa0ba902b7", "0" * 16), valid.replace("-", "_")):
        assert parse_traceparent(bad) is None, bad


def test_a_process_message_keeps_its_trace_alone_and_in_a_batch() -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    payloads = msgpack.packb([1, "two"])
    body, headers = Envelope("t", "", payloads, trace).alone()
    assert decode("", headers, body, 1024).trace == trace
    assert decode_item(Envelope("t", "", payloads, trace).item(), 1024).trace == trace
    assert decode_item(Envelope("t", "", payloads).item(), 1024).trace is None
    # A malformed trace in an item or header costs the message nothing but its trace.
    item = b"\x94" + msgpack.packb("t") + msgpack.packb("") + payloads + msgpack.packb("junk")
    assert decode_item(item, 1024).payloads == [1, "two"] and decode_item(item, 1024).trace is None
    assert decode("", {**headers, "traceparent": "x" * 9000}, body, 1024).trace is None


def test_a_batch_carries_one_senders_trace_once_and_mixed_traces_per_item() -> None:
    one, other = ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    payloads = msgpack.packb([1])

    def received(envelopes: list[Envelope]) -> tuple[dict[str, str], list[str | None]]:
        body, headers = batch(envelopes)
        shared = request_trace(None, headers)
        return headers, [decode_item(item, 1024, "", shared).trace for item in batch_items(body)]

    headers, traces = received([Envelope("t", "", payloads, one)] * 3)
    assert headers["traceparent"] == one and traces == [one] * 3
    assert one.encode() not in batch([Envelope("t", "", payloads, one)] * 3)[0]  # once, in the header
    headers, traces = received([Envelope("t", "", payloads, one), Envelope("t", "", payloads),
                                Envelope("t", "", payloads, other)])
    assert "traceparent" not in headers and traces == [one, None, other]
    headers, traces = received([Envelope("t", "", payloads)] * 2)
    assert "traceparent" not in headers and traces == [None, None]


def test_a_workflow_run_traces_under_its_run_id() -> None:
    assert run_trace("0192f3a2-7c3b-7e21-9d4e-1a2b3c4d5e6f") == \
        "00-0192f3a27c3b7e219d4e1a2b3c4d5e6f-0192f3a27c3b7e21-01"
    assert run_trace("not a run id") is None


OUTER = """
    local funcs = require("funcs")
    return function(fail)
      local r, err = funcs.call("ot:inner", fail)
      if err then return nil, err end
      return r
    end"""
INNER = "return function(fail) if fail then error('inner failed') end return 'ok' end"


def otel_project(root: Path) -> Path:
    return write_project(root, {
        "_index.yaml": """
            namespace: ot
            entries:
              - {name: outer, kind: function.lua, source: file://outer.lua, modules: [funcs]}
              - {name: inner, kind: function.lua, source: file://inner.lua}
        """, "outer.lua": OUTER, "inner.lua": INNER})


async def test_with_opentelemetry_each_function_call_is_a_span_in_the_callers_trace(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from moonwire.broker import Subjects
    from moonwire.lua import set_span_hook, settled
    from moonwire.node import load_project
    from moonwire.node.cli._otel import OtelSpans
    from moonwire.node.functions._functions import Functions

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    functions = Functions(load_project(otel_project(tmp_path / "p"), environ={}), Subjects())
    outside = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    set_span_hook(OtelSpans(provider.get_tracer("test"), "n1"))
    try:
        ok = await settled(functions.pools["ot:outer"].call([False], {}, {}, None, outside))
        failed = await settled(functions.pools["ot:outer"].call([True], {}, {}, None, None))
    finally:
        set_span_hook(None)
    assert ok.value == "ok" and failed.error is not None
    spans = {(span.name, span.context.trace_id): span for span in exported.get_finished_spans()}
    assert len(spans) == 4
    outer, inner = spans[("ot:outer", 0x4bf92f3577b34da6a3ce929d0e0e4736)], \
        spans[("ot:inner", 0x4bf92f3577b34da6a3ce929d0e0e4736)]
    assert outer.parent.span_id == 0x00f067aa0ba902b7 and inner.parent.span_id == outer.context.span_id
    assert outer.attributes["moonwire.node"] == "n1" and outer.status.is_ok
    [bad_inner] = [s for (name, _), s in spans.items() if name == "ot:inner" and s is not inner]
    assert not bad_inner.status.is_ok and bad_inner.attributes["moonwire.error.kind"] == ""
    # Without the hook, no span and no cost beyond one check.
    assert (await settled(functions.pools["ot:outer"].call([False], {}, {}, None, None))).value == "ok"
    assert len(exported.get_finished_spans()) == 4


async def test_moonwire_run_exports_spans_when_otel_traces_exporter_asks(tmp_path: Path, nats_server) -> None:
    pytest.importorskip("opentelemetry.sdk")
    code, out, err = await run_cli("run", str(otel_project(tmp_path / "p")), "--node", "otel1", "--nats",
                                   nats_server.address, "-x", "ot:outer", "false",
                                   env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "shop"})
    assert code == 0 and json.loads(out) == "ok", err
    names = re.findall(r'"name": "(ot:\w+)"', err)
    assert sorted(names) == ["ot:inner", "ot:outer"], err
    assert '"service.name": "shop"' in err and '"moonwire.node": "otel1"' in err


async def test_a_workflow_logs_and_its_activities_log_under_its_run_id(tmp_path: Path, nats_server,
                                                                        temporal_server) -> None:
    queue = f"tw-{uuid.uuid4().hex[:8]}"
    project = write_project(tmp_path / "p", {
        "_index.yaml": f"""
            namespace: tw
            entries:
              - {{name: temporal, kind: temporal.client, address: "{temporal_server.address}"}}
              - {{name: worker, kind: temporal.worker, client: temporal, task_queue: {queue}}}
              - {{name: go, kind: function.lua, source: file://go.lua}}
              - {{name: logit, kind: function.lua, source: file://logit.lua, modules: [logger]}}
              - {{name: flow, kind: workflow.lua, source: file://flow.lua, modules: [funcs, logger, workflow]}}
        """,
        "go.lua": "return function() return process.exec('tw:flow', 'tw:worker') end",
        "logit.lua": "local logger = require('logger') return function() logger:info('activity', {tag = 'wf'}) "
                     "return true end",
        "flow.lua": """
            local funcs, logger, workflow = require("funcs"), require("logger"), require("workflow")
            return function()
              logger:info("workflow", {tag = "wf"})
              assert(funcs.call("tw:logit"))
              return workflow.info().run_id
            end""",
    })
    code, out, err = await run_cli("run", str(project), "--node", "tw1", "--nats", nats_server.address,
                                   "--prefix", f"tw{uuid.uuid4().hex[:8]}", "--log-format", "json", "-x", "tw:go")
    assert code == 0, err
    run_id = json.loads(out).replace("-", "")
    records = lua_records(err.splitlines(), "wf")
    assert sorted(r["entry"] for r in records) == ["tw:flow", "tw:logit"], err
    assert {r["trace_id"] for r in records} == {run_id}
