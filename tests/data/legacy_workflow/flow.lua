-- Every value this workflow receives is checked: one decoded differently on replay turns
-- into a different command (a failed workflow instead of a completed one), which the
-- replayer reports.
local funcs = require("funcs")
local workflow = require("workflow")
local ctx = require("ctx")

return function(order, label)
  assert(order.order_id == 7 and math.type(order.order_id) == "integer", "order_id")
  assert(order.total == 12.5 and label == "rush" and ctx.get("tenant") == "t1", "input")
  local hello = process.inbox():receive()
  assert(hello:topic() == "hello" and hello:payload():data() == "m1", "startup message")
  assert(hello:from() == "{n1@app:host|starter}", "startup sender")
  local doubled = funcs.call("legacy:double", order.order_id)
  assert(doubled == 14 and math.type(doubled) == "integer", "activity result")
  local child = workflow.exec("legacy:child", 2.5)
  assert(child.half == 1.25 and child.bytes == "\1\2\255", "child result")
  local go = process.inbox():receive()
  local first, second = go:payload()[1]:data(), go:payload()[2]:data()
  assert(go:topic() == "go" and go:from() == "{n1@app:host|sender}", "signal")
  assert(first.ok == true and second == "\255\0", "signal payloads")
  return { order = order.order_id, doubled = doubled, half = child.half, raw = second }
end
