"""The operator's commands through the real CLI against real nodes (docs/operations.md):
``top``, ``ps --watch``, ``nodes --watch``, ``dlq`` (list, replay, purge)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import nats

from moonwire.broker import Subjects
from moonwire.lua import Message
from moonwire.node.cluster import DeadLetterStore, StoredLetter
from moonwire.node.processes import encode as encode_message

from conftest import SpawnNode
from support import MOONWIRE, NodeProcess, run_cli, write_project

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host, lifecycle: {auto_start: true}}
          - {name: idle, kind: process.lua, source: file://idle.lua}
          - {name: catcher, kind: process.lua, source: file://catcher.lua}
          - {name: quick, kind: process.lua, source: file://quick.lua}
          - {name: idle.service, kind: process.service, process: idle, host: host, lifecycle: {auto_start: true}}
    """,
    "idle.lua": "return function() process.inbox():receive() end",
    "catcher.lua": """
        return function()
          local msg = process.inbox():receive()
          print("caught " .. tostring(msg:payload():data()))
        end""",
    "quick.lua": "return function() end",
}


def prefix() -> str:
    return f"op{uuid.uuid4().hex[:8]}"


async def cli(url: str, pre: str, *args: str) -> tuple[int, str, str]:
    return await run_cli(*args, "--nats", url, "--prefix", pre)


async def test_top_once_shows_the_nodes_their_hosts_and_a_node_that_does_not_answer(
        tmp_path: Path, nats_server, spawn_node: SpawnNode) -> None:
    pre = prefix()
    project = write_project(tmp_path / "p", PROJECT)
    # A long node-down window: the killed node stays a known peer that does not answer.
    args = ("--prefix", pre, "--set", "heartbeat.down_after=30s")
    await spawn_node(project, "top1", nats_url=nats_server.address, args=args)
    top2 = await spawn_node(project, "top2", nats_url=nats_server.address, args=args)
    code, out, err = await cli(nats_server.address, pre, "top", "--once", "--interval", "0.2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("--- moonwire top") and "2 node(s), 2 process(es), 0 dead letter(s) kept" in out
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("top1", "top2", "app:host"))}
    assert rows["top1"][2] == "1" and rows["top2"][2] == "1"  # PROCS
    assert [line.split()[:3] for line in lines if line.startswith("app:host")] == [
        ["app:host", "top1", "1"], ["app:host", "top2", "1"]]
    await top2.kill()
    code, out, err = await cli(nats_server.address, pre, "top", "--once", "--interval", "0.2")
    assert code == 1 and "no answer from node(s): top2" in out
    assert any(line.split()[:2] == ["top2", "(no"] for line in out.splitlines()), out


async def watched(command: str, url: str, pre: str) -> None:
    """Run ``moonwire COMMAND --watch``, see it redraw twice, stop it with SIGINT: exit 0."""
    process = await asyncio.create_subprocess_exec(
        MOONWIRE, command, "--watch", "0.2", "--nats", url, "--prefix", pre,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    assert process.stdout is not None
    frames: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(frames) < 3:  # two whole frames: the third has begun
                line = (await process.stdout.readline()).decode()
                if not line:
                    assert process.stderr is not None
                    raise AssertionError(f"{command} --watch ended early: {(await process.stderr.read()).decode()}")
                if line.startswith(f"--- moonwire {command}"):
                    frames.append(line)
                elif frames:
                    frames[-1] += line
        assert all("wat1" in frame for frame in frames[:2]), frames
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_ps_and_nodes_watch_redraw_until_sigint(tmp_path: Path, nats_server, spawn_node: SpawnNode) -> None:
    pre = prefix()
    await spawn_node(write_project(tmp_path / "p", PROJECT), "wat1", nats_url=nats_server.address,
                     args=("--prefix", pre))
    await asyncio.gather(watched("ps", nats_server.address, pre), watched("nodes", nats_server.address, pre))


async def kept(nc: nats.NATS, pre: str, count: int) -> list[StoredLetter]:
    """The letters the stream keeps, once it keeps ``count`` (a letter is stored a
    moment after the send that caused it returned: a poll)."""
    store = DeadLetterStore(nc, Subjects(pre))
    deadline = asyncio.get_running_loop().time() + 20
    while (await store.js.stream_info(store.name)).state.messages != count:
        assert asyncio.get_running_loop().time() < deadline, f"the stream never kept {count} letters"
        await asyncio.sleep(0.05)
    return [letter async for letter in store.letters()]


async def listed(nc: nats.NATS, url: str, pre: str, count: int, *args: str) -> list[dict[str, object]]:
    """What ``moonwire dlq --json`` lists, once the stream keeps ``count`` letters."""
    await kept(nc, pre, count)
    code, out, err = await cli(url, pre, "dlq", "--json", *args)
    assert code == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    assert len(found) == count, found
    return found


async def request(nc: nats.NATS, subject: str, body: dict[str, Any]) -> Any:
    """A control request from outside (docs/wire.md): its result."""
    reply = json.loads((await nc.request(subject, json.dumps(body).encode(), timeout=10)).data)
    assert "result" in reply, reply
    return reply["result"]


async def test_dlq_lists_replays_and_purges_dead_letters(tmp_path: Path, nats_server,
                                                         spawn_node: SpawnNode) -> None:
    pre, url = prefix(), nats_server.address
    node: NodeProcess = await spawn_node(write_project(tmp_path / "p", PROJECT), "dlq1", nats_url=url,
                                         args=("--prefix", pre))
    nc = await nats.connect(url)
    try:
        # A send to a PID that has exited: dead-lettered, kept, listed with its reason.
        spawned = await request(nc, f"{pre}.ctl.dlq1.spawn", {"entry": "app:quick", "host": "app:host"})
        gone = str(spawned["pid"])
        uid = gone[gone.index("|") + 1:-1]
        deadline = asyncio.get_running_loop().time() + 20
        while any(p["pid"] == gone for p in (await request(nc, f"{pre}.ctl.dlq1.ps", {}))["list"]):
            assert asyncio.get_running_loop().time() < deadline, "the quick process never exited"
            await asyncio.sleep(0.05)  # a poll: its exit announces itself nowhere outside
        body, headers = encode_message(Message("hello", [{"n": 1}]))
        await nc.publish(f"{pre}.p.dlq1.{uid}", body, headers=headers)
        [letter] = await listed(nc, url, pre, 1)
        assert letter["node"] == "dlq1" and letter["subject"] == f"{pre}.p.dlq1.{uid}" and uid
        assert letter["reason"] == f"no process with uid {uid} on node dlq1" and letter["body"] == 'hello: [{"n": 1}]'
        code, out, _ = await cli(url, pre, "dlq")
        assert code == 0 and "no process with uid" in out and "ID" in out.splitlines()[0]

        # Replayed while its target is still gone: dead-lettered again, with its reason and
        # a count, under a new id; the one replay publishes it once (it is not read again),
        # and the old letter is gone.
        code, out, err = await cli(url, pre, "dlq", "replay", str(letter["id"]), "999999")
        assert code == 1 and "replayed 1 letter(s)" in out and "no letter 999999" in err, err
        [again] = await listed(nc, url, pre, 1)
        assert again["id"] != letter["id"] and again["replays"] == 1 and again["reason"] == letter["reason"]

        # A message to a cluster name nobody holds, replayed once a process holds it: delivered.
        await nc.publish(f"{pre}.n.catch-me.hello", json.dumps("second chance").encode())
        [named] = [x for x in await kept(nc, pre, 2) if x.subject == f"{pre}.n.catch-me.hello"]
        assert "no process holds the cluster name 'catch-me'" in named.reason
        await request(nc, f"{pre}.ctl.dlq1.spawn", {"entry": "app:catcher", "host": "app:host", "name": "catch-me",
                                                    "scope": "eventual"})
        code, out, err = await cli(url, pre, "dlq", "replay", str(named.seq))
        assert code == 0 and "replayed 1 letter(s)" in out, err
        await node.wait_for_line("caught second chance")
        assert [x.subject for x in await kept(nc, pre, 1)] == [f"{pre}.p.dlq1.{uid}"]

        # Only the data plane is replayed: a letter claiming a control subject stays put.
        await nc.publish(f"{pre}.dlq.dlq1", b"{}", headers={"Mw-Dlq-Subject": f"{pre}.ctl.dlq1.terminate",
                                                           "Mw-Dlq-Reason": "forged"})
        [forged] = [x for x in await kept(nc, pre, 2) if x.reason == "forged"]
        code, out, err = await cli(url, pre, "dlq", "replay", "--all", "--rate", "0")
        assert code == 1 and f"letter {forged.seq} not replayed" in err and "1 refused" in out
        assert {x.reason for x in await kept(nc, pre, 2)} == {"forged", letter["reason"]}

        code, out, err = await cli(url, pre, "dlq", "purge", "--node", "dlq1")
        assert code == 0 and "purged 2 letter(s) from node dlq1" in out, err
        code, out, _ = await cli(url, pre, "dlq")
        assert code == 0 and "no dead letters kept" in out
    finally:
        await nc.close()


async def test_dlq_replays_a_flood_once_and_loses_none(tmp_path: Path, nats_server, spawn_node: SpawnNode) -> None:
    pre, url = prefix(), nats_server.address
    await spawn_node(write_project(tmp_path / "p", PROJECT), "fld1", nats_url=url, args=("--prefix", pre))
    nc = await nats.connect(url)
    try:
        for n in range(300):  # to a process that never existed
            await nc.publish(f"{pre}.p.fld1.nosuch-1.flood", json.dumps(n).encode())
        await kept(nc, pre, 300)
        code, out, err = await cli(url, pre, "dlq", "replay", "--all", "--rate", "0")
        assert code == 0 and "replayed 300 letter(s)" in out, err
        after = await listed(nc, url, pre, 300, "--limit", "1000")
    finally:
        await nc.close()
    assert {x["replays"] for x in after} == {1} and sorted(int(str(x["body"])) for x in after) == list(range(300))


def test_top_reads_rates_from_the_metrics_of_two_samples(capsys) -> None:
    """Pure logic: the typed view of a status answer, and rates between two samples
    (the counters come from the answer's ``metrics`` map, when a node has one)."""
    from moonwire.node.cli._top import NodeStatus, Sample, render

    def answer(messages: float, dead: float, inbox: int) -> dict[str, object]:
        return {"node": "m1", "uptime": 90.0, "processes": 3, "hosts": ["app:host", "app:idle"],
                "list": [{"host": "app:host", "inbox": inbox}, {"host": "app:host", "inbox": 1},
                         {"host": "app:host", "inbox": 0}],
                "metrics": {"moonwire_messages_delivered_total": messages, "dead_letters_total": dead, "x": "text"}}

    before = Sample(10.0, {"m1": NodeStatus.from_answer(answer(1000, 5, 0))}, [], {"m1": 5})
    after = Sample(12.0, {"m1": NodeStatus.from_answer(answer(3000, 9, 7))}, ["m2"], {"m1": 9})
    assert render(after, before) == 1  # m2 did not answer
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["m1"] == ["m1", "90.0s", "3", "1000", "8", "7", "9", "2.0"]
    assert rows["m2"][:3] == ["m2", "(no", "answer)"]
    hosts = [line.split() for line in out.splitlines() if line.startswith("app:")]
    assert hosts == [["app:host", "m1", "3", "8", "7"], ["app:idle", "m1", "0", "0", "0"]]
    # A node that counts its processes per host (host_processes): counts past the list.
    counted = NodeStatus.from_answer({**answer(0, 0, 0), "processes": 5000,
                                      "host_processes": {"app:host": {"processes": 4990}, "app:idle": {"processes": 10}}})
    assert counted.hosts["app:host"].processes == 4990 and counted.hosts["app:idle"].processes == 10
    assert counted.hosts["app:host"].mailbox == 1 and counted.counted == {"app:host", "app:idle"}
