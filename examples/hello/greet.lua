-- A function entry: stateless, served on the NATS queue group mw.fn.hello:greet by
-- every node that runs this project.
local function greet(name)
    return "hello, " .. (name or "world")
end

return { greet = greet }
