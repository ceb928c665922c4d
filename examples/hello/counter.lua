-- A supervised service (see counter.service): registers the name "counter", keeps a
-- count in memory, and crashes on request. The supervisor restarts it with a fresh
-- count after a backoff; a CANCEL (the node stopping) ends it normally.
local logger = require("logger")

local function main(start)
    assert(process.registry.register("counter"))
    local count = start or 0
    logger:info("counter started", { pid = process.pid(), count = count })
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if r.channel == events then
            return count
        end
        local msg = r.value
        local topic = msg:topic()
        if topic == "add" then
            count = count + msg:payload():data()
            logger:info("added", { from = msg:from(), count = count })
        elseif topic == "get" then
            process.send(msg:from(), "count", count)
        elseif topic == "crash" then
            error("asked to crash with count " .. count)
        end
    end
end

return { main = main }
