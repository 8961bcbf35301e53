"""Per-class sums averaged over steps, the state that pseudo-label statistics share
(:class:`~mona.train.thresholds.AdaptiveClassThresholds`, :class:`~mona.train.alignment.DistributionAlignment`).

Sums, not per-step ratios, are averaged (a step with a handful of tail-class pixels moves a ratio
little); they are summed over the ranks under torchrun first, so every rank holds the same state; the
buffers follow the sums' device, and nothing syncs with the host.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class ClassSumsEMA:
    """EMA (``momentum`` per step) of per-class sums, one float64 ``[C]`` buffer per name in ``names``
    (the attributes and the state-dict keys); ``what`` prefixes the state errors."""

    names: tuple[str, ...] = ()
    what: str = "class sums"

    def __init__(self, num_classes: int, momentum: float):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes, self.momentum = num_classes, momentum
        for name in self.names:
            setattr(self, name, torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def accumulate(self, **sums: torch.Tensor) -> None:
        """One step's float64 ``[C]`` sums, one per name, summed over the ranks, into the EMA."""
        step = torch.stack([sums[n] for n in self.names])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(step)
        m = self.momentum
        for name, value in zip(self.names, step.unbind(0)):
            buf = getattr(self, name)
            if buf.device != value.device:
                buf = buf.to(value.device)
                setattr(self, name, buf)
            buf.mul_(m).add_(value, alpha=1 - m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).cpu().clone() for name in self.names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.names:
            v = state[name]
            if v.shape != (self.num_classes,):
                raise ValueError(f"{self.what}: {name} has shape {tuple(v.shape)}, expected ({self.num_classes},)")
            getattr(self, name).copy_(v.to(getattr(self, name).device))
