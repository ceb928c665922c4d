"""A chaos run (issue 14, item 7): three nodes on a three-server NATS cluster, processes
exchanging numbered messages across nodes, while nodes and NATS servers are killed
with ``kill -9`` and restarted and process inboxes are flooded from outside.

    python bench/chaos.py --minutes 10 [--seed 7] [--keep] [--events node,nats,flood]
    python bench/chaos.py --analyze /tmp/moonwire-chaos-XXXX   # check a kept run again
    (both take --json, and --loop asyncio|uvloop for this script and the nodes)

What runs (all on 127.0.0.1, ports and temp dirs of its own):

- three nats-servers routed into one cluster by ``deploy/nats-cluster.conf``;
- three ``moonwire run`` OS processes, c1..c3, each given all three client URLs, with
  heartbeat interval 200ms and down_after 1s, on a project written to the temp dir.
  On every node three services start with the node (and again after each restart):
  ``rx`` registers the name "rx" and prints every message it receives; ``tx`` looks up
  "rx" on each other node, monitors it and sends it seq 1, 2, 3, ... every period,
  printing every send that returned true and every EXIT its monitors get; ``sponge``
  drains its inbox, prints its running total, and is the target of floods.

The collector is the nodes' own logs. A Lua ``print`` is a log record written
synchronously to the node's stderr, which goes straight to a file (no pipe through this
script), so a record printed before a ``kill -9`` is in the file: all the collector can
miss is a message received (or sent) in the instant between the event and its print,
and then that process was killed, which is an explained loss. This script keeps a
timeline of its own events, samples each node's RSS every second, and counts what
reaches the dead-letter subjects (``mw.dlq.>``).

Chaos, one event at a time with random gaps of 3-10 s: ``kill -9`` a node and start it
again after 0.5-4 s; ``kill -9`` a NATS server and start it again after 1-8 s (same
port, same store); flood a node's sponge with ``--flood-size`` raw nats-py publishes to
``mw.p.<node>.<uid>.flood`` as fast as they go.

At the end the script waits until every sender sends to every other node's current
receiver, tells the senders to stop, waits until the receivers caught up, stops the
nodes (SIGTERM) and checks the logs:

1. exactly once, in order: per (sender, receiver) the received seqs are distinct,
   increasing, and were all sent; between processes that both stayed alive every sent
   seq arrived (a loss there passes only when the sender's monitor fired after it,
   which the next check then reports as a false node-down);
2. every loss explained: a sent seq that never arrived is explained by an EXIT the
   sender's monitor got for that receiver after sending it, or (when nothing later
   arrived) by the death of the receiver or the sender; and a sender that outlived its
   receiver's node must have got that EXIT;
3. no false node-down: every "node X is down" line follows a kill of X, and no
   monitor fired "node down" for a process whose node was not killed;
4. streams flow again: within 30 s of the end of the chaos, every sender sends to
   every other node's current receiver;
5. memory: every RSS sample of every node is under ``--max-rss-mb``;
6. no process of the chaos project crashed (they loop for ever: a service restart
   before the shutdown means one raised).

Also printed, not judged: node-down detection times, stream latency (with the harness
events before the slowest messages), per node what floods published, what the sponges
got and what was dead-lettered, log sizes.

Exits 1 when an invariant failed (the work dir with every log and ``run.json`` is kept
then), 2 when the harness itself could not run, 130 when interrupted (Ctrl-C, SIGTERM);
the whole run is bounded by ``--minutes`` plus five minutes.

With ``--json`` the last line is one JSON object with these keys: ``machine``;
``passed``; ``verdict.exactly_once``, ``verdict.losses_explained``,
``verdict.no_false_node_down``, ``verdict.streams_flow_again``, ``verdict.memory``,
``verdict.no_crash`` (each true when it held); ``events.node_kills``,
``events.nats_kills``, ``events.floods``, ``events.flood_messages``;
``detection.p50_s``, ``detection.max_s``, ``detection.count``; ``latency.p50_ms``,
``latency.p99_ms``, ``latency.max_ms``; ``monitor.p50_s``, ``monitor.max_s``,
``monitor.count`` (absent when nothing was observed); for each node ``N`` (c1..c3):
``floods.N.published``, ``floods.N.delivered``, ``floods.N.dead_lettered``,
``floods.N.unaccounted``, ``undeliverable.N``, ``log_mib.N``; ``dead_letters.stream`` and
``dead_letters.by_node_reason`` (a list of [node, reason, count]).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgpack
import nats
from nats.aio.msg import Msg

import moonwire.node as moonwire_node
from moonwire.node import ServerProcess, free_port, start_nats

from _support import Figures, parser, pct, run, write

MOONWIRE = str(Path(sys.executable).parent / "moonwire")
CLUSTER_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nats-cluster.conf"
NODES = ["c1", "c2", "c3"]
HEARTBEAT = ("200ms", "1s")  # interval, down_after: short but realistic
SPONGE_TOPIC = "flood"
LATE_DOWN = 30.0  # a node-down line this long after the node's kill is not about that kill


# ---------------------------------------------------------------- the Lua project

def project_files(nodes: list[str], period_ms: int) -> dict[str, str]:
    service = ("{{name: {name}.service, kind: process.service, process: {name}, host: host, input: {input}, "
               "lifecycle: {{auto_start: true, stop_timeout: 500ms, restart: {{initial_delay: 100ms, max_delay: 1s}}}}}}")
    return {
        "_index.yaml": "\n".join([
            "namespace: chaos",
            "entries:",
            "  - {name: host, kind: process.host, lifecycle: {auto_start: true}}",
            "  - {name: rx, kind: process.lua, source: file://rx.lua}",
            "  - {name: tx, kind: process.lua, source: file://tx.lua, modules: [time]}",
            "  - {name: sponge, kind: process.lua, source: file://sponge.lua, modules: [time]}",
            "  - " + service.format(name="rx", input="[]"),
            "  - " + service.format(name="tx", input=json.dumps([nodes, period_ms])),
            "  - " + service.format(name="sponge", input="[]"),
        ]) + "\n",
        # Every line the harness reads starts with "chaos <what>" and names pids in full.
        "rx.lua": """
            return function()
              local me = process.pid()
              assert(process.registry.register("rx"))
              print("chaos rx-ready " .. me)
              local inbox = process.inbox()
              while true do
                local msg = inbox:receive()
                print("chaos rx " .. me .. " " .. msg:from() .. " " .. tostring(msg:payload():data()))
              end
            end""",
        # One sender per node, one stream to the receiver of each other node. seq never
        # restarts within a sender, so a stream to a new receiver (or to the same one
        # after its monitor fired) never reuses a number.
        "tx.lua": """
            local time = require("time")
            return function(nodes, period_ms)
              local me = process.pid()
              local here = me:match("^{([^@]+)@")
              local inbox, events = process.inbox(), process.events()
              local receivers, seq, last_err = {}, {}, {}
              print("chaos tx-ready " .. me)
              local function note(node, what)  -- print a failure once until it changes
                if last_err[node] ~= what then last_err[node] = what; print("chaos tx-note " .. me .. " " .. node .. " " .. what) end
              end
              while true do
                for _, node in ipairs(nodes) do
                  if node ~= here then
                    local rx = receivers[node]
                    if rx == nil then
                      local pid, err = process.registry.lookup("rx", node)
                      if pid == nil then
                        note(node, "lookup: " .. tostring(err))
                      else
                        local ok, merr = process.monitor(pid)
                        if ok then
                          receivers[node], rx, last_err[node] = pid, pid, nil
                          print("chaos tx-monitor " .. me .. " " .. pid)
                        else
                          note(node, "monitor " .. pid .. ": " .. tostring(merr))
                        end
                      end
                    end
                    if rx ~= nil then
                      local n = (seq[node] or 0) + 1
                      local ok, err = process.send(rx, "seq", n)
                      if ok then
                        seq[node] = n
                        print("chaos tx " .. me .. " " .. rx .. " " .. n)
                      else
                        note(node, "send " .. rx .. ": " .. tostring(err))
                      end
                    end
                  end
                end
                local r = channel.select{inbox:case_receive(), events:case_receive(),
                                         time.after(period_ms * time.MILLISECOND):case_receive()}
                if r.channel == events then
                  local ev = r.value
                  for node, rx in pairs(receivers) do
                    if ev.from == rx then
                      receivers[node] = nil
                      local err = ev.result and ev.result.error
                      print("chaos tx-down " .. me .. " " .. rx .. " " .. (err and err:message() or "normal exit"))
                    end
                  end
                elseif r.channel == inbox and r.value:topic() == "stop" then
                  local parts = {}
                  for node, rx in pairs(receivers) do parts[#parts + 1] = rx .. "=" .. tostring(seq[node]) end
                  print("chaos tx-stopped " .. me .. " " .. table.concat(parts, " "))
                  while true do inbox:receive() end
                end
              end
            end""",
        # Drains its inbox; prints its running total once a second while it changes.
        "sponge.lua": """
            local time = require("time")
            return function()
              local me = process.pid()
              print("chaos sponge-ready " .. me)
              local inbox, tick = process.inbox(), time.ticker(time.SECOND):channel()
              local total, printed = 0, 0
              while true do
                local r = channel.select{inbox:case_receive(), tick:case_receive()}
                if r.channel == inbox then
                  total = total + 1
                elseif total ~= printed then
                  printed = total
                  print("chaos sponge " .. me .. " " .. total)
                end
              end
            end""",
    }


# ---------------------------------------------------------------- the timeline

class Timeline:
    """The harness's own events, each printed as it happens and kept for the checks."""

    def __init__(self, t0: float | None = None, events: list[tuple[float, str, str]] | None = None) -> None:
        self.t0 = time.time() if t0 is None else t0
        self.events = events or []  # (unix time, kind, text)

    def rel(self, at: float) -> str:
        return f"+{at - self.t0:7.2f}s"

    def log(self, kind: str, text: str) -> float:
        at = time.time()
        self.events.append((at, kind, text))
        print(f"{self.rel(at)} {kind:<12} {text}", flush=True)
        return at

    def around(self, at: float, before: float = 6.0, after: float = 2.0) -> list[str]:
        """The harness events shortly before (and just after) ``at``, as printable lines."""
        return [f"{self.rel(t)} {kind} {text}" for t, kind, text in self.events
                if at - before <= t <= at + after and kind not in ("chaos",)]


# ---------------------------------------------------------------- NATS cluster

class NatsCluster:
    """Three routed nats-servers; one can be killed and restarted on its port and store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = [(free_port(), free_port(), free_port()) for _ in NODES]  # client, route, monitor
        self.servers: list[ServerProcess | None] = [None] * len(self.ports)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{client}" for client, _, _ in self.ports]

    async def start(self, i: int) -> ServerProcess:
        client, route, monitor = self.ports[i]
        routes = [f"nats://127.0.0.1:{other[1]}" for j, other in enumerate(self.ports) if j != i]
        env = {"MW_NATS_NAME": f"s{i + 1}", "MW_NATS_PORT": str(client), "MW_NATS_CLUSTER_PORT": str(route),
               "MW_NATS_ROUTES": json.dumps(routes)}
        server = await start_nats(self.root / f"s{i + 1}", port=client, monitor_port=monitor,
                                  args=("-c", str(CLUSTER_CONF)), env=env)
        self.servers[i] = server
        return server

    def routes(self, i: int) -> int:
        _, _, monitor = self.ports[i]
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/routez", timeout=2) as response:
            return len(json.loads(response.read())["routes"])

    async def wait_routed(self, timeout: float) -> bool:
        """True once every running server has routes to both others (polled: the
        servers announce it on no subject we could await)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [i for i, server in enumerate(self.servers) if server is not None]
            try:
                counts = [await asyncio.to_thread(self.routes, i) for i in running]
            except (OSError, ValueError):  # a server not answering yet: poll again
                counts = [0]
            if all(count >= len(self.ports) - 1 for count in counts):
                return True
            await asyncio.sleep(0.2)
        return False

    async def kill(self, i: int) -> int:
        """``kill -9`` server ``i``; returns its OS pid once it is gone."""
        server, self.servers[i] = self.servers[i], None
        assert server is not None
        server.process.kill()
        await server.process.wait()
        return server.pid

    async def stop_all(self) -> None:
        for i, server in enumerate(self.servers):
            if server is not None:
                await server.stop()
                self.servers[i] = None


# ---------------------------------------------------------------- nodes

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> None:
    # Between fork and exec: if this script is itself killed, the kernel kills the node.
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Incarnation:
    """One start of a node: its OS process id, its log file, what happened to it. Plain
    data, saved in the run's ``run.json`` for ``--analyze``."""

    node: str
    number: int
    log_path: Path
    pid: int
    started_at: float
    killed_at: float | None = None
    stopped_at: float | None = None
    rss: list[tuple[float, int]] = field(default_factory=list)  # (unix time, bytes)

    @property
    def label(self) -> str:
        return f"{self.node}#{self.number}"


class LogTail:
    """Reads the lines a file gains, as they come (the node writes, we poll)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode(errors="replace") for line in lines]


class Nodes:
    """The three ``moonwire run`` processes; each start is a new :class:`Incarnation`."""

    def __init__(self, root: Path, project: Path, urls: list[str]) -> None:
        self.root = root
        self.project = project
        self.urls = urls
        self.incarnations: list[Incarnation] = []
        self.processes: dict[str, asyncio.subprocess.Process] = {}  # by incarnation label
        self.current: dict[str, Incarnation] = {}
        self.sponges: dict[str, str] = {}  # node -> the current sponge's pid
        self.senders: dict[str, str] = {}  # node -> the current sender's pid

    async def start(self, name: str, timeout: float = 60.0) -> Incarnation:
        """Start ``name`` and return once its sender and sponge are running."""
        number = sum(1 for inc in self.incarnations if inc.node == name) + 1
        log_path = self.root / "logs" / f"{name}.{number}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [MOONWIRE, "run", str(self.project), "--node", name, "--nats", ",".join(self.urls),
                "--state-dir", f".state-{name}", "--log-format", "json", "--shutdown-timeout", "5s",
                "--set", f"heartbeat.interval={HEARTBEAT[0]}", "--set", f"heartbeat.down_after={HEARTBEAT[1]}"]
        with open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches this script, which stops the nodes
                preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent))  # type: ignore[misc]
        inc = Incarnation(name, number, log_path, process.pid, time.time())
        self.incarnations.append(inc)
        self.processes[inc.label] = process
        self.current[name] = inc
        tail, deadline, seen = LogTail(log_path), time.monotonic() + timeout, set()
        while not {"tx-ready", "sponge-ready"} <= seen:
            if process.returncode is not None:
                raise HarnessError(f"node {inc.label} exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise HarnessError(f"node {inc.label} not ready within {timeout:.0f}s; see {log_path}")
            for line in tail.new_lines():
                record = chaos_line(line)
                if record and record[0] in ("tx-ready", "sponge-ready"):
                    seen.add(record[0])
                    (self.senders if record[0] == "tx-ready" else self.sponges)[name] = record[1][0]
            await asyncio.sleep(0.05)
        return inc

    async def kill(self, name: str) -> Incarnation:
        """``kill -9`` the running incarnation of ``name``; returns once it is gone."""
        inc = self.current.pop(name)
        process = self.processes[inc.label]
        process.kill()
        inc.killed_at = time.time()
        self.sponges.pop(name, None)
        self.senders.pop(name, None)
        await process.wait()
        return inc

    def running(self, inc: Incarnation) -> bool:
        return self.processes[inc.label].returncode is None

    async def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM every running node (an orderly stop), SIGKILL what outlives ``timeout``."""
        running = [(inc, self.processes[inc.label]) for inc in self.incarnations if self.running(inc)]
        for inc, process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            inc.stopped_at = time.time()
        for inc, process in running:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                print(f"node {inc.label} did not stop within {timeout:.0f}s after SIGTERM; killing it")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.current.clear()

    async def kill_all(self) -> None:
        """The last resort (an error, Ctrl-C): SIGKILL whatever still runs and reap it."""
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()


class HarnessError(Exception):
    """The run itself could not go on (a node or server did not start)."""


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


async def sample_memory(nodes: Nodes, every: float = 1.0) -> None:
    """Sample each running node's RSS until cancelled."""
    while True:
        for inc in list(nodes.current.values()):
            value = rss_bytes(inc.pid)
            if value is not None and nodes.running(inc):
                inc.rss.append((time.time(), value))
        await asyncio.sleep(every)


# ---------------------------------------------------------------- log records

_CHAOS = re.compile(r"chaos (\S+) ?(.*)$")


def chaos_line(line: str) -> tuple[str, list[str], float] | None:
    """``(what, words, unix time)`` of a line printed by the project's Lua, else None."""
    try:
        data = json.loads(line)
        msg, at = data["msg"], datetime.fromisoformat(data["ts"]).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    match = _CHAOS.search(msg) if isinstance(msg, str) else None
    return (match.group(1), match.group(2).split(" "), at) if match else None


@dataclass(frozen=True, slots=True)
class Record:
    inc: Incarnation
    lineno: int
    at: float
    level: str
    logger: str
    msg: str

    @property
    def where(self) -> str:
        return f"{self.inc.log_path.name}:{self.lineno}"


def read_records(inc: Incarnation) -> tuple[list[Record], int]:
    """Every JSON record of an incarnation's log, and the count of lines that were not."""
    records, other = [], 0
    with open(inc.log_path, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            try:
                data = json.loads(line)
                at = datetime.fromisoformat(data["ts"]).timestamp()
                records.append(Record(inc, lineno, at, str(data.get("level", "")), str(data.get("logger", "")),
                                      str(data.get("msg", ""))))
            except (ValueError, KeyError, TypeError, AttributeError):
                other += 1
    return records, other


# ---------------------------------------------------------------- chaos

@dataclass
class Chaos:
    """The chaos loop's settings and what it did."""

    rng: random.Random
    flood_size: int
    kinds: list[str]  # which events to draw from: node, nats, flood
    node_kills: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    floods: list[tuple[float, str, int]] = field(default_factory=list)  # (at, node, published)


async def chaos_loop(chaos: Chaos, timeline: Timeline, cluster: NatsCluster, nodes: Nodes,
                     flooder: nats.NATS, until: float) -> None:
    """One event at a time, with random gaps, until ``until`` (monotonic)."""
    rng = chaos.rng
    while time.monotonic() < until:
        await asyncio.sleep(min(rng.uniform(3.0, 10.0), max(until - time.monotonic(), 0.0)))
        if time.monotonic() >= until:
            break
        weights = {"node": 0.35, "nats": 0.35, "flood": 0.3}
        what = rng.choices(chaos.kinds, weights=[weights[k] for k in chaos.kinds])[0]
        if what == "node":
            name = rng.choice(NODES)
            inc = await nodes.kill(name)
            timeline.log("kill-node", f"kill -9 node {inc.label} (pid {inc.pid})")
            chaos.node_kills[name].append(inc.killed_at or time.time())
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            new = await nodes.start(name)
            timeline.log("start-node", f"node {new.label} (pid {new.pid}) running again")
        elif what == "nats":
            i = rng.randrange(len(cluster.ports))
            pid = await cluster.kill(i)
            timeline.log("kill-nats", f"kill -9 nats-server s{i + 1} (pid {pid}, port {cluster.ports[i][0]})")
            await asyncio.sleep(rng.uniform(1.0, 8.0))
            server = await cluster.start(i)
            timeline.log("start-nats", f"nats-server s{i + 1} (pid {server.pid}) listening again")
            routed = await cluster.wait_routed(15.0)
            timeline.log("nats-routed" if routed else "nats-unrouted",
                         f"s{i + 1}: {'routes to both others again' if routed else 'not routed after 15s'}")
        else:
            name = rng.choice(sorted(nodes.sponges))
            await flood(chaos, timeline, flooder, name, nodes.sponges[name])


async def flood(chaos: Chaos, timeline: Timeline, flooder: nats.NATS, node: str, sponge: str) -> None:
    uid = sponge.rstrip("}").rpartition("|")[2]
    subject = f"mw.p.{node}.{uid}.{SPONGE_TOPIC}"
    started = timeline.log("flood", f"{chaos.flood_size} messages at {sponge} ({subject})")
    published = 0
    try:
        for i in range(chaos.flood_size):
            await flooder.publish(subject, b'{"flood": %d}' % i)
            published += 1
        await flooder.flush(timeout=10)
    except (nats.errors.Error, TimeoutError) as err:  # a server killed under us: count what left
        timeline.log("flood-error", f"after {published} publishes: {err!r}")
    chaos.floods.append((started, node, published))
    timeline.log("flood-done", f"{published} published in {time.time() - started:.2f}s")


class DeadLetters:
    """Counts what reaches ``mw.dlq.>`` per node and reason; stream messages kept apart."""

    def __init__(self) -> None:
        self.by_node_reason: Counter[tuple[str, str]] = Counter()
        self.floods: Counter[str] = Counter()  # node -> dead letters sent from outside (no Mw-From)
        self.stream: list[tuple[str, str, object, str]] = []  # (node, sender, payload, reason)

    async def on_message(self, msg: Msg) -> None:
        node = msg.subject.rpartition(".")[2]
        headers = msg.headers or {}
        reason = headers.get("Mw-Dlq-Reason", "?")
        sender = headers.get("Mw-From", "")
        self.by_node_reason[(node, _reason_class(reason))] += 1
        if not sender:
            self.floods[node] += 1
        else:  # a process's message, not a flood from outside
            try:
                payload: object = msgpack.unpackb(msg.data)
            except (ValueError, msgpack.ExtraData) as err:
                payload = f"<undecodable: {err}>"
            self.stream.append((node, sender, payload, reason))


def _reason_class(reason: str) -> str:
    """A reason without the numbers and names that differ per message."""
    return re.sub(r"\{[^}]*\}|\b\d+\b", "#", reason)[:80]


# ---------------------------------------------------------------- the end of the run

class EndWatch:
    """Follows the running incarnations' logs at the end of the run: which receiver is
    current on each node, which (sender, receiver) pairs have sent since a moment, what
    each stopped sender reports as its last seq, and what each receiver got last."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.tails = {inc.label: LogTail(inc.log_path) for inc in nodes.current.values()}
        self.receiver: dict[str, str] = {}  # node -> latest rx pid
        self.last_send: dict[tuple[str, str], float] = {}  # (sender, receiver) -> time of the last send
        self.stopped: dict[str, dict[str, int]] = {}  # sender -> receiver -> last seq sent
        self.got: dict[tuple[str, str], int] = {}  # (receiver, sender) -> last seq received

    def poll(self) -> None:
        for label, tail in self.tails.items():
            node = label.partition("#")[0]
            for line in tail.new_lines():
                record = chaos_line(line)
                if record is None:
                    continue
                what, words, at = record
                if what == "rx-ready":
                    self.receiver[node] = words[0]
                elif what == "tx" and len(words) == 3:
                    self.last_send[(words[0], words[1])] = at
                elif what == "rx" and len(words) == 3 and words[2].isdigit():
                    self.got[(words[0], words[1])] = int(words[2])
                elif what == "tx-stopped":
                    pairs = (w.partition("=") for w in words[1:])
                    self.stopped[words[0]] = {rx: int(seq) for rx, _, seq in pairs if seq.isdigit()}

    def unsent(self, since: float) -> list[str]:
        """(sender -> receiver) pairs between current processes with no send since ``since``."""
        return [f"{sender} -> {rx}" for node, sender in sorted(self.nodes.senders.items())
                for other, rx in sorted(self.receiver.items())
                if other != node and self.last_send.get((sender, rx), 0.0) < since]

    def behind(self) -> list[str]:
        """Senders not yet stopped, and current receivers short of their sender's last seq."""
        current = set(self.receiver.values())
        out = [f"{sender} not stopped" for sender in sorted(self.nodes.senders.values())
               if sender not in self.stopped]
        for sender, lasts in sorted(self.stopped.items()):
            out += [f"{rx} got {self.got.get((rx, sender), 0)} of {seq} from {sender}"
                    for rx, seq in sorted(lasts.items()) if rx in current and self.got.get((rx, sender), 0) < seq]
        return out

    async def until(self, pending: Callable[[], list[str]], timeout: float) -> list[str]:
        """Poll the logs until ``pending()`` is empty or ``timeout``; what is still pending."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            left = pending()
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.1)


async def settle_and_drain(timeline: Timeline, nodes: Nodes, control: nats.NATS) -> tuple[float, list[str]]:
    """Wait until every current sender sends to every other node's current receiver,
    then tell the senders to stop and wait until the receivers caught up. Returns the
    time the stop was sent and the (sender -> receiver) pairs that never flowed."""
    watch = EndWatch(nodes)
    since = time.time()
    unsettled = await watch.until(lambda: watch.unsent(since), 30.0)
    timeline.log("settled" if not unsettled else "not-settled",
                 "every sender sends to every other node's receiver" if not unsettled else
                 f"no send within 30s: {'; '.join(unsettled)}")
    stop_sent = timeline.log("stop-senders", ", ".join(sorted(nodes.senders.values())))
    for node, sender in nodes.senders.items():
        uid = sender.rstrip("}").rpartition("|")[2]
        await control.publish(f"mw.p.{node}.{uid}.stop", b"{}")
    await control.flush(timeout=5)
    left = await watch.until(watch.behind, 20.0)
    timeline.log("drained" if not left else "drain-timeout",
                 "senders stopped, receivers caught up" if not left else "; ".join(left))
    return stop_sent, unsettled


# ---------------------------------------------------------------- checks

@dataclass
class Verdict:
    name: str
    ok: bool
    lines: list[str] = field(default_factory=list)


@dataclass
class ProcessInfo:
    pid: str
    role: str
    inc: Incarnation
    died: bool  # its node was killed, or its service started a new one on the same node


def collect(incarnations: list[Incarnation]) -> tuple[dict[str, list[Record]], int]:
    """Every incarnation's records by label; the count of non-JSON lines."""
    records, other = {}, 0
    for inc in incarnations:
        records[inc.label], bad = read_records(inc)
        other += bad
    return records, other


def processes(incarnations: list[Incarnation], records: dict[str, list[Record]]) -> dict[str, ProcessInfo]:
    found: dict[str, ProcessInfo] = {}
    for inc in incarnations:
        roles: dict[str, list[str]] = defaultdict(list)
        for record in records[inc.label]:
            parsed = _chaos_msg(record.msg)
            if parsed and parsed[0].endswith("-ready"):
                roles[parsed[0]].append(parsed[1][0])
        for role, pids in roles.items():
            for k, pid in enumerate(pids):
                found[pid] = ProcessInfo(pid, role.removesuffix("-ready"), inc,
                                         died=inc.killed_at is not None or k < len(pids) - 1)
    return found


def _chaos_msg(msg: str) -> tuple[str, list[str]] | None:
    match = _CHAOS.search(msg)
    return (match.group(1), match.group(2).split(" ")) if match else None


@dataclass
class Stream:
    sender: str
    receiver: str
    sent: list[tuple[int, Record]] = field(default_factory=list)
    received: list[tuple[int, Record]] = field(default_factory=list)
    downs: list[Record] = field(default_factory=list)  # the sender's monitor EXITs for the receiver


def check_streams(timeline: Timeline, records: dict[str, list[Record]], procs: dict[str, ProcessInfo],
                  stop_sent: float, dead_letters: DeadLetters) -> tuple[Verdict, Verdict, list[tuple[float, Record]]]:
    """Exactly once and in order between processes that both stayed alive; every loss
    explained. Returns the stayed-alive verdict, the explained-losses verdict, and each
    message's latency (seconds from the sender's print to the receiver's) with its
    receiver's record."""
    streams: dict[tuple[str, str], Stream] = {}

    def stream(sender: str, receiver: str) -> Stream:
        return streams.setdefault((sender, receiver), Stream(sender, receiver))

    stopped: set[str] = set()
    for label, recs in records.items():
        for record in recs:
            parsed = _chaos_msg(record.msg)
            if parsed is None:
                continue
            what, words = parsed
            if what == "tx" and len(words) == 3:
                stream(words[0], words[1]).sent.append((int(words[2]), record))
            elif what == "rx" and len(words) == 3 and words[2].isdigit():
                stream(words[1], words[0]).received.append((int(words[2]), record))
            elif what == "tx-down":
                stream(words[0], words[1]).downs.append(record)
            elif what == "tx-stopped":
                stopped.add(words[0])
    dead_lettered = {(sender, payload[0] if isinstance(payload, list) and payload else payload)
                     for _, sender, payload, _ in dead_letters.stream}

    alive = Verdict("exactly once, in order, between processes that both stayed alive", True)
    explained = Verdict("every loss explained (a monitor EXIT the sender saw, or a death), on streams "
                        "a kill cut", True)
    tallies: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}  # by "both stayed alive"
    latencies: list[tuple[float, Record]] = []
    alive_streams = 0
    for (sender, receiver), s in sorted(streams.items()):
        s_info, r_info = procs.get(sender), procs.get(receiver)
        both_alive = bool(s_info and r_info and not s_info.died and not r_info.died)
        sender_died = bool(s_info and s_info.died)
        receiver_died = bool(r_info and r_info.died)
        tally = tallies[both_alive]
        alive_streams += both_alive
        problems: list[str] = []
        seqs = [seq for seq, _ in s.received]
        if len(set(seqs)) != len(seqs):
            dupes = sorted(seq for seq, n in Counter(seqs).items() if n > 1)
            problems.append(f"duplicates {dupes[:10]}")
        if any(b <= a for a, b in zip(seqs, seqs[1:])):
            first = next(i for i, (a, b) in enumerate(zip(seqs, seqs[1:])) if b <= a)
            problems.append(f"out of order: {seqs[first]} then {seqs[first + 1]} at {s.received[first + 1][1].where}")
        sent_index = {seq: i for i, (seq, _) in enumerate(s.sent)}
        max_sent = s.sent[-1][0] if s.sent else 0
        # A sender killed between its send and its print: the seq arrived but was never logged.
        phantom = [seq for seq in seqs if seq not in sent_index and not (sender_died and seq > max_sent)]
        if phantom:
            problems.append(f"received but never sent: {phantom[:10]}")
        tally["sent"] += len(s.sent)
        tally["arrived"] += len(set(seqs))
        received = set(seqs)
        sent_at = {seq: tx.at for seq, tx in s.sent}
        latencies += [(rx.at - sent_at[seq], rx) for seq, rx in s.received if seq in sent_at]
        for seq, tx in s.sent:
            if seq in received:
                continue
            if sender not in stopped and not sender_died and tx.at > stop_sent - 2.0:
                tally["in flight when the run ended (the sender never stopped)"] += 1
                continue
            # The next message of this stream that did arrive: a loss before it is a hole.
            later = next((r for r in s.received if r[0] > seq), None)
            later_tx = s.sent[sent_index[later[0]]][1] if later and later[0] in sent_index else None
            down = next((d for d in s.downs if d.lineno > tx.lineno
                         and (later_tx is None or d.lineno < later_tx.lineno)), None)
            if down is not None:
                tally["lost, then the sender's monitor got EXIT"] += 1
                continue
            if (sender, seq) in dead_lettered:
                tally["DEAD-LETTERED"] += 1
                problems.append(f"seq {seq} sent at {timeline.rel(tx.at)} ({tx.where}) was dead-lettered")
                continue
            if later is None and receiver_died:
                tally["lost, the receiver died"] += 1
                continue
            if later is None and sender_died:
                tally["lost, the sender died"] += 1
                continue
            tally["UNEXPLAINED loss"] += 1
            hole = f" (a hole: seq {later[0]} arrived after it)" if later else ""
            problems.append(f"seq {seq} sent at {timeline.rel(tx.at)} ({tx.where}) never arrived{hole}")
        # A receiver killed with its node while its sender lived on: the sender's monitor
        # must have fired (with "node down"), or the sender would wait on it for ever.
        killed = r_info.inc.killed_at if r_info else None
        if killed is not None and s.sent and not s.downs and (
                not sender_died or (s_info and s_info.inc.killed_at or 0.0) > killed + LATE_DOWN):
            tally["MONITOR NEVER FIRED"] += 1
            problems.append(f"the receiver's node was killed at {timeline.rel(killed)} "
                            "but the sender's monitor never got EXIT")
        if problems:
            verdict = alive if both_alive else explained
            verdict.ok = False
            status = "both stayed alive" if both_alive else ", ".join(
                f"{role} {fate(info, timeline)}" for role, info in (("sender", s_info), ("receiver", r_info)))
            verdict.lines.append(f"stream {sender} -> {receiver} ({status}; sent {len(s.sent)}, "
                                 f"received {len(seqs)}):")
            verdict.lines += [f"    {problem}" for problem in problems[:6]]
            if len(problems) > 6:
                verdict.lines.append(f"    ... and {len(problems) - 6} more")
            first_loss = next((tx for seq, tx in s.sent if seq not in received), None)
            if first_loss is not None:
                verdict.lines += [f"    harness event near the first loss: {e}"
                                  for e in timeline.around(first_loss.at)]
                labels = {info.inc.label for info in (s_info, r_info) if info is not None}
                verdict.lines += [f"    node log near the first loss: {line}"
                                  for line in warnings_near(timeline, records, labels, first_loss.at)]
    alive.lines.insert(0, f"{alive_streams} streams: " + "; ".join(f"{k}: {v}" for k, v in tallies[True].items()))
    explained.lines.insert(0, f"{len(streams) - alive_streams} streams with a sender or receiver that died: "
                           + "; ".join(f"{k}: {v}" for k, v in tallies[False].items()))
    return alive, explained, latencies


def fate(info: ProcessInfo | None, timeline: Timeline) -> str:
    """How a process ended, for a stream's heading."""
    if info is None:
        return "never seen starting"
    if info.inc.killed_at is not None:
        return f"killed with {info.inc.label} at {timeline.rel(info.inc.killed_at)}"
    return "restarted by its service" if info.died else "alive to the end"


def warnings_near(timeline: Timeline, records: dict[str, list[Record]], labels: set[str], at: float,
                  before: float = 3.0, after: float = 3.0, limit: int = 8) -> list[str]:
    """The warnings and errors the incarnations ``labels`` logged around ``at``."""
    found = [r for label in sorted(labels) for r in records.get(label, [])
             if at - before <= r.at <= at + after and r.level in ("warning", "error")]
    return [f"{timeline.rel(r.at)} {r.where} {r.logger}: {r.msg[:160]}"
            for r in sorted(found, key=lambda r: r.at)[:limit]]


def check_node_downs(timeline: Timeline, records: dict[str, list[Record]], incarnations: list[Incarnation],
                     procs: dict[str, ProcessInfo], kills: dict[str, list[float]],
                     shutdown_at: float) -> tuple[Verdict, list[float], list[float]]:
    """Each "node X is down" line must follow a kill of X that this observer has not
    already reported, and no monitor may fire "node down" for a process whose node was
    not killed. Returns the verdict, the seconds from each kill to the node-down lines
    about it, and the seconds from each kill to the EXITs senders' monitors got for it."""
    verdict = Verdict("no false node-down between nodes that stayed up", True)
    detection: list[float] = []
    pattern = re.compile(r"node (\S+) is down: (.*)$")
    true_downs = 0
    for inc in incarnations:
        reported: set[tuple[str, float]] = set()
        for record in records[inc.label]:
            match = pattern.search(record.msg)
            if match is None or record.at >= shutdown_at:
                continue
            peer, reason = match.groups()
            # The latest kill of that node before this line, not yet reported by this
            # observer, which this incarnation could have heard of (it was running then).
            kill = next((k for k in reversed(kills.get(peer, [])) if k <= record.at), None)
            if (kill is not None and (peer, kill) not in reported and kill >= inc.started_at - 1.0
                    and record.at - kill <= LATE_DOWN):
                reported.add((peer, kill))
                detection.append(record.at - kill)
                true_downs += 1
                continue
            verdict.ok = False
            verdict.lines.append(f"{inc.label} at {timeline.rel(record.at)} ({record.where}): "
                                 f"\"node {peer} is down: {reason}\" but {peer} was not killed then")
            verdict.lines += [f"    harness event before it: {e}" for e in timeline.around(record.at, 15.0, 0.5)]
    # What processes saw: a sender's monitor fired with "node down" for a receiver whose
    # node was never killed (the consequence, in Lua, of a false node-down somewhere).
    false_exits = []
    monitor_latency: list[float] = []  # from a kill to the EXIT a sender's monitor got for it
    for recs in records.values():
        for record in recs:
            parsed = _chaos_msg(record.msg)
            if parsed is None or parsed[0] != "tx-down" or record.at >= shutdown_at:
                continue
            receiver, reason = parsed[1][1], " ".join(parsed[1][2:])
            info = procs.get(receiver)
            if "node down" in reason and info is not None and info.inc.killed_at is None:
                false_exits.append(record)
            elif info is not None and info.inc.killed_at is not None:
                monitor_latency.append(record.at - info.inc.killed_at)
    if false_exits:
        verdict.ok = False
        verdict.lines.append(f"{len(false_exits)} monitor EXITs \"node down\" for a receiver whose node was never "
                             "killed, e.g.:")
        verdict.lines += [f"    {timeline.rel(r.at)} {r.where}: {r.msg[r.msg.find('chaos '):][:200]}"
                          for r in false_exits[:6]]
    verdict.lines.insert(0, f"{true_downs} node-down lines follow one of the "
                            f"{sum(len(v) for v in kills.values())} node kills (each seen by up to 2 other nodes)")
    return verdict, detection, monitor_latency


def check_crashes(timeline: Timeline, records: dict[str, list[Record]], shutdown_at: float) -> Verdict:
    """The project's processes loop for ever: any exit before the shutdown is a crash
    (its service restarts it, and its streams end there)."""
    verdict = Verdict("no process of the chaos project crashed", True)
    for recs in records.values():
        for record in recs:
            if (record.logger == "moonwire.services" and re.match(r"service \S+ failed", record.msg)
                    and record.at < shutdown_at):
                verdict.ok = False
                verdict.lines.append(f"{timeline.rel(record.at)} {record.where}: {record.msg[:240]}")
    return verdict


def check_memory(incarnations: list[Incarnation], max_rss: int) -> Verdict:
    verdict = Verdict(f"RSS per node bounded (every sample under {max_rss // 2**20} MiB)", True)
    for name in NODES:
        samples = [(t, v) for inc in incarnations if inc.node == name for t, v in inc.rss]
        if not samples:
            continue
        values = [v for _, v in samples]
        mib = [v / 2**20 for v in values]
        verdict.lines.append(f"{name}: min {min(mib):6.1f}  max {max(mib):6.1f}  last {mib[-1]:6.1f} MiB"
                             f"  ({len(values)} samples, {sum(1 for i in incarnations if i.node == name)}"
                             " incarnations)")
        if max(values) > max_rss:
            verdict.ok = False
            verdict.lines.append(f"    {name} went over the bound")
    return verdict


@dataclass
class RunFacts:
    """What the checks read besides the node logs; saved as ``run.json`` in the work dir."""

    timeline: Timeline
    incarnations: list[Incarnation]
    node_kills: dict[str, list[float]]
    floods: list[tuple[float, str, int]]
    dead_letters: DeadLetters
    stop_sent: float
    shutdown_at: float
    unsettled: list[str]  # (sender -> receiver) pairs that did not flow again after the chaos

    def save(self, path: Path) -> None:
        dl = self.dead_letters
        path.write_text(json.dumps({
            "t0": self.timeline.t0, "events": self.timeline.events,
            "incarnations": [{**dataclasses.asdict(inc), "log_path": inc.log_path.name} for inc in self.incarnations],
            "node_kills": self.node_kills, "floods": self.floods, "stop_sent": self.stop_sent,
            "shutdown_at": self.shutdown_at, "unsettled": self.unsettled,
            "dead_letters": {"by_node_reason": [[n, r, c] for (n, r), c in dl.by_node_reason.items()],
                             "floods": dl.floods, "stream": dl.stream},
        }, default=str))

    @classmethod
    def load(cls, root: Path) -> RunFacts:
        data = json.loads((root / "run.json").read_text())
        timeline = Timeline(data["t0"], [tuple(e) for e in data["events"]])
        incarnations = [Incarnation(**{**inc, "log_path": root / "logs" / inc["log_path"],
                                       "rss": [tuple(x) for x in inc["rss"]]}) for inc in data["incarnations"]]
        dl = DeadLetters()
        dl.by_node_reason.update({(n, r): c for n, r, c in data["dead_letters"]["by_node_reason"]})
        dl.floods.update(data["dead_letters"]["floods"])
        dl.stream = [tuple(x) for x in data["dead_letters"]["stream"]]
        return cls(timeline, incarnations, data["node_kills"], [tuple(f) for f in data["floods"]], dl,
                   data["stop_sent"], data["shutdown_at"], data.get("unsettled", []))


VERDICT_KEYS = ("exactly_once", "losses_explained", "no_false_node_down", "streams_flow_again", "memory", "no_crash")


def summarize(facts: RunFacts, max_rss: int, figures: Figures) -> bool:
    """Check the invariants on a finished run, print the results; True when all held."""
    timeline, incarnations, dead_letters = facts.timeline, facts.incarnations, facts.dead_letters
    records, other_lines = collect(incarnations)
    procs = processes(incarnations, records)
    alive, explained, latencies = check_streams(timeline, records, procs, facts.stop_sent, dead_letters)
    downs, detection, monitor_latency = check_node_downs(timeline, records, incarnations, procs, facts.node_kills, facts.shutdown_at)
    memory = check_memory(incarnations, max_rss)
    crashes = check_crashes(timeline, records, facts.shutdown_at)
    flowing = Verdict("after the chaos, every sender sends to every other node's receiver again",
                      not facts.unsettled, [f"no send within 30 s: {pair}" for pair in facts.unsettled])
    print("\n==== chaos run: results ====")
    kinds = Counter(kind for _, kind, _ in timeline.events)
    figures.add("events.node_kills", kinds["kill-node"]), figures.add("events.nats_kills", kinds["kill-nats"])
    figures.add("events.floods", kinds["flood"])
    figures.add("events.flood_messages", sum(n for _, _, n in facts.floods))
    print(f"events: {kinds['kill-node']} node kills, {kinds['kill-nats']} NATS server kills, "
          f"{kinds['flood']} floods ({sum(n for _, _, n in facts.floods)} messages published)")
    verdicts = (alive, explained, downs, flowing, memory, crashes)
    for verdict, key in zip(verdicts, VERDICT_KEYS):
        figures.add(f"verdict.{key}", verdict.ok)
        print(f"[{'PASS' if verdict.ok else 'FAIL'}] {verdict.name}")
        for line in verdict.lines[:60]:
            print(f"    {line}")
        if len(verdict.lines) > 60:
            print(f"    ... {len(verdict.lines) - 60} more lines")
    if detection:
        figures.add("detection.p50_s", pct(detection, 0.5)), figures.add("detection.max_s", max(detection))
        figures.add("detection.count", len(detection))
        print(f"node-down detection after kill -9 (heartbeat {HEARTBEAT[0]}, down after {HEARTBEAT[1]}): "
              f"p50 {pct(detection, 0.5):.2f} s, max {max(detection):.2f} s over {len(detection)} observations")
    if latencies:
        values = [v for v, _ in latencies]
        figures.add("latency.p50_ms", pct(values, 0.5) * 1e3), figures.add("latency.p99_ms", pct(values, 0.99) * 1e3)
        figures.add("latency.max_ms", max(values) * 1e3)
        print(f"stream message latency (sender's print to receiver's, ms): p50 {pct(values, 0.5) * 1e3:.1f}, "
              f"p99 {pct(values, 0.99) * 1e3:.1f}, max {max(values) * 1e3:.0f}; the slowest:")
        for value, rx in sorted(latencies, key=lambda x: -x[0])[:3]:
            events = "; ".join(timeline.around(rx.at, 10.0, 0.0)[-3:]) or "no harness event in the 10 s before"
            print(f"    {value * 1e3:.0f} ms, received at {timeline.rel(rx.at)} ({rx.where}); before it: {events}")
    if monitor_latency:
        figures.add("monitor.p50_s", pct(monitor_latency, 0.5)), figures.add("monitor.max_s", max(monitor_latency))
        figures.add("monitor.count", len(monitor_latency))
        print(f"kill -9 to the EXIT a Lua monitor on another node got: p50 {pct(monitor_latency, 0.5):.2f} s, "
              f"max {max(monitor_latency):.2f} s over {len(monitor_latency)} monitors")
    print("floods per node (sponge totals are the last a sponge printed: a killed sponge's last second is "
          "missing):")
    sponge_totals: dict[str, int] = {}
    for recs in records.values():
        for record in recs:
            parsed = _chaos_msg(record.msg)
            if parsed and parsed[0] == "sponge" and len(parsed[1]) == 2:
                sponge_totals[parsed[1][0]] = int(parsed[1][1])
    for name in NODES:
        published = sum(n for _, node, n in facts.floods if node == name)
        delivered = sum(v for pid, v in sponge_totals.items() if pid.startswith("{" + name + "@"))
        lettered = dead_letters.floods[name]
        figures.add(f"floods.{name}.published", published), figures.add(f"floods.{name}.delivered", delivered)
        figures.add(f"floods.{name}.dead_lettered", lettered)
        figures.add(f"floods.{name}.unaccounted", published - delivered - lettered)
        print(f"    {name}: published {published}, delivered to sponges {delivered}, dead-lettered {lettered}, "
              f"not accounted for {published - delivered - lettered}")
    print("dead letters seen on mw.dlq.> (node, reason: count):")
    for (node, reason), count in sorted(dead_letters.by_node_reason.items()):
        print(f"    {node}: {reason}: {count}")
    print(f"    of them stream messages (a process's, not a flood's): {len(dead_letters.stream)}")
    figures.add("dead_letters.stream", len(dead_letters.stream))
    figures.add("dead_letters.by_node_reason", [[n, r, c] for (n, r), c in sorted(dead_letters.by_node_reason.items())])
    undeliverable = Counter(r.inc.node for recs in records.values() for r in recs
                            if r.msg.startswith("undeliverable message"))
    log_mib = {n: sum(i.log_path.stat().st_size for i in incarnations if i.node == n) / 2**20 for n in NODES}
    for n in NODES:
        figures.add(f"undeliverable.{n}", undeliverable.get(n, 0)), figures.add(f"log_mib.{n}", log_mib[n])
    print("undeliverable-message log lines per node: " + ", ".join(
        f"{n}: {undeliverable.get(n, 0)}" for n in NODES))
    print("log size per node: " + ", ".join(f"{n}: {log_mib[n]:.1f} MiB" for n in NODES)
          + f"; {other_lines} non-JSON lines")
    return figures.add("passed", all(verdict.ok for verdict in verdicts))


# ---------------------------------------------------------------- main

async def run_chaos(args: argparse.Namespace, root: Path, figures: Figures) -> bool:
    rng = random.Random(args.seed)
    timeline = Timeline()
    cluster = NatsCluster(root / "nats")
    project = write(root / "project", project_files(NODES, args.period_ms))
    nodes = Nodes(root, project, cluster.urls)
    chaos = Chaos(rng, args.flood_size, args.events.split(","))
    dead_letters = DeadLetters()
    watcher: nats.NATS | None = None
    flooder: nats.NATS | None = None
    try:
        for i in range(len(cluster.ports)):
            await cluster.start(i)
        if not await cluster.wait_routed(30.0):
            raise HarnessError("the NATS servers did not route to each other within 30s")
        timeline.log("nats", f"cluster up: {', '.join(cluster.urls)}")
        async def client_error(err: Exception) -> None:
            timeline.log("script-nats", f"error: {err!r}")

        async def client_reconnected() -> None:
            timeline.log("script-nats", "reconnected")

        options = {"servers": cluster.urls, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.2,
                   "error_cb": client_error, "reconnected_cb": client_reconnected}
        watcher = await nats.connect(name="chaos-watcher", **options)
        flooder = await nats.connect(name="chaos-flooder", **options)
        await watcher.subscribe("mw.dlq.>", cb=dead_letters.on_message)
        await watcher.flush()
        for name in NODES:
            inc = await nodes.start(name)
            timeline.log("start-node", f"node {inc.label} (pid {inc.pid}) running")
        until = time.monotonic() + args.minutes * 60
        timeline.log("chaos", f"for {args.minutes} min, seed {args.seed}")
        async with asyncio.TaskGroup() as group:
            sampler = group.create_task(sample_memory(nodes), name="rss-sampler")
            await chaos_loop(chaos, timeline, cluster, nodes, flooder, until)
            timeline.log("chaos", "over; waiting for every stream to flow")
            stop_sent, unsettled = await settle_and_drain(timeline, nodes, watcher)
            sampler.cancel()
        shutdown_at = timeline.log("shutdown", "SIGTERM to every node")
        await nodes.stop_all()
        facts = RunFacts(timeline, nodes.incarnations, chaos.node_kills, chaos.floods, dead_letters,
                         stop_sent, shutdown_at, unsettled)
        facts.save(root / "run.json")
        return summarize(facts, args.max_rss_mb * 2**20, figures)
    finally:
        await nodes.kill_all()
        for client in (watcher, flooder):
            if client is not None and not client.is_closed:
                try:
                    await client.close()
                except Exception as err:  # noqa: BLE001 - the servers may be gone; go on stopping them
                    print(f"closing the script's NATS connection: {err!r}")
        await cluster.stop_all()


async def bounded(run_: Awaitable[bool], seconds: float) -> bool:
    """The run, cut off after ``seconds`` or at SIGTERM (Ctrl-C cancels it the same
    way); either way its ``finally`` stops everything it started."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with asyncio.timeout(seconds):
            return await run_
    except TimeoutError:
        raise HarnessError(f"the run did not end within {seconds:.0f}s") from None


def tree_version() -> str:
    """What was run: the commit of the moonwire being imported, and how many files differ
    from it (other work in progress)."""
    repo = Path(moonwire_node.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    changed = len(dirty.stdout.splitlines())
    if head.returncode != 0:
        return f"from {repo} (not a git checkout)"
    return f"{head.stdout.strip()[:70]}" + (f" + {changed} modified files" if changed else "")


PARSER = parser(__doc__.split("\n\n")[0])
PARSER.add_argument("--minutes", type=float, default=2.0, help="how long the chaos lasts (default 2)")
PARSER.add_argument("--seed", type=int, default=None, help="random seed (default: chosen and printed)")
PARSER.add_argument("--period-ms", type=int, default=100, help="each sender's pause between rounds (100)")
PARSER.add_argument("--flood-size", type=int, default=100_000, help="messages per flood (100000)")
PARSER.add_argument("--events", default="node,nats,flood",
                    help="the kinds of event to draw from, comma-separated (default node,nats,flood)")
PARSER.add_argument("--max-rss-mb", type=int, default=400, help="the memory bound per node (400 MiB)")
PARSER.add_argument("--keep", action="store_true", help="keep the work dir (logs) even when all passed")
PARSER.add_argument("--analyze", type=Path, metavar="WORK_DIR",
                    help="start nothing: check the logs of a kept run again and print the results")


def main() -> None:
    args = PARSER.parse_args()
    figures = Figures(args)
    if args.analyze is not None:
        if not (args.analyze / "run.json").is_file():
            PARSER.error(f"{args.analyze} has no run.json: not the work dir of a finished run")
        ok = summarize(RunFacts.load(args.analyze), args.max_rss_mb * 2**20, figures)
        print(f"chaos run {'PASSED' if ok else 'FAILED'}")
        figures.emit()
        sys.exit(0 if ok else 1)
    if not args.events or not set(args.events.split(",")) <= {"node", "nats", "flood"}:
        PARSER.error("--events takes a comma-separated subset of node,nats,flood")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    root = Path(tempfile.mkdtemp(prefix="moonwire-chaos-"))
    print(f"moonwire {tree_version()}; {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"work dir {root} (logs in {root / 'logs'}), seed {args.seed}", flush=True)
    ok = False
    try:
        ok = run(lambda: bounded(run_chaos(args, root, figures), args.minutes * 60 + 300), args.loop)
    except HarnessError as err:
        print(f"harness error: {err}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
    finally:
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    print(f"chaos run {'PASSED' if ok else 'FAILED'}")
    figures.emit()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
