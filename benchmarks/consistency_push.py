"""Which class does each unlabeled term teach, and which does it unlearn? A probe on trained models.

For a trained model and the slices of its run's held-out patients (ground truth known), each term's
gradient with respect to the logits ``z`` is turned into the first-order change of the log-probability
of the true class that one gradient step on the logits would make:

    d log p_y = -(g_y - sum_k p_k g_k)        (g = dL/dz at the pixel, p = softmax(z))

averaged over the pixels of each class and scaled by the number of pixels of the batch (so that a
term's mean per-pixel push is comparable across terms whatever their normalisation). Positive: the
term, alone, raises the true class's probability there (it teaches the class); negative: it lowers it.

Terms (the same code paths as ``method: mona``):

- ``sup``: L_sup (Dice + CE) with the ground truth: the reference direction;
- ``eqv``: L_eqv = symmetric ``pixel_kl(T(F(x)), F(T(x)))`` with a random T drawn as MONA draws it (affine
  + diffeomorphic deformation, the run's augment config), gradients to both passes mapped back to the
  frame of ``x`` for the first pass and to ``T(x)``'s frame (with ``T(y)``) for the second;
- ``unsup``: L_unsup's CE on the pixels the model itself labels with confidence >= the strong threshold
  (the teacher = the model: a converged mean teacher).

Usage::

    python -m benchmarks.consistency_push DIR [DIR ...] [--methods M ...] [--slices 48] [--draws 4] [--name NAME]

``DIR``: a ``bench_semi_supervised --keep`` directory (its ``l*_s*_<method>`` runs, those of ``--methods``
only if given) or one finished run (``model.pt`` + ``config.yaml``); the cache is the run's ``data.cache``.
Writes ``benchmarks/results/NAME.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from benchmarks.harness import RESULTS
from benchmarks.pseudo_label_quality import run_dirs
from mona.atomicio import atomic_write_text
from mona.augment.spatial import random_transform
from mona.data.dataset import SliceCache
from mona.train import load_config
from mona.train.checkpoint import load_model
from mona.train.losses import pixel_masked_ce, supervised_loss


def _push(z: torch.Tensor, g: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    """Per class c: the mean over pixels with y == c of ``-(g_y - sum_k p_k g_k)``; z, g ``[B, C, H, W]``,
    y ``[B, H, W]`` (pixels with y < 0 are ignored)."""
    p = torch.softmax(z, dim=1)
    gy = g.gather(1, y.clamp(min=0)[:, None])[:, 0]
    d = -(gy - (p * g).sum(dim=1))
    out = []
    for c in range(num_classes):
        sel = y == c
        out.append(float(d[sel].mean()) if sel.any() else float("nan"))
    return out


def probe(run: Path, slices: int, draws: int, seed: int = 0) -> dict:
    cfg = load_config(str(run / "config.yaml"), [])
    model, _ = load_model(run / "model.pt")
    model.eval()  # running BatchNorm statistics: the probe must not move them
    cache = SliceCache(cfg.data.cache)
    refs = cache.slice_refs(cache.cases_of_patients(cache.splits["test"]))
    x_all, y_all = cache.load_batch(refs)
    tail = cache.num_classes - 1
    has_tail = (y_all == tail).flatten(1).any(dim=1)
    order = torch.cat([has_tail.nonzero()[:, 0], (~has_tail).nonzero()[:, 0]])[:slices]
    x, y = x_all[order], y_all[order]
    n_pix = y.numel()
    gen = torch.Generator().manual_seed(seed)
    a = cfg.augment
    res: dict[str, list[list[float]]] = {"sup": [], "eqv": [], "unsup": []}
    with torch.no_grad():
        z0 = model(x, with_heads=False).logits.float()
    # L_sup
    z = z0.clone().requires_grad_(True)
    ls, _ = supervised_loss(z, y, cfg.dice_weight, cfg.ce_weight)
    (g,) = torch.autograd.grad(ls * n_pix, z)
    res["sup"].append(_push(z0, g, y, cache.num_classes))
    # L_unsup with the model as its own teacher
    conf, pseudo = torch.softmax(z0, dim=1).max(dim=1)
    z = z0.clone().requires_grad_(True)
    lu = pixel_masked_ce(z, pseudo, conf, cfg.mona.strong_threshold)
    (g,) = torch.autograd.grad(lu * n_pix, z)
    res["unsup"].append(_push(z0, g, y, cache.num_classes))
    # L_eqv, several random T
    from mona_ext import pixel_kl

    for _ in range(draws):
        t = random_transform(
            x.shape[0],
            x.shape[2],
            x.shape[3],
            gen,
            rotate_deg=a.rotate_deg,
            flip=a.flip,
            scale=a.crop_scale,
            deform=a.deform,
            deform_control=a.deform_control,
        )
        with torch.no_grad():
            zt0 = model(t.apply_image(x), with_heads=False).logits.float()
        z = z0.clone().requires_grad_(True)
        zt = zt0.clone().requires_grad_(True)
        le = pixel_kl(t.apply_image(z), zt, t.valid_mask(), cfg.mona.eqv_symmetric)
        gz, gzt = torch.autograd.grad(le * n_pix, (z, zt))
        yt = t.apply_label(y)
        yt = torch.where(t.valid_mask(), yt, torch.full_like(yt, -1))
        p1, p2 = _push(z0, gz, y, cache.num_classes), _push(zt0, gzt, yt, cache.num_classes)
        res["eqv"].append([(u + v) for u, v in zip(p1, p2)])
    mean = {k: [statistics.fmean(r[c] for r in v) for c in range(cache.num_classes)] for k, v in res.items()}
    return {"run": run.name, "classes": cache.class_names, "push": mean}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", metavar="DIR")
    ap.add_argument("--methods", nargs="+", default=None, help="only the runs of these methods")
    ap.add_argument("--slices", type=int, default=48, help="held-out slices per run (those with the tail class first)")
    ap.add_argument("--draws", type=int, default=4, help="random transforms T for L_eqv")
    ap.add_argument("--name", default="consistency_push")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = [r for r in run_dirs(args.dirs) if args.methods is None or r.name.split("_", 2)[-1] in args.methods]
    if not runs:
        raise SystemExit(f"consistency_push: no run of {args.methods} in {args.dirs}")
    for r in runs:
        if not (r / "model.pt").exists() or not (r / "config.yaml").exists():
            raise SystemExit(f"{r}: not a finished run (model.pt and config.yaml expected)")
    out = [probe(r, args.slices, args.draws) for r in runs]
    names = out[0]["classes"]
    lines = [
        "# Per-class push of each term on trained models (held-out slices)",
        "",
        "Mean over a class's pixels of the first-order change of log p(true class) that one gradient step",
        "on the logits would make, per unit step and per pixel of the batch (x 1e3); negative: the term",
        "lowers the true class's probability there. `benchmarks/consistency_push.py` explains the terms.",
        "",
        "`python -m benchmarks.consistency_push " + " ".join(sys.argv[1:]) + "`",
        "",
        "Per method: the median over its runs, and in brackets on how many runs the push is negative.",
        "",
        "| method | runs | term | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    by_method: dict[str, list[dict]] = {}
    for o in out:
        by_method.setdefault(o["run"].split("_", 2)[-1], []).append(o)
    for m, os_ in by_method.items():
        for k in os_[0]["push"]:
            cells = []
            for c in range(len(names)):
                v = [o["push"][k][c] for o in os_ if not math.isnan(o["push"][k][c])]
                cells.append(f"{1e3 * statistics.median(v):+.2f} ({sum(x < 0 for x in v)}/{len(v)})" if v else "")
            lines.append(f"| {m} | {len(os_)} | {k} | " + " | ".join(cells) + " |")
    lines += ["", "| run | term | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for o in out:
        for k, v in o["push"].items():
            lines.append(f"| {o['run']} | {k} | " + " | ".join(f"{1e3 * u:+.2f}" for u in v) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{args.name}.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(out, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
