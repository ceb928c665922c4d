-- The `workflow` module (wippy-surface §2.8), present only in a workflow's state.
-- Trusted: run once by LuaState.add_workflow_module with `core`, `host` (Python
-- functions of the running workflow, see node/_workflow_run.py) and the prelude's exports.

local core, host, P = ...
local request, readonly = core.request, core.readonly
local type, table_pack = type, table.pack
local host_error, KINDS, argerror = P.host_error, P.kinds, P.argerror

local workflow = {}

function workflow.info() return host.info() end
function workflow.history_length() return host.history_length() end
function workflow.history_size() return host.history_size() end

-- The recorded version of a change: `max` for a run that reaches it new, `min` for one
-- recorded before the change existed (over the SDK's patch markers).
function workflow.version(change_id, min, max)
    if type(change_id) ~= "string" or change_id == "" then argerror(1, "version", "non-empty string", change_id) end
    if type(min) ~= "number" then argerror(2, "version", "number", min) end
    if type(max) ~= "number" then argerror(3, "version", "number", max) end
    if min > max then return nil, host_error("version: min is greater than max", KINDS.INVALID, false) end
    return host.version(change_id, min, max)
end

-- Upsert search attributes and memo (wippy-modules §12.6): true, or nil and an Invalid
-- error. Search attributes must be declared on the worker's temporal.client; their values
-- are typed by the declared type (node/workflows/_search.py).
function workflow.attrs(opts)
    if type(opts) ~= "table" then
        return nil, host_error("workflow.attrs: expects a table {search = ..., memo = ...}", KINDS.INVALID, false)
    end
    local search, memo = opts.search, opts.memo
    if search == nil and memo == nil then
        return nil, host_error("workflow.attrs: give search, memo or both", KINDS.INVALID, false)
    end
    if search ~= nil and type(search) ~= "table" then
        return nil, host_error("workflow.attrs: search must be a table", KINDS.INVALID, false)
    end
    if memo ~= nil and type(memo) ~= "table" then
        return nil, host_error("workflow.attrs: memo must be a table", KINDS.INVALID, false)
    end
    local ok, reason = host.attrs(search, memo)
    if not ok then return nil, host_error(reason, KINDS.INVALID, false) end
    return true
end

-- A child workflow on this workflow's worker; waits for its result.
function workflow.exec(id, ...)
    if type(id) ~= "string" then return nil, host_error("workflow.exec: id must be a string", KINDS.INVALID, false) end
    return request("proc_exec", id, host.worker(), table_pack(...), false, false, nil, nil, nil, nil)
end

P.modules.workflow = readonly(workflow)
-- Not in a workflow (wippy-modules §0): what they answer depends on the cluster now, which
-- a replay would not see again.
P.modules.system = nil
P.modules.pg = nil
-- Not in a workflow either: entries and variables are the node's, which a replay on
-- another node (or after a deploy) would not see the same.
P.modules.registry = nil
P.modules.env = nil
