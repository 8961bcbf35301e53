"""Where a training step's time goes: named regions, timed only while a :class:`StepProfile` is active.

The loop and the methods mark their parts with ``with region("teacher forward"):``; outside a profile
(every normal run) ``region`` is one global lookup and a no-op context. Inside one, each region is
timed with ``time.perf_counter`` (on CUDA after a ``torch.cuda.synchronize`` at both ends, so that
a region is charged for its own kernels; the synchronisations exist in profile mode only). Regions
nest: a region's name is its path (``"step/teacher forward"``), its time inclusive of its children.

``benchmarks/bench_train_step.py --breakdown`` profiles a few steps of each method with it, next to
an operator-level split of the same step from ``torch.profiler`` (:func:`op_categories`).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_active: StepProfile | None = None


class StepProfile:
    """Inclusive wall time per region path, summed over the steps run while it is active.

    Usage::

        prof = StepProfile(cuda=False)
        with prof:
            for _ in range(n):
                with prof.step():
                    train_one_iteration(run)
        prof.per_step()  # {"step": s, "step/teacher forward": s, ...} (means over the steps)
    """

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._stack: list[str] = []

    def __enter__(self) -> StepProfile:
        global _active
        if _active is not None:
            raise RuntimeError("StepProfile: another profile is already active")
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        if "/" in name:
            raise ValueError(f"region: a name may not contain '/' (the path separator), got {name!r}")
        path = "/".join([*self._stack, name])
        self._stack.append(name)
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[path] += time.perf_counter() - t0
            self._stack.pop()

    @contextmanager
    def step(self) -> Iterator[None]:
        """One whole training step (the root region, ``"step"``)."""
        with self._timed("step"):
            yield
        self.steps += 1

    def per_step(self) -> dict[str, float]:
        """Mean seconds per step of every region path seen (``"step"`` is the whole step)."""
        return {k: v / max(self.steps, 1) for k, v in self.totals.items()}


@contextmanager
def _noop() -> Iterator[None]:
    yield


def region(name: str):
    """A context manager timing ``name`` inside the active :class:`StepProfile`; a no-op without one."""
    prof = _active
    if prof is None or not prof._stack:
        return _noop()
    return prof._timed(name)


def exclusive(per_step: dict[str, float]) -> dict[str, float]:
    """Each region's time minus its direct children's: what the region spends itself (``"step"``'s
    own share is the loop's bookkeeping outside every marked part)."""
    out = dict(per_step)
    for path, t in per_step.items():
        parent = path.rpartition("/")[0]
        if parent in out:
            out[parent] -= t
    return out


#: operator categories of :func:`op_categories`, first match wins (names of ``torch.profiler`` events)
OP_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("mona ops (fused losses, banks)", r"^mona::"),
    ("convolution (fwd + bwd)", r"conv|mkldnn_convolution|slow_conv|Convolution"),
    ("batch norm (fwd + bwd)", r"batch_norm|BatchNorm"),
    ("grid sample / interpolate (augmentation, L_eqv)", r"grid_sampler|GridSampler|upsample|interpolate|affine_grid"),
    ("matmul / linear", r"addmm|^aten::mm$|bmm|matmul|linear|MmBackward|AddmmBackward"),
    ("softmax / log-softmax / CE", r"softmax|nll_loss|cross_entropy|Softmax|NllLoss"),
    ("copies, casts, layout", r"copy_|contiguous|to_copy|clone|cat$|^aten::cat|CatBackward|permute|_to_dense"),
    ("allocation (empty, zeros, fill)", r"^aten::(empty|zeros|zero_|fill_|ones|full|new_)"),
    ("optimizer (SGD / Adam foreach)", r"_foreach|sgd|adam"),
)


def op_categories(events) -> dict[str, float]:
    """Self CPU seconds of a ``torch.profiler`` run's ``key_averages()`` grouped by :data:`OP_CATEGORIES`
    (the rest: ``"elementwise and other aten"``). Self times add up to the profiled CPU time, so the
    categories do too."""
    patterns = [(name, re.compile(p)) for name, p in OP_CATEGORIES]
    out: dict[str, float] = defaultdict(float)
    for e in events:
        key = e.key
        if key.startswith("ProfilerStep") or key.startswith("## "):
            continue
        cat = next((name for name, pat in patterns if pat.search(key)), "elementwise and other aten")
        out[cat] += e.self_cpu_time_total / 1e6
    return dict(out)
