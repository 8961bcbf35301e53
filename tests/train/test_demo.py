"""The demo's comparison (supervised, supervised_strong, GLCon + MONA) end to end on a tiny budget."""

from __future__ import annotations

import json

import pytest

from mona.demo import compare


def test_compare_writes_the_three_methods_summary_overlays_and_tables(tmp_path):
    lines: list[str] = []
    summary = compare(
        tmp_path / "demo",
        iterations=4,
        pretrain_iterations=1,
        n_train=3,
        n_val=1,
        n_test=1,
        size=32,
        device="cpu",
        progress=False,
        overlay_slices=2,
        log=lines.append,
        overrides=["val_every=2", "checkpoint_every=2", "log_every=1"],
    )
    on_disk = json.loads((tmp_path / "demo" / "report" / "summary.json").read_text())
    assert on_disk["mean_dice_difference"] == pytest.approx(summary["mean_dice_difference"])
    classes = {"RV", "Myo", "LV", "PM"}  # the long-tail phantoms by default
    for method in ("supervised", "supervised_strong", "mona"):
        s = on_disk[method]
        assert set(s["dice"]) == classes
        assert s["mean_dice"] == pytest.approx(sum(s["dice"].values()) / 4)
        assert s["model"] in ("student", "teacher")
        assert (tmp_path / "demo" / "report" / method / "metrics.csv").exists()
    assert on_disk["supervised"]["model"] == on_disk["supervised_strong"]["model"] == "student"
    assert on_disk["mean_dice_difference"] == pytest.approx(
        on_disk["mona"]["mean_dice"] - on_disk["supervised"]["mean_dice"]
    )
    assert on_disk["mean_dice_difference_strong"] == pytest.approx(
        on_disk["mona"]["mean_dice"] - on_disk["supervised_strong"]["mean_dice"]
    )
    strong_log = (tmp_path / "demo" / "supervised_strong" / "train_log.csv").read_text().splitlines()
    assert len(strong_log) - 1 == 4
    # every method trained for the same schedule; MONA ran GLCon before its fine-tuning of that length
    assert on_disk["iterations"] == 4 and on_disk["pretrain_iterations"] == 1
    sup_log = (tmp_path / "demo" / "supervised" / "train_log.csv").read_text().splitlines()
    mona_log = (tmp_path / "demo" / "mona" / "train_log.csv").read_text().splitlines()
    glcon_log = (tmp_path / "demo" / "mona" / "pretrain_glcon" / "train_log.csv").read_text().splitlines()
    assert (len(sup_log) - 1, len(glcon_log) - 1, len(mona_log) - 1) == (4, 1, 4)
    # every test volume (the one test patient's two frames), its 2 slices with the most foreground, one PNG each
    overlays = sorted(p.name for p in (tmp_path / "demo" / "report" / "overlays").glob("*.png"))
    cases = sorted({n.rsplit("_z", 1)[0] for n in overlays})
    assert len(cases) == 2 and len(overlays) == 4, overlays
    assert all(sum(n.startswith(c + "_z") for n in overlays) == 2 for c in cases)
    assert any("overlays:" in l and "4 PNGs" in l and "2 test volumes" in l for l in lines)
    assert (tmp_path / "demo" / "report" / "validation_curves.png").exists()
    text = "\n".join(lines)
    assert "Dice sup" in text and "MONA-strong" in text and "mean foreground Dice" in text
    assert "augmentation" in text and "unlabeled data" in text
    for name in classes:
        assert any(l.startswith(name) for l in text.splitlines())


@pytest.mark.parametrize(
    ("iterations", "pretrain", "message"),
    [(4, -1, r"pretrain_iterations must be >= 0, got -1"), (0, 1, r"iterations must be >= 1, got 0")],
)
def test_compare_rejects_a_negative_pretrain_or_an_empty_schedule(tmp_path, iterations, pretrain, message):
    with pytest.raises(ValueError, match=message):
        compare(
            tmp_path / "d",
            iterations=iterations,
            pretrain_iterations=pretrain,
            n_train=3,
            n_val=1,
            n_test=1,
            size=32,
            device="cpu",
            progress=False,
            log=lambda *a: None,
        )
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overrides": ["no_such_key=1"]}, "unknown key"),
        ({"overrides": ["optim.schedule=cosine"]}, "optim.schedule"),
        ({"labeled_patients": 3}, "labeled_patients must be in 1..2"),
        ({"n_test": 0}, "n_test must be >= 1"),
        ({"n_train": 500}, "n_train must be in"),
        ({"overlay_slices": 0}, "overlay_slices must be >= 1"),
    ],
)
def test_compare_checks_its_inputs_before_writing_anything(tmp_path, kwargs, message):
    args = {
        "iterations": 4,
        "n_train": 3,
        "n_val": 1,
        "n_test": 1,
        "size": 32,
        "device": "cpu",
        "progress": False,
        "log": lambda *a: None,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        compare(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()


def test_compare_runs_any_subset_of_methods_with_the_differences_against_the_baselines_it_ran(tmp_path):
    lines: list[str] = []
    summary = compare(
        tmp_path / "demo",
        iterations=4,
        pretrain_iterations=1,
        n_train=3,
        n_val=1,
        n_test=1,
        size=32,
        device="cpu",
        progress=False,
        overlays=0,
        log=lines.append,
        methods="supervised_strong,bcp",
        overrides=["val_every=2", "checkpoint_every=2", "log_every=1"],
    )
    assert summary["methods"] == ["supervised_strong", "bcp"]
    assert summary["differences"] == {
        "bcp - supervised_strong": pytest.approx(
            summary["bcp"]["mean_dice"] - summary["supervised_strong"]["mean_dice"]
        )
    }
    assert "mean_dice_difference" not in summary  # the keys of the three-method demo need mona and its baselines
    # BCP: 1 iteration of copy-paste pre-training, then its stage 2 as long as the baseline (4)
    pre_log = (tmp_path / "demo" / "bcp" / "pretrain_bcp" / "train_log.csv").read_text().splitlines()
    bcp_log = (tmp_path / "demo" / "bcp" / "train_log.csv").read_text().splitlines()
    assert (len(pre_log) - 1, len(bcp_log) - 1) == (1, 4)
    assert not (tmp_path / "demo" / "supervised").exists() and not (tmp_path / "demo" / "mona").exists()
    text = "\n".join(lines)
    assert "[3/5] supervised baseline with" in text and "[4/5] BCP: bcp_pretrain (1 iterations) + bcp (4" in text
    head = next(l for l in lines if l.startswith("class"))
    assert "Dice strong" in head and "BCP-strong" in head and "HD95 strong" in head
    assert any(l.startswith("mean") for l in lines) and "BCP - supervised_strong" in text


@pytest.mark.parametrize(
    "methods, message",
    [
        ("supervised,nope", r"unknown method\(s\) \['nope'\] in --methods; choose from supervised, supervised_strong"),
        ("mona,mona", r"--methods names \['mona'\] more than once"),
        (" , ", "--methods names no method"),
    ],
)
def test_compare_rejects_bad_method_lists_before_writing_anything(tmp_path, methods, message):
    with pytest.raises(ValueError, match=message):
        compare(tmp_path / "d", iterations=4, methods=methods, device="cpu", progress=False, log=lambda *a: None)
    assert not (tmp_path / "d").exists()
