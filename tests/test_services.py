"""process.service and the supervisor (wippy-surface §1.8, §3.8): restart with the real
backoff schedule, terminal outcomes, the stable threshold, dependency order, stop
timeouts and node shutdown."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from moonwire.lua import Kind, SpawnRequest
from moonwire.node import RestartPolicy
from moonwire.node.processes._supervisor import ServiceState, backoff_delay
from support import LocalRuntime, process_project, wait_until

FAILS = """return { main = function() error("crash on start") end }"""


def service(name: str, process: str, lifecycle: str, *, input_: str = "[]") -> str:
    body = textwrap.indent(textwrap.dedent(lifecycle).strip(), "    ")
    return (f"- name: {name}\n  kind: process.service\n  process: {process}\n  host: host\n  input: {input_}\n"
            f"  lifecycle:\n{body}\n")


def test_backoff_delay_grows_caps_and_jitters() -> None:
    policy = RestartPolicy(initial_delay="1s", backoff_factor=2.0, max_delay="5s", jitter=0.0)
    assert [backoff_delay(policy, n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittery = RestartPolicy(initial_delay="1s", backoff_factor=2.0, max_delay="90s", jitter=0.1)
    rng = random.Random(7)
    samples = [backoff_delay(jittery, 3, rng) for _ in range(200)]
    assert all(3.6 <= s <= 4.4 for s in samples) and len(set(samples)) > 100


async def test_restarts_follow_the_backoff_schedule_then_give_up(tmp_path: Path) -> None:
    files = process_project({"crash": FAILS}, extra_yaml=service("svc", "crash", """
        auto_start: true
        stable_threshold: 10s
        restart: {initial_delay: 100ms, backoff_factor: 2, jitter: 0, max_attempts: 3}
    """))
    async with LocalRuntime(tmp_path, files) as runtime:
        svc = runtime.supervisor.status("app:svc")
        await svc.settled.wait()
    assert svc.state == ServiceState.FAILED and "crash on start" in svc.last_error.message
    assert [r.delay for r in svc.restarts] == pytest.approx([0.1, 0.2, 0.4])
    starts = [r.started_at for r in svc.restarts]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # Each gap is at least the backoff before it (0.2s, then 0.4s), and grows: not a flat wait.
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[1] > gaps[0] * 1.5


async def test_the_seed_supervision_yaml_restarts_up_to_max_attempts(tmp_path: Path) -> None:
    files = {
        "_index.yaml": """
            version: "1.0"
            namespace: app
            entries:
              - name: host
                kind: process.host
              - name: worker
                kind: process.lua
                source: file://worker.lua
                method: main
              - name: worker.service
                kind: process.service
                process: worker
                host: host
                input: ["x"]
                lifecycle:
                  auto_start: true
                  restart:
                    initial_delay: 50ms
                    max_attempts: 2
        """,
        "worker.lua": """return { main = function(tag) error("worker " .. tag .. " crashed") end }""",
    }
    async with LocalRuntime(tmp_path, files) as runtime:
        svc = runtime.supervisor.status("app:worker.service")
        await svc.settled.wait()
    assert svc.state == ServiceState.FAILED and len(svc.restarts) == 2
    assert "worker x crashed" in svc.last_error.message


async def test_a_normal_return_ends_the_service_without_restart(tmp_path: Path) -> None:
    files = process_project({"once": "return { main = function(a, b) return a + b end }"},
                            extra_yaml=service("svc", "once", "auto_start: true", input_="[2, 3]"))
    async with LocalRuntime(tmp_path, files) as runtime:
        svc = runtime.supervisor.status("app:svc")
        await svc.settled.wait()
    assert svc.state == ServiceState.EXITED and svc.restarts == [] and svc.last_outcome.value == 5


async def test_a_non_retryable_error_is_terminal(tmp_path: Path) -> None:
    files = process_project({"fatal": """
        return { main = function() return nil, errors.new({ message = "bad config", retryable = false }) end }"""},
        extra_yaml=service("svc", "fatal", "auto_start: true"))
    async with LocalRuntime(tmp_path, files) as runtime:
        svc = runtime.supervisor.status("app:svc")
        await svc.settled.wait()
    assert svc.state == ServiceState.FAILED and svc.restarts == [] and svc.last_error.message == "bad config"


async def test_stable_uptime_resets_the_attempt_counter(tmp_path: Path) -> None:
    # Each run stays up past stable_threshold before failing: with the reset, one
    # allowed attempt is enough to keep restarting it.
    files = process_project({"flaky": """
        local time = require("time")
        return { main = function() time.sleep("150ms"); error("flaky") end }"""},
        extra_yaml=service("svc", "flaky", """
            auto_start: true
            stable_threshold: 100ms
            restart: {initial_delay: 10ms, jitter: 0, max_attempts: 1}
        """))
    async with LocalRuntime(tmp_path, files) as runtime:
        svc = runtime.supervisor.status("app:svc")
        await wait_until(lambda: len(svc.restarts) >= 3 or svc.settled.is_set(), 10, "three restarts")
        assert not svc.settled.is_set() and [r.attempt for r in svc.restarts[:3]] == [1, 1, 1]


async def test_dependencies_start_first_and_stop_last(tmp_path: Path) -> None:
    # `db` is not auto-start but `api` requires it. `api` fails at start unless `db` is
    # registered; `db`, when stopped, fails unless `api` has already gone.
    files = process_project({
        "db": """
            return { main = function()
              process.registry.register("db")
              local events = process.events()
              events:receive()
              if process.registry.lookup("api") then return nil, "api still running when db stopped" end
              return "db stopped after api"
            end }""",
        "api": """
            return { main = function()
              assert(process.registry.lookup("db"), "db is not running")
              process.registry.register("api")
              process.events():receive()
              return "api stopped"
            end }"""},
        extra_yaml=service("api.svc", "api", "auto_start: true\nrequires: [db.svc]")
        + service("db.svc", "db", "auto_start: false"))
    async with LocalRuntime(tmp_path, files) as runtime:
        api, db = runtime.supervisor.status("app:api.svc"), runtime.supervisor.status("app:db.svc")
        assert api.state == ServiceState.RUNNING and db.state == ServiceState.RUNNING
    assert api.restarts == [] and api.last_outcome.value == "api stopped"
    assert db.last_outcome.value == "db stopped after api"
    assert api.state == db.state == ServiceState.STOPPED


async def test_a_service_ignoring_cancel_is_terminated_after_stop_timeout(tmp_path: Path) -> None:
    files = process_project({"stubborn": "return { main = function() process.inbox():receive() end }"},
                            extra_yaml=service("svc", "stubborn", "auto_start: true\nstop_timeout: 200ms"))
    async with LocalRuntime(tmp_path, files) as runtime:
        svc = runtime.supervisor.status("app:svc")
    assert svc.state == ServiceState.STOPPED
    assert svc.last_outcome.error.kind == Kind.CANCELED and svc.last_outcome.error.message == "process terminated"


async def test_node_shutdown_cancels_then_terminates(tmp_path: Path) -> None:
    files = process_project({
        "polite": """return { main = function() local ev = process.events():receive(); return ev.reason end }""",
        "stubborn": """return { main = function() process.inbox():receive() end }"""})
    outcomes = {}
    local = LocalRuntime(tmp_path, files)
    runtime = await local.__aenter__()
    for name in ("polite", "stubborn"):
        runtime.processes.start(SpawnRequest(f"app:{name}", "app:host", []),
                                on_exit=lambda outcome, name=name: outcomes.__setitem__(name, outcome))
    await runtime.stop(0.3)
    assert outcomes["polite"].value == "node shutting down"
    assert outcomes["stubborn"].error.message == "process terminated: node shutting down"
    assert runtime.processes.records == {}


async def test_a_service_whose_requirement_never_runs_fails_after_start_timeout(tmp_path: Path) -> None:
    files = process_project({"broken": "return { main = function( end }",
                             "api": "return { main = function() process.inbox():receive() end }"},
                            extra_yaml=service("db.svc", "broken", "restart: {initial_delay: 10s}")
                            + service("api.svc", "api", "auto_start: true\nstart_timeout: 200ms\nrequires: [db.svc]"))
    async with LocalRuntime(tmp_path, files) as runtime:
        api, db = runtime.supervisor.status("app:api.svc"), runtime.supervisor.status("app:db.svc")
        await api.settled.wait()
        assert db.state == ServiceState.FAILED and "syntax error" in db.last_error.message
    assert api.state == ServiceState.FAILED and api.last_error.kind == Kind.TIMEOUT
    assert "waiting for app:db.svc" in api.last_error.message


async def test_terminating_a_service_process_ends_the_service(tmp_path: Path) -> None:
    files = process_project({"idle": "return { main = function() process.inbox():receive() end }"},
                            extra_yaml=service("svc", "idle", "auto_start: true"))
    async with LocalRuntime(tmp_path, files) as runtime:
        svc = runtime.supervisor.status("app:svc")
        runtime.processes.terminate(None, svc.pid)
        await svc.settled.wait()
    assert svc.state == ServiceState.EXITED and svc.restarts == []
    assert svc.last_outcome.error.message == "process terminated"
