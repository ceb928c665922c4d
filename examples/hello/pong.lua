-- Answers every "ping" with a "pong" to whoever sent it, until asked to stop or cancelled.
local function main()
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if r.channel == events then
            return "cancelled: " .. tostring(r.value.reason)
        end
        local msg = r.value
        if msg:topic() == "stop" then
            return "stopped"
        end
        process.send(msg:from(), "pong", "pong " .. tostring(msg:payload():data()))
    end
end

return { main = main }
