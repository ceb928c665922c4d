"""Prometheus metrics (``--metrics HOST:PORT``): a real node OS process on a real
nats-server is scraped over HTTP before and after it does work (spawns, messages from
outside and between its processes, function calls that succeed and fail, a dead
letter, exits normal and abnormal, a workflow with an activity), and the values move by
exactly what the work did; the label values stay within the project's ids and
moonwire's enums; the control plane's ``info`` answer carries the same numbers.
``/healthz``, a taken port, and what an open port gets from strangers (bad requests,
oversize heads) are covered too. The Grafana dashboard in ``deploy/`` may only query
metric names the node exports. The counting primitives are checked on their own at
the end (pure logic)."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import signal
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moonwire.lua import Kind, MoonwireError, Outcome
from moonwire.node import ServerProcess, free_port
from moonwire.node.project._config import listen_address
from moonwire.node.telemetry import (MAILBOX_BUCKETS, OTHER, Buckets, CallCounts, CallStats, NodeMetrics,
                                     ProcessCounts, dead_letter_labels, kind_label, node_down_reason)
from support import run_cli, wait_until, write_project

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "moonwire.json"

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: echo, kind: process.lua, source: file://echo.lua, modules: [time]}
          - {name: hello, kind: function.lua, source: file://hello.lua}
    """,
    # "ping" from anyone: a message to itself (a local message); "stop": a normal exit;
    # "fail": an abnormal one; "sleep": stop reading, so what is sent next waits.
    "echo.lua": """
        local time = require("time")
        return function()
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            local topic = msg:topic()
            if topic == "ping" then process.send(process.pid(), "pong", "x")
            elseif topic == "stop" then return "done"
            elseif topic == "fail" then error("boom")
            elseif topic == "sleep" then time.sleep("1h")
            end
          end
        end
    """,
    "hello.lua": 'return function(x) if x == "fail" then error("boom") end return "hi " .. tostring(x) end',
}


def scrape(address: str, path: str = "/metrics") -> tuple[int, str]:
    """``GET http://address/path``: (status, body), without following anything."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def metrics_node(tmp_path: Path, spawn_node, nats_url: str, name: str, prefix: str,
                       files: dict[str, str] = PROJECT, args: tuple[str, ...] = ()):
    port = free_port()
    node = await spawn_node(write_project(tmp_path / name, files), name, nats_url=nats_url,
                            args=("--prefix", prefix, "--metrics", f"127.0.0.1:{port}", *args))
    return node, f"127.0.0.1:{port}"


async def test_scrape_values_move_with_work(tmp_path: Path, nats_server: ServerProcess, spawn_node) -> None:
    prefix = "mtr"
    # A short shutdown: the sleeper below ignores its CANCEL and is terminated at the end.
    node, address = await metrics_node(tmp_path, spawn_node, nats_server.address, "met1", prefix,
                                       args=("--shutdown-timeout", "3s"))
    nc = await nats.connect(nats_server.address)
    try:
        status, text = scrape(address)
        assert status == 200
        before = samples(text)

        async def spawn() -> str:
            reply = json.loads((await nc.request(f"{prefix}.spawn.app:host", b'{"entry": "app:echo"}', timeout=5)).data)
            return reply["result"]["pid"]

        def inbox(pid: str, topic: str) -> str:
            return f"{prefix}.p.met1.{pid.rpartition('|')[2][:-1]}.{topic}"

        stopper, failer, sleeper = await spawn(), await spawn(), await spawn()
        for _ in range(3):  # from outside; each answered by a local message to itself
            await nc.publish(inbox(stopper, "ping"), b'"hi"')
        await nc.publish(inbox(sleeper, "sleep"), b"")
        for _ in range(5):  # wait in the sleeper's mailbox
            await nc.publish(inbox(sleeper, "queued"), b"1")
        await nc.publish(inbox(stopper, "stop"), b"")
        await nc.publish(inbox(failer, "fail"), b"")
        await nc.publish(f"{prefix}.p.met1.nosuchuid-1.ping", b"")  # dead letter: no such process
        for arg in (b'"a"', b'"b"', b'"fail"'):
            await nc.request(f"{prefix}.fn.app:hello", arg, timeout=5)

        def moved() -> bool:
            now = samples(scrape(address)[1])
            return (value(now, "moonwire_process_exits_total", host="app:host", reason="Unknown")
                    - value(before, "moonwire_process_exits_total", host="app:host", reason="Unknown") == 1
                    and value(now, "moonwire_mailbox_depth_gsum") >= 5
                    and value(now, "moonwire_dead_letters_total", source="inbox", reason="no_process") >= 1)

        await wait_until(moved, 15, "the exits, the queued messages and the dead letter to show")
        status, text = scrape(address)
        after = samples(text)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("moonwire_process_spawns_total", host="app:host") == 3
        assert delta("moonwire_process_exits_total", host="app:host", reason="normal") == 1
        assert delta("moonwire_process_exits_total", host="app:host", reason="Unknown") == 1
        assert value(after, "moonwire_processes", host="app:host") == 1  # the sleeper
        assert value(after, "moonwire_lua_memory_bytes", host="app:host") > 0
        # 3 pings + stop, fail, sleep and 5 queued, all from outside; 3 pongs, local.
        assert delta("moonwire_messages_delivered_total", origin="outside") == 11
        assert delta("moonwire_messages_delivered_total", origin="local") == 3
        assert delta("moonwire_messages_sent_total", route="local") == 3
        assert delta("moonwire_messages_delivered_total", origin="remote") == 0
        # The sleeper holds its 5: one process in the (le=16) bucket, none empty but the others.
        assert value(after, "moonwire_mailbox_depth_gsum") == 5
        assert value(after, "moonwire_mailbox_depth_bucket", le="4.0") == value(after, "moonwire_mailbox_depth_gcount") - 1
        assert value(after, "moonwire_mailbox_depth_bucket", le="16.0") == value(after, "moonwire_mailbox_depth_gcount")
        assert delta("moonwire_dead_letters_total", source="inbox", reason="no_process") == 1
        assert delta("moonwire_function_calls_total", entry="app:hello") == 3
        assert delta("moonwire_function_call_errors_total", entry="app:hello", kind="Unknown") == 1
        assert delta("moonwire_function_call_duration_seconds_count", entry="app:hello") == 3
        assert delta("moonwire_function_call_duration_seconds_sum", entry="app:hello") > 0
        assert value(after, "moonwire_function_call_duration_seconds_bucket", entry="app:hello", le="+Inf") == 3
        assert value(after, "moonwire_nats_connected", connection="control") == 1
        assert value(after, "moonwire_nats_connected", connection="data") == 1
        assert value(after, "moonwire_nats_reconnects_total", connection="control") == 0
        assert value(after, "moonwire_build_info", node="met1", version=__import__("moonwire").__version__) == 1

        # Bounded labels: ids of the project, enums; never a PID, a topic or a subject.
        allowed = {"host": {"app:host", "terminal"}, "entry": {"app:hello"},
                   "reason": {"normal", "Unknown", "no_process", *(k.value for k in Kind)},
                   "origin": {"local", "remote", "workflow", "outside"}, "route": {"local", "remote", "workflow"},
                   "source": {"inbox"}, "kind": {"Unknown"}, "connection": {"control", "data"},
                   "state": {"busy", "idle"}, "node": {"met1"}}
        for (name, labels), _ in after.items():
            for key, label in labels:
                if key in ("le", "version", "verb", "result"):
                    continue
                assert label in allowed[key], f"{name}: label {key}={label!r} is not of a bounded set"

        # The control plane's `info` (moonwire nodes, moonwire top) carries the same numbers.
        info = json.loads((await nc.request(f"{prefix}.ctl.met1.info", b"", timeout=5)).data)["result"]
        assert info["metrics"]['moonwire_function_calls_total{entry="app:hello"}'] == \
            value(after, "moonwire_function_calls_total", entry="app:hello")
        assert info["metrics"]['moonwire_processes{host="app:host"}'] == 1
        assert not any(key.endswith("_bucket") or "_bucket{" in key for key in info["metrics"])
        # ... and its ps answer, with each labelled counter's sum (what `moonwire top` reads).
        ps = json.loads((await nc.request(f"{prefix}.ctl.met1.ps", b"", timeout=5)).data)["result"]
        assert ps["metrics"]["moonwire_messages_delivered_total"] == sum(
            value(after, "moonwire_messages_delivered_total", origin=o) for o in ("local", "remote", "workflow", "outside"))
        assert ps["metrics"]["moonwire_dead_letters_total"] >= 1

        # A scrape during shutdown (the runtime stopping, the sleeper not yet gone) is
        # answered; /healthz says the node is not ready any more.
        node.process.send_signal(signal.SIGTERM)
        await node.wait_for_line("stopping runtime")
        assert scrape(address)[0] == 200
        assert scrape(address, "/healthz")[0] == 503
        assert await node.wait() == 0
        assert "Traceback" not in node.output
    finally:
        await nc.close()


async def test_healthz_and_what_strangers_send(tmp_path: Path, own_nats: ServerProcess, spawn_node) -> None:
    node, address = await metrics_node(tmp_path, spawn_node, own_nats.address, "met2", "mth")
    assert scrape(address, "/healthz") == (200, "ok\n")
    assert scrape(address, "/nothing")[0] == 404
    host, port = listen_address(address)

    async def raw(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer

    assert (await raw(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 405")
    assert (await raw(b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
    # Over the 8 KiB bound (and under what the server's buffer takes in, so that closing
    # leaves nothing unread in the socket, which would reset it before the answer is read).
    assert (await raw(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
    head = await raw(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    opened = await raw(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
    assert b"application/openmetrics-text" in opened and b"# TYPE moonwire_mailbox_depth gaugehistogram" in opened
    assert scrape(address)[0] == 200  # still serving

    await own_nats.stop()  # the node's NATS is gone: not healthy, still answering
    await wait_until(lambda: scrape(address, "/healthz")[0] == 503, 15, "/healthz to say 503 without NATS")
    assert scrape(address, "/healthz") == (503, "not ready\n")
    assert scrape(address)[0] == 200


async def test_metrics_port_taken_is_a_clear_error(tmp_path: Path, nats_server: ServerProcess) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_cli("run", str(write_project(tmp_path / "p", PROJECT)), "--node", "met3",
                                     "--nats", nats_server.address, "--metrics", f"127.0.0.1:{port}")
    assert code == 1
    assert f"metrics: cannot listen on 127.0.0.1:{port}: the address is already in use" in err
    assert "Traceback" not in err
    code, _, err = await run_cli("config", str(tmp_path / "p"), "--metrics", "nonsense")
    assert code == 2 and "metrics.listen" in err and "is not HOST:PORT" in err


WORKFLOW_PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {{name: temporal, kind: temporal.client, address: "{address}"}}
          - {{name: worker, kind: temporal.worker, client: temporal, task_queue: {queue}}}
          - {{name: double, kind: function.lua, source: file://double.lua}}
          - {{name: order, kind: workflow.lua, source: file://order.lua, modules: [funcs]}}
    """,
    "double.lua": """
        return function(x)
          if x < 0 then return nil, errors.new({ message = "negative", kind = errors.INVALID }) end
          return x * 2
        end
    """,
    "order.lua": """
        local funcs = require("funcs")
        return function(n)
          local doubled, err = funcs.call("app:double", n)
          if err then return nil, err end
          return doubled
        end
    """,
}


async def test_workflow_and_activity_counts(tmp_path: Path, nats_server: ServerProcess,
                                            temporal_server: ServerProcess, spawn_node) -> None:
    files = dict(WORKFLOW_PROJECT)
    files["_index.yaml"] = files["_index.yaml"].format(address=temporal_server.address, queue="metrics-wf")
    node, address = await metrics_node(tmp_path, spawn_node, nats_server.address, "met4", "mtw", files)
    nc = await nats.connect(nats_server.address)
    try:
        run = uuid.uuid4().hex[:8]
        for n in (2, 3, -1):
            body = json.dumps({"entry": "app:order", "args": [n],
                               "options": {"temporal.workflow.id": f"metrics-{run}-{n}"}})
            reply = json.loads((await nc.request("mtw.spawn.app:worker", body.encode(), timeout=10)).data)
            assert "pid" in reply["result"], reply

        def finished() -> float:
            scraped = samples(scrape(address)[1])
            return sum(value(scraped, "moonwire_workflows_finished_total", workflow="app:order", outcome=o)
                       for o in ("completed", "failed"))

        await wait_until(lambda: finished() == 3, 30, "three workflow runs to finish")
        after = samples(scrape(address)[1])
        assert value(after, "moonwire_workflows_started_total", workflow="app:order") == 3
        # The Invalid error (not retried) fails the activity; the workflow returns it as its own.
        assert value(after, "moonwire_workflows_finished_total", workflow="app:order", outcome="completed") == 2
        assert value(after, "moonwire_workflows_finished_total", workflow="app:order", outcome="failed") == 1
        assert value(after, "moonwire_workflow_duration_seconds_count", workflow="app:order") == 3
        assert value(after, "moonwire_activities_total", activity="app:double") == 3
        assert value(after, "moonwire_activity_errors_total", activity="app:double", kind="Invalid") == 1
        assert value(after, "moonwire_activity_duration_seconds_count", activity="app:double") == 3
    finally:
        await nc.close()


# ---------------------------------------------------------------- the dashboard


def exported_families() -> dict[str, set[str]]:
    """The sample names a node exports, by family (every family is always there, empty
    or not: a node that did nothing exports the same names)."""
    text = NodeMetrics("n", "0.1.0").exposition("application/openmetrics-text; version=1.0.0")[0].decode()
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                "gaugehistogram": ("_bucket", "_gsum", "_gcount")}
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            families[family] = {family + suffix for suffix in suffixes[kind]}
    return families


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    families = exported_families()
    names = set().union(*families.values())
    assert {"moonwire_function_calls_total", "moonwire_mailbox_depth_bucket"} <= names
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"

    def panels(items: Iterable[dict]) -> Iterable[dict]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", ()))

    used: set[str] = set()
    for panel in panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\bmoonwire_[a-z_]+", target["expr"]):
                assert name in names, f"panel {panel['title']!r} queries {name}, which no node exports"
                used.add(name)
    missing = sorted(family for family, samples in families.items() if not samples & used)
    assert not missing, f"metrics with no panel: {missing}"


# ---------------------------------------------------------------- the counting itself (pure logic)


def test_call_stats_count_time_and_bound() -> None:
    stats = CallStats()
    assert stats.timed(0.0, Outcome(value=1)) == Outcome(value=1)
    stats.timed(0.0, Outcome(error=MoonwireError("no", Kind.NOT_FOUND)))
    stats.record(Outcome(error=MoonwireError("odd", "Weird")), 0.00001)
    assert stats.calls == 3 and stats.error_count == 2
    assert stats.errors == {"NotFound": 1, OTHER: 1} and stats.last_error == "Weird: odd"
    assert stats.latency.cumulative()[0] == ("1e-05", 1)  # a bound is its own bucket's (le)
    assert stats.latency.cumulative()[-1] == ("+Inf", 3)
    counts = CallCounts({"app:a"})
    assert counts.of("app:a") is counts.of("app:a") and counts.of("x:1") is counts.of("x:2") is counts[OTHER]
    assert kind_label(MoonwireError("lua", "")) == "Unknown"


async def test_call_stats_time_an_awaited_call() -> None:
    stats = CallStats()

    async def later() -> Outcome:
        await asyncio.sleep(0)
        return Outcome(error=MoonwireError("late", Kind.TIMEOUT))

    answer = stats.timed(0.0, later())
    assert stats.calls == 0  # not settled yet
    assert (await answer).error is not None  # type: ignore[misc]
    assert stats.calls == 1 and stats.errors == {"Timeout": 1}

    # A task cancelled before its first step (a caller that ended at once): the call's
    # own coroutine gets the cancellation, as it would unwrapped, and is never left
    # unawaited; the call counts as Canceled.
    inner = later()
    task = asyncio.ensure_future(stats.timed(0.0, inner))  # type: ignore[arg-type]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert inspect.getcoroutinestate(inner) == inspect.CORO_CLOSED  # a wrapper would leave it CORO_CREATED
    assert stats.calls == 2 and stats.errors == {"Timeout": 1, "Canceled": 1}


def test_process_counts_origins_and_reasons() -> None:
    counts = ProcessCounts("n1")
    counts.delivered = 7  # two sent here, five entered from elsewhere:
    for sender in ("", "{n1@app:host|a-1}", "{n1@funcs|a-2}", "{n2@app:host|b-1}", "{@app:worker|wf-1}"):
        counts.received(sender)
    assert counts.by_origin() == {"local": 4, "remote": 1, "workflow": 1, "outside": 1}
    counts.exited("app:host", None)
    counts.exited("app:host", MoonwireError("x", Kind.CANCELED))
    assert counts.exits == {("app:host", "normal"): 1, ("app:host", "Canceled"): 1}
    assert [node_down_reason(r) for r in ("left the cluster", "restarted as a new incarnation",
                                          "no heartbeat for 2.6s", "node n2 declared this node down", "?")] == \
        ["left", "restarted", "silent", "cut", "other"]


def test_dead_letter_reasons_are_an_enum() -> None:
    cases = {
        "mailbox of _ is full (_ unread messages) [mw.p.n1]": ("inbox", "mailbox_full"),
        "no process with uid _ on node _ [mw.p.n1]": ("inbox", "no_process"),
        "body of _ bytes is over the limit of _ [mw.p.n1]": ("inbox", "too_large"),
        "no process holds the cluster name _ [mw.n.orders]": ("name", "no_process"),
        "_ signals are waiting to be sent to Temporal [mw.wf.app:worker]": ("workflow", "overloaded"),
        "a batch item must be [topic, sender, payloads] [mw.p.n1]": ("inbox", "malformed"),
        "internal error while delivering: KeyError: _ [mw.p.n1]": ("inbox", "internal"),
        "dropped": ("other", "other"),
        "(other)": ("other", "other"),
    }
    for key, labels in cases.items():
        assert dead_letter_labels(key) == labels, key


def test_listen_address_and_latency_buckets() -> None:
    assert listen_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert listen_address(":9464") == ("0.0.0.0", 9464)
    assert listen_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:port", "h:70000"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            listen_address(bad)
    latency = Buckets((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 9.0):
        latency.observe(v)
    assert latency.cumulative() == [("1.0", 2), ("2.0", 3), ("+Inf", 4)] and latency.sum == 12.0
    assert MAILBOX_BUCKETS[0] == 0  # an empty mailbox is its own bucket
