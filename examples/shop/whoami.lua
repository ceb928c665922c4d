local function handler(): {id: string?, role: string?}
  local actor = security.actor()
  if actor == nil then
    return {}
  end
  return {id = actor:id(), role = actor:meta().role}
end

return {handler = handler}
