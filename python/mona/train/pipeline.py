"""Two-stage methods from one config: a pre-training stage, then the method initialised from it.

``method: mona`` (or ``bcp``) with ``pretrain_iterations: N > 0`` runs (``config.PRETRAIN_STAGES``)

1. stage 1, ``method: glcon`` (``bcp_pretrain``) for N iterations into ``<out_dir>/pretrain_glcon``
   (``pretrain_bcp``), with the same data, model, optimiser and augmentation settings;
2. stage 2, ``method: mona`` (``bcp``) into ``<out_dir>``, ``init_from: <stage 1 dir>/last.pt``.

``resume="auto"`` continues wherever the previous invocation stopped: a finished stage (its
``last.pt`` at its last iteration and its ``model.pt`` present) is skipped, an interrupted one is
resumed from its ``last.pt``, a stage never started starts. Any other config runs as one stage.
A fresh start checks the inputs (cache, labeled split, device, ``init_from``) before any stage creates
an output directory.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..errors import DataError
from . import distributed
from .checkpoint import load_checkpoint
from .config import PRETRAIN_STAGES, TrainConfig
from .loop import TrainResult, open_inputs, train

log = logging.getLogger("mona.train")


def stages(cfg: TrainConfig) -> list[TrainConfig]:
    """The configs of the stages ``cfg`` stands for (one, or stage 1 then ``cfg``'s method)."""
    if cfg.method not in PRETRAIN_STAGES or cfg.pretrain_iterations <= 0:
        return [cfg]
    method1, dir1 = PRETRAIN_STAGES[cfg.method]
    stage1_dir = Path(cfg.out_dir) / dir1
    stage1 = dataclasses.replace(
        cfg,
        method=method1,
        iterations=cfg.pretrain_iterations,
        out_dir=str(stage1_dir),
        pretrain_iterations=0,
        init_from=None,
    )
    stage2 = dataclasses.replace(cfg, pretrain_iterations=0, init_from=str(stage1_dir / "last.pt"))
    return [stage1, stage2]


def _stage_state(cfg: TrainConfig) -> str:
    """``done``, ``partial`` (a last.pt to resume from) or ``new``."""
    last = Path(cfg.out_dir) / "last.pt"
    if not last.exists():
        return "new"
    ck = load_checkpoint(last)
    if ck.get("method", "supervised") != cfg.method:
        raise DataError(
            f"{last}: written by method {ck.get('method')!r}, this stage is {cfg.method!r}; use another out_dir"
        )
    done = ck["iteration"] >= cfg.iterations and (Path(cfg.out_dir) / "model.pt").exists()
    return "done" if done else "partial"


def run(
    cfg: TrainConfig, *, resume: str | Path | None = None, progress: bool = True, resume_override: tuple[str, ...] = ()
) -> list[TrainResult]:
    """Train every stage of ``cfg``; ``resume``: None (start fresh), ``"auto"``, or a checkpoint path;
    ``resume_override``: config keys a resumed stage may change (else a changed config is refused).
    Holds the lock of ``cfg.out_dir`` throughout (a second run into it fails at once)."""
    plan = stages(cfg)
    if resume is None or (resume == "auto" and not Path(cfg.out_dir).exists()):
        # a fresh start: check every input of the run before any stage creates an output directory
        # (a resumed stage trains with its checkpoint's config, checked by setup)
        open_inputs(cfg, check_init_from=True)
    with distributed.locked_on_rank0(cfg.out_dir, "mona train"):  # rank 0 alone writes there
        return _run(plan, resume, progress, tuple(resume_override))


def _run(
    plan: list[TrainConfig], resume: str | Path | None, progress: bool, resume_override: tuple[str, ...]
) -> list[TrainResult]:
    results: list[TrainResult] = []
    explicit = None if resume in (None, "auto") else Path(resume)
    explicit_stage = None
    if explicit is not None:
        method = load_checkpoint(explicit).get("method", "supervised")
        matches = [i for i, s in enumerate(plan) if s.method == method]
        if not matches:
            raise DataError(
                f"--resume {explicit}: a {method!r} checkpoint, but this config trains {[s.method for s in plan]}"
            )
        explicit_stage = matches[0]
    for i, stage in enumerate(plan):
        label = f"stage {i + 1}/{len(plan)} ({stage.method})" if len(plan) > 1 else stage.method
        if explicit_stage is not None and i < explicit_stage:
            if _stage_state(stage) != "done":
                raise DataError(f"--resume {explicit}: the earlier {label} in {stage.out_dir} is not finished")
            continue
        resume_from: str | Path | None = None
        if explicit_stage == i:
            resume_from = explicit
        elif resume == "auto":
            state = _stage_state(stage)
            if state == "done":
                log.info("%s: finished earlier in %s, skipped", label, stage.out_dir)
                continue
            resume_from = Path(stage.out_dir) / "last.pt" if state == "partial" else None
        if len(plan) > 1:
            log.info("%s -> %s", label, stage.out_dir)
        results.append(
            train(
                stage,
                resume=resume_from,
                progress=progress,
                resume_override=resume_override if resume_from is not None else (),
            )
        )
    return results
