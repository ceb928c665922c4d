-- Calls another function through funcs.call (locally here, or on whichever node
-- serves it), passing context along, and uses a few core modules.
local funcs = require("funcs")
local time = require("time")
local json = require("json")
local logger = require("logger")

return function(names)
    local greetings = {}
    for i, name in ipairs(names or { "world" }) do
        local text, err = funcs.new():with_context({ caller = "welcome" }):call("hello:greet", name)
        if err then
            return nil, errors.wrap(err, "greeting " .. tostring(name))
        end
        greetings[i] = text
    end
    logger:info("welcomed", { count = #greetings })
    return { greetings = greetings, at = time.now():utc():format(time.RFC3339), encoded = json.encode(greetings) }
end
