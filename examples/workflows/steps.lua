-- The saga's steps. Each is an ordinary function; inside a workflow, funcs.call runs it
-- as an activity (retried by Temporal when its error is retryable).
local logger = require("logger")

local function reserve(order)
    logger:info("reserved", { order = order.id })
    return "reservation-" .. order.id
end

local function release(order)
    logger:info("released", { order = order.id })
    return true
end

local function charge(order)
    if order.card == "declined" then
        return nil, errors.new({ message = "card declined", kind = errors.CONFLICT, retryable = false })
    end
    logger:info("charged", { order = order.id, amount = order.amount })
    return "payment-" .. order.id
end

local function refund(order)
    logger:info("refunded", { order = order.id })
    return true
end

local function ship(order)
    if not order.address then
        return nil, errors.new({ message = "no shipping address", kind = errors.INVALID })
    end
    return "parcel-" .. order.id
end

return { reserve = reserve, release = release, charge = charge, refund = refund, ship = ship }
