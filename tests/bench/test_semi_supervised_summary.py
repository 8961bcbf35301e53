"""benchmarks/bench_semi_supervised.py: the paired statistics against the fair baseline, the gap curve,
and --summarise over a runs.jsonl and a results .json (no training)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_semi_supervised import BASELINE, gap_curves, markdown, summarise

ROOT = Path(__file__).resolve().parents[2]


def run(seed: int, method: str, a: float, b: float, curve=()) -> dict:
    return {
        "labeled": 1,
        "seed": seed,
        "method": method,
        "mean_dice": (a + b) / 2,
        "dice": {"A": a, "B": b},
        "iterations": 10,
        "val_curve": [list(p) for p in curve],
    }


RUNS = [
    run(0, BASELINE, 0.6, 0.4, [(5, 0.3, None, None), (10, 0.5, None, None)]),
    run(1, BASELINE, 0.8, 0.6, [(5, 0.4, None, None), (10, 0.6, None, None)]),
    run(2, BASELINE, 0.7, 0.5, [(5, 0.5, None, None)]),
    run(0, "mona", 0.7, 0.5, [(5, 0.2, 0.2, 0.1), (10, 0.7, 0.6, 0.7)]),
    run(1, "mona", 0.7, 0.5, [(5, 0.5, 0.5, 0.4), (10, 0.7, 0.7, 0.6)]),
    # seed 2 has no mona run: only seeds present for both enter the paired difference
    run(3, "mona", 0.9, 0.9),
]


def test_paired_difference_wins_and_worst_by_hand():
    rows = {r["method"]: r for r in summarise(RUNS)}
    base = rows[BASELINE]
    assert base["seeds"] == [0, 1, 2] and "vs_baseline" not in base
    assert base["mean_dice"] == pytest.approx((0.6, statistics.stdev([0.5, 0.7, 0.6])))
    vb = rows["mona"]["vs_baseline"]
    # seed 0: 0.6 - 0.5 = +0.1; seed 1: 0.6 - 0.7 = -0.1; seed 3 has no baseline run
    assert vb["seeds"] == 2 and vb["wins"] == 1
    assert vb["per_seed"] == pytest.approx([0.1, -0.1])
    assert vb["worst"] == pytest.approx(-0.1)
    assert vb["mean_dice"] == pytest.approx((0.0, statistics.stdev([0.1, -0.1])))
    assert vb["dice"]["A"] == pytest.approx((0.0, statistics.stdev([0.1, -0.1])))
    # the method's own mean is over all its seeds (0, 1, 3)
    assert rows["mona"]["mean_dice"][0] == pytest.approx((0.6 + 0.6 + 0.9) / 3)


def test_gap_curve_pairs_iterations_of_the_same_seed():
    (g,) = gap_curves(RUNS)
    assert g["method"] == "mona"
    # iteration 5: seed 0 0.2 - 0.3, seed 1 0.5 - 0.4; iteration 10: 0.7 - 0.5, 0.7 - 0.6
    assert g["gap"][5] == pytest.approx((0.0, statistics.stdev([-0.1, 0.1])))
    assert g["gap"][10] == pytest.approx((0.15, statistics.stdev([0.2, 0.1])))
    md = markdown(summarise(RUNS), META, "cmd", RUNS)
    assert "| 1 | mona | +0.0000 +- 0.1414 | +0.1500 +- 0.0707 |" in md


META = {"iterations_note": "n", "cpu": "c", "cores": 2, "torch": "t", "date": "d", "jobs": 1, "wall_s": 1}


def test_summarise_reads_runs_jsonl_and_results_json(tmp_path):
    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RUNS[3:]))
    results = tmp_path / "main.json"
    results.write_text(json.dumps({"runs": RUNS[:3], "summary": [], "meta": {"cpu": "CPU A"}}))
    out = tmp_path / "results"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_semi_supervised", "--summarise", str(results), str(jsonl)]
        + ["--name", "t"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "MONA_BENCH_RESULTS": str(out)},
    )
    written = json.loads((out / "t.json").read_text())
    assert len(written["runs"]) == len(RUNS)
    mona = next(r for r in written["summary"] if r["method"] == "mona")
    assert mona["vs_baseline"]["per_seed"] == pytest.approx([0.1, -0.1])
    # each run keeps its machine (a results file's, or unknown for a runs.jsonl record without one)
    assert [r["cpu"] for r in written["runs"]] == ["CPU A"] * 3 + ["unknown"] * (len(RUNS) - 3)
    assert written["meta"]["cpu"] == f"CPU A (3 runs); unknown ({len(RUNS) - 3} runs)"
    assert "Machine: CPU A (3 runs); unknown" in (out / "t.md").read_text()


def test_summarise_tabulates_only_the_methods_named(tmp_path):
    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RUNS + [run(0, "mean_teacher", 0.5, 0.5)]))
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.bench_semi_supervised", "--summarise", str(jsonl), "--name", "t"]
    env = {**os.environ, "MONA_BENCH_RESULTS": str(out)}
    subprocess.run([*cmd, "--methods", BASELINE, "mona"], cwd=ROOT, check=True, capture_output=True, env=env)
    written = json.loads((out / "t.json").read_text())
    assert {r["method"] for r in written["runs"]} == {BASELINE, "mona"}
    assert len(written["runs"]) == len(RUNS)
    # no run of the named methods: an error naming them
    p = subprocess.run([*cmd, "--methods", "bcp"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "no run of ['bcp']" in p.stderr


def test_pseudo_label_quality_means_over_logged_steps(tmp_path):
    from benchmarks.pseudo_label_quality import run_dirs, run_quality

    run = tmp_path / "keep" / "l1_s0_mona"
    run.mkdir(parents=True)
    rows = [
        {"kind": "train", "iteration": 10, "pl_dice_PM": 0.0, "pl_recall_PM": 0.1, "pl_against_PM": float("nan")},
        {"kind": "val", "iteration": 10, "pl_dice_PM": 9.0},  # not a train record: ignored
        {"kind": "train", "iteration": 20, "pl_dice_PM": 0.5, "pl_recall_PM": 0.3, "pl_against_PM": 0.2},
        {"kind": "train", "iteration": 30, "loss": 1.0},  # a step without diagnostics
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_dirs([str(tmp_path / "keep")]) == [run]
    q = run_quality(run)
    assert q == pytest.approx({"pl_dice_PM": 0.25, "pl_recall_PM": 0.2, "pl_against_PM": 0.2})
    with pytest.raises(SystemExit, match="neither a run directory"):
        run_dirs([str(tmp_path)])


def test_a_repeated_run_is_kept_once_when_it_reproduced_and_refused_when_it_did_not():
    from benchmarks.bench_semi_supervised import dedupe_runs

    again = [dict(r) for r in RUNS[:2]]
    assert dedupe_runs(RUNS + again) == RUNS  # the same results twice (a re-run that reproduced): once
    other = dict(RUNS[3], dice={"A": 0.71, "B": 0.5})
    with pytest.raises(SystemExit, match="two different results for labeled 1, method mona, seed 0"):
        dedupe_runs(RUNS + [other])
    longer = dict(RUNS[3], iterations=20, dice={"A": 0.1, "B": 0.1})
    assert dedupe_runs(RUNS + [longer]) == RUNS + [longer]  # another budget is another configuration


def test_a_recorded_run_with_other_settings_is_refused_not_reused(tmp_path):
    from benchmarks.bench_semi_supervised import _check_recorded, config_digest, run_config

    job = {
        "method": "mona",
        "cache": str(tmp_path / "c"),
        "out": str(tmp_path / "o"),
        "seed": 0,
        "labeled": 1,
        "iterations": None,
        "overrides": [],
    }
    key = (1, "mona", 0, 400)
    digest = config_digest(run_config(job)[0])
    # where a run reads and writes is not a setting: another out_dir / cache gives the same digest
    moved = {**job, "out": str(tmp_path / "elsewhere"), "cache": str(tmp_path / "c2")}
    assert config_digest(run_config(moved)[0]) == digest
    # a method whose settings differ (MONA with 4 + 4 slices a step) has another digest
    assert config_digest(run_config({**job, "method": "mona-labeled4"})[0]) != digest
    _check_recorded([job], [key], {key: {"config_digest": digest}}, tmp_path / "runs.jsonl")  # same: reused
    _check_recorded([job], [key], {key: {}}, tmp_path / "runs.jsonl")  # a record without a digest: as before
    with pytest.raises(SystemExit, match="recorded run of mona .seed 0, 1 labeled. was trained with other settings"):
        _check_recorded([job], [key], {key: {"config_digest": "0" * 16}}, tmp_path / "runs.jsonl")


@pytest.mark.parametrize(
    ("method", "stages"),
    [
        ("supervised_strong", (0, 400)),
        ("mean_teacher", (0, 400)),
        ("mona", (100, 400)),  # GLCon before a stage 2 as long as the baseline (the paper's protocol)
        ("bcp", (100, 400)),
        ("mona-glcon_share", (100, 300)),  # the split until issue 22: GLCon inside the budget
        ("bcp-pretrain_share", (100, 300)),
        ("supervised_strong-stage2", (0, 300)),  # the baseline for the budget less MONA's GLCon
        ("supervised_strong-plus_glcon", (0, 500)),  # ... and for MONA's two stages together
    ],
)
def test_labeled_exposure_controls_split_the_budget(tmp_path, method, stages):
    from benchmarks.bench_semi_supervised import run_config, run_total

    job = {
        "method": method,
        "cache": str(tmp_path / "c"),
        "out": str(tmp_path / "o"),
        "seed": 0,
        "labeled": 1,
        "iterations": 400,
        "overrides": [],
    }
    cfg, pre = run_config(job)
    assert (pre, cfg.iterations) == stages
    assert cfg.pretrain_iterations == pre
    assert run_total(job) == sum(stages)  # the key a resumed benchmark finds the record by
    # the controls train exactly their parent's settings otherwise
    parent = {
        "supervised_strong-stage2": "supervised_strong",
        "supervised_strong-plus_glcon": "supervised_strong",
        "mona-glcon_share": "mona",
        "bcp-pretrain_share": "bcp",
    }.get(method, method)
    ref, _ = run_config({**job, "method": parent})
    a, b = cfg.to_dict(), ref.to_dict()
    for d in (a, b):
        d.pop("iterations"), d.pop("pretrain_iterations"), d.pop("out_dir")
    assert a == b


def test_a_method_trained_for_two_totals_is_tabulated_as_two(tmp_path):
    from benchmarks.bench_semi_supervised import name_by_total

    old, new = run(0, "mona", 0.7, 0.5), {**run(0, "mona", 0.8, 0.6), "iterations": 20}
    base = run(0, BASELINE, 0.6, 0.4)
    named = name_by_total([base, old, new])
    assert [r["method"] for r in named] == [BASELINE, "mona@10", "mona@20"]
    rows = {r["method"]: r for r in summarise(named)}
    assert rows["mona@10"]["vs_baseline"]["mean_dice"][0] == pytest.approx(0.1)
    assert rows["mona@20"]["vs_baseline"]["mean_dice"][0] == pytest.approx(0.2)
    assert name_by_total([base, old]) == [base, old]  # one total: names unchanged
    with pytest.raises(SystemExit, match="the baseline supervised_strong has runs of \\[10, 20\\] iterations"):
        name_by_total([base, {**base, "seed": 1, "iterations": 20}])
