"""Messages to processes over NATS between real node processes, and from outside with a
plain socket speaking the NATS protocol (not our code): routing, decoding, and the
dead-letter queue for everything that cannot be delivered whole."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlparse

import msgpack
import nats
from nats.aio.msg import Msg

from support import run_cli, write_project

NODE_A = {
    "_index.yaml": """
        namespace: a
        entries:
          - {name: host, kind: process.host}
          - {name: receiver, kind: process.lua, source: file://receiver.lua}
          - name: receiver.service
            kind: process.service
            process: receiver
            host: host
            lifecycle: {auto_start: true}
          - {name: where, kind: function.lua, source: file://where.lua}
          - {name: report, kind: function.lua, source: file://report.lua}
    """,
    # Keeps what came from outside (no sender); answers a PID sender's "seq" messages
    # with whether they arrived in order, once "done" arrives.
    "receiver.lua": """
        return function()
          process.registry.register("receiver")
          local inbox, outside, expected, in_order = process.inbox(), {}, {}, {}
          while true do
            local msg = inbox:receive()
            local from, topic = msg:from(), msg:topic()
            if topic == "report" then
              process.send(from, "report", outside)
            elseif from == "" then
              local p, data = msg:payload(), nil
              if p and p[1] then  -- several payloads: a list of Payloads
                data = {}
                for i, each in ipairs(p) do data[i] = each:data() end
              elseif p then
                data = p:data()
              end
              outside[#outside + 1] = { topic = topic, data = data }
            elseif topic == "seq" then
              local n = msg:payload():data()
              expected[from] = (expected[from] or 0) + 1
              if n ~= expected[from] then in_order[from] = false end
            elseif topic == "done" then
              process.send(from, "result", { received = expected[from] or 0, in_order = in_order[from] ~= false })
            end
          end
        end""",
    "where.lua": "return function() return process.registry.lookup('receiver') end",
    "report.lua": """
        return function()
          process.send("receiver", "report")
          return process.inbox():receive():payload():data()
        end""",
}

NODE_B = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: main, kind: process.lua, source: file://main.lua, modules: [funcs]}
    """,
    "main.lua": """
        local funcs = require("funcs")
        return function(n)
          local receiver = assert(funcs.call("a:where"))   -- a function served by node na
          for i = 1, n do assert(process.send(receiver, "seq", i)) end
          process.send(receiver, "done")
          local reply = process.inbox():receive()
          return { result = reply:payload():data(), from_receiver = reply:from() == receiver,
                   receiver_node = receiver:match("^{(%w+)@") }
        end""",
}


async def test_cross_node_send_keeps_order_under_load(tmp_path: Path, nats_server, spawn_node) -> None:
    await spawn_node(write_project(tmp_path / "a", NODE_A), "na", nats_url=nats_server.address,
                     ready=r"started 1 service")
    observer = await nats.connect(nats_server.address)
    seen = {"alone": 0, "batches": 0, "in_batches": 0}

    async def observe(msg: Msg) -> None:
        if msg.headers and "Mw-Batch" in msg.headers:
            seen["batches"] += 1
            seen["in_batches"] += len(msgpack.unpackb(msg.data))
            assert int(msg.headers["Mw-Batch"]) == len(msgpack.unpackb(msg.data))
        elif msg.headers and msg.headers.get("Mw-Topic") in ("seq", "done"):
            seen["alone"] += 1

    await observer.subscribe("mw.p.na.>", cb=observe)
    await observer.flush()
    try:
        code, out, err = await run_cli("run", str(write_project(tmp_path / "b", NODE_B)), "--node", "nb",
                                       "--nats", nats_server.address, "-x", "b:main", "3000")
        await observer.flush()
    finally:
        await observer.close()
    assert code == 0, err
    assert json.loads(out) == {"result": {"received": 3000, "in_order": True}, "from_receiver": True,
                               "receiver_node": "na"}
    # A burst leaves in batches (one NATS message for the sends queued in a row), and
    # every send went out exactly once.
    assert seen["batches"] > 0 and seen["in_batches"] > seen["batches"]
    assert seen["alone"] + seen["in_batches"] == 3001


def packed(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class RawNats:
    """A NATS client written against the protocol text, to show nothing of ours is needed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str) -> RawNats:
        parsed = urlparse(url)
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        info = await reader.readline()
        assert info.startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        return cls(reader, writer)

    def sub(self, subject: str, sid: int) -> None:
        self.writer.write(f"SUB {subject} {sid}\r\n".encode())

    def pub(self, subject: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        if headers is None:
            self.writer.write(f"PUB {subject} {len(body)}\r\n".encode() + body + b"\r\n")
            return
        block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        head = block.encode()
        self.writer.write(f"HPUB {subject} {len(head)} {len(head) + len(body)}\r\n".encode() + head + body + b"\r\n")

    async def ping(self) -> None:
        self.writer.write(b"PING\r\n")
        await self.writer.drain()

    async def next_message(self) -> tuple[str, dict[str, str], bytes]:
        """The next HMSG/MSG (answering server PINGs, skipping PONGs)."""
        while True:
            line = (await self.reader.readline()).decode().rstrip("\r\n")
            if line == "PING":
                self.writer.write(b"PONG\r\n")
                continue
            if line == "PONG" or not line or line.startswith("INFO "):
                continue
            parts = line.split(" ")
            if parts[0] == "HMSG":
                header_len, total = int(parts[-2]), int(parts[-1])
                data = await self.reader.readexactly(total + 2)
                lines = data[:header_len].decode().split("\r\n")[1:]
                headers = dict(h.split(": ", 1) for h in lines if h)
                return parts[1], headers, data[header_len:total]
            if parts[0] == "MSG":
                data = await self.reader.readexactly(int(parts[-1]) + 2)
                return parts[1], {}, data[:-2]
            raise AssertionError(f"unexpected line from the server: {line}")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_outside_messages_and_dead_letters(tmp_path: Path, nats_server, spawn_node) -> None:
    node = await spawn_node(write_project(tmp_path / "a", NODE_A), "na", nats_url=nats_server.address,
                            ready=r"started 1 service", args=("--set", "max_message_bytes=1KiB"))
    nc = await nats.connect(nats_server.address)
    try:
        pid = json.loads((await nc.request("mw.fn.a:where", b"[]", timeout=10)).data)["result"]
        uid = pid[pid.index("|") + 1:-1]
        inbox = f"mw.p.na.{uid}"

        raw = await RawNats.connect(nats_server.address)
        raw.sub("mw.dlq.na", 1)
        await raw.ping()
        # (subject, body, headers, the reason expected in the dead-letter queue)
        bad = [
            (inbox, b"\xc1\xc1", {"Content-Type": "application/msgpack", "Mw-Topic": "t"}, "malformed msgpack"),
            (inbox, b"\x01", {"Content-Type": "application/msgpack", "Mw-Topic": "t"}, "must be a list of payloads"),
            (f"{inbox}.t", b"<x/>", {"Content-Type": "application/xml"}, "unsupported Content-Type 'application/xml'"),
            (f"{inbox}.t", b"1", {"Mw-From": "not-a-pid"}, "Mw-From 'not-a-pid' is not a PID"),
            (inbox, b"1", None, "no topic"),
            (f"{inbox}.@inbox", b"1", None, "topic '@inbox' is reserved"),
            (f"{inbox}.t", b"x" * 2000, None, "body of 2000 bytes is over the limit of 1024"),
            ("mw.p.na.nosuchuid.t", b"1", None, "no process with uid nosuchuid on node na"),
        ]
        raw.pub(f"{inbox}.greet.en", b'{"hello": "world", "n": [1, 2]}')
        for subject, body, headers, _ in bad:
            raw.pub(subject, body, headers)
        raw.pub(inbox, b"plain words, not JSON", {"Mw-Topic": "note"})
        # A batch as another node sends it (broker/_envelope.py): the good items are
        # delivered in order; each bad one goes to the dead-letter queue alone.
        me = "{nb@host|x-1}"
        items = [  # (the good ones name no sender: the receiver reports what came from outside)
            (packed(["batched", "", ["one"]]), None),
            (packed(["batched", "not-a-pid", [2]]), "Mw-From 'not-a-pid' is not a PID"),
            (packed(["@exit", me, [3]]), "topic '@exit' is reserved"),
            (b"\xc1", "malformed msgpack"),
            (packed(["batched", me, 4]), "must be a list of payloads"),
            (packed(["batched", me, ["y" * 1100]]), "over the limit of 1024"),
            (packed(["batched", "", ["two"]]), None),
        ]
        raw.pub(inbox, packed([item for item, _ in items]), {"Content-Type": "application/msgpack", "Mw-Batch": "7"})
        raw.pub(inbox, b"\x93\x01", {"Content-Type": "application/msgpack", "Mw-Batch": "3"})
        await raw.ping()

        dead = []
        for _ in range(len(bad) + 6):
            subject, headers, body = await asyncio.wait_for(raw.next_message(), 10)
            assert subject == "mw.dlq.na"
            dead.append((headers["Mw-Dlq-Subject"], body, headers["Mw-Dlq-Reason"], headers))
        await raw.close()

        report = json.loads((await nc.request("mw.fn.a:report", b"[]", timeout=10)).data)["result"]
    finally:
        await nc.close()

    # Only the good messages reached the process, whole and in order.
    assert report == [{"topic": "greet.en", "data": {"hello": "world", "n": [1, 2]}},
                      {"topic": "note", "data": "plain words, not JSON"},
                      {"topic": "batched", "data": "one"}, {"topic": "batched", "data": "two"}]
    # Every bad one is in the dead-letter queue, in order, with its body and the reason.
    assert len(dead) == len(bad) + 6
    for (subject, body, _, reason), (dead_subject, dead_body, dead_reason, _) in zip(bad, dead):
        assert (dead_subject, dead_body) == (subject, body)
        assert reason in dead_reason, (reason, dead_reason)
    # A bad item of a batch is republished alone, as it would have come without one.
    from_batch = dead[len(bad):]
    for (_, _, dead_reason, _), reason in zip(from_batch, [reason for _, reason in items if reason]):
        assert reason in dead_reason, (reason, dead_reason)
    assert from_batch[0][3]["Mw-From"] == "not-a-pid" and from_batch[0][3]["Mw-Topic"] == "batched"
    assert msgpack.unpackb(from_batch[0][1]) == [2]
    assert from_batch[2][1] == b"\xc1"
    assert "malformed batch body" in from_batch[5][2] and from_batch[5][1] == b"\x93\x01"
    await node.wait_for_line(r"undeliverable message on mw\.p\.na\.nosuchuid\.t: no process with uid")
    assert node.process is not None and node.process.returncode is None  # the node carries on


async def test_cli_send(tmp_path: Path, nats_server, spawn_node) -> None:
    await spawn_node(write_project(tmp_path / "a", NODE_A), "na", nats_url=nats_server.address,
                     ready=r"started 1 service")
    nc = await nats.connect(nats_server.address)
    try:
        pid = json.loads((await nc.request("mw.fn.a:where", b"[]", timeout=10)).data)["result"]
        code, _, err = await run_cli("send", pid, "from cli", '{"k": 1}', "two", "--nats", nats_server.address,
                                     cwd=tmp_path)
        assert code == 0, err
        report = json.loads((await nc.request("mw.fn.a:report", b"[]", timeout=10)).data)["result"]
    finally:
        await nc.close()
    assert report == [{"topic": "from cli", "data": [{"k": 1}, "two"]}]
    # Neither a PID nor a cluster name (a name is sent to whoever holds it: mw.n.<name>).
    code, _, err = await run_cli("send", "no body", "t", "--nats", nats_server.address, cwd=tmp_path)
    assert code == 2 and "neither a PID" in err and "space" in err, err
