"""The generic op tests, driven by the op-case table (op_testing.OP_CASES), for every op and every
device row: the float64 reference comparison (determinism and validity for a random op, the mutated
state for an in-place op), gradcheck, torch.library.opcheck and torch.compile(fullgraph=True)
against eager. Each test runs every sample of the case; a failure names the sample."""

from __future__ import annotations

import contextlib

import pytest
import torch
from op_testing import DEVICES, OP_CASES, OpCase, Sample

CASES = [pytest.param(case, id=case.name) for case in OP_CASES]
# The emulation is a TorchDispatchMode, under which torch.compile does not trace ("non-infra torch
# dispatch mode present"): the compile test runs on the cpu and cuda rows.
COMPILE_DEVICES = [row for row in DEVICES if row.id != "emu"]
GRADCHECK_CASES = [pytest.param(case, id=case.name) for case in OP_CASES if case.grad_inputs and case.gradcheck]
# requires_grad only where the op has differentiable inputs (else the rows would be the same)
OPCHECK_ROWS = [
    pytest.param(case, requires_grad, id=f"{case.name}-{'grad' if requires_grad else 'nograd'}")
    for case in OP_CASES
    for requires_grad in ((False, True) if case.grad_inputs else (False,))
]


@contextlib.contextmanager
def naming(case: OpCase, sample: Sample):
    """Add the case and sample to any failure raised inside."""
    try:
        yield
    except BaseException as e:
        if hasattr(e, "add_note"):
            e.add_note(f"op case {case.name}, sample {sample.name!r}")
        raise


def fresh(case: OpCase, args: tuple, seed: int = 0) -> tuple:
    """The arguments for one independent call: copies of what an in-place op mutates, and for a random
    op the global generator and every explicit generator seeded with `seed`."""
    if case.random:
        torch.manual_seed(seed)
    out = []
    for i, a in enumerate(args):
        if i in case.mutates:
            a = a.clone()
        elif isinstance(a, torch.Generator):
            a = torch.Generator(a.device).manual_seed(seed)
        out.append(a)
    return tuple(out)


def samples(case: OpCase, device, requires_grad: bool):
    """The case's samples in each of its dtypes (the reference and opcheck rows)."""
    for dtype in case.dtypes:
        for sample in case.sample_inputs(device, dtype, requires_grad):
            yield sample if dtype == torch.float64 else Sample(f"{sample.name}-{str(dtype)[6:]}", sample.args)


def grad_leaves(case: OpCase, args: tuple) -> list[torch.Tensor]:
    return [args[i] for i in case.grad_inputs if isinstance(args[i], torch.Tensor) and args[i].requires_grad]


def floating(outputs) -> list[torch.Tensor]:
    return [o for o in outputs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]


def cotangent_loss(outputs) -> torch.Tensor:
    """A scalar of the differentiable outputs with fixed random weights (no cancellation by symmetry)."""
    g = torch.Generator().manual_seed(123)
    return sum(
        (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
        for o in floating(outputs)
    )


def grads(outputs, leaves) -> tuple:
    if not leaves or not floating(outputs):
        return ()
    return torch.autograd.grad(cotangent_loss(outputs), leaves, allow_unused=True, materialize_grads=True)


# ---------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_matches_float64_reference(case, device):
    """Deterministic ops: outputs (dtype, shape, values) and gradients against the float64 reference.
    In-place ops: the updated state against the reference model (exact, in every dtype of case.dtypes).
    Random ops: the same seed gives the same outputs, another seed other outputs, and the outputs are
    valid (case.check)."""
    for sample in samples(case, device, requires_grad=bool(case.grad_inputs)):
        with naming(case, sample):
            if case.random:
                a = case.outputs(case.fn(*fresh(case, sample.args, seed=5)))
                b = case.outputs(case.fn(*fresh(case, sample.args, seed=5)))
                c = case.outputs(case.fn(*fresh(case, sample.args, seed=6)))
                assert all(torch.equal(x, y) for x, y in zip(a, b)), "same seed, different outputs"
                assert not all(torch.equal(x, y) for x, y in zip(a, c)), "another seed, the same outputs"
                case.check(sample.args, a)
            elif case.mutates:
                args = fresh(case, sample.args)
                case.fn(*args)
                expected = case.reference(*fresh(case, sample.args))
                for i, want in zip(case.mutates, expected):
                    torch.testing.assert_close(args[i].cpu(), want.cpu(), **case.tol)
            else:
                ours = case.outputs(case.fn(*sample.args))
                ref = case.outputs(case.reference(*sample.args))
                assert len(ours) == len(ref)
                for x, y in zip(ours, ref):
                    assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
                    torch.testing.assert_close(x, y, **case.tol)
                leaves = grad_leaves(case, sample.args)
                for x, y in zip(grads(ours, leaves), grads(ref, leaves)):
                    torch.testing.assert_close(x, y, **case.grad_tol)


# ---------------------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case, device):
    for sample in case.sample_inputs(device, torch.float64, requires_grad=True):
        leaves = grad_leaves(case, sample.args)
        positions = [i for i in case.grad_inputs if isinstance(sample.args[i], torch.Tensor)]

        def fn(*xs):
            args = list(sample.args)
            for i, x in zip(positions, xs):
                args[i] = x
            return case.outputs(case.fn(*args))

        with naming(case, sample):
            assert torch.autograd.gradcheck(fn, tuple(leaves))


# ---------------------------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case, requires_grad", OPCHECK_ROWS)
def test_opcheck(case, requires_grad, device):
    """torch.library.opcheck of the op overload (schema, fake kernel, autograd registration, AOT
    dispatch), with the public function's arguments and again with the op-only ones (compute_grad)."""
    for sample in samples(case, device, requires_grad=requires_grad):
        variants = [sample.args]
        if case.op_only_args is not None:
            variants.append(sample.args + case.op_only_args(requires_grad))
        for args in variants:
            with naming(case, sample):
                torch.library.opcheck(
                    case.op,
                    fresh(case, args),
                    **({} if case.opcheck_utils is None else dict(test_utils=case.opcheck_utils)),
                )


# ---------------------------------------------------------------------------------------------- torch.compile


def scalable(case: OpCase, i: int, a) -> bool:
    """Floating inputs the graph computes (x * 2) before the op; not an in-place op's state."""
    return isinstance(a, torch.Tensor) and a.is_floating_point() and i not in case.mutates


def as_outputs(case: OpCase, result) -> tuple:
    return tuple(result) if case.mutates else case.outputs(result)


@pytest.mark.parametrize("device", COMPILE_DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_compile_fullgraph_matches_eager(case, device):
    """The public function inside a graph (its floating inputs computed in the graph, an in-place op's
    state read after the update) under torch.compile(fullgraph=True, backend="aot_eager"): the same
    outputs, gradients and (in-place) state as eager, and as the reference model for an in-place op.
    A random op draws from the global generator, seeded the same for both runs."""
    for sample in case.sample_inputs(device, torch.float32, requires_grad=bool(case.grad_inputs)):
        if any(isinstance(a, torch.Generator) for a in sample.args):
            continue  # dynamo cannot take a torch.Generator argument; the rows with generator=None run

        def graph(*args):
            args = [a * 2 if scalable(case, i, a) else a for i, a in enumerate(args)]
            out = case.fn(*args)
            if case.mutates:
                return tuple(args[i].sum() for i in case.mutates)
            return out

        torch._dynamo.reset()  # every sample compiles anew (no recompile limit, no dynamic shapes)
        compiled = torch.compile(graph, fullgraph=True, backend="aot_eager")
        with naming(case, sample):
            eager_args = fresh(case, sample.args)
            eager = as_outputs(case, graph(*eager_args))
            compiled_args = fresh(case, sample.args)
            got = as_outputs(case, compiled(*compiled_args))
            assert len(got) == len(eager)
            for x, y in zip(got, eager):
                torch.testing.assert_close(x, y)
            leaves = grad_leaves(case, sample.args)
            for x, y in zip(grads(got, leaves), grads(eager, leaves)):
                torch.testing.assert_close(x, y)
            if case.mutates:
                expected = case.reference(
                    *[a * 2 if scalable(case, i, a) else a for i, a in enumerate(fresh(case, sample.args))]
                )
                for i, want in zip(case.mutates, expected):
                    torch.testing.assert_close(compiled_args[i].cpu(), want.cpu(), rtol=0, atol=0)
                    torch.testing.assert_close(compiled_args[i], eager_args[i], rtol=0, atol=0)
                for s, want in zip(got, expected):
                    torch.testing.assert_close(s.cpu(), want.sum().to(s.dtype))
