"""Building the package prints no deprecation warning (setuptools' ``project.license`` table)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]  # the first to take SPDX strings


@pytest.mark.slow
def test_building_prints_no_deprecation_warning(tmp_path: Path) -> None:
    """``pip wheel`` of the project's metadata (empty packages: the metadata is what warned)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("clce_core", "training", "serving"):
        (src / package).mkdir()
        (src / package / "__init__.py").write_text("")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v"]
    done = subprocess.run([*cmd, "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "BuildBackendWarning" not in output and "deprecated" not in output.lower(), output[-3000:]
    assert list(tmp_path.glob("clce-*.whl"))
