local money = require("money")

local function run(): (boolean, string?)
  local a = money.new(1250)
  local b = money.new(99)
  local sum, err = money.add(a, b)
  if err then return false, "add failed: " .. err end
  if money.format(sum) ~= "13.49 EUR" then return false, "format gave " .. money.format(sum) end

  -- An error is a value that reads like a string.
  local _, mismatch = money.add(a, money.new(1, "USD"))
  if not mismatch or not string.find(mismatch, "currency mismatch", 1, true) then
    return false, "expected a currency mismatch, got " .. tostring(mismatch)
  end
  if mismatch:kind() ~= errors.INVALID then return false, "kind " .. mismatch:kind() end

  -- Types are values: checks at run time, casts that validate.
  local ok = money.check({amount = 5, currency = "EUR"})
  local bad, why = money.check({amount = "5", currency = "EUR"})
  if not ok or bad ~= nil or not string.find(why, "amount", 1, true) then
    return false, "Money:is gave " .. tostring(bad) .. " / " .. tostring(why)
  end
  local raised = not pcall(function() return integer(1.5) end)
  if not raised or string("x") ~= "x" then return false, "casts did not validate" end
  return true
end

return {run = run}
