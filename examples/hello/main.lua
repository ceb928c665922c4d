-- Runs with `moonwire run examples/hello -x hello:main`: two processes exchange
-- messages, then a supervised service crashes and comes back.
local time = require("time")
local funcs = require("funcs")

-- The supervisor registers nothing itself: wait until the service has (re)registered.
local function lookup_when_up(name, not_this)
    for _ = 1, 100 do
        local pid = process.registry.lookup(name)
        if pid and pid ~= not_this then return pid end
        time.sleep("20ms")
    end
    error(name .. " did not come up")
end

local function main(rounds)
    -- 1. Ping-pong with a linked process.
    local pong = process.spawn_linked("hello:pong", "hello:host")
    local inbox, replies = process.inbox(), {}
    for i = 1, rounds or 3 do
        process.send(pong, "ping", i)
        replies[i] = inbox:receive():payload():data()
    end
    process.send(pong, "stop")

    -- 2. Crash the counter service and watch the supervisor restart it.
    local counter = lookup_when_up("counter")
    process.send(counter, "add", 5)
    process.monitor(counter)
    process.send(counter, "crash")
    local exit = process.events():receive()
    local restarted = lookup_when_up("counter", counter)
    process.send(restarted, "get")
    local count = inbox:receive():payload():data()

    return {
        replies = replies,
        crash = exit.result.error:message(),
        restarted = restarted ~= counter,
        count_after_restart = count,
        greeting = funcs.call("hello:greet", "processes"),
    }
end

return { main = main }
