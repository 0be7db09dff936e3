"""The loss-speed comparison on the plan's device: :func:`benchmarks.loss_speed.run` to M = 16,384 rows.

Our ``clce``, ``clce-nohnm`` and ``supcon`` against pytorch-metric-learning's ``SupConLoss`` and the
matmul floor, forward + backward of the contrastive term, D = 768 (see ``benchmarks/loss_speed.py``).
Under the 12 GB cap a loss whose M × M matrices do not fit is recorded as ``does not fit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import loss_speed
from benchmarks.gpu.plan import Plan, skipped

DIM = 768


def section(plan: Plan, work: Path) -> dict[str, Any]:
    """``loss_speed.run`` at the plan's rows; skipped where pytorch-metric-learning is not installed."""
    try:
        import pytorch_metric_learning  # noqa: F401
    except ImportError:
        return skipped("pytorch-metric-learning is not installed (pip install pytorch-metric-learning)")
    results = loss_speed.run(
        list(plan.loss_rows), DIM, plan.loss_repeats, plan.device, memory=plan.loss_memory
    )
    results["table"] = loss_speed.table(results)
    return results
