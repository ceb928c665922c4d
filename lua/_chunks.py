"""The package's trusted Lua chunks, and their bytecode compiled once per OS process.

Every state loads the same chunks (core, patterns, prelude, modules, process, types,
workflow); loading bytecode is about a quarter of compiling the source (~1 ms against
~3.6 ms for all the chunks of a state, most of what building a state cost). User code is
never loaded from bytecode (``core.compile`` refuses it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

import lupa.lua55 as lupa

from ._crypto_host import CryptoFunctions
from ._data_host import DataFunctions
from ._registry_host import RegistryFunctions
from ._security_host import SecurityFunctions
from ._time_host import TimeFunctions

CORE_SOURCE = resources.files(__package__).joinpath("_core.lua").read_bytes()
PATTERNS_SOURCE = resources.files(__package__).joinpath("_patterns.lua").read_bytes()
PRELUDE_SOURCE = resources.files(__package__).joinpath("_prelude.lua").read_bytes()
PROCESS_SOURCE = resources.files(__package__).joinpath("_process.lua").read_bytes()
# The module chunks, loaded in order after the prelude and before ``process``: each a
# trusted chunk run with (core, its host functions' table, the prelude's exports), and
# the class of those host functions.
MODULE_CHUNKS: tuple[tuple[bytes, Callable[[Any], Any]], ...] = tuple(
    (resources.files(__package__).joinpath(name).read_bytes(), functions)
    for name, functions in (
        ("_time.lua", TimeFunctions),
        ("_data.lua", DataFunctions),
        ("_crypto.lua", CryptoFunctions),
        ("_registry.lua", RegistryFunctions),
        ("_security.lua", SecurityFunctions),
    )
)
WORKFLOW_SOURCE = resources.files(__package__).joinpath("_workflow.lua").read_bytes()
TYPES_SOURCE = resources.files(__package__).joinpath("_types.lua").read_bytes()


_BYTECODE: dict[bytes, bytes] = {}
_dumper: tuple[Any, Any] | None = None
_dumping = threading.Lock()


def bytecode(source: bytes) -> bytes:
    """A trusted chunk of this package (never user code, whose bytecode ``core.compile``
    refuses) compiled once per OS process, with its debug information: loading it is
    about a quarter of compiling it (~1 ms against ~3.6 ms for all the chunks of a state,
    most of what building a state cost)."""
    found = _BYTECODE.get(source)
    if found is None:
        global _dumper
        with _dumping:
            if _dumper is None:
                runtime = lupa.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
                _dumper = runtime, runtime.eval("string.dump")
            runtime, dump = _dumper
            found = _BYTECODE[source] = dump(runtime.compile(source))
    return found
