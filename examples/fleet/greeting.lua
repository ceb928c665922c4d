-- A workflow: the greeting is an activity, run by whichever node's worker takes it.
local funcs = require("funcs")

return function(name)
    local text, err = funcs.call("fleet:greet", name)
    if err then
        return nil, err
    end
    return { greeting = text }
end
