"""A node's answer to ``ps`` (``moonwire ps``, ``moonwire top``) fits in one NATS
message: a node with more processes than fit lists as many as fit, with its exact
counts, instead of answering nothing (a reply over the server's max_payload is never
published, and the node looked down to ``top``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support import run_cli, write_project

COUNT = 10_000
PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: workers, kind: process.host}
          - {name: sleeper, kind: process.lua, source: file://sleeper.lua, method: main}
          - {name: spawner, kind: process.lua, source: file://spawner.lua, method: main}
          - {name: spawner_service, kind: process.service, process: spawner, host: workers,
             lifecycle: {auto_start: true}}
    """,
    "sleeper.lua": "return { main = function() process.inbox():receive() end }",
    "spawner.lua": f"""return {{ main = function()
        for i = 1, {COUNT} do process.spawn("app:sleeper", "app:workers") end
        print("spawned {COUNT}")
        process.inbox():receive()
      end }}""",
}


async def test_ps_of_a_node_with_more_processes_than_one_message_holds(tmp_path: Path, nats_server: Any,
                                                                       spawn_node: Any) -> None:
    node = await spawn_node(write_project(tmp_path / "p", PROJECT), "big", nats_url=nats_server.address)
    await node.wait_for_line(f"spawned {COUNT}", 60)
    code, out, err = await run_cli("ps", "--nats", nats_server.address, "--node", "big", "--limit", str(COUNT),
                                   "--json")
    answer = json.loads(out)["nodes"].get("big")
    assert answer is not None, (code, err, node.output[-2000:])
    assert answer["processes"] == COUNT + 1 and 0 < len(answer["list"]) <= COUNT
    assert answer["host_processes"]["app:workers"]["processes"] == COUNT + 1
