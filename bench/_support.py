"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


def write(root: Path, files: dict[str, str]) -> Path:
    """Write a project's ``files`` (relative path -> text, dedented) under ``root``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


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
