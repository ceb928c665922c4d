"""Service discovery the NATS way (ADR-32, ``nats micro``): two real node OS processes
on a real nats-server, asked by a plain nats-py client that is not moonwire's, which
sends ``$SRV.PING``/``INFO``/``STATS`` requests and collects every node's answer.

Each answer must hold to the ``io.nats.micro.v1`` response schemas (written out below
from ADR-32: required fields, names, semantic versions) and parse with nats-py's own
``nats.micro`` response types; the endpoints must be the functions each node serves,
on their ``<prefix>.fn.<id>`` subjects and queue group; STATS must count the calls the
endpoints ran, errors included. A flood of ``$SRV`` requests (with and without a reply
subject) is rate limited and counted, and the node goes on serving.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import nats
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from moonwire.node import ServerProcess
from support import wait_until, write_project

PREFIX = "mic"

_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$", "minLength": 1}
_SEMVER = {"type": "string", "minLength": 5, "pattern": (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")}
_METADATA = {"oneOf": [{"type": "object", "additionalProperties": {"type": "string"}}, {"type": "null"}]}
_INT = {"type": "integer"}


def _response(kind: str, required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": ["type", "name", "id", "version", *required],
            "properties": {"type": {"const": f"io.nats.micro.v1.{kind}_response"}, "name": _NAME,
                           "id": {"type": "string", "minLength": 1}, "version": _SEMVER, "metadata": _METADATA,
                           **properties}}


SCHEMAS = {
    "ping": _response("ping", []),
    "info": _response("info", ["description"], description={"type": "string"}, endpoints={
        "type": "array", "items": {"type": "object", "required": ["name", "subject"], "properties": {
            "name": _NAME, "subject": {"type": "string", "minLength": 1}, "metadata": _METADATA}}}),
    "stats": _response("stats", ["started", "endpoints"], started={"type": "string", "format": "date-time"}, endpoints={
        "type": "array", "items": {"type": "object", "required": [
            "name", "subject", "num_requests", "num_errors", "last_error", "processing_time",
            "average_processing_time"], "properties": {
                "name": _NAME, "subject": {"type": "string", "minLength": 1}, "num_requests": _INT,
                "num_errors": _INT, "last_error": {"type": "string"}, "processing_time": _INT,
                "average_processing_time": _INT, "data": {"type": "object"}}}}),
}


def project(own: str) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: {own}, kind: function.lua, source: file://fn.lua}}
              - {{name: shared, kind: function.lua, source: file://fn.lua}}
        """,
        "fn.lua": 'return function(x) if x == "fail" then error("boom") end return x end',
    }


class Collector:
    """A reply inbox of a plain nats-py client that keeps every answer, by node id."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox()
        self.answers: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Collector:
        async def on_answer(msg: Any) -> None:
            self.answers.append(json.loads(msg.data))
            self._changed.set()

        self.subscription = await self.nc.subscribe(self.inbox, cb=on_answer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.subscription.unsubscribe()

    def of(self, node: str) -> list[dict[str, Any]]:
        return [a for a in self.answers if a.get("id") == node]

    async def ask(self, subject: str, nodes: set[str], timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        """Publish ``subject`` with this inbox as the reply subject; the answers of
        ``nodes`` once each has answered (others on the server may answer too)."""
        self.answers.clear()
        await self.nc.publish(subject, b"", reply=self.inbox)

        async def all_in() -> None:
            while not nodes <= {a.get("id") for a in self.answers}:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(all_in(), timeout)
        return {a["id"]: a for a in self.answers if a.get("id") in nodes}


async def info_metrics(nc: nats.NATS, node: str) -> dict[str, float]:
    reply = json.loads((await nc.request(f"{PREFIX}.ctl.{node}.info", b"", timeout=5)).data)
    return reply["result"]["metrics"]


async def test_nats_micro_discovery_of_two_nodes(tmp_path: Path, nats_server: ServerProcess, spawn_node) -> None:
    nodes = {"mic-a": "alpha", "mic-b": "beta"}
    for node, own in nodes.items():
        await spawn_node(write_project(tmp_path / node, project(own)), node, nats_url=nats_server.address,
                         args=("--prefix", PREFIX))
    both = set(nodes)
    nc = await nats.connect(nats_server.address)
    try:
        async with Collector(nc) as srv:
            for verb in ("PING", "INFO", "STATS"):
                for subject in (f"$SRV.{verb}", f"$SRV.{verb}.moonwire"):
                    answers = await srv.ask(subject, both)
                    for answer in answers.values():
                        jsonschema.validate(answer, SCHEMAS[verb.lower()])
                        assert answer["name"] == "moonwire" and answer["version"] == __import__("moonwire").__version__
                        assert answer["metadata"]["node"] == answer["id"]
                        if verb == "STATS":  # RFC 3339 (the schema's format, which jsonschema leaves unchecked here)
                            assert datetime.fromisoformat(answer["started"].replace("Z", "+00:00")).tzinfo
                # Addressed to one node: only it answers. The other node's answer to a
                # request sent after it is in, and it is its only answer: it skipped the first.
                srv.answers.clear()
                await nc.publish(f"$SRV.{verb}.moonwire.mic-a", b"", reply=srv.inbox)
                await nc.publish(f"$SRV.{verb}.moonwire.mic-b", b"", reply=srv.inbox)
                await wait_until(lambda: srv.of("mic-a") and srv.of("mic-b"), 10, f"{verb} answers by id")
                assert len(srv.of("mic-a")) == len(srv.of("mic-b")) == 1

            # nats-py's own client-side types read them.
            pings = await srv.ask("$SRV.PING", both)
            assert {ServicePing.from_dict(p).id for p in pings.values()} == both
            infos = {node: ServiceInfo.from_dict(a) for node, a in (await srv.ask("$SRV.INFO", both)).items()}
            for node, own in nodes.items():
                endpoints = {e.metadata["entry"]: e for e in infos[node].endpoints}
                assert set(endpoints) == {f"app:{own}", "app:shared"}
                mine = endpoints[f"app:{own}"]
                assert (mine.name, mine.subject, mine.queue_group) == (f"app_{own}", f"{PREFIX}.fn.app:{own}", "moonwire")

            # STATS counts what the endpoints ran: 3 calls of alpha on mic-a, one failing;
            # 4 of the shared function, spread by the queue group over both nodes.
            for arg in (b'"x"', b'"y"', b'"fail"'):
                await nc.request(f"{PREFIX}.fn.app:alpha", arg, timeout=5)
            for _ in range(4):
                await nc.request(f"{PREFIX}.fn.app:shared", b"1", timeout=5)
            stats = {node: ServiceStats.from_dict(a) for node, a in (await srv.ask("$SRV.STATS", both)).items()}
            alpha = next(e for e in stats["mic-a"].endpoints if e.name == "app_alpha")
            assert (alpha.num_requests, alpha.num_errors) == (3, 1)
            assert "boom" in (alpha.last_error or "")
            assert alpha.processing_time > 0 and alpha.average_processing_time == alpha.processing_time // 3
            beta = next(e for e in stats["mic-b"].endpoints if e.name == "app_beta")
            assert (beta.num_requests, beta.num_errors, beta.last_error) == (0, 0, "")
            assert sum(e.num_requests for s in stats.values() for e in s.endpoints if e.name == "app_shared") == 4
            # The same counts as the node's metrics (read over the control plane).
            metrics = await info_metrics(nc, "mic-a")
            assert metrics['moonwire_function_calls_total{entry="app:alpha"}'] == 3
    finally:
        await nc.close()


async def test_srv_flood_is_limited_and_counted(tmp_path: Path, nats_server: ServerProcess, spawn_node) -> None:
    await spawn_node(write_project(tmp_path / "f", project("alpha")), "mic-f", nats_url=nats_server.address,
                     args=("--prefix", PREFIX))
    nc = await nats.connect(nats_server.address)
    try:
        before = await info_metrics(nc, "mic-f")
        async with Collector(nc) as srv:
            for _ in range(300):  # nowhere to answer
                await nc.publish("$SRV.STATS.moonwire.mic-f", b"garbage that is ignored")
            for _ in range(1000):
                await nc.publish("$SRV.STATS.moonwire.mic-f", b"\xff\x00", reply=srv.inbox)
            await nc.flush()

            # Read after the flood: the node handles $SRV in its read loop, in order, and
            # the control request behind them later.
            metrics = await info_metrics(nc, "mic-f")

            def counted(result: str) -> float:
                key = f'moonwire_discovery_requests_total{{result="{result}",verb="stats"}}'
                return metrics.get(key, 0) - before.get(key, 0)

            assert counted("answered") + counted("limited") == 1000
            assert counted("no_reply") == 300
            assert counted("limited") >= 500, metrics  # at most a burst, plus what refills meanwhile
            await wait_until(lambda: len(srv.answers) == counted("answered"), 10, "every answer that was sent")
            # Still serving: a call, and discovery again once the limit has refilled.
            reply = await nc.request(f"{PREFIX}.fn.app:alpha", b'"ok"', timeout=5)
            assert json.loads(reply.data) == {"result": "ok"}
            for _ in range(20):  # the limit refills with time: a rare poll
                try:
                    await srv.ask("$SRV.PING.moonwire.mic-f", {"mic-f"}, timeout=0.5)
                    break
                except TimeoutError:
                    continue
            assert srv.of("mic-f"), "no PING answered after the flood"
    finally:
        await nc.close()
