"""The generic training loop; the method (``supervised``, ``glcon``, ``mona``) is an object.

:func:`setup` builds a run (device, seeds, data, the method, the named stateful objects, logging)
and :func:`train_one_iteration` is one step: draw a labeled + unlabeled batch (sampler driven by a
checkpointed generator), ``method.step`` (forward + losses), backward, optimiser + schedule step,
``method.after_step`` (EMA teacher, bank / queue pushes). Every ``val_every`` iterations the student
is validated (volume Dice on the val split of the cache); the best mean foreground Dice is kept as
``best.pt``. ``last.pt`` is written every ``checkpoint_every`` iterations and at the end; ``--resume``
continues from it exactly (bit-identical on CPU): the checkpoint holds the state of every object in
one dictionary (``Run.objects``), which is also what a resume restores.

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

from ..data.dataset import SliceCache
from ..data.labeled import LabeledSplit, labeled_split
from ..data.sampler import LabeledUnlabeledSampler
from ..eval.metrics import dice
from ..models import MonaNet, build_model
from . import distributed
from .checkpoint import (FORMAT, atomic_torch_save, export_inference, load_checkpoint, model_meta, restore,
                         rng_state, set_rng_state, states_of, unet_state)
from .config import TrainConfig, config_from_dict
from .methods import METHOD_CLASSES, Batch, Method, RunContext

log = logging.getLogger("mona.train")


def select_device(spec: str) -> torch.device:
    """``auto``: CUDA if available, else CPU. An explicit ``cuda`` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


@dataclass
class TrainResult:
    out_dir: Path
    iteration: int
    losses: list[float] = field(default_factory=list)   # per iteration run in this call
    best_dice: float = float("nan")
    best_iteration: int = -1
    seconds: float = 0.0
    has_validation: bool = True             # False: no val patients, best.pt is the final model


@torch.no_grad()
def validate(model: MonaNet, cache: SliceCache, case_indices: list[int], device: torch.device,
             batch_size: int = 16) -> dict:
    """Volume Dice per foreground class on cached slices (prepared resolution). Returns
    ``{"mean_dice": float, "class_dice": [..per class 1..C-1..]}`` averaged over volumes."""
    was = model.training
    model.eval()
    per_class = []
    # under torchrun each rank segments its part of the volumes; the gathered list is in volume order
    env = distributed.current()
    for ci in distributed.shard(case_indices, env.rank, env.world_size):
        img, lab = cache.arrays(ci)
        pred = np.empty(lab.shape, np.int64)
        for z0 in range(0, img.shape[0], batch_size):
            x = torch.from_numpy(np.array(img[z0:z0 + batch_size]))[:, None].to(device)
            pred[z0:z0 + x.shape[0]] = model(x, with_heads=False).logits.argmax(1).cpu().numpy()
        per_class.append([dice(pred == c, np.asarray(lab) == c) for c in range(1, cache.num_classes)])
    model.train(was)
    arr = np.asarray(distributed.gather_lists(per_class))
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


class _NoLogger:
    """The logger of ranks other than 0 under torchrun: only rank 0 writes."""

    def write(self, kind: str, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


# keys a resumed run may change: the length of the run and bookkeeping, never what it computes
RESUMABLE_KEYS = ("iterations", "val_every", "log_every", "checkpoint_every", "out_dir", "device", "threads",
                  "distributed")


@dataclass
class Run:
    """Everything one training run holds. ``objects``: every stateful object by name, the single
    source of what a checkpoint saves and what a resume restores."""

    cfg: TrainConfig
    device: torch.device
    out: Path
    cache: SliceCache
    split: LabeledSplit
    method: Method
    sampler: LabeledUnlabeledSampler
    meta: dict
    val_cases: list[int]
    logger: "_Logger"
    objects: dict
    start: int = 0
    best: float = -1.0
    best_iteration: int = -1
    t0: float = field(default_factory=time.time)
    dist: distributed.DistEnv = field(default_factory=distributed.DistEnv)

    def checkpoint(self, it: int) -> dict:
        """The checkpoint of iteration ``it``. Under torchrun a collective (every rank's RNG and generator
        states are gathered into ``ranks``): call it on every rank, write it on rank 0."""
        ck = {"format": FORMAT, "iteration": it, "method": self.cfg.method, "config": self.cfg.to_dict(),
              "meta": self.meta, "objects": states_of(self.objects),
              "rng": rng_state(), "best_dice": self.best, "best_iteration": self.best_iteration,
              "labeled_patients": self.split.labeled_patients}
        if self.dist.enabled:
            ck.update(distributed.rank_states(self.objects, rng_state()))
        return ck


def _seed_everything(seed: int) -> None:
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def open_inputs(cfg: TrainConfig, *,
                check_init_from: bool = False) -> tuple[torch.device, SliceCache, LabeledSplit]:
    """Check and open what a run reads, writing nothing: the device, the cache, the labeled split (and
    that a semi-supervised method has unlabeled slices); ``check_init_from``: that ``init_from`` exists."""
    device = select_device(cfg.device)
    cache = SliceCache(cfg.data.cache)
    split = labeled_split(cache, labeled_patients=cfg.data.labeled_patients, labeled_ratio=cfg.data.labeled_ratio,
                          labeled_list=cfg.data.labeled_list)
    if cfg.method != "supervised" and not split.unlabeled:
        raise ValueError(f"method {cfg.method!r} needs unlabeled slices, but every train slice of {cache.root} is "
                         f"labeled ({split.description}); label fewer patients or use method: supervised")
    if check_init_from and cfg.init_from and not Path(cfg.init_from).exists():
        raise FileNotFoundError(f"init_from: checkpoint {cfg.init_from} does not exist")
    return device, cache, split


def setup(cfg: TrainConfig, *, resume: str | Path | None = None) -> Run:
    """Build the run: config (the checkpoint's on resume), device, data, method, objects, logs."""
    cfg.validate()
    ck = None
    if resume is not None:
        ck = load_checkpoint(resume)
        if ck["format"] != FORMAT:
            raise ValueError(f"--resume {resume}: {ck['format']} is not a resumable training checkpoint "
                             f"({FORMAT}); use the run's last.pt")
        saved = config_from_dict(ck["config"])
        for k in RESUMABLE_KEYS:  # the run is defined by the saved config
            setattr(saved, k, getattr(cfg, k))
        cfg = saved
        cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist_env, device = distributed.init(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    if ck is not None:
        distributed.check_resume(ck, dist_env, resume)
    _, cache, split = open_inputs(cfg)
    val_cases = cache.cases_of_patients(cache.splits["val"]) if cache.splits["val"] else []

    _seed_everything(cfg.seed)
    meta = model_meta(cache.num_classes, cache.class_names, cache.size, cache.manifest["normalisation"],
                      cfg.model.channels, cfg.model.dropout, cfg.model.embed_dim, cfg.model.rep_stride,
                      cache.manifest.get("label_values"))
    method = METHOD_CLASSES[cfg.method](RunContext(cfg, device, cache, split, meta, resuming=ck is not None,
                                                   dist=dist_env))
    if dist_env.rank > 0:
        _seed_everything(distributed.rank_seed(cfg.seed, 0, dist_env.rank))  # dropout differs per rank
    out = Path(cfg.out_dir)
    main = dist_env.is_main  # under torchrun only rank 0 writes
    if main:
        out.mkdir(parents=True, exist_ok=True)  # only now: every input (cache, split, init_from) has been read
    # every rank draws the same global batch and keeps its part (mona.train.distributed)
    sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
    labeled_bs = cfg.labeled_bs
    sampler = LabeledUnlabeledSampler(list(range(len(split.labeled))), list(range(len(split.unlabeled))),
                                      cfg.data.batch_size, labeled_bs, sample_gen, rank=dist_env.rank,
                                      world_size=dist_env.world_size)
    objects = {**method.stateful(), "sampler": sampler, "generator.sample": sample_gen}

    run = Run(cfg, device, out, cache, split, method, sampler, meta, val_cases, None, objects,  # type: ignore[arg-type]
              dist=dist_env)
    if ck is not None:
        restore(objects, ck["objects"], resume)
        set_rng_state(ck["rng"])
        if dist_env.enabled:
            set_rng_state(distributed.restore_rank_state(objects, ck, dist_env))
        run.start, run.best, run.best_iteration = ck["iteration"], ck["best_dice"], ck["best_iteration"]
        if main:
            _truncate_logs(out, run.start)
        log.info("resumed %s from %s at iteration %d", cfg.method, resume, run.start)
    elif main:
        for name in ("metrics.jsonl", "train_log.csv", "val_log.csv"):
            (out / name).unlink(missing_ok=True)
    if main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    run.logger = _Logger(out) if main else _NoLogger()  # type: ignore[assignment]
    log.info("%s: %s; batch %d (%d labeled + %d unlabeled)%s; device %s; impl %s; amp %s", cfg.method,
             split.description, cfg.data.batch_size, labeled_bs,
             cfg.data.batch_size - labeled_bs if cfg.method != "supervised" else 0,
             f" per process, {dist_env.world_size} processes" if dist_env.enabled else "", device, cfg.impl,
             method.amp_dtype or "off")
    return run


def next_batch(run: Run) -> Batch:
    lab_ids, unl_ids = run.sampler.next_batch()
    x_l, y_l = run.cache.load_batch([run.split.labeled[i] for i in lab_ids])
    if unl_ids:
        x_u, _ = run.cache.load_batch([run.split.unlabeled[i] for i in unl_ids])
    else:
        x_u = x_l.new_empty((0, *x_l.shape[1:]))
    dev = run.device
    return Batch(x_l.to(dev, non_blocking=True), y_l.to(dev, non_blocking=True), x_u.to(dev, non_blocking=True))


def train_one_iteration(run: Run) -> tuple[float, dict[str, float], float]:
    """One optimiser step. Returns (loss, parts, lr used)."""
    m = run.method
    loss, parts = m.step(next_batch(run))
    m.optimizer.zero_grad(set_to_none=True)
    m.scaler.scale(loss).backward()
    m.scaler.step(m.optimizer)
    m.scaler.update()
    lr = m.optimizer.param_groups[0]["lr"]
    m.scheduler.step()
    m.after_step()
    lv = float(loss.detach())
    if run.dist.enabled:  # the figures of the global batch: means over the ranks
        reduced = distributed.mean_over_ranks({"loss": lv, **{k: parts.get(k) for k in m.terms()}})
        lv = reduced.pop("loss")
        parts = {k: v for k, v in reduced.items() if v is not None}
    return lv, parts, lr


def _save(run: Run, ck: dict, name: str) -> None:
    if run.dist.is_main:
        atomic_torch_save(ck, run.out / name)


def train(cfg: TrainConfig, *, resume: str | Path | None = None, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Run (or resume) training with ``cfg.method``. ``stop_after``: stop once this iteration is reached,
    writing ``last.pt`` as an interruption would (for tests and time-boxed runs)."""
    from tqdm import tqdm

    run = setup(cfg, resume=resume)
    cfg = run.cfg
    result = TrainResult(run.out, run.start)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    run.method.student.train()
    main = run.dist.is_main
    bar = tqdm(total=cfg.iterations, initial=run.start, desc=f"train {cfg.method}", disable=not (progress and main),
               unit="it")
    it = run.start
    try:
        while it < end:
            lv, parts, lr = train_one_iteration(run)
            it += 1
            if not np.isfinite(lv):
                raise FloatingPointError(f"training diverged: loss {lv} at iteration {it} (terms: {parts})")
            result.losses.append(lv)
            bar.update(1)
            if it % cfg.log_every == 0 or it == end:
                # a fixed set of columns: a term not computed this step (e.g. L_nn before its queue
                # holds k entries) is logged as empty / null, never shifting the CSV columns
                terms = {k: parts.get(k) for k in run.method.terms()}
                run.logger.write("train", {"iteration": it, "loss": lv, **terms, "lr": lr,
                                           "elapsed_s": round(time.time() - run.t0, 2)})
                bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:.2e}")
            if run.val_cases and (it % cfg.val_every == 0 or it == cfg.iterations):
                v = validate(run.method.student, run.cache, run.val_cases, run.device)
                run.logger.write("val", {"iteration": it, **v})
                if v["mean_dice"] > run.best:  # the same decision on every rank (gathered Dice)
                    run.best, run.best_iteration = v["mean_dice"], it
                    _save(run, run.checkpoint(it), "best.pt")
                bar.set_postfix(loss=f"{lv:.4f}", val_dice=f"{v['mean_dice']:.3f}", best=f"{run.best:.3f}")
            if it % cfg.checkpoint_every == 0 or it == end:
                _save(run, run.checkpoint(it), "last.pt")
    finally:
        bar.close()
        run.logger.close()
    if it >= cfg.iterations:
        if not run.val_cases:
            if main:
                log.warning("no validation patients in %s: best.pt is the final model", run.cache.root)
            run.best_iteration = it
            _save(run, run.checkpoint(it), "best.pt")
        if main:
            best_model = build_model(run.meta)
            best_model.unet.load_state_dict(unet_state(load_checkpoint(run.out / "best.pt")))
            export_inference(best_model, run.meta, run.out / "model.pt")
    distributed.barrier()  # the other ranks go on (e.g. to stage 2, reading last.pt) once rank 0 has written
    result.iteration, result.best_dice, result.best_iteration = it, run.best, run.best_iteration
    result.has_validation = bool(run.val_cases)
    result.seconds = time.time() - run.t0
    return result
