-- Waits for a decision signal ("approve" or "reject"), for at most `timeout`.
--   moonwire send '<pid>' approve '{"by": "ann"}'
--   nats pub 'mw.wf.shop:worker.<workflow id>.approve' '{"by": "ann"}'
local time = require("time")

return function(request, timeout)
    local approve = process.listen("approve")
    local reject = process.listen("reject")
    local expired = time.after(timeout or "72h")
    local got = channel.select({ approve:case_receive(), reject:case_receive(), expired:case_receive() })
    if got.channel == expired then
        return { request = request, decision = "expired" }
    end
    local decision = got.channel == approve and "approved" or "rejected"
    return { request = request, decision = decision, by = got.value and got.value.by }
end
