"""Memory model of one MONA stage-2 step: peak memory vs batch, resolution and embedding dimension,
and the largest batch at 256 x 256 with a 512-d embedding that fits a 24 GB card.

    python -m benchmarks.memory_model [--budget-gib 24] [--reserve-gib 1] [--threads 2] [--quick]
                                      [--device cpu|cuda] [--amp off|bf16|fp16] [--variants ext,reference,public]

Three variants of the same step (the real ``train_one_iteration`` of the packaged ``acdc_mona``
config: every loss term on, 256 queries x 512 negatives, a 2048-key class bank, batch = half labeled,
half unlabeled, phantom slices):

* ``ext``: the fused ops (``impl: ext``);
* ``reference``: the plain-PyTorch losses (``impl: reference``, ``mona_ext.reference``);
* ``public``: the public code's contrastive loss (ReCo's published algorithm,
  ``mona_ext.reference.reco_loss_published``: per class a ``[Q, 1 + M, D]`` key tensor, a cosine
  over it kept for the backward pass) in place of ``contrast_loss``, everything else as ``ext``. The
  public code's memory bank lives on the host: it costs no device memory (but a host -> device copy
  of the sampled keys every step, which is part of that ``[Q, 1 + M, D]`` tensor), so the bank
  takes no part in this variant's figures.

Measured (CPU, this machine): each (variant, batch B, size S, dim D) in a fresh process: one
warm-up step, then the peak of one step above the memory resident before it (process peak RSS,
VmHWM reset through /proc/self/clear_refs; large blocks forced to mmap so that RSS follows live
memory) -- the activations, the loss buffers and the gradients of the step. The persistent state
(student weights + gradients + momentum, teacher, bank, queue) is counted exactly from the run's
tensors and added.

Model: ``extra(B, S, D) = a0 + a1 B S^2 + a2 B S^2 D + a3 D``. ``a2 / 4`` bytes is the number of
fp32 ``B x D x S x S`` maps alive at the peak (student representation map, its gradient, the teacher's
key map, copies a loss makes), ``a1`` the UNet activations (three passes: student, the L_eqv pass,
teacher), ``a3`` what grows with D alone (the reference's and the public code's ``[Q, M, D]`` key
tensors per class). Fitted by least squares on a small grid (S in {64, 128}, D in {32, 128},
B in {2, 4}), then checked against direct measurements at S = 256, D = 512, B in {2, 4, 6}. The
largest batch: the direct measurements' line in B (exact structure: everything in a step is linear
in B) + the persistent state <= budget - reserve (the CUDA context and allocator slack).

CUDA differs in detail (cuDNN workspaces, the caching allocator's fragmentation, kernels that save
other buffers): on a GPU run the step with ``--device cuda`` of ``benchmarks/bench_train_step.py``
and read ``max_memory_allocated``; those figures replace this extrapolation.

Writes benchmarks/results/memory_model_<device>[_<amp>].{json,md} and ``..._points.json`` (every point);
``--from-points`` refits a points file without measuring.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import MEMORY_PASS_ENV

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("ext", "reference", "public")
GIB = 2**30


def _make_cache(root: Path, size: int) -> Path:
    from mona.data.prepare import prepare
    from mona.data.synth import SynthConfig, write_phantoms

    raw = root / "raw"
    if not raw.exists():
        write_phantoms(raw, SynthConfig(n_train=4, n_val=0, n_test=1, seed=0), progress=False)
    out = root / f"cache_{size}"
    prepare("acdc", raw, out, size=size, progress=False)
    return out


def public_contrast(
    features,
    labels,
    num_classes,
    *,
    valid=None,
    prob=None,
    strong_threshold=0.97,
    temperature=0.5,
    num_queries=256,
    num_negatives=512,
    key_features=None,
    bank=None,
    negatives="batch",
    generator=None,
):
    """The step's contrastive term computed the public code's way (ReCo's published algorithm):
    one-hot labels, a ``[Q, 1 + M, D]`` key tensor per class. Negatives from the batch (the public
    code draws them from its host-side bank, which occupies no device memory)."""
    import torch.nn.functional as F

    from mona_ext.reference import reco_loss_published

    onehot = F.one_hot(labels.clamp_min(0).long(), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * (labels >= 0)[:, None].float()
    mask = valid.float() if valid is not None else onehot.new_ones(labels.shape)
    return reco_loss_published(
        features.float(), onehot, mask, prob, strong_threshold, temperature, num_queries, num_negatives
    )


def persistent_bytes(run) -> int:
    """Device bytes held between steps: student weights, their gradients and SGD momentum, buffers,
    the teacher, the bank and the queue (exact, from the run's tensors)."""
    m = run.method
    params = sum(p.numel() * p.element_size() for p in m.student.parameters())
    total = 3 * params + sum(b.numel() * b.element_size() for b in m.student.buffers())
    if m.teacher is not None:
        total += sum(t.numel() * t.element_size() for t in list(m.teacher.parameters()) + list(m.teacher.buffers()))
    for name, obj in run.objects.items():
        if name.startswith(("bank", "queue")):
            total += sum(t.numel() * t.element_size() for t in obj.buffers())
    return total


def _child(c: dict) -> None:
    import dataclasses

    import torch

    from benchmarks.bench_train_step import STEP_ONLY
    from benchmarks.harness import peak_of
    from mona.train import load_config
    from mona.train.loop import setup, train_one_iteration

    if c.get("threads"):
        torch.set_num_threads(c["threads"])
    b = c["batch"]
    device = c.get("device", "cpu")
    cuda = device.startswith("cuda")
    cfg = load_config(
        str(ROOT / "python/mona/configs/acdc_mona.yaml"),
        [
            f"data.cache={c['cache']}",
            f"out_dir={c['out']}",
            f"device={device}",
            f"amp={c.get('amp', 'off')}",
            f"impl={'reference' if c['variant'] == 'reference' else 'ext'}",
            *STEP_ONLY,
            f"data.batch_size={b}",
            f"data.labeled_bs={b // 2}",
            f"model.embed_dim={c['dim']}",
        ],
    )
    run = setup(cfg)
    if c["variant"] == "public":
        if run.method.bank is not None:  # the public code's bank lives on the host
            run.objects.pop("bank")
            run.method.bank = None
        run.method.losses = dataclasses.replace(run.method.losses, contrast=public_contrast)
    run.method.student.train()
    train_one_iteration(run)  # warm-up: optimiser state, bank and queue filled, caches built
    gc.collect()
    # CUDA: the caching allocator's live bytes (the reserved pool above them is allocator slack)
    base, peak = peak_of(lambda: train_one_iteration(run), cuda)
    print(json.dumps({"extra_peak_bytes": max(0, peak - base), "persistent_bytes": persistent_bytes(run)}))


def _measure(cfg: dict) -> dict:
    env = {
        **os.environ,
        **({} if cfg["device"].startswith("cuda") else MEMORY_PASS_ENV),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_model", "--child", json.dumps(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory model step {cfg} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def features(b: int, s: int, d: int) -> list[float]:
    """The model's terms: 1, B S^2, B S^2 D, D."""
    return [1.0, float(b * s * s), float(b * s * s * d), float(d)]


def _lstsq(x, y):
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    scale = np.abs(x).max(0)  # the terms span 12 orders of magnitude: solve in scaled units
    coef, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
    return (coef / scale).tolist()


def fit(rows: list[dict]) -> list[float]:
    """Least-squares coefficients (a0, a1, a2, a3) of ``extra_peak_bytes`` over ``rows``."""
    return _lstsq([features(r["batch"], r["size"], r["dim"]) for r in rows], [r["extra_peak_bytes"] for r in rows])


def predict(coef: list[float], b: int, s: int, d: int) -> float:
    return sum(a * f for a, f in zip(coef, features(b, s, d)))


def key_tensor_bytes(num_classes: int, queries: int, negatives: int, dim: int) -> int:
    """fp32 bytes of the per-class ``[Q, 1 + M, D]`` key tensors of all classes (the reference's and the
    public code's materialised negatives)."""
    return 4 * num_classes * queries * (1 + negatives) * dim


def largest_batch(intercept: float, slope: float, persistent: float, budget: float) -> int:
    """The largest even batch (half labeled, half unlabeled) with ``persistent + intercept + slope B <= budget``."""
    if slope <= 0:
        raise ValueError(f"memory model: non-positive bytes per slice ({slope}); the measurements are inconsistent")
    b = int((budget - persistent - intercept) // slope)
    return max(0, b - b % 2)


def summarise(rows: list[dict], budget_gib: float, reserve_gib: float) -> list[dict]:
    """Fit the model, predict every point (``model_mb``, ``model_error``), one summary row per variant.

    ``ext``: the four-term formula fitted on the grid. ``reference`` / ``public``: the same step plus
    their materialised per-class keys, so ``ext``'s formula + ``e D`` with ``e`` fitted on the grid
    differences (a free four-term fit does not extrapolate for them: their peak is the larger of two
    phases, the activations and the loss's key tensors, not a sum). ``key_copies``: ``e D`` in units
    of :func:`key_tensor_bytes` (4 classes, 256 queries, 512 negatives)."""
    import numpy as np

    budget = (budget_gib - reserve_gib) * GIB
    ext_coef = fit([r for r in rows if r["variant"] == "ext" and r["kind"] == "grid"])
    ext_at = {(r["batch"], r["size"], r["dim"]): r["extra_peak_bytes"] for r in rows if r["variant"] == "ext"}
    summary = []
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in rows)]:
        mine = [r for r in rows if r["variant"] == variant]
        if variant == "ext":
            e = 0.0
        else:
            grid = [r for r in mine if r["kind"] == "grid"]
            e = _lstsq(
                [[r["dim"]] for r in grid],
                [r["extra_peak_bytes"] - ext_at[(r["batch"], r["size"], r["dim"])] for r in grid],
            )[0]
        for r in mine:
            r["model_mb"] = (predict(ext_coef, r["batch"], r["size"], r["dim"]) + e * r["dim"]) / 2**20
            r["model_error"] = r["model_mb"] / max(r["extra_peak_mb"], 1e-9) - 1
        d_rows = sorted((r for r in mine if r["kind"] == "direct"), key=lambda r: r["batch"])
        slope, intercept = np.polyfit([r["batch"] for r in d_rows], [r["extra_peak_bytes"] for r in d_rows], 1)
        persistent = d_rows[0]["persistent_bytes"]
        best = largest_batch(intercept, slope, persistent, budget)
        dim = d_rows[0]["dim"]
        summary.append(
            {
                "variant": variant,
                "a0_mb": ext_coef[0] / 2**20,
                "a1_bytes_per_pixel": ext_coef[1],
                "a2_maps": ext_coef[2] / 4,
                "a3_mb_per_dim": ext_coef[3] / 2**20,
                "e_mb_per_dim": e / 2**20,
                "key_copies": e * dim / key_tensor_bytes(4, 256, 512, dim),
                **{f"direct_b{r['batch']}_mb": r["extra_peak_mb"] for r in d_rows},
                **{f"model_b{r['batch']}_mb": r["model_mb"] for r in d_rows},
                "max_model_error": max(abs(r["model_error"]) for r in d_rows),
                "mb_per_slice": slope / 2**20,
                "intercept_mb": intercept / 2**20,
                "persistent_mb": persistent / 2**20,
                "largest_batch": best,
                "at_largest_gib": (persistent + intercept + slope * best) / GIB,
            }
        )
    return summary


def main() -> None:
    from benchmarks.harness import machine_info, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-gib", type=float, default=24.0, help="device memory (default 24 GiB)")
    ap.add_argument(
        "--reserve-gib",
        type=float,
        default=1.0,
        help="kept free for the CUDA context, cuDNN workspaces and allocator slack (default 1 GiB)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny grid, no 256 x 256 points")
    ap.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (max_memory_allocated)")
    ap.add_argument(
        "--amp",
        default="off",
        choices=("off", "bf16", "fp16"),
        help="the step's autocast (config amp; fp16 needs CUDA). Default off (fp32)",
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (ext is always measured: the others' "
        f"formula builds on it)",
    )
    ap.add_argument(
        "--from-points",
        default=None,
        metavar="JSON",
        help="refit and rewrite the summary from a *_points.json of an earlier run (no measuring)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(json.loads(args.child))
        return
    if args.from_points:
        saved = json.loads(Path(args.from_points).read_text())
        rows, meta = saved["points"], saved["machine"]
        grid = sorted({(r["batch"], r["size"], r["dim"]) for r in rows if r["kind"] == "grid"})
        direct = sorted({r["batch"] for r in rows if r["kind"] == "direct"})
        target = next((r["size"], r["dim"]) for r in rows if r["kind"] == "direct")
        quick = "_quick" in Path(args.from_points).name
    else:
        quick = args.quick
        if quick:
            grid = [(b, s, d) for s in (32, 48) for d in (8, 16) for b in (2, 4)]
            target, direct = (48, 16), [2, 4]
        else:
            grid = [(b, s, d) for s in (64, 128) for d in (32, 128) for b in (2, 4)]
            target, direct = (256, 512), [2, 4, 6]
        variants = [v for v in VARIANTS if v == "ext" or v in args.variants.split(",")]
        unknown = set(args.variants.split(",")) - set(VARIANTS)
        if unknown:
            raise SystemExit(f"memory_model: --variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
        rows = _measure_all(grid, target, direct, args.threads, args.device, args.amp, variants)
        meta = machine_info(args.device)
        meta["amp"] = args.amp
    meta.update(budget_gib=args.budget_gib, reserve_gib=args.reserve_gib, target_size=target[0], target_dim=target[1])
    summary = summarise(rows, args.budget_gib, args.reserve_gib)
    amp = meta.get("amp", "off")
    device = meta.get("device", "cpu")
    for r in summary:
        print(
            f"{r['variant']}: {r['mb_per_slice']:.0f} MB per slice, persistent {r['persistent_mb']:.0f} MB -> "
            f"largest batch {r['largest_batch']} in {args.budget_gib:g} GiB (reserve {args.reserve_gib:g} GiB); "
            f"formula off by at most {100 * r['max_model_error']:.1f} % at {target[0]} x {target[0]}, {target[1]}-d",
            flush=True,
        )
    name = f"memory_model_{device.split(':')[0]}" + (f"_{amp}" if amp != "off" else "") + ("_quick" if quick else "")
    s_, d_ = target
    b_cols = [(f"direct_b{b}_mb", f"B={b} measured MB") for b in direct]
    m_cols = [(f"model_b{b}_mb", f"B={b} formula MB") for b in direct]
    columns = (
        [("variant", "variant")]
        + b_cols
        + m_cols
        + [
            ("mb_per_slice", "MB per slice"),
            ("intercept_mb", "MB at B=0"),
            ("persistent_mb", "persistent MB"),
            ("key_copies", "[C,Q,1+M,D] key copies"),
            ("largest_batch", f"largest batch in {args.budget_gib:g} GiB"),
            ("at_largest_gib", "GiB at that batch"),
        ]
    )
    how = (
        "max_memory_allocated of the step above the allocated bytes before it"
        if device.startswith("cuda")
        else "extra peak RSS of the step on the CPU"
    )
    notes = (
        f"One stage-2 step (acdc_mona: every loss term, 256 queries x 512 negatives, 4 classes) at {s_} x {s_}, "
        f"{d_}-d embeddings, amp {amp}. Measured: {how} (fresh process per point). "
        f"Formula: ext = a0 + a1 B S^2 + a2 B S^2 D + a3 D fitted on the grid "
        f"{sorted({(s, d) for _, s, d in grid})} (S, D) x B {sorted({b for b, _, _ in grid})} "
        f"(a2 / 4 bytes = {summary[0]['a2_maps']:.2f} fp32-sized B x D x S^2 maps at the peak, a1 = "
        f"{summary[0]['a1_bytes_per_pixel']:.0f} bytes per pixel and slice); reference / public = the ext formula "
        f"+ e D (their materialised keys, in copies of the fp32 [C, Q, 1+M, D] key tensor). Largest batch: the "
        f"measured line in B + the persistent state (weights, gradients, momentum, teacher, bank, queue) <= "
        f"{args.budget_gib:g} - {args.reserve_gib:g} GiB. `python -m benchmarks.memory_model"
        f"{' --quick' if quick else ''}{f' --device {device}' if device != 'cpu' else ''}"
        f"{f' --amp {amp}' if amp != 'off' else ''}`. Every point: {name}_points.json."
    )
    path = write_results(name, summary, columns, meta, notes)
    raw = _write_points(name, {"machine": meta, "points": rows})
    print(f"-> {path}, {raw}")


def _measure_all(grid, target, direct, threads, device, amp, variants) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mona_memory_model_") as tmp:
        caches = {}
        for s in sorted({s for _, s, _ in grid} | {target[0]}):
            print(f"preparing phantom slices at {s} x {s} ...", flush=True)
            caches[s] = _make_cache(Path(tmp), s)
        points = [(b, s, d, "grid") for b, s, d in grid] + [(b, *target, "direct") for b in direct]
        for variant in variants:
            for b, s, d, kind in points:
                cfg = {
                    "variant": variant,
                    "batch": b,
                    "dim": d,
                    "cache": str(caches[s]),
                    "device": device,
                    "amp": amp,
                    "out": str(Path(tmp) / f"run_{variant}_{b}_{s}_{d}"),
                    "threads": threads,
                }
                m = _measure(cfg)
                rows.append(
                    {
                        "variant": variant,
                        "kind": kind,
                        "batch": b,
                        "size": s,
                        "dim": d,
                        **m,
                        "extra_peak_mb": m["extra_peak_bytes"] / 2**20,
                    }
                )
                print(f"  {variant:9s} B={b} S={s} D={d}: +{m['extra_peak_bytes'] / 2**20:.0f} MB", flush=True)
    return rows


def _write_points(name: str, data: dict) -> Path:
    """Every measured point, next to the summary (atomically: temporary file + rename)."""
    from benchmarks.harness import RESULTS

    path = RESULTS / f"{name}_points.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


if __name__ == "__main__":
    main()
