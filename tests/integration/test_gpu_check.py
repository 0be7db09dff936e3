"""``python -m benchmarks.gpu_check --smoke`` as a subprocess: every section runs on the CPU and the
JSON and Markdown have the shape the GPU run will fill (the numbers are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu import train_steps
from benchmarks.gpu.plan import run_section, smoke_plan
from benchmarks.gpu.report import TITLES
from benchmarks.harness import REPO

SECTIONS = ["train_steps", "losses", "inference", "serving", "quickstart"]


def _gpu_check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = _gpu_check("--smoke", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        "json": json.loads((out / "gpu_check.json").read_text()),
        "md": (out / "gpu_check.md").read_text(),
        "stdout": done.stdout,
    }


@pytest.mark.slow
def test_every_section_runs_in_smoke_mode(smoke: dict[str, Any]) -> None:
    results = smoke["json"]
    assert list(results["sections"]) == SECTIONS
    failed = {k: s.get("reason") for k, s in results["sections"].items() if s["status"] != "ok"}
    assert not failed
    assert results["plan"]["smoke"] is True and results["plan"]["device"] == "cpu"
    assert results["memory_cap"].startswith("none")


@pytest.mark.slow
def test_train_steps_cover_every_model_and_configuration(smoke: dict[str, Any]) -> None:
    plan = smoke_plan()
    rows = smoke["json"]["sections"]["train_steps"]["rows"]
    expected = [(m, c.name) for m in plan.models for c in train_steps.configs(plan)]
    assert [(r["model"], r["config"]) for r in rows] == expected
    for r in rows:
        assert r["fits"] is True and r["median_ms"] > 0 and r["images_per_s"] > 0 and "peak_mib" in r
        assert r["rows"] == r["views"] * r["images"]
    chunked = [r for r in rows if r["chunk_size"]]
    assert chunked and all(r["x_one_pass"] > 0 for r in chunked)


@pytest.mark.slow
def test_cuda_only_parts_are_skipped_with_a_reason(smoke: dict[str, Any]) -> None:
    sections = smoke["json"]["sections"]
    for notes in sections["inference"]["notes"].values():
        for name in ("ORT CUDA", "ORT CUDA fp16", "ORT TensorRT", "ORT TensorRT fp16"):
            assert notes[name]["status"] == "skipped" and notes[name]["reason"]
    runtimes = {(r["model"], r["runtime"], r["batch"]) for r in sections["inference"]["rows"]}
    plan = smoke_plan()
    for m in plan.models:
        for b in plan.infer_batches:
            assert {(m, "PyTorch eager", b), (m, "ORT CPU", b), (m, "ORT CPU fp16", b)} <= runtimes
    for ready in sections["serving"]["ready"].values():
        assert ready["status_code"] == 200 and ready["body"]["providers"] == ["CPUExecutionProvider"]
        assert ready["cuda_check"]["status"] == "skipped"


@pytest.mark.slow
def test_serving_and_quickstart_went_end_to_end(smoke: dict[str, Any]) -> None:
    sections = smoke["json"]["sections"]
    points = {(p["batching"], p["concurrency"]) for p in sections["serving"]["points"]}
    assert points == {(b, c) for b in ("on", "off") for c in smoke_plan().concurrency}
    assert all(p["errors"] == 0 and p["ok"] > 0 for p in sections["serving"]["points"])
    assert {d["batch"] for d in sections["serving"]["direct"]} == {1, smoke_plan().max_batch}
    quick = sections["quickstart"]
    assert any("test_top1" in m for m in quick["finetune"]["metrics"])
    assert quick["ready"]["status_code"] == 200
    assert quick["classify"]["status_code"] == 200 and len(quick["classify"]["top1"]) == 2
    assert set(quick["classify"]["top1"]) <= {"red", "green", "blue", "yellow"}
    losses = sections["losses"]["rows"]
    assert set(losses) == {str(m) for m in smoke_plan().loss_rows}
    assert all({"clce", "pml SupConLoss", "matmul"} <= set(row) for row in losses.values())


@pytest.mark.slow
def test_markdown_has_a_table_per_section_and_is_printed(smoke: dict[str, Any]) -> None:
    md = smoke["md"]
    assert md.startswith("# GPU check (smoke, CPU)") and "Machine: " in md
    headings = [line.removeprefix("## ") for line in md.splitlines() if line.startswith("## ")]
    assert headings == [TITLES[s] for s in SECTIONS]
    for block in md.split("\n## ")[1:]:
        assert "\n|---" in block, f"no table under {block.splitlines()[0]!r}"
    assert md.strip() in smoke["stdout"]


def test_a_failing_section_is_recorded_not_raised(tmp_path: Path) -> None:
    def broken(plan: object, work: Path) -> dict[str, Any]:
        raise ValueError("the section broke")

    result = run_section("broken", broken, smoke_plan(), tmp_path)
    assert result["status"] == "failed" and "ValueError: the section broke" in result["reason"]
    assert result["seconds"] >= 0 and "Traceback" in result["traceback"]


@pytest.mark.slow
def test_the_full_run_without_cuda_is_one_error_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start")
    done = _gpu_check("--output", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: CUDA is not available here: the full check needs a GPU; run `--smoke` on the CPU"
    ]
