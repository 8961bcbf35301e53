"""The fake (meta) kernels check shapes as the C++ kernels do, with the same words.

Each row calls an op with inputs of a wrong shape (or a wrong size-setting integer). Under
``FakeTensorMode`` the op's fake kernel runs and must raise ``"<op>: <what was wrong>"``; every row
would pass silently (or fail with another error) without its check. The same row with
real CPU tensors of those shapes reaches the C++ argument checks, which must say the same thing
(``cpp`` gives the C++ text where it names a dtype the fake check does not look at).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mona_ext

ops = torch.ops.mona


def f(*shape):
    return torch.zeros(shape)


def i(*shape):
    return torch.zeros(shape, dtype=torch.long)


def one():
    return torch.ones(())


def pools(offsets=(3,), counts=(3,), permutation=(20,)):
    return i(*offsets), i(*counts), i(3), i(*permutation)


def infonce(
    features=(2, 8, 4, 4), keys=(2, 8, 4, 4), protos=(3, 8), qidx=(3, 5), nidx=(3, 5, 7), weight=(3,), bank=None
):
    return (
        f(*features),
        f(*keys),
        f(*protos),
        i(*qidx),
        i(*nidx),
        f(*weight),
        0.5,
        None if bank is None else f(*bank),
        False,
    )


def infonce_backward(features=(2, 8, 4, 4), qidx=(3, 5), weight=(3,), grad_rows=(3, 5, 8)):
    return one(), f(*features), i(*qidx), f(*weight), f(*grad_rows)


def bank(storage=(3, 5, 8), ptr=(3,), fill=(3,), keys=(6, 8), labels=(6,), valid=None, cap=-1):
    return (
        f(*storage),
        i(*ptr),
        i(*fill),
        f(*keys),
        i(*labels),
        None if valid is None else torch.zeros(valid, dtype=torch.bool),
        None,
        cap,
        -1,
    )


# (id, op name, args factory, message, C++ message if it differs)
ROWS = [
    (
        "class_mean-num_classes",
        "class_mean",
        lambda: (f(2, 3, 4, 4), i(2, 4, 4), 0, None, -1),
        "class_mean: num_classes must be positive, got 0",
        None,
    ),
    (
        "class_mean-features-rank",
        "class_mean",
        lambda: (f(2, 3, 4), i(2, 4), 3, None, -1),
        "class_mean: features must be [B, D, H, W] or [N, D], got shape [2, 3, 4]",
        None,
    ),
    (
        "class_mean-labels-map",
        "class_mean",
        lambda: (f(2, 3, 4, 4), i(2, 4, 5), 3, None, -1),
        "class_mean: labels must be [B, H, W] = [2, 4, 4] to match features [2, 3, 4, 4], got [2, 4, 5]",
        None,
    ),
    (
        "class_mean-labels-rows",
        "class_mean",
        lambda: (f(6, 3), i(5), 3, None, -1),
        "class_mean: labels must be [N] = [6] to match features [6, 3], got [5]",
        None,
    ),
    (
        "class_mean-weight",
        "class_mean",
        lambda: (f(6, 3), i(6), 3, f(5), -1),
        "class_mean: weight must have the labels' shape [6], got [5]",
        None,
    ),
    (
        "class_mean_backward-labels",
        "class_mean_backward",
        lambda: (f(3, 2), f(3), f(6, 2), i(5), None, f(3, 2), f(3), -1, False),
        "class_mean_backward: labels must be [N] = [6] to match features [6, 2], got [5]",
        None,
    ),
    (
        "class_mean_backward-weight",
        "class_mean_backward",
        lambda: (f(3, 2), f(3), f(6, 2), i(6), None, f(3, 2), f(3), -1, True),
        "class_mean_backward: weight_requires_grad=True needs a weight",
        None,
    ),
    (
        "class_pools-num_classes",
        "class_pools",
        lambda: (i(2, 4, 4), 0, None, None, 1.0, -1),
        "class_pools: num_classes must be positive, got 0",
        None,
    ),
    (
        "class_pools-labels-rank",
        "class_pools",
        lambda: (i(4, 4), 3, None, None, 1.0, -1),
        "class_pools: labels must be [B, H, W] or [N], got shape [4, 4]",
        None,
    ),
    (
        "class_pools-valid",
        "class_pools",
        lambda: (i(2, 4, 4), 3, f(2, 4, 5), None, 1.0, -1),
        "class_pools: valid must have the labels' shape [2, 4, 4], got [2, 4, 5]",
        None,
    ),
    (
        "class_pools-prob",
        "class_pools",
        lambda: (i(2, 4, 4), 3, None, f(2, 4, 4, 4), 1.0, -1),
        (
            "class_pools: prob must be [B, C, H, W] (or [N, C]) with C = num_classes = 3 matching labels [2, 4, 4], "
            "got [2, 4, 4, 4]"
        ),
        None,
    ),
    (
        "sample_negatives-offsets",
        "sample_negatives",
        lambda: (*pools(offsets=(3, 1)), f(3, 8), 4, 4),
        "sample_negatives: offsets must be [C] with C > 0 (from class_pools), got [3, 1]",
        None,
    ),
    (
        "sample_negatives-counts",
        "sample_negatives",
        lambda: (*pools(counts=(4,)), f(3, 8), 4, 4),
        "sample_negatives: offsets, counts and hard_counts must all be [C] = [3]",
        None,
    ),
    (
        "sample_negatives-permutation",
        "sample_negatives",
        lambda: (*pools(permutation=(4, 5)), f(3, 8), 4, 4),
        "sample_negatives: permutation must be [N], got [4, 5]",
        None,
    ),
    (
        "sample_negatives-prototypes",
        "sample_negatives",
        lambda: (*pools(), f(4, 8), 4, 4),
        "sample_negatives: prototypes must be [C, D] with C = 3, got [4, 8]",
        None,
    ),
    (
        "sample_negatives-num_queries",
        "sample_negatives",
        lambda: (*pools(), f(3, 8), 0, 4),
        "sample_negatives: num_queries must be positive, got 0",
        None,
    ),
    (
        "sample_negatives-num_negatives",
        "sample_negatives",
        lambda: (*pools(), f(3, 8), 4, 0),
        "sample_negatives: num_negatives must be positive, got 0",
        None,
    ),
    (
        "sample_negatives-source",
        "sample_negatives",
        lambda: (*pools(), f(3, 8), 4, 4, 0.5, "queue"),
        "sample_negatives: negatives must be 'batch', 'bank' or 'both', got 'queue'",
        None,
    ),
    (
        "sample_negatives-no-bank",
        "sample_negatives",
        lambda: (*pools(), f(3, 8), 4, 4, 0.5, "bank"),
        "sample_negatives: negatives='bank' needs a memory bank (bank_fill)",
        None,
    ),
    (
        "sample_negatives-bank_fill",
        "sample_negatives",
        lambda: (*pools(), f(3, 8), 4, 4, 0.5, "both", "hard", i(4), 10),
        "sample_negatives: bank_fill must be int64 [C] = [3], got [4]",
        "sample_negatives: bank_fill must be int64 [C] = [3], got Long [4]",
    ),
    (
        "contrast_infonce-features",
        "contrast_infonce",
        lambda: infonce(features=(2, 8, 4), keys=(2, 8, 4)),
        "contrast_infonce: features must be [B, D, H, W] or [N, D], got shape [2, 8, 4]",
        None,
    ),
    (
        "contrast_infonce-key_features",
        "contrast_infonce",
        lambda: infonce(keys=(2, 8, 4, 5)),
        "contrast_infonce: key_features must have the features' shape [2, 8, 4, 4] (or, with query rows [Nq, D], "
        "any [B, D, H, W] / [N, D] with the same D), got [2, 8, 4, 5]",
        None,
    ),
    (
        "contrast_infonce-query_rows_D",
        "contrast_infonce",
        lambda: infonce(features=(5, 8), keys=(2, 6, 4, 4)),
        "contrast_infonce: key_features must have the features' shape [5, 8] (or, with query rows [Nq, D], "
        "any [B, D, H, W] / [N, D] with the same D), got [2, 6, 4, 4]",
        None,
    ),
    (
        "contrast_infonce-prototypes",
        "contrast_infonce",
        lambda: infonce(protos=(3, 6)),
        "contrast_infonce: prototypes must be [C, D] with D = 8, got [3, 6]",
        None,
    ),
    (
        "contrast_infonce-query_index",
        "contrast_infonce",
        lambda: infonce(qidx=(2, 5)),
        "contrast_infonce: query_index must be int64 [C, Q] with C = 3, got [2, 5]",
        "contrast_infonce: query_index must be int64 [C, Q] with C = 3, got Long [2, 5]",
    ),
    (
        "contrast_infonce-no-queries",
        "contrast_infonce",
        lambda: infonce(qidx=(3, 0), nidx=(3, 0, 7)),
        "contrast_infonce: num_queries must be positive, got 0 queries",
        None,
    ),
    (
        "contrast_infonce-negative_index",
        "contrast_infonce",
        lambda: infonce(nidx=(3, 4, 7)),
        "contrast_infonce: negative_index must be int64 [C, Q, M] = [3, 5, M], got [3, 4, 7]",
        "contrast_infonce: negative_index must be int64 [C, Q, M] = [3, 5, M], got Long [3, 4, 7]",
    ),
    (
        "contrast_infonce-class_weight",
        "contrast_infonce",
        lambda: infonce(weight=(2,)),
        "contrast_infonce: class_weight must be [C] = [3], got [2]",
        None,
    ),
    (
        "contrast_infonce-bank",
        "contrast_infonce",
        lambda: infonce(bank=(3, 10, 6)),
        "contrast_infonce: bank must be [C, K, D] = [3, K, 8], got [3, 10, 6]",
        None,
    ),
    (
        "contrast_infonce_backward-features",
        "contrast_infonce_backward",
        lambda: infonce_backward(features=(2, 8, 4)),
        "contrast_infonce_backward: features must be [B, D, H, W] or [N, D], got shape [2, 8, 4]",
        None,
    ),
    (
        "contrast_infonce_backward-class_weight",
        "contrast_infonce_backward",
        lambda: infonce_backward(weight=(4,)),
        "contrast_infonce_backward: class_weight must be [C] = [3], got [4]",
        None,
    ),
    (
        "contrast_infonce_backward-grad_rows",
        "contrast_infonce_backward",
        lambda: infonce_backward(grad_rows=(3, 5, 6)),
        (
            "contrast_infonce_backward: grad_rows must be [C, Q, D] = [3, 5, 8] (was the forward called with "
            "compute_grad=False?), got [3, 5, 6]"
        ),
        None,
    ),
    (
        "pixel_kl-rank",
        "pixel_kl",
        lambda: (f(2, 3, 4), f(2, 3, 4), None, True, False, False),
        "pixel_kl: logits_a must be [B, C, H, W] or [N, C], got shape [2, 3, 4]",
        None,
    ),
    (
        "pixel_kl-shapes",
        "pixel_kl",
        lambda: (f(2, 3, 4, 4), f(2, 3, 4, 5), None, True, False, False),
        "pixel_kl: logits_b must have logits_a's shape [2, 3, 4, 4], got [2, 3, 4, 5]",
        None,
    ),
    (
        "pixel_kl-no-class",
        "pixel_kl",
        lambda: (f(5, 0), f(5, 0), None, True, False, False),
        "pixel_kl: need at least one class, got logits of shape [5, 0]",
        None,
    ),
    (
        "pixel_kl-mask-map",
        "pixel_kl",
        lambda: (f(2, 3, 4, 4), f(2, 3, 4, 4), f(2, 4, 5), True, False, False),
        "pixel_kl: mask must be [B, H, W] = [2, 4, 4], got [2, 4, 5]",
        None,
    ),
    (
        "pixel_kl_backward-mask-rows",
        "pixel_kl_backward",
        lambda: (one(), f(5, 3), f(5, 3), f(4), one(), True, True, True),
        "pixel_kl_backward: mask must be [N] = [5], got [4]",
        None,
    ),
    (
        "similarity_kl-student",
        "similarity_kl",
        lambda: (f(4, 8, 1), f(4, 8, 1), f(10, 8), 0.1, 0.01, False),
        "similarity_kl: student must be [B, d], got shape [4, 8, 1]",
        None,
    ),
    (
        "similarity_kl-queue-dim",
        "similarity_kl",
        lambda: (f(4, 8), f(4, 8), f(10, 6), 0.1, 0.01, False),
        "similarity_kl: queue must be [K, d] with d = 8, got shape [10, 6]",
        None,
    ),
    (
        "similarity_kl-queue-empty",
        "similarity_kl",
        lambda: (f(4, 8), f(4, 8), f(0, 8), 0.1, 0.01, False),
        "similarity_kl: queue must hold at least one entry, got shape [0, 8]",
        None,
    ),
    (
        "similarity_kl_backward-teacher",
        "similarity_kl_backward",
        lambda: (one(), f(4, 8), f(3, 8), f(10, 8), f(4), f(4), 0.1, 0.01),
        "similarity_kl_backward: teacher must have the student's shape [4, 8], got [3, 8]",
        None,
    ),
    (
        "knn_loss-teacher",
        "knn_loss",
        lambda: (f(4, 8), f(4, 6), f(10, 8), 3),
        "knn_loss: teacher must have the student's shape [4, 8], got [4, 6]",
        None,
    ),
    (
        "knn_loss-k-max",
        "knn_loss",
        lambda: (f(4, 8), f(4, 8), f(300, 8), 257),
        "knn_loss: k must be <= 256 (on every device), got k=257",
        None,
    ),
    (
        "knn_loss-k-queue",
        "knn_loss",
        lambda: (f(4, 8), f(4, 8), f(3, 8), 5),
        "knn_loss: k=5 exceeds the queue size K=3 (need k <= K)",
        None,
    ),
    (
        "knn_loss_backward-queue",
        "knn_loss_backward",
        lambda: (one(), f(4, 8), f(10, 6), i(4, 3)),
        "knn_loss_backward: queue must be [K, d] with d = 8, got shape [10, 6]",
        None,
    ),
    (
        "knn_loss_backward-indices",
        "knn_loss_backward",
        lambda: (one(), f(4, 8), f(10, 8), i(3, 5)),
        "knn_loss_backward: indices must be [B, k] int64 with B = 4, got [3, 5]",
        "knn_loss_backward: indices must be [B, k] int64 with B = 4, got [3, 5] Long",
    ),
    (
        "bank_push-storage",
        "bank_push",
        lambda: bank(storage=(3, 5)),
        "bank_push: storage must be [C, K, D], got shape [3, 5]",
        None,
    ),
    (
        "bank_push-ptr",
        "bank_push",
        lambda: bank(ptr=(2,)),
        "bank_push: ptr and fill must be contiguous with 3 element(s), got shapes [2] and [3]",
        None,
    ),
    (
        "bank_push-keys",
        "bank_push",
        lambda: bank(keys=(6, 7)),
        "bank_push: keys must be [M, D] with D = 8, got shape [6, 7]",
        None,
    ),
    (
        "bank_push-labels",
        "bank_push",
        lambda: bank(labels=(5,)),
        "bank_push: labels must be [M] = [6] to match keys, got shape [5]",
        None,
    ),
    (
        "bank_push-valid",
        "bank_push",
        lambda: bank(valid=(5,)),
        "bank_push: valid must be [M] = [6], got shape [5]",
        "bank_push: valid must be [M] = [6] on cpu, got shape [5] on cpu",
    ),
    (
        "bank_push-cap",
        "bank_push",
        lambda: bank(cap=2),
        "bank_push: cap=2 needs a priority tensor (the random subset is the cap keys of highest priority)",
        None,
    ),
    (
        "queue_push-keys",
        "queue_push",
        lambda: (f(5, 8), i(1), i(1), f(6, 7)),
        "queue_push: keys must be [M, D] with D = 8, got shape [6, 7]",
        None,
    ),
    (
        "queue_push-ptr",
        "queue_push",
        lambda: (f(5, 8), i(2), i(1), f(6, 8)),
        "queue_push: ptr and fill must be contiguous with 1 element(s), got shapes [2] and [1]",
        None,
    ),
]

FAKE_OPS = sorted(
    {
        "class_mean",
        "class_mean_backward",
        "class_pools",
        "sample_negatives",
        "contrast_infonce",
        "contrast_infonce_backward",
        "pixel_kl",
        "pixel_kl_backward",
        "similarity_kl",
        "similarity_kl_backward",
        "knn_loss",
        "knn_loss_backward",
        "bank_push",
        "queue_push",
    }
)


def test_every_fake_kernel_has_rows():
    assert {op for _, op, *_ in ROWS} == set(FAKE_OPS)


@pytest.mark.parametrize("op, make, message", [pytest.param(op, make, msg, id=name) for name, op, make, msg, _ in ROWS])
def test_fake_kernel_checks(op, make, message):
    with FakeTensorMode():
        args = make()
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            getattr(ops, op)(*args)


@pytest.mark.parametrize(
    "op, make, message", [pytest.param(op, make, cpp or msg, id=name) for name, op, make, msg, cpp in ROWS]
)
def test_cpu_kernel_says_the_same(op, make, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        getattr(ops, op)(*make())


# The checks hold for symbolic sizes too: torch.compile(dynamic=True) traces each op once for two
# input sizes without a shape error or a data-dependent guard, and gives the eager values.
DYNAMIC = [
    (
        "class_mean",
        lambda f, lab: mona_ext.class_mean(f, lab, 3)[0].sum(),
        lambda s: (torch.randn(2, 8, 5 + s, 6), torch.randint(-1, 3, (2, 5 + s, 6))),
    ),
    (
        "knn_loss",
        lambda s_, t, q: mona_ext.knn_loss(s_, t, q, 3),
        lambda s: (torch.randn(4 + s, 16), torch.randn(4 + s, 16), torch.randn(20 + 3 * s, 16)),
    ),
    # draws from the default generator (seeded before each call)
    (
        "contrast_loss",
        lambda f, lab, p: mona_ext.contrast_loss(f, lab, 3, prob=p, num_queries=4, num_negatives=8),
        lambda s: (
            torch.randn(2, 8, 5 + s, 6),
            torch.randint(0, 3, (2, 5 + s, 6)),
            torch.softmax(torch.randn(2, 3, 5 + s, 6), 1),
        ),
    ),
]


@pytest.mark.parametrize("fn, make", [pytest.param(fn, make, id=name) for name, fn, make in DYNAMIC])
def test_checks_under_dynamic_shapes(fn, make):
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    for s in (0, 1):
        torch.manual_seed(s)
        args = make(s)
        torch.manual_seed(10 + s)
        eager = fn(*args)
        torch.manual_seed(10 + s)
        torch.testing.assert_close(compiled(*args), eager)
