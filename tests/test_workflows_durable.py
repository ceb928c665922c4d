"""Workflows survive the node that runs them (DESIGN §7, §11): kill -9 in the middle of
a durable sleep, the workflow finishes on another node with each activity's side effect
seen once, its monitor on a third node gets EXIT, and the recorded history replays
without non-determinism in this (different) OS process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import nats
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from moonwire.node import ServerProcess, load_project, workflow_replayer
from support import run_cli, write_project


def durable_project(temporal: ServerProcess, queue: str) -> dict[str, str]:
    return {
        "_index.yaml": f"""
            namespace: app
            entries:
              - {{name: temporal, kind: temporal.client, address: "{temporal.address}"}}
              - name: worker
                kind: temporal.worker
                client: temporal
                task_queue: {queue}
                # A dead worker's sticky queue is given up after this: the next task goes to any worker.
                worker_options: {{sticky_schedule_to_start_timeout: 1s}}
              - {{name: host, kind: process.host}}
              - {{name: effect, kind: function.lua, source: file://effect.lua}}
              - {{name: durable, kind: workflow.lua, source: file://durable.lua, modules: [funcs, time]}}
              - {{name: watch, kind: process.lua, source: file://watch.lua, method: main}}
        """,
        # The side effect: a message to the test's observer (a PID on a node that does not exist).
        "effect.lua": "return function(observer, step) process.send(observer, 'effect', step) return step * 10 end",
        "durable.lua": """
            local funcs = require("funcs")
            local time = require("time")
            return function(observer)
              local a = funcs.call("app:effect", observer, 1)
              time.sleep("3s")
              local b = funcs.call("app:effect", observer, 2)
              return { a = a, b = b }
            end
        """,
        "watch.lua": """
            return { main = function(observer)
              local pid, err = process.spawn_monitored("app:durable", "app:worker", observer)
              if not pid then return nil, err end
              process.send(observer, "started", pid)
              local event = process.events():receive()
              process.send(observer, "exit", { from = event.from, value = event.result.value,
                                               error = event.result.error and tostring(event.result.error) })
            end }
        """,
    }


async def test_kill_9_mid_sleep_the_workflow_finishes_elsewhere(tmp_path: Path, nats_server: ServerProcess,
                                                                temporal_server: ServerProcess, spawn_node) -> None:
    project = write_project(tmp_path / "wf", durable_project(temporal_server, f"durable-{time.monotonic_ns()}"))
    observed: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    nc = await nats.connect(nats_server.address)

    async def observe(msg) -> None:
        await observed.put((msg.headers["Mw-Topic"], msgpack.unpackb(msg.data)[0]))

    await nc.subscribe("mw.p.obs.>", cb=observe)
    observer = "{obs@test|1}"
    try:
        a = await spawn_node(project, "wa", nats_url=nats_server.address)
        await spawn_node(project, "wc", nats_url=nats_server.address, args=("--set", "workers=false"))
        code, out, err = await run_cli("spawn", "app:watch", json.dumps(observer), "--host", "app:host",
                                       "--node", "wc", "--nats", nats_server.address)
        assert code == 0, err

        topic, pid = await asyncio.wait_for(observed.get(), 30)
        assert topic == "started" and isinstance(pid, str) and pid.startswith("{@app:worker|")
        assert await asyncio.wait_for(observed.get(), 30) == ("effect", 1)

        # Kill the only worker while the workflow sleeps (its timer is in history).
        client = await Client.connect(temporal_server.address)
        handle = client.get_workflow_handle(pid[pid.index("|") + 1:-1])

        async def timer_started() -> bool:
            return any([e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
                        async for e in handle.fetch_history_events()])

        deadline = time.monotonic() + 30
        while not await timer_started():
            assert time.monotonic() < deadline, "the workflow never started its timer"
            await asyncio.sleep(0.05)
        await a.kill()
        await spawn_node(project, "wb", nats_url=nats_server.address)

        assert await asyncio.wait_for(observed.get(), 60) == ("effect", 2)
        topic, exit_event = await asyncio.wait_for(observed.get(), 30)
        assert topic == "exit" and exit_event == {"from": pid, "value": {"a": 10, "b": 20}}
        assert observed.empty(), f"an activity ran more than once: {observed.get_nowait()}"

        # Replay what the killed node and its successor recorded, here, against the code.
        history = await handle.fetch_history()
        result = await workflow_replayer(load_project(project)).replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, result.replay_failure
        # ... and the replayer does catch code that no longer matches the history.
        (project / "durable.lua").write_text((project / "durable.lua").read_text().replace('time.sleep("3s")', ""))
        changed = await workflow_replayer(load_project(project)).replay_workflow(history, raise_on_replay_failure=False)
        assert changed.replay_failure is not None
    finally:
        await nc.close()


PAIRS_ORDER = """
import random
from moonwire.lua import LuaState, Replay
state = LuaState(replay=Replay(now_ns=lambda: 0, random=random.Random(7)))
print(state.runtime.execute('local t = {{}} for i = 1, 50 do t["key" .. i] = i end '
                            'local o = {{}} for k in pairs(t) do o[#o + 1] = k end return table.concat(o, ",")').decode())
"""


def test_a_workflow_state_iterates_tables_in_the_same_order_in_every_os_process() -> None:
    # DESIGN §11: string hashes are seeded per process unless fixed; replay on another
    # node must visit pairs() in the same order.
    script = PAIRS_ORDER.format(root=str(Path(__file__).resolve().parent.parent))
    orders = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
              for _ in range(3)}
    assert len(orders) == 1 and orders.pop().count(",") == 49
