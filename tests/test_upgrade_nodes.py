"""``process.upgrade`` seen from another node (wippy-modules §12.1): a process on node B,
monitored and linked from node A (real node processes on a real NATS server), upgrades
again and again while A floods it; A hears nothing of the upgrades, every message
arrives once and in order, and when B's process finally fails, A gets its EXIT and
LINK_DOWN."""

from __future__ import annotations

import json
from pathlib import Path

from support import write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")
N, STEP = 3000, 250

NODE_B = {
    "_index.yaml": """
        namespace: b
        entries:
          - {name: host, kind: process.host}
          - {name: first, kind: process.lua, source: file://first.lua, method: main}
          - {name: second, kind: process.lua, source: file://second.lua, method: main}
    """,
    # Registers a name, then takes STEP numbers and upgrades to b:second with what it got.
    "first.lua": f"""
        return {{ main = function()
          assert(process.registry.register("target"))
          local got, inbox = {{}}, process.inbox()
          for _ = 1, {STEP} do got[#got + 1] = inbox:receive():payload():data() end
          process.upgrade("b:second", got, 1)
        end }}""",
    # Takes STEP more and upgrades to itself, until "report": then sends what it got,
    # waits for "fail" and fails.
    "second.lua": f"""
        return {{ main = function(got, upgrades)
          local inbox = process.inbox()
          for _ = 1, {STEP} do
            local m = inbox:receive()
            if m:topic() == "report" then
              process.send(m:from(), "report", {{ got = got, upgrades = upgrades }})
              inbox:receive()                        -- "fail"
              error("gave up after " .. upgrades .. " upgrades")
            end
            got[#got + 1] = m:payload():data()
          end
          process.upgrade(nil, got, upgrades + 1)
        end }}""",
}

NODE_A = {
    "_index.yaml": """
        namespace: a
        entries:
          - {name: driver, kind: process.lua, source: file://driver.lua}
    """,
    "driver.lua": f"""
        return function()
          process.set_options({{ trap_links = true }})
          local events, inbox = process.events(), process.inbox()
          local target = assert(process.spawn_linked_monitored("b:first", "b:host"))
          for i = 1, {N} do process.send(target, "n", i) end
          process.send(target, "report")
          local report = inbox:receive():payload():data()
          -- Events from B travel in the same ordered stream as its messages: an EXIT or
          -- LINK_DOWN sent at an upgrade would be here before the report.
          local quiet = channel.select({{ events:case_receive(), default = true }}).default == true
          local named = process.registry.lookup("target", "nb")
          local in_order = #report.got == {N}
          for i, n in ipairs(report.got) do if n ~= i then in_order = false end end
          process.send(target, "fail")
          local a, b = events:receive(), events:receive()
          return {{ in_order = in_order, count = #report.got, upgrades = report.upgrades, quiet = quiet,
                    named = named == target, kinds = {{ a.kind, b.kind }}, from = {{ a.from == target, b.from == target }},
                    error = a.result.error:message() }}
        end""",
}


async def test_remote_watchers_see_no_upgrade_and_the_real_exit(tmp_path: Path, nats_server, spawn_node) -> None:
    node_b = await spawn_node(write_project(tmp_path / "b", NODE_B), "nb", nats_url=nats_server.address,
                              args=FAST_LIVENESS)
    node_a = await spawn_node(write_project(tmp_path / "a", NODE_A), "na", nats_url=nats_server.address,
                              ready=None, args=(*FAST_LIVENESS, "-x", "a:driver"))
    assert await node_a.wait(60) == 0, node_a.output + "\n--- nb ---\n" + node_b.output
    result = json.loads(next(line for line in reversed(node_a.lines) if line.startswith("{")))
    assert result["count"] == N and result["in_order"] is True, result
    assert result["upgrades"] >= N // STEP - 1          # it upgraded all along the flood
    assert result["quiet"] is True and result["named"] is True
    assert sorted(result["kinds"]) == ["pid.exit", "pid.link.down"] and result["from"] == [True, True]
    assert "gave up after" in result["error"]
