"""What installing moonwire puts where.

The repository's top level is the ``moonwire`` package (pyproject's ``package-dir``), so
``broker/``, ``lua/`` and ``node/`` install as ``moonwire.broker``, ``moonwire.lua`` and
``moonwire.node``, and nothing else may reach the top level of site-packages. The
packages are listed one by one in pyproject, so a new subpackage must be added there:
the wheel is compared with the source tree to catch one that was not.

Checked on a wheel built from a copy of the working tree (built in place, setuptools
would leave ``build/`` behind, whose stale files a later build ships), installed into a
fresh virtualenv without network (``--no-deps --no-index``; its dependencies come from
this environment), and on the editable install the tests run in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "lua", "node")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                    ".pytest_cache", ".moonwire")


def _run(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: what an install provides, not what the caller's environment adds.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, base / "src", ignore=NOT_SOURCE)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", base / "dist", base / "src", cwd=base)
    (built,) = (base / "dist").glob("moonwire-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtualenv with only the wheel installed. The dependencies
    are this environment's site-packages, added as a plain path entry: its ``.pth``
    files (among them the one starting the editable install's finder) do not run."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel,
         cwd=venv)
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=venv).stdout.strip()
    (Path(purelib) / "_moonwire_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


@pytest.fixture(params=["editable", "wheel"])
def python(request: pytest.FixtureRequest) -> Path:
    """The interpreter of either install."""
    if request.param == "editable":
        return Path(sys.executable)
    return request.getfixturevalue("wheel_python")


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_puts_only_moonwire_at_the_top(wheel: Path) -> None:
    top = {name.split("/")[0] for name in _names(wheel)}
    assert top == {"moonwire", f"moonwire-{PROJECT['version']}.dist-info"}


def test_wheel_holds_every_package_of_the_source(wheel: Path) -> None:
    files = [*ROOT.glob("*.py"), *(path for package in PACKAGES for path in (ROOT / package).rglob("*"))]
    source = {path.relative_to(ROOT).as_posix() for path in files
              if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts}
    shipped = {name.removeprefix("moonwire/") for name in _names(wheel) if name.startswith("moonwire/")}
    packages = {name.rpartition("/")[0] for name in source if name.endswith("/__init__.py")}
    missing = packages - {name.rpartition("/")[0] for name in shipped if name.endswith("/__init__.py")}
    assert not missing, f"packages missing from the wheel (pyproject lists them one by one): {sorted(missing)}"
    missing = source - shipped
    assert not missing, f"source files missing from the wheel: {sorted(missing)}"
    stale = {name for name in shipped if name.endswith((".py", ".lua"))} - source
    assert not stale, f"files in the wheel that the source does not have: {sorted(stale)}"
    assert {"__init__.py", "lua/_core.lua", "lua/_prelude.lua", "node/cli/__init__.py"} <= shipped


def test_wheel_names_the_cli(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(f"moonwire-{PROJECT['version']}.dist-info/entry_points.txt").decode()
    assert "moonwire = moonwire.node.cli:main" in entry_points.splitlines()


def test_imports_as_moonwire_only(python: Path, tmp_path: Path) -> None:
    done = _run(python, "-c", "import moonwire.node, moonwire.broker, moonwire.lua, moonwire; "
                "print(moonwire.node.__file__); print(moonwire.__version__)", cwd=tmp_path)
    where, version = done.stdout.split()
    assert version == PROJECT["version"]
    if python != Path(sys.executable):  # the wheel's, not the working tree's
        assert Path(where).is_relative_to(python.parent.parent), where
    for name in PACKAGES:
        failed = _run(python, "-c", f"import {name}", cwd=tmp_path, check=False)
        assert failed.returncode != 0
        assert f"ModuleNotFoundError: No module named '{name}'" in failed.stderr, failed.stderr


@pytest.mark.parametrize(("module", "without"), [
    ("moonwire.broker", ("moonwire.node", "moonwire.lua")),
    ("moonwire.lua", ("moonwire.node", "moonwire.broker")),
    ("moonwire", ("moonwire.node", "moonwire.lua", "moonwire.broker")),
])
def test_a_lower_package_imports_alone(python: Path, tmp_path: Path, module: str, without: tuple[str, ...]) -> None:
    done = _run(python, "-c", f"import sys, {module}; print(' '.join(sys.modules))", cwd=tmp_path)
    loaded = set(done.stdout.split())
    assert module in loaded
    assert not loaded & set(without), f"import {module} loaded {sorted(loaded & set(without))}"


def test_installed_cli_runs(wheel_python: Path, tmp_path: Path) -> None:
    done = _run(wheel_python.parent / "moonwire", "--help", cwd=tmp_path)
    assert done.stdout.startswith("usage: moonwire")
