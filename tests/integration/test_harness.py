"""benchmarks.harness: data paths, memory, timing, publishing and a real server process on loopback."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from benchmarks import harness
from benchmarks.harness import (
    GLYPHS_ENV,
    REPO,
    Server,
    ServerError,
    fail,
    free_port,
    glyphs_dir,
    machine_line,
    module_command,
    peak_memory_mib,
    publish,
    reset_peak_memory,
    rss_kib,
    timed,
)

BENCHMARKS = sorted(  # the runnable modules of the package (the others are helpers, like the harness)
    p.stem for p in (REPO / "benchmarks").glob("*.py") if 'if __name__ == "__main__":' in p.read_text()
)
LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


# ------------------------------------------------------------------------------------------ data paths
def test_glyphs_dir_comes_from_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GLYPHS_ENV, str(tmp_path))
    assert glyphs_dir() == tmp_path


def test_glyphs_dir_is_where_the_glyphs64_dataset_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.datasets import glyphs

    assert glyphs.GLYPHS_ENV == GLYPHS_ENV
    monkeypatch.delenv(GLYPHS_ENV, raising=False)
    monkeypatch.setenv("CLCE_DATA_HOME", str(tmp_path / "data"))
    assert glyphs_dir(check=False) == glyphs.glyphs_root() == tmp_path / "data" / "glyphs64"


def test_glyphs_dir_defaults_to_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GLYPHS_ENV, raising=False)
    monkeypatch.delenv("CLCE_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "clce" / "data" / "glyphs64"
    assert glyphs_dir(check=False) == expected
    with pytest.raises(FileNotFoundError) as e:
        glyphs_dir()
    message = str(e.value)
    assert (
        str(expected) in message and GLYPHS_ENV in message and "python -m benchmarks.render_glyphs" in message
    )
    expected.mkdir(parents=True)
    assert glyphs_dir() == expected


# ------------------------------------------------------------------------------------------ machine, memory, timing
def test_machine_line_names_torch_only_when_asked() -> None:
    import torch

    with_torch = machine_line("extra part")
    assert f"torch {torch.__version__}" in with_torch and with_torch.endswith(", extra part")
    without = machine_line(threads=3, torch_info=False)
    assert "torch" not in without and without.endswith("3 threads") and re.search(r"\d+ CPUs", without)


@LINUX_PROC
def test_peak_memory_sees_an_allocation_after_the_reset() -> None:
    assert rss_kib("VmRSS") > 0
    with pytest.raises(RuntimeError, match="NoSuchField"):
        rss_kib("NoSuchField")
    before = reset_peak_memory("cpu")
    block = bytearray(64 * 2**20)  # zero-filled: every page is touched
    peak = peak_memory_mib("cpu")
    del block
    assert peak - before >= 48


def test_timed_measures_the_call() -> None:
    calls = []
    seconds = timed(lambda: (calls.append(1), time.sleep(0.05)), "cpu")
    assert calls == [1] and 0.04 <= seconds < 5


def test_publish_writes_json_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deep" / "r.json"
    publish({"a": [1, 2]}, out, "| a |\n|---|")
    assert json.loads(out.read_text()) == {"a": [1, 2]}
    assert capsys.readouterr().out == f"| a |\n|---|\n\nwrote {out}\n"


def test_fail_is_one_error_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        fail("no such thing; do this")
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: no such thing; do this\n"


# ------------------------------------------------------------------------------------------ a server process
def _http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_server_waits_for_ready_keeps_its_output_and_stops() -> None:
    port = free_port()
    with Server(_http_server(port), port) as server:
        assert server.wait_ready(30, path="/") is server and server.proc.poll() is None
        assert httpx.get(server.url + "/", timeout=5).status_code == 200
        time.sleep(0.2)  # http.server logs the request after answering it
        assert '"GET / HTTP/1.1" 200' in server.output()
    assert server.proc.returncode is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/", timeout=1)


def test_server_reports_an_early_exit_with_its_output() -> None:
    cmd = [sys.executable, "-c", "import sys; print('bad model folder'); sys.exit(3)"]
    with (
        pytest.raises(ServerError, match=r"exited with code 3 before it was ready: bad model folder"),
        Server(cmd, free_port()) as server,
    ):
        server.wait_ready()


def test_server_gives_up_when_never_ready() -> None:
    port = free_port()
    with (  # it answers 404 there (or, on a machine slower to start it than 1 s, nothing)
        pytest.raises(ServerError, match=r"not ready within 1 s \(GET /health/ready: (404|no answer)"),
        Server(_http_server(port), port) as server,
    ):
        server.wait_ready(1)
    assert server.proc.returncode is not None  # stopped all the same


# ------------------------------------------------------------------------------------------ the benchmarks
def test_the_benchmarks_are_found() -> None:
    assert {"loss_speed", "train_speed", "serving_load", "quality", "render_glyphs"} <= set(BENCHMARKS)
    assert "harness" not in BENCHMARKS and "glyph_fonts" not in BENCHMARKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_is_a_module_of_the_package(name: str) -> None:
    text = (REPO / "benchmarks" / f"{name}.py").read_text()
    assert "sys.path" not in text and '"shared"' not in text and "training.sysinfo" not in text
    assert f"python -m benchmarks.{name}" in text  # the usage lines
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.main)


def test_the_harness_is_not_in_the_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not any(pattern.startswith("benchmarks") for pattern in include["include"])
    assert not (REPO / "training" / "sysinfo.py").exists()
    assert harness.__name__ == "benchmarks.harness"


@pytest.mark.slow
@LINUX_PROC
def test_loss_speed_runs_as_a_module_with_its_memory_children(tmp_path: Path) -> None:
    """``python -m benchmarks.loss_speed`` from another folder: the children it starts find the package too."""
    out = tmp_path / "loss_speed.json"
    cmd = module_command("benchmarks.loss_speed", "--rows", "64", "--dim", "16", "--repeats", "1")
    cmd += ["--device", "cpu", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["rows"]["64"]) == {"clce", "clce-nohnm", "supcon", "pml SupConLoss", "matmul"}
    assert all(r["peak_mb"] >= 0 for name, r in results["rows"]["64"].items() if name != "matmul")
    assert "| 64 | clce |" in proc.stdout and f"wrote {out}" in proc.stdout
