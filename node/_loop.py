"""The event loop a node runs on: asyncio's own, or uvloop (the ``uvloop`` extra).

``loop: auto`` (the default) takes uvloop when it is installed on Linux: measured, it
carries local messages and spawns faster than asyncio's loop and nothing slower
(docs/performance.md, Event loop). ``asyncio`` and ``uvloop`` choose one; ``uvloop``
without the package is an error rather than a silent fallback.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

LoopChoice = Literal["auto", "asyncio", "uvloop"]


class LoopUnavailable(Exception):
    """The configuration asks for an event loop this installation does not have."""


def chosen_loop(choice: LoopChoice, *, platform: str = sys.platform) -> Literal["asyncio", "uvloop"]:
    """The loop ``choice`` means here: ``auto`` is uvloop on Linux when it is installed.

    Raises:
        LoopUnavailable: ``uvloop`` is asked for and not installed.
    """
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise LoopUnavailable("loop: uvloop is configured but the uvloop package is not installed "
                              "(pip install 'moonwire[uvloop]'), or set loop: asyncio")
    if choice == "auto":
        return "uvloop" if installed and platform.startswith("linux") else "asyncio"
    return choice


def loop_factory(choice: LoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A new-loop factory for :class:`asyncio.Runner` (``None``: asyncio's default).

    Raises:
        LoopUnavailable: as :func:`chosen_loop`.
    """
    if chosen_loop(choice) == "asyncio":
        return None
    import uvloop  # noqa: PLC0415  (only when chosen: an optional dependency)

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_on(choice: LoopChoice, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (no global policy is changed).

    Raises:
        LoopUnavailable: as :func:`chosen_loop` (``main`` is closed, never started).
    """
    try:
        factory = loop_factory(choice)
    except LoopUnavailable:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which implementation ``loop`` is (for the logs)."""
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
