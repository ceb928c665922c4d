"""``moonwire run --watch`` with process entries served as functions (``meta.default_host``):
an entry that turns from a process-function into a function (or back) keeps exactly one
subscription on its queue group, so removing it later leaves none that answers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import nats
import pytest

from moonwire.broker import Subjects
from moonwire.node.functions import call_function
from conftest import monitor_json
from support import NodeProcess, wait_until, write_project

RELOADED = "moonwire.reload: reloaded"
HEAD = """
namespace: app
entries:
  - {name: host, kind: process.host}
  - {name: keep, kind: function.lua, source: file://keep.lua}
"""
AS_PROCESS = HEAD + "  - {name: x, kind: process.lua, source: file://xp.lua, method: main, meta: {default_host: host}}\n"
AS_FUNCTION = HEAD + "  - {name: x, kind: function.lua, source: file://xf.lua}\n"


@pytest.fixture
async def client(nats_server: Any) -> Any:
    nc = await nats.connect(nats_server.address)
    yield nc
    await nc.close()


async def call(nc: Any, target: str) -> Any:
    outcome = await call_function(nc, Subjects(), target, [], {}, 10.0)
    return outcome.value if outcome.error is None else ("error", outcome.error.kind)


async def reloads(node: NodeProcess, count: int) -> None:
    await wait_until(lambda: sum(RELOADED in line for line in node.lines) >= count, 30,
                     lambda: f"{count} reloads in:\n{node.output}")


def subscriptions(server: Any, subject: str) -> int:
    connections = monitor_json(server, "connz?subs=1")["connections"]
    return sum(s == subject for c in connections for s in c.get("subscriptions_list", []))


async def test_process_function_turned_function_keeps_one_subscription(project_dir: Path, nats_server: Any,
                                                                       spawn_node: Any, client: Any) -> None:
    write_project(project_dir, {"_index.yaml": AS_PROCESS, "keep.lua": "return function() return 'k' end\n",
                                "xp.lua": "return { main = function() return 'process' end }\n",
                                "xf.lua": "return function() return 'function' end\n"})
    node = await spawn_node(project_dir, "w1", nats_url=nats_server.address, args=("--watch",))
    subject = Subjects().function("app:x")
    assert await call(client, "app:x") == "process"
    assert subscriptions(nats_server, subject) == 1

    (project_dir / "_index.yaml").write_text(textwrap.dedent(AS_FUNCTION))
    await reloads(node, 1)
    assert await call(client, "app:x") == "function"
    reloaded = [line for line in node.lines if RELOADED in line][0]
    assert "functions changed: app:x" in reloaded and "added" not in reloaded and "removed" not in reloaded, reloaded
    assert subscriptions(nats_server, subject) == 1

    (project_dir / "_index.yaml").write_text(textwrap.dedent(HEAD))           # x goes
    await reloads(node, 2)
    await wait_until(lambda: subscriptions(nats_server, subject) == 0, 10,
                     lambda: f"no subscription left on {subject}: {subscriptions(nats_server, subject)}")
    assert await call(client, "app:keep") == "k"


async def test_a_process_function_on_a_host_added_by_a_reload_is_not_served(project_dir: Path, nats_server: Any,
                                                                            spawn_node: Any, client: Any) -> None:
    # A host added by a reload runs only after a restart: a process entry whose
    # default_host is that host cannot start here, so this node must not take its calls
    # (on its queue group it would take a share of them from nodes that run the host).
    write_project(project_dir, {"_index.yaml": HEAD, "keep.lua": "return function() return 'k' end\n",
                                "xp.lua": "return { main = function() return 'process' end }\n"})
    node = await spawn_node(project_dir, "w1", nats_url=nats_server.address, args=("--watch",))
    (project_dir / "_index.yaml").write_text(textwrap.dedent(
        HEAD + "  - {name: later, kind: process.host}\n"
               "  - {name: x, kind: process.lua, source: file://xp.lua, method: main, meta: {default_host: later}}\n"))
    await reloads(node, 1)
    assert "entry app:later (process.host) was added" in node.output
    assert await call(client, "app:keep") == "k"
    assert subscriptions(nats_server, Subjects().function("app:x")) == 0


async def test_a_request_while_a_reload_changes_subscriptions_finds_the_entry_as_it_is_now(tmp_path: Path) -> None:
    # In-process (the window is an await inside the reload, which a real node cannot be
    # made to hit on purpose): app:x turns from a function into a process-function while
    # app:gone is removed; a request for app:x that arrives while the reload waits for
    # the server (unsubscribing app:gone) is served, never answered NotFound.
    from types import SimpleNamespace

    from moonwire.broker import MSGPACK_HEADERS
    from moonwire.node import load_project
    from moonwire.node.functions import Functions, reload_pools
    from moonwire.node.wire import pack, unpack

    as_function = AS_FUNCTION + "  - {name: gone, kind: function.lua, source: file://xf.lua}\n"
    files = {"keep.lua": "return function() return 'k' end\n", "xf.lua": "return function() return 'f' end\n",
             "xp.lua": "return { main = function() return 'process' end }\n"}
    root = tmp_path / "p"
    project = load_project(write_project(root, {**files, "_index.yaml": as_function}))
    answers: list[Any] = []

    class Outbox:
        def publish_nowait(self, subject: str, body: bytes, **_: Any) -> None:
            answers.append(unpack(body, "application/msgpack"))

    def request_x() -> None:
        functions._serve_current("app:x", SimpleNamespace(subject="mw.fn.app:x", reply="_INBOX.r", data=pack(
            {"args": [], "ctx": {}}), headers=MSGPACK_HEADERS))

    class Subscription:
        async def unsubscribe(self) -> None:
            request_x()

    class Nats:
        max_payload = 1024 * 1024

        async def subscribe_direct(self, *_: Any, **__: Any) -> Subscription:
            return Subscription()

    functions = Functions(project, Subjects(), nats=Nats(), outbox=Outbox())  # type: ignore[arg-type]
    await functions.serve()
    project.entries = load_project(write_project(root, {**files, "_index.yaml": AS_PROCESS})).entries
    assert await reload_pools(functions) == ([], ["app:x"], ["app:gone"])
    assert answers, "no request was made during the reload"
    assert all("NotFound" not in str(answer) for answer in answers), answers
