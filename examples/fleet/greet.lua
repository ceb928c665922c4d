-- Served on the NATS queue group mw.fn.fleet:greet by every node of the fleet.
local function greet(name)
    return "hello, " .. (name or "world")
end

return { greet = greet }
