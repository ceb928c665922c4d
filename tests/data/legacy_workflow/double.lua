local ctx = require("ctx")
return function(n)
  if ctx.get("tenant") ~= "t1" then return nil, errors.new({ message = "no tenant", kind = errors.INVALID }) end
  return n * 2
end
