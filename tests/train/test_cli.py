"""End-to-end CLI smoke test on tiny phantoms: synth -> prepare -> train -> evaluate -> predict."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from mona.cli import main


def test_cli_pipeline(tmp_path, capsys):
    raw, cache, run = tmp_path / "raw", tmp_path / "cache", tmp_path / "run"
    assert main(["synth", str(raw), "--train", "2", "--val", "1", "--test", "1", "--size-min", "40",
                 "--size-max", "48", "--slices-min", "3", "--slices-max", "3", "--no-progress"]) == 0
    assert sorted(p.name for p in raw.iterdir()) == ["patient011", "patient028", "patient038", "patient099"]
    assert main(["prepare", "acdc", str(raw), str(cache), "--size", "32", "--no-progress"]) == 0
    assert "8 volumes" in capsys.readouterr().out
    assert main(["train", "--config", "demo", f"data.cache={cache}", f"out_dir={run}", "iterations=3",
                 "val_every=3", "data.labeled_patients=1", "data.batch_size=2", "threads=1", "--no-progress"]) == 0
    assert (run / "model.pt").exists()
    assert main(["evaluate", str(run / "model.pt"), str(cache), "--out", str(tmp_path / "ev"), "--voxels",
                 "--overlays", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "RV" in out and "Myo" in out and "LV" in out and "mean foreground Dice" in out
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(rep["summary"]) == {"RV", "Myo", "LV"}
    assert len(rep["rows"]) == 2 * 3  # 1 test patient x 2 frames x 3 classes
    assert all("hd95_vox" in r for r in rep["rows"])
    assert (tmp_path / "ev" / "metrics.csv").read_text().count("\n") == 7
    assert list((tmp_path / "ev" / "overlays").glob("*.png"))
    src = raw / "patient011" / "patient011_frame01.nii.gz"
    dst = tmp_path / "pred.nii.gz"
    assert main(["predict", str(run / "model.pt"), str(src), str(dst), "--overlay"]) == 0
    a, b = nib.load(str(src)), nib.load(str(dst))
    assert b.shape == a.shape and np.allclose(a.affine, b.affine)
    assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2, 3}
    assert (tmp_path / "pred_overlay.png").exists()


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["prepare", "acdc", str(tmp_path / "missing"), str(tmp_path / "o"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "x.pt"), str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "mona", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("info", "synth", "prepare", "train", "evaluate", "predict", "demo"):
        assert cmd in out


def test_predict_writes_raw_label_values_for_mmwhs_models(tmp_path):
    import torch

    from mona.models import MonaNet
    from mona.train.checkpoint import export_inference, model_meta

    from conftest import write_nifti

    torch.manual_seed(0)
    model = MonaNet(num_classes=8)
    meta = model_meta(8, ["background", "LV-myo", "LA", "LV", "RA", "RV", "AAo", "PA"], 32, {"kind": "minmax"},
                      (16, 32, 64, 128, 256), (0.05, 0.1, 0.2, 0.3, 0.5))
    meta["label_values"] = [0, 205, 420, 500, 550, 600, 820, 850]
    export_inference(model, meta, tmp_path / "m.pt")
    src = write_nifti(tmp_path / "ct.nii.gz", np.random.default_rng(0).normal(size=(20, 28, 2)).astype(np.float32),
                      (0.9, 0.9, 2.0))
    assert main(["predict", str(tmp_path / "m.pt"), str(src), str(tmp_path / "out.nii.gz"), "--device", "cpu"]) == 0
    out = nib.load(str(tmp_path / "out.nii.gz"))
    values = set(np.unique(np.asarray(out.dataobj)).tolist())
    assert values <= set(meta["label_values"]) and values - {0}  # untrained net: some raw foreground values
    assert out.header.get_zooms() == nib.load(str(src)).header.get_zooms()


def test_cli_trains_both_mona_stages_and_resumes(tiny_cache, tmp_path, capsys):
    run = tmp_path / "mona"
    args = ["train", "--config", "demo_mona", f"data.cache={tiny_cache}", f"out_dir={run}", "iterations=2",
            "pretrain_iterations=2", "val_every=2", "checkpoint_every=2", "data.batch_size=2", "data.labeled_bs=1", "glcon.mined_views=2",
            "glcon.local_crops=2", "model.embed_dim=8", "mona.num_queries=4", "mona.num_negatives=8",
            "mona.bank_size=8", "mona.knn_queue=4", "mona.knn_k=2", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{run / 'pretrain_glcon'}: finished at iteration 2" in out and f"{run}: finished at iteration 2" in out
    assert (run / "pretrain_glcon" / "model.pt").exists() and (run / "model.pt").exists()
    assert main(args + ["--resume"]) == 0
    assert "nothing to do: every stage" in capsys.readouterr().out


def test_cli_says_when_the_cache_has_no_validation_patients(tiny_raw, tmp_path, capsys):
    splits = tmp_path / "splits"
    splits.mkdir()
    patients = sorted(p.name for p in tiny_raw.iterdir() if p.is_dir())
    (splits / "train.list").write_text("\n".join(patients[:-1]) + "\n")
    (splits / "test.list").write_text(patients[-1] + "\n")
    cache = tmp_path / "cache"
    assert main(["prepare", "acdc", str(tiny_raw), str(cache), "--size", "32", "--splits", str(splits),
                 "--no-progress"]) == 0
    assert main(["train", "--config", "demo", f"data.cache={cache}", f"out_dir={tmp_path / 'run'}", "iterations=2",
                 "data.batch_size=2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "no validation patients in the cache" in out and "-1" not in out.split("finished")[1]
