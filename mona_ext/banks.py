"""Device-resident memory banks as ``nn.Module`` buffers: ``ClassMemoryBank`` and ``FeatureQueue``.

Both are ring buffers updated in place by ``torch.ops.mona.bank_push`` / ``queue_push``: they never
grow, never copy to the host in a push (outside ``torch.distributed``, see below), move with
``.to(device)`` and save / load with ``state_dict``.

Names (the same in ``mona_ext.ops.bank``, ``mona_ext.reference.banks`` and the op schemas): a *key* is
one stored ``D``-vector, a *slot* one place for a key; ``storage`` (``queue`` for ``FeatureQueue``)
holds the slots, ``size`` = K slots (per class), ``dim`` = D, ``ptr`` = the next slot written (the
newest key is at ``(ptr - 1) % K``), ``fill`` = the number of filled slots, always the prefix
``[0, fill)``. The buffer names are the ``state_dict`` keys of saved training runs.

Under ``torch.distributed`` (initialised, world size > 1, ``sync_distributed=True``) a push first
gathers keys, labels, validity and the random priorities of every rank (``all_gather``, rank order)
and then every rank pushes the same concatenation, so all ranks hold the same bank. Ranks may pass
different numbers of keys: the sizes are exchanged first and the keys padded to the largest, which
costs one small host sync per push (only in the distributed case).
"""

from __future__ import annotations

import torch
from torch import nn

_UNSET = object()


def _distributed(group) -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _all_gather_padded(tensors: list[torch.Tensor], pad_values: list, group) -> list[torch.Tensor]:
    """all_gather tensors sharing dim 0 of size M (possibly different per rank); returns the
    concatenation in rank order, padding rows included (callers mark them invalid)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    m = torch.tensor([tensors[0].shape[0]], device=tensors[0].device, dtype=torch.int64)
    sizes = [torch.zeros_like(m) for _ in range(world)]
    dist.all_gather(sizes, m, group=group)
    max_m = int(torch.stack(sizes).max())  # host sync: only under torch.distributed
    out = []
    for t, pad in zip(tensors, pad_values):
        padded = t.new_full((max_m, *t.shape[1:]), pad)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        out.append(torch.cat(parts, 0))
    return out


class ClassMemoryBank(nn.Module):
    """Class-aware FIFO memory bank: ``K`` keys of dimension ``D`` per class, on the device.

    Buffers (read them directly, e.g. from a negative sampler):
        storage ``[C, K, D]``: slot ``s`` of class ``c`` is ``storage[c, s]``;
        ptr ``[C]`` int64: the next slot written (the newest key is at ``(ptr[c] - 1) % K``);
        fill ``[C]`` int64: the number of filled slots, always the prefix ``[0, fill[c])``.

    Args:
        num_classes, size, dim: C, K, D.
        dtype, device: of ``storage``.
        cap_per_push: default ``cap`` of ``push`` (None: push every valid key).
        sync_distributed: gather keys from all ranks before pushing (see module doc).
        process_group: the group to gather over (default: the world).
    """

    def __init__(
        self,
        num_classes: int,
        size: int,
        dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        cap_per_push: int | None = None,
        sync_distributed: bool = True,
        process_group=None,
    ):
        super().__init__()
        if num_classes <= 0 or size <= 0 or dim < 0:
            raise ValueError(
                f"ClassMemoryBank: need num_classes > 0, size > 0, dim >= 0; got "
                f"num_classes={num_classes}, size={size}, dim={dim}"
            )
        self.num_classes, self.size, self.dim = num_classes, size, dim
        self.cap_per_push = cap_per_push
        self.sync_distributed = sync_distributed
        self.process_group = process_group
        self.register_buffer("storage", torch.zeros(num_classes, size, dim, dtype=dtype, device=device))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.int64, device=device))
        self.register_buffer("fill", torch.zeros(num_classes, dtype=torch.int64, device=device))

    @torch.no_grad()
    def push(
        self,
        keys: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor | None = None,
        cap=_UNSET,
        generator: torch.Generator | None = None,
        ignore_index: int = -1,
    ) -> None:
        """Push ``keys [M, D]`` (detached, cast to the bank dtype) with ``labels [M]``.

        ``valid [M]`` bool optionally masks keys out; ``cap`` (default ``cap_per_push``) keeps at most
        that many keys per class, a uniform random subset drawn from ``generator``; for a class with
        more than K selected keys the last K (input order) are kept. Labels equal to
        ``ignore_index`` are skipped; any other label outside ``[0, C)`` is an error.
        """
        cap = self.cap_per_push if cap is _UNSET else cap
        cap_i = -1 if cap is None else int(cap)
        keys = keys.detach()
        priority = None
        if cap_i >= 0:
            priority = torch.rand(keys.shape[0], generator=generator, device=keys.device, dtype=torch.float32)
        if self.sync_distributed and _distributed(self.process_group):
            if valid is None:
                valid = torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device)
            tensors = [keys.to(self.storage.dtype), labels, valid] + ([priority] if priority is not None else [])
            pads = [0, ignore_index, False] + ([0.0] if priority is not None else [])
            gathered = _all_gather_padded(tensors, pads, self.process_group)
            keys, labels, valid = gathered[:3]
            priority = gathered[3] if priority is not None else None
        torch.ops.mona.bank_push(self.storage, self.ptr, self.fill, keys, labels, valid, priority, cap_i, ignore_index)

    def sample(
        self, classes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One key per entry of ``classes`` (int64, any shape), uniform over the class's filled slots.

        Returns ``(keys [*classes.shape, D], available [*classes.shape] bool)``; where the class has no
        filled slot ``available`` is False and the key is zeros. No host sync.
        """
        classes = classes.long()
        n = self.fill[classes]
        u = torch.rand(classes.shape, generator=generator, device=self.storage.device)
        slot = torch.minimum((u * n).long(), (n - 1).clamp_min(0))
        keys = self.storage[classes, slot]
        available = n > 0
        return keys * available.unsqueeze(-1).to(keys.dtype), available

    def class_keys(self, c: int) -> torch.Tensor:
        """The keys of class ``c`` oldest first, ``[fill[c], D]`` (host sync: for inspection)."""
        n, p = int(self.fill[c]), int(self.ptr[c])
        order = [(p - n + i) % self.size for i in range(n)]
        return self.storage[c, order]

    @torch.no_grad()
    def reset(self) -> None:
        self.storage.zero_()
        self.ptr.zero_()
        self.fill.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, size={self.size}, dim={self.dim}, dtype={self.storage.dtype}, "
            f"cap_per_push={self.cap_per_push}"
        )


class FeatureQueue(nn.Module):
    """FIFO queue of ``size`` keys of dimension ``dim`` (embeddings: GLCon mined views, the L_nn queue).

    Buffers: ``queue [K, D]``, ``ptr [1]`` int64 (the next slot written; the newest key is at
    ``(ptr - 1) % K``), ``fill [1]`` int64 (the number of filled slots, the prefix ``[0, fill)``).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        sync_distributed: bool = True,
        process_group=None,
    ):
        super().__init__()
        if size <= 0 or dim < 0:
            raise ValueError(f"FeatureQueue: need size > 0 and dim >= 0; got size={size}, dim={dim}")
        self.size, self.dim = size, dim
        self.sync_distributed = sync_distributed
        self.process_group = process_group
        self.register_buffer("queue", torch.zeros(size, dim, dtype=dtype, device=device))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.int64, device=device))
        self.register_buffer("fill", torch.zeros(1, dtype=torch.int64, device=device))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Append ``keys [M, D]`` (detached) in order; the last ``min(M, K)`` are kept."""
        keys = keys.detach()
        if self.sync_distributed and _distributed(self.process_group):
            valid = torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device)
            keys, valid = _all_gather_padded([keys.to(self.queue.dtype), valid], [0, False], self.process_group)
            keys = keys[valid]  # host sync (distributed only): padding rows dropped
        torch.ops.mona.queue_push(self.queue, self.ptr, self.fill, keys)

    def filled(self) -> torch.Tensor:
        """The keys in the filled slots, ``queue[:fill]`` (slot order; host sync to read ``fill``)."""
        return self.queue[: int(self.fill)]

    def ordered(self) -> torch.Tensor:
        """The keys oldest first (host sync: for inspection)."""
        n, p = int(self.fill), int(self.ptr)
        return self.queue[[(p - n + i) % self.size for i in range(n)]]

    def is_full(self) -> bool:
        return int(self.fill) == self.size

    @torch.no_grad()
    def reset(self) -> None:
        self.queue.zero_()
        self.ptr.zero_()
        self.fill.zero_()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, dtype={self.queue.dtype}"
