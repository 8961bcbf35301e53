"""Helpers shared by the op tests: device rows, dtypes, error budgets, shared inputs and the op-case table."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import emu
import pytest
import torch

import mona_ext  # registers torch.ops.mona.*
from mona_ext import reference
from mona_ext.reference import DequeBank

HAS_CUDA = torch.cuda.is_available()


class EmulatedDevice(str):
    """The "emu" row: tensors live on the CPU ("cpu"), and the test runs inside emu.emulated(), so
    every mona op runs its CUDA kernel under the CPU emulation of the CUDA execution model."""

    emulated = True


EMU = EmulatedDevice("cpu")
_CUDA_ROW = pytest.param(
    "cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
)
_EMU_ROW = pytest.param(EMU, id="emu", marks=[pytest.mark.emu])

# Every op test is table-driven over devices: the CPU kernels, the CUDA kernels on a GPU (skipped,
# not counted, without one) and the same CUDA kernels under the emulation (tests/conftest.py enters
# it for a test whose `device` is EMU).
DEVICES = [pytest.param("cpu", id="cpu"), _CUDA_ROW, _EMU_ROW]
# Rows for tests that compare a device's kernels with the CPU kernels in one test (argument name
# `kernel_device`): run the device side inside `on(kernel_device)`.
KERNEL_DEVICES = [_CUDA_ROW, _EMU_ROW]


def is_emulated(device) -> bool:
    return getattr(device, "emulated", False)


def on(device):
    """Context in which mona ops run the kernels of `device` (the emulation for EMU)."""
    return emu.emulated() if is_emulated(device) else contextlib.nullcontext()


def device_of(kernel_device) -> str:
    """Where the tensors of a `kernel_device` row live: the CPU under the emulation, else the GPU."""
    return "cpu" if is_emulated(kernel_device) else "cuda"


FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def assert_within_twice_torch_error(
    ours: torch.Tensor, torch_same_dtype: torch.Tensor, reference64: torch.Tensor, floor: float = 0.0
) -> None:
    """flash-attention style check: our error against the float64 reference may be at most twice
    the error plain PyTorch makes in the same (low) precision, plus a tiny floor for exact cases."""
    ours_err = (ours.double() - reference64).abs().max().item()
    torch_err = (torch_same_dtype.double() - reference64).abs().max().item()
    assert ours_err <= 2 * torch_err + floor, f"error {ours_err:.3g} > 2 x torch's {torch_err:.3g} (+{floor:.1g})"


# ---------------------------------------------------------------------------------------------- contrast inputs
# Shared by test_class_pools.py, test_sample_negatives.py, test_contrast_infonce.py and the op-case table.


def scene(B=2, D=8, H=6, W=7, C=3, device="cpu", dtype=torch.float64, seed=0, ignore_frac=0.1, channels_last=False):
    """A contrast batch: features [B, D, H, W], labels [B, H, W] (ignore_frac of them -1) and
    class probabilities [B, C, H, W] (float64)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, H, W, generator=g, dtype=torch.float64)
    lab = torch.randint(0, C, (B, H, W), generator=g)
    lab[torch.rand(B, H, W, generator=g) < ignore_frac] = -1
    prob = torch.softmax(torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 3, 1)
    f = f.to(device=device, dtype=dtype)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    return f, lab.to(device), prob.to(device)


def pools_and_protos(lab, C, D=8, prob=None, threshold=1.0, seed=0):
    """class_pools of `lab` and random prototypes [C, D] (float64): the inputs of sample_negatives."""
    protos = torch.randn(C, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(lab.device)
    return mona_ext.class_pools(lab, C, prob=prob, strong_threshold=threshold), protos


def sampled(device="cpu", dtype=torch.float64, C=3, Q=5, M=7, channels_last=False, seed=0, bank=False):
    """The inputs of contrast_infonce, sampled by the mona ops: (features, key_features, prototypes,
    query_index, negative_index, class_weight, bank or None)."""
    f, lab, prob = scene(B=2, D=6, H=5, W=6, C=C, device=device, dtype=dtype, seed=seed, channels_last=channels_last)
    keys = scene(B=2, D=6, H=5, W=6, C=C, device=device, dtype=dtype, seed=seed + 1, channels_last=channels_last)[0]
    pools = mona_ext.class_pools(lab, C)
    protos, _ = mona_ext.class_mean(keys, lab, C)
    bank_t, fill = None, None
    if bank:
        bank_t = torch.randn(C, 4, 6, dtype=dtype, device=device)
        fill = torch.tensor([4, 2, 3], device=device)
    qidx, nidx, w = mona_ext.sample_negatives(
        *pools,
        protos,
        Q,
        M,
        negatives="both" if bank else "batch",
        bank_fill=fill,
        bank_size=4 if bank else 0,
        generator=torch.Generator(device).manual_seed(seed),
    )
    return f, keys, protos, qidx, nidx, w, bank_t


# ---------------------------------------------------------------------------------------------- the op-case table
# One OpCase per public op (as extension-cpp's sample_inputs and torchvision's OpTester):
# test_op_cases.py runs, for every case and every DEVICES row, the float64 reference comparison,
# gradcheck (differentiable ops), torch.library.opcheck and torch.compile(fullgraph=True) against eager
# (compile on the cpu and cuda rows: it does not trace under the emulation's dispatch mode).
# Op-specific behaviour (statistics of the samplers, kernel paths, error messages, device kernels
# against the CPU kernels) stays in the op's own test file.


@dataclass(frozen=True)
class Sample:
    """One call: positional arguments in the op's order (those of ``case.fn`` and ``case.op``)."""

    name: str
    args: tuple


def as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


EXACT = dict(rtol=0, atol=0)


@dataclass(frozen=True)
class OpCase:
    """What the generic tests need to know about one op.

    ``sample_inputs(device, dtype, requires_grad)`` yields Samples covering the layouts that matter;
    floating inputs are in ``dtype`` and the inputs at ``grad_inputs`` require grad when asked.
    ``fn`` is the public function (``mona_ext.<name>``, or the op where the wrapper's arguments
    differ) that the reference, gradcheck and compile tests call; ``op`` is the overload opcheck runs,
    with the same positional arguments, and again with ``op_only_args(requires_grad)`` appended
    (arguments only the op takes, e.g. ``compute_grad``).
    """

    name: str
    op: torch._ops.OpOverload
    sample_inputs: Callable[..., Iterator[Sample]]
    fn: Callable
    # float64 reference taking fn's arguments; returns what outputs(fn(...)) is compared with, or for
    # an in-place op the expected state of the arguments at `mutates`. None for a random op.
    reference: Callable | None = None
    outputs: Callable[[object], tuple] = as_tuple  # fn's result -> the compared tensors
    tol: dict = field(default_factory=lambda: dict(EXACT))  # outputs vs the float64 reference
    grad_tol: dict = field(default_factory=lambda: dict(EXACT))  # gradients vs the reference's autograd
    grad_inputs: tuple[int, ...] = ()  # positions of the differentiable arguments
    gradcheck: bool = True  # False where the analytic gradient is by design not the full derivative
    random: bool = False  # draws from a generator: no reference value, determinism + `check` instead
    check: Callable[[tuple, tuple], None] | None = None  # validity of a random op's outputs for args
    mutates: tuple[int, ...] = ()  # positions of the arguments an in-place op updates
    op_only_args: Callable[[bool], tuple] | None = None
    opcheck_utils: tuple[str, ...] | None = None  # None: every torch.library.opcheck test
    # floating dtypes of the reference and opcheck rows (gradcheck: float64; compile: float32)
    dtypes: tuple[torch.dtype, ...] = (torch.float64,)

    def __repr__(self) -> str:
        return self.name


def _leaf(t: torch.Tensor | None, requires_grad: bool):
    return t.detach().requires_grad_(True) if (t is not None and requires_grad) else t


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] -> [B*H*W, D] (the flat layout of the same pixels)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).contiguous()


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return _flat(t) if layout == "flat" else t


LAYOUTS = ("nchw", "channels_last", "flat")


def class_mean_samples(device, dtype, requires_grad):
    for layout in LAYOUTS:
        for weight in (False, True):
            g = torch.Generator().manual_seed(1)
            f = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
            lab = torch.randint(0, 3, (2, 3, 4), generator=g)
            lab[torch.rand(2, 3, 4, generator=g) < 0.2] = -1
            w = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) if weight else None
            f = _layout(f.to(device=device, dtype=dtype), layout)
            lab = (lab.reshape(-1) if layout == "flat" else lab).to(device)
            if w is not None:
                w = (w.reshape(-1) if layout == "flat" else w).to(device=device, dtype=dtype)
            yield Sample(
                f"{layout}{'-weight' if weight else ''}", (_leaf(f, requires_grad), lab, 3, _leaf(w, requires_grad), -1)
            )
    f, lab, _ = scene(B=2, D=4, H=3, W=4, C=3, device=device, dtype=dtype, seed=2)
    yield Sample(
        "nchw-int32-labels-ignore255", (_leaf(f, requires_grad), torch.where(lab < 0, 255, lab).int(), 3, None, 255)
    )


def class_pools_samples(device, dtype, requires_grad):
    _, lab, prob = scene(B=2, H=4, W=5, C=3, device=device, seed=3)
    prob = prob.to(dtype)
    valid = (torch.rand(lab.shape, generator=torch.Generator().manual_seed(4)) > 0.3).to(device)
    yield Sample("bhw", (lab, 3, None, None, 1.0, -1))
    yield Sample("bhw-prob", (lab, 3, None, prob, 0.5, -1))
    yield Sample("bhw-valid", (lab, 3, valid, None, 1.0, -1))
    yield Sample(
        "bhw-valid-prob_channels_last", (lab, 3, valid, prob.contiguous(memory_format=torch.channels_last), 0.5, -1)
    )
    yield Sample("flat-valid-prob", (lab.reshape(-1), 3, valid.reshape(-1), _flat(prob), 0.5, -1))
    yield Sample("bhw-int32-labels-prob", (lab.int(), 3, None, prob, 0.5, -1))


def sample_negatives_samples(device, dtype, requires_grad):
    _, lab, prob = scene(B=2, H=5, W=6, C=3, device=device, seed=5)
    pools, protos = pools_and_protos(lab, 3, prob=prob, threshold=0.5)
    protos = protos.to(dtype)
    fill = torch.tensor([4, 0, 2], device=device)
    for negatives, mode in (
        ("batch", "hard"),
        ("batch", "all"),
        ("batch", "balanced"),
        ("bank", "hard"),
        ("both", "all"),
    ):
        bank = negatives != "batch"
        yield Sample(
            f"{negatives}-{mode}",
            (*pools, protos, 4, 6, 0.5, negatives, mode, fill if bank else None, 4 if bank else 0, None),
        )
    # an explicit generator (not traceable by torch.compile: the compile test skips this one)
    yield Sample(
        "batch-hard-generator",
        (*pools, protos, 4, 6, 0.5, "batch", "hard", None, 0, torch.Generator(device).manual_seed(0)),
    )


def _pixel_classes(offsets, counts, hard_counts, permutation):
    """Class of every pixel (-1: none) and whether it is hard, from class_pools' output."""
    cls = torch.full_like(permutation, -1)
    hard = torch.zeros_like(permutation, dtype=torch.bool)
    for c in range(offsets.numel()):
        seg = permutation[offsets[c] : offsets[c] + counts[c]]
        cls[seg] = c
        hard[seg[: hard_counts[c]]] = True
    return cls, hard


def sample_negatives_check(args, out):
    offsets, counts, hard_counts, perm, protos, Q, M, _, negatives, mode, fill, K, _ = args
    q, n, w = (t.cpu() for t in out)
    C, N = offsets.numel(), perm.numel()
    assert q.shape == (C, Q) and n.shape == (C, Q, M) and w.shape == (C,)
    assert q.dtype == n.dtype == torch.int64 and w.dtype == torch.float32
    assert (w > 0).any(), "no class contributes: the sample checks nothing"
    cls, hard = _pixel_classes(*(t.cpu() for t in (offsets, counts, hard_counts, perm)))
    for c in range(C):
        if w[c] == 0:
            continue
        assert torch.all(q[c] >= 0) and torch.all(cls[q[c]] == c)
        if mode == "hard":
            assert torch.all(hard[q[c]])
        idx = n[c].reshape(-1)
        assert torch.all(idx >= 0)
        assert torch.all(cls[idx[idx < N]] != c) and torch.all(cls[idx[idx < N]] >= 0)
        bank_rows = idx[idx >= N] - N
        if negatives == "batch":
            assert bank_rows.numel() == 0
        else:
            assert torch.all(bank_rows // K != c) and torch.all(bank_rows % K < fill.cpu()[bank_rows // K])
        if negatives == "bank":
            assert torch.all(idx >= N)


def contrast_infonce_samples(device, dtype, requires_grad):
    for layout in LAYOUTS:
        for bank in (False, True):
            f, keys, protos, qidx, nidx, w, bank_t = sampled(
                device=device, dtype=dtype, Q=3, M=4, bank=bank, channels_last=layout == "channels_last"
            )
            if layout == "flat":
                f, keys = _flat(f), _flat(keys)
            yield Sample(
                f"{layout}{'-bank' if bank else ''}",
                (_leaf(f, requires_grad), keys, protos, qidx, nidx, w, 0.5, bank_t),
            )


def contrast_loss_samples(device, dtype, requires_grad):
    f, lab, prob = scene(B=2, D=6, H=5, W=6, C=3, device=device, dtype=dtype, seed=6)
    keys = scene(B=2, D=6, H=5, W=6, C=3, device=device, dtype=dtype, seed=7)[0]
    valid = (torch.rand(lab.shape, generator=torch.Generator().manual_seed(8)) > 0.2).to(device)
    bank = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(device, dtype)
    fill = torch.tensor([4, 1, 0], device=device)
    prob = prob.to(dtype)

    def args(f, lab, valid=None, prob=None, key_features=None, bank=None, fill=None, negatives="batch", mode="hard"):
        return (
            _leaf(f, requires_grad),
            lab,
            3,
            valid,
            prob,
            0.97,
            0.5,
            8,
            16,
            key_features,
            bank,
            fill,
            negatives,
            mode,
            -1,
            None,
        )

    yield Sample("nchw-prob", args(f, lab, prob=prob))
    yield Sample(
        "channels_last-valid-prob-keys",
        args(f.contiguous(memory_format=torch.channels_last), lab, valid, prob, key_features=keys),
    )
    yield Sample("flat-all", args(_flat(f), lab.reshape(-1), mode="all"))
    yield Sample("nchw-prob-bank-both", args(f, lab, prob=prob, bank=bank, fill=fill, negatives="both"))


def contrast_loss_check(args, out):
    (loss,) = out
    assert loss.shape == () and torch.isfinite(loss)
    assert loss.dtype == (torch.float64 if args[0].dtype == torch.float64 else torch.float32)


def pixel_kl_samples(device, dtype, requires_grad):
    for layout, mask, symmetric in (
        ("nchw", "none", True),
        ("nchw", "none", False),
        ("nchw", "float", True),
        ("nchw", "float", False),
        ("channels_last", "bool", True),
        ("flat", "float", False),
    ):
        g = torch.Generator().manual_seed(11)
        a = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64)
        b = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64)
        m = {
            "none": None,
            "float": torch.rand(2, 3, 2, generator=g, dtype=torch.float64),
            "bool": torch.rand(2, 3, 2, generator=g) > 0.4,
        }[mask]
        a, b = (_layout(t.to(device=device, dtype=dtype), layout) for t in (a, b))
        if m is not None:
            m = (m.reshape(-1) if layout == "flat" else m).to(
                device=device, dtype=torch.bool if mask == "bool" else dtype
            )
        yield Sample(
            f"{layout}-mask_{mask}-{'symmetric' if symmetric else 'forward'}",
            (_leaf(a, requires_grad), _leaf(b, requires_grad), m, symmetric),
        )


def _rows(B, d, K, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, d, generator=g, dtype=torch.float64) * 3
    t = s + 0.5 * torch.randn(B, d, generator=g, dtype=torch.float64)
    q = torch.randn(K, d, generator=g, dtype=torch.float64) * torch.rand(K, 1, generator=g, dtype=torch.float64) * 4
    return [x.to(device=device, dtype=dtype) for x in (s, t, q)]


def similarity_kl_samples(device, dtype, requires_grad):
    for B, d, K, taus in (
        (3, 5, 6, (0.5, 0.2)),
        (3, 8, 9, (0.1, 0.05)),
        (4, 16, 32, (0.1, 0.01)),
        (4, 3, 1, (1.0, 1.0)),
    ):
        s, t, q = _rows(B, d, K, device, dtype, seed=B * K)
        yield Sample(f"B{B}-d{d}-K{K}", (_leaf(s, requires_grad), t, q, *taus))


def knn_loss_samples(device, dtype, requires_grad):
    for B, d, K, k in ((3, 4, 7, 3), (3, 8, 9, 4), (2, 5, 6, 1), (2, 5, 6, 6)):
        s, t, q = _rows(B, d, K, device, dtype, seed=10 + K + k)
        yield Sample(f"B{B}-d{d}-K{K}-k{k}", (_leaf(s, requires_grad), t, q, k))


def _bank_state(C, K, D, device, dtype):
    return (
        torch.zeros(C, K, D, device=device, dtype=dtype),
        torch.zeros(C, dtype=torch.long, device=device),
        torch.zeros(C, dtype=torch.long, device=device),
    )


def bank_push_samples(device, dtype, requires_grad):
    g = torch.Generator().manual_seed(5)
    C, K, D = 3, 5, 4

    def push(M, ignore=-1):
        keys = torch.randn(M, D, generator=g)
        labels = torch.randint(0, C, (M,), generator=g)
        labels[torch.rand(M, generator=g) < 0.2] = ignore
        valid = torch.rand(M, generator=g) > 0.2
        return keys.to(device), labels.to(device), valid.to(device)

    keys, labels, valid = push(12)
    yield Sample("valid", (*_bank_state(C, K, D, device, dtype), keys, labels, valid, None, -1, -1))
    keys, labels, _ = push(6)
    yield Sample("all-keys", (*_bank_state(C, K, D, device, dtype), keys.to(dtype), labels, None, None, -1, -1))
    keys, labels, _ = push(12)
    priority = (torch.rand(12, generator=g) * 4).floor().to(device)  # ties: the lower index wins
    yield Sample("cap2-priority", (*_bank_state(C, K, D, device, dtype), keys, labels, None, priority, 2, -1))
    keys, labels, valid = push(30, ignore=255)  # more keys of a class than slots: the ring wraps
    yield Sample(
        "wrap-int32-labels-ignore255",
        (*_bank_state(C, K, D, device, dtype), keys.to(dtype), labels.int(), valid, None, -1, 255),
    )


def bank_push_reference(storage, ptr, fill, keys, labels, valid, priority, cap, ignore_index):
    assert not (storage.any() or ptr.any() or fill.any()), "the reference model starts from an empty bank"
    model = DequeBank(*storage.shape, dtype=storage.dtype)
    model.push(keys, labels, valid, priority=priority, cap=None if cap < 0 else cap, ignore_index=ignore_index)
    return model.ring_state()


def queue_push_samples(device, dtype, requires_grad):
    g = torch.Generator().manual_seed(6)
    for M in (3, 12):  # fewer and more keys than slots
        state = (
            torch.zeros(5, 4, device=device, dtype=dtype),
            torch.zeros(1, dtype=torch.long, device=device),
            torch.zeros(1, dtype=torch.long, device=device),
        )
        yield Sample(f"M{M}-K5", (*state, torch.randn(M, 4, generator=g).to(device)))


def queue_push_reference(queue, ptr, fill, keys):
    assert not (queue.any() or ptr.any() or fill.any()), "the reference model starts from an empty queue"
    model = DequeBank(1, *queue.shape, dtype=queue.dtype)
    model.push(keys, torch.zeros(keys.shape[0], dtype=torch.int64))
    storage, ptr, fill = model.ring_state()
    return storage[0], ptr, fill


_RANDOM_OPCHECK = ("test_schema", "test_faketensor", "test_autograd_registration")  # the op draws anew each call

OP_CASES = [
    OpCase(
        "class_mean",
        torch.ops.mona.class_mean.default,
        class_mean_samples,
        mona_ext.class_mean,
        reference=reference.class_mean,
        tol=dict(rtol=1e-12, atol=1e-12),
        grad_tol=dict(rtol=1e-10, atol=1e-12),
        grad_inputs=(0, 3),
    ),
    OpCase(
        "class_pools",
        torch.ops.mona.class_pools.default,
        class_pools_samples,
        mona_ext.class_pools,
        reference=reference.class_pools,
    ),
    OpCase(
        "sample_negatives",
        torch.ops.mona.sample_negatives.default,
        sample_negatives_samples,
        mona_ext.sample_negatives,
        random=True,
        check=sample_negatives_check,
        opcheck_utils=_RANDOM_OPCHECK,
    ),
    OpCase(
        "contrast_infonce",
        torch.ops.mona.contrast_infonce.default,
        contrast_infonce_samples,
        mona_ext.contrast_infonce,
        reference=reference.contrast_infonce,
        tol=dict(rtol=1e-12, atol=1e-12),
        grad_tol=dict(rtol=1e-10, atol=1e-12),
        grad_inputs=(0,),
        op_only_args=lambda requires_grad: (requires_grad,),
    ),  # compute_grad
    # Keys are a detached copy of the features: the op's gradient is by design not the derivative
    # through the prototypes and negatives, so no gradcheck (contrast_infonce's covers the gradient).
    OpCase(
        "contrast_loss",
        torch.ops.mona.contrast_loss.default,
        contrast_loss_samples,
        mona_ext.contrast_loss,
        grad_inputs=(0,),
        gradcheck=False,
        random=True,
        check=contrast_loss_check,
        opcheck_utils=_RANDOM_OPCHECK,
    ),
    OpCase(
        "pixel_kl",
        torch.ops.mona.pixel_kl.default,
        pixel_kl_samples,
        mona_ext.pixel_kl,
        reference=reference.pixel_kl,
        tol=dict(rtol=1e-12, atol=1e-12),
        grad_tol=dict(rtol=1e-10, atol=1e-12),
        grad_inputs=(0, 1),
        op_only_args=lambda requires_grad: (True, True),
    ),  # the fused gradients
    OpCase(
        "similarity_kl",
        torch.ops.mona.similarity_kl.default,
        similarity_kl_samples,
        mona_ext.similarity_kl,
        reference=reference.similarity_kl,
        tol=dict(rtol=1e-10, atol=1e-12),
        grad_tol=dict(rtol=1e-9, atol=1e-12),
        grad_inputs=(0,),
        op_only_args=lambda requires_grad: (True,),
    ),  # compute_grad
    OpCase(
        "knn_loss",
        torch.ops.mona.knn_loss.default,
        knn_loss_samples,
        mona_ext.knn_loss,
        reference=reference.knn_loss,
        tol=dict(rtol=1e-12, atol=1e-12),
        grad_tol=dict(rtol=1e-10, atol=1e-12),
        grad_inputs=(0,),
    ),
    OpCase(
        "bank_push",
        torch.ops.mona.bank_push.default,
        bank_push_samples,
        torch.ops.mona.bank_push,
        reference=bank_push_reference,
        mutates=(0, 1, 2),
        dtypes=(torch.float64, torch.float32),
    ),
    OpCase(
        "queue_push",
        torch.ops.mona.queue_push.default,
        queue_push_samples,
        torch.ops.mona.queue_push,
        reference=queue_push_reference,
        mutates=(0, 1, 2),
        dtypes=(torch.float64, torch.float32),
    ),
]
