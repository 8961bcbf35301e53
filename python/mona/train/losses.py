"""Training losses: supervised Dice + CE, the confidence-weighted pseudo-label CE, and the switch
between the fused ops and their plain-PyTorch references (config ``impl``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean over classes of ``1 - (2 sum(p*g) + eps) / (sum(p^2) + sum(g) + eps)`` on softmax probabilities
    (SSL4MIS DiceLoss). logits ``[B, C, H, W]``, target int ``[B, H, W]``; returns a scalar."""
    c = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1)
    g = F.one_hot(target.long(), c).permute(0, 3, 1, 2).float()
    inter = (p * g).sum(dim=(0, 2, 3))
    denom = (p * p).sum(dim=(0, 2, 3)) + g.sum(dim=(0, 2, 3))
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def supervised_loss(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.5, ce_weight: float = 0.5
) -> tuple[torch.Tensor, dict[str, float]]:
    """``dice_weight * Dice + ce_weight * CE``. Returns (loss, {"dice": .., "ce": ..})."""
    ce = F.cross_entropy(logits.float(), target.long())
    dl = soft_dice_loss(logits, target)
    return dice_weight * dl + ce_weight * ce, {"ce": float(ce.detach()), "dice_loss": float(dl.detach())}


def confidence_weighted_ce(
    logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor, threshold: float | torch.Tensor
) -> torch.Tensor:
    """L_unsup: cross-entropy against teacher pseudo-labels, each image weighted by its fraction of
    pixels with teacher confidence >= ``threshold`` (ReCo / MONA practice).

    logits ``[B, C, H, W]``, pseudo int ``[B, H, W]``, confidence ``[B, H, W]``, ``threshold`` a float or a
    per-pixel ``[B, H, W]`` map (class-wise thresholds); returns a scalar ``mean_b(w_b * mean_pixels(CE_b))``.
    """
    ce = F.cross_entropy(logits.float(), pseudo.long(), reduction="none")  # [B, H, W]
    weight = (confidence >= threshold).float().mean(dim=(1, 2))  # [B]
    return (ce.mean(dim=(1, 2)) * weight).mean()


def pixel_masked_ce(
    logits: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor, threshold: float | torch.Tensor
) -> torch.Tensor:
    """L_unsup with a per-pixel mask (FixMatch-style): cross-entropy against the teacher pseudo-labels on
    the pixels with confidence >= ``threshold``, averaged over all pixels (a batch with few confident
    pixels gets a small loss, not a loud one). Shapes as :func:`confidence_weighted_ce`."""
    ce = F.cross_entropy(logits.float(), pseudo.long(), reduction="none")  # [B, H, W]
    return (ce * (confidence >= threshold).float()).mean()


@dataclass(frozen=True)
class LossImpl:
    """The four MONA losses from one implementation: ``ext`` (the fused ``mona_ext`` ops) or
    ``reference`` (plain PyTorch, ``mona_ext.reference``); same arguments, same semantics.

    contrast(features, labels, num_classes, *, valid, prob, strong_threshold, temperature, num_queries,
    num_negatives, key_features, bank, negatives, generator); pixel_kl(a, b, mask, symmetric);
    similarity_kl(student, teacher, queue, tau_student, tau_teacher); knn(student, teacher, queue, k).
    """

    name: str
    contrast: Callable[..., torch.Tensor]
    pixel_kl: Callable[..., torch.Tensor]
    similarity_kl: Callable[..., torch.Tensor]
    knn: Callable[..., torch.Tensor]


def loss_impl(name: str) -> LossImpl:
    """``ext`` or ``reference`` (config key ``impl``)."""
    import mona_ext
    from mona_ext import reference

    # both contrast functions take the same keywords and a ClassMemoryBank as ``bank``
    if name == "ext":
        return LossImpl("ext", mona_ext.contrast_loss, mona_ext.pixel_kl, mona_ext.similarity_kl, mona_ext.knn_loss)
    if name == "reference":
        return LossImpl(
            "reference",
            reference.contrast_loss_vectorised,
            reference.pixel_kl,
            reference.similarity_kl,
            reference.knn_loss,
        )
    raise ValueError(f"impl must be 'ext' or 'reference', got {name!r}")
