"""The supervised training loop (the paper's UNet-L / UNet-F baseline).

Each iteration draws a batch of labeled slices (sampler driven by a checkpointed generator),
applies the weak augmentation on the device, and takes an SGD step on Dice + CE. Every
``val_every`` iterations the model is validated (volume Dice on the val split of the cache);
the best mean foreground Dice is kept as ``best.pt``. ``last.pt`` is written every
``checkpoint_every`` iterations and at the end; ``--resume`` continues from it exactly.

Outputs in ``out_dir``: ``config.yaml``, ``metrics.jsonl`` (train and val records), ``train_log.csv``,
``val_log.csv``, ``last.pt``, ``best.pt``, ``model.pt`` (inference weights), TensorBoard events
if ``tensorboard`` is installed.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from ..augment import weak
from ..data.dataset import SliceCache
from ..data.sampler import LabeledUnlabeledSampler
from ..data.splits import labeled_unlabeled
from ..eval.metrics import dice
from ..models import MonaNet
from .checkpoint import (FORMAT, atomic_torch_save, export_inference, load_checkpoint, model_meta, rng_state,
                         set_rng_state)
from .config import TrainConfig, config_from_dict
from .losses import supervised_loss

log = logging.getLogger("mona.train")


def select_device(spec: str) -> torch.device:
    """``auto``: CUDA if available, else CPU. An explicit ``cuda`` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    o = cfg.optim
    if o.schedule == "step":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: o.gamma ** (it // o.step_size))
    total = cfg.iterations
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1 - it / total) ** o.poly_power)


@dataclass
class TrainResult:
    out_dir: Path
    iteration: int
    losses: list[float] = field(default_factory=list)   # per iteration run in this call
    best_dice: float = float("nan")
    best_iteration: int = -1
    seconds: float = 0.0


@torch.no_grad()
def validate(model: MonaNet, cache: SliceCache, case_indices: list[int], device: torch.device,
             batch_size: int = 16) -> dict:
    """Volume Dice per foreground class on cached slices (prepared resolution). Returns
    ``{"mean_dice": float, "class_dice": [..per class 1..C-1..]}`` averaged over volumes."""
    was = model.training
    model.eval()
    per_class = []
    for ci in case_indices:
        img, lab = cache.arrays(ci)
        pred = np.empty(lab.shape, np.int64)
        for z0 in range(0, img.shape[0], batch_size):
            x = torch.from_numpy(np.array(img[z0:z0 + batch_size]))[:, None].to(device)
            pred[z0:z0 + x.shape[0]] = model(x, with_heads=False).logits.argmax(1).cpu().numpy()
        per_class.append([dice(pred == c, np.asarray(lab) == c) for c in range(1, cache.num_classes)])
    model.train(was)
    arr = np.asarray(per_class)
    return {"mean_dice": float(arr.mean()), "class_dice": arr.mean(0).tolist()}


def _truncate_logs(out: Path, iteration: int) -> None:
    """On resume: drop log records beyond the checkpoint's iteration (they will be redone)."""
    jl = out / "metrics.jsonl"
    if jl.exists():
        keep = [l for l in jl.read_text().splitlines() if l.strip() and json.loads(l)["iteration"] <= iteration]
        jl.write_text("".join(l + "\n" for l in keep))
    for name in ("train_log.csv", "val_log.csv"):
        p = out / name
        if p.exists():
            rows = list(csv.reader(p.open()))
            if rows:
                keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= iteration]
                with p.open("w", newline="") as fh:
                    csv.writer(fh).writerows(keep)


class _Logger:
    def __init__(self, out: Path):
        self.out = out
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            log.info("tensorboard is not installed: metrics go to metrics.jsonl and CSV only")

    def write(self, kind: str, record: dict) -> None:
        with (self.out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"kind": kind, **record}) + "\n")
        path = self.out / f"{kind}_log.csv"
        new = not path.exists()
        flat = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in record.items()}
        with path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(list(flat))
            w.writerow(list(flat.values()))
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iteration":
                    self.tb.add_scalar(f"{kind}/{k}", v, record["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(cfg: TrainConfig, *, resume: str | Path | None = None, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Run (or resume) supervised training. ``stop_after``: stop once this iteration is reached,
    writing ``last.pt`` as an interruption would (for tests and time-boxed runs)."""
    from tqdm import tqdm

    cfg.validate()
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = SliceCache(cfg.data.cache)

    ck = None
    if resume is not None:
        ck = load_checkpoint(resume)
        if ck["format"] != FORMAT:
            raise ValueError(f"--resume {resume}: an exported inference model cannot be resumed; use last.pt")
        saved = config_from_dict(ck["config"])
        # the run is defined by the saved config; only the length and bookkeeping may change
        for k in ("iterations", "val_every", "log_every", "checkpoint_every", "out_dir", "device", "threads"):
            setattr(saved, k, getattr(cfg, k))
        cfg = saved

    train_patients = cache.splits["train"]
    if not train_patients:
        raise ValueError(f"{cache.root}: the train split is empty")
    labeled_p, _unlabeled_p = labeled_unlabeled(train_patients, labeled_patients=cfg.data.labeled_patients,
                                                labeled_ratio=cfg.data.labeled_ratio)
    slices = cache.slice_refs(cache.cases_of_patients(labeled_p))
    val_cases = cache.cases_of_patients(cache.splits["val"]) if cache.splits["val"] else []
    labeled_bs = cfg.data.labeled_bs or cfg.data.batch_size

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    import random
    random.seed(cfg.seed)
    model = MonaNet(cache.num_classes, channels=cfg.model.channels, dropout=cfg.model.dropout,
                    heads=cfg.model.heads).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    sched = make_scheduler(opt, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
    sampler = LabeledUnlabeledSampler(list(range(len(slices))), [], labeled_bs, labeled_bs, sample_gen)
    meta = model_meta(cache.num_classes, cache.class_names, cache.size,
                      cache.manifest["normalisation"], cfg.model.channels, cfg.model.dropout)
    meta["label_values"] = cache.manifest.get("label_values")

    start, best, best_it = 0, -1.0, -1
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        sample_gen.set_state(ck["generators"]["sample"])
        aug_gen.set_state(ck["generators"]["augment"])
        sampler.load_state_dict(ck["sampler"])
        set_rng_state(ck["rng"])
        start, best, best_it = ck["iteration"], ck["best_dice"], ck["best_iteration"]
        _truncate_logs(out, start)
        log.info("resumed from %s at iteration %d", resume, start)
    else:
        for name in ("metrics.jsonl", "train_log.csv", "val_log.csv"):
            (out / name).unlink(missing_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logger = _Logger(out)

    def state(it: int) -> dict:
        return {"format": FORMAT, "iteration": it, "config": cfg.to_dict(), "meta": meta,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(),
                "generators": {"sample": sample_gen.get_state(), "augment": aug_gen.get_state()},
                "sampler": sampler.state_dict(), "best_dice": best, "best_iteration": best_it,
                "labeled_patients": labeled_p}

    result = TrainResult(out, start)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    model.train()
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", disable=not progress, unit="it")
    it = start
    try:
        while it < end:
            ids, _ = sampler.next_batch()
            x, y = cache.load_batch([slices[i] for i in ids])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, y = weak(x, y, aug_gen, cfg.augment)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x, with_heads=False).logits
            loss, parts = supervised_loss(logits, y, cfg.dice_weight, cfg.ce_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            it += 1
            lv = float(loss.detach())
            if not np.isfinite(lv):
                raise FloatingPointError(f"training diverged: loss {lv} at iteration {it}")
            result.losses.append(lv)
            bar.update(1)
            if it % cfg.log_every == 0 or it == end:
                logger.write("train", {"iteration": it, "loss": lv, **parts, "lr": lr,
                                       "elapsed_s": round(time.time() - t0, 2)})
                bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:.2e}")
            if val_cases and (it % cfg.val_every == 0 or it == cfg.iterations):
                v = validate(model, cache, val_cases, device)
                logger.write("val", {"iteration": it, **v})
                if v["mean_dice"] > best:
                    best, best_it = v["mean_dice"], it
                    atomic_torch_save(state(it), out / "best.pt")
                bar.set_postfix(loss=f"{lv:.4f}", val_dice=f"{v['mean_dice']:.3f}", best=f"{best:.3f}")
            if it % cfg.checkpoint_every == 0 or it == end:
                atomic_torch_save(state(it), out / "last.pt")
    finally:
        bar.close()
        logger.close()
    if it >= cfg.iterations:
        if not val_cases:
            log.warning("no validation patients in %s: best.pt is the final model", cache.root)
            best_it = it
            atomic_torch_save(state(it), out / "best.pt")
        best_ck = load_checkpoint(out / "best.pt")
        best_model = MonaNet(cache.num_classes, channels=cfg.model.channels, dropout=cfg.model.dropout,
                             heads=cfg.model.heads)
        best_model.load_state_dict(best_ck["model"])
        export_inference(best_model, meta, out / "model.pt")
    result.iteration, result.best_dice, result.best_iteration = it, best, best_it
    result.seconds = time.time() - t0
    return result
