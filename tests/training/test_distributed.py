"""DDP on the CPU with Gloo: two processes compute the loss and gradients of the union batch, and a
``torchrun --nproc-per-node 2`` fine-tuning run checkpoints and resumes in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clce_core.losses import create_loss, list_losses
from tests.training.kit import image_folder, run_args
from training import finetune
from training.checkpoint import load_checkpoint
from training.config import ConfigError, RunConfig
from training.distributed import DistInfo, gather_rows
from training.engine import StepContext, train_step
from training.loaders import build_loaders

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD, IMAGES, FEATURES, CLASSES = 2, 8, 6, 3  # 8 images, 4 per rank
ENGINE_CASES = [(loss, chunk) for loss in ("clce", "supcon", "ce") for chunk in (None, 3)]


# ------------------------------------------------------------------------------------------------ data
def _union(views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The union batch, float64: ``(views·IMAGES, FEATURES)`` rows in the CONTRACTS layout, labels
    ``(views·IMAGES,)``. Classes are spread over both ranks, so positives cross ranks too."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(IMAGES, FEATURES, generator=g, dtype=torch.float64)
    rows = [x + 0.3 * torch.randn(IMAGES, FEATURES, generator=g, dtype=torch.float64) for _ in range(views)]
    labels = torch.arange(IMAGES) % CLASSES
    return torch.cat(rows), labels.repeat(views)


def _local_index(rank: int, views: int) -> torch.Tensor:
    """Rows of the union batch that rank ``rank`` holds, in its own CONTRACTS layout."""
    per_rank = IMAGES // WORLD
    images = torch.arange(rank * per_rank, (rank + 1) * per_rank)
    return torch.cat([v * IMAGES + images for v in range(views)])


class _TinyModel(nn.Module):
    """Linear encoder + linear head with the ClassifierModel call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(FEATURES, 5).double()
        self.head = nn.Linear(5, CLASSES).double()

    def forward(self, x: torch.Tensor, detach_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(x)  # (N, 5)
        return embedding, self.head(embedding.detach() if detach_head else embedding)


def _ctx(model: nn.Module, loss: str, chunk: int | None, world_size: int) -> StepContext:
    params = (model.module if isinstance(model, DistributedDataParallel) else model).parameters()
    optimizer = torch.optim.SGD(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return StepContext(
        model,
        create_loss(loss),
        optimizer,
        scheduler,
        torch.device("cpu"),
        clip_grad=None,
        world_size=world_size,
        chunk_size=chunk,
    )


def _logits_of(rows: torch.Tensor) -> torch.Tensor:
    return rows[:, :CLASSES] * 2.0  # any function of the rows will do: (M, C)


# ------------------------------------------------------------------------------------------------ ranks
def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results: dict = {}
        for loss in list_losses():  # the loss on gathered rows, and the gradient of the local rows
            loss_fn = create_loss(loss)
            rows, labels = _union(loss_fn.views)
            idx = _local_index(rank, loss_fn.views)
            emb = rows[idx].clone().requires_grad_(True)
            logits = _logits_of(rows)[idx].clone().requires_grad_(True)
            v = loss_fn.views
            out = loss_fn(gather_rows(emb, v), gather_rows(logits, v), gather_rows(labels[idx], v))
            out.total.backward()
            results[loss] = {"total": out.total.detach(), "emb": emb.grad, "logits": logits.grad}
        for loss, chunk in ENGINE_CASES:  # a DDP training step through the engine
            model = _TinyModel()
            views = create_loss(loss).views
            rows, labels = _union(views)
            idx = _local_index(rank, views)
            out = train_step(_ctx(DistributedDataParallel(model), loss, chunk, WORLD), rows[idx], labels[idx])
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            results[(loss, chunk)] = {"total": out.total.detach(), "grads": grads, "parts": out.parts}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(out / "rendezvous"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("loss", list_losses())
def test_gathered_loss_and_row_gradients_match_the_union_batch(loss: str, two_ranks: list[dict]) -> None:
    """Every rank's loss is the union batch's; local rows get world_size × the union gradient, the
    convention under which DDP's averaging of parameter gradients gives the exact gradient."""
    loss_fn = create_loss(loss)
    rows, labels = _union(loss_fn.views)
    emb = rows.clone().requires_grad_(True)
    logits = _logits_of(rows).clone().requires_grad_(True)
    ref = loss_fn(emb, logits, labels)
    ref.total.backward()
    for rank, result in enumerate(two_ranks):
        got = result[loss]
        idx = _local_index(rank, loss_fn.views)
        torch.testing.assert_close(got["total"], ref.total.detach(), rtol=1e-12, atol=1e-12)
        for name, leaf in (("emb", emb), ("logits", logits)):
            if leaf.grad is None:  # ce does not use the embeddings
                assert got[name] is None, name
            else:
                torch.testing.assert_close(got[name], WORLD * leaf.grad[idx], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("loss, chunk", ENGINE_CASES)
def test_ddp_step_has_the_single_process_gradient(
    loss: str, chunk: int | None, two_ranks: list[dict]
) -> None:
    """train_step under DDP (2 ranks, optionally chunked) == train_step on the union batch in one process."""
    model = _TinyModel()
    rows, labels = _union(create_loss(loss).views)
    ref = train_step(_ctx(model, loss, None, 1), rows, labels)
    for result in two_ranks:
        got = result[(loss, chunk)]
        torch.testing.assert_close(got["total"], ref.total.detach(), rtol=1e-12, atol=1e-12)
        assert got["parts"] == pytest.approx(ref.parts, rel=1e-12)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


# ------------------------------------------------------------------------------------------------ loaders
class _Labels(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.targets = [i % 4 for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return torch.zeros(1), self.targets[i]


@pytest.mark.parametrize("per_class", [0, 2])
def test_each_rank_loads_its_own_share_of_the_global_batch(per_class: int) -> None:
    """--batch-size is global: 2 ranks × 4 images per step, disjoint, as many steps as one process."""
    from types import SimpleNamespace

    data = SimpleNamespace(train=_Labels(40), val=_Labels(4), test=None)
    cfg = RunConfig(dataset="x", batch_size=8, per_class=per_class).resolved()
    cpu = torch.device("cpu")
    single = build_loaders(cfg, data, 1, cpu)  # type: ignore[arg-type]
    ranks = [build_loaders(cfg, data, 1, cpu, DistInfo(r, 2)) for r in range(2)]  # type: ignore[arg-type]
    for loaders in (single, *ranks):
        loaders.set_epoch(3)
    steps = [list(loaders.train.batch_sampler) for loaders in ranks]
    assert len(steps[0]) == len(steps[1]) == len(single.train) == 40 // 8
    assert single.steps_per_epoch == ranks[0].steps_per_epoch == 40 // 8
    for a, b in zip(*steps, strict=True):
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        build_loaders(cfg, data, 1, cpu, DistInfo(0, 3))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ torchrun
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_then_resume_in_one(tmp_path: Path) -> None:
    data_dir = image_folder(tmp_path / "colours", {"train": 8, "val": 3, "test": 3})
    out = tmp_path / "run"
    args = run_args(data_dir, out, "--chunk-size", "6", "--max-steps-per-epoch", "2")
    args[args.index("--epochs") + 1] = "1"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "training.finetune"]
    proc = subprocess.run(cmd + args, cwd=root, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done in") == 1  # rank 0 alone reports
    assert "DDP: 2 processes × 4 images per step" in proc.stderr

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("epoch" in r, "test_top1" in r) for r in lines] == [(True, False), (False, True)]
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the unwrapped model

    # Resume the same run in a single process (no torchrun): world size 2 -> 1, and chunking off.
    resume = ["--resume", str(out / "last.pt"), "--epochs", "2", "--workers", "0", "--chunk-size", "none"]
    assert finetune.main(resume) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["global_step"] == 4
    assert state["config"]["chunk_size"] is None
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if "epoch" in r] == [1, 2]
