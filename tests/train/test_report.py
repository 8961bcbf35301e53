"""The report figures: overlays of several slices per volume with a class legend, curve legends outside
the plotting area, matplotlib's font-cache message before (not inside) the progress bar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mona.data.readers import CaseRecord, Volume
from mona.eval.report import (
    comparison_curves_figure,
    comparison_overlay_figure,
    learning_curve_figure,
    overlay_slices,
    prepare_matplotlib,
    write_volume_overlays,
)

CLASSES = ["background", "RV", "Myo", "LV"]


def _volume(fg_per_slice: list[int], case_id: str = "p1_frame01") -> Volume:
    """A 16 x 16 x Z volume whose slice z has ``fg_per_slice[z]`` foreground voxels (classes 1..3)."""
    z = len(fg_per_slice)
    label = np.zeros((16, 16, z), np.uint8)
    for k, n in enumerate(fg_per_slice):
        flat = label[:, :, k].reshape(-1)
        flat[:n] = (np.arange(n) % 3) + 1
        label[:, :, k] = flat.reshape(16, 16)
    image = np.random.default_rng(0).random((16, 16, z)).astype(np.float32)
    return Volume(CaseRecord(case_id, "p1", "img.nii.gz", "lab.nii.gz"), image, label, (1.5, 1.5, 8.0), np.eye(4))


def test_overlay_slices_are_the_ones_with_the_most_foreground():
    vol = _volume([0, 40, 5, 90, 60, 0])
    assert overlay_slices(vol.label, 3) == [1, 3, 4]
    assert overlay_slices(vol.label, 1) == [3]
    assert overlay_slices(vol.label, 10) == [1, 2, 3, 4]  # never a slice without foreground ...
    assert overlay_slices(_volume([0, 0, 0, 0, 0]).label, 3) == [2]  # ... unless none has any: the middle one
    with pytest.raises(ValueError, match="must be >= 1"):
        overlay_slices(vol.label, 0)


def test_volume_overlays_one_png_per_slice(tmp_path):
    vol = _volume([0, 40, 5, 90, 60, 0])
    preds = {"supervised": vol.label.copy(), "MONA": np.zeros_like(vol.label)}
    paths = write_volume_overlays(vol, preds, tmp_path / "ov", CLASSES, slices=3)
    assert [p.name for p in paths] == ["p1_frame01_z01.png", "p1_frame01_z03.png", "p1_frame01_z04.png"]
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == [p.name for p in paths]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_overlay_figure_has_a_legend_with_the_class_names_in_the_overlay_colours():
    plt = prepare_matplotlib()
    vol = _volume([10, 90, 20])
    fig = comparison_overlay_figure(vol, {"prediction": vol.label}, CLASSES, z=1)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "prediction"]
        assert fig._suptitle.get_text() == "p1_frame01, slice z=1 of 3"
        assert len(fig.legends) == 1
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == ["RV", "Myo", "LV"]  # no background entry
        colours = [tuple(np.round(h.get_facecolor()[:3], 3)) for h in legend.legend_handles]
        assert colours == [(1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.4, 1.0)]
        fig.canvas.draw()
        box = legend.get_window_extent()
        for ax in fig.axes:  # the legend sits below the panels, on none of them
            assert not box.overlaps(ax.get_window_extent())
    finally:
        plt.close(fig)


def _write_metrics(run: Path, val: list[tuple[int, float]], train: list[tuple[int, float]] = ()) -> Path:
    run.mkdir(parents=True)
    lines = [json.dumps({"kind": "train", "iteration": i, "loss": v}) for i, v in train]
    lines += [json.dumps({"kind": "val", "iteration": i, "mean_dice": v}) for i, v in val]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _assert_legend_outside_axes(fig, axes, labels):
    fig.canvas.draw()
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in axes)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == labels
    box = legend.get_window_extent()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent())  # the data area
        assert not box.overlaps(ax.get_tightbbox(renderer))  # nor the tick labels and axis labels
    assert box.y1 <= min(ax.get_tightbbox(renderer).y0 for ax in axes)  # below the axes
    fbox = fig.bbox
    assert fbox.x0 <= box.x0 and box.x1 <= fbox.x1 and fbox.y0 <= box.y0  # and inside the figure


def test_comparison_curve_legend_is_outside_the_plot(tmp_path):
    plt = prepare_matplotlib()
    # lines through the whole plotting area, including the lower right corner where the legend used to sit
    runs = {
        "supervised (labeled only)": [(_write_metrics(tmp_path / "s", [(0, 0.05), (50, 0.5), (100, 0.02)]), 0)],
        "GLCon (stage 1)": [(_write_metrics(tmp_path / "g", [(0, 0.9), (25, 0.1)]), 0)],
        "MONA (stage 2)": [(_write_metrics(tmp_path / "m", [(0, 0.2), (75, 0.98)]), 25)],
    }
    fig = comparison_curves_figure(runs)
    try:
        _assert_legend_outside_axes(fig, fig.axes, list(runs))
    finally:
        plt.close(fig)


def test_learning_curve_legend_is_outside_the_plot(tmp_path):
    plt = prepare_matplotlib()
    run = _write_metrics(tmp_path / "r", [(10, 0.1), (20, 0.8)], train=[(1, 2.0), (10, 1.2), (20, 0.3)])
    fig = learning_curve_figure(run)
    try:
        assert len(fig.axes) == 2  # loss and, on the twin axis, validation Dice
        _assert_legend_outside_axes(fig, fig.axes, ["train loss (Dice + CE)", "val mean Dice"])
    finally:
        plt.close(fig)


def test_font_cache_message_comes_before_the_progress_bar(tiny_cache, tmp_path):
    """A fresh matplotlib config dir: `mona evaluate --overlays` builds the font cache (and logs "generated
    new fontManager") before its progress bar starts, not inside it."""
    import torch

    from mona.data.dataset import SliceCache
    from mona.models import MonaNet
    from mona.train.checkpoint import export_inference, model_meta

    man = SliceCache(tiny_cache).manifest
    torch.manual_seed(0)
    model = MonaNet(num_classes=len(man["class_names"]))
    meta = model_meta(
        len(man["class_names"]),
        man["class_names"],
        man["size"],
        man["normalisation"],
        (16, 32, 64, 128, 256),
        (0.05, 0.1, 0.2, 0.3, 0.5),
    )
    export_inference(model, meta, tmp_path / "m.pt")
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mplconfig"), "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mona",
            "evaluate",
            str(tmp_path / "m.pt"),
            str(tiny_cache),
            "--out",
            str(tmp_path / "ev"),
            "--overlays",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    err = r.stderr
    if "generated new fontManager" not in err:
        pytest.skip("this matplotlib does not log the font-cache build")
    assert "evaluate test" in err  # the progress bar
    assert err.index("generated new fontManager") < err.index("evaluate test")
    # several slices of every test volume (1 test patient x 2 frames, 3-4 slices each)
    pngs = sorted(p.name for p in (tmp_path / "ev" / "overlays").glob("*.png"))
    cases = sorted({n.rsplit("_z", 1)[0] for n in pngs})
    assert len(cases) == 2 and len(pngs) >= 2 * 2
