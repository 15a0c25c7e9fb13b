"""Wheels build and work on every Python the classifiers name (3.11-3.13),
for each such interpreter this machine has (python3.X on PATH, or pyenv's)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.ops.support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSIONS = [c.rsplit(" ", 1)[1] for c in PYPROJECT["classifiers"]
            if c.startswith("Programming Language :: Python :: 3.")]


def _interpreter(version: str) -> str | None:
    """A working python{version}: pyenv's shims exist for versions that are
    not selected, so each candidate is run once."""
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")))
    candidates += filter(None, [shutil.which(f"python{version}")])
    for python in candidates:
        if subprocess.run([python, "-c", "pass"], capture_output=True).returncode == 0:
            return python
    return None


def test_classifiers_match_requires_python():
    assert VERSIONS == ["3.11", "3.12", "3.13"]
    assert PYPROJECT["requires-python"] == ">=3.11"
    assert "Programming Language :: Cython" in PYPROJECT["classifiers"]


# The running interpreter's wheel is tests/test_foundation.py's; here the others.
OTHERS = [v for v in VERSIONS if v != f"{sys.version_info[0]}.{sys.version_info[1]}"]


@pytest.mark.slow  # compiles the core once per interpreter: 1-5 min each on 2 busy cores
@pytest.mark.timeout(900)
@pytest.mark.parametrize("version", [
    pytest.param(v, marks=pytest.mark.skipif(_interpreter(v) is None,
                                             reason=f"no Python {v} on this machine"))
    for v in OTHERS])
def test_wheel_builds_and_evaluates_a_rule(version, tmp_path):
    python = _interpreter(version)
    assert python is not None
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "engine", src / "engine",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.html"))
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "w"), str(src)],
                           capture_output=True, text=True, timeout=800)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "w").glob("*.whl")
    assert f"cp{version.replace('.', '')}" in wheel.name
    subprocess.run([*pip, "install", str(wheel), "lark", "orjson"], check=True, timeout=300,
                   capture_output=True)
    check = ("import engine; r = engine.compile_rule('notify_data.body.x AS x', "
             "'notify_data.body.x > 1'); print(r.apply({'notify_data': {'body': {'x': 2}}}))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.stdout.strip() == "{'x': 2}", r.stderr
