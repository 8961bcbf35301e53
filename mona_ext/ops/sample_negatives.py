"""``torch.ops.mona.sample_negatives``: queries and negative keys as indices (step 3 of ``contrast_loss``).

Kernels: ``csrc/sample_negatives/`` (schema, CPU, CUDA). The sampling is random: tests check its
distribution (``tests/ops/test_sample_negatives.py``); ``mona_ext.reference.contrast_loss_vectorised``
samples the same distribution in plain PyTorch.
"""

from __future__ import annotations

import torch

from ._common import check, shape_str

NEGATIVE_SOURCES = ("batch", "bank", "both")


def sample_negatives(
    offsets: torch.Tensor,
    counts: torch.Tensor,
    hard_counts: torch.Tensor,
    permutation: torch.Tensor,
    prototypes: torch.Tensor,
    num_queries: int = 256,
    num_negatives: int = 512,
    temperature: float = 0.5,
    negatives: str = "batch",
    query_mode: str = "hard",
    bank_fill: torch.Tensor | None = None,
    bank_size: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw queries and negatives as indices.

    Args:
        offsets, counts, hard_counts, permutation: the output of ``class_pools``
            (``sample_negatives(*class_pools(...), prototypes, ...)``).
        prototypes: ``[C, D]`` class means of the key features; the class relation graph
            ``G[c, v] = cos(proto_c, proto_v)`` is built from them.
        num_queries: Q query pixels per class, drawn uniformly with replacement.
        num_negatives: M negative keys per query: a class v != c with probability
            ``softmax_v(G[c, v] / temperature)``, then a uniform key of class v.
        negatives: where negative keys come from: ``"batch"``, ``"bank"`` or ``"both"``.
        query_mode: ``"hard"`` (hard pixels), ``"all"`` or ``"balanced"`` (half hard, half easy).
        bank_fill, bank_size: per-class fill ``[C]`` (int64) and slots per class K of a memory bank
            ``[C, K, D]``, for ``negatives`` ``"bank"`` / ``"both"``.
        generator: a ``torch.Generator`` on the pools' device (same state -> same indices).

    Returns:
        ``(query_index [C, Q], negative_index [C, Q, M], class_weight [C])``: query_index is a flat
        pixel index (-1 for a class without queries); negative indices below N (=
        ``permutation.numel()``) are pixels of the key map, indices ``N + v*K + s`` are slot s of
        class v in the bank (-1 unused); class_weight (float32) is 1 / #classes present for a class
        that contributes, else 0.
    """
    return torch.ops.mona.sample_negatives(
        offsets,
        counts,
        hard_counts,
        permutation,
        prototypes,
        num_queries,
        num_negatives,
        temperature,
        negatives,
        query_mode,
        bank_fill,
        bank_size,
        generator,
    )


@torch.library.register_fake("mona::sample_negatives")
def _sample_negatives_fake(
    offsets,
    counts,
    hard_counts,
    permutation,
    prototypes,
    num_queries=256,
    num_negatives=512,
    temperature=0.5,
    negatives="batch",
    query_mode="hard",
    bank_fill=None,
    bank_size=0,
    generator=None,
):
    op = "sample_negatives"
    check(
        offsets.dim() == 1 and offsets.shape[0] > 0,
        op,
        lambda: f"offsets must be [C] with C > 0 (from class_pools), got {shape_str(offsets)}",
    )
    C = offsets.shape[0]
    check(
        counts.shape == offsets.shape and hard_counts.shape == offsets.shape,
        op,
        lambda: f"offsets, counts and hard_counts must all be [C] = [{C}]",
    )
    check(permutation.dim() == 1, op, lambda: f"permutation must be [N], got {shape_str(permutation)}")
    check(
        prototypes.dim() == 2 and prototypes.shape[0] == C,
        op,
        lambda: f"prototypes must be [C, D] with C = {C}, got {shape_str(prototypes)}",
    )
    check(num_queries > 0, op, lambda: f"num_queries must be positive, got {num_queries}")
    check(num_negatives > 0, op, lambda: f"num_negatives must be positive, got {num_negatives}")
    check(negatives in NEGATIVE_SOURCES, op, lambda: f"negatives must be 'batch', 'bank' or 'both', got '{negatives}'")
    check(
        query_mode in ("hard", "all", "balanced"),
        op,
        lambda: f"query_mode must be 'hard', 'all' or 'balanced', got '{query_mode}'",
    )
    if negatives != "batch":
        check(bank_fill is not None, op, lambda: f"negatives='{negatives}' needs a memory bank (bank_fill)")
        check(
            bank_fill.dim() == 1 and bank_fill.shape[0] == C,
            op,
            lambda: f"bank_fill must be int64 [C] = [{C}], got {shape_str(bank_fill)}",
        )
        check(bank_size > 0, op, lambda: f"bank_size must be positive with a bank, got {bank_size}")
    return (
        offsets.new_empty((C, num_queries)),
        offsets.new_empty((C, num_queries, num_negatives)),
        offsets.new_empty((C,), dtype=torch.float32),
    )
