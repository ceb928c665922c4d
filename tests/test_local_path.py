"""The local message path (docs/architecture.md, "The local message path"): processes
that share a Lua state exchange messages in Lua, and everything a mailbox promises holds
on it: order per sender (whichever path each message took, beside messages from other
states and from the wire), the bound, ``moonwire ps`` depth, metrics, isolation between
the processes of a state, and an event loop a flooding sender cannot hold.

Every test runs a real scheduler with no broker (``LocalRuntime``); a message "from the
wire" enters through ``ProcessTable.deliver``, where the node's inbox subscription hands
each decoded message over."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from support import LocalRuntime

from moonwire.lua import Message


def project(sources: dict[str, str], mailbox_limit: int = 4096) -> dict[str, str]:
    """One host (``app:host``, with ``mailbox_limit``) and a process entry per source."""
    entries = [f"  - {{name: host, kind: process.host, host: {{mailbox_limit: {mailbox_limit}}}}}\n"]
    files = {f"{name}.lua": source for name, source in sources.items()}
    entries += [f"  - {{name: {name}, kind: process.lua, source: file://{name}.lua, method: main}}\n"
                for name in sources]
    files["_index.yaml"] = "namespace: app\nentries:\n" + "".join(entries)
    return files


def record_of(runtime: Any, entry: str) -> Any:
    """The live process record of ``entry`` (one of it is running)."""
    return next(r for r in runtime.processes.records.values() if r.entry == entry and r.unit.outcome is None)


async def started(runtime: Any, entry: str) -> Any:
    """The record of ``entry`` once the scheduler has started it (it waits on its inbox)."""
    while not any(r.entry == entry for r in runtime.processes.records.values()):
        await asyncio.sleep(0)
    record = record_of(runtime, entry)
    while record.unit.mailbox.box is not None and not record.unit.mailbox.open:
        await asyncio.sleep(0)
    return record


def depth_in_ps(runtime: Any, pid: str) -> int:
    """The inbox depth ``moonwire ps`` shows for ``pid`` (the control verb it asks)."""
    listing = runtime.processes.control("ps", {"limit": 10_000})["list"]
    return next(p["inbox"] for p in listing if p["pid"] == pid)


# ---------------------------------------------------------------- order per sender

# The receiver checks that each sender's numbers come in order, 1, 2, 3...
ORDER_RECEIVER = """
return { main = function(parent, total)
  local inbox, last, bad = process.inbox(), {}, false
  for _ = 1, total do
    local m = inbox:receive()
    local data = m:payload():data()
    local seq = type(data) == "table" and data.seq or data
    if seq ~= (last[m:from()] or 0) + 1 then bad = bad or (m:from() .. " sent " .. tostring(seq)) end
    last[m:from()] = seq
  end
  process.send(parent, "done", { bad = bad, last = last })
end }"""

# Every third message carries a table: Python's path (converted, copied) between local ones.
ORDER_SENDER = """
return { main = function(to, n)
  for i = 1, n do
    if i % 3 == 0 then process.send(to, "n", { seq = i }) else process.send(to, "n", i) end
  end
end }"""

# On the terminal host: another Lua state, so its messages take Python's path.
ORDER_DRIVER = """
return { main = function(local_n, own_n, wire_n)
  local inbox = process.inbox()
  local receiver = process.spawn("app:receiver", "app:host", process.pid(), 2 * local_n + own_n + wire_n)
  process.spawn("app:sender", "app:host", receiver, local_n)
  process.spawn("app:sender", "app:host", receiver, local_n)
  for i = 1, own_n do process.send(receiver, "n", i) end
  return inbox:receive():payload():data()
end }"""


async def test_order_per_sender_holds_across_the_local_path_python_s_and_the_wire(tmp_path: Path) -> None:
    local_n, own_n, wire_n = 3000, 500, 500
    files = project({"driver": ORDER_DRIVER, "receiver": ORDER_RECEIVER, "sender": ORDER_SENDER},
                    mailbox_limit=100_000)
    async with LocalRuntime(tmp_path, files) as runtime:
        driver = asyncio.ensure_future(runtime.execute("app:driver", [local_n, own_n, wire_n]))
        receiver = await started(runtime, "app:receiver")
        uid = receiver.pid[receiver.pid.index("|") + 1:-1]
        wire_sender = "{n2@elsewhere|remote1}"
        for i in range(1, wire_n + 1):  # from the wire, interleaved with the senders' turns
            runtime.processes.deliver(uid, Message("n", [i], wire_sender))
            await asyncio.sleep(0)
        outcome = await driver
        in_lua = runtime.hosts["app:host"].delivered_in_lua()
        senders = [r for r in runtime.processes.records.values() if r.entry == "app:sender"]
    assert outcome.error is None, outcome.error
    report = outcome.value
    assert report["bad"] is False, report["bad"]
    assert sorted(report["last"].values()) == sorted([local_n, local_n, own_n, wire_n])
    assert all(s.unit.state is receiver.unit.state for s in senders)  # one state: the local path applies
    assert in_lua == 2 * (local_n - local_n // 3)  # every scalar message of the two senders stayed in Lua


# ---------------------------------------------------------------- bound, depth, metrics

# Opens its inbox and never reads it; ends on a CANCEL.
HOLDER = """
return { main = function()
  process.inbox()
  process.events():receive()
end }"""

FLOODER = """
return { main = function(to, n, payload)
  local ok, first_err = 0, nil
  for i = 1, n do
    local sent, err = process.send(to, "n", payload or i)
    if sent then ok = ok + 1 elseif first_err == nil then first_err = err end
  end
  return { ok = ok, kind = first_err and first_err:kind(), retryable = first_err and first_err:retryable(),
           message = first_err and tostring(first_err) }
end }"""

BOUND_DRIVER = """
return { main = function(n, payload)
  local events = process.events()
  local holder = process.spawn("app:holder", "app:host")
  process.spawn_monitored("app:flooder", "app:host", holder, n, payload)
  local result = events:receive().result
  return { holder = holder, flooded = result.value, error = result.error and tostring(result.error) }
end }"""


async def test_the_bound_holds_on_the_local_path_and_ps_shows_the_exact_depth(tmp_path: Path) -> None:
    limit, extra = 50, 7
    files = project({"driver": BOUND_DRIVER, "holder": HOLDER, "flooder": FLOODER}, mailbox_limit=limit)
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [limit + extra])
        assert outcome.error is None, outcome.error
        value = outcome.value
        holder = runtime.processes.records[value["holder"]]
        depth, dropped = depth_in_ps(runtime, holder.pid), holder.unit.mailbox.dropped
        in_lua = runtime.hosts["app:host"].delivered_in_lua()
        by_origin = runtime.processes.counts.by_origin()
    assert value.get("error") is None
    assert value["flooded"]["ok"] == limit
    assert value["flooded"]["kind"] == "Unavailable" and value["flooded"]["retryable"] is True
    assert f"mailbox of {holder.pid} is full ({limit} unread messages)" in value["flooded"]["message"]
    assert depth == limit and dropped == extra
    assert in_lua == limit and by_origin["local"] >= limit  # counted, though Python never saw one


async def test_ps_depth_counts_messages_queued_in_lua_one_by_one(tmp_path: Path) -> None:
    files = project({"driver": BOUND_DRIVER, "holder": HOLDER, "flooder": FLOODER})
    async with LocalRuntime(tmp_path, files) as runtime:
        depths = []
        for n in (1, 7, 300):
            outcome = await runtime.execute("app:driver", [n])
            assert outcome.error is None, outcome.error
            depths.append(depth_in_ps(runtime, outcome.value["holder"]))
        in_lua = runtime.hosts["app:host"].delivered_in_lua()
    assert depths == [1, 7, 300]
    assert in_lua == 308


# ---------------------------------------------------------------- topics, isolation

# Reads nothing until told (CANCEL), then listens to "b": what its inbox already held
# stays there, in order; later "b"s go to the topic, later others to the inbox.
LISTENER = """
return { main = function(parent)
  local inbox = process.inbox()
  process.events():receive()
  local b = process.listen("b")
  process.send(parent, "listening")
  local got = {}
  for _ = 1, 4 do local m = inbox:receive() got[#got + 1] = m:topic() .. m:payload():data() end
  for _ = 1, 2 do got[#got + 1] = "b" .. b:receive() end  -- a plain listen hands the value
  process.send(parent, "got", got)
end }"""

TALKER = """
return { main = function(to, phase)
  if phase == 1 then
    process.send(to, "a", "1") process.send(to, "b", "2") process.send(to, "a", "3")
    process.cancel(to)
  else
    process.send(to, "b", "4") process.send(to, "a", "5") process.send(to, "b", "6")
  end
end }"""

LISTEN_DRIVER = """
return { main = function()
  local inbox = process.inbox()
  local listener = process.spawn("app:listener", "app:host", process.pid())
  process.spawn("app:talker", "app:host", listener, 1)
  inbox:receive()                                   -- listening
  process.spawn("app:talker", "app:host", listener, 2)
  return inbox:receive():payload():data()
end }"""


async def test_a_first_listen_takes_the_queued_messages_back_in_order(tmp_path: Path) -> None:
    files = project({"driver": LISTEN_DRIVER, "listener": LISTENER, "talker": TALKER})
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])
        in_lua = runtime.hosts["app:host"].delivered_in_lua()
    assert outcome.error is None, outcome.error
    assert outcome.value == ["a1", "b2", "a3", "a5", "b4", "b6"]
    assert in_lua == 3  # phase 1 in Lua; phase 2 after the listen, through Python


# Walks everything its code can reach (globals, modules, metatables it may read, its own
# messages and channels) for the secret a neighbour's queue holds.
SNOOP = """
return { main = function(parent, secret)
  local seen, found = {}, {}
  local function walk(v, path, depth, target)
    target = target or secret
    if depth > 12 then return end
    if v == target then found[#found + 1] = path return end
    local t = type(v)
    if t ~= "table" and t ~= "userdata" and t ~= "function" and t ~= "string" then return end
    if seen[v] then return end
    seen[v] = true
    local ok, mt = pcall(getmetatable, v)
    if ok and type(mt) == "table" then walk(mt, path .. "<mt>", depth + 1, target) end
    if t == "table" then
      for k, x in next, v do
        walk(k, path .. ".<key>", depth + 1, target)
        walk(x, path .. "." .. tostring(k), depth + 1, target)
      end
    end
  end
  local inbox = process.inbox()
  process.send(process.pid(), "mine", "my-own-payload")
  local mine = inbox:receive()
  walk(mine, "message", 0, "my-own-payload")       -- the walk finds what is reachable
  if #found ~= 1 then error("the walk missed the payload of its own message") end
  found, seen = {}, {}
  walk(_ENV, "_ENV", 0)
  walk(mine, "message", 0)
  walk(inbox, "inbox", 0)
  walk(process.events(), "events", 0)
  walk(string, "string", 0)
  process.send(parent, "found", found)
  process.events():receive()  -- stays, so the test can see where it ran
end }"""

# Starts `entry` on app:host with (its own PID, `arg`) and returns what it sends first.
ASK = """
return { main = function(entry, arg)
  local inbox = process.inbox()
  process.spawn(entry, "app:host", process.pid(), arg)
  return inbox:receive():payload():data()
end }"""


async def test_a_process_cannot_reach_the_queue_of_another_in_its_state(tmp_path: Path) -> None:
    secret = "secret-8f1c0e2d"
    files = project({"driver": BOUND_DRIVER, "holder": HOLDER, "flooder": FLOODER, "snoop": SNOOP,
                     "ask": ASK})
    async with LocalRuntime(tmp_path, files) as runtime:
        filled = await runtime.execute("app:driver", [5, secret])  # the secret waits in the holder's box
        assert filled.error is None, filled.error
        outcome = await runtime.execute("app:ask", ["app:snoop", secret])
        assert outcome.error is None, outcome.error
        holder = runtime.processes.records[filled.value["holder"]]
        snoop = next(r for r in runtime.processes.records.values() if r.entry == "app:snoop")
        held = depth_in_ps(runtime, holder.pid)
        in_lua = runtime.hosts["app:host"].delivered_in_lua()
    assert snoop.unit.state is holder.unit.state
    assert held == 5 and in_lua >= 5     # the secret waits in the holder's box, in this state
    assert outcome.value in ([], {})     # and the neighbour reached none of it (no path)


# ---------------------------------------------------------------- the event loop

ENDLESS = """
return { main = function(to)
  local i = 0
  while true do
    i = i + 1
    process.send(to, "n", i)
  end
end }"""

ENDLESS_DRIVER = """
return { main = function()
  local holder = process.spawn("app:holder", "app:host")
  return { holder = holder, flooder = process.spawn("app:flooder", "app:host", holder) }
end }"""


async def test_a_sender_flooding_in_lua_cannot_hold_the_event_loop(tmp_path: Path) -> None:
    files = project({"driver": ENDLESS_DRIVER, "holder": HOLDER, "flooder": ENDLESS}, mailbox_limit=10_000_000)
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [])
        assert outcome.error is None, outcome.error
        holder = runtime.processes.records[outcome.value["holder"]]
        flooder = runtime.processes.records[outcome.value["flooder"]]
        ticks = 0

        async def other_task() -> None:
            nonlocal ticks
            for _ in range(200):
                await asyncio.sleep(0)
                ticks += 1

        first = depth_in_ps(runtime, holder.pid)
        await asyncio.wait_for(other_task(), 60)
        last = depth_in_ps(runtime, holder.pid)
        alive = flooder.unit.outcome is None
        in_lua = runtime.hosts["app:host"].delivered_in_lua()
    assert ticks == 200               # the other task had its turns while the flood went on
    assert alive                      # and the flooder kept within its instruction budget
    assert last > first and in_lua >= last


# ---------------------------------------------------------------- memory

# Waits for its CANCEL, then reads `n` messages and tells the driver their numbers.
READER = """
return { main = function(parent, n)
  local inbox = process.inbox()
  process.events():receive()
  local got = {}
  for i = 1, n do got[i] = inbox:receive():payload():data().seq end
  process.send(parent, "got", got)
end }"""

async def test_posts_past_half_the_memory_limit_leave_the_box_and_lose_nothing(tmp_path: Path) -> None:
    # Messages posted from Python are Lua values in a box; no Lua code runs meanwhile to
    # check the state's memory limit, so past half of it the box closes and the mailbox
    # holds them in Python, as before the local path.
    n, blob = 60, "x" * 100_000  # 6 MB of payloads for a state limited to 8 MiB
    files = project({"ask": ASK, "reader": READER})
    files["_index.yaml"] = files["_index.yaml"].replace("mailbox_limit: 4096", "mailbox_limit: 4096, memory_limit: 8MiB")
    async with LocalRuntime(tmp_path, files) as runtime:
        driver = asyncio.ensure_future(runtime.execute("app:ask", ["app:reader", n]))
        reader = await started(runtime, "app:reader")
        uid = reader.pid[reader.pid.index("|") + 1:-1]
        for i in range(1, n + 1):
            runtime.processes.deliver(uid, Message("n", [{"seq": i, "blob": blob}], "{n2@elsewhere|remote1}"))
        still_open, depth = reader.unit.mailbox.open, depth_in_ps(runtime, reader.pid)
        runtime.processes.control("cancel", {"target": reader.pid, "by": "", "reason": "read now"})
        outcome = await driver
    assert still_open is False and depth == n
    assert outcome.error is None, outcome.error
    assert outcome.value == list(range(1, n + 1))


# A sender in the state floods a neighbour that does not read, with fresh strings: each
# one is new Lua memory, which the box would keep in the state every process shares.
BIG_FLOODER = """
return { main = function(to, n)
  for i = 1, n do
    local sent, err = process.send(to, "n", string.rep("x", 2000) .. i)
    if not sent then return tostring(err) end
  end
  return n
end }"""

# Reads nothing until cancelled, then checks the `n` messages came whole and in order.
COUNTING_READER = """
return { main = function(parent, n)
  local inbox = process.inbox()
  process.events():receive()
  local bad = false
  for i = 1, n do
    local s = inbox:receive():payload():data()
    if s ~= string.rep("x", 2000) .. i then bad = bad or i end
  end
  process.send(parent, "got", bad or n)
end }"""

FLOOD_DRIVER = """
return { main = function(n)
  local inbox, events = process.inbox(), process.events()
  local reader = process.spawn("app:reader", "app:host", process.pid(), n)
  process.spawn_monitored("app:flooder", "app:host", reader, n)
  local result = events:receive().result
  process.cancel(reader, "read now")
  return { flooded = result.value, error = result.error and tostring(result.error),
           got = inbox:receive():payload():data() }
end }"""


async def test_a_flood_in_lua_past_half_the_memory_limit_leaves_the_box_and_lose_nothing(tmp_path: Path) -> None:
    # 10,000 messages of 2 KB (20 MB) to a neighbour in a state limited to 8 MiB: past
    # half of the limit the sends take Python's path, which closes the box, so the
    # backlog is held in Python; the state never runs out of memory.
    n = 10_000
    files = project({"driver": FLOOD_DRIVER, "reader": COUNTING_READER, "flooder": BIG_FLOODER},
                    mailbox_limit=1_000_000)
    files["_index.yaml"] = files["_index.yaml"].replace("mailbox_limit: 1000000", "mailbox_limit: 1000000, "
                                                        "memory_limit: 8MiB")
    async with LocalRuntime(tmp_path, files) as runtime:
        outcome = await runtime.execute("app:driver", [n])
        in_lua = runtime.hosts["app:host"].delivered_in_lua()
    assert outcome.error is None, outcome.error
    assert outcome.value == {"flooded": n, "got": n}
    assert 0 < in_lua < n  # the local path carried the first ones, Python's the rest
