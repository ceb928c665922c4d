"""``process.host`` limits (wippy-surface §1.7): ``max_processes`` refuses a spawn past
it with a retryable Unavailable naming the host and the limit (here, from another node,
through the CLI, for a supervised service, for spawns with cluster names on their way),
and a slot is free again once a process has exited. Wippy's ``workers``, ``queue_size``
and ``local_queue_size`` are accepted and ignored with a warning at load. Real node OS
processes on the session's NATS server."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from moonwire.node.cli._listings import _hosts as nodes_hosts_cell
from support import run_cli, write_project

# ------------------------------------------------------------ on one node

LOCAL = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: small, kind: process.host, host: {max_processes: 3}}
          - {name: flood, kind: process.lua, source: file://flood.lua}
          - {name: sleeper, kind: process.lua, source: file://sleeper.lua}
    """,
    "sleeper.lua": "return function() process.inbox():receive() end",
    "flood.lua": """
        local function spawn_named(name)
          return process.with_name(name, process.registry.CONSISTENT):spawn("app:sleeper", "app:small")
        end

        return function(tag)
          local out, events = {}, process.events()
          -- A flood of 50 spawns against a limit of 3.
          local pids, refused = {}, {}
          for _ = 1, 50 do
            local pid, err = process.spawn_monitored("app:sleeper", "app:small")
            if pid then pids[#pids + 1] = pid else refused[#refused + 1] = err end
          end
          out.spawned, out.refused = #pids, #refused
          out.kind, out.retryable, out.message = refused[1]:kind(), refused[1]:retryable(), refused[1]:message()

          -- A slot is free once its process has exited, and only then.
          process.send(pids[1], "stop")
          out.freed = events:receive().from == pids[1]
          pids[1] = process.spawn_monitored("app:sleeper", "app:small")
          out.again = pids[1] ~= nil
          local _, full = process.spawn("app:sleeper", "app:small")
          out.full_again = full and full:kind()

          -- Spawns with a cluster name hold their slot while the name registers: of five
          -- at once against two free slots, two start, and the others are refused at once.
          process.send(pids[1], "stop")
          events:receive()
          process.send(pids[2], "stop")
          events:receive()
          local results = channel.new(5)
          for i = 1, 5 do
            coroutine.spawn(function()
              local pid, err = spawn_named("limits-" .. tag .. "-" .. i)
              results:send({ pid = pid, err = err and err:message() })
            end)
          end
          out.named, out.named_refused = 0, {}
          for _ = 1, 5 do
            local r = results:receive()
            if r.pid then out.named = out.named + 1; process.send(r.pid, "stop")
            else out.named_refused[#out.named_refused + 1] = r.err end
          end
          process.send(pids[3], "stop")
          return out
        end""",
}


async def test_spawns_past_max_processes_are_refused_until_a_slot_frees(tmp_path: Path, nats_server) -> None:
    project = write_project(tmp_path / "p", LOCAL)
    code, out, err = await run_cli("run", str(project), "--node", "hl1", "--nats", nats_server.address,
                                   "-x", "app:flood", uuid.uuid4().hex[:8])
    assert code == 0, err
    result = json.loads(out)
    assert (result["spawned"], result["refused"]) == (3, 47)
    assert (result["kind"], result["retryable"]) == ("Unavailable", True)
    assert "process host app:small on node hl1 is full: max_processes 3 reached" in result["message"]
    assert result["freed"] and result["again"] and result["full_again"] == "Unavailable"
    assert result["named"] == 2 and len(result["named_refused"]) == 3
    # Refused while the two names were still registering: the slots they hold counted.
    assert all("max_processes 3 reached" in m and "of them starting" in m for m in result["named_refused"])


# ------------------------------------------------------------ from other nodes

WORKERS = {
    "_index.yaml": """
        namespace: w
        entries:
          - {name: pool, kind: process.host, host: {max_processes: 2}}
          - {name: child, kind: process.lua, source: file://child.lua}
    """,
    "child.lua": "return function() process.inbox():receive() end",
}

SPAWNER = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: main, kind: process.lua, source: file://main.lua}
    """,
    "main.lua": """
        return function(held)
          local out = {}
          local _, err = process.spawn("w:child", "w:pool")
          out.kind, out.retryable, out.message = err:kind(), err:retryable(), err:message()
          -- Free a slot there: the child's EXIT comes once its node has let it go.
          assert(process.monitor(held))
          process.send(held, "stop")
          out.exited = process.events():receive().from == held
          local pid = process.spawn("w:child", "w:pool")
          out.node = pid and pid:match("^{([%w_-]+)@")
          process.send(pid, "stop")
          return out
        end""",
}


async def test_a_spawn_from_another_node_to_a_full_host_is_answered_unavailable(
        tmp_path: Path, nats_server, spawn_node) -> None:
    await spawn_node(write_project(tmp_path / "w", WORKERS), "hl-full", nats_url=nats_server.address)
    cli = ("--nats", nats_server.address)
    held = []
    for _ in range(2):
        code, out, err = await run_cli("spawn", "w:child", "--host", "w:pool", *cli, cwd=tmp_path)
        assert code == 0, err
        held.append(out.strip())
    code, out, err = await run_cli("spawn", "w:child", "--host", "w:pool", *cli, cwd=tmp_path)
    assert code == 1 and "process host w:pool on node hl-full is full: max_processes 2 reached" in err, err

    code, out, err = await run_cli("nodes", "--json", *cli, cwd=tmp_path)
    answer = json.loads(out)["nodes"]["hl-full"]
    assert answer["host_processes"]["w:pool"] == {"processes": 2, "starting": 0, "max_processes": 2}
    assert nodes_hosts_cell(answer) == "w:pool(2/2)"  # the HOSTS column of `moonwire nodes`

    code, out, err = await run_cli("run", str(write_project(tmp_path / "b", SPAWNER)), "--node", "hl-spawner",
                                   *cli, "-x", "b:main", json.dumps(held[0]))
    assert code == 0, err
    result = json.loads(out)
    assert (result["kind"], result["retryable"]) == ("Unavailable", True)
    assert "process host w:pool on node hl-full is full: max_processes 2" in result["message"]
    assert result["exited"] and result["node"] == "hl-full"


# ------------------------------------------------------------ services

SERVICES = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: small, kind: process.host, host: {max_processes: 1}}
          - {name: holder, kind: process.lua, source: file://holder.lua}
          - {name: late, kind: process.lua, source: file://late.lua}
          - name: a_holder
            kind: process.service
            process: app:holder
            host: app:small
            lifecycle: {auto_start: true}
          - name: b_late
            kind: process.service
            process: app:late
            host: app:small
            lifecycle:
              auto_start: true
              restart: {initial_delay: 100ms, backoff_factor: 2.0, max_delay: 400ms, jitter: 0}
    """,
    "holder.lua": """
        return function()
          print("holder " .. process.pid())
          process.inbox():receive()   -- then returns: Exited, not restarted
        end""",
    "late.lua": """
        return function()
          print("late service up")
          process.inbox():receive()
        end""",
}


async def test_a_service_on_a_full_host_backs_off_and_starts_once_there_is_room(
        tmp_path: Path, nats_server, spawn_node) -> None:
    node = await spawn_node(write_project(tmp_path / "p", SERVICES), "hl-svc", nats_url=nats_server.address)
    holder = re.search(r"holder (\{\S+\})", await node.wait_for_line(r"holder \{")).group(1)
    await node.wait_for_line(r"service app:b_late could not start: process host app:small on node hl-svc is full: "
                             r"max_processes 1")
    # It backs off by its policy rather than spinning: 0.1 s, 0.2 s, then capped at 0.4 s.
    await node.wait_for_line(r"service app:b_late failed .*; restart 3 in 0\.400s")
    delays = re.findall(r"service app:b_late failed .*; restart (\d+) in (\S+)s", node.output)
    assert delays[:3] == [("1", "0.100"), ("2", "0.200"), ("3", "0.400")]
    assert "late service up" not in node.output

    code, _, err = await run_cli("send", holder, "go", "--nats", nats_server.address, cwd=tmp_path)
    assert code == 0, err
    await node.wait_for_line(r"service app:a_holder exited normally")
    await node.wait_for_line(r"late service up")


# ------------------------------------------------------------ Wippy's other settings

async def test_workers_and_queue_sizes_are_accepted_and_ignored_with_a_warning(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", {
        "_index.yaml": """
            namespace: app
            entries:
              - name: wippy
                kind: process.host
                host: {workers: 32, queue_size: 4096, local_queue_size: 512, max_processes: 10}
              - {name: plain, kind: process.host, host: {max_processes: 10}}
        """,
    })
    code, out, err = await run_cli("check", str(project))
    assert code == 0 and out.startswith("ok: 2 entries"), err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert [w.split()[1:3] for w in warnings] == [["_index.yaml:5", "app:wippy"]] * 3
    assert [w.split()[3] for w in warnings] == ["host.local_queue_size:", "host.queue_size:", "host.workers:"]
    assert "accepted and ignored" in warnings[2] and "run more nodes" in warnings[2]
    code, _, err = await run_cli("check", "--strict", str(project))
    assert code == 1 and "3 warning(s) found" in err, err
