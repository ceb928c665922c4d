"""Redrawing a listing until Ctrl-C: ``ps --watch``, ``nodes --watch`` and ``top``.

A frame is what a command prints once (stdout and stderr both, so that "no answer from
node n3" stays with the table it is about). On a terminal each frame replaces the last
(plain ANSI: cursor home, clear screen; no curses); elsewhere (a pipe, a file, a test)
frames follow each other, each under a line starting with ``---``. SIGINT and SIGTERM
end the watch after the frame under way, with exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient

from moonwire.broker import Subjects

from ._common import EXIT_OK

Frame = Callable[[NatsClient, Subjects], Awaitable[int]]
"""Prints one frame; returns the exit status it would have alone."""

CLEAR = "\x1b[H\x1b[2J"


async def watching(nc: NatsClient, subjects: Subjects, frame: Frame, *, interval: float, title: str,
                   count: int = 0) -> int:
    """Print ``frame`` every ``interval`` seconds until SIGINT/SIGTERM (status 0), or
    ``count`` times when given (the last frame's status)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tty = sys.stdout.isatty()
    drawn = 0
    try:
        while True:
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                status = await frame(nc, subjects)
            drawn += 1
            header = f"{title}   {time.strftime('%H:%M:%S')}, every {interval:g}s" + (
                "" if count else " (Ctrl-C to stop)")
            sys.stdout.write((f"{CLEAR}{header}\n\n" if tty else f"--- {header}\n") + buffer.getvalue())
            sys.stdout.flush()
            if count and drawn >= count:
                return status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return EXIT_OK
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
