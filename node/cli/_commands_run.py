"""``moonwire run`` of one thing to completion: an entry (``-x ns:entry ARG...``) or a
command (``run DIR NAME ARG...``, the process entry whose ``meta.command.name`` is
NAME; ``run DIR --list`` lists them). Wippy's ``wippy run <name>`` / ``wippy run -x``
(wippy-modules §12.3, ``cmd/wippy/cmd/run.go``).

Both take one path: the node starts, the entry runs (a process on the terminal host,
awaited; a function called), its result is printed as JSON on stdout, the node stops,
and the exit status follows the result (:func:`exit_status`). A command gets each ARG
as a string, as in Wippy; ``-x`` reads each ARG as JSON when it parses (moonwire's
older rule, kept).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from dataclasses import dataclass
from typing import Any

from moonwire.lua import Outcome

from .._loop import run_on
from .._node import Node
from ..project import Command, ProcessEntry, Project, commands
from ._common import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, json_args, load, print_outcome,
                      stop_on_signals)
from ._listings import table


@dataclass(frozen=True, slots=True)
class Target:
    """What ``run`` is asked to run to completion instead of serving."""

    entry: str
    args: list[Any]
    process: bool
    """A process entry: its integer (or boolean) result is the exit status."""


def usage_problem(args: argparse.Namespace) -> int | None:
    """Options of ``run`` that do not go together; the exit status after saying so."""
    asked = [what for what, given in (("-x", args.execute), ("a command", args.run_command),
                                      ("--list", args.list_commands)) if given]
    if len(asked) > 1:
        print(f"error: run takes one of -x, a command or --list, not {' and '.join(asked)}", file=sys.stderr)
        return EXIT_USAGE
    if (args.run_command or args.list_commands) and not args.project.is_dir():
        print(f"error: {args.project} is not a folder (give the project folder first: moonwire run DIR "
              f"{args.run_command or '--list'} ...)", file=sys.stderr)
        return EXIT_USAGE
    return None


def cmd_list(args: argparse.Namespace) -> int:
    """``moonwire run DIR --list``: the project's commands; nothing is started."""
    loaded = load(args, quiet=True)
    if isinstance(loaded, int):
        return loaded
    found = commands(loaded[1].entries)
    if not found:
        print(f"no commands in {args.project}: a process.lua entry becomes one with meta.command.name")
        return EXIT_OK
    table([["COMMAND", "ENTRY", "MAIN", "DESCRIPTION"],
            *([c.name, c.entry, "yes" if c.main else "-", c.short] for c in found)])
    return EXIT_OK


def target(args: argparse.Namespace, project: Project) -> Target | int | None:
    """What to run to completion (None: serve), or the exit status of a usage error."""
    if args.execute:
        entry, *entry_args = args.execute
        return Target(entry, json_args(entry_args), isinstance(project.get(entry), ProcessEntry))
    if args.run_command is None:
        return None
    found = {c.name: c for c in commands(project.entries)}
    command: Command | None = found.get(args.run_command)
    if command is None:
        known = ", ".join(found) if found else "none (a process.lua entry becomes one with meta.command.name)"
        print(f"error: no command {args.run_command!r} in {args.project}; its commands: {known}", file=sys.stderr)
        return EXIT_USAGE
    return Target(command.entry, list(args.command_args), process=True)


def run_to_completion(node: Node, what: Target) -> int:
    """Start ``node``, run ``what``, stop: the result printed, the exit status returned.

    The first SIGINT/SIGTERM stops waiting for the result and stops the node as ``run``
    does (the entry's process, like every other, gets CANCEL and is terminated when the
    shutdown budget runs out); nothing is printed and the status is 130. A second
    signal exits at once."""
    async def execute() -> Outcome | None:
        interrupted = asyncio.Event()
        stop_on_signals(interrupted.set)
        async with node.running():
            job = asyncio.ensure_future(node.execute(what.entry, what.args))
            signalled = asyncio.ensure_future(interrupted.wait())
            await asyncio.wait([job, signalled], return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
            if job.done():
                return job.result()
            job.cancel()
            await asyncio.wait([job])
            return None

    outcome = run_on(node.config.loop, execute())
    if outcome is None:
        return EXIT_INTERRUPTED
    print_outcome(outcome)
    return exit_status(outcome, process=what.process, entry=what.entry)


def exit_status(outcome: Outcome, *, process: bool, entry: str = "") -> int:
    """The exit status for an entry's outcome: 1 for an error; for a process (as Wippy's
    terminal host decides), its integer result (0-255), 1 for ``false`` and 0 for
    ``true``, any other value 0; for a function, 0 (its result is data). A number that
    is no exit status (outside 0-255, fractional, NaN) is 1, with a line on stderr."""
    if not outcome.ok:
        return EXIT_FAILURE
    value = outcome.value
    if not process or value is None:
        return EXIT_OK
    if isinstance(value, bool):
        return EXIT_OK if value else EXIT_FAILURE
    if isinstance(value, int | float):
        if isinstance(value, int) or (math.isfinite(value) and value.is_integer()):
            if 0 <= value <= 255:
                return int(value)
        print(f"error: {entry or 'the process'} returned {value!r}, which is no exit status (a whole number "
              f"0-255); exiting {EXIT_FAILURE}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
