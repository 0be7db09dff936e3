"""Smoke test of python -m benchmarks.train_speed at the smallest settings (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import train_speed

SMALL = ["--batch-size", "4", "--img-size", "32", "--warmup", "1", "--repeats", "1"]


@pytest.mark.slow
def test_train_speed_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train_speed.json"
    train_speed.main([*SMALL, "--no-memory", "--output", str(out)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert list(results["configs"]) == [c.name for c in train_speed.CONFIGS]
    rows = {name: r["rows"] for name, r in results["configs"].items()}
    assert rows == {"ce 1 view": 4, "ce 2 views": 8, "clce 2 views": 8}
    for r in results["configs"].values():
        assert r["median_ms"] > 0 and r["images_per_s"] > 0
    assert results["configs"]["ce 2 views"]["x_ce_2views"] == pytest.approx(1.0)
    assert "| clce 2 views | 8 |" in printed and "Machine:" in printed


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_train_speed_memory_child_reports_a_peak(capsys: pytest.CaptureFixture[str]) -> None:
    train_speed.main([*SMALL, "--_memory-child", "clce 2 views"])
    peak = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert peak["step_peak_mib"] >= 0 and peak["process_peak_mib"] > peak["step_peak_mib"]
