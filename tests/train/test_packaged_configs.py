"""Every packaged config loads (unknown keys and bad values are errors, so a typo fails here), and the
peer-method configs hold their papers' settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mona.train import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "python" / "mona" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_packaged_config_loads(path):
    cfg = load_config(str(path), [])
    assert cfg.method and cfg.iterations > 0


def test_acdc_unimatch_has_the_public_codes_medical_settings():
    cfg = load_config(str(next(p for p in CONFIGS if p.stem == "acdc_unimatch")), [])
    assert cfg.method == "unimatch" and cfg.data.labeled_patients == 1
    assert (cfg.data.batch_size, cfg.data.labeled_bs) == (24, 12)  # 12 labeled + 12 unlabeled slices
    assert (cfg.optim.lr, cfg.optim.schedule) == (0.01, "poly")
    u = cfg.unimatch
    assert (u.threshold, u.fp_dropout, u.s1_weight, u.s2_weight, u.fp_weight, u.rampup) == (
        0.95,
        0.5,
        0.25,
        0.25,
        0.5,
        False,
    )


def test_acdc_bcp_has_the_public_codes_acdc_settings():
    cfg = load_config(str(next(p for p in CONFIGS if p.stem == "acdc_bcp")), [])
    assert cfg.method == "bcp" and cfg.data.labeled_patients == 1
    assert (cfg.data.batch_size, cfg.data.labeled_bs) == (24, 12)
    assert (cfg.pretrain_iterations, cfg.iterations) == (10000, 30000)  # pre-training, then self-training
    assert (cfg.optim.lr, cfg.ema_decay, cfg.ema_warmup) == (0.01, 0.99, False)
    b = cfg.bcp
    assert (b.u_weight, b.patch_fraction, b.largest_component, b.rampup) == (0.5, 2 / 3, True, False)
