"""Cluster names, locks and process groups as processes use them, across real node OS
processes on a real nats-server with JetStream (issue 16, items 1, 2, 4 and 7): three
nodes racing for the same names, send/monitor/link by name across nodes, names freed
when their owner exits and when its node is killed, ``with_name`` in a cluster scope,
messages to names from outside (``mw.n.<name>.<topic>``) and their dead letters, a lock
passed on to the next waiter when its holder's node is killed, and groups: broadcasts
from a node without members and from outside (``mw.g.<group>.<topic>``) reaching each
member once, monitors seeing joins and leaves, members leaving on exit and node-down."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors

from support import run_cli, write_project

FAST_LIVENESS = ("--set", "heartbeat.interval=200ms", "--set", "heartbeat.down_after=1s")

PROJECT = {
    "_index.yaml": """
        namespace: app
        entries:
          - {name: host, kind: process.host}
          - {name: holder, kind: process.lua, source: file://holder.lua, modules: [json]}
          - {name: racer, kind: process.lua, source: file://racer.lua, modules: [json]}
          - {name: watcher, kind: process.lua, source: file://watcher.lua}
          - {name: sender, kind: process.lua, source: file://sender.lua}
          - {name: named, kind: process.lua, source: file://named.lua}
          - {name: locker, kind: process.lua, source: file://locker.lua, modules: [system, time]}
          - {name: member, kind: process.lua, source: file://member.lua, modules: [pg, json, time]}
          - {name: broadcaster, kind: process.lua, source: file://broadcaster.lua, modules: [pg]}
          - {name: pgwatch, kind: process.lua, source: file://pgwatch.lua, modules: [pg, json]}
          - {name: registrar, kind: process.lua, source: file://registrar.lua, modules: [time, json]}
    """,
    # Registers `name` cluster-wide, trying again while the answer is Unavailable (a
    # stream electing a leader), then prints the outcome and what it gets, as holder.lua.
    "registrar.lua": """
        local time, json = require("time"), require("json")
        return function(name)
          local ok, err
          for _ = 1, 150 do
            ok, err = process.registry.register(name, nil, process.registry.CONSISTENT)
            if ok or err:kind() ~= errors.UNAVAILABLE then break end
            time.sleep("200ms")
          end
          print("registered " .. name .. ": " .. tostring(ok) .. " " .. tostring(err and err:kind()))
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            print("got " .. name .. " " .. msg:topic() .. " " .. json.encode(msg:payload():data()))
          end
        end""",
    # Joins `group` `times` times as `label`, prints what it gets until "leave".
    "member.lua": """
        local pg, json, time = require("pg"), require("json"), require("time")
        return function(group, label, times)
          for _ = 1, times do  -- Unavailable is retryable (a NATS cluster still placing its buckets)
            local ok, err = pg.join(group)
            while not ok and err:kind() == errors.UNAVAILABLE do
              time.sleep("200ms")
              ok, err = pg.join(group)
            end
            assert(ok, err)
          end
          print("joined " .. label)
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            if msg:topic() == "leave" then return end
            print("got " .. label .. " " .. msg:topic() .. " " .. json.encode(msg:payload():data()))
          end
        end""",
    "broadcaster.lua": """
        local pg = require("pg")
        return function(group, topic, value)
          local ok, err = pg.broadcast(group, topic, value)
          print("broadcast " .. tostring(ok) .. " " .. tostring(err and err:message()))
        end""",
    # Monitors `group`: prints the snapshot's size, then each join and leave.
    "pgwatch.lua": """
        local pg, json = require("pg"), require("json")
        return function(group)
          print("snapshot " .. #pg.monitor(group))
          local events = process.events()
          while true do
            local ev = events:receive()
            print("pg " .. ev.kind .. " " .. ev.group .. " " .. ev.from .. " members " .. #pg.members(group))
          end
        end""",
    # Registers `name` cluster-wide (unless spawned with it), then prints each message
    # it gets until "stop".
    "holder.lua": """
        local json = require("json")
        return function(name, registered)
          if not registered then
            local ok, err = process.registry.register(name, nil, process.registry.CONSISTENT)
            print("register " .. name .. ": " .. tostring(ok) .. " " .. tostring(err and err:kind()))
          end
          local inbox = process.inbox()
          while true do
            local msg = inbox:receive()
            if msg:topic() == "stop" then return "stopped" end
            print("got " .. name .. " " .. msg:topic() .. " " .. json.encode(msg:payload():data()))
          end
        end""",
    # Registers the names n1..n<count> at once (a coroutine each) and prints those it won.
    "racer.lua": """
        local json = require("json")
        return function(count)
          local won, results = {}, channel.new(count)
          for i = 1, count do
            coroutine.spawn(function()
              local ok, err = process.registry.register("n" .. i, nil, process.registry.CONSISTENT)
              results:send({ i = i, ok = ok == true, kind = err and err:kind() })
            end)
          end
          local kinds = {}
          for _ = 1, count do
            local r = results:receive()
            if r.ok then won[#won + 1] = r.i else kinds[#kinds + 1] = r.kind end
          end
          print("won " .. json.encode({ won = won, lost = kinds }))
          process.inbox():receive()  -- keeps its names until stopped
        end""",
    # Monitors and links (trapping) `name`, prints what comes.
    "watcher.lua": """
        return function(name)
          process.set_options({ trap_links = true })
          local ok, err = process.monitor(name)
          local ok2, err2 = process.link(name)
          print("watching " .. name .. " " .. tostring(ok) .. " " .. tostring(ok2))
          local events = process.events()
          while true do
            local ev = events:receive()
            local e = ev.result and ev.result.error
            print("event " .. ev.kind .. " from " .. ev.from .. " " .. tostring(e and e:message()))
          end
        end""",
    "sender.lua": """
        return function(name, topic, value)
          local ok, err = process.send(name, topic, value)
          print("sent " .. tostring(ok) .. " " .. tostring(err and err:message()))
        end""",
    # Spawns app:holder with a cluster name; prints the PID or the error kind.
    "named.lua": """
        return function(name)
          local pid, err = process.with_name(name, process.registry.CONSISTENT):spawn("app:holder", "app:host", name, true)
          print("named " .. tostring(pid) .. " " .. tostring(err and err:kind()))
          process.inbox():receive()
        end""",
    "locker.lua": """
        local system, time = require("system"), require("time")
        return function(name, wait)
          print("trying " .. name .. " " .. tostring(wait))
          local ok, err = system.lock.acquire(name, wait)
          while ok == nil and err:kind() == errors.UNAVAILABLE do  -- retryable, as above
            time.sleep("200ms")
            ok, err = system.lock.acquire(name, wait)
          end
          print("lock " .. name .. " " .. tostring(ok) .. " " .. tostring(err and err:kind()) .. " on "
                .. system.node.id())
          local again, err2 = system.lock.acquire(name)
          print("again " .. tostring(again) .. " " .. tostring(err2 and err2:kind()))
          process.inbox():receive()
        end""",
}


async def _nodes(tmp_path: Path, url: str, spawn_node, names: tuple[str, ...]) -> dict[str, Any]:
    project = write_project(tmp_path / "project", PROJECT)
    started = await asyncio.gather(*(spawn_node(project, name, nats_url=url, args=FAST_LIVENESS) for name in names))
    return dict(zip(names, started))


async def _spawn(nc: nats.NATS, node: str, entry: str, *args: Any, reachable_within: float = 0.0) -> str:
    """Spawn on ``node``; with ``reachable_within``, asking again while nobody answers
    (the node, or this client, reconnecting to another server)."""
    deadline = time.monotonic() + reachable_within
    while True:
        try:
            reply = await nc.request(f"mw.ctl.{node}.spawn", json.dumps(
                {"entry": entry, "host": "app:host", "args": list(args)}).encode(), timeout=10)
            break
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # no event says when the node's subscription is back
    body = json.loads(reply.data)
    assert "result" in body, body
    return body["result"]["pid"]


async def _lookup(nc: nats.NATS, node: str, name: str) -> dict[str, Any]:
    return json.loads((await nc.request(f"mw.ctl.{node}.lookup", json.dumps({"name": name}).encode(), timeout=5)).data)


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Ask ``check`` until it holds: a replica's change sends the test no event."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)


async def test_names_race_route_watch_and_free_across_three_nodes(tmp_path: Path, own_nats, spawn_node) -> None:
    nodes = await _nodes(tmp_path, own_nats.address, spawn_node, ("ca", "cb", "cc"))
    nc = await nats.connect(own_nats.address)
    try:
        # Three nodes race for the same 50 names: exactly one owner each.
        await asyncio.gather(*(_spawn(nc, node, "app:racer", 50) for node in nodes))
        won: dict[int, str] = {}
        for name, node in nodes.items():
            line = await node.wait_for_line(r"\] won \{")
            result = json.loads(line.split("] won ", 1)[1])
            assert set(result["lost"]) <= {"AlreadyExists"}, result
            for i in result["won"]:
                assert i not in won, f"n{i} won by {won[i]} and {name}"
                won[i] = name
        assert sorted(won) == list(range(1, 51))
        # Every node resolves each name to its owner's process (from its replica).
        for i in (1, 25, 50):
            for node in nodes:
                pid = (await _lookup(nc, node, f"n{i}"))["result"]
                assert pid.startswith("{" + won[i] + "@"), (i, node, pid)

        # Send, monitor and link by name, across nodes; then the owner exits.
        await _spawn(nc, "ca", "app:holder", "counter")
        await nodes["ca"].wait_for_line(r"register counter: true nil")
        await _spawn(nc, "cc", "app:watcher", "counter")
        await nodes["cc"].wait_for_line(r"watching counter true true")
        await _spawn(nc, "cb", "app:sender", "counter", "hello", "from-cb")
        await nodes["cb"].wait_for_line(r"sent true nil")
        await nodes["ca"].wait_for_line(r'got counter hello "from-cb"')
        # From outside, through any node of the queue group, to the holder on ca.
        await nc.publish("mw.n.counter.orders.new", b'{"id": 7}')
        await nodes["ca"].wait_for_line(r'got counter orders.new \{"id":7\}')
        # The CLI sends by name too, and spawns under a cluster name (once).
        code, _, err = await run_cli("send", "counter", "cli", '"hi"', "--nats", own_nats.address)
        assert code == 0, err
        await nodes["ca"].wait_for_line(r'got counter cli "hi"')
        spawn = ("spawn", "app:holder", "clinamed", "true", "--host", "app:host", "--node", "cb", "--name", "clinamed",
                 "--scope", "consistent", "--nats", own_nats.address)
        code, out, err = await run_cli(*spawn)
        assert code == 0 and out.startswith("{cb@"), (out, err)
        code, out, err = await run_cli(*spawn)
        assert code != 0 and "AlreadyExists" in out + err, (out, err)
        # A name nobody holds: dead-lettered with its reason.
        dead = await nc.subscribe("mw.dlq.*")
        await nc.flush()
        await nc.publish("mw.n.nobody.x", b"1")
        letter = await dead.next_msg(timeout=5)
        assert "no process holds the cluster name 'nobody'" in letter.headers["Mw-Dlq-Reason"]
        # A malformed body to a held name: dead-lettered too, and the holder carries on.
        await nc.publish("mw.n.counter.bad", b"\xc1", headers={"Content-Type": "application/msgpack"})
        letter = await dead.next_msg(timeout=5)
        assert letter.headers["Mw-Dlq-Subject"] == "mw.n.counter.bad", letter.headers
        assert "malformed msgpack" in letter.headers["Mw-Dlq-Reason"], letter.headers

        await nc.publish("mw.n.counter.stop", b"")
        await nodes["cc"].wait_for_line(r"event pid.exit from \{ca@")
        # Released on exit: no node resolves it any more (the replicas follow the bucket).
        async def freed_everywhere() -> bool:
            return all(["error" in await _lookup(nc, node, "counter") for node in nodes])
        await _eventually(freed_everywhere, 5, "counter freed on every node after its owner exited")

        # with_name in a cluster scope: the first spawn gets it, the second AlreadyExists.
        await _spawn(nc, "ca", "app:named", "solo")
        await nodes["ca"].wait_for_line(r"named \{ca@app:host\|\S+\} nil")
        await _spawn(nc, "cb", "app:named", "solo")
        await nodes["cb"].wait_for_line(r"named nil AlreadyExists")
        await nc.publish("mw.n.solo.ping", b'"x"')
        await nodes["ca"].wait_for_line(r'got solo ping "x"')

        # kill -9 of a holder's node: its names go within the node-down window.
        await _spawn(nc, "cb", "app:holder", "victim")
        await nodes["cb"].wait_for_line(r"register victim: true nil")
        async def ca_sees_victim() -> bool:  # ca's replica follows the bucket: soon, not at once
            return (await _lookup(nc, "ca", "victim")).get("result", "").startswith("{cb@")
        await _eventually(ca_sees_victim, 5, "ca to see cb's name")
        await nodes["cb"].kill()
        names_of_cb = ["victim"] + [f"n{i}" for i, n in won.items() if n == "cb"]

        async def cb_names_freed() -> bool:
            return all(["error" in await _lookup(nc, "ca", name) for name in names_of_cb])
        # The node-down window (1 s here) plus the conditional deletes.
        await _eventually(cb_names_freed, 6, "the names of the killed node freed")
    finally:
        await nc.close()


async def test_a_lock_held_by_a_killed_node_goes_to_the_next_waiter(tmp_path: Path, own_nats, spawn_node) -> None:
    nodes = await _nodes(tmp_path, own_nats.address, spawn_node, ("la", "lb"))
    nc = await nats.connect(own_nats.address)
    try:
        await _spawn(nc, "la", "app:locker", "the-lock", None)
        await nodes["la"].wait_for_line(r"lock the-lock true nil on la")
        await nodes["la"].wait_for_line(r"again false AlreadyExists")  # not re-entrant
        # Without a wait: refused at once. With one: waits.
        await _spawn(nc, "lb", "app:locker", "the-lock", None)
        await nodes["lb"].wait_for_line(r"lock the-lock false AlreadyExists on lb")
        await _spawn(nc, "lb", "app:locker", "the-lock", "30s")
        # The lock is freed only after the node-down window, so this waiter is waiting by then.
        await nodes["lb"].wait_for_line(r"trying the-lock 30s")
        killed = time.monotonic()
        await nodes["la"].kill()
        # la may die before lb ever heard its heartbeat: the lock's holder alone tells lb
        # to expect la, so la is still declared down after the window.
        await nodes["lb"].wait_for_line(r"lock the-lock true nil on lb", timeout=15)
        assert time.monotonic() - killed < 8
    finally:
        await nc.close()


async def test_process_groups_across_three_nodes(tmp_path: Path, own_nats, spawn_node) -> None:
    nodes = await _nodes(tmp_path, own_nats.address, spawn_node, ("ga", "gb", "gc"))
    nc = await nats.connect(own_nats.address)
    try:
        await _spawn(nc, "gc", "app:pgwatch", "chat")
        await nodes["gc"].wait_for_line(r"snapshot 0")
        # Two members on ga (one joined twice), one on gb, none on gc.
        pids = {"m1": await _spawn(nc, "ga", "app:member", "chat", "m1", 2),
                "m2": await _spawn(nc, "ga", "app:member", "chat", "m2", 1),
                "m3": await _spawn(nc, "gb", "app:member", "chat", "m3", 1)}
        for label, node in (("m1", "ga"), ("m2", "ga"), ("m3", "gb")):
            await nodes[node].wait_for_line(f"joined {label}")
        # gc sees every join (m1's twice), the last with all four memberships.
        await nodes["gc"].wait_for_line(r"pg pg.member.joined chat \S+ members 4")
        # A broadcast from a node without members, then one from outside: each member
        # gets each once, however many times it joined.
        await _spawn(nc, "gc", "app:broadcaster", "chat", "hello", "from-gc")
        await nodes["gc"].wait_for_line(r"broadcast true nil")
        await nc.publish("mw.g.chat.greet", b'{"from": "outside"}')
        for label, node in (("m1", "ga"), ("m2", "ga"), ("m3", "gb")):
            await nodes[node].wait_for_line(f'got {label} hello "from-gc"')
            await nodes[node].wait_for_line(f'got {label} greet {{"from":"outside"}}')
        await nc.publish("mw.p.ga." + pids["m2"].split("|")[1][:-1] + ".leave", b"")  # m2 exits: it leaves
        await nodes["gc"].wait_for_line(r"pg pg.member.left chat \{ga@\S+ members 3")
        # kill -9 of gb: m3 leaves once gb is declared down.
        await nodes["gb"].kill()
        await nodes["gc"].wait_for_line(r"pg pg.member.left chat \{gb@\S+ members 2", timeout=10)
        for label, node in (("m1", "ga"), ("m2", "ga")):
            got = [line for line in nodes[node].lines if f"got {label} " in line]
            assert len(got) == 2, got  # once each, m1's two joins notwithstanding
    finally:
        await nc.close()


async def _until_seen(node: Any, pattern: str, publish: Callable[[], Awaitable[None]], within: float) -> None:
    """Publish (core NATS: at most once, from outside) until ``node`` prints ``pattern``:
    a message sent while a node reconnects to another server may be lost on the way."""
    deadline = time.monotonic() + within
    while True:
        await publish()
        try:
            await node.wait_for_line(pattern, timeout=0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


async def test_names_groups_and_locks_keep_working_when_a_nats_server_of_three_dies(
        tmp_path: Path, nats_cluster, spawn_node) -> None:
    urls = ",".join(server.address for server in nats_cluster)
    nc = await nats.connect(servers=[server.address for server in nats_cluster])
    try:
        # Clustered JetStream elects its meta leader after the routes are up (no event):
        # nodes started before it answers would find their buckets unavailable for a while.
        async def jetstream_answers() -> bool:
            try:
                await nc.jetstream(timeout=1).account_info()
                return True
            except Exception:  # noqa: BLE001 - not yet
                return False
        await _eventually(jetstream_answers, 30, "JetStream on the three servers")
        project = write_project(tmp_path / "project", PROJECT)
        started = await asyncio.gather(*(spawn_node(project, name, nats_url=urls) for name in ("ka", "kb", "kc")))
        nodes = dict(zip(("ka", "kb", "kc"), started))
        await _spawn(nc, "ka", "app:registrar", "survivor")
        await nodes["ka"].wait_for_line(r"registered survivor: true nil")
        await _spawn(nc, "kb", "app:member", "crew", "m1", 1)
        await nodes["kb"].wait_for_line(r"joined m1")
        await _spawn(nc, "kc", "app:locker", "the-lock", None)
        await nodes["kc"].wait_for_line(r"lock the-lock true nil on kc")

        js = nc.jetstream()
        for bucket in ("names", "groups", "locks"):  # replicas unset: one per server of the cluster
            assert (await js.stream_info(f"KV_mw_{bucket}")).config.num_replicas == 3
        await nats_cluster[0].stop()  # whichever nodes were on it reconnect to another

        # Writes: answered again once the buckets' streams have a leader (registrar retries).
        await _spawn(nc, "kb", "app:registrar", "after", reachable_within=20)
        await nodes["kb"].wait_for_line(r"registered after: true nil", timeout=40)
        # What was held before is still held, and reads and routes still work.
        await _spawn(nc, "ka", "app:locker", "the-lock", None, reachable_within=20)
        await nodes["ka"].wait_for_line(r"lock the-lock false AlreadyExists on ka")
        for node in nodes:
            async def resolves(node: str = node) -> bool:
                try:
                    return (await _lookup(nc, node, "survivor")).get("result", "").startswith("{ka@")
                except nats.errors.NoRespondersError:
                    return False
            await _eventually(resolves, 20, f"{node} to resolve survivor")
        await _until_seen(nodes["ka"], r'got survivor ping "after"',
                          lambda: nc.publish("mw.n.survivor.ping", b'"after"'), 20)
        await _until_seen(nodes["kb"], r'got m1 hi "after"', lambda: nc.publish("mw.g.crew.hi", b'"after"'), 20)
    finally:
        await nc.close()


async def test_a_node_on_a_server_without_jetstream_starts_and_says_why_cluster_calls_fail(
        tmp_path: Path, plain_nats) -> None:
    """Bad input and missing pieces (item 6): no JetStream. The node runs; a cluster
    registration, a lock and a join answer Unavailable naming JetStream; LOCAL names
    still work; the log says it once for all the stores."""
    project = write_project(tmp_path / "project", {**PROJECT, "probe.lua": """
        local system, pg = require("system"), require("pg")
        return function()
          local _, name_err = process.registry.register("x", nil, process.registry.CONSISTENT)
          local _, lock_err = system.lock.acquire("l")
          local _, join_err = pg.join("g")
          local local_ok = process.registry.register("y")
          return { name = name_err:kind(), lock = lock_err:kind(), join = join_err:kind(),
                   says = name_err:message(), local_ok = local_ok }
        end"""})
    (project / "_index.yaml").write_text((project / "_index.yaml").read_text().replace(
        "entries:\n", "entries:\n  - {name: probe, kind: function.lua, source: file://probe.lua, "
        "modules: [system, pg]}\n", 1))
    code, out, err = await run_cli("run", str(project), "--nats", plain_nats.address, "-v", "-x", "app:probe")
    assert code == 0, err
    result = json.loads(out)
    assert result["name"] == result["lock"] == result["join"] == "Unavailable", result
    assert "JetStream" in result["says"] and result["local_ok"] is True, result
    warnings = [line for line in err.splitlines() if "WARNING" in line and "JetStream" in line]
    assert len(warnings) == 1, warnings


async def test_pg_scopes_as_wippy_opens_them(tmp_path: Path, own_nats) -> None:
    """``pg.open(scope)`` (wippy-modules §10): an isolated namespace of groups with
    Wippy's instance methods; ``monitor``/``events`` give a subscription whose channel
    carries Wippy-shaped events, and the snapshot starts with it; a released instance
    refuses calls."""
    project = write_project(tmp_path / "project", {**PROJECT, "scoped.lua": """
        local pg = require("pg")
        return function()
          local a, b = pg.open("app:workers"), pg.open("app:other")
          local sub, members = a:monitor("jobs")
          local joined = a:join("jobs") and a:join({"jobs", "more"})
          local ev1 = sub:channel():receive()
          local ev2 = sub:channel():receive()
          local groups = a:which_groups(); table.sort(groups)
          local result = {
            type = type(a), snapshot = #members, joined = joined,
            ev = {ev1.system, ev1.kind, ev1.path, ev1.data.Group, ev1.data.PIDs[1] == process.pid(), ev2.kind},
            members = #a:get_members("jobs"), local_members = #a:get_local_members("jobs"),
            other = #b:get_members("jobs"), other_groups = #b:which_groups(), groups = groups,
            flat = #pg.members("jobs"),
          }
          local all_sub, all = a:events()
          result.all_jobs = #all.jobs
          a:leave("more")
          local ev3 = all_sub:channel():receive()
          result.left = {ev3.kind, ev3.path}
          local _, none = a:leave("nothing")
          result.leave_none = none and none:kind()
          sub:close(); all_sub:close()
          local _, open = sub:channel():receive()
          result.closed = not open
          a:release()
          local _, released = a:join("x")
          result.released = released and released:message()
          local _, empty = pg.open("")
          result.empty = empty and empty:kind()
          -- Scopes are one to one: neither "a/b" and "a:b", nor a scope and a group's
          -- slash, meet another scope's groups.
          local c1, c2 = pg.open("a:b"), pg.open("a/b")
          local c3, c4 = pg.open("app:chat"), pg.open("app:chat/room")
          c1:join("g"); c3:join("room/1")
          result.isolated = {#c2:get_members("g"), #c4:get_members("1"), #c4:which_groups(), #c1:get_members("g")}
          -- Two subscriptions on one group both get each event; closing one keeps the other.
          local s1 = c1:monitor("g")
          local s2 = c1:monitor("g")
          c1:join("g")
          local e1, e2 = s1:channel():receive(), s2:channel():receive()
          s1:close()
          c1:leave("g")
          local e3 = s2:channel():receive()
          result.both = {e1.kind, e2.kind, e3.kind}
          return result
        end"""})
    (project / "_index.yaml").write_text((project / "_index.yaml").read_text().replace(
        "entries:\n", "entries:\n  - {name: scoped, kind: process.lua, source: file://scoped.lua, modules: [pg]}\n", 1))
    code, out, err = await run_cli("run", str(project), "--nats", own_nats.address, "-x", "app:scoped")
    assert code == 0, err
    assert json.loads(out) == {
        "type": "userdata", "snapshot": 0, "joined": True,
        "ev": ["pg", "member.joined", "jobs", "jobs", True, "member.joined"],
        "members": 2, "local_members": 2, "other": 0, "other_groups": 0, "groups": ["jobs", "more"],
        "flat": 0, "all_jobs": 2, "left": ["member.left", "more"], "leave_none": "NotFound",
        "closed": True, "released": "pg instance is released", "empty": "Invalid",
        "isolated": [0, 0, 0, 1], "both": ["member.joined", "member.joined", "member.left"],
    }
