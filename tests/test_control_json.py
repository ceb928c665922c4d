"""The control plane from outside moonwire (issue 16, item 5; docs/wire.md): what
``moonwire spawn/send/ps/nodes`` does, with plain JSON over NATS. The client is not
moonwire's nor nats-py's: a few lines of NATS's text protocol over an asyncio socket,
sending the bodies docs/wire.md shows for ``nats req``. Two real node OS processes run
the host ``app:host``."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from support import write_project

P = "cj"  # this test's subject prefix
PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: worker, kind: process.lua, source: file://worker.lua, modules: [json]}
    """,
    # Prints every message it gets; a cancel ends it, printing the reason.
    "worker.lua": """
        local json = require("json")
        return function(tag)
          local inbox, events = process.inbox(), process.events()
          while true do
            local r = channel.select({ inbox:case_receive(), events:case_receive() })
            if r.channel == events then
              print("worker " .. tag .. " event " .. r.value.kind .. " " .. tostring(r.value.reason))
              return "cancelled"
            end
            print("worker " .. tag .. " got " .. r.value:topic() .. " " .. json.encode(r.value:payload():data()))
          end
        end""",
}


class TinyNats:
    """NATS's client protocol, just enough for request/reply: INFO, CONNECT, PING/PONG,
    one SUB on an inbox, PUB with a reply subject, MSG and HMSG."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.inbox = f"_TINY.{id(self)}"
        self.replies: defaultdict[str, asyncio.Queue[tuple[dict[str, str], bytes]]] = defaultdict(asyncio.Queue)
        self.errors: list[str] = []
        self.ids = itertools.count()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str) -> TinyNats:
        host, port = url.split(",")[0].removeprefix("nats://").rsplit(":", 1)
        client = cls(*await asyncio.open_connection(host, int(port)))
        assert (await client.reader.readline()).startswith(b"INFO ")
        client.writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
                            b'"protocol":1}\r\nPING\r\n')
        assert await client.reader.readline() == b"PONG\r\n"
        client.writer.write(f"SUB {client.inbox}.* 1\r\n".encode())
        client.task = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        while line := await self.reader.readline():
            op, *args = line.decode().split()
            if op == "PING":
                self.writer.write(b"PONG\r\n")
            elif op == "-ERR":
                self.errors.append(line.decode())
            elif op in ("MSG", "HMSG"):
                header_size = int(args[-2]) if op == "HMSG" else 0
                data = (await self.reader.readexactly(int(args[-1]) + 2))[:-2]
                lines = data[:header_size].decode().split("\r\n")[1:]
                headers = dict(h.split(": ", 1) for h in lines if h)
                self.replies[args[0]].put_nowait((headers, data[header_size:]))

    def publish(self, subject: str, body: str, reply: str = "") -> None:
        raw = body.encode()
        command = " ".join(filter(None, ("PUB", subject, reply, str(len(raw)))))
        self.writer.write(command.encode() + b"\r\n" + raw + b"\r\n")

    async def request(self, subject: str, body: str = "", *, replies: int = 1, wait: float = 5.0) -> list[Any]:
        """Publish with a reply subject; the first ``replies`` answers (JSON, checked)."""
        inbox = f"{self.inbox}.{next(self.ids)}"
        self.publish(subject, body, inbox)
        answers = []
        for _ in range(replies):
            headers, data = await asyncio.wait_for(self.replies[inbox].get(), wait)
            assert headers.get("Content-Type") == "application/json", (subject, headers, data)
            answers.append(json.loads(data))
        return answers

    async def ask(self, subject: str, body: str = "") -> Any:
        return (await self.request(subject, body))[0]

    async def close(self) -> None:
        self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def test_control_plane_with_plain_json(tmp_path: Path, nats_server, spawn_node) -> None:
    nodes = dict(zip(("cja", "cjb"), await asyncio.gather(*(
        spawn_node(write_project(tmp_path / name, PROJECT), name, nats_url=nats_server.address,
                   args=("--prefix", P)) for name in ("cja", "cjb")))))
    client = await TinyNats.connect(nats_server.address)
    try:
        # nodes: every node answers the survey with itself.
        infos = await client.request(f"{P}.nodes.info", "", replies=2)
        assert sorted(i["result"]["node"] for i in infos) == ["cja", "cjb"]
        assert all(i["result"]["hosts"] == ["app:host"] for i in infos)

        # spawn on the host (any node running it), then on a node (the body names the host)
        on_host = (await client.ask(f"{P}.spawn.app:host", '{"entry": "app:worker", "args": ["h"], "name": "w-h"}'))
        pid_h = on_host["result"]["pid"]
        node_h = re.fullmatch(r"\{(cj[ab])@app:host\|[\w-]+\}", pid_h)[1]
        pid_n = (await client.ask(f"{P}.ctl.cjb.spawn",
                                  '{"entry": "app:worker", "host": "app:host", "args": ["n"], "name": "w-n"}'))[
            "result"]["pid"]
        assert pid_n.startswith("{cjb@app:host|")

        assert await client.ask(f"{P}.ctl.cjb.lookup", '{"name": "w-n"}') == {"result": pid_n}
        assert await client.ask(f"{P}.ctl.{node_h}.lookup", '{"name": "w-h"}') == {"result": pid_h}
        missing = await client.ask(f"{P}.ctl.cjb.lookup", '{"name": "nobody"}')
        assert missing["error"]["kind"] == "NotFound"

        # send: the worker prints what it got
        uid = pid_n[pid_n.index("|") + 1:-1]
        client.publish(f"{P}.p.cjb.{uid}.hello", '{"x": 1}')
        await nodes["cjb"].wait_for_line(r'worker n got hello \{"x":1\}', 10)

        # ps: of one node, and the survey (every node)
        listed = (await client.ask(f"{P}.ctl.cjb.ps"))["result"]
        assert listed["node"] == "cjb"
        assert {p["pid"]: p["entry"] for p in listed["list"]}[pid_n] == "app:worker"
        surveyed = await client.request(f"{P}.nodes.ps", "{}", replies=2)
        assert {pid_h, pid_n} <= {p["pid"] for s in surveyed for p in s["result"]["list"]}

        # malformed requests: an Invalid error each, nothing done, the node carries on
        malformed = [
            (f"{P}.ctl.cjb.spawn", "[1, 2]"), (f"{P}.ctl.cjb.spawn", "not json"), (f"{P}.ctl.cjb.spawn", ""),
            (f"{P}.ctl.cjb.spawn", '{"entry": "app:worker", "args": ["x"]}'),  # no host
            (f"{P}.spawn.app:host", '{"entry": 5}'), (f"{P}.spawn.app:host", '{"entry": "worker"}'),
            (f"{P}.spawn.app:host", '{"entry": "app:worker", "args": "x"}'),
            (f"{P}.spawn.app:host", '{"entry": "app:worker", "name": "w.*"}'),
            (f"{P}.spawn.app:host", '{"entry": "app:worker", "name": ">"}'),
            (f"{P}.spawn.app:host", '{"entry": "app:worker", "host": "app:other"}'),
            (f"{P}.spawn.app:host", '{"entry": "app:worker", "bogus": 1}'),
            (f"{P}.spawn.app:host", '{"entry": "app:worker", "context": []}'),
            (f"{P}.spawn.app:host", '{"request": {"entry": "app:worker"}}'),  # the internal form, half
            (f"{P}.ctl.cjb.lookup", '{"name": "w-*"}'), (f"{P}.ctl.cjb.lookup", '{"name": 5}'),
            (f"{P}.ctl.cjb.lookup", "{}"),
            (f"{P}.ctl.cjb.cancel", '{"target": 5}'), (f"{P}.ctl.cjb.cancel", '{"target": "w-n"}'),
            (f"{P}.ctl.cjb.cancel", json.dumps({"target": pid_n, "reason": 5})),
            (f"{P}.ctl.cjb.terminate", "{}"), (f"{P}.ctl.cjb.bogus", "{}"),
            (f"{P}.ctl.cjb.ps", '{"limit": "all"}'), (f"{P}.nodes.info", '{"limit": -1}'),
        ]
        for subject, body in malformed:
            error = (await client.ask(subject, body)).get("error")
            assert error is not None and error["kind"] == "Invalid", (subject, body, error)
        unknown = await client.ask(f"{P}.spawn.app:host", '{"entry": "app:nothing"}')
        assert unknown["error"]["kind"] == "NotFound"
        taken = await client.ask(f"{P}.ctl.cjb.spawn", '{"entry": "app:worker", "host": "app:host", "name": "w-n"}')
        assert taken["error"]["kind"] == "AlreadyExists"
        counts = {s["result"]["node"]: s["result"]["processes"]
                  for s in await client.request(f"{P}.nodes.info", replies=2)}
        assert sum(counts.values()) == 2, counts  # only the two workers: nothing half-spawned

        # cancel: the worker hears it, with the reason; terminate ends the other
        cancelled = await client.ask(f"{P}.ctl.cjb.cancel", json.dumps({"target": pid_n, "reason": "enough"}))
        assert cancelled == {"result": True}
        await nodes["cjb"].wait_for_line(r"worker n event pid.cancel enough", 10)
        assert await client.ask(f"{P}.ctl.{node_h}.terminate", json.dumps({"target": pid_h})) == {"result": True}
        for node, name in ((node_h, "w-h"), ("cjb", "w-n")):  # both gone: their names with them
            for _ in range(100):
                if "error" in await client.ask(f"{P}.ctl.{node}.lookup", json.dumps({"name": name})):
                    break
                await asyncio.sleep(0.05)  # the exit has no event an outside client can await
            else:
                raise AssertionError(f"{name} still registered on {node}")
        again = await client.ask(f"{P}.ctl.{node_h}.terminate", json.dumps({"target": pid_h}))
        assert again["error"]["kind"] == "NotFound"
        assert client.errors == []
    finally:
        await client.close()
