"""Every benchmark script uses bench/_support.py's seam (``parser`` with ``--json`` and
``--loop``, ``Figures``, ``run``) and documents its JSON keys; ``Figures.emit`` prints one
JSON object as the last line. Read from the sources (ast): no benchmark is run."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "_support.py")


def support() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_support", BENCH / "_support.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of ``name(...)`` or ``x.name(...)``."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (getattr(node.func, "id", None) == name or getattr(node.func, "attr", None) == name)]


def key_words(node: ast.expr) -> list[str]:
    """The words of a figure's key that the docstring must name: the whole key when it
    is a constant, the constant segments of an f-string (``f"{body}.raw_us"``: raw_us)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [word for part in node.values if isinstance(part, ast.Constant)
                for word in str(part.value).split(".") if word]
    return []


def problems(path: Path) -> list[str]:
    if not path.exists():
        return [f"{path.name} does not exist"]
    tree = ast.parse(path.read_text(), str(path))
    doc = ast.get_docstring(tree) or ""
    found = []
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "_support" for alias in node.names}
    if not {"parser", "Figures", "run"} <= imported:
        found.append(f"imports {sorted(imported)} from _support, not parser, Figures and run")
    if not calls(tree, "parser"):
        found.append("builds no parser with _support.parser (which adds --json and --loop)")
    if not any(isinstance(arg, ast.Attribute) and arg.attr == "loop" for call in calls(tree, "run")
               for arg in call.args):
        found.append("never calls run(main, args.loop): --loop is not honoured")
    if not calls(tree, "emit"):
        found.append("never calls figures.emit()")
    if "--json" not in doc or "``machine``" not in doc:
        found.append("its docstring does not document the --json line (its keys, ``machine`` first)")
    recorded = [call for call in calls(tree, "add") + calls(tree, "median")
                if call.args and getattr(getattr(call.func, "value", None), "id", "") == "figures"]
    if not recorded:
        found.append("records no figure (figures.add / figures.median)")
    keys = [word for call in recorded for word in key_words(call.args[0])]
    found += [f"key {key!r} is not documented in its docstring" for key in keys if key not in doc]
    return found


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_uses_the_seam_and_documents_its_keys(name: str) -> None:
    assert problems(BENCH / name) == []


def test_the_check_sees_a_script_that_does_not_use_the_seam(tmp_path: Path) -> None:
    script = tmp_path / "old.py"
    script.write_text('"""An old benchmark."""\nimport argparse, asyncio\n\n'
                      'async def main():\n    print("(a) 1 msg/s")\n\n'
                      'if __name__ == "__main__":\n    argparse.ArgumentParser().parse_args()\n'
                      '    asyncio.run(main())\n')
    assert len(problems(script)) == 6
    script.write_text('"""With ``--json``: ``machine``; ``a.rate``."""\n'
                      'from _support import Figures, parser, run\n\n'
                      'async def main():\n    figures = Figures(ARGS)\n    figures.add("a.rate", 1)\n'
                      '    figures.add(f"{x}.ratio", 2)\n    figures.emit()\n\n'
                      'PARSER = parser(__doc__)\nARGS = PARSER.parse_args()\nrun(main, ARGS.loop)\n')
    assert problems(script) == ["key 'ratio' is not documented in its docstring"]


def test_figures_emit_prints_one_json_object_as_the_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    bench = support()
    args = bench.parser("doc").parse_args(["--json", "--loop", "uvloop"])
    assert (args.json, args.loop) == (True, "uvloop")
    figures = bench.Figures(args)
    print("(a) a figure, as printed")
    figures.add("a.rate", 2.5)
    assert figures.median("b.p50_ms", [3.0, 1.0, 2.0]) == 2.0
    figures.emit()
    last = capsys.readouterr().out.splitlines()[-1]
    data = json.loads(last)
    assert data["a.rate"] == 2.5 and data["b.p50_ms"] == 2.0 and data["b.p50_ms_rounds"] == [3.0, 1.0, 2.0]
    assert data["machine"]["loop"] == "uvloop" and data["machine"]["cpus"] >= 1


def test_without_json_nothing_is_emitted_and_a_bad_loop_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    bench = support()
    figures = bench.Figures(bench.parser("doc").parse_args([]))
    figures.add("a.rate", 1)
    figures.emit()
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        bench.parser("doc").parse_args(["--loop", "trio"])
    assert re.search(r"invalid choice: 'trio'", capsys.readouterr().err)


def test_nodes_and_children_a_benchmark_starts_follow_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = support()
    monkeypatch.setenv("MOONWIRE_LOOP", "uvloop")

    async def main() -> str:
        return os.environ["MOONWIRE_LOOP"]

    assert bench.run(main, "asyncio") == "asyncio"  # the node's `loop` key, for `moonwire run` children
    # A `python -c` child that starts with CHILD_LOOP: the policy it installs, without running it.
    seen: dict[str, object] = {}
    monkeypatch.setitem(sys.modules, "uvloop", type(sys)("uvloop"))
    sys.modules["uvloop"].install = lambda: seen.setdefault("installed", True)  # type: ignore[attr-defined]
    exec(bench.CHILD_LOOP, {})
    assert seen == {}
    monkeypatch.setenv("MOONWIRE_LOOP", "uvloop")
    exec(bench.CHILD_LOOP, {})
    assert seen == {"installed": True}
