-- Runs each workflow from a process and prints what it returned.
local time = require("time")

local function main()
    local shipped = process.exec("shop:order", "shop:worker", { id = "o-1", amount = 30, address = "1 Main St" })
    local declined = process.exec("shop:order", "shop:worker", { id = "o-2", amount = 99, card = "declined" })
    local unshippable = process.exec("shop:order", "shop:worker", { id = "o-3", amount = 5 })

    -- The reminder sleeps 2 seconds here (a day by default); ask it how it is doing.
    local reminder = process.spawn_monitored("shop:reminder", "shop:worker", "2s")
    local replies = process.listen("status")
    process.send(reminder, "status")
    local status = replies:receive()
    local woke = process.events():receive()

    -- The approval waits for a signal; this process sends it.
    local approval = process.spawn_monitored("shop:approval", "shop:worker", "expense 42")
    process.send(approval, "approve", { by = "ann" })
    local approved = process.events():receive()

    return {
        shipped = shipped, declined = declined, unshippable = unshippable,
        reminder = { status = status, result = woke.result.value },
        approval = approved.result.value,
    }
end

return { main = main }
