"""The loss family against naive per-anchor loops in float64 (the formulas of PAPER.md / CONTRACTS.md)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from clce_core.losses import (
    LossOutput,
    ce_supcon_loss,
    clce_loss,
    create_loss,
    hscl_loss,
    lacln_loss,
    list_losses,
    loss_options,
    supcon_loss,
)

# Label layouts: all distinct (no positives), all equal (no negatives), mixed, with singletons.
LAYOUTS = {
    "two-views": [0, 1, 2, 3, 0, 1, 2, 3],
    "mixed": [0, 0, 0, 1, 1, 2, 2, 2, 2, 3],
    "singletons": [0, 1, 1, 2, 3, 3, 4],
    "all-distinct": [0, 1, 2, 3, 4, 5],
    "all-equal": [7, 7, 7, 7, 7],
}


def _sims(emb: torch.Tensor, tau: float) -> list[list[float]]:
    x = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in emb.tolist()]
    return [[sum(a * b for a, b in zip(xi, xj, strict=True)) / tau for xj in x] for xi in x]


def naive_lacln(emb: torch.Tensor, labels: list[int], tau: float, hard_negatives: bool = True) -> float:
    """PAPER.md Eq. 3, one anchor at a time, plain Python floats (double precision)."""
    s = _sims(emb, tau)
    losses = []
    for i, yi in enumerate(labels):
        pos = [j for j, yj in enumerate(labels) if yj == yi and j != i]
        neg = [k for k, yk in enumerate(labels) if yk != yi]
        if not pos or not neg:
            continue
        p_sum = sum(math.exp(s[i][p]) for p in pos)
        n_sum = sum(math.exp(s[i][k]) for k in neg)
        if hard_negatives:
            w = sum(len(neg) * math.exp(s[i][k]) / n_sum * math.exp(s[i][k]) for k in neg)
        else:
            w = n_sum
        losses.append(-math.log(1.0 / len(pos) * p_sum / (p_sum + w)))
    return sum(losses) / len(losses) if losses else 0.0


def naive_supcon_out(emb: torch.Tensor, labels: list[int], tau: float) -> float:
    """Khosla et al. L_out: mean over positives of log-softmax over all non-self rows."""
    s = _sims(emb, tau)
    losses = []
    for i, yi in enumerate(labels):
        pos = [j for j, yj in enumerate(labels) if yj == yi and j != i]
        if not pos:
            continue
        denom = sum(math.exp(s[i][j]) for j in range(len(labels)) if j != i)
        losses.append(-sum(math.log(math.exp(s[i][p]) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses) if losses else 0.0


def naive_supcon_in(emb: torch.Tensor, labels: list[int], tau: float) -> float:
    """Khosla et al. L_in: log of the mean over positives of softmax over non-self rows."""
    s = _sims(emb, tau)
    losses = []
    for i, yi in enumerate(labels):
        pos = [j for j, yj in enumerate(labels) if yj == yi and j != i]
        neg = [k for k, yk in enumerate(labels) if yk != yi]
        if not pos or not neg:
            continue
        denom = sum(math.exp(s[i][j]) for j in range(len(labels)) if j != i)
        losses.append(-math.log(sum(math.exp(s[i][p]) / denom for p in pos) / len(pos)))
    return sum(losses) / len(losses) if losses else 0.0


def naive_hscl(emb: torch.Tensor, labels: list[int], tau: float, beta: float) -> float:
    """CONTRACTS.md H-SCL: per positive pair, (M − 2)·Σe^{(1+β)s}/Σe^{βs} as the negative mass."""
    s = _sims(emb, tau)
    m = len(labels)
    losses = []
    for i, yi in enumerate(labels):
        neg = [k for k, yk in enumerate(labels) if yk != yi]
        if not neg:
            continue
        r = (
            (m - 2)
            * sum(math.exp((1 + beta) * s[i][k]) for k in neg)
            / sum(math.exp(beta * s[i][k]) for k in neg)
        )
        for p, yp in enumerate(labels):
            if yp == yi and p != i:
                losses.append(-math.log(math.exp(s[i][p]) / (math.exp(s[i][p]) + r)))
    return sum(losses) / len(losses) if losses else 0.0


def _batch(layout: str, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(LAYOUTS[layout])
    return torch.randn(len(labels), dim, generator=g, dtype=torch.float64) * 3, labels


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tau", [0.5, 0.1])
@pytest.mark.parametrize("hard_negatives", [True, False])
def test_lacln_matches_naive_loop(layout: str, tau: float, hard_negatives: bool) -> None:
    emb, labels = _batch(layout)
    got = lacln_loss(emb, labels, temperature=tau, hard_negatives=hard_negatives)
    want = naive_lacln(emb, labels.tolist(), tau, hard_negatives)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_supcon_matches_naive_loop(layout: str, tau: float) -> None:
    emb, labels = _batch(layout, seed=1)
    got = supcon_loss(emb, labels, temperature=tau).item()
    assert got == pytest.approx(naive_supcon_out(emb, labels.tolist(), tau), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_hscl_matches_naive_loop(layout: str, beta: float) -> None:
    emb, labels = _batch(layout, seed=2)
    got = hscl_loss(emb, labels, temperature=0.5, beta=beta).item()
    assert got == pytest.approx(naive_hscl(emb, labels.tolist(), 0.5, beta), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("layout", ["two-views", "mixed", "singletons"])
def test_clce_nohnm_is_supcon_l_in(layout: str) -> None:
    """CONTRACTS: weights all 1 equals SupCon's L_in form (and differs from L_out)."""
    emb, labels = _batch(layout, seed=3)
    got = lacln_loss(emb, labels, hard_negatives=False).item()
    assert got == pytest.approx(naive_supcon_in(emb, labels.tolist(), 0.5), rel=1e-10)
    if layout == "mixed":  # L_in ≤ L_out by Jensen, strictly when an anchor has ≥ 2 unequal positives
        assert got < supcon_loss(emb, labels).item()


@pytest.mark.parametrize(
    "fn",
    [
        lambda e, y: lacln_loss(e, y, 0.3),
        lambda e, y: lacln_loss(e, y, 0.3, hard_negatives=False),
        lambda e, y: supcon_loss(e, y, 0.3),
        lambda e, y: hscl_loss(e, y, 0.3, beta=1.0),
    ],
    ids=["lacln", "lacln-nohnm", "supcon", "hscl"],
)
@pytest.mark.parametrize("layout", ["mixed", "singletons", "all-equal"])
def test_gradcheck(fn, layout: str) -> None:
    """The analytic backward against finite differences (detached weights are not a true gradient:
    test_detach_weights_changes_gradient_not_value pins that one against autograd)."""
    emb, labels = _batch(layout, dim=4, seed=4)
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: fn(e, labels), (emb,), eps=1e-6, atol=1e-6)


def _autograd_lacln(emb: torch.Tensor, labels: torch.Tensor, tau: float, detach: bool) -> torch.Tensor:
    """Autograd version of Eq. 3 with the weights optionally detached, to pin the custom backward."""
    x = F.normalize(emb, dim=1)
    s = x @ x.T / tau
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pos, neg = same & ~eye, ~same
    exp = torch.exp(s)
    w = neg.sum(1, keepdim=True) * exp / (exp * neg).sum(1, keepdim=True)
    if detach:
        w = w.detach()
    big_w = (w * exp * neg).sum(1)
    p_sum = (exp * pos).sum(1)
    valid = (pos.sum(1) > 0) & (neg.sum(1) > 0)
    p_sum, big_w, n_pos = p_sum[valid], big_w[valid], pos.sum(1)[valid]
    return -torch.log(p_sum / n_pos / (p_sum + big_w)).mean()


@pytest.mark.parametrize("detach", [False, True])
def test_detach_weights_changes_gradient_not_value(detach: bool) -> None:
    emb, labels = _batch("mixed", seed=5)
    a = emb.clone().requires_grad_(True)
    b = emb.clone().requires_grad_(True)
    ours = lacln_loss(a, labels, 0.5, detach_weights=detach)
    ref = _autograd_lacln(b, labels, 0.5, detach)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    other = emb.clone().requires_grad_(True)
    lacln_loss(other, labels, 0.5, detach_weights=not detach).backward()
    assert not torch.allclose(a.grad, other.grad)


def test_hard_negative_mass_never_below_plain_mass() -> None:
    """W_i ≥ Σ_k e^{s_ik} (Cauchy–Schwarz), so LACLN ≥ its no-HNM form, with equality iff all s_ik equal."""
    for seed in range(20):
        emb, labels = _batch("mixed", seed=seed)
        assert lacln_loss(emb, labels).item() >= lacln_loss(emb, labels, hard_negatives=False).item() - 1e-12
    # Equal negative similarities: every weight is exactly 1.
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    assert lacln_loss(emb, labels).item() == pytest.approx(
        lacln_loss(emb, labels, hard_negatives=False).item()
    )


def test_lower_bound_is_log_positive_count() -> None:
    """L_i ≥ log|P_i| (PAPER.md): perfectly separated classes approach it as τ → 0."""
    emb = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    value = lacln_loss(emb, labels, temperature=0.05).item()
    assert value >= math.log(2) - 1e-12
    assert value == pytest.approx(math.log(2), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("name", ["lacln", "supcon", "hscl"])
def test_finite_in_low_precision_and_small_tau(dtype: torch.dtype, tau: float, name: str) -> None:
    fn = {"lacln": lacln_loss, "supcon": supcon_loss, "hscl": hscl_loss}[name]
    g = torch.Generator().manual_seed(6)
    base = torch.randn(4, 32, generator=g)
    # Tight clusters and an exact duplicate make some s_ij = 1/τ = 20: e^{2s} = e^{40} overflows fp16.
    emb = torch.cat([base, base + 0.01 * torch.randn(4, 32, generator=g)]).repeat(4, 1) * 50
    labels = torch.arange(4).repeat(8)
    emb = emb.to(dtype).requires_grad_(True)
    loss = fn(emb, labels, temperature=tau)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert emb.grad is not None and emb.grad.dtype == dtype and torch.isfinite(emb.grad).all()
    ref = fn(emb.detach().double(), labels, temperature=tau).item()
    assert loss.item() == pytest.approx(ref, rel=2e-2, abs=2e-2)


@pytest.mark.parametrize("layout", ["all-distinct", "all-equal"])
@pytest.mark.parametrize("fn", [lacln_loss, supcon_loss, hscl_loss])
def test_nothing_valid_gives_zero_and_finite_gradient(layout: str, fn) -> None:
    emb, labels = _batch(layout)
    emb.requires_grad_(True)
    loss = fn(emb, labels)
    loss.backward()
    if not (fn is supcon_loss and layout == "all-equal"):  # SupCon needs positives only
        assert loss.item() == 0.0
    assert torch.isfinite(emb.grad).all()


def test_zero_embedding_row_stays_finite() -> None:
    emb, labels = _batch("mixed")
    emb[0] = 0.0
    emb.requires_grad_(True)
    loss = lacln_loss(emb, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_clce_lambda_endpoints() -> None:
    emb, labels = _batch("mixed", seed=7)
    logits = torch.randn(len(labels), 5, dtype=torch.float64)
    ce = F.cross_entropy(logits, labels)
    assert clce_loss(emb, logits, labels, lam=0.0).total.item() == pytest.approx(ce.item(), rel=1e-12)
    assert clce_loss(emb, logits, labels, lam=1.0).total.item() == pytest.approx(
        lacln_loss(emb, labels).item()
    )
    mix = clce_loss(emb, logits, labels, lam=0.9)
    assert mix.total.item() == pytest.approx(0.1 * ce.item() + 0.9 * lacln_loss(emb, labels).item())
    assert mix.parts == pytest.approx({"ce": ce.item(), "contrastive": lacln_loss(emb, labels).item()})
    sup = ce_supcon_loss(emb, logits, labels, lam=0.9)
    assert sup.total.item() == pytest.approx(0.1 * ce.item() + 0.9 * supcon_loss(emb, labels).item())


OPTION_VALUES = {"lam": 0.9, "temperature": 0.5, "beta": 1.0, "detach_weights": False}


@pytest.mark.parametrize("name", list_losses())
def test_registry_entries_share_one_call(name: str) -> None:
    loss_fn = create_loss(name, **{k: OPTION_VALUES[k] for k in loss_options(name)})
    b, classes = 6, 3
    labels = torch.arange(b) % classes
    emb = torch.randn(b * loss_fn.views, 8, requires_grad=True)
    head = torch.nn.Linear(8, classes)
    rows = labels.repeat(loss_fn.views)
    logits = head(emb.detach() if loss_fn.probe_only else emb)
    out = loss_fn(emb, logits, rows)
    assert isinstance(out, LossOutput)
    assert set(out.parts) == {"ce", "contrastive"}
    assert all(isinstance(v, float) for v in out.parts.values())
    out.total.backward()
    assert torch.isfinite(emb.grad).all() and head.weight.grad is not None
    assert loss_fn.views == (1 if name == "ce" else 2)
    assert loss_fn.probe_only == (name in {"supcon", "hscl"})


def test_registry_maps_to_the_right_formula() -> None:
    emb, labels = _batch("mixed", seed=8)
    logits = torch.randn(len(labels), 4, dtype=torch.float64)
    ce = F.cross_entropy(logits, labels).item()
    lacln = naive_lacln(emb, labels.tolist(), 0.5)
    nohnm = naive_lacln(emb, labels.tolist(), 0.5, hard_negatives=False)
    sup = naive_supcon_out(emb, labels.tolist(), 0.5)
    expected = {
        "ce": ce,
        "clce": 0.1 * ce + 0.9 * lacln,
        "clce-nohnm": 0.1 * ce + 0.9 * nohnm,
        "ce+supcon": 0.1 * ce + 0.9 * sup,
        "supcon": sup + ce,
        "hscl": naive_hscl(emb, labels.tolist(), 0.5, 1.0) + ce,
    }
    for name, want in expected.items():
        assert create_loss(name).forward(emb, logits, labels).total.item() == pytest.approx(
            want, rel=1e-10
        ), name


def test_bad_arguments_raise_clear_errors() -> None:
    emb, labels = _batch("mixed")
    with pytest.raises(ValueError, match="unknown loss 'clcee'; choose one of: ce, supcon"):
        create_loss("clcee")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        lacln_loss(emb, labels, temperature=0.0)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        create_loss("clce", lam=1.5)
    with pytest.raises(ValueError, match=r"labels must be \(M,\)"):
        lacln_loss(emb, labels[:-1])
    with pytest.raises(ValueError, match=r"embeddings must be \(M, D\)"):
        supcon_loss(emb[0], labels)


@pytest.mark.parametrize("name", list_losses())
def test_factory_rejects_a_keyword_the_entry_does_not_take(name: str) -> None:
    accepted = loss_options(name)
    assert set(accepted) <= set(OPTION_VALUES)
    with pytest.raises(
        TypeError, match=re.escape(f"create_loss({name!r}) got unexpected keyword argument(s) 'temprature'")
    ) as info:
        create_loss(name, temprature=0.1)
    assert (", ".join(accepted) or "no options") in str(info.value)
    for option in sorted(set(OPTION_VALUES) - set(accepted)):  # a real option of another entry
        with pytest.raises(TypeError, match=f"'{option}'"):
            create_loss(name, **{option: OPTION_VALUES[option]})


def test_factory_passes_the_options_an_entry_takes() -> None:
    assert loss_options("ce") == () and loss_options("clce") == ("lam", "temperature", "detach_weights")
    loss = create_loss("clce", lam=0.3, temperature=0.2, detach_weights=True)
    assert (loss.lam, loss.temperature, loss.detach_weights) == (0.3, 0.2, True)
    hscl = create_loss("hscl", temperature=0.7, beta=2.0)
    assert (hscl.temperature, hscl.beta) == (0.7, 2.0)
    assert create_loss("clce", lam=None).lam == 0.9  # None keeps the entry's default
    with pytest.raises(ValueError, match="unknown loss 'clcee'"):
        loss_options("clcee")
