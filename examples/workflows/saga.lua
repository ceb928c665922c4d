-- A saga: each step that succeeded registers its undo; when a later step fails, the
-- undos run in reverse order. Survives a crash of the node at any point: Temporal
-- replays this code and the steps already done are not run again.
local funcs = require("funcs")

local STEPS = {
    { run = "shop:reserve", undo = "shop:release" },
    { run = "shop:charge", undo = "shop:refund" },
    { run = "shop:ship" },
}

return function(order)
    local undo = {}
    local done = {}
    for _, step in ipairs(STEPS) do
        local result, err = funcs.call(step.run, order)
        if err then
            local compensated = {}
            for i = #undo, 1, -1 do
                local _, undo_err = funcs.call(undo[i], order)
                if undo_err then return nil, errors.wrap(undo_err, "compensation " .. undo[i] .. " failed") end
                compensated[#compensated + 1] = undo[i]
            end
            return { status = "compensated", failed = step.run, error = err:message(), compensated = compensated }
        end
        done[#done + 1] = result
        undo[#undo + 1] = step.undo
    end
    return { status = "shipped", done = done }
end
