"""What the package declares: the torch floor it is tested at, its licence, its type hints, its version."""

import re
from pathlib import Path

import pytest
import torch

import famus

tomllib = pytest.importorskip("tomllib", reason="pyproject.toml is read with tomllib (Python 3.11+)")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _release(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``."""
    return tuple(int(p) for p in re.match(r"\d+(\.\d+)*", version).group().split("."))


def _torch_floor() -> str:
    (spec,) = [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"torch\b", d)]
    match = re.fullmatch(r"torch>=([\d.]+)", spec)
    assert match, f"torch's requirement {spec!r} must be a plain floor, torch>=X.Y"
    return match.group(1)


def test_the_installed_torch_is_not_below_the_declared_floor():
    floor = _torch_floor()
    assert _release(torch.__version__) >= _release(floor), (
        f"torch {torch.__version__} is installed but pyproject.toml declares torch>={floor}: the floor must be a "
        "version these tests ran on")


def test_the_floor_is_the_torch_setup_sh_installs():
    """CI installs torch with setup.sh: the pinned release must satisfy the floor (and is what it tests)."""
    (pin,) = re.findall(r"torch==([\d.]+)", (ROOT / "setup.sh").read_text())
    assert _release(pin) >= _release(_torch_floor())
    assert f"torch>={_torch_floor()}" in (ROOT / "README.md").read_text()


def test_licence_type_hints_and_version_ship():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) the famus authors" in text
    assert (ROOT / "famus" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["famus"]
    assert "Typing :: Typed" in project["classifiers"]
    assert project["dynamic"] == ["version"] and PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "famus.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", famus.__version__)
