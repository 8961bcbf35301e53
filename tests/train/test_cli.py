"""End-to-end CLI smoke test on tiny phantoms: synth -> prepare -> train -> evaluate -> predict."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from mona.cli import build_parser, main


def test_cli_pipeline(tmp_path, capsys):
    raw, cache, run = tmp_path / "raw", tmp_path / "cache", tmp_path / "run"
    assert (
        main(
            [
                "synth",
                str(raw),
                "--train",
                "2",
                "--val",
                "1",
                "--test",
                "1",
                "--size-min",
                "40",
                "--size-max",
                "48",
                "--slices-min",
                "3",
                "--slices-max",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in raw.iterdir()) == ["patient011", "patient028", "patient038", "patient099"]
    assert main(["prepare", "acdc", str(raw), str(cache), "--size", "32", "--no-progress"]) == 0
    assert "8 volumes" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "--config",
                "demo",
                f"data.cache={cache}",
                f"out_dir={run}",
                "iterations=3",
                "val_every=3",
                "data.labeled_patients=1",
                "data.batch_size=2",
                "threads=1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (run / "model.pt").exists()
    assert (
        main(
            [
                "evaluate",
                str(run / "model.pt"),
                str(cache),
                "--out",
                str(tmp_path / "ev"),
                "--voxels",
                "--overlays",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "RV" in out and "Myo" in out and "LV" in out and "mean foreground Dice" in out
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(rep["summary"]) == {"RV", "Myo", "LV"}
    assert len(rep["rows"]) == 2 * 3  # 1 test patient x 2 frames x 3 classes
    assert all("hd95_vox" in r for r in rep["rows"])
    assert (tmp_path / "ev" / "metrics.csv").read_text().count("\n") == 7
    # the key counts the volumes in the distance (ASD and HD95) means, named as in CONVENTIONS and the docs
    assert all(set(s) >= {"n_dist", "n_volumes"} and "n_asd" not in s for s in rep["summary"].values())
    assert "n_dist counts" in rep["conventions"] and "n_asd" not in json.dumps(rep)
    readme = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    assert "`n_dist`" in readme and "n_asd" not in readme
    # overlays of every test volume (1 patient x 2 frames), 3 slices each (the phantoms have 3 slices with
    # foreground), one PNG per slice
    pngs = sorted(p.name for p in (tmp_path / "ev" / "overlays").glob("*.png"))
    cases = sorted({n.rsplit("_z", 1)[0] for n in pngs})
    assert len(cases) == 2 and all(c.startswith("patient011_frame") for c in cases), pngs
    assert pngs == [f"{c}_z{z:02d}.png" for c in cases for z in range(3)], pngs
    assert "overlays: 6 PNGs in" in out
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
    assert not (tmp_path / "o").exists()
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2  # a usage error (mona.errors)
    assert "no such file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "x.pt"), str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "mona", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("info", "synth", "prepare", "train", "evaluate", "predict", "demo"):
        assert cmd in out


def test_predict_writes_raw_label_values_for_mmwhs_models(tmp_path):
    import torch
    from niftilib import write_nifti

    from mona.models import MonaNet
    from mona.train.checkpoint import export_inference, model_meta

    torch.manual_seed(0)
    model = MonaNet(num_classes=8)
    meta = model_meta(
        8,
        ["background", "LV-myo", "LA", "LV", "RA", "RV", "AAo", "PA"],
        32,
        {"kind": "minmax"},
        (16, 32, 64, 128, 256),
        (0.05, 0.1, 0.2, 0.3, 0.5),
    )
    meta["label_values"] = [0, 205, 420, 500, 550, 600, 820, 850]
    export_inference(model, meta, tmp_path / "m.pt")
    src = write_nifti(
        tmp_path / "ct.nii.gz", np.random.default_rng(0).normal(size=(20, 28, 2)).astype(np.float32), (0.9, 0.9, 2.0)
    )
    assert main(["predict", str(tmp_path / "m.pt"), str(src), str(tmp_path / "out.nii.gz"), "--device", "cpu"]) == 0
    out = nib.load(str(tmp_path / "out.nii.gz"))
    values = set(np.unique(np.asarray(out.dataobj)).tolist())
    assert values <= set(meta["label_values"]) and values - {0}  # untrained net: some raw foreground values
    assert out.header.get_zooms() == nib.load(str(src)).header.get_zooms()


def test_cli_trains_both_mona_stages_and_resumes(tiny_cache, tmp_path, capsys):
    run = tmp_path / "mona"
    args = [
        "train",
        "--config",
        "demo_mona",
        f"data.cache={tiny_cache}",
        f"out_dir={run}",
        "iterations=2",
        "pretrain_iterations=2",
        "val_every=2",
        "checkpoint_every=2",
        "data.batch_size=2",
        "data.labeled_bs=1",
        "glcon.mined_views=2",
        "glcon.local_crops=2",
        "model.embed_dim=8",
        "mona.num_queries=4",
        "mona.num_negatives=8",
        "mona.bank_size=8",
        "mona.knn_queue=4",
        "mona.knn_k=2",
        "--no-progress",
    ]
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
    assert (
        main(["prepare", "acdc", str(tiny_raw), str(cache), "--size", "32", "--splits", str(splits), "--no-progress"])
        == 0
    )
    assert (
        main(
            [
                "train",
                "--config",
                "demo",
                f"data.cache={cache}",
                f"out_dir={tmp_path / 'run'}",
                "iterations=2",
                "data.batch_size=2",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "no validation patients in the cache" in out and "-1" not in out.split("finished")[1]


def test_train_with_a_missing_cache_says_so_and_creates_no_output_directory(tmp_path, capsys):
    for config in ("demo", "demo_mona"):  # one stage, and GLCon + MONA (stage 1 writes into out_dir/pretrain_glcon)
        run = tmp_path / f"run_{config}"
        assert (
            main(
                ["train", "--config", config, f"data.cache={tmp_path / 'no_cache'}", f"out_dir={run}", "--no-progress"]
            )
            == 1
        )
        err = capsys.readouterr().err
        assert f"{tmp_path / 'no_cache'}: the cache directory does not exist" in err
        assert "mona prepare" in err and "manifest" not in err
        assert not run.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_with_a_cache_without_manifest_keeps_its_message(tmp_path, capsys):
    (tmp_path / "cache").mkdir()
    assert (
        main(
            [
                "train",
                "--config",
                "demo",
                f"data.cache={tmp_path / 'cache'}",
                f"out_dir={tmp_path / 'run'}",
                "--no-progress",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "not a prepared cache (no manifest.json; run `mona prepare`" in err and "does not exist" not in err
    assert not (tmp_path / "run").exists()


def test_train_checks_every_input_before_creating_the_output_directory(tiny_cache, tmp_path, capsys):
    base = ["train", "--config", "demo", f"data.cache={tiny_cache}"]
    cases = [  # (overrides, message)
        ([f"init_from={tmp_path / 'nope.pt'}"], "does not exist"),
        (["data.labeled_patients=null", "data.labeled_list=" + str(tmp_path / "no.list")], "no.list"),
        (["method=mona", "data.labeled_patients=3"], "needs unlabeled slices"),
        (["method=mona", "pretrain_iterations=2", "data.labeled_patients=3"], "needs unlabeled slices"),
    ]
    for i, (overrides, message) in enumerate(cases):
        run = tmp_path / f"run{i}"
        assert main(base + [f"out_dir={run}", *overrides, "--no-progress"]) == 1, overrides
        assert message in capsys.readouterr().err, overrides
        assert not run.exists(), overrides


def test_evaluate_synth_and_predict_create_nothing_on_bad_input(tiny_cache, tmp_path, capsys):

    from mona.data.dataset import SliceCache
    from mona.models import MonaNet
    from mona.train.checkpoint import export_inference, model_meta

    man = SliceCache(tiny_cache).manifest
    model_dir = tmp_path / "model"
    export_inference(
        MonaNet(num_classes=4),
        model_meta(
            4, man["class_names"], man["size"], man["normalisation"], (16, 32, 64, 128, 256), (0.05, 0.1, 0.2, 0.3, 0.5)
        ),
        model_dir / "m.pt",
    )
    work = tmp_path / "work"
    work.mkdir()
    assert main(["synth", str(work / "raw"), "--train", "500", "--no-progress"]) == 2  # usage error
    assert "n_train must be in 0..70" in capsys.readouterr().err
    assert main(["evaluate", str(work / "x.pt"), str(tiny_cache), "--out", str(work / "ev")]) == 1
    assert "x.pt does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                str(model_dir / "m.pt"),
                str(work / "no_cache"),
                "--out",
                str(work / "ev"),
                "--overlays",
                "--no-progress",
            ]
        )
        == 1
    )
    assert "no_cache: the cache directory does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                str(model_dir / "m.pt"),
                str(tiny_cache),
                "--out",
                str(work / "ev"),
                "--overlays",
                "--overlay-slices",
                "0",
            ]
        )
        == 2
    )
    assert "--overlay-slices must be >= 1" in capsys.readouterr().err
    assert main(["predict", str(model_dir / "m.pt"), str(work / "in.nii.gz"), str(work / "o" / "p.nii.gz")]) == 1
    assert "in.nii.gz: file does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == []
    assert sorted(p.name for p in model_dir.iterdir()) == ["m.pt"]  # no eval_test next to the checkpoint either
    assert main(["evaluate", str(model_dir / "m.pt"), str(work / "no_cache"), "--no-progress"]) == 1
    assert sorted(p.name for p in model_dir.iterdir()) == ["m.pt"]


def _actions(parser: argparse.ArgumentParser, prefix: str = "mona"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # the one-line help of each command in `mona --help`
                yield f"{prefix} {choice.dest}", choice
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{prefix} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield prefix, action


def test_help_describes_every_argument_of_every_command():
    actions = list(_actions(build_parser()))
    commands = {where.split()[1] for where, _ in actions if len(where.split()) > 1}
    assert commands == {"info", "synth", "prepare", "train", "evaluate", "predict", "demo"}
    assert len(actions) > 50
    from mona import cli
    from mona.eval import report

    assert cli.OVERLAY_SLICES == report.OVERLAY_SLICES  # the default --help states
    missing = [
        f"{where}: {a.option_strings or a.dest}"
        for where, a in actions
        if not (a.help and a.help.strip() and a.help != argparse.SUPPRESS)
    ]
    assert missing == []
    for cmd in sorted(commands):  # and argparse renders every one (no %-format errors in the strings)
        text = subprocess.run(
            [sys.executable, "-m", "mona", cmd, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "usage: mona " + cmd in text
