"""Forward+backward time and peak memory of the contrastive losses against pytorch-metric-learning.

    python -m benchmarks.loss_speed                 # M = 256, 1024, 4096 rows, D = 768, 7 repeats
    python -m benchmarks.loss_speed --rows 256 --repeats 3 --device cuda

Compared, in one run: our ``clce`` (LACLN term), ``clce-nohnm``, ``supcon`` (L_out), and
pytorch-metric-learning's ``SupConLoss`` (the peer users would pick), plus the floor: one M×M×D
matmul (a loss needs about three: X Xᵀ forward, then the gradient). Only the contrastive term is
timed (CE on the logits is the same for every entry). Batches are class-balanced as training makes
them: 4 images per class, two views each, so every row has 7 positives.

Time: median over ``--repeats`` of forward + backward, the losses interleaved round-robin so that
machine noise hits them alike. Peak memory: on CUDA ``max_memory_allocated``; on the CPU each
(loss, M) runs in a fresh subprocess and reports the growth of its peak RSS (``VmHWM``, reset
just before) over one step. Prints a Markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import (
    REPO,
    RESULTS,
    machine_line,
    module_command,
    peak_memory_mib,
    publish,
    reset_peak_memory,
    timed,
)
from clce_core.losses import lacln_loss, supcon_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pml_supcon() -> LossFn:
    from pytorch_metric_learning.losses import SupConLoss

    loss = SupConLoss(temperature=0.5)
    return lambda e, y: loss(e, y)


LOSSES: dict[str, Callable[[], LossFn]] = {
    "clce": lambda: lambda e, y: lacln_loss(e, y, 0.5),
    "clce-nohnm": lambda: lambda e, y: lacln_loss(e, y, 0.5, hard_negatives=False),
    "supcon": lambda: lambda e, y: supcon_loss(e, y, 0.5),
    "pml SupConLoss": _pml_supcon,
}
PEER = "pml SupConLoss"


def make_batch(rows: int, dim: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``(M, D)`` and labels ``(M,)``: M/2 images, 4 per class, two views stacked as rows."""
    g = torch.Generator().manual_seed(seed)
    images = rows // 2
    labels = (torch.arange(images) // 4).repeat(2)
    return torch.randn(rows, dim, generator=g).to(device), labels.to(device)


def time_step(fn: LossFn, emb: torch.Tensor, labels: torch.Tensor, device: str) -> float:
    """Seconds for one forward + backward."""
    e = emb.detach().requires_grad_(True)
    return timed(lambda: fn(e, labels).backward(), device)


def time_matmul(emb: torch.Tensor, device: str) -> float:
    """Seconds for one (M, D) × (D, M) matmul."""
    return timed(lambda: emb @ emb.T, device)


def peak_memory_mb(name: str, rows: int, dim: int, device: str) -> float:
    """Extra peak memory (MiB) of one forward + backward of loss ``name``."""
    if device.startswith("cuda"):
        emb, labels = make_batch(rows, dim, device)
        fn = LOSSES[name]()
        base = reset_peak_memory(device)
        time_step(fn, emb, labels, device)
        return peak_memory_mib(device) - base
    out = subprocess.run(
        module_command(
            "benchmarks.loss_speed", "--_memory-child", name, "--rows", str(rows), "--dim", str(dim)
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(name: str, rows: int, dim: int) -> None:
    emb, labels = make_batch(rows, dim, "cpu")
    fn = LOSSES[name]()
    fn(emb[:16].detach().requires_grad_(True), labels[:16]).backward()  # import-time and lazy allocations
    before = reset_peak_memory("cpu")  # VmHWM from here on is this one step's peak
    time_step(fn, emb, labels, "cpu")
    print(peak_memory_mib("cpu") - before)


def _fits(fn: LossFn, emb: torch.Tensor, labels: torch.Tensor, device: str) -> bool:
    """One warm-up step; False when it runs out of CUDA memory (e.g. under a memory cap)."""
    try:
        time_step(fn, emb, labels, device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return False
    return True


def run(rows_list: list[int], dim: int, repeats: int, device: str, memory: bool = True) -> dict:
    """Time every loss of :data:`LOSSES` and the matmul floor at each M of ``rows_list`` on ``device``.

    Args:
        memory: also measure each loss's peak memory (on the CPU a fresh process per loss and M).

    Returns:
        ``{"machine", "device", "dim", "repeats", "rows": {M: {name: {"median_ms", ...}}}}``; a loss
        that runs out of CUDA memory at some M has ``{"does_not_fit": True}`` there.
    """
    results = {"machine": machine_line(), "device": device, "dim": dim, "repeats": repeats, "rows": {}}
    for rows in rows_list:
        emb, labels = make_batch(rows, dim, device)
        made = {name: make() for name, make in LOSSES.items()}
        fns = {name: fn for name, fn in made.items() if _fits(fn, emb, labels, device)}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in fns}
        times["matmul"] = []
        for _ in range(repeats):
            for name, fn in fns.items():
                times[name].append(time_step(fn, emb, labels, device))
            times["matmul"].append(time_matmul(emb, device))
        row: dict[str, dict] = {
            name: {"median_ms": 1e3 * statistics.median(t), "all_ms": [1e3 * x for x in t]}
            for name, t in times.items()
        }
        row.update({name: {"does_not_fit": True} for name in made if name not in fns})
        if memory:
            for name in fns:
                row[name]["peak_mb"] = peak_memory_mb(name, rows, dim, device)
        results["rows"][str(rows)] = row
        print(f"M={rows} done", file=sys.stderr)
    return results


def table(results: dict) -> str:
    lines = [
        f"Machine: {results['machine']} ({results['device']}); D = {results['dim']}; "
        f"median of {results['repeats']} forward+backward steps.",
        "",
        "| M | loss | time (ms) | × pml SupConLoss | × 3 matmuls | peak memory (MiB) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for rows, row in results["rows"].items():
        peer = row[PEER].get("median_ms")
        floor = 3 * row["matmul"]["median_ms"]
        for name in LOSSES:
            r = row[name]
            if r.get("does_not_fit"):
                lines.append(f"| {rows} | {name} | does not fit | | | |")
                continue
            x_peer = f"{r['median_ms'] / peer:.2f}" if peer else "–"
            peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "–"
            lines.append(
                f"| {rows} | {name} | {r['median_ms']:.1f} | {x_peer} | {r['median_ms'] / floor:.2f} | {peak} |"
            )
        lines.append(f"| {rows} | one M×M×D matmul | {row['matmul']['median_ms']:.1f} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[256, 1024, 4096], help="batch rows M (2 views)"
    )
    parser.add_argument("--dim", type=int, default=768, help="embedding size D")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per configuration (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=RESULTS / "loss_speed.json")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.rows[0], args.dim)
        return
    results = run(args.rows, args.dim, args.repeats, args.device)
    publish(results, args.output, table(results))


if __name__ == "__main__":
    main()
