"""The CLCE loss family: LACLN (paper Eq. 3), CLCE (Eq. 1) and the baselines the paper compares with.

Conventions (CONTRACTS.md):
    * ``embeddings`` is ``(M, D)``: the two augmented views of B images stacked as rows,
      ``[view 1 of images 0..B-1; view 2 of images 0..B-1]``, so ``M = 2B``. They are the encoder's
      pooled features; every contrastive loss L2-normalises them itself.
    * ``labels`` is ``(M,)``: one class index per row (the image labels repeated).
    * ``logits`` is ``(M, C)`` (or ``(B, C)`` for the one-view ``ce`` entry).
    * s_ij = x_i · x_j / τ on the normalised rows x. Positives P_i: rows with i's label, i excluded;
      negatives N_i: rows with another label.

The contrastive terms are computed by one ``torch.autograd.Function`` with an analytic backward
(:mod:`clce_core.similarity_kernels`): forward is one ``M×M×D`` matmul plus a few ``M×M``
elementwise passes, backward one more matmul; stable for τ down to 0.05 in any input dtype.

Registry entries share one call, ``loss(embeddings, logits, labels) -> LossOutput``; see
:func:`create_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clce_core.similarity_kernels import (
    SimilarityLoss,
    check_inputs,
    check_temperature,
    hscl_kernel,
    lacln_kernel,
    supcon_kernel,
)

__all__ = [
    "LossOutput",
    "lacln_loss",
    "supcon_loss",
    "hscl_loss",
    "clce_loss",
    "ce_supcon_loss",
    "create_loss",
    "list_losses",
    "loss_options",
    "LossEntry",
    "CLCELoss",
    "CESupConLoss",
    "SupConLoss",
    "HSCLLoss",
    "CELoss",
]


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
    check_inputs(embeddings, labels)
    check_temperature(temperature)
    return SimilarityLoss.apply(embeddings, labels, temperature, lacln_kernel(hard_negatives, detach_weights))


def supcon_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.5) -> Tensor:
    """Supervised contrastive loss, L_out form (Khosla et al. 2020, Eq. 2), no τ/τ_base factor.

    Args:
        embeddings: ``(M, D)``, views stacked as rows; normalised inside.
        labels: ``(M,)`` integer labels.
        temperature: τ.

    Returns:
        Scalar: mean over anchors with ≥ 1 positive of −(1/|P_i|) Σ_p log softmax_{j≠i}(s_i·)_p.
    """
    check_inputs(embeddings, labels)
    check_temperature(temperature)
    return SimilarityLoss.apply(embeddings, labels, temperature, supcon_kernel)


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
    check_inputs(embeddings, labels)
    check_temperature(temperature)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return SimilarityLoss.apply(embeddings, labels, temperature, hscl_kernel(beta))


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
        check_temperature(temperature)
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
        check_temperature(temperature)
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
        check_temperature(temperature)
        self.temperature = temperature

    def _contrastive(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return supcon_loss(embeddings, labels, self.temperature)


class HSCLLoss(_ProbedContrastiveLoss):
    """H-SCL alone (the head trains as a linear probe)."""

    def __init__(self, temperature: float = 0.5, beta: float = 1.0) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature, self.beta = temperature, beta

    def _contrastive(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return hscl_loss(embeddings, labels, self.temperature, self.beta)


@dataclass(frozen=True)
class LossEntry:
    """A registry entry: how to build the loss, and the keyword arguments it takes.

    Attributes:
        factory: builds the ``nn.Module``; called with a subset of ``options``.
        options: the keyword arguments :func:`create_loss` accepts for this entry.
    """

    factory: Callable[..., _RegistryLoss]
    options: tuple[str, ...]


_REGISTRY: dict[str, LossEntry] = {
    "ce": LossEntry(CELoss, ()),
    "supcon": LossEntry(SupConLoss, ("temperature",)),
    "ce+supcon": LossEntry(CESupConLoss, ("lam", "temperature")),
    "hscl": LossEntry(HSCLLoss, ("temperature", "beta")),
    "clce": LossEntry(CLCELoss, ("lam", "temperature", "detach_weights")),
    "clce-nohnm": LossEntry(lambda **kw: CLCELoss(hard_negatives=False, **kw), ("lam", "temperature")),
}


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`, in registry order."""
    return list(_REGISTRY)


def _entry(name: str) -> LossEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def loss_options(name: str) -> tuple[str, ...]:
    """The keyword arguments :func:`create_loss` accepts for ``name`` (e.g. ``clce``: lam, temperature,
    detach_weights), so a caller holding every flag passes only the chosen entry's.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return _entry(name).options


def create_loss(name: str, **kwargs: float | bool | None) -> _RegistryLoss:
    """Build a registry entry by name, as timm's ``create_model`` does: unknown keywords are an error.

    Args:
        name: one of :func:`list_losses`.
        **kwargs: options of that entry (:func:`loss_options`); a value of None keeps the entry's default.

    Returns:
        An ``nn.Module`` called as ``loss(embeddings, logits, labels) -> LossOutput``, with
        attributes ``views`` (1 or 2) and ``probe_only``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or an out-of-range value.
        TypeError: a keyword the entry does not take (the message names it and the accepted ones).
    """
    entry = _entry(name)
    unknown = sorted(set(kwargs) - set(entry.options))
    if unknown:
        accepted = ", ".join(entry.options) or "no options"
        raise TypeError(
            f"create_loss({name!r}) got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"{name!r} accepts: {accepted}"
        )
    return entry.factory(**{k: v for k, v in kwargs.items() if v is not None})
