"""Data-parallel training under ``torchrun``: one process per device, PyTorch's DDP.

``torchrun --nproc_per_node N -m mona train --config ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init` reads them and
joins the process group (NCCL on CUDA, gloo on the CPU, ``distributed.timeout_s`` on every
collective, so that a rank that died or hangs ends the job instead of blocking the others forever).
Without those variables (or with ``WORLD_SIZE=1``) nothing here does anything and a run is the
single-process run, bit for bit.

What every rank does, and why the ranks stay identical:

* **Data.** The batch sampler and GLCon's mined-view sampler draw from generators seeded with the
  config's seed alone, so every rank draws the same *global* batch (``world_size x`` the configured
  per-rank batch) and keeps its own contiguous part (:func:`shard`): the ranks see disjoint parts of
  every global batch, and rank order = the order of a single process drawing the global batch.
* **Randomness that must differ per rank** (augmentation, the contrastive sampler, bank-push
  priorities, dropout) comes from generators seeded with :func:`rank_seed` (``seed + offset`` on
  rank 0, the single-process value; another stream on every other rank).
* **Model.** The student is wrapped in ``DistributedDataParallel`` (gradients averaged over ranks,
  so the weights stay identical after every optimiser step); BatchNorm becomes synchronised
  (``distributed.sync_batchnorm``: statistics over the global batch; on CUDA torch's
  ``nn.SyncBatchNorm``, on the CPU :class:`SyncBatchNorm`, which torch's does not support); the EMA
  teacher is a copy of the (identical) student updated by the same rule on every rank; without
  synchronised BatchNorm the ranks' running statistics are averaged after every step
  (:func:`average_buffers`) so that teacher and student buffers stay identical too.
* **Banks and queues** (``mona_ext.ClassMemoryBank`` / ``FeatureQueue``) all-gather every push in
  rank order: every rank holds the same bank.
* **Metrics.** Training losses are averaged over ranks (:func:`mean_over_ranks`); validation
  volumes are split over ranks and their Dice gathered (:func:`gather_lists`), so the figures
  equal those of one process.
* **Files.** Only rank 0 writes logs, checkpoints, ``config.yaml`` and ``model.pt``. A checkpoint
  holds the per-rank state (RNG and generators) of every rank (:func:`gather_rank_states`); a
  resume needs the same world size (anything else is an error that says so).
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DataError, UsageError

log = logging.getLogger("mona.train")

# rank r > 0 draws its per-rank streams from seed + offset + RANK_SEED_STRIDE * r: far from the
# offsets (1..9) that separate a run's generators, so no two streams of any rank coincide
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def env_from_environment() -> DistEnv:
    """Rank, world size and local rank from torchrun's variables (absent: a single process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} / WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE (set by torchrun)")
    return DistEnv(rank, world, local)


def current() -> DistEnv:
    """The job as the initialised process group sees it (a single process if none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        env = env_from_environment()
        return DistEnv(dist.get_rank(), dist.get_world_size(), env.local_rank)
    return DistEnv()


def init(device_spec: str, backend: str = "auto", timeout_s: float = 600.0) -> tuple[DistEnv, torch.device]:
    """Join the process group if torchrun started this process; return (env, this rank's device).

    ``device_spec`` is the config's ``device``: under torchrun ``auto`` / ``cuda`` mean
    ``cuda:LOCAL_RANK`` (one GPU per process), ``cpu`` the CPU; ``cuda:N`` is an error (torchrun
    assigns the devices). Idempotent: a second call (the second stage of a two-stage run) reuses
    the group.
    """
    from .loop import select_device

    env = env_from_environment()
    if not env.enabled:
        return env, select_device(device_spec)
    if device_spec.startswith("cuda:"):
        raise UsageError(
            f"device {device_spec!r}: under torchrun every process uses cuda:LOCAL_RANK; "
            f"set device to auto, cuda or cpu"
        )
    if device_spec not in ("auto", "cuda", "cpu"):
        raise UsageError(f"device {device_spec!r}: under torchrun use auto, cuda or cpu")
    use_cuda = device_spec == "cuda" or (device_spec == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        if env.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={env.local_rank} but this machine has {torch.cuda.device_count()} "
                f"GPU(s): start at most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if chosen == "nccl" and device.type != "cuda":
        raise UsageError("distributed.backend 'nccl' needs CUDA devices; use gloo (or auto) on the CPU")
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise RuntimeError(
                f"a process group is already initialised with rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but RANK={env.rank} WORLD_SIZE={env.world_size}"
            )
        return env, device
    kwargs: dict[str, Any] = {"backend": chosen, "timeout": datetime.timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        kwargs["device_id"] = device  # NCCL: bind the communicator to this rank's GPU at once
    dist.init_process_group(**kwargs)
    if env.rank != 0:
        logging.getLogger("mona").setLevel(logging.WARNING)  # one copy of every info line: rank 0's
    log.info(
        "distributed: %d processes (%s), this is rank %d on %s; collective timeout %.0f s",
        env.world_size,
        chosen,
        env.rank,
        device,
        timeout_s,
    )
    return env, device


def shutdown() -> None:
    """Leave the process group (end of ``mona train``); nothing without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def rank_seed(seed: int, offset: int, rank: int) -> int:
    """The seed of a per-rank stream: ``seed + offset`` on rank 0 (= a single process), distinct on others."""
    return seed + offset + RANK_SEED_STRIDE * rank


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous part of ``items`` (sizes differ by at most one; rank order = item order)."""
    n = len(items)
    start, stop = n * rank // world_size, n * (rank + 1) // world_size
    return list(items[start:stop])


# ---------------------------------------------------------------------------------------------
# collectives on small host values


def mean_over_ranks(values: dict[str, float | None]) -> dict[str, float | None]:
    """Per key, the mean over the ranks that report a value (None: not computed on that rank).

    Every rank must pass the same keys (one all-reduce of a ``[2, K]`` float64 tensor)."""
    env = current()
    if not env.enabled or not values:
        return dict(values)
    keys = list(values)
    t = torch.zeros(2, len(keys), dtype=torch.float64)
    for i, k in enumerate(keys):
        if values[k] is not None:
            t[0, i], t[1, i] = float(values[k]), 1.0
    t = _all_reduce_host(t)
    return {k: (float(t[0, i] / t[1, i]) if t[1, i] > 0 else None) for i, k in enumerate(keys)}


def _all_reduce_host(t: torch.Tensor) -> torch.Tensor:
    """SUM all-reduce of a small CPU tensor, through the device NCCL needs."""
    dev = _collective_device()
    out = t.to(dev)
    dist.all_reduce(out)
    return out.cpu()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_lists(items: list) -> list:
    """The concatenation of every rank's ``items`` (picklable), in rank order, on every rank."""
    env = current()
    if not env.enabled:
        return list(items)
    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, list(items))
    return [x for p in parts for x in p]


def gather_rank_states(state: Any) -> list[Any]:
    """Every rank's ``state`` (picklable), as a list indexed by rank, on every rank."""
    env = current()
    if not env.enabled:
        return [state]
    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, state)
    return parts


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on at least one (a non-finite loss somewhere: every rank
    skips that step)."""
    if not current().enabled:
        return flag
    return bool(_all_reduce_host(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64))[0] > 0)


def locked_on_rank0(path: Any, what: str):
    """The output directory's lock (:func:`mona.lockfile.locked`) on rank 0, which alone writes there;
    nothing on the other ranks (read before the process group exists: torchrun's RANK)."""
    import contextlib

    from ..lockfile import locked

    return locked(path, what) if env_from_environment().rank == 0 else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# checkpoints


def rank_states(objects: dict[str, Any], rng: dict) -> dict:
    """The per-rank part of a checkpoint (a collective: call on every rank): ``{"world_size": W,
    "ranks": [{"rng": .., "generators": {name: state}} for each rank]}``. The generators are the
    ones with per-rank streams (and the shared ones, which are small and equal)."""
    mine = {
        "rng": rng,
        "generators": {name: obj.get_state() for name, obj in objects.items() if isinstance(obj, torch.Generator)},
    }
    return {"world_size": current().world_size, "ranks": gather_rank_states(mine)}


def check_resume(ck: dict, env: DistEnv, source: Any) -> None:
    """A checkpoint resumes only with the world size that wrote it: the sampler's shards, the
    per-rank random streams and the global batch all depend on it."""
    saved = int(ck.get("world_size", 1))
    if saved != env.world_size:
        raise UsageError(
            f"--resume {source}: written by a run of {saved} process(es), this run has "
            f"{env.world_size}; resume with the same number (torchrun --nnodes x --nproc_per_node "
            f"= {saved}), or start a new run from its weights with init_from={source}"
        )


def restore_rank_state(objects: dict[str, Any], ck: dict, env: DistEnv) -> dict:
    """Load this rank's generators from ``ck["ranks"]``; returns this rank's global RNG state."""
    mine = ck["ranks"][env.rank]
    for name, state in mine["generators"].items():
        if name not in objects or not isinstance(objects[name], torch.Generator):
            raise DataError(f"checkpoint: rank {env.rank}'s generator {name!r} is not a generator of this run")
        objects[name].set_state(state)
    return mine["rng"]


# ---------------------------------------------------------------------------------------------
# modules


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank."""
    if not current().enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Mean over ranks of the floating buffers (BatchNorm running statistics) of ``module``."""
    env = current()
    if not env.enabled:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(env.world_size)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable SUM all-reduce: the gradient of every rank's input is the sum of every rank's
    output gradient (each rank's loss depends on every rank's statistics)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on any device (torch's ``nn.SyncBatchNorm`` refuses CPU tensors).

    Training mode under an initialised process group: the mean is ``sum(x) / N`` and the biased
    variance ``sum((x - mean)^2) / N`` over every rank's ``[B, C, *]`` input (two differentiable
    all-reduces; the two-pass variance keeps fp32 accuracy), the running statistics use the
    unbiased variance, as ``nn.BatchNorm``. Otherwise (eval mode, one process) it is
    ``nn.BatchNorm``. The state dict is that of ``nn.BatchNorm{1,2}d``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2-D input [B, C, ...], got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        n_local = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        s = _AllReduceSum.apply(torch.cat([x.sum(dims), n_local]))
        n = s[-1]
        mean = s[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        # the output keeps the input's dtype and memory format (channels-last stays channels-last)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every ``nn.BatchNorm{1,2,3}d`` of ``module`` as a synchronised BatchNorm: torch's
    ``nn.SyncBatchNorm`` on CUDA, :class:`SyncBatchNorm` elsewhere (weights and buffers kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=None,
            dtype=None,
        )
        out.load_state_dict(module.state_dict())
        out = out.to(next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


class _Call(nn.Module):
    """What DDP wraps: ``forward(fn, *args)`` runs ``fn(model, *args)``, so that every use of the
    student in a step (two forward passes for L_eqv, the local head on crops of a decoder map) is
    one DDP forward, as DDP requires (one forward per backward, parameters used inside it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (through :class:`_Call`); broadcasts rank 0's state.

    ``find_unused_parameters``: a method whose loss skips some heads in some steps (MONA's L_nn
    before its queue holds k entries, a zero loss weight) must set it."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(
        _Call(model),
        device_ids=ids,
        output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )
