-- Sleeps for a day (a durable timer: a restart of every node does not reset it) and
-- answers "status" signals while it waits, replying to whoever asked.
local time = require("time")

return function(duration)
    local started = time.now()
    local wake = time.after(duration or "24h")
    local asks = process.listen("status", { message = true })
    local answered = 0
    while true do
        local got = channel.select({ wake:case_receive(), asks:case_receive() })
        if got.channel == wake then
            return { woke = true, answered = answered }
        end
        answered = answered + 1
        local asker = got.value:from()
        if asker ~= "" then
            process.send(asker, "status", { sleeping = true, since = started:format(time.RFC3339) })
        end
    end
end
