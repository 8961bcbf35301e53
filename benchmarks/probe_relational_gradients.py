"""Why the relational terms swamp L_sup: each term's gradient norm on the UNet encoder at initialisation.

    python -m benchmarks.probe_relational_gradients [--seeds 0 1 2] [--size 96] [--embed-dim 64]

On a phantom batch (8 student slices of the unlabeled train patients, 8 further slices as the queue of
mined views) a fresh student and its teacher copy compute, at weight 1, the GLCon global KL
(``similarity_kl``, tau 0.1 / 0.01), the GLCon local KL (16 crops), L_nn (``knn_loss``, k = 5) and L_sup on
the labeled patient's slices; the table gives ``|| d term / d encoder ||`` relative to L_sup's, for the MLP
heads with BatchNorm1d (ISD's heads; ``model.head_norm=batch``) and with LayerNorm (``layer``, the default),
the mean over ``--seeds`` (model initialisations and batches), and the spread of the pre-norm hidden
features across the batch against their spread across features. Writes
``benchmarks/results/relational_gradients.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path

import torch


def probe(cache, head_norm: str, seed: int, embed_dim: int) -> dict:
    import mona_ext
    from mona.data.labeled import labeled_split
    from mona.models import build_model
    from mona.train.checkpoint import model_meta
    from mona.train.losses import supervised_loss
    from mona.train.methods.glcon import crop_boxes, take_crops

    meta = model_meta(
        cache.num_classes,
        cache.class_names,
        cache.size,
        cache.manifest["normalisation"],
        (16, 32, 64, 128, 256),
        (0.05, 0.1, 0.2, 0.3, 0.5),
        embed_dim,
        2,
        None,
        head_norm,
    )
    split = labeled_split(cache, labeled_patients=1)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(split.unlabeled), generator=g)[:16].tolist()
    x_u, _ = cache.load_batch([split.unlabeled[i] for i in pick])
    lab = torch.randperm(len(split.labeled), generator=g)[:8].tolist()
    x_l, y_l = cache.load_batch([split.labeled[i] for i in lab])
    x, x_queue = x_u[:8], x_u[8:]
    torch.manual_seed(seed)
    student = build_model(meta, ("global", "local")).train()
    teacher = copy.deepcopy(student).train()
    enc = [p for mod in (student.unet.inc, student.unet.downs) for p in mod.parameters()]

    def norm(t: torch.Tensor) -> float:
        gr = torch.autograd.grad(t, enc, retain_graph=True, allow_unused=True)
        return float(torch.stack([a.pow(2).sum() for a in gr if a is not None]).sum().sqrt())

    crop = max(1, round(64 * cache.size / 256))
    boxes = crop_boxes(16, 8, cache.size, crop, g)
    qboxes = crop_boxes(8, 8, cache.size, crop, g)
    out = student(x)
    with torch.no_grad():
        tq, tv = teacher(x_queue), teacher(x)
        local_queue = teacher.heads["local"](take_crops(tq.unet.decoder[-1], qboxes, crop))
        t_local = teacher.heads["local"](take_crops(tv.unet.decoder[-1], boxes, crop))
    s_local = student.heads["local"](take_crops(out.unet.decoder[-1], boxes, crop))
    terms = {
        "global": mona_ext.similarity_kl(out.global_pred, tv.global_proj, tq.global_proj, 0.1, 0.01),
        "local": mona_ext.similarity_kl(s_local, t_local, local_queue, 0.1, 0.01),
        "nn": mona_ext.knn_loss(out.global_pred, tv.global_proj, tq.global_proj, 5),
    }
    sup, _ = supervised_loss(student(x_l).logits, y_l)
    ref = norm(sup)
    hidden = student.heads["global"].mlp[0](out.unet.bottleneck.mean(dim=(2, 3)))
    return {
        **{k: norm(v) / ref for k, v in terms.items()},
        "sup": ref,
        "batch_spread": float(hidden.std(0).mean()),
        "feature_spread": float(hidden.std()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--embed-dim", type=int, default=64)
    args = ap.parse_args()
    from benchmarks.harness import RESULTS, machine_info
    from mona.atomicio import atomic_write_text
    from mona.data.dataset import SliceCache
    from mona.data.prepare import prepare
    from mona.data.synth import SynthConfig, write_phantoms

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            raw, cdir = Path(tmp) / f"raw{seed}", Path(tmp) / f"cache{seed}"
            write_phantoms(raw, SynthConfig(seed=seed), progress=False)
            prepare("acdc", raw, cdir, size=args.size, progress=False)
            cache = SliceCache(cdir)
            for head_norm in ("batch", "layer"):
                rows.append({"seed": seed, "head_norm": head_norm, **probe(cache, head_norm, seed, args.embed_dim)})
    lines = [
        "# Relational terms' gradient on the encoder at initialisation, relative to L_sup",
        "",
        "`python -m benchmarks.probe_relational_gradients "
        + " ".join(f"--seeds {' '.join(map(str, args.seeds))}".split())
        + "`",
        "",
        "| MLP head norm | GLCon global KL | GLCon local KL | L_nn | hidden spread across the batch / across features |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for head_norm in ("batch", "layer"):
        sel = [r for r in rows if r["head_norm"] == head_norm]
        m = {
            k: statistics.fmean(r[k] for r in sel) for k in ("global", "local", "nn", "batch_spread", "feature_spread")
        }
        summary[head_norm] = m
        lines.append(
            f"| {head_norm} | {m['global']:.1f}x | {m['local']:.1f}x | {m['nn']:.1f}x | "
            f"{m['batch_spread']:.3f} / {m['feature_spread']:.3f} |"
        )
    meta = machine_info("cpu")
    lines += ["", f"Mean over seeds {args.seeds} ({meta['cpu']}, torch {meta['torch']}, {meta['date']})."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        RESULTS / "relational_gradients.json", json.dumps({"rows": rows, "summary": summary, "meta": meta}, indent=1)
    )
    atomic_write_text(RESULTS / "relational_gradients.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
