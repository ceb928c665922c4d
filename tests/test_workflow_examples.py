"""The workflow examples (examples/workflows): the saga, the day-long sleep with a
status check (two seconds here) and the approval flow, signalled from a process, with
`moonwire send` and with a plain NATS publish."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import nats
import pytest
from temporalio.client import Client

from moonwire.node import ServerProcess
from support import run_cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "workflows"


async def listed_by_ps(cli: tuple[str, ...], running: set[str], closed: set[str] = set()) -> bool:
    """Whether `moonwire ps` comes to list the ``running`` workflows and none of the
    ``closed`` ones (Temporal's visibility store is updated shortly after the fact)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        code, out, err = await run_cli("ps", "--json", *cli)
        assert code == 0, err
        listed = {w["pid"] for w in json.loads(out)["workflows"]["shop:worker"]["list"]}
        if running <= listed and not closed & listed:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False


@pytest.fixture
def example(tmp_path: Path, temporal_server: ServerProcess) -> Path:
    project = tmp_path / "workflows"
    shutil.copytree(EXAMPLE, project)
    index = project / "_index.yaml"  # the test's Temporal server instead of an embedded one
    index.write_text(index.read_text().replace("kind: temporal.client\n",
                                               f"kind: temporal.client\n    address: {temporal_server.address}\n")
                                      .replace("task_queue: shop", f"task_queue: shop-{tmp_path.name}"))
    return project


async def test_the_three_examples_run(example: Path, nats_server) -> None:
    code, out, err = await run_cli("run", str(example), "--node", "ex", "--nats", nats_server.address,
                                   "-x", "shop:main")
    assert code == 0, err
    got = json.loads(out)
    assert got["shipped"] == {"status": "shipped", "done": ["reservation-o-1", "payment-o-1", "parcel-o-1"]}
    # Compensation runs in reverse order, for the steps that had succeeded.
    assert got["declined"] == {"status": "compensated", "failed": "shop:charge", "error": "card declined",
                               "compensated": ["shop:release"]}
    assert got["unshippable"] == {"status": "compensated", "failed": "shop:ship", "error": "no shipping address",
                                  "compensated": ["shop:refund", "shop:release"]}
    assert got["reminder"]["status"]["sleeping"] is True
    assert got["reminder"]["result"] == {"woke": True, "answered": 1}
    assert got["approval"] == {"request": "expense 42", "decision": "approved", "by": "ann"}


async def test_approval_by_moonwire_send_and_by_nats_pub(example: Path, nats_server, temporal_server,
                                                         spawn_node) -> None:
    await spawn_node(example, "ap", nats_url=nats_server.address)
    cli = ("--nats", nats_server.address)
    client = await Client.connect(temporal_server.address)

    code, out, err = await run_cli("spawn", "shop:approval", '"expense 7"', "--host", "shop:worker", *cli)
    assert code == 0, err
    first = out.strip()
    assert first.startswith("{@shop:worker|shop:approval-")
    code, _, err = await run_cli("send", first, "approve", '{"by": "bob"}', *cli)
    assert code == 0, err
    await client.get_workflow_handle(first[first.index("|") + 1:-1]).result()
    code, out, err = await run_cli("workflow", "show", first, "--json", *cli)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["status"] == "completed" and shown["type"] == "shop:approval"
    assert shown["result"] == {"request": "expense 7", "decision": "approved", "by": "bob"}

    code, out, err = await run_cli("spawn", "shop:approval", '"expense 8"', "--host", "shop:worker", *cli)
    assert code == 0, err
    second = out.strip()
    workflow_id = second[second.index("|") + 1:-1]
    assert await listed_by_ps(cli, running={second}, closed={first}), "ps lists running workflows only"
    nc = await nats.connect(nats_server.address)  # what `nats pub` does
    try:
        dead = await nc.subscribe("mw.dlq.ap")
        # A body that does not decode goes to the dead-letter queue, and nothing else is lost.
        await nc.publish(f"mw.wf.shop:worker.{workflow_id}.approve", b"\xc1 not msgpack",
                         headers={"Content-Type": "application/msgpack"})
        lost = await dead.next_msg(timeout=10)
        assert "malformed msgpack body" in lost.headers["Mw-Dlq-Reason"]
        await nc.publish(f"mw.wf.shop:worker.{workflow_id}.reject", b'{"by": "carol"}')
        await nc.flush()
    finally:
        await nc.close()
    await client.get_workflow_handle(workflow_id).result()
    code, out, err = await run_cli("workflow", "show", second, *cli)
    assert code == 0, err
    assert "completed" in out and '"decision": "rejected"' in out and '"by": "carol"' in out
