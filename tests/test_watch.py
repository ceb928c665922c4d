"""``moonwire run --watch``: a real node process reloads its project's Lua code and entries
as the test edits the files under it. New calls and new processes get the new code,
an upgradable process is told (OUTDATED) and upgrades, the others keep their code, and
a change that does not load is refused with its file:line while the old code serves."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from moonwire.broker import Subjects
from moonwire.node.functions import call_function
from support import NodeProcess, wait_until, write_project

RELOADED = "moonwire.reload: reloaded"


def edit(root: Path, name: str, text: str) -> None:
    (root / name).write_text(textwrap.dedent(text).lstrip("\n"))


async def reloads(node: NodeProcess, count: int, pattern: str = RELOADED) -> str:
    """The ``count``-th log line containing ``pattern`` (a reload done or refused)."""
    def lines() -> list[str]:
        return [line for line in node.lines if pattern in line]

    await wait_until(lambda: len(lines()) >= count, 30, lambda: f"{count} x {pattern!r} in:\n{node.output}")
    return lines()[count - 1]


@pytest.fixture
async def client(nats_server: Any) -> Any:
    nc = await nats.connect(nats_server.address)
    yield nc
    await nc.close()


async def call(nc: Any, target: str, *args: Any) -> Any:
    outcome = await call_function(nc, Subjects(), target, list(args), {}, 10.0)
    if outcome.error is not None:
        return ("error", outcome.error.kind, outcome.error.message)
    return outcome.value


FUNCTIONS = """
    namespace: app
    entries:
      - {name: host, kind: process.host}
      - {name: hello, kind: function.lua, source: file://hello.lua}
"""


async def test_watch_reloads_functions_and_refuses_what_does_not_load(project_dir: Path, nats_server: Any,
                                                                     spawn_node: Any, client: Any) -> None:
    write_project(project_dir, {"_index.yaml": FUNCTIONS, "hello.lua": "return function() return 'v1' end\n"})
    node = await spawn_node(project_dir, "w1", nats_url=nats_server.address, args=("--watch",))
    assert await call(client, "app:hello") == "v1"

    edit(project_dir, "hello.lua", "return function() return 'v2' end\n")
    assert "functions changed: app:hello" in await reloads(node, 1)
    assert await call(client, "app:hello") == "v2"

    edit(project_dir, "hello.lua", "return function()\n  return 'v3'\n")            # no end
    refused = await reloads(node, 1, "reload refused: hello.lua:")
    assert "'end' expected" in refused and "(entry app:hello)" in refused
    assert await call(client, "app:hello") == "v2"                                 # the old code serves

    edit(project_dir, "hello.lua", "return function() return 'v3' end\n")
    edit(project_dir, "extra.lua", "return function() return 'x1' end\n")
    edit(project_dir, "_index.yaml", FUNCTIONS + "      - {name: extra, kind: function.lua, source: file://extra.lua}\n")
    assert "functions added: app:extra" in await reloads(node, 2)
    assert (await call(client, "app:hello"), await call(client, "app:extra")) == ("v3", "x1")

    edit(project_dir, "_index.yaml", FUNCTIONS + "      - {name: extra, kind: function.lua, source: file://extra.lua}\n"
                                                 "      - {name: gone, kind: function.lua, source: file://gone.lua}\n")
    refused = await reloads(node, 1, "reload refused: _index.yaml:")
    assert "app:gone" in refused and "_index.yaml:6" in refused
    assert await call(client, "app:extra") == "x1"

    # extra goes; the host changes too, which the node keeps until it restarts.
    edit(project_dir, "_index.yaml", FUNCTIONS.replace("kind: process.host}", "kind: process.host, host: "
                                                       "{mailbox_limit: 10}}"))
    assert "functions removed: app:extra" in await reloads(node, 3)
    assert "entry app:host (process.host) was changed; it needs a restart" in node.output
    assert (await call(client, "app:extra"))[:2] == ("error", "NotFound")
    assert await call(client, "app:hello") == "v3"


PROCESSES = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: lib, kind: library.lua, source: file://lib.lua}
          - {name: worker, kind: process.lua, source: file://worker.lua, method: main, imports: {lib: app:lib}}
          - {name: stubborn, kind: process.lua, source: file://stubborn.lua, method: main, imports: {lib: app:lib}}
          - {name: probe, kind: process.lua, source: file://probe.lua}
          - {name: worker_service, kind: process.service, process: worker, host: host, lifecycle: {auto_start: true}}
          - {name: stubborn_service, kind: process.service, process: stubborn, host: host, lifecycle: {auto_start: true}}
          - {name: ask, kind: function.lua, source: file://ask.lua}
          - {name: run_probe, kind: function.lua, source: file://run_probe.lua}
    """,
    "lib.lua": "return { version = 'l1' }",
    "probe.lua": "return function() return 'p1' end",
    "run_probe.lua": "return function() return process.exec('app:probe', 'app:host') end",
    "ask.lua": """
        return function(name)
          local ok, err = process.send(name, "version")
          if not ok then return nil, err end
          return process.inbox():receive():payload():data()
        end""",
}


def serving(name: str, version: str, upgradable: bool) -> str:
    """A process that answers "version" with its code's version and what its upgrade
    said changed; when ``upgradable``, it upgrades as soon as it is told to."""
    options = "process.set_options({ upgradable = true })" if upgradable else ""
    return f"""
        local lib = require("lib")
        return {{ main = function(sources)
          process.registry.register("{name}")
          {options}
          local events, inbox = process.events(), process.inbox()
          while true do
            local r = channel.select({{ events:case_receive(), inbox:case_receive() }})
            if r.channel == events then
              if r.value.kind == process.event.OUTDATED then process.upgrade(nil, r.value.sources) end
            else
              process.send(r.value:from(), "version", {{ version = "{version}+" .. lib.version,
                                                         sources = sources or false, pid = process.pid() }})
            end
          end
        end }}"""


async def test_watch_tells_upgradable_processes_and_the_others_keep_their_code(
        project_dir: Path, nats_server: Any, spawn_node: Any, client: Any) -> None:
    write_project(project_dir, {**PROCESSES, "worker.lua": serving("worker", "w1", True),
                                "stubborn.lua": serving("stubborn", "s1", False)})
    node = await spawn_node(project_dir, "w2", nats_url=nats_server.address, args=("--watch",))

    async def ask(name: str) -> Any:
        answer = await call(client, "app:ask", name)
        deadline = time.monotonic() + 10
        # A service registers its name when it first runs, perhaps after the node said it
        # runs: until then the name is not found (no event to await from out here).
        while isinstance(answer, tuple) and answer[1] == "NotFound" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            answer = await call(client, "app:ask", name)
        assert not isinstance(answer, tuple), answer
        return answer

    worker = await ask("worker")
    assert (worker["version"], worker["sources"]) == ("w1+l1", False)
    assert (await ask("stubborn"))["version"] == "s1+l1"
    assert await call(client, "app:run_probe") == "p1"

    edit(project_dir, "worker.lua", serving("worker", "w2", True))
    edit(project_dir, "stubborn.lua", serving("stubborn", "s2", False))
    edit(project_dir, "probe.lua", "return function() return 'p2' end")
    line = await reloads(node, 1)
    assert "1 upgradable process(es) told OUTDATED" in line
    # The worker reads its events first: OUTDATED came before this question, so the
    # question waits in its mailbox through the upgrade and the new code answers it.
    upgraded = await ask("worker")
    assert upgraded == {"version": "w2+l1", "sources": ["app:worker"], "pid": worker["pid"]}
    assert (await ask("stubborn"))["version"] == "s1+l1"       # not upgradable: its code stays
    assert await call(client, "app:run_probe") == "p2"          # a new process: the new code

    edit(project_dir, "lib.lua", "return { version = 'l2' }")   # only what both import
    await reloads(node, 2)
    assert await ask("worker") == {"version": "w2+l2", "sources": ["app:lib"], "pid": worker["pid"]}
    assert (await ask("stubborn"))["version"] == "s1+l1"
