"""The contrastive terms' engine: kernels on the similarity matrix and one autograd Function.

:class:`SimilarityLoss` L2-normalises the ``(M, D)`` embeddings, forms S = X Xᵀ / τ with the diagonal
at −inf, and hands S and the same-label mask to a *kernel*, which returns the scalar loss and dL/dS
in closed form; the backward pass is then one more ``M×M×D`` matmul through S and the normalisation.
That is about 2× faster and lighter than letting autograd trace the same formula. Every sum of
exponentials is taken relative to a per-row maximum, so nothing overflows for τ down to 0.05 in any
input dtype (half inputs are computed in float32; float64 stays float64 for the tests' naive loops).

The kernels: :func:`lacln_kernel` (paper Eq. 3, with or without hard-negative weights),
:func:`supcon_kernel` (SupCon L_out), :func:`hscl_kernel` (H-SCL). The public losses built on them
are in :mod:`clce_core.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Kernel",
    "SimilarityLoss",
    "check_inputs",
    "check_temperature",
    "hscl_kernel",
    "lacln_kernel",
    "supcon_kernel",
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
def lacln_kernel(hard_negatives: bool, detach_weights: bool) -> Kernel:
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


def supcon_kernel(sim: Tensor, same: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
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


def hscl_kernel(beta: float) -> Kernel:
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


class SimilarityLoss(torch.autograd.Function):
    """``SimilarityLoss.apply(embeddings (M, D), labels (M,), τ, kernel)`` -> scalar. L2-normalise, S = X Xᵀ / τ, apply a kernel; backward by the chain rule through S and the norm."""

    @staticmethod
    def forward(ctx, embeddings: Tensor, labels: Tensor, temperature: float, kernel: Kernel) -> Tensor:  # type: ignore[override]
        with torch.autocast(embeddings.device.type, enabled=False):  # the loss is never computed in half
            return SimilarityLoss._forward(ctx, embeddings, labels, temperature, kernel)

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


def check_inputs(embeddings: Tensor, labels: Tensor) -> None:
    """``embeddings`` must be floating ``(M, D)`` and ``labels`` ``(M,)``; else ValueError."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (M, D), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be (M,) with M = {embeddings.shape[0]} rows of embeddings, "
            f"got shape {tuple(labels.shape)}"
        )
    if embeddings.is_floating_point() is False:
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")


def check_temperature(temperature: float) -> None:
    """τ must be > 0; else ValueError."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
