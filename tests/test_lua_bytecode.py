"""A state runs the package's trusted chunks from bytecode compiled once per OS process
(lua/_chunks.py ``bytecode``), with their debug information."""

from __future__ import annotations

import re

from moonwire.lua import LuaState
from moonwire.lua import _chunks as _state
from support import run_lua


def test_a_state_runs_every_trusted_chunk_from_bytecode_compiled_once() -> None:
    LuaState()
    trusted = [_state.PATTERNS_SOURCE, _state.CORE_SOURCE, _state.PRELUDE_SOURCE, _state.PROCESS_SOURCE,
               _state.TYPES_SOURCE, *(source for source, _ in _state.MODULE_CHUNKS)]
    compiled = {source: _state._BYTECODE.get(source) for source in trusted}
    assert all(code is not None and code.startswith(b"\x1bLua") for code in compiled.values())
    LuaState()
    assert all(_state.bytecode(source) is compiled[source] for source in trusted)  # not compiled again


async def test_errors_from_trusted_code_still_name_its_lines() -> None:
    outcome = await run_lua("""
        local time = require("time")
        return function() return time.parse(nil) end""")
    assert outcome.error is not None
    # The argument check is in the prelude: its line is known, so debug information was kept.
    assert re.match(r'\[string "<python>"\]:\d+: bad argument #1 to \'parse\'', outcome.error.message)
    assert re.search(r"in upvalue 'argerror'", outcome.error.stack or "")
