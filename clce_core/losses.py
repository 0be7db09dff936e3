"""The CLCE loss family: LACLN (paper Eq. 3), CLCE (Eq. 1) and the baselines the paper compares with.

Conventions (CONTRACTS.md):
    * ``embeddings`` is ``(M, D)``: the two augmented views of B images stacked as rows,
      ``[view 1 of images 0..B-1; view 2 of images 0..B-1]``, so ``M = 2B``. They are the encoder's
      pooled features; every contrastive loss L2-normalises them itself.
    * ``labels`` is ``(M,)``: one class index per row (the image labels repeated).
    * ``logits`` is ``(M, C)`` (or ``(B, C)`` for the one-view ``ce`` entry).
    * s_ij = x_i · x_j / τ on the normalised rows x. Positives P_i: rows with i's label, i excluded;
      negatives N_i: rows with another label.

The contrastive terms are computed by one ``torch.autograd.Function`` with an analytic backward:
forward is one ``M×M×D`` matmul plus a few ``M×M`` elementwise passes, backward one more matmul.
That is about 2× faster and lighter than letting autograd trace the same formula. All sums of
exponentials are taken in log space relative to a per-row maximum, so no term overflows for τ down
to 0.05 whatever the input dtype (bfloat16/float16 inputs are computed in float32; float64 stays
float64, which the tests use against naive loops).

Registry entries share one call, ``loss(embeddings, logits, labels) -> LossOutput``; see
:func:`create_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LossOutput",
    "lacln_loss",
    "supcon_loss",
    "hscl_loss",
    "clce_loss",
    "ce_supcon_loss",
    "create_loss",
    "list_losses",
    "CLCELoss",
    "CESupConLoss",
    "SupConLoss",
    "HSCLLoss",
    "CELoss",
]

_NORM_EPS = 1e-12

# A kernel maps the similarity matrix S (M, M) — its diagonal already set to −inf — and the
# same-label mask (M, M, diagonal included) to the scalar loss and dL/dS (None when no gradient
# is needed). Kernels may overwrite S.
Kernel = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------
def _shifted_exp(sim: Tensor) -> tuple[Tensor, Tensor]:
    """``e_ij = exp(s_ij − m_i)`` with m_i = max_{j≠i} s_ij, computed in place over ``sim``.

    Every sum of exponentials below is taken relative to this one row maximum: with cosine
    similarities, s_ij − m_i ≥ −2/τ, so e ≥ e^{−2/τ} and e² ≥ e^{−4/τ} stay normal float32
    numbers for τ ≥ 0.05 and nothing can overflow (e ≤ 1).

    Args:
        sim: ``(M, M)`` similarities with the diagonal at −inf; overwritten.

    Returns:
        ``e`` ``(M, M)`` (0 on the diagonal) and ``m`` ``(M,)``.
    """
    m = sim.amax(dim=1)  # (M,)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # M = 1: no other row
    return sim.sub_(m.unsqueeze(1)).exp_(), m


def _safe(x: Tensor) -> Tensor:
    """Replace zeros by ones so empty rows divide or log harmlessly (their terms are masked out)."""
    return torch.where(x > 0, x, torch.ones_like(x))


def _valid_mean(row_loss: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``row_loss`` over ``valid`` rows (0 when none), and each row's weight in that mean."""
    count = valid.sum()
    weight = valid.to(row_loss.dtype) / count.clamp_min(1).to(row_loss.dtype)  # (M,)
    loss = (torch.where(valid, row_loss, torch.zeros_like(row_loss)) * weight).sum()
    return loss, weight


def _col(x: Tensor) -> Tensor:
    return x.unsqueeze(1)


# ----------------------------------------------------------------------------------------------
# Kernels: pure math on the similarity matrix, with the analytic gradient
# ----------------------------------------------------------------------------------------------
def _lacln_kernel(hard_negatives: bool, detach_weights: bool) -> Kernel:
    """LACLN, paper Eq. 3, as PAPER.md reads it.

    L_i = log|P_i| − A_i + logaddexp(A_i, B_i),  A_i = log Σ_{p∈P_i} e^{s_ip},
    B_i = log W_i = log|N_i| + log Σ_{k∈N_i} e^{2 s_ik} − log Σ_{k∈N_i} e^{s_ik}   (hard negatives)
    B_i = log Σ_{k∈N_i} e^{s_ik}                                                   (the "CL" ablation)
    averaged over anchors with ≥ 1 positive and ≥ 1 negative.
    """

    def kernel(sim: Tensor, same: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        n_same = same.sum(1)
        n_pos = (n_same - 1).to(sim.dtype)  # (M,)
        n_neg = (same.shape[1] - n_same).to(sim.dtype)
        valid = (n_pos > 0) & (n_neg > 0)

        e, m = _shifted_exp(sim)  # (M, M)
        e_pos = torch.where(same, e, 0.0)  # (M, M): P_i (the diagonal of e is 0)
        e_neg = e.sub_(e_pos)  # (M, M): N_i, exact since each entry is all-or-nothing
        z_pos, z1 = e_pos.sum(1), e_neg.sum(1)
        a = m + torch.log(_safe(z_pos))  # A_i
        lse1 = m + torch.log(_safe(z1))
        if hard_negatives:
            z2 = torch.linalg.vector_norm(e_neg, dim=1).square()  # Σ_N e^{2(s − m)}, no (M, M) temporary
            b = torch.log(_safe(n_neg)) + 2 * m + torch.log(_safe(z2)) - lse1
        else:
            b = lse1

        row = torch.log(_safe(n_pos)) - a + torch.logaddexp(a, b)  # (M,)
        loss, weight = _valid_mean(row, valid)
        if not need_grad:
            return loss, None

        # dL_i/dA_i = σ_i − 1 and dL_i/dB_i = 1 − σ_i with σ_i = sigmoid(A_i − B_i).
        coef = weight * torch.sigmoid(torch.where(valid, b - a, torch.zeros_like(a)))  # (M,) = w(1−σ)
        # dA_i/ds_ij = softmax over P_i; dB_i/ds_ij = 2·softmax(2s)_N − softmax(s)_N (weights not
        # detached), softmax(2s)_N (weights detached), softmax(s)_N (no hard-negative weighting).
        grad = e_pos.mul_(_col(-coef / _safe(z_pos)))
        if not hard_negatives:
            return loss, grad.addcmul_(e_neg, _col(coef / _safe(z1)))
        # c2·e² − c1·e on N_i, in place: scale e by √c2, add its square, then add it times −c1/√c2.
        root_c2 = torch.sqrt((1.0 if detach_weights else 2.0) * coef / _safe(z2))  # (M,)
        e_neg.mul_(_col(root_c2))
        grad.addcmul_(e_neg, e_neg)
        if not detach_weights:
            grad.addcmul_(e_neg, _col(torch.where(root_c2 > 0, -coef / _safe(z1) / _safe(root_c2), 0.0)))
        return loss, grad

    return kernel


def _supcon_kernel(sim: Tensor, same: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """SupCon L_out (Khosla et al. 2020, Eq. 2), without the τ/τ_base factor.

    ℓ_i = −(1/|P_i|) Σ_{p∈P_i} [ s_ip − log Σ_{j≠i} e^{s_ij} ], averaged over anchors with ≥ 1 positive.
    """
    pos = same.clone().fill_diagonal_(False)  # (M, M) P_i
    n_pos = pos.sum(1).to(sim.dtype)
    valid = n_pos > 0
    sum_pos = torch.where(pos, sim, torch.zeros_like(sim)).sum(1)
    e, m = _shifted_exp(sim)  # (M, M)
    z = e.sum(1)
    lse = m + torch.log(_safe(z))  # (M,)
    loss, weight = _valid_mean(lse - sum_pos / _safe(n_pos), valid)
    if not need_grad:
        return loss, None
    return loss, e.mul_(_col(weight / _safe(z))).addcmul_(pos, _col(-weight / _safe(n_pos)))


def _hscl_kernel(beta: float) -> Kernel:
    """H-SCL (Jiang et al. 2022) as their public code computes it (CONTRACTS.md).

    ℓ_ip = −log( e^{s_ip} / (e^{s_ip} + R_i) ) = softplus(log R_i − s_ip),
    log R_i = log(M − 2) + log Σ_{k∈N_i} e^{(1+β)s_ik} − log Σ_{k∈N_i} e^{β s_ik},
    averaged over all pairs (i, p ∈ P_i) whose anchor has ≥ 1 negative.
    """

    def kernel(sim: Tensor, same: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        m_rows = sim.shape[0]
        has_neg = same.sum(1) < m_rows
        pos = same.clone().fill_diagonal_(False)
        pair_valid = pos & _col(has_neg)  # (M, M)
        pair_w = pair_valid.to(sim.dtype) / pair_valid.sum().clamp_min(1).to(sim.dtype)
        s_pos = torch.where(pos, sim, torch.zeros_like(sim))  # s_ip on P_i, 0 elsewhere

        e, m = _shifted_exp(sim)  # (M, M)
        e_neg = e.masked_fill_(same, 0.0)  # e^{s − m} on N_i
        e_lo = e_neg.pow(beta) if beta > 0 else (~same).to(sim.dtype)  # e^{β(s − m)} on N_i
        e_hi = e_lo * e_neg  # e^{(1+β)(s − m)}
        z_hi, z_lo = e_hi.sum(1), e_lo.sum(1)
        log_r = math.log(max(m_rows - 2, 1)) + m + torch.log(_safe(z_hi)) - torch.log(_safe(z_lo))
        u = _col(log_r) - s_pos  # (M, M), used on pairs only
        loss = (F.softplus(u) * pair_w).sum()
        if not need_grad:
            return loss, None
        sig = torch.sigmoid(u).mul_(pair_w)  # dℓ/dlog R_i for each pair, weighted
        c = sig.sum(1)  # (M,)
        grad = e_hi.mul_(_col((1.0 + beta) * c / _safe(z_hi))).addcmul_(e_lo, _col(-beta * c / _safe(z_lo)))
        return loss, grad.sub_(sig)

    return kernel


class _SimilarityLoss(torch.autograd.Function):
    """L2-normalise, S = X Xᵀ / τ, apply a kernel; backward by the chain rule through S and the norm."""

    @staticmethod
    def forward(ctx, embeddings: Tensor, labels: Tensor, temperature: float, kernel: Kernel) -> Tensor:  # type: ignore[override]
        with torch.autocast(embeddings.device.type, enabled=False):  # the loss is never computed in half
            return _SimilarityLoss._forward(ctx, embeddings, labels, temperature, kernel)

    @staticmethod
    def _forward(ctx, embeddings: Tensor, labels: Tensor, temperature: float, kernel: Kernel) -> Tensor:
        compute_dtype = torch.promote_types(embeddings.dtype, torch.float32)
        e = embeddings.to(compute_dtype)  # (M, D)
        norm = e.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)  # (M, 1)
        x = e / norm  # (M, D)
        sim = (x @ x.T).div_(temperature).fill_diagonal_(-math.inf)  # (M, M); j = i is never a pair
        same = labels.view(-1, 1) == labels.view(1, -1)  # (M, M)
        need_grad = ctx.needs_input_grad[0]
        loss, grad_sim = kernel(sim, same, need_grad)
        if need_grad:
            ctx.save_for_backward(x, norm, grad_sim)
            ctx.temperature = temperature
            ctx.input_dtype = embeddings.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, norm, grad_sim = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            scale = grad_out.to(x.dtype) / ctx.temperature
            # S = X Xᵀ/τ  ⇒  dL/dX = (G + Gᵀ) X / τ
            grad_x = (grad_sim + grad_sim.T).mm(x).mul_(scale)  # (M, D)
            # x = e/‖e‖  ⇒  dL/de = (dx − x (x·dx)) / ‖e‖
            grad_e = (grad_x - x * (x * grad_x).sum(1, keepdim=True)) / norm
        return grad_e.to(ctx.input_dtype), None, None, None


def _check_inputs(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (M, D), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be (M,) with M = {embeddings.shape[0]} rows of embeddings, "
            f"got shape {tuple(labels.shape)}"
        )
    if embeddings.is_floating_point() is False:
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


# ----------------------------------------------------------------------------------------------
# Functional losses
# ----------------------------------------------------------------------------------------------
def lacln_loss(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    hard_negatives: bool = True,
    detach_weights: bool = False,
) -> Tensor:
    """Label-aware contrastive loss with hard-negative mining, LACLN (paper Eq. 3).

    For anchor i, with s_ij = x_i·x_j/τ on L2-normalised rows,
    W_i = |N_i| Σ_{k∈N_i} e^{2 s_ik} / Σ_{k∈N_i} e^{s_ik} and
    L_i = −log( (1/|P_i|) Σ_{p∈P_i} e^{s_ip} / (Σ_{p∈P_i} e^{s_ip} + W_i) ), averaged over anchors
    with at least one positive and one negative (0 when there are none).

    Args:
        embeddings: ``(M, D)`` encoder outputs, views stacked as rows; normalised inside.
        labels: ``(M,)`` integer labels.
        temperature: τ (paper: 0.5).
        hard_negatives: ``False`` sets every negative's weight to 1 (W_i = Σ e^{s_ik}): the paper's
            "CL" ablation, equal to SupCon's L_in form.
        detach_weights: treat the weights |N_i| e^{s_ik} / Σ e^{s_ik} as constants in the backward
            pass (the value is unchanged).

    Returns:
        Scalar loss, float32 (float64 for float64 input).
    """
    _check_inputs(embeddings, labels)
    _check_temperature(temperature)
    return _SimilarityLoss.apply(
        embeddings, labels, temperature, _lacln_kernel(hard_negatives, detach_weights)
    )


def supcon_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.5) -> Tensor:
    """Supervised contrastive loss, L_out form (Khosla et al. 2020, Eq. 2), no τ/τ_base factor.

    Args:
        embeddings: ``(M, D)``, views stacked as rows; normalised inside.
        labels: ``(M,)`` integer labels.
        temperature: τ.

    Returns:
        Scalar: mean over anchors with ≥ 1 positive of −(1/|P_i|) Σ_p log softmax_{j≠i}(s_i·)_p.
    """
    _check_inputs(embeddings, labels)
    _check_temperature(temperature)
    return _SimilarityLoss.apply(embeddings, labels, temperature, _supcon_kernel)


def hscl_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.5, beta: float = 1.0) -> Tensor:
    """H-SCL, supervised contrastive learning with hard negatives (Jiang et al. 2022), as in their code.

    ℓ_ip = −log( e^{s_ip} / (e^{s_ip} + (M−2) Σ_{k∈N_i} e^{(1+β)s_ik} / Σ_{k∈N_i} e^{β s_ik}) ),
    averaged over all positive pairs (i, p) whose anchor has a negative.

    Args:
        embeddings: ``(M, D)``, views stacked as rows; normalised inside.
        labels: ``(M,)`` integer labels.
        temperature: τ.
        beta: hardness concentration β ≥ 0 (0 gives uniform negative weights).

    Returns:
        Scalar loss.
    """
    _check_inputs(embeddings, labels)
    _check_temperature(temperature)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return _SimilarityLoss.apply(embeddings, labels, temperature, _hscl_kernel(beta))


@dataclass
class LossOutput:
    """What every registry entry returns.

    Attributes:
        total: scalar tensor to backpropagate.
        parts: floats for logging: ``ce`` and ``contrastive`` (unweighted terms).
    """

    total: Tensor
    parts: dict[str, float] = field(default_factory=dict)


def _at_least_float32(t: Tensor) -> Tensor:
    """Half-precision logits are upcast for the CE; float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _check_lam(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")


def _fuse(ce: Tensor, contrastive: Tensor, lam: float) -> LossOutput:
    """(1 − λ)·CE + λ·contrastive (paper Eq. 1)."""
    total = (1.0 - lam) * ce + lam * contrastive
    return LossOutput(total, {"ce": float(ce.detach()), "contrastive": float(contrastive.detach())})


def clce_loss(
    embeddings: Tensor,
    logits: Tensor,
    labels: Tensor,
    lam: float = 0.9,
    temperature: float = 0.5,
    hard_negatives: bool = True,
    detach_weights: bool = False,
) -> LossOutput:
    """CLCE = (1 − λ)·CE + λ·LACLN (paper Eq. 1), CE over the logits of both views.

    Args:
        embeddings: ``(M, D)`` encoder outputs, views stacked as rows.
        logits: ``(M, C)`` head outputs for the same rows.
        labels: ``(M,)`` integer labels.
        lam: λ (paper: 0.9). λ = 0 is CE, λ = 1 is LACLN.
        temperature: τ (paper: 0.5).
        hard_negatives: see :func:`lacln_loss`; ``False`` is the registry's ``clce-nohnm``.
        detach_weights: see :func:`lacln_loss`.

    Returns:
        :class:`LossOutput` with parts ``ce`` and ``contrastive``.
    """
    _check_lam(lam)
    ce = F.cross_entropy(_at_least_float32(logits), labels)
    contrastive = lacln_loss(embeddings, labels, temperature, hard_negatives, detach_weights)
    return _fuse(ce, contrastive, lam)


def ce_supcon_loss(
    embeddings: Tensor, logits: Tensor, labels: Tensor, lam: float = 0.9, temperature: float = 0.5
) -> LossOutput:
    """The paper's CE+SupCon baseline: (1 − λ)·CE + λ·SupCon (L_out), with CLCE's λ and τ.

    Args:
        embeddings: ``(M, D)``; logits: ``(M, C)``; labels: ``(M,)``.
        lam: λ. temperature: τ.
    """
    _check_lam(lam)
    ce = F.cross_entropy(_at_least_float32(logits), labels)
    return _fuse(ce, supcon_loss(embeddings, labels, temperature), lam)


# ----------------------------------------------------------------------------------------------
# Modules and the registry
# ----------------------------------------------------------------------------------------------
class _RegistryLoss(nn.Module):
    """Common face of the registry entries.

    Attributes:
        views: augmented views per image the entry needs (1 for ``ce``, else 2).
        probe_only: the head must be fed DETACHED embeddings (CE acts as an on-line linear probe
            and the encoder sees only the contrastive gradient). The training loop reads this.
    """

    views: int = 2
    probe_only: bool = False

    def forward(self, embeddings: Tensor, logits: Tensor, labels: Tensor) -> LossOutput:  # pragma: no cover
        raise NotImplementedError


class CELoss(_RegistryLoss):
    """Plain cross-entropy on one view (the paper's CE baseline)."""

    views = 1

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, embeddings: Tensor, logits: Tensor, labels: Tensor) -> LossOutput:
        ce = F.cross_entropy(_at_least_float32(logits), labels, label_smoothing=self.label_smoothing)
        return LossOutput(ce, {"ce": float(ce.detach()), "contrastive": 0.0})


class CLCELoss(_RegistryLoss):
    """CLCE (Eq. 1); ``hard_negatives=False`` is ``clce-nohnm``."""

    def __init__(
        self,
        lam: float = 0.9,
        temperature: float = 0.5,
        hard_negatives: bool = True,
        detach_weights: bool = False,
    ) -> None:
        super().__init__()
        _check_lam(lam)
        _check_temperature(temperature)
        self.lam, self.temperature = lam, temperature
        self.hard_negatives, self.detach_weights = hard_negatives, detach_weights

    def forward(self, embeddings: Tensor, logits: Tensor, labels: Tensor) -> LossOutput:
        return clce_loss(
            embeddings, logits, labels, self.lam, self.temperature, self.hard_negatives, self.detach_weights
        )


class CESupConLoss(_RegistryLoss):
    """(1 − λ)·CE + λ·SupCon, the paper's CE+SupCon row."""

    def __init__(self, lam: float = 0.9, temperature: float = 0.5) -> None:
        super().__init__()
        _check_lam(lam)
        _check_temperature(temperature)
        self.lam, self.temperature = lam, temperature

    def forward(self, embeddings: Tensor, logits: Tensor, labels: Tensor) -> LossOutput:
        return ce_supcon_loss(embeddings, logits, labels, self.lam, self.temperature)


class _ProbedContrastiveLoss(_RegistryLoss):
    """A pure contrastive loss plus CE on detached embeddings, so top-1 is defined (CONTRACTS.md)."""

    probe_only = True

    def _contrastive(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, embeddings: Tensor, logits: Tensor, labels: Tensor) -> LossOutput:
        contrastive = self._contrastive(embeddings, labels)
        ce = F.cross_entropy(_at_least_float32(logits), labels)
        return LossOutput(
            contrastive + ce, {"ce": float(ce.detach()), "contrastive": float(contrastive.detach())}
        )


class SupConLoss(_ProbedContrastiveLoss):
    """SupCon L_out alone (the head trains as a linear probe)."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def _contrastive(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return supcon_loss(embeddings, labels, self.temperature)


class HSCLLoss(_ProbedContrastiveLoss):
    """H-SCL alone (the head trains as a linear probe)."""

    def __init__(self, temperature: float = 0.5, beta: float = 1.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.beta = temperature, beta

    def _contrastive(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return hscl_loss(embeddings, labels, self.temperature, self.beta)


# name -> (factory, keyword arguments it accepts from the common set {lam, temperature, beta})
_REGISTRY: dict[str, tuple[Callable[..., _RegistryLoss], tuple[str, ...]]] = {
    "ce": (CELoss, ()),
    "supcon": (SupConLoss, ("temperature",)),
    "ce+supcon": (CESupConLoss, ("lam", "temperature")),
    "hscl": (HSCLLoss, ("temperature", "beta")),
    "clce": (CLCELoss, ("lam", "temperature", "detach_weights")),
    "clce-nohnm": (lambda **kw: CLCELoss(hard_negatives=False, **kw), ("lam", "temperature")),
}


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`, in registry order."""
    return list(_REGISTRY)


def create_loss(name: str, **kwargs: float | bool) -> _RegistryLoss:
    """Build a registry entry by name.

    Common keyword arguments (``lam``, ``temperature``, ``beta``, ``detach_weights``) may be passed
    to every entry; each takes those it uses and ignores the rest, so a CLI can pass its flags as is.

    Args:
        name: one of :func:`list_losses`.

    Returns:
        An ``nn.Module`` called as ``loss(embeddings, logits, labels) -> LossOutput``, with
        attributes ``views`` (1 or 2) and ``probe_only``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or an out-of-range value.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(_REGISTRY)}")
    factory, accepted = _REGISTRY[name]
    return factory(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})
