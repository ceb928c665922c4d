"""Every message from outside is accounted for (issue 14, finding 5; STYLE §16).

Generated subjects (under every prefix a node listens on, with odd tokens), headers
(content types, Mw-Topic, Mw-From, Mw-Batch, garbage) and bodies (deep nesting, sizes
near and over the limit, invalid UTF-8, msgpack extension values, truncated msgpack, JSON
edge cases), with and without a reply subject, go to one real node OS process on a real
nats-server. Each must end in exactly one visible way:

* answered: a request subject with a reply subject gets a reply (a value or an error);
* delivered: the receiving process counted it (it reports its counts on demand), or the
  function ran (it tells the receiving process it did);
* dead-lettered: a copy with ``Mw-Dlq-Reason`` reaches ``mw.dlq.<node>``.

Heartbeats (``mw.node.<node>.hb``) are only read: a bad one shows in the log (once),
never as a traceback.

A request without a reply subject is compared with its twin sent first with a reply
subject: when the node answers the twin with an error, the one without must be
dead-lettered. Afterwards the node still serves (a function call and a process message
work, the receiving process is the same one), and its log holds no traceback (an
exception in any handler, caught by its catch-all or escaping into the client library,
would show there).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import nats
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from moonwire.broker import Pid, batch_items
from moonwire.node.wire._payload import MSGPACK, unpack
from support import write_project

NODE = "fz"
MAX_BODY = 65536  # the node's max_message_bytes here: bodies near and over it are cheap
TESTER = "{tester@x|1-1}"  # a PID no node runs: the receiver's counts come back to it
PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {{name: temporal, kind: temporal.client, address: "{temporal}"}}
          - {{name: worker, kind: temporal.worker, client: temporal, task_queue: {queue}}}
          - {{name: host, kind: process.host}}
          - {{name: receiver, kind: process.lua, source: file://receiver.lua}}
          - name: receiver.service
            kind: process.service
            process: receiver
            host: host
            lifecycle: {{auto_start: true}}
          - {{name: echo, kind: function.lua, source: file://echo.lua}}
          - {{name: pid, kind: function.lua, source: file://pid.lua}}
    """,
    # Counts what it receives: from function calls ("called") and from anyone else
    # ("seen"); a "marker" from the tester gets the counts back.
    "receiver.lua": """
        return function()
          process.registry.register("receiver")
          local inbox, seen, called = process.inbox(), 0, 0
          while true do
            local msg = inbox:receive()
            local from = msg:from()
            if msg:topic() == "marker" and from == "%s" then
              local ok, data = pcall(function() return msg:payload():data() end)
              process.send(from, "count", { marker = ok and type(data) == "table" and data.marker or -1,
                                            seen = seen, called = called })
            elseif from:find("@funcs|", 1, true) then
              called = called + 1
            else
              seen = seen + 1
            end
          end
        end""" % TESTER,
    "echo.lua": 'return function(...) process.send("receiver", "called"); return ... end',
    "pid.lua": 'return function() return process.registry.lookup("receiver") end',
}

REQUESTS = ("function", "control", "survey", "spawn", "status")
"""Kinds of subject that answer a reply subject."""
CONTROL_VERBS = ("monitor", "link", "unmonitor", "unlink", "cancel", "terminate", "spawn", "lookup", "info", "ps")


@dataclass(frozen=True)
class Case:
    kind: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    tokens: tuple[str, ...] = ()
    reply: bool = False


# ---------------------------------------------------------------- strategies

TOKEN = st.text(alphabet=[c for c in string.printable if c not in ".*> \t\r\n\x0b\x0c"], min_size=1, max_size=12)
HEADER_TEXT = st.text(alphabet=[c for c in string.printable if c not in "\r\n\t\x0b\x0c"], max_size=40)
PIDS = st.sampled_from(["{x@h|1-1}", "{fz@h|zz-9}", "{@app:worker|wf}", "{bad", "", "receiver"])


def deep_json(depth: int, close: bool = True) -> bytes:
    return b"[" * depth + (b"]" * depth if close else b"")


def deep_msgpack(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)


@st.composite
def msgpack_bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return msgpack.packb(draw(plain), use_bin_type=True)
    if choice == 1:  # extension values: ours (1, an error) with good or bad contents, and others
        code = draw(st.sampled_from([1, 1, 1, -1, 0, 2, 5, 127]))
        if code == -1:  # msgpack's own timestamp (ExtType cannot make it): [timestamp]
            return b"\x91\xd6\xff" + draw(st.binary(min_size=4, max_size=4))
        inner = draw(st.one_of(st.binary(max_size=12), plain.map(lambda v: msgpack.packb(v, use_bin_type=True))))
        return msgpack.packb(draw(st.sampled_from([lambda e: e, lambda e: [e], lambda e: {"args": [e]},
                                                   lambda e: {"error": e, "from": "{x@h|1-1}"}]))(
            msgpack.ExtType(code, inner)), use_bin_type=True)
    if choice == 2:
        return deep_msgpack(draw(st.sampled_from([100, 263, 264, 265, 1023, 1025, 5000])))
    if choice == 3:  # truncated
        whole = msgpack.packb(draw(plain), use_bin_type=True)
        return whole[:draw(st.integers(0, max(len(whole) - 1, 0)))]
    if choice == 4:  # near and over the size limit
        size = draw(st.sampled_from([MAX_BODY - 64, MAX_BODY - 8, MAX_BODY + 1, MAX_BODY * 2]))
        return msgpack.packb(["x" * size], use_bin_type=True)
    if choice == 5:  # a batch body, items good and bad
        items = draw(st.lists(st.one_of(
            st.tuples(TOKEN, st.sampled_from(["", "{x@h|1-1}", "nope"]), plain).map(
                lambda t: b"\x93" + msgpack.packb(t[0]) + msgpack.packb(t[1]) + msgpack.packb([t[2]])),
            st.binary(max_size=10),
            plain.map(lambda v: msgpack.packb(v, use_bin_type=True))), max_size=4))
        return msgpack.packb(items, use_bin_type=True)
    return msgpack.packb([2 ** 64 - 1, -(2 ** 63)])


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return json.dumps(draw(plain.filter(lambda v: not isinstance(v, bytes))), default=repr).encode()
    if choice == 1:
        return deep_json(draw(st.sampled_from([100, 128, 129, 263, 264, 265, 2000, 100_000])),
                         close=draw(st.booleans()))
    if choice == 2:
        return draw(st.sampled_from([b'{"a":' * 300 + b"1" + b"}" * 300, b'["[[[[[[[[["]', b"NaN", b"1e400",
                                     b"123456789012345678901234567890", b"-0", b'"\\ud800"', b"",
                                     b"   ", b'{"args": 5}', b'{"args": [], "ctx": 3}', b"[" + b"1," * 5000 + b"1]"]))
    if choice == 3:  # invalid UTF-8
        return draw(st.sampled_from([b"\xff\xfe", b'"\xc3\x28"', b"[\x80]", b"\xed\xa0\x80"]))
    if choice == 4:  # near and over the size limit
        size = draw(st.sampled_from([MAX_BODY - 64, MAX_BODY - 8, MAX_BODY + 1]))
        return json.dumps(["x" * size]).encode()
    return draw(st.binary(max_size=64))


HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/msgpack", "application/json", "text/plain",
                                     "text/plain; charset=utf-8", "application/octet-stream",
                                     "APPLICATION/MSGPACK", ""]) | HEADER_TEXT,
    "Mw-Topic": st.sampled_from(["t", "@sys", "marker", ""]) | HEADER_TEXT,
    "Mw-From": PIDS | HEADER_TEXT,
    "Mw-Batch": st.sampled_from(["1", "2", "x"]),
    "X-Garbage": HEADER_TEXT,
})


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["inbox", "inbox", "inbox", "function", "function", "control", "survey",
                                 "spawn", "gateway", "gateway", "status", "heartbeat", "ack"]))
    headers = dict(draw(HEADERS))
    body = draw(st.one_of(msgpack_bodies(), json_bodies()))
    if draw(st.booleans()):  # mostly a content type that matches the body
        headers["Content-Type"] = "application/msgpack" if draw(st.booleans()) else "application/json"
    if kind == "inbox":
        first = draw(st.sampled_from(["$receiver", "$receiver", "$receiver", "zz-404"]) | TOKEN)
        tokens = (first, *draw(st.lists(TOKEN, max_size=3)))
    elif kind == "control":
        tokens = (draw(st.sampled_from(CONTROL_VERBS) | TOKEN),)
    elif kind == "survey":
        tokens = (draw(st.sampled_from(["info", "ps"]) | TOKEN),)
    elif kind == "gateway":
        tokens = (draw(TOKEN), *draw(st.lists(TOKEN, max_size=2)))
    elif kind == "heartbeat":
        tokens = (draw(st.sampled_from(["fz", "other"]) | TOKEN),)
    else:
        tokens = ()
    return Case(kind, body, headers, tokens, draw(st.booleans()))


# ---------------------------------------------------------------- the node's side as the test sees it


class Observer:
    """The test's connection: publishes cases, and watches replies, dead letters and the
    receiver's counts."""

    def __init__(self, nc: nats.NATS, receiver: str, worker_id: str) -> None:
        self.nc = nc
        self.receiver_uid = Pid.parse(receiver).uid  # type: ignore[union-attr]
        self.worker = worker_id
        self.ids = itertools.count(1)
        self.dead_by_id: dict[str, list[Msg]] = defaultdict(list)
        self.dead_by_subject: dict[str, list[Msg]] = defaultdict(list)
        self.counts: dict[int, dict] = {}
        self.count_arrived = asyncio.Condition()
        self.dead_arrived = asyncio.Condition()
        self.delivered: set[str] = set()
        self.seen = self.called = 0

    async def start(self) -> None:
        await self.nc.subscribe(f"mw.dlq.{NODE}", cb=self._on_dead)
        await self.nc.subscribe("mw.p.tester.>", cb=self._on_count)
        await self.nc.flush()
        await self.mark()

    async def _on_dead(self, msg: Msg) -> None:
        headers = msg.headers or {}
        assert headers.get("Mw-Dlq-Reason"), headers
        async with self.dead_arrived:
            self.dead_by_id[headers.get("X-Fuzz-Id", "")].append(msg)
            self.dead_by_subject[headers.get("Mw-Dlq-Subject", "")].append(msg)
            self.dead_arrived.notify_all()

    async def _on_count(self, msg: Msg) -> None:
        if msg.headers and "Mw-Batch" in msg.headers:
            payloads = [msgpack.unpackb(item, raw=False)[2] for item in batch_items(msg.data)]
        else:
            payloads = [msgpack.unpackb(msg.data, raw=False)]
        async with self.count_arrived:
            for (counts,) in payloads:
                self.counts[counts["marker"]] = counts
            self.count_arrived.notify_all()

    async def mark(self) -> None:
        """The receiver's counts now (after everything published to it before)."""
        marker = next(self.ids)
        await self.nc.publish(f"mw.p.{NODE}.{self.receiver_uid}.marker", json.dumps({"marker": marker}).encode(),
                              headers={"Mw-From": TESTER})
        async with self.count_arrived:
            await asyncio.wait_for(self.count_arrived.wait_for(lambda: marker in self.counts), 10)
        counts = self.counts.pop(marker)
        self.seen, self.called = counts["seen"], counts["called"]

    def subject(self, case: Case, n: int) -> str:
        tokens = [self.receiver_uid if t == "$receiver" else t for t in case.tokens]
        if case.kind == "inbox":
            if "Mw-Batch" in case.headers:
                tokens.append(f"b{n}")  # a batch item is dead-lettered with its own headers: find it by subject
            return f"mw.p.{NODE}." + ".".join(tokens)
        return {
            "function": "mw.fn.app:echo",
            "control": f"mw.ctl.{NODE}.{tokens[0] if tokens else ''}",
            "survey": f"mw.nodes.{tokens[0] if tokens else ''}",
            "spawn": "mw.spawn.app:host",
            "gateway": f"mw.wf.{self.worker}." + ".".join(tokens),
            "status": f"mw.wfq.{self.worker}",
            "heartbeat": f"mw.node.{tokens[0] if tokens else ''}.hb",
            "ack": f"mw.ack.{NODE}",
        }[case.kind]

    async def request(self, subject: str, body: bytes, headers: dict[str, str]) -> Msg:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        await self.nc.publish(subject, body, reply=inbox, headers=headers)
        try:
            return await sub.next_msg(timeout=15)
        finally:
            await sub.unsubscribe()

    async def dead_letters(self, key: str, count: int, by_subject: bool = False) -> None:
        found = self.dead_by_subject if by_subject else self.dead_by_id
        async with self.dead_arrived:
            try:
                await asyncio.wait_for(self.dead_arrived.wait_for(lambda: len(found.get(key, ())) >= count), 30)
            except TimeoutError:
                raise AssertionError(f"no dead letter for {key} within 30 s") from None

    async def check(self, case: Case) -> None:
        n = next(self.ids)
        fuzz_id = str(n)
        subject = self.subject(case, n)
        headers = {**case.headers, "X-Fuzz-Id": fuzz_id}
        if case.kind in REQUESTS and case.reply:
            reply = await self.request(subject, case.body, headers)  # raises when none comes
            assert reply.data or reply.headers, "an empty reply"
            assert fuzz_id not in self.dead_by_id, "answered and dead-lettered"
            await self.mark()
            return
        twin_failed = None
        if case.kind in ("control", "survey", "spawn", "status"):  # the oracle: the same, answered
            twin = await self.request(subject, case.body, {**case.headers, "X-Fuzz-Id": f"twin-{n}"})
            answer = unpack(twin.data, (twin.headers or {}).get("Content-Type"))
            twin_failed = not isinstance(answer, dict) or answer.get("error") is not None
        seen, called = self.seen, self.called
        await self.nc.publish(subject, case.body, headers=headers)
        if case.kind == "function":  # a fence: served in order after it on the same subscription
            await self.request("mw.fn.app:echo", b"[]", {})
        await self.mark()
        if case.kind == "inbox":
            delivered = self.seen - seen
            items = 1
            if "Mw-Batch" in case.headers:
                try:
                    items = len(batch_items(case.body))
                except ValueError:
                    items = 1
                await self.dead_letters(subject, items - delivered, by_subject=True)
            elif delivered == 0:
                await self.dead_letters(fuzz_id, 1)
            else:
                self.delivered.add(fuzz_id)
            assert 0 <= delivered <= items
        elif case.kind == "function":
            if self.called - called == 2:  # the fence and this call ran
                self.delivered.add(fuzz_id)
            else:
                assert self.called - called == 1
                await self.dead_letters(fuzz_id, 1)
        elif case.kind == "heartbeat":  # nothing to see but the log (no traceback) and a node that serves
            pass
        elif case.kind == "ack":  # a stream acknowledgement: one for no stream of the node's is ignored
            if not _is_ack(case.body):
                await self.dead_letters(fuzz_id, 1)
        elif case.kind == "gateway":  # no workflow has these ids: dead-lettered, now or once Temporal says so
            await self.dead_letters(fuzz_id, 1)
        elif twin_failed:
            await self.dead_letters(fuzz_id, 1)
        else:
            self.delivered.add(fuzz_id)


INBOX_DEEP_JSON = Case("inbox", deep_json(100_000), {}, ("$receiver", "t"))
GATEWAY_DEEP_JSON = Case("gateway", deep_json(100_000), {}, ("wf-1", "t"))
BAD_ERROR_EXT = msgpack.packb({"args": [msgpack.ExtType(1, msgpack.packb([1, 2]))]})
AS_MSGPACK = {"Content-Type": MSGPACK}


async def test_every_outside_message_is_accounted_for(tmp_path: Path, nats_server, temporal_server,
                                                      spawn_node) -> None:
    files = dict(PROJECT)
    files["_index.yaml"] = files["_index.yaml"].format(temporal=temporal_server.address, queue=f"fz-{tmp_path.name}")
    node = await spawn_node(write_project(tmp_path / "p", files), NODE, nats_url=nats_server.address,
                            ready=r"started 1 service", args=("--set", f"max_message_bytes={MAX_BODY}"))
    nc = await nats.connect(nats_server.address)
    try:
        receiver = json.loads((await nc.request("mw.fn.app:pid", b"", timeout=10)).data)["result"]
        observer = Observer(nc, receiver, "app:worker")
        await observer.start()
        loop = asyncio.get_running_loop()
        done: list[Case] = []

        # No shrinking: the node is one system across examples, so a failure is reported
        # as it happened rather than searched for a smaller one for minutes.
        @settings(max_examples=1500, deadline=None, database=None, derandomize=True,
                  phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
        @given(case=cases())
        # The probes of issue 14: JSON nested 100,000 deep at an inbox and at the workflow
        # gateway; an error extension value that does not hold a map, at a function and at
        # the workflow status subject; the same deep JSON at every request subject.
        @example(case=INBOX_DEEP_JSON)
        @example(case=GATEWAY_DEEP_JSON)
        @example(case=Case("function", BAD_ERROR_EXT, AS_MSGPACK, reply=True))
        @example(case=Case("status", msgpack.packb({"pid": msgpack.ExtType(1, b"\x01")}), AS_MSGPACK, reply=True))
        @example(case=Case("function", deep_json(100_000), reply=True))
        @example(case=Case("control", deep_json(100_000), {}, ("monitor",), reply=True))
        @example(case=Case("survey", deep_json(100_000), {}, ("info",), reply=True))
        @example(case=Case("spawn", deep_json(100_000), reply=True))
        @example(case=Case("status", deep_json(100_000), reply=True))
        @example(case=Case("function", BAD_ERROR_EXT, AS_MSGPACK))
        @example(case=Case("control", msgpack.packb({"target": 1}), AS_MSGPACK, ("monitor",)))
        @example(case=Case("heartbeat", deep_json(100_000), {}, ("other",)))
        @example(case=Case("heartbeat", b"[1]", {}, ("other",)))
        @example(case=Case("gateway", b'"\\ud800"', {}, ("wf-surrogate",)))  # killed the signal sender once
        @example(case=Case("ack", b'{"from": "x", "to": "y", "seq": 1}'))
        @example(case=Case("ack", deep_json(100_000)))
        def check(case: Case) -> None:
            asyncio.run_coroutine_threadsafe(observer.check(case), loop).result(60)
            done.append(case)

        started = loop.time()
        await asyncio.to_thread(check)
        print(f"{len(done)} cases in {loop.time() - started:.1f}s")

        # Exactly one: nothing that was delivered was also dead-lettered. A last bad
        # message's dead letter comes after every earlier one from the inbox path.
        await nc.publish(f"mw.p.{NODE}.{observer.receiver_uid}", b"1", headers={"X-Fuzz-Id": "last"})
        await observer.dead_letters("last", 1)
        assert not observer.delivered & set(observer.dead_by_id), "delivered and dead-lettered"
        # The node still serves, with the same receiver.
        reply = await nc.request("mw.fn.app:echo", b"[[2, 3]]", timeout=10)
        assert json.loads(reply.data) == {"result": [2, 3]}
        assert json.loads((await nc.request("mw.fn.app:pid", b"", timeout=10)).data)["result"] == receiver
        seen = observer.seen
        await nc.publish(f"mw.p.{NODE}.{observer.receiver_uid}.hello", b'{"a": 1}')
        await observer.mark()
        assert observer.seen == seen + 1
        assert len(done) > 100
        # An exception caught by a handler's own catch-all logs a traceback; one that
        # escaped into nats-py's callback task is logged by the node's error callback.
        assert "Traceback" not in node.output, node.output[-5000:]
        assert "NATS error on" not in node.output, node.output[-5000:]
    finally:
        await nc.close()


def _is_ack(body: bytes) -> bool:
    """What broker.Streams takes as an acknowledgement (anything else is dead-lettered)."""
    try:
        data = json.loads(body) if len(body) <= 1024 else None
    except (ValueError, RecursionError):
        return False
    return (isinstance(data, dict) and isinstance(data.get("from"), str) and isinstance(data.get("to"), str)
            and isinstance(data.get("seq"), int))
