"""L_contrast from the student's representation at the query pixels only (``mona.query_map``, issue 24):
the same loss and gradients as the full map, the map never built, bf16 under autocast, clear errors."""

from __future__ import annotations

import pytest
import torch
from tinyconfig import SMALL

import mona_ext
from mona.models.heads import RepresentationHead
from mona.train import load_config
from mona.train.loop import setup, train_one_iteration


def _cfg(cache, out, **kw):
    ov = [
        f"data.cache={cache}",
        f"out_dir={out}",
        "data.labeled_patients=1",
        "data.batch_size=4",
        "iterations=10",
        "val_every=100",
        "log_every=100",
        "checkpoint_every=100",
        "threads=1",
        "device=cpu",
        "method=mona",
        "rampup_iterations=0",
        "pseudo_warmup_iterations=0",
    ]
    return load_config(None, ov + [f"{k}={v}" for k, v in {**SMALL, **kw}.items()])


def test_project_rows_are_the_rows_of_the_full_map():
    torch.manual_seed(0)
    head = RepresentationHead((32, 16, 8, 4), dim=24, fpn_dim=8)
    dec = [torch.randn(2, c, 5 * 2**i, 6 * 2**i) for i, c in enumerate((32, 16, 8, 4))]
    hidden = head.hidden(dec)
    full = head(dec)  # [2, 24, 40, 48]
    pixels = torch.tensor([0, 7, 100, 40 * 48 + 3, 2 * 40 * 48 - 1])
    rows = head.project_rows(hidden, pixels)
    expected = full.permute(0, 2, 3, 1).reshape(-1, 24)[pixels]
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("negatives", ["batch", "both"])
def test_contrast_loss_at_queries_is_contrast_loss_on_the_map(negatives):
    """Rows gathered from a map: the same draws, bitwise the same loss and gradient."""
    torch.manual_seed(1)
    B, D, H, W, C = 3, 16, 10, 12, 4
    f = torch.randn(B, D, H, W).contiguous(memory_format=torch.channels_last).requires_grad_()
    keys = torch.randn(B, D, H, W).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(-1, C, (B, H, W))
    prob = torch.softmax(torch.randn(B, C, H, W), 1)
    bank = mona_ext.ClassMemoryBank(C, 32, D)
    bank.push(keys.permute(0, 2, 3, 1).reshape(-1, D), labels.reshape(-1))
    kw = dict(
        prob=prob, num_queries=8, num_negatives=16, negatives=negatives, bank=bank if negatives != "batch" else None
    )
    l1 = mona_ext.contrast_loss(f, labels, C, key_features=keys, generator=torch.Generator().manual_seed(3), **kw)
    flat = f.permute(0, 2, 3, 1).reshape(-1, D)
    asked = []

    def rows(pixels):
        asked.append(pixels)
        return flat[pixels]

    l2 = mona_ext.contrast_loss_at_queries(rows, keys, labels, C, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(l1, l2)
    (g1,) = torch.autograd.grad(l1, f)
    (g2,) = torch.autograd.grad(l2, f)
    assert torch.equal(g1, g2) and (g1 != 0).any()
    (pixels,) = asked
    assert pixels.numel() <= C * 8 and torch.equal(pixels, pixels.unique())  # distinct, sorted, the queries only


def test_contrast_loss_at_queries_checks_the_rows():
    keys = torch.randn(2, 8, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match=r"query_rows must return \[\d+, 8\] torch.float32"):
        mona_ext.contrast_loss_at_queries(
            lambda p: torch.zeros(len(p), 7), keys, labels, 3, num_queries=4, num_negatives=4
        )


def test_a_mona_step_from_query_rows_equals_the_full_map_step(tiny_cache, tmp_path):
    """One step each way from the same state: the same loss terms and updated weights up to rounding,
    and with query rows the student's representation head never builds the full map."""
    results = {}
    for mode in ("full", "queries"):
        run = setup(_cfg(tiny_cache, tmp_path / mode, **{"mona.query_map": mode}))
        head = run.method.student.heads["representation"]
        full_calls = []
        head.register_forward_hook(lambda mod, i, o: full_calls.append(o.shape))
        train_one_iteration(run)  # the queue fills
        loss, parts, _ = train_one_iteration(run)
        weights = torch.cat([p.detach().flatten() for p in run.method.student.parameters()])
        results[mode] = (loss, parts, weights, len(full_calls))
    (lf, pf, wf, nf), (lq, pq, wq, nq) = results["full"], results["queries"]
    assert nf == 2 and nq == 0  # the full 64-d map: built each step with "full", never with "queries"
    assert pf["contrast"] > 0
    for k in pf:
        assert pq[k] == pytest.approx(pf[k], rel=1e-4, abs=1e-6), k
    assert lq == pytest.approx(lf, rel=1e-4)
    torch.testing.assert_close(wq, wf, rtol=1e-4, atol=1e-5)


def test_query_rows_under_bf16_autocast(tiny_cache, tmp_path):
    run = setup(_cfg(tiny_cache, tmp_path, amp="bf16"))
    assert run.method.query_rows_only
    seen = []
    real = mona_ext.contrast_loss_at_queries

    def spy(query_rows, keys, *a, **kw):
        def rows(p):
            r = query_rows(p)
            seen.append((r.dtype, keys.dtype, torch.is_autocast_enabled("cpu")))
            return r

        return real(rows, keys, *a, **kw)

    import mona.train.methods.mona as mona_method

    mona_method.mona_ext.contrast_loss_at_queries = spy
    try:
        loss, parts, _ = train_one_iteration(run)
    finally:
        mona_method.mona_ext.contrast_loss_at_queries = real
    assert seen == [(torch.bfloat16, torch.bfloat16, False)]  # rows in the key map's dtype; the loss outside autocast
    assert torch.isfinite(torch.tensor(loss))


def test_query_map_values_and_impl(tiny_cache, tmp_path):
    with pytest.raises(ValueError, match="mona.query_map must be auto, queries or full, got 'some'"):
        _cfg(tiny_cache, tmp_path, **{"mona.query_map": "some"})
    with pytest.raises(ValueError, match="mona.query_map=queries needs impl: ext"):
        _cfg(tiny_cache, tmp_path, impl="reference", **{"mona.query_map": "queries"})
    assert not setup(_cfg(tiny_cache, tmp_path / "r", impl="reference")).method.query_rows_only  # auto -> full
    assert setup(_cfg(tiny_cache, tmp_path / "e")).method.query_rows_only  # auto, ext -> queries


def test_contrast_loss_at_queries_with_absent_classes_and_none_contributing():
    """A class without queries (index -1) is skipped; with a single class the loss is 0 with a gradient path."""
    torch.manual_seed(2)
    D = 8
    f = torch.randn(2, D, 6, 6).requires_grad_()
    flat = f.permute(0, 2, 3, 1).reshape(-1, D)
    labels = torch.zeros(2, 6, 6, dtype=torch.long)
    labels[0, :2] = 1
    for lab in (labels, torch.zeros_like(labels)):
        kw = dict(num_queries=4, num_negatives=4)
        l1 = mona_ext.contrast_loss(
            f, lab, 3, key_features=f.detach(), generator=torch.Generator().manual_seed(0), **kw
        )
        l2 = mona_ext.contrast_loss_at_queries(
            lambda p: flat[p], f.detach(), lab, 3, generator=torch.Generator().manual_seed(0), **kw
        )
        assert torch.equal(l1, l2)
        l2.backward()
    assert f.grad is not None
