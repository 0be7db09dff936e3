"""docker/*.sh without a Docker engine: they parse, and the smoke test refuses a missing export with
one ``error:`` line and exit code 2 before it builds anything. (The build-and-run itself is
``make docker-smoke``: root and minutes, not part of ``make test``; docs/deployment.md.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [REPO / "docker" / "smoke.sh", REPO / "docker" / "base-from-debian.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_executable(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)


def test_smoke_refuses_a_missing_export(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("docker", "curl"):  # answer everything: the script must stop at the model check
        (fake / tool).write_text("#!/bin/sh\nexit 0\n")
        (fake / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "MODEL_DIR": str(tmp_path / "no-such-export")}
    out = subprocess.run([str(SCRIPTS[0])], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path}/no-such-export/encoder.onnx is missing: export a model first "
        f"(python -m training.export --checkpoint runs/NAME/best.pt --output "
        f"{tmp_path}/no-such-export) or set MODEL_DIR"
    ], out.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_target_runs_the_smoke_script() -> None:
    out = subprocess.run(["make", "--no-print-directory", "-n", "docker-smoke"], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "docker/smoke.sh"
