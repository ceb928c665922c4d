"""The node's event loop (``loop: auto|asyncio|uvloop``, node/_loop.py): a node started
on uvloop runs on it (embedded NATS, the metrics server, function calls) and stops in
order on SIGTERM; the choice itself, and a clear error when uvloop is missing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import urllib.request
from pathlib import Path

import pytest

from moonwire.node import ConfigError, ServerProcess, free_port, load_config
from moonwire.node._loop import LoopUnavailable, chosen_loop, loop_name, run_on
from support import run_cli, write_project

PROJECT = {
    "app.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: greet, kind: function.lua, source: file://greet.lua}
    """,
    "greet.lua": """
        return function(who) return "hello " .. who end
    """,
}


def needs_uvloop() -> None:
    pytest.importorskip("uvloop", reason="the uvloop extra is not installed (pip install -e '.[dev]')")


async def test_a_node_on_uvloop_serves_and_stops_in_order_on_sigterm(project_dir: Path, spawn_node) -> None:
    needs_uvloop()
    write_project(project_dir, PROJECT)
    port = free_port()
    # No --nats: the node starts its embedded nats-server, a child process, from uvloop.
    node = await spawn_node(project_dir, "loop-uv", args=("--loop", "uvloop", "--metrics", f"127.0.0.1:{port}"))
    assert "node loop-uv running on uvloop" in node.output

    code, out, err = await run_cli("call", "app:greet", '"uv"', "--project", str(project_dir))
    assert (code, json.loads(out)) == (0, "hello uv"), err

    def healthz() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)

    assert await asyncio.to_thread(healthz) == 200

    assert await node.stop() == 0
    assert "SIGTERM received; shutting down" in node.output
    stops = [line.split("stopping ", 1)[1] for line in node.lines if "stopping " in line]
    # In order: the processes before their connection, the connection before its server.
    assert stops.index("runtime") < stops.index("NATS connection") < stops.index("embedded servers"), stops


async def test_loop_asyncio_from_the_environment(project_dir: Path, nats_server: ServerProcess, spawn_node) -> None:
    write_project(project_dir, PROJECT)
    node = await spawn_node(project_dir, "loop-aio", nats_url=nats_server.address, env={"MOONWIRE_LOOP": "asyncio"})
    assert "node loop-aio running on asyncio" in node.output
    assert await node.stop() == 0


def test_run_on_uvloop_leaves_the_policy_alone() -> None:
    needs_uvloop()
    policy = asyncio.get_event_loop_policy()

    async def which() -> str:
        return loop_name(asyncio.get_running_loop())

    assert run_on("uvloop", which()) == "uvloop"
    assert run_on("asyncio", which()) == "asyncio"
    assert asyncio.get_event_loop_policy() is policy


def test_auto_is_uvloop_on_linux_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "uvloop" else None)
    assert chosen_loop("auto", platform="linux") == "uvloop"
    assert chosen_loop("auto", platform="darwin") == "asyncio"
    assert chosen_loop("asyncio", platform="linux") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert chosen_loop("auto", platform="linux") == "asyncio"
    with pytest.raises(LoopUnavailable, match=r"moonwire\[uvloop\]"):
        chosen_loop("uvloop", platform="linux")

    async def never() -> None:
        raise AssertionError("started")

    with pytest.raises(LoopUnavailable):
        run_on("uvloop", never())  # closed, not started: no "never awaited" warning either


def test_loop_is_a_configuration_key(project_dir: Path) -> None:
    assert load_config(project_dir, environ={}).config.loop == "auto"
    assert load_config(project_dir, environ={"MOONWIRE_LOOP": "uvloop"}).config.loop == "uvloop"
    with pytest.raises(ConfigError, match="loop"):
        load_config(project_dir, environ={}, flags={"loop": ("fast", "--loop")})
