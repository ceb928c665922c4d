"""The Wippy-style sample project (examples/shop, issue 17): typed Lua, type casts and
checks, errors used as strings, `time` constants, `payload.format`, `security.actor()`,
and tests as entries, run by `moonwire test` on embedded servers as a user would."""

from __future__ import annotations

import shutil
from pathlib import Path

from support import run_cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shop"


async def test_the_shop_example_passes_moonwire_test(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)  # the node writes its state beside the project
    code, out, err = await run_cli("test", str(project))
    lines = out.splitlines()
    assert code == 0, (out, err)
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["PASS", "shop:actor_test"], ["PASS", "shop:money_test"], ["PASS", "shop:receipt_test"],
        ["PASS", "shop:total_test"]], out
    assert lines[-1] == "4 passed, 0 failed"


async def test_the_shop_example_checks_clean_in_strict_mode(tmp_path: Path) -> None:
    code, out, err = await run_cli("check", str(EXAMPLE), "--strict")
    assert code == 0, (out, err)
