"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def parser(doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--json`` (print, as
    the last line, one JSON object of every figure) and ``--loop`` (the event loop to run
    the benchmark and its raw baselines on)."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     **kwargs)
    result.add_argument("--json", action="store_true",
                        help="print one JSON object of every figure as the last line")
    result.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop for the benchmark and its baselines (default asyncio)")
    return result


class Figures:
    """Every figure a benchmark prints, kept under a stable key so that ``--json`` prints
    them all as one object on the last line. Keys are documented at the top of each script.

    ``figures.add("a.ratio", lua / raw)`` records one; ``figures.median(key, values)``
    records the median of several rounds (and the rounds under ``key + "_rounds"``)."""

    def __init__(self, args: argparse.Namespace | None = None) -> None:
        self.json = bool(getattr(args, "json", False))
        self.values: dict[str, Any] = {"machine": machine(getattr(args, "loop", "asyncio"))}

    def add(self, key: str, value: T) -> T:
        self.values[key] = value
        return value

    def median(self, key: str, values: list[float]) -> float:
        self.values[key + "_rounds"] = list(values)
        return self.add(key, statistics.median(values))

    def emit(self) -> None:
        """Print the JSON line (only with ``--json``); call once, last."""
        if self.json:
            print(json.dumps(self.values, sort_keys=True, default=str), flush=True)


def machine(loop: str = "asyncio") -> dict[str, Any]:
    """What the figures were measured on."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "loop": loop, "load1": round(os.getloadavg()[0], 2)}


def run(main: Callable[[], Coroutine[Any, Any, T]], loop: str = "asyncio") -> T:
    """Run ``main()`` on the chosen event loop (``uvloop`` needs the ``uvloop`` package).

    Node processes the benchmark starts run on the same loop (``MOONWIRE_LOOP``, the
    node's ``loop`` key), and so do Python children that start with :data:`CHILD_LOOP`, so
    that every figure and its raw baseline share the loop."""
    os.environ["MOONWIRE_LOOP"] = loop
    if loop == "uvloop":
        import uvloop  # noqa: PLC0415  (only when asked for)

        if sys.version_info >= (3, 12):
            return uvloop.run(main())
        uvloop.install()
    return asyncio.run(main())


CHILD_LOOP = """
import os as _os
if _os.environ.get("MOONWIRE_LOOP") == "uvloop":
    import uvloop as _uvloop
    _uvloop.install()
"""
"""Put in front of a ``python -c`` child script (``CHILD_LOOP + SCRIPT``): its
``asyncio.run`` then runs on the loop :func:`run` chose for the benchmark."""


def write(root: Path, files: dict[str, str]) -> Path:
    """Write a project's ``files`` (relative path -> text, dedented) under ``root``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    """The ``p`` quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


@contextlib.asynccontextmanager
async def lua_workflows(root: Path, files: dict[str, str], *,
                        server_args: tuple[str, ...] = ()) -> AsyncIterator[tuple[Any, Any]]:
    """A Temporal dev server of its own (with ``server_args``), and the project ``files``
    (``ADDRESS`` in ``_index.yaml`` becomes the server's) running its workers in this
    process: ``(temporalio client, the node's Workflows)``, stopped on the way out."""
    from temporalio.client import Client

    from moonwire.broker import Subjects
    from moonwire.node import free_port, load_project, start_temporal
    from moonwire.node.functions._functions import Functions
    from moonwire.node.workflows._workflows import Workflows

    server = await start_temporal(root / "temporal", port=free_port(), extra=server_args)
    try:
        files = {**files, "_index.yaml": files["_index.yaml"].replace("ADDRESS", server.address)}
        project = load_project(write(root / "p", files))
        subjects = Subjects()
        functions = Functions(project, subjects)
        workflows = Workflows("bench", project, subjects, functions, functions.code)
        await workflows.start(None, lambda dest, message: None)
        try:
            yield await Client.connect(server.address), workflows
        finally:
            await workflows.stop()
    finally:
        server.process.kill()
        await server.process.wait()
