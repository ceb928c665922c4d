"""The Python functions behind the Lua ``payload`` global and ``json`` module of one
state (``_data.lua``). Trusted Lua code holds them as upvalues only; they take and
return Lua-ready values.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from ._errors import MoonwireError
from ._values import loads_json, to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import LuaRuntime


def _jsonable(value: Any, path: str = "$") -> Any:
    """Check what JSON cannot say (mixed keys, sparse arrays) and map NaN/Inf to null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, MoonwireError):
        return value.to_dict()
    if isinstance(value, bytes):
        raise ValueError(f"{path}: string is not valid UTF-8")
    if isinstance(value, list):
        return [_jsonable(v, f"{path}[{i + 1}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        kinds = {type(k) for k in value}
        if kinds - {str}:
            raise ValueError(f"{path}: table mixes keys or is a sparse array; JSON needs an array 1..n or string keys")
        return {k: _jsonable(v, f"{path}.{k}") for k, v in value.items()}
    return value


class DataFunctions:
    def __init__(self, state: LuaRuntime) -> None:
        self.state = state

    def table(self) -> Any:
        names = ["json_encode", "json_decode"]
        return self.state.table_from({name.encode(): getattr(self, name) for name in names})

    # ------------------------------------------------------------ json

    def json_encode(self, value: Any) -> tuple[Any, ...]:
        try:
            data = _jsonable(to_python(self.state, value))
            return (json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(),)
        except (MoonwireError, ValueError, TypeError) as err:
            return (None, f"json.encode: {err}".encode())

    def json_decode(self, text: bytes) -> tuple[Any, ...]:
        try:
            return (True, to_lua(self.state, loads_json(text)))  # depth-limited before decoding
        except (ValueError, RecursionError) as err:
            return (False, f"json.decode: {err}".encode())
        except MoonwireError as err:
            return (False, f"json.decode: {err.message}".encode())
