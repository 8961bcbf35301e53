"""The training methods (supervised, glcon, mona) on tiny phantoms: exact resume per method, the
ext / reference equivalence of the losses, init_from, the two-stage pipeline, switched-off terms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tinyconfig import SMALL

from mona.train import load_config, run_stages, train
from mona.train.checkpoint import load_checkpoint, student_state
from mona.train.loop import setup, train_one_iteration
from mona.train.losses import confidence_weighted_ce


def _cfg(cache, out, method="mona", **kw):
    ov = [
        f"data.cache={cache}",
        f"out_dir={out}",
        "data.labeled_patients=1",
        "data.batch_size=4",
        "val_every=3",
        "log_every=1",
        "checkpoint_every=3",
        "threads=1",
        "device=cpu",
        f"method={method}",
    ]
    ov += [
        f"{k}={v}" for k, v in {**(SMALL if method not in ("supervised", "supervised_strong") else {}), **kw}.items()
    ]
    return load_config(None, ov)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "method", ["supervised", "supervised_strong", "mean_teacher", "glcon", "mona", "unimatch", "bcp_pretrain", "bcp"]
)
def test_resume_is_bit_identical_for_every_method(tiny_cache, tmp_path, method):
    full = train(_cfg(tiny_cache, tmp_path / "full", method, iterations=7), progress=False)
    part = train(_cfg(tiny_cache, tmp_path / "part", method, iterations=7), progress=False, stop_after=4)
    assert part.iteration == 4 and not (tmp_path / "part" / "model.pt").exists()
    torch.manual_seed(999)  # a fresh process starts with another global RNG state: resume must not care
    np.random.seed(5)
    rest = train(
        _cfg(tiny_cache, tmp_path / "part", method, iterations=7), progress=False, resume=tmp_path / "part" / "last.pt"
    )
    assert part.losses + rest.losses == full.losses
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert _states_equal(student_state(a), student_state(b))
    assert a["objects"].keys() == b["objects"].keys()
    if method not in (
        "supervised",
        "supervised_strong",
        "unimatch",
        "bcp_pretrain",
    ):  # the teacher, queues and bank continued exactly too
        assert _states_equal(a["objects"]["teacher"], b["objects"]["teacher"])
        for name in a["objects"]:
            if name.startswith(("queue", "bank")):
                assert _states_equal(a["objects"][name], b["objects"][name]), name
    lines = (tmp_path / "part" / "train_log.csv").read_text().splitlines()
    assert [int(l.split(",")[0]) for l in lines[1:]] == list(range(1, 8))


def test_every_stateful_object_is_in_the_checkpoint(tiny_cache, tmp_path):
    train(_cfg(tiny_cache, tmp_path / "r", iterations=2), progress=False)
    objs = load_checkpoint(tmp_path / "r" / "last.pt")["objects"]
    assert {
        "student",
        "teacher",
        "optimizer",
        "scheduler",
        "scaler",
        "sampler",
        "bank",
        "queue.knn",
        "generator.sample",
        "generator.augment",
        "generator.contrast",
        "generator.push",
    } == set(objs)
    assert int(objs["bank"]["fill"].sum()) > 0 and int(objs["queue.knn"]["fill"]) == 8  # 2 steps x 4 images
    glcon = train(_cfg(tiny_cache, tmp_path / "g", "glcon", iterations=1), progress=False)
    objs = load_checkpoint(glcon.out_dir / "last.pt")["objects"]
    assert {"queue.global", "queue.local", "sampler.mined", "generator.method"} <= set(objs)


def test_resume_refuses_a_checkpoint_of_another_method(tiny_cache, tmp_path):
    train(_cfg(tiny_cache, tmp_path / "g", "glcon", iterations=1), progress=False)
    ck = load_checkpoint(tmp_path / "g" / "last.pt")
    ck["config"]["method"] = "mona"  # a forged mix: objects of glcon, config of mona
    torch.save(ck, tmp_path / "forged.pt")
    with pytest.raises(ValueError, match=r"forged.pt: its stateful objects do not match this run"):
        train(_cfg(tiny_cache, tmp_path / "m", iterations=2), progress=False, resume=tmp_path / "forged.pt")


def test_mona_learns_on_phantoms(tiny_cache, tmp_path):
    r = train(_cfg(tiny_cache, tmp_path / "run", iterations=16, **{"optim.lr": 0.05}), progress=False)
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sup = [x["sup"] for x in recs if x["kind"] == "train"]
    assert np.mean(sup[-4:]) < 0.8 * np.mean(sup[:4])
    terms = {k for x in recs if x["kind"] == "train" for k, v in x.items() if v is not None}
    assert {"sup", "unsup", "contrast", "eqv", "nn"} <= terms
    assert all(math.isfinite(v) for v in r.losses)
    for name in ("best.pt", "last.pt", "model.pt"):
        assert (tmp_path / "run" / name).exists()
    # the exported model holds the UNet only
    assert all(not k.startswith("heads") for k in load_checkpoint(tmp_path / "run" / "model.pt")["unet"])


def test_a_zero_weight_switches_the_term_off(tiny_cache, tmp_path):
    cfg = _cfg(
        tiny_cache,
        tmp_path / "r",
        iterations=3,
        **{"mona.contrast_weight": 0, "mona.nn_weight": 0, "mona.eqv_weight": 0},
    )
    run = setup(cfg)
    m = run.method
    assert m.bank is None and m.queue is None and len(m.student.heads) == 0
    _, parts, _ = train_one_iteration(run)
    assert set(parts) == {"sup", "ce", "dice_loss", "unsup"}


def test_loss_values_do_not_depend_on_the_implementation(tiny_cache, tmp_path):
    """Every deterministic term (sup, unsup, eqv, nn; glcon global + local) is the same with the fused
    ops and with the plain-PyTorch references: equal at the first step (same weights, same batch), and
    at the second, which reads the weights after one optimiser step with either implementation's
    gradients — so the gradients agree too. Later steps are not compared: rounding differences grow
    about tenfold per step on the tiny phantoms (GLCon's teacher temperature 0.01, lr 0.05: measured
    4e-6, 5e-4, 1e-2, 6e-2 at steps 1-4 of glcon global, 2026-12-02), which says nothing about the ops."""
    for method, kw in (("mona", {"mona.contrast_weight": 0}), ("glcon", {})):
        parts = {}
        for impl in ("ext", "reference"):
            run = setup(_cfg(tiny_cache, tmp_path / f"{method}_{impl}", method, iterations=5, impl=impl, **kw))
            parts[impl] = [train_one_iteration(run)[1] for _ in range(2)]
        for step, (ext, ref) in enumerate(zip(parts["ext"], parts["reference"])):
            assert ext.keys() == ref.keys()
            for k in ext:
                # Step 0: the same weights and batch, equal to rounding. Step 1: one step of rounding
                # differences in the weights (measured 4e-6 relative, glcon global).
                tol, atol = (1e-5, 1e-6) if step == 0 else (1e-4, 1e-6)
                assert ext[k] == pytest.approx(ref[k], rel=tol, abs=atol), (method, step, k)


def test_contrast_term_has_the_same_distribution_with_either_implementation(tiny_cache, tmp_path):
    """The sampled contrastive term of one fixed training batch: mean over 60 sampler seeds, ext vs
    reference, within 4 standard errors (and the two are not the same numbers: they sample differently)."""
    draws = {}
    for impl in ("ext", "reference"):
        run = setup(_cfg(tiny_cache, tmp_path / impl, iterations=4, impl=impl))
        train_one_iteration(run)  # fill the bank and the queue once
        m = run.method
        batch_gen_state = run.objects["generator.sample"].get_state()
        aug_state, sampler_state = m.aug_gen.get_state(), run.sampler.state_dict()
        rng = torch.get_rng_state()
        vals = []
        for seed in range(60):
            run.objects["generator.sample"].set_state(batch_gen_state)
            run.sampler.load_state_dict(sampler_state)
            m.aug_gen.set_state(aug_state)
            torch.set_rng_state(rng)  # dropout
            m.contrast_gen.manual_seed(seed)
            from mona.train.loop import next_batch

            with torch.no_grad():
                vals.append(m.step(next_batch(run))[1]["contrast"])
            m._pending.clear()
        draws[impl] = np.array(vals)
    a, b = draws["ext"], draws["reference"]
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert a.std() > 0 and b.std() > 0
    assert abs(a.mean() - b.mean()) < 4 * se + 1e-6, (a.mean(), b.mean(), se)


def test_init_from_errors_name_the_file(tiny_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init_from: checkpoint .*nothing.pt does not exist"):
        train(_cfg(tiny_cache, tmp_path / "r", iterations=1, init_from=str(tmp_path / "nothing.pt")), progress=False)
    assert not (tmp_path / "r").exists()  # the inputs are read before the output directory is created
    train(
        _cfg(tiny_cache, tmp_path / "other", "glcon", iterations=1, **{"model.channels": [8, 16, 32, 64, 128]}),
        progress=False,
    )
    with pytest.raises(ValueError, match=r"init_from .*other/last.pt: incompatible checkpoint: channels"):
        train(
            _cfg(tiny_cache, tmp_path / "r", iterations=1, init_from=str(tmp_path / "other" / "last.pt")),
            progress=False,
        )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt: unreadable"):
        train(_cfg(tiny_cache, tmp_path / "r", iterations=1, init_from=str(tmp_path / "junk.pt")), progress=False)


def test_init_from_loads_the_stage1_weights(tiny_cache, tmp_path):
    train(_cfg(tiny_cache, tmp_path / "s1", "glcon", iterations=2), progress=False)
    cfg = _cfg(tiny_cache, tmp_path / "s2", iterations=1, init_from=str(tmp_path / "s1" / "last.pt"))
    run = setup(cfg)
    stage1 = student_state(load_checkpoint(tmp_path / "s1" / "last.pt"))
    student = run.method.student.state_dict()
    for k, v in student.items():
        if k.startswith(("unet.", "heads.global.", "heads.predictor.")):
            assert torch.equal(v, stage1[k]), k
    # the teacher starts as the initialised student
    assert _states_equal(run.method.teacher.state_dict(), student)


def test_two_stages_from_one_config_and_resume_at_either_stage(tiny_cache, tmp_path):
    kw = {"iterations": 4, "pretrain_iterations": 3}
    full = run_stages(_cfg(tiny_cache, tmp_path / "full", **kw), progress=False)
    assert [r.out_dir.name for r in full] == ["pretrain_glcon", "full"]
    assert load_checkpoint(tmp_path / "full" / "last.pt")["config"]["init_from"].endswith("pretrain_glcon/last.pt")
    # interrupted inside stage 1: --resume continues stage 1, then runs stage 2
    cfg = _cfg(tiny_cache, tmp_path / "part", **kw)
    from mona.train.pipeline import stages

    train(stages(cfg)[0], progress=False, stop_after=2)
    rest = run_stages(cfg, resume="auto", progress=False)
    assert [r.iteration for r in rest] == [3, 4]
    a = student_state(load_checkpoint(tmp_path / "full" / "last.pt"))
    b = student_state(load_checkpoint(tmp_path / "part" / "last.pt"))
    assert _states_equal(a, b)
    # everything finished: nothing to redo
    assert run_stages(cfg, resume="auto", progress=False) == []


def test_config_errors_for_the_semi_supervised_methods(tiny_cache, tmp_path):
    with pytest.raises(ValueError, match=r"data.labeled_bs must be in 1..3"):
        _cfg(tiny_cache, tmp_path, **{"data.labeled_bs": 4})
    with pytest.raises(ValueError, match=r"impl must be one of"):
        _cfg(tiny_cache, tmp_path, impl="fast")
    with pytest.raises(ValueError, match=r"mona.negatives must be one of"):
        _cfg(tiny_cache, tmp_path, **{"mona.negatives": "all"})
    with pytest.raises(ValueError, match=r"pretrain_iterations .* applies to method: mona or bcp only"):
        _cfg(tiny_cache, tmp_path, "glcon", pretrain_iterations=3)
    with pytest.raises(ValueError, match=r"mona.knn_k \(9\) must be <= mona.knn_queue \(8\)"):
        _cfg(tiny_cache, tmp_path, **{"mona.knn_k": 9})
    with pytest.raises(ValueError, match=r"needs unlabeled slices"):
        train(_cfg(tiny_cache, tmp_path / "r", iterations=1, **{"data.labeled_patients": 3}), progress=False)


def test_confidence_weighted_ce_weights_each_image_by_its_confident_fraction():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    pseudo = torch.randint(0, 3, (2, 4, 4))
    conf = torch.zeros(2, 4, 4)
    conf[0, :2] = 0.99  # image 0: half of its pixels confident
    conf[1] = 0.98  # image 1: all
    ce = torch.nn.functional.cross_entropy(logits, pseudo, reduction="none").mean(dim=(1, 2))
    expected = (ce[0] * 0.5 + ce[1] * 1.0) / 2
    assert confidence_weighted_ce(logits, pseudo, conf, 0.97).item() == pytest.approx(expected.item(), rel=1e-6)
