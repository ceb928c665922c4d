"""Three nodes on a three-server NATS cluster (routes from ``deploy/nats-cluster.conf``):
processes talk across servers, and when the server one node is connected to is
killed, that node reconnects to another and everything carries on: ordering, spawns,
exec, and the monitors and links that were in place."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conftest import monitor_json
from support import run_cli, wait_until, write_project

WORKERS = {
    "_index.yaml": """
        namespace: w
        entries:
          - {name: pool, kind: process.host}
          - {name: child, kind: process.lua, source: file://child.lua}
    """,
    "child.lua": """
        return function(how, arg)
          if how == "return" then return arg end
          local inbox = process.inbox()
          if how == "collect" then  -- numbered messages until "end": how many, and in order?
            local count, in_order = 0, true
            while true do
              local msg = inbox:receive()
              if msg:topic() == "end" then return { count = count, in_order = in_order } end
              count = count + 1
              in_order = in_order and msg:payload():data() == count
            end
          end
          return inbox:receive():topic()  -- "wait": until a message
        end""",
}

DRIVER = {
    "_index.yaml": """
        namespace: d
        entries:
          - {name: main, kind: process.lua, source: file://main.lua, modules: [time]}
    """,
    "main.lua": """
        local time = require("time")
        return function()
          process.set_options({ trap_links = true })
          local out, events = {}, process.events()
          local function next_event()
            local r = channel.select({ events:case_receive(), time.after("15s"):case_receive() })
            if r.channel ~= events then return { kind = "timeout" } end
            local ev, err = r.value, r.value.result and r.value.result.error
            return { kind = ev.kind, from = ev.from, value = ev.result and ev.result.value,
                     error = err and err:message() }
          end
          local function burst(node, n)
            local pid = assert(process.with_options({ node = node }):spawn_monitored("w:child", "w:pool", "collect"))
            for i = 1, n do assert(process.send(pid, "n", i)) end
            assert(process.send(pid, "end"))
            return next_event().value
          end

          out.before = { na = burst("na", 2000), nb = burst("nb", 2000) }
          local watched = assert(process.with_options({ node = "nb" }):spawn_monitored("w:child", "w:pool", "wait"))
          local linked = assert(process.with_options({ node = "nb" }):spawn_linked("w:child", "w:pool", "wait"))
          print("ready " .. process.pid())
          process.inbox():receive()  -- the test kills a NATS server, then says go

          out.after = { na = burst("na", 500), nb = burst("nb", 500) }
          out.exec = process.with_options({ node = "nb" }):exec("w:child", "w:pool", "return", "x")
          local anywhere = assert(process.spawn_monitored("w:child", "w:pool", "return", "y"))
          out.anywhere = next_event().value
          -- Nothing fired about the processes watched through the failover.
          out.quiet = channel.select({ events:case_receive(), default = true }).default == true
          assert(process.send(watched, "bye"))
          local ev = next_event()
          out.watched = { ev.kind, ev.from == watched, ev.value }
          assert(process.terminate(linked))
          ev = next_event()
          out.linked = { ev.kind, ev.from == linked, ev.error }
          return out
        end""",
}


async def test_nodes_keep_working_when_their_nats_server_dies(tmp_path: Path, nats_cluster, spawn_node) -> None:
    urls = ",".join(server.address for server in nats_cluster)
    workers = {name: await spawn_node(write_project(tmp_path / name, WORKERS), name, nats_url=urls)
               for name in ("na", "nb")}
    driver = await spawn_node(write_project(tmp_path / "d", DRIVER), "nd", nats_url=urls, ready=r"ready \{nd@",
                              args=("-v", "-x", "d:main"))  # -v: a -x run logs INFO (reconnects) only when asked
    pid = re.search(r"ready (\{\S+\})", driver.output).group(1)  # type: ignore[union-attr]

    # Kill the server nb is connected to (nodes pick one of the URLs at random), and
    # wait until every node that was on it is back through another.
    nodes = {"na": workers["na"], "nb": workers["nb"], "nd": driver}

    def clients(server) -> set[str]:
        return {c.get("name", "") for c in monitor_json(server, "connz")["connections"]}

    home = next(s for s in nats_cluster if "moonwire-nb" in clients(s))
    home.process.kill()
    await home.process.wait()
    survivors = [s for s in nats_cluster if s is not home]

    # Every node has two connections (control and data); each is back once a surviving
    # server lists it. "go" goes to the server where the driver's data connection has
    # its inbox subscription again: published anywhere else, it could still outrun the
    # interest crossing the route (core NATS, at most once).
    def inbox_server() -> Any:
        for server in survivors:
            for conn in monitor_json(server, "connz?subs=1")["connections"]:
                if conn.get("name") == "moonwire-nd-data" and "mw.p.nd.>" in conn.get("subscriptions_list", []):
                    return server
        return None

    def all_back() -> bool:
        back = set().union(*(clients(server) for server in survivors))
        return all({f"moonwire-{name}", f"moonwire-{name}-data"} <= back for name in nodes)

    await wait_until(lambda: all_back() and inbox_server() is not None, 30, "every connection back")  # no event
    code, _, err = await run_cli("send", pid, "go", "--nats", inbox_server().address, cwd=tmp_path)
    assert code == 0, err

    assert await driver.wait(90) == 0, driver.output
    out = json.loads(driver.lines[-1])
    in_order = {"count": 2000, "in_order": True}
    assert out["before"] == {"na": in_order, "nb": in_order}
    assert out["after"] == {"na": {"count": 500, "in_order": True}, "nb": {"count": 500, "in_order": True}}
    assert out["exec"] == "x" and out["anywhere"] == "y"
    assert out["quiet"] is True
    assert out["watched"] == ["pid.exit", True, "bye"]
    assert out["linked"] == ["pid.link.down", True, "process terminated"]
    # The failover took less than the node-down window: no node was taken for dead
    # (the driver's goodbye when it finished is the only departure).
    for node in (*workers.values(), driver):
        assert "no heartbeat" not in node.output and "node na is down" not in node.output, node.output
        assert "node nb is down" not in node.output, node.output
