local money = require("money")

type Line = {sku: string, qty: integer, unit: {amount: integer, currency: string}}
type Order = {id: string, lines: {Line}}

local function handler(order: Order): (table?, error?)
  local ok, why = Order:is(order)
  if not ok then
    return nil, errors.new({message = "bad order: " .. why, kind = errors.INVALID})
  end
  local sum = money.new(0, order.lines[1] and order.lines[1].unit.currency or "EUR")
  for i = 1, #order.lines do
    local line = order.lines[i] :: Line
    local next_sum, err = money.add(sum, money.times(line.unit, line.qty))
    if err then
      return nil, errors.wrap(err, "line " .. i)
    end
    sum = next_sum as {amount: integer, currency: string}
  end
  return {order = order.id, total = money.format(sum), cents = sum.amount}
end

return {handler = handler}
