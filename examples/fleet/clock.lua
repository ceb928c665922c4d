-- The cluster's singleton: logs every "ping" it gets, with the node it runs on, until
-- the node stops (a CANCEL), when another node takes over.
local logger = require("logger")

local function main()
    logger:info("clock started", { pid = process.pid() })
    local inbox, events = process.inbox(), process.events()
    local pings = 0
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if r.channel == events then
            return pings
        end
        pings = pings + 1
        logger:info("ping", { pid = process.pid(), pings = pings, payload = r.value:payload() and r.value:payload():data() })
    end
end

return { main = main }
