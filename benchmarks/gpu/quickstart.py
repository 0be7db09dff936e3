"""The quick-start path end to end on the plan's device: fine-tune → export → serve → classify.

The ``make quickstart`` recipe (``python -m training.finetune --dataset fashion-mnist
--train-per-class 20 --img-size 64 --val-per-class 100``) for the plan's epochs with ``--device cuda``,
then ``python -m training.export`` of its ``best.pt``, ``python -m serving --device cuda`` on the
export, and ``POST /classify`` of two real photographs. Every step is the real CLI in its own process.
Where Fashion-MNIST is not on the machine (the device machine has no network), the same run takes a
small synthetic image folder instead, and the section says so; the ``--smoke`` plan always does.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.gpu.plan import Plan
from benchmarks.gpu.serving import ready_report
from benchmarks.harness import REPO, Server, free_port, module_command
from benchmarks.serving_setup import load_jpegs

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (220, 200, 40)}
CHILD_TIMEOUT_S = 300
NOT_FOUND = "Fashion-MNIST not found"


def write_colour_folder(root: Path, per_split: dict[str, int] | None = None) -> Path:
    """``root/{train,val,test}/COLOUR/i.png``: noisy colour fields of 40×40 px, four classes."""
    rng = np.random.default_rng(0)
    for split, n in (per_split or {"train": 16, "val": 4, "test": 4}).items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def pretrained_for(model: str) -> str:
    """``packaged`` where the model has packaged weights installed, else ``none`` (no hub: no network)."""
    from clce_core.weights import resolve_source

    return "packaged" if resolve_source(model, "auto") == "packaged" else "none"


def _cli(module: str, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(
        module_command(module, *args), cwd=REPO, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    return time.perf_counter() - start, done


def _checked(step: str, done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{step} exited with {done.returncode}: {done.stderr[-1500:]}")


def finetune(plan: Plan, work: Path) -> tuple[dict[str, Any], Path]:
    """The quick-start fine-tune; Fashion-MNIST unless missing (or smoke), else the colour folder."""
    run = work / "quickstart-run"
    common = [
        "--model", plan.quick_model, "--pretrained", pretrained_for(plan.quick_model),
        "--img-size", str(plan.quick_img_size), "--epochs", str(plan.quick_epochs),
        "--device", plan.device, "--output", str(run), "--force",
    ]  # fmt: skip
    data = "fashion-mnist"
    if not plan.smoke:
        where = ["--data-dir", plan.quick_data] if plan.quick_data else []
        recipe = ["--dataset", "fashion-mnist", *where, "--train-per-class", "20", "--val-per-class", "100"]
        seconds, done = _cli("training.finetune", *recipe, *common)
    if plan.smoke or NOT_FOUND in done.stderr:
        data = "synthetic colour folder" + ("" if plan.smoke else f" ({NOT_FOUND} on this machine)")
        folder = write_colour_folder(work / "colours")
        small = [
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(folder),
            "--batch-size",
            "8",
            "--per-class",
            "2",
        ]
        smoke = ["--max-steps-per-epoch", "2", "--workers", "0"] if plan.smoke else []
        seconds, done = _cli("training.finetune", *small, *smoke, *common)
    _checked("training.finetune", done)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"data": data, "seconds": seconds, "metrics": metrics, "args": common}, run


def section(plan: Plan, work: Path) -> dict[str, Any]:
    """Each step's time and outcome: the run's metrics, the export's card, the ready report, the answer."""
    train, run = finetune(plan, work)
    model_dir = work / "quickstart-model"
    seconds, done = _cli(
        "training.export", "--checkpoint", str(run / "best.pt"), "--output", str(model_dir), "--force"
    )
    _checked("training.export", done)
    card = json.loads((model_dir / "model.json").read_text())
    export = {"seconds": seconds, "precision": card.get("precision"), "labels": len(card["labels"])}
    device = "cuda" if plan.device.startswith("cuda") else "cpu"
    port = free_port()
    cmd = module_command(
        "serving", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--device", device, "--db-path", str(work / "quickstart.sqlite3"), "--log-level", "warning",
    )  # fmt: skip
    start = time.perf_counter()
    with Server(cmd, port, env={"CLCE_API_KEY": ""}) as server:
        server.wait_ready(120)
        ready = ready_report(server.url, device)
        ready["seconds_to_ready"] = time.perf_counter() - start
        photos = load_jpegs(None)[:2]
        files = [("images", (name, data, "image/jpeg")) for name, data in photos]
        r = httpx.post(f"{server.url}/classify", files=files, params={"top_k": 1}, timeout=60)
    answer = r.json()
    top = [res["top_k"][0]["label"] for res in answer.get("results", [])] if r.status_code == 200 else []
    classify = {"status_code": r.status_code, "top1": top, "body": answer if r.status_code != 200 else None}
    return {"finetune": train, "export": export, "ready": ready, "classify": classify}
