"""``torch.ops.mona.sample_negatives``: queries and negative keys as indices (step 3 of ``contrast_loss``).

Kernels: ``csrc/sample_negatives/`` (schema, CPU, CUDA). The sampling is random: tests check its
distribution (``tests/ops/test_sample_negatives.py``); ``mona_ext.reference.contrast_loss_vectorised``
samples the same distribution in plain PyTorch.
"""

from __future__ import annotations

import torch

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
    return torch.ops.mona.sample_negatives(offsets, counts, hard_counts, permutation, prototypes, num_queries,
                                           num_negatives, temperature, negatives, query_mode, bank_fill, bank_size,
                                           generator)


@torch.library.register_fake("mona::sample_negatives")
def _sample_negatives_fake(offsets, counts, hard_counts, permutation, prototypes, num_queries=256, num_negatives=512,
                           temperature=0.5, negatives="batch", query_mode="hard", bank_fill=None, bank_size=0,
                           generator=None):
    C = offsets.shape[0]
    return (offsets.new_empty((C, num_queries)), offsets.new_empty((C, num_queries, num_negatives)),
            offsets.new_empty((C,), dtype=torch.float32))
