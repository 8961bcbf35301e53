"""Training: the loss goes down, resume continues identically, configs reject bad keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mona.train import load_config, train
from mona.train.checkpoint import load_checkpoint, load_model, student_state
from mona.train.losses import soft_dice_loss


def _cfg(cache, out, **kw):
    ov = [
        f"data.cache={cache}",
        f"out_dir={out}",
        "data.labeled_patients=2",
        "data.batch_size=4",
        "val_every=4",
        "log_every=1",
        "checkpoint_every=4",
        "threads=1",
        "device=cpu",
    ]
    ov += [f"{k}={v}" for k, v in kw.items()]
    return load_config(None, ov)


def test_short_run_reduces_loss_and_writes_outputs(tiny_cache, tmp_path):
    r = train(_cfg(tiny_cache, tmp_path / "run", iterations=16, **{"optim.lr": 0.05}), progress=False)
    assert len(r.losses) == 16 and r.iteration == 16
    assert np.mean(r.losses[-4:]) < 0.8 * np.mean(r.losses[:4])
    for name in ("best.pt", "last.pt", "model.pt", "metrics.jsonl", "train_log.csv", "val_log.csv", "config.yaml"):
        assert (tmp_path / "run" / name).exists(), name
    assert not list((tmp_path / "run").glob("*.tmp"))
    exported = load_checkpoint(tmp_path / "run" / "model.pt")
    assert not any(k.startswith("heads") for k in exported["unet"])
    model, meta = load_model(tmp_path / "run" / "best.pt")
    assert meta["class_names"] == ["background", "RV", "Myo", "LV"] and meta["size"] == 32


def test_resume_continues_identically(tiny_cache, tmp_path):
    full = train(_cfg(tiny_cache, tmp_path / "full", iterations=8), progress=False)
    part = train(_cfg(tiny_cache, tmp_path / "part", iterations=8), progress=False, stop_after=5)
    assert part.iteration == 5 and not (tmp_path / "part" / "model.pt").exists()
    # a fresh process would start with a different global RNG state; resume must not depend on it
    torch.manual_seed(12345)
    rest = train(
        _cfg(tiny_cache, tmp_path / "part", iterations=8), progress=False, resume=tmp_path / "part" / "last.pt"
    )
    assert part.losses + rest.losses == full.losses  # bit-identical on CPU
    a = student_state(torch.load(tmp_path / "full" / "last.pt", weights_only=False))
    b = student_state(torch.load(tmp_path / "part" / "last.pt", weights_only=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the logs were continued, not duplicated
    lines = (tmp_path / "part" / "train_log.csv").read_text().splitlines()
    assert [int(l.split(",")[0]) for l in lines[1:]] == list(range(1, 9))


def test_poly_and_step_schedules(tiny_cache, tmp_path):
    r = train(_cfg(tiny_cache, tmp_path / "s", iterations=4, **{"optim.step_size": 2}), progress=False)
    import json

    lrs = [
        json.loads(l)["lr"]
        for l in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
        if json.loads(l)["kind"] == "train"
    ]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert r.iteration == 4


def test_config_errors_name_the_key(tiny_cache, tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['optim.learning_rate'\]"):
        _cfg(tiny_cache, tmp_path, **{"optim.learning_rate": 0.1})
    with pytest.raises(ValueError, match="method must be one of"):
        _cfg(tiny_cache, tmp_path, method="acr")
    with pytest.raises(ValueError, match="optim.lr must be float"):
        _cfg(tiny_cache, tmp_path, **{"optim.lr": "fast"})
    with pytest.raises(ValueError, match="must look like key=value"):
        load_config(None, ["iterations"])


def test_dice_loss_reference():
    logits = torch.tensor([[[[10.0]], [[-10.0]]]])  # [1, 2, 1, 1], confident class 0
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    # class 0 matches (loss ~0); class 1 absent and not predicted: (0 + eps) / (~0 + eps) ~ 1 -> loss ~0
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-3)
    wrong = torch.ones(1, 1, 1, dtype=torch.long)
    assert soft_dice_loss(logits, wrong).item() == pytest.approx(1.0, abs=1e-3)
