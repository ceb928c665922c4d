"""Singleton services (``lifecycle.placement: cluster``, issue 16 item 3) across real node
OS processes on a nats-server of the test's own: at most one instance in the cluster at
any instant, watched from outside every 50 ms through ``kill -9`` of its node, a clean
stop of its node, an operator deleting its lock and its node frozen past the node-down
window; messages to its cluster name (``mw.n.<name>.<topic>``) before and after each
move; and the rules that need no cluster (lock names, loader errors, no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from moonwire.broker import Client, PidAllocator, Subjects
from moonwire.node import ServerProcess, free_port, load_project, start_nats
from moonwire.node._runtime import Runtime
from moonwire.node.cluster import Cluster
from moonwire.node.processes._singleton import lock_name, service_of
from moonwire.node.processes._supervisor import Service, ServiceState
from moonwire.node.project import ProjectInvalid
from support import LocalRuntime, NodeProcess, wait_until, write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")
WINDOW = 1.0
"""``heartbeat.down_after`` above."""
DELAY = 0.3
"""The singleton's ``restart.initial_delay``: a takeover starts it after this."""
ENTRY = "app:single"
LOCK = "service.app/single.svc"

PROJECT = {
    "_index.yaml": f"""
        namespace: app
        entries:
          - {{name: host, kind: process.host}}
          - {{name: single, kind: process.lua, source: file://single.lua, modules: [json, system, time]}}
          - name: single.svc
            kind: process.service
            process: single
            host: host
            lifecycle:
              auto_start: true
              placement: cluster
              name: the-one
              stop_timeout: 2s
              restart: {{initial_delay: {int(DELAY * 1000)}ms}}
    """,
    # Says when it starts and when it is cancelled (a clean stop), with the wall clock,
    # and prints each message it gets.
    "single.lua": """
        local json, system, time = require("json"), require("system"), require("time")
        return function()
          local node = system.node.id()
          print("singleton up on " .. node .. " at " .. tostring(time.now():unix_nano()))
          local inbox, events = process.inbox(), process.events()
          while true do
            local r = channel.select({ inbox:case_receive(), events:case_receive() })
            if r.channel == events then
              print("singleton down on " .. node .. " at " .. tostring(time.now():unix_nano()))
              return "stopped"
            end
            print("singleton got " .. r.value:topic() .. " " .. json.encode(r.value:payload():data()) .. " on " .. node)
          end
        end""",
}


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A nats-server for this test alone: what its killed nodes leave in the buckets is
    nobody else's to clean up."""
    server = await start_nats(tmp_path / "nats", port=free_port())
    yield server
    await server.stop()


async def _nodes(tmp_path: Path, url: str, spawn_node: Any, names: tuple[str, ...]) -> dict[str, NodeProcess]:
    project = write_project(tmp_path / "project", PROJECT)
    started = await asyncio.gather(*(spawn_node(project, name, nats_url=url, args=FAST_LIVENESS) for name in names))
    return dict(zip(names, started))


class Census:
    """Counts the singleton's instances on every node every 50 ms from outside: a
    ``mw.nodes.ps`` survey, read until each node in ``live`` has answered (or 0.5 s).
    A process record is the ground truth of "an instance runs there"; a sample is a
    snapshot per node, taken within a millisecond or so of the others."""

    def __init__(self, nc: nats.NATS, live: set[str]) -> None:
        self.nc = nc
        self.live = set(live)
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.changed = asyncio.Condition()

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            counts = await self._survey()
            async with self.changed:
                self.samples.append((started, counts))
                self.changed.notify_all()
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - started)))  # the observation period

    async def _survey(self) -> dict[str, int]:
        answers: dict[str, dict[str, Any]] = {}
        complete = asyncio.Event()

        async def on_answer(msg: Any) -> None:
            result = json.loads(msg.data).get("result") or {}
            answers[result.get("node", "?")] = result
            if self.live <= set(answers):
                complete.set()

        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(inbox, cb=on_answer)
        try:
            await self.nc.publish("mw.nodes.ps", b'{"limit": 10000}', reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(complete.wait(), 0.5)
        finally:
            await subscription.unsubscribe()
        return {node: sum(1 for p in answer.get("list", []) if p.get("entry") == ENTRY)
                for node, answer in answers.items()}

    async def wait_for(self, check: Callable[[dict[str, int]], bool], timeout: float, what: str) -> dict[str, int]:
        """The first sample from now on for which ``check`` holds."""
        start = len(self.samples)
        async with self.changed:
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        for _, counts in self.samples[start:]:
                            if check(counts):
                                return counts
                        start = len(self.samples)
                        await self.changed.wait()
            except TimeoutError:
                raise AssertionError(f"not within {timeout}s: {what}; last samples {self.samples[-5:]}") from None

    def most(self) -> int:
        return max(sum(counts.values()) for _, counts in self.samples)


def _running_on(counts: dict[str, int]) -> list[str]:
    return sorted(node for node, count in counts.items() if count)


def _only_on(node: str | None = None) -> Callable[[dict[str, int]], bool]:
    return lambda counts: sum(counts.values()) == 1 and (node is None or counts.get(node) == 1)


async def _new_line(node: NodeProcess, pattern: str, after: int, timeout: float = 15.0) -> str:
    """The first line matching ``pattern`` that ``node`` printed after its line ``after``."""
    regex = re.compile(pattern)
    async with node._changed:
        try:
            async with asyncio.timeout(timeout):
                while (line := next((x for x in node.lines[after:] if regex.search(x)), None)) is None:
                    await node._changed.wait()
        except TimeoutError:
            raise AssertionError(f"node {node.name} printed no /{pattern}/ within {timeout}s:\n{node.output}") from None
    return line


def _at(line: str) -> float:
    return int(float(line.rsplit(" at ", 1)[1])) / 1e9


async def _first_up(nodes: list[NodeProcess], after: dict[str, int]) -> tuple[str, float]:
    """Which of ``nodes`` printed the next "singleton up" line, and its wall clock."""
    waits = {asyncio.create_task(_new_line(n, r"singleton up on \S+ at", after[n.name])): n.name for n in nodes}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    task = done.pop()
    return waits[task], _at(task.result())


async def _reaches(nc: nats.NATS, nodes: dict[str, NodeProcess], live: set[str], holder: str, body: str) -> None:
    """``mw.n.the-one.ping`` from outside reaches the instance on ``holder`` once every
    live node's replica shows the name there (a replica's change sends no event)."""
    async def everywhere() -> bool:
        for node in live:
            answer = json.loads((await nc.request(f"mw.ctl.{node}.lookup", b'{"name": "the-one"}', timeout=5)).data)
            if not str(answer.get("result", "")).startswith("{" + holder + "@"):
                return False
        return True

    deadline = time.monotonic() + 10
    while not await everywhere():
        assert time.monotonic() < deadline, f"the-one not at {holder} in every replica"
        await asyncio.sleep(0.05)
    await nc.publish("mw.n.the-one.ping", json.dumps(body).encode())
    await nodes[holder].wait_for_line(rf'singleton got ping "{body}" on {holder}', timeout=10)


@contextlib.asynccontextmanager
async def _watched(url: str, live: set[str]) -> AsyncIterator[tuple[nats.NATS, Census]]:
    nc = await nats.connect(url)
    census = Census(nc, live)
    task = asyncio.create_task(census.run())
    try:
        yield nc, census
    finally:
        task.cancel()
        await asyncio.wait([task])
        await nc.close()


async def test_singleton_moves_on_kill_and_clean_stop_never_running_twice(tmp_path: Path, own_server, spawn_node
                                                                          ) -> None:
    nodes = await _nodes(tmp_path, own_server.address, spawn_node, ("ka", "kb", "kc"))
    async with _watched(own_server.address, set(nodes)) as (nc, census):
        first = _running_on(await census.wait_for(_only_on(), 10, "one instance"))[0]
        await _reaches(nc, nodes, census.live, first, "before")

        # kill -9 of its node: another candidate takes over after the node-down window
        # and the restart delay.
        others = [n for name, n in nodes.items() if name != first]
        marks = {n.name: len(n.lines) for n in others}
        census.live.discard(first)
        killed = time.time()
        await nodes[first].kill()
        second, up = await _first_up(others, marks)
        kill_gap = up - killed
        await census.wait_for(_only_on(second), 5, f"the instance on {second} in the census")
        await _reaches(nc, nodes, census.live, second, "after-kill")

        # A clean stop of that node: its instance exits, then the lock goes to the last node.
        third = next(n for n in nodes if n not in (first, second))
        mark = len(nodes[third].lines)
        stopping = asyncio.create_task(nodes[second].stop())
        down = _at(await nodes[second].wait_for_line(r"singleton down on \S+ at"))
        up_third = _at(await _new_line(nodes[third], r"singleton up on \S+ at", mark))
        assert await stopping == 0
        census.live.discard(second)
        stop_gap = up_third - down
        await census.wait_for(_only_on(third), 5, f"the instance on {third} in the census")
        await _reaches(nc, nodes, census.live, third, "after-stop")

    print(f"\nsingleton failover: kill -9 -> running on {second} after {kill_gap:.2f}s (window {WINDOW}s + delay "
          f"{DELAY}s); clean stop -> old exited to new started {stop_gap:.2f}s; {len(census.samples)} samples, "
          f"at most {census.most()} instance(s) at once")
    assert census.most() == 1
    # The census saw it on each node in turn, and saw the gaps: it watched both moves.
    seen = [node for _, counts in census.samples for node in _running_on(counts)]
    assert set(seen) == set(nodes) and sum(1 for _, c in census.samples if not any(c.values())) >= 10
    # Down is declared a window after the last heartbeat, up to one interval (0.2 s)
    # before the kill; then the restart delay.
    assert WINDOW - 0.25 + DELAY <= kill_gap < WINDOW + DELAY + 2.0
    assert DELAY <= stop_gap < DELAY + 1.5, "started only after the old instance exited, and soon after"


async def test_a_singleton_whose_lock_is_lost_stops_at_once(tmp_path: Path, own_server, spawn_node) -> None:
    nodes = await _nodes(tmp_path, own_server.address, spawn_node, ("fa", "fb"))
    async with _watched(own_server.address, set(nodes)) as (nc, census):
        holder = _running_on(await census.wait_for(_only_on(), 10, "one instance"))[0]
        other = next(n for n in nodes if n != holder)

        # An operator deletes the lock: the holder terminates its instance at once and
        # stands by; a candidate takes it (the other node, or this one again).
        marks = {name: len(n.lines) for name, n in nodes.items()}
        kv = await nc.jetstream().key_value("mw_locks")
        await kv.delete(LOCK)
        await _new_line(nodes[holder], r"its lock service.app/single.svc was freed by another node; terminating",
                        marks[holder])
        again, _ = await _first_up(list(nodes.values()), marks)
        await census.wait_for(_only_on(again), 5, "one instance again")

        # Its node frozen past the node-down window (a partition, as far as the others
        # can tell): the other node takes over; the frozen one, resumed, fences at once.
        # While frozen it answers no survey, so its instance (which runs nothing then) is
        # not counted; from the moment it answers again, any sample would show both.
        frozen = again
        other = next(n for n in nodes if n != frozen)
        marks = {name: len(n.lines) for name, n in nodes.items()}
        nodes[frozen].process.send_signal(signal.SIGSTOP)
        census.live.discard(frozen)
        try:
            await _new_line(nodes[other], r"singleton up on \S+ at", marks[other], timeout=10)
        finally:
            nodes[frozen].process.send_signal(signal.SIGCONT)
        census.live.add(frozen)
        await _new_line(nodes[frozen], r"singleton service app:single.svc: .*; terminating its instance",
                        marks[frozen])
        await census.wait_for(_only_on(), 10, "one instance after the frozen node came back")
    print(f"\nfencing: {len(census.samples)} samples, at most {census.most()} instance(s) at once")
    assert census.most() == 1


def test_lock_names_encode_entry_ids_reversibly() -> None:
    for entry_id in ("app:single.svc", "a.b-c:x_y", "ns:.odd", "ns:odd.", "ns:a..b"):
        lock = lock_name(entry_id)
        assert re.fullmatch(r"[-/_=.a-zA-Z0-9]+", lock) and ".." not in lock and not lock.endswith("."), lock
        assert service_of(lock) == entry_id
    assert lock_name("app:single.svc") == LOCK


@pytest.mark.parametrize("lifecycle, message", [
    ("{auto_start: true, name: solo}", "needs placement: cluster"),
    ("{auto_start: true, placement: cluster, name: 'has space'}", "characters a name may not hold"),
    ("{auto_start: true, placement: cluster, name: .dot}", "may not start or end with '.'"),
    ("{auto_start: true, placement: region}", "'node' or 'cluster'"),
])
def test_lifecycle_placement_and_name_errors_name_the_entry(tmp_path: Path, lifecycle: str, message: str) -> None:
    files = dict(PROJECT)
    files["_index.yaml"] = f"""
        namespace: app
        entries:
          - {{name: host, kind: process.host}}
          - {{name: single, kind: process.lua, source: file://single.lua, modules: [json, system, time]}}
          - {{name: single.svc, kind: process.service, process: single, host: host, lifecycle: {lifecycle}}}
    """
    with pytest.raises(ProjectInvalid) as failed:
        load_project(write_project(tmp_path, files))
    (problem,) = failed.value.problems
    assert "app:single.svc" in str(problem) and "lifecycle." in str(problem) and message in str(problem)


async def test_without_a_cluster_placement_cluster_runs_here_with_one_warning(tmp_path: Path, caplog) -> None:
    files = dict(PROJECT)
    files["single.lua"] = "return function() process.inbox():receive() end"
    caplog.set_level(logging.WARNING, "moonwire.services")
    async with LocalRuntime(tmp_path, files) as runtime:
        service = runtime.supervisor.status("app:single.svc")
        assert service.state == ServiceState.RUNNING
        assert runtime.processes.names.get("the-one") == service.pid  # the name is this node's
    warnings = [r.getMessage() for r in caplog.records if "placement: cluster" in r.getMessage()]
    assert len(warnings) == 1 and "app:single.svc" in warnings[0]


# ---------------------------------------------------------------- one event loop, a real cluster
# Runtimes in this process, each with a Cluster of its own on the session's nats-server
# and a prefix of the test's own: the corners a node OS process cannot be steered into
# (its hearing, a stop in the middle of a start, a name someone else holds).


def _project(tmp_path: Path, lua: str, lifecycle: str = "") -> Any:
    files = {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: host, kind: process.host}}
              - {{name: single, kind: process.lua, source: file://single.lua, modules: [system]}}
              - name: single.svc
                kind: process.service
                process: single
                host: host
                lifecycle:
                  auto_start: true
                  placement: cluster
                  name: the-one
                  stop_timeout: 1s
                  restart: {{initial_delay: 100ms, max_attempts: 1}}
                  {lifecycle}
        """,
        "single.lua": lua,
    }
    return load_project(write_project(tmp_path, files))


IDLE = "return function() process.inbox():receive() end"


@contextlib.asynccontextmanager
async def _runtime(url: str, project: Any, node: str, prefix: str,
                   hearing: Callable[[], bool] = lambda: True) -> AsyncIterator[tuple[Runtime, Cluster]]:
    client = Client()
    await client.connect(servers=[url], name=f"test-{node}")
    pids = PidAllocator(node)
    cluster = Cluster(client, client, prefix=prefix, node=node, incarnation=pids.epoch)
    await cluster.start()
    runtime = Runtime(node, project, Subjects(prefix), pids=pids, cluster=cluster, hearing=hearing)
    try:
        await runtime.start()
        yield runtime, cluster
    finally:
        await runtime.stop(2.0)
        await cluster.stop()
        await client.close()


def _prefix() -> str:
    return f"s{time.monotonic_ns() % 10**9}"


async def _in(service: Service, state: ServiceState, timeout: float = 5.0) -> None:
    # A state change sends no event (running/decided are set once): poll with a deadline.
    await wait_until(lambda: service.state == state, timeout, lambda: f"{service.id} {state} (it is {service.state})")


async def test_a_holder_that_cannot_hear_fences_then_takes_it_again(tmp_path: Path, nats_server) -> None:
    hearing = [True]
    project = _project(tmp_path, IDLE)
    async with _runtime(nats_server.address, project, "da", _prefix(), lambda: hearing[0]) as (runtime, cluster):
        service = runtime.supervisor.status("app:single.svc")
        await _in(service, ServiceState.RUNNING)
        first, held = service.pid, cluster.locks.holder(LOCK)
        assert held is not None and held.pid.startswith("{da@supervisor|")
        hearing[0] = False
        fenced = await wait_until(lambda: first not in runtime.processes.records, 1, "the instance terminated")
        assert fenced < 0.3  # checked every 0.1 s
        await _in(service, ServiceState.STANDBY)
        assert service.last_outcome.error.message == "process terminated"
        await wait_until(lambda: cluster.names.lookup("the-one") is None, 2, "its name freed by its exit")
        await asyncio.sleep(0.3)  # deaf for a while: it must not start again meanwhile
        assert service.state == ServiceState.STANDBY and service.pid is None
        hearing[0] = True
        # The lost tenure's lock is freed, a new one taken (a takeover: the restart delay).
        await _in(service, ServiceState.RUNNING)
        assert service.pid != first and cluster.names.lookup("the-one") == service.pid
        assert cluster.locks.holder(LOCK).pid not in (None, held.pid)


async def test_exited_keeps_the_lock_while_failed_hands_it_on(tmp_path: Path, nats_server) -> None:
    prefix = _prefix()
    once = _project(tmp_path / "once", 'return function() return "done" end')
    async with _runtime(nats_server.address, once, "ea", prefix) as (a, a_cluster):
        a_service = a.supervisor.status("app:single.svc")
        await asyncio.wait_for(a_service.settled.wait(), 5)
        assert a_service.state == ServiceState.EXITED and a_service.last_outcome.value == "done"
        async with _runtime(nats_server.address, once, "eb", prefix) as (b, _):
            b_service = b.supervisor.status("app:single.svc")
            await asyncio.sleep(0.5)  # the lock stays with ea: eb stands by, it never starts
            assert b_service.state == ServiceState.STANDBY and a_cluster.locks.holder(LOCK).node == "ea"
    failing = _project(tmp_path / "failing", 'return function() error("broken") end')
    prefix = _prefix()
    async with _runtime(nats_server.address, failing, "fa", prefix) as (a, a_cluster):
        a_service = a.supervisor.status("app:single.svc")
        await asyncio.wait_for(a_service.settled.wait(), 5)
        assert a_service.state == ServiceState.FAILED and len(a_service.restarts) == 1  # one allowed, then it gives up
        await wait_until(lambda: a_cluster.locks.holder(LOCK) is None, 2, "the lock given up for another to try")
        async with _runtime(nats_server.address, failing, "fb", prefix) as (b, _):
            b_service = b.supervisor.status("app:single.svc")
            await asyncio.wait_for(b_service.settled.wait(), 5)
            assert b_service.state == ServiceState.FAILED and len(b_service.restarts) == 1
            assert "broken" in b_service.last_error.message


async def test_a_stop_in_the_middle_of_a_start_leaves_nothing_behind(tmp_path: Path, nats_server) -> None:
    project = _project(tmp_path, IDLE)
    prefix = _prefix()
    for _ in range(5):
        async with _runtime(nats_server.address, project, "sa", prefix) as (runtime, cluster):
            service = runtime.supervisor.status("app:single.svc")
        assert service.state == ServiceState.STOPPED and not runtime.processes.records
        async with _runtime(nats_server.address, project, "sb", prefix) as (_, other):
            # Another node's replica: neither the lock nor the name stayed behind.
            assert other.locks.holder(LOCK) is None and other.names.lookup("the-one") is None


async def test_a_name_still_held_is_tried_again_not_counted_as_a_failure(tmp_path: Path, nats_server) -> None:
    project = _project(tmp_path, IDLE)
    prefix = _prefix()
    # The name is held by a process of another node as this one starts the service.
    client = Client()
    await client.connect(servers=[nats_server.address])
    squatter = Cluster(client, client, prefix=prefix, node="nx", incarnation="1")
    await squatter.start()
    try:
        await squatter.names.register("the-one", "{nx@app:host|1-1}")
        async with _runtime(nats_server.address, project, "nb", prefix) as (runtime, cluster):
            service = runtime.supervisor.status("app:single.svc")
            await wait_until(lambda: cluster.locks.holder(LOCK) is not None, 5, "nb to hold the lock")
            await asyncio.sleep(0.3)  # nb retries the name meanwhile
            assert service.state == ServiceState.STARTING and service.pid is None
            assert await squatter.names.unregister("the-one", "{nx@app:host|1-1}")
            await _in(service, ServiceState.RUNNING)
            assert service.restarts == [] and service.attempts == 0 and service.last_error is None
            assert cluster.names.lookup("the-one") == service.pid
    finally:
        await squatter.stop()
        await client.close()
