"""A light ``moonwire`` command stays light: parsing the line, and the modules of the
commands that only talk to a cluster (``call``, ``send``, ``spawn``, ``ps``, ``nodes``,
``top``, ``dlq``), import neither Temporal's SDK and the node's workflow code nor the
Lua runtime (lupa, and the host modules with jsonschema and cryptography): about 0.6 s
of CPU per command when they did. Checked in a fresh interpreter from the modules it
loaded, not from how long it took."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("temporalio", "moonwire.node.workflows", "moonwire.node._node", "moonwire.node.telemetry._workflow_counts",
         "lupa", "moonwire.lua._state", "jsonschema", "cryptography")
"""What a light command must not import."""


def _loaded(tmp_path: Path, *args: str) -> set[str]:
    """The modules a fresh interpreter imported running ``python *args`` (``-X importtime``
    names each on stderr)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("line", [["--version"], ["--help"], ["call", "--help"], ["ps", "--help"]])
def test_parsing_the_line_imports_no_runtime(tmp_path: Path, line: list[str]) -> None:
    loaded = _loaded(tmp_path, "-m", "moonwire.node", *line)
    assert "moonwire.node.cli._parsing" in loaded  # it did run the CLI
    assert not loaded & {*HEAVY, "moonwire.node.project", "moonwire.lua"}, sorted(loaded & {*HEAVY, "moonwire.lua"})


@pytest.mark.parametrize("module", ["_cluster_commands", "_listings", "_top", "_dlq"])
def test_cluster_commands_import_neither_workflows_nor_lua(tmp_path: Path, module: str) -> None:
    loaded = _loaded(tmp_path, "-c", f"import moonwire.node.cli.{module}")
    assert f"moonwire.node.cli.{module}" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize("package", ["moonwire.node", "moonwire.lua", "moonwire.node.functions",
                                     "moonwire.node.processes"])
def test_every_public_name_still_imports(tmp_path: Path, package: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {package} as p; print(all(getattr(p, x) is not None "
                           "for x in p.__all__), len(p.__all__))"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    everything, count = done.stdout.split()
    assert everything == "True" and int(count) > 5, done.stdout
