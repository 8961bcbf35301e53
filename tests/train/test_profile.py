"""The step profiler (issue 24): regions are free outside a profile, nest by path, exclusive times
subtract the children, the operator categories add up, and a real MONA step reports its parts."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from tinyconfig import tiny_run_config

from mona.train.loop import setup, train_one_iteration
from mona.train.profile import StepProfile, exclusive, op_categories, region


def test_region_without_profile_records_nothing():
    prof = StepProfile()
    with region("outside"):
        pass
    assert prof.totals == {}
    with prof:
        with region("not in a step"):  # only steps are roots: a region outside one is not timed
            pass
    assert prof.totals == {}


def test_nested_regions_sum_per_path_and_exclusive_subtracts_children():
    prof = StepProfile()
    with prof:
        for _ in range(2):
            with prof.step():
                with region("a"):
                    time.sleep(0.02)
                    with region("b"):
                        time.sleep(0.03)
                with region("c"):
                    pass
    per = prof.per_step()
    assert prof.steps == 2
    assert set(per) == {"step", "step/a", "step/a/b", "step/c"}
    assert per["step/a/b"] >= 0.03
    assert per["step/a"] >= per["step/a/b"] + 0.02
    assert per["step"] >= per["step/a"] + per["step/c"]
    ex = exclusive(per)
    assert ex["step/a"] == pytest.approx(per["step/a"] - per["step/a/b"])
    assert ex["step"] == pytest.approx(per["step"] - per["step/a"] - per["step/c"])
    assert sum(ex.values()) == pytest.approx(per["step"])  # the exclusive times partition the step


def test_region_names_cannot_hold_the_path_separator():
    prof = StepProfile()
    with prof, prof.step():
        with pytest.raises(ValueError, match="'a/b'"):
            with region("a/b"):
                pass


def test_only_one_profile_at_a_time():
    with StepProfile():
        with pytest.raises(RuntimeError, match="already active"):
            with StepProfile():
                pass
    with StepProfile():  # the first one's exit released it
        pass


def test_op_categories_group_self_times():
    ev = [
        SimpleNamespace(key="mona::contrast_infonce", self_cpu_time_total=3e6),
        SimpleNamespace(key="aten::mkldnn_convolution", self_cpu_time_total=5e6),
        SimpleNamespace(key="aten::convolution_backward", self_cpu_time_total=2e6),
        SimpleNamespace(key="aten::native_batch_norm", self_cpu_time_total=1e6),
        SimpleNamespace(key="aten::add_", self_cpu_time_total=0.5e6),
        SimpleNamespace(key="ProfilerStep#1", self_cpu_time_total=9e6),
    ]
    cats = op_categories(ev)
    assert cats["mona ops (fused losses, banks)"] == pytest.approx(3.0)
    assert cats["convolution (fwd + bwd)"] == pytest.approx(7.0)
    assert cats["batch norm (fwd + bwd)"] == pytest.approx(1.0)
    assert cats["elementwise and other aten"] == pytest.approx(0.5)
    assert sum(cats.values()) == pytest.approx(11.5)  # the profiler's step marker is not an operator


def test_mona_step_reports_its_parts_and_the_same_loss(tiny_cache, tmp_path):
    """A profiled step marks every MONA term and the loop's parts, and changes nothing it times: the
    same step unprofiled gives the same loss."""
    losses = []
    for profiled in (False, True):
        cfg = tiny_run_config(
            tiny_cache, tmp_path / f"p{profiled}", "mona", iterations=4, rampup_iterations=0, pseudo_warmup_iterations=0
        )
        run = setup(cfg)
        train_one_iteration(run)  # the queue fills: L_nn runs from the second step
        prof = StepProfile()
        with prof:
            with prof.step() if profiled else _null():
                losses.append(train_one_iteration(run)[0])
    assert losses[0] == losses[1]
    per = prof.per_step()
    ms = "step/method step"
    for path in (
        "step/data",
        "step/backward",
        "step/optimizer step",
        "step/after step (EMA, bank and queue pushes)",
        f"{ms}/weak views",
        f"{ms}/teacher forward",
        f"{ms}/strong views (contrast, CutMix, T)",
        f"{ms}/student pass/student forward",
        f"{ms}/student pass/L_sup",
        f"{ms}/student pass/L_unsup",
        f"{ms}/student pass/L_contrast",
        f"{ms}/student pass/student forward on T(x)",
        f"{ms}/L_eqv",
        f"{ms}/L_nn",
    ):
        assert path in per, (path, sorted(per))
    ex = exclusive(per)
    assert min(ex.values()) >= -1e-3  # children never exceed their parent
    assert sum(ex.values()) == pytest.approx(per["step"])


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_profiled_step_under_torch_profiler_has_conv_and_mona_ops(tiny_cache, tmp_path):
    cfg = tiny_run_config(
        tiny_cache, tmp_path / "tp", "mona", iterations=4, rampup_iterations=0, pseudo_warmup_iterations=0
    )
    run = setup(cfg)
    train_one_iteration(run)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        train_one_iteration(run)
    cats = op_categories(tp.key_averages())
    assert cats["convolution (fwd + bwd)"] > 0
    assert cats["mona ops (fused losses, banks)"] > 0
