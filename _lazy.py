"""Public names imported on first use: a package's ``__getattr__`` (PEP 562).

``moonwire.node`` and its rooms ``functions`` and ``processes`` name more than most
programs use; importing all of it eagerly made every ``moonwire`` command pay for
Temporal's SDK and the Lua runtime (~0.7 s of CPU for ``moonwire --version``). A
package lists each public name with the submodule that defines it, imports them under
``if TYPE_CHECKING:`` for readers and type checkers, and lets this module import the
submodule when a name is first looked up (``moonwire`` does too). ``moonwire.lua``
writes the same few lines out: it imports nothing outside itself (tests/test_layering.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` and ``__getattr__`` for ``package``, from ``modules``: each submodule
    (relative to ``package``, as ``"_state"`` or ``"workflows"``) and the public names it
    defines, separated by spaces."""
    owner = {name: module for module, names in modules.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        module = owner.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)  # looked up once; later uses are plain attributes
        return value

    return sorted(owner), __getattr__
