"""``python -m serving`` refuses to start in one line, exit code 2, before it loads or creates anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = (
    pytest.mark.slow
)  # each starts a Python process that imports the server (about 4 s each on the loaded 2-core machine)


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k.upper() != "CLCE_MODEL_DIR"}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "serving", "--log-level", "warning", *args]
    return subprocess.run(
        cmd, cwd=REPO, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_port_in_use_is_refused_before_the_store_is_created(model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "store" / "support.sqlite3"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve("--model-dir", str(model_dir), "--port", str(port), "--db-path", str(db))
    err = _one_error_line(done)
    assert f"port {port} is already in use" in err and "--port" in err
    assert not db.parent.exists(), "the support-set store was created although the server could not start"


def test_an_address_of_another_machine_is_named(model_dir: Path, tmp_path: Path) -> None:
    done = _serve("--model-dir", str(model_dir), "--host", "192.0.2.1", "--db-path", str(tmp_path / "s.db"))
    assert "192.0.2.1 is not an address of this machine" in _one_error_line(done)


def test_no_model_names_the_flag_and_the_variable() -> None:
    err = _one_error_line(_serve())  # neither --model-dir nor CLCE_MODEL_DIR
    assert "--model-dir" in err and "CLCE_MODEL_DIR" in err and "training.export" in err


def test_a_bad_port_is_a_usage_error() -> None:
    done = _serve("--model-dir", "x", "--port", "70000")
    assert done.returncode == 2 and "a port is an integer from 0 to 65535" in done.stderr
