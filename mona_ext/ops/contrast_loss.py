"""``torch.ops.mona.contrast_loss``: the anatomical contrastive (ACF) loss, and the ReCo drop-in ``reco_loss``.

A composite of four ops, each usable (and tested) on its own:

1. ``class_pools``       valid pixels grouped by class, hard | easy (counting sort, indices only);
2. ``class_mean``        prototypes of the key features;
3. ``sample_negatives``  queries and negative keys as indices (adaptive softmax class sampling);
4. ``contrast_infonce``  the fused InfoNCE that gathers queries/keys by index, never building
                          the Q x (M+1) x D key tensor, with a fused backward to the query pixels.

Being a composite, its schema and its implementation are both here, in Python (it has no C++):
autograd, fake tensors and both devices come from the four parts' kernels.
Reference: ``mona_ext.reference.contrast_loss_vectorised``; tests: ``tests/ops/test_contrast_loss.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ._common import acc_dtype
from .contrast_infonce import wants_grad
from .sample_negatives import NEGATIVE_SOURCES

if TYPE_CHECKING:
    from ..banks import ClassMemoryBank

# Kept alive at module level: the library object holds the registration.
_lib = torch.library.Library("mona", "FRAGMENT")
_lib.define(
    "contrast_loss(Tensor features, Tensor labels, int num_classes, Tensor? valid=None, Tensor? prob=None,"
    " float strong_threshold=0.97, float temperature=0.5, int num_queries=256, int num_negatives=512,"
    ' Tensor? key_features=None, Tensor? bank=None, Tensor? bank_fill=None, str negatives="batch",'
    ' str query_mode="hard", int ignore_index=-1, Generator? generator=None) -> Tensor'
)


def contrast_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    valid: torch.Tensor | None = None,
    prob: torch.Tensor | None = None,
    strong_threshold: float = 0.97,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    key_features: torch.Tensor | None = None,
    bank: torch.Tensor | ClassMemoryBank | None = None,
    bank_fill: torch.Tensor | None = None,
    negatives: str = "batch",
    query_mode: str = "hard",
    ignore_index: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The anatomical contrastive (ACF / ReCo) loss of MONA, fused.

    For each class c present in the batch: the positive key is the mean key feature of its valid
    pixels; ``num_queries`` query pixels are drawn (``query_mode``: ``"hard"`` = pixels with
    ``prob[c] < strong_threshold`` as in ReCo, ``"all"``, or ``"balanced"`` half hard / half easy);
    each query gets ``num_negatives`` keys: a class v != c with probability
    ``softmax_v(cos(proto_c, proto_v) / temperature)``, then a uniform key of class v from the batch,
    the memory bank or both (``negatives``). Loss per query = cross-entropy of
    ``cos(query, [proto_c | negatives]) / temperature`` with target 0; mean over queries, then over
    present classes (a present class without queries adds 0 but counts). Fewer than two classes
    with keys -> 0 (with a gradient path). Keys carry no gradient.

    Args:
        features: ``[B, D, H, W]`` student embeddings (channels-last is the fast path) or ``[N, D]``.
        labels: ``[B, H, W]`` / ``[N]`` integer labels or pseudo-labels, ``ignore_index`` to skip.
        valid: optional mask (nonzero = pixel takes part), e.g. teacher confidence > 0.7.
        prob: optional ``[B, C, H, W]`` class probabilities for the easy/hard split (else all hard).
        key_features: optional teacher map for prototypes and negatives (default: ``features``, detached).
        bank, bank_fill: a ``mona_ext.ClassMemoryBank`` (then ``bank_fill`` is taken from it), or its
            storage ``[C, K, D]`` and per-class fill ``[C]`` (int64); used when ``negatives`` is
            ``"bank"`` or ``"both"``.
        generator: a ``torch.Generator`` on the features' device. Same state -> same queries and
            negatives on a device; the loss and its gradient are then bitwise the same on the CPU,
            and on CUDA under ``torch.use_deterministic_algorithms(True)`` (otherwise the class
            means are summed with atomics: the last bits may differ between runs).

    Returns:
        A 0-dim float32 tensor (float64 for float64 features).
    """
    if hasattr(bank, "storage") and hasattr(bank, "fill"):  # a ClassMemoryBank
        if bank_fill is not None:
            raise ValueError("contrast_loss: pass either a ClassMemoryBank or (bank tensor, bank_fill), not both")
        bank, bank_fill = bank.storage, bank.fill
    return torch.ops.mona.contrast_loss(
        features,
        labels,
        num_classes,
        valid,
        prob,
        strong_threshold,
        temperature,
        num_queries,
        num_negatives,
        key_features,
        bank,
        bank_fill,
        negatives,
        query_mode,
        ignore_index,
        generator,
    )


def reco_loss(
    rep: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    prob: torch.Tensor,
    strong_threshold: float = 1.0,
    temp: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Drop-in replacement of ReCo's ``compute_reco_loss`` (same arguments, same semantics).

    Args:
        rep: ``[B, D, H, W]`` representation.
        label: ``[B, C, H, W]`` one-hot labels (a pixel with no class set is ignored).
        mask: ``[B, H, W]`` or ``[B, 1, H, W]`` validity (nonzero = valid).
        prob: ``[B, C, H, W]`` class probabilities.

    Returns the same loss as ReCo (in distribution), on ``rep``'s device, with a gradient to ``rep``.
    """
    if label.dim() != 4 or label.shape[0] != rep.shape[0] or label.shape[2:] != rep.shape[2:]:
        raise ValueError(
            f"reco_loss: label must be one-hot [B, C, H, W] matching rep {tuple(rep.shape)}, got {tuple(label.shape)}"
        )
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"reco_loss: mask must be [B, H, W] or [B, 1, H, W], got {tuple(mask.shape)}")
        mask = mask[:, 0]
    labels = torch.where(label.sum(1) > 0, label.argmax(1), torch.full_like(label[:, 0], -1, dtype=torch.long))
    return contrast_loss(
        rep,
        labels,
        label.shape[1],
        valid=mask,
        prob=prob,
        strong_threshold=strong_threshold,
        temperature=temp,
        num_queries=num_queries,
        num_negatives=num_negatives,
        generator=generator,
    )


def _bank_prototypes(bank: torch.Tensor, bank_fill: torch.Tensor) -> torch.Tensor:
    """Mean of the filled slots of each class of a bank ``[C, K, D]`` (zeros for an empty class)."""
    filled = torch.arange(bank.shape[1], device=bank.device)[None, :] < bank_fill[:, None]
    sums = (bank.to(acc_dtype(bank.dtype)) * filled[..., None]).sum(1)
    return sums / bank_fill.clamp_min(1)[:, None].to(sums.dtype)


def _sample(
    keys,
    labels,
    num_classes,
    valid,
    prob,
    strong_threshold,
    temperature,
    num_queries,
    num_negatives,
    bank,
    bank_fill,
    negatives,
    query_mode,
    ignore_index,
    generator,
):
    """Steps 1-3 of the loss (pools, prototypes of the key map, queries and negatives as indices).
    Returns (prototypes, query_index [C, Q], negative_index [C, Q, M], class_weight [C], bank or None)."""
    if negatives not in NEGATIVE_SOURCES:
        raise ValueError(f"contrast_loss: negatives must be one of {NEGATIVE_SOURCES}, got {negatives!r}")
    use_bank = negatives != "batch"
    if use_bank and (bank is None or bank_fill is None):
        raise ValueError(f"contrast_loss: negatives={negatives!r} needs bank [C, K, D] and bank_fill [C]")
    pools = torch.ops.mona.class_pools(labels, num_classes, valid, prob, strong_threshold, ignore_index)
    proto_labels = labels if valid is None else torch.where(valid != 0, labels, torch.full_like(labels, ignore_index))
    prototypes, proto_counts = torch.ops.mona.class_mean(keys, proto_labels, num_classes, None, ignore_index)
    graph_prototypes = prototypes
    if use_bank:
        bank = bank.detach()
        graph_prototypes = torch.where(
            (proto_counts > 0)[:, None], prototypes.to(proto_counts.dtype), _bank_prototypes(bank, bank_fill)
        )
    query_index, negative_index, class_weight = torch.ops.mona.sample_negatives(
        *pools,
        graph_prototypes,
        num_queries,
        num_negatives,
        temperature,
        negatives,
        query_mode,
        bank_fill if use_bank else None,
        bank.shape[1] if use_bank else 0,
        generator,
    )
    return prototypes, query_index, negative_index, class_weight, (bank if use_bank else None)


def _transposed_keys(keys: torch.Tensor) -> torch.Tensor:
    if keys.dim() == 4 and keys.shape[1] > 1 and keys.stride(1) != 1 and keys.device.type != "cpu":
        # A warp gathering D-vectors from NCHW reads one element per cache line: on the GPU one
        # transposed copy of the (no-grad) key map is far cheaper. The CPU kernel reads NCHW keys in
        # channel tiles instead (no copy). Channels-last features skip both.
        keys = keys.contiguous(memory_format=torch.channels_last)
    return keys


def _contrast_loss_composite(
    features,
    labels,
    num_classes,
    valid=None,
    prob=None,
    strong_threshold=0.97,
    temperature=0.5,
    num_queries=256,
    num_negatives=512,
    key_features=None,
    bank=None,
    bank_fill=None,
    negatives="batch",
    query_mode="hard",
    ignore_index=-1,
    generator=None,
):
    keys = _transposed_keys((features if key_features is None else key_features).detach())
    prototypes, query_index, negative_index, class_weight, bank = _sample(
        keys, labels, num_classes, valid, prob, strong_threshold, temperature, num_queries, num_negatives,
        bank, bank_fill, negatives, query_mode, ignore_index, generator,
    )  # fmt: skip
    loss, _ = torch.ops.mona.contrast_infonce(
        features,
        keys,
        prototypes,
        query_index,
        negative_index,
        class_weight,
        temperature,
        bank,
        wants_grad(features),
    )
    return loss


def contrast_loss_at_queries(
    query_rows: Callable[[torch.Tensor], torch.Tensor],
    key_features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    valid: torch.Tensor | None = None,
    prob: torch.Tensor | None = None,
    strong_threshold: float = 0.97,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    bank: torch.Tensor | ClassMemoryBank | None = None,
    bank_fill: torch.Tensor | None = None,
    negatives: str = "batch",
    query_mode: str = "hard",
    ignore_index: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`contrast_loss` with ``key_features`` when the query map is never built.

    The loss reads the query map at the sampled query pixels only (at most ``C * num_queries`` of the
    ``B * H * W``); everything else comes from the key map. So instead of a ``[B, D, H, W]`` query map
    this takes ``query_rows(pixels)``: the query vectors ``[n, D]`` (with their gradient) of the flat
    pixel indices ``pixels`` ``[n]`` (``b * H * W + y * W + x``; distinct, sorted; pixel 0 alone when no
    class has queries), e.g. a network's
    last 1x1 convolution applied to those pixels of its hidden map. With the same generator state the
    draws are those of ``contrast_loss(map, ..., key_features=key_features)``; if ``query_rows``
    returns the map's rows, the loss is bitwise the same (tests/ops/test_contrast_loss.py). The dense
    ``B x D x H x W`` query map and its gradient never exist.
    """
    if hasattr(bank, "storage") and hasattr(bank, "fill"):  # a ClassMemoryBank
        if bank_fill is not None:
            raise ValueError("contrast_loss_at_queries: pass either a ClassMemoryBank or (bank, bank_fill), not both")
        bank, bank_fill = bank.storage, bank.fill
    keys = _transposed_keys(key_features.detach())
    prototypes, query_index, negative_index, class_weight, bank = _sample(
        keys, labels, num_classes, valid, prob, strong_threshold, temperature, num_queries, num_negatives,
        bank, bank_fill, negatives, query_mode, ignore_index, generator,
    )  # fmt: skip
    # a class without queries has query_index -1 (and weight 0: its rows are never read)
    pixels = torch.unique(query_index[query_index >= 0], sorted=True)
    if pixels.numel() == 0:  # no class contributes: one row keeps the gradient path (the loss is 0)
        pixels = query_index.new_zeros(1)
    rows_of = torch.searchsorted(pixels, query_index.clamp_min(0)).clamp_max(pixels.numel() - 1)
    rows = query_rows(pixels)
    D = keys.shape[1]
    if rows.dim() != 2 or rows.shape != (pixels.numel(), D) or rows.dtype != keys.dtype:
        raise ValueError(
            f"contrast_loss_at_queries: query_rows must return [{pixels.numel()}, {D}] {keys.dtype} "
            f"(one row per pixel, the key map's D and dtype), got {list(rows.shape)} {rows.dtype}"
        )
    loss, _ = torch.ops.mona.contrast_infonce(
        rows,
        keys,
        prototypes,
        rows_of.view(query_index.shape),
        negative_index,
        class_weight,
        temperature,
        bank,
        wants_grad(rows),
    )
    return loss


_lib.impl("contrast_loss", _contrast_loss_composite, "CompositeImplicitAutograd")
