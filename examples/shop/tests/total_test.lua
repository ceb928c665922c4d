local function run(): (boolean, string?)
  local order = {
    id = "o-1",
    lines = {
      {sku = "tea", qty = 2, unit = {amount = 450, currency = "EUR"}},
      {sku = "cup", qty = 1, unit = {amount = 1200, currency = "EUR"}},
    },
  }
  local result, err = funcs.call("shop:total", order)
  if err then return false, "total: " .. err end
  if result.total ~= "21.00 EUR" or result.cents ~= 2100 then
    return false, "total was " .. tostring(result.total)
  end

  -- A malformed order is refused with the reason, as an Invalid error.
  local _, bad = funcs.call("shop:total", {id = "o-2", lines = {{sku = "x", qty = "two"}}})
  if not bad or bad:kind() ~= errors.INVALID then return false, "a bad order was accepted" end
  local text = "refused: " .. bad
  if not text:find("bad order", 1, true) then return false, text end
  return true
end

return {run = run}
