"""``torch.ops.mona.bank_push`` / ``torch.ops.mona.queue_push``: in-place ring-buffer pushes.

Kernels: ``csrc/bank/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.banks``.
The ``nn.Module`` wrappers (``ClassMemoryBank``, ``FeatureQueue``) live in ``mona_ext.banks``.

Representation (read by ``contrast_loss`` and any sampler):

* ``storage [C, K, D]`` (any float dtype), ``ptr [C]`` int64 = next slot to write,
  ``fill [C]`` int64 = filled slots (<= K). Slots form a ring per class: the newest entry of
  class ``c`` is at ``(ptr[c] - 1) mod K``; the filled slots are ``[0, fill[c])`` (the ring only
  starts to overwrite once it is full), so "a uniform negative of class v" is slot
  ``randint(0, fill[v])``.
* A push writes the selected keys of every class as if one by one in input order and never
  allocates storage or copies to the host.
"""

from __future__ import annotations

import torch


def bank_push(
    storage: torch.Tensor,
    ptr: torch.Tensor,
    fill: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor | None = None,
    cap: int | None = None,
    generator: torch.Generator | None = None,
    ignore_index: int = -1,
) -> None:
    """Push ``keys [M, D]`` with ``labels [M]`` into the class-aware bank, in place.

    Args:
        storage, ptr, fill: the bank state (see the module doc), updated in place.
        keys: ``[M, D]`` float (cast to the storage dtype); no gradient flows into the bank.
        labels: ``[M]`` int64/int32 in ``[0, C)`` or ``ignore_index`` (skipped).
        valid: optional ``[M]`` bool; False keys are skipped.
        cap: at most ``cap`` keys per class per push: a uniform random subset without replacement
            of that class's valid keys, of size ``min(cap, n_c)``, kept in input order.
            ``None``: every valid key is pushed (then for a class with more than K keys the last K
            in input order are kept).
        generator: the ``torch.Generator`` the subset is drawn from (on the keys' device):
            ``torch.rand(M, generator=generator)`` priorities, the top ``cap`` per class kept.
            Same generator state -> same subset on the same device.
    """
    priority = None
    cap_i = -1
    if cap is not None:
        cap_i = int(cap)
        priority = torch.rand(keys.shape[0], generator=generator, device=keys.device, dtype=torch.float32)
    torch.ops.mona.bank_push(storage, ptr, fill, keys.detach(), labels, valid, priority, cap_i, ignore_index)


def queue_push(queue: torch.Tensor, ptr: torch.Tensor, fill: torch.Tensor, keys: torch.Tensor) -> None:
    """Push ``keys [M, D]`` into the FIFO ``queue [K, D]`` (``ptr``/``fill`` are ``[1]`` int64), in place.

    The last ``min(M, K)`` keys are kept; the newest entry is at ``(ptr - 1) mod K``.
    """
    torch.ops.mona.queue_push(queue, ptr, fill, keys.detach())


@torch.library.register_fake("mona::bank_push")
def _bank_push_fake(storage, ptr, fill, keys, labels, valid=None, priority=None, cap=-1, ignore_index=-1):
    torch._check(storage.dim() == 3, lambda: "bank_push: storage must be [C, K, D]")
    torch._check(keys.dim() == 2, lambda: "bank_push: keys must be [M, D]")
    return None


@torch.library.register_fake("mona::queue_push")
def _queue_push_fake(queue, ptr, fill, keys):
    torch._check(queue.dim() == 2, lambda: "queue_push: queue must be [K, D]")
    torch._check(keys.dim() == 2, lambda: "queue_push: keys must be [M, D]")
    return None
