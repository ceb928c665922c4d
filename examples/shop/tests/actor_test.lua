local function run(): (boolean, string?)
  local nobody, err = funcs.call("shop:whoami")
  if err then return false, tostring(err) end
  if nobody.id ~= nil then return false, "an actor without one being set: " .. nobody.id end

  local alice = security.new_actor("user:alice", {role = "admin"})
  local seen, cerr = funcs.new():with_actor(alice):call("shop:whoami")
  if cerr then return false, "with_actor: " .. cerr end
  if seen.id ~= "user:alice" or seen.role ~= "admin" then
    return false, "the callee saw " .. tostring(seen.id) .. "/" .. tostring(seen.role)
  end
  return true
end

return {run = run}
