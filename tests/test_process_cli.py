"""`moonwire run -x` of a process.lua in a real node process, and the README's example
project (processes exchanging messages, a supervised service restarting after a crash)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from support import run_cli, write_project

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"


async def test_run_x_runs_a_process_to_completion(tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "p", {
        "_index.yaml": """
            namespace: app
            entries:
              - {name: main, kind: process.lua, source: file://main.lua, method: main}
              - {name: fails, kind: process.lua, source: file://fails.lua}
        """,
        "main.lua": "return { main = function(a, b) return { sum = a + b, pid = process.pid() } end }",
        "fails.lua": "return function() return nil, errors.new({ message = 'no luck', kind = errors.CONFLICT }) end",
    })
    code, out, err = await run_cli("run", str(project), "--node", "px", "--nats", nats_server.address,
                                   "-x", "app:main", "20", "22")
    assert code == 0, err
    result = json.loads(out)
    assert result["sum"] == 42 and result["pid"].startswith("{px@terminal|")
    code, out, err = await run_cli("run", str(project), "--node", "px", "--nats", nats_server.address, "-x", "app:fails")
    assert code == 1 and json.loads(out)["error"]["kind"] == "Conflict"


async def test_the_readme_example_runs(tmp_path: Path, nats_server, temporal_server) -> None:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project)
    index = project / "_index.yaml"  # use the test's servers instead of starting embedded ones
    index.write_text(index.read_text().replace("kind: temporal.client\n",
                                               f"kind: temporal.client\n    address: {temporal_server.address}\n"))
    code, out, err = await run_cli("run", str(project), "--node", "ex", "--nats", nats_server.address,
                                   "-x", "hello:main")
    assert code == 0, err
    result = json.loads(out)
    assert result["replies"] == ["pong 1", "pong 2", "pong 3"]
    assert "asked to crash with count 5" in result["crash"]
    assert result["restarted"] is True and result["count_after_restart"] == 0
    assert result["greeting"] == "hello, processes"
    assert "service hello:counter.service failed" in err and "restart 1 in" in err
