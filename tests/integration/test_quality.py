"""The quality benchmark end to end at smoke size: both suites, paired seeds, the table's shape.

Tiny stand-ins in the real on-disk formats (a glyph folder of 8 px PNGs with the real class lists,
Fashion-MNIST's IDX files), ``test_efficientnet`` from random weights, one epoch: minutes of CPU
would be needed for real numbers, so only the structure is checked, never a value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.harness import REPO
from tests.training.test_data import write_fashion_files
from training.datasets.glyphs import GLYPHS_ENV, glyph_classes

pytestmark = pytest.mark.slow


def _glyph_folder(root: Path, per_class: int = 7) -> Path:
    rng = np.random.default_rng(0)
    for folder, split in (("base", "train"), ("base", "val"), ("novel", "test")):
        for name in glyph_classes(split):
            (root / folder / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(root / folder / name / f"{i:02d}.png")
    return root


def test_quick_run_writes_the_tables_with_paired_differences(tmp_path: Path) -> None:
    glyphs = _glyph_folder(tmp_path / "glyphs64")
    write_fashion_files(tmp_path / "data" / "fashion-mnist" / "FashionMNIST" / "raw")
    out = tmp_path / "out"
    env = {GLYPHS_ENV: str(glyphs), "CLCE_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "benchmarks.quality", "--quick", "--seeds", "0", "1", "--losses", "ce", "clce",
        "--output-dir", str(out), "--set", "model=test_efficientnet", "pretrained=none", "img_size=32",
        "batch_size=16", "glyph_epochs=1", "fmnist_k=[5]", "fmnist_steps=2", "fmnist_test_per_class=3",
        "episodes=4", "queries=2",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env={**_environ(), **env}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "quality.json").read_text())
    runs = saved["runs"]
    # glyphs: frozen floor, CE balanced + random, CLCE balanced; Fashion-MNIST: probe floor and the same
    for suite, floor in (("glyphs", "frozen"), ("fmnist", "probe")):
        groups = {(r["loss"], r["batches"]) for r in runs if r["suite"] == suite}
        assert groups == {(floor, "—"), ("ce", "balanced"), ("ce", "random"), ("clce", "balanced")}, groups
        assert sorted(r["seed"] for r in runs if r["suite"] == suite and r["loss"] == "clce") == [0, 1]
    every = [r for r in runs if r["suite"] == "glyphs" and r["loss"] in ("frozen", "ce", "clce")]
    assert all(
        f"{c}_{k}shot" in r for r in every for c in ("prototype", "simpleshot", "logreg") for k in (1, 5)
    )
    table = (out / "quality.md").read_text()
    assert table.strip() == proc.stdout.split("\nwrote ")[0].strip()  # printed and written alike
    assert "Machine: " in table and "Seeds 0, 1" in table
    assert (
        "| CLCE − best CE |" in table
        and "Verdict (glyphs, batch 16)" in table
        and "Verdict (fmnist, K=5)" in table
    )
    assert "| frozen encoder + linear probe |" in table and "SimpleShot" in table
    assert (out / "quality.png").stat().st_size > 0

    # runs made in two processes, one of them stopped half-way, join into one table; none twice
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    lines = (out / "quality.runs.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == runs  # every finished run, exact, as it finished
    (stopped / "quality.runs.jsonl").write_text("\n".join(lines[:3]) + "\n")
    joined = tmp_path / "joined"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.quality",
        "--combine",
        str(out),
        str(stopped),
        "--output-dir",
        str(joined),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**_environ(), **env}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((joined / "quality.json").read_text())["runs"] == runs
    assert "[stopped] stopped before the end" in (joined / "quality.md").read_text()


def test_bad_override_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--set", "epochz=3", "--output-dir", str(tmp_path)],
        cwd=REPO, env={**_environ(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --set epochz"), proc.stderr
    assert "Traceback" not in proc.stderr


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in (GLYPHS_ENV, "CLCE_DATA_HOME")}
