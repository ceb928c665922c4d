local money = require("money")

-- Due two working days after `placed` (a DATE_ONLY string), skipping the weekend.
local function due_after(placed: string): (string?, error?)
  local day, err = time.parse(time.DATE_ONLY, placed, time.utc)
  if err then
    return nil, errors.wrap(err, "placed date")
  end
  local added = 0
  while added < 2 do
    day = day:add(24 * time.HOUR)
    local weekday = day:weekday()
    if weekday ~= time.SATURDAY and weekday ~= time.SUNDAY then
      added = added + 1
    end
  end
  return day:format(time.DATE_ONLY)
end

local function handler(id: string, cents: integer, placed: string)
  local due, err = due_after(placed)
  if err then
    return nil, err
  end
  local body = {id = id, total = money.format(money.new(cents)), due = due}
  -- The receipt travels as JSON text; payloads convert between formats.
  local as_json, terr = payload.new(body):transcode(payload.format.JSON)
  if terr then
    return nil, terr
  end
  return {format = as_json:get_format(), json = json.encode(body), back = as_json:data()}
end

return {handler = handler}
