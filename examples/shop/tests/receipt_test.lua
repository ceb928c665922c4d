local function run(): (boolean, string?)
  -- 2026-12-04 is a Friday: two working days later is Tuesday the 8th.
  local receipt, err = funcs.call("shop:receipt", "o-1", 2100, "2026-12-04")
  if err then return false, "receipt: " .. err end
  if receipt.format ~= payload.format.JSON then return false, "format " .. receipt.format end
  if receipt.back.due ~= "2026-12-08" then return false, "due " .. tostring(receipt.back.due) end
  local decoded = json.decode(receipt.json)
  if decoded.total ~= "21.00 EUR" then return false, "json " .. receipt.json end

  local day = time.parse(time.DATE_ONLY, "2026-12-08", time.utc)
  if day:weekday() ~= time.TUESDAY or day:month() ~= time.DECEMBER then
    return false, "weekday " .. day:weekday()
  end

  local _, bad = funcs.call("shop:receipt", "o-2", 1, "not a date")
  if not bad or bad:kind() ~= errors.INVALID then return false, "a bad date was accepted" end
  return true
end

return {run = run}
