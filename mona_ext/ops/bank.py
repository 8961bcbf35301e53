"""``torch.ops.mona.bank_push`` / ``torch.ops.mona.queue_push``: in-place ring-buffer pushes.

Kernels: ``csrc/bank/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.banks``.
The ``nn.Module`` wrappers (``ClassMemoryBank``, ``FeatureQueue``) live in ``mona_ext.banks``.

Representation (read by ``contrast_loss`` and any sampler):

* ``storage [C, K, D]`` (any float dtype), ``ptr [C]`` int64 = the next slot written,
  ``fill [C]`` int64 = the number of filled slots (<= K). Slots form a ring per class: the newest key
  of class ``c`` is at ``(ptr[c] - 1) mod K``; the filled slots are ``[0, fill[c])`` (the ring only
  starts to overwrite once it is full), so "a uniform negative of class v" is slot
  ``randint(0, fill[v])``.
* A push writes the selected keys of every class as if one by one in input order and never
  allocates storage or copies to the host.
"""

from __future__ import annotations

import torch

from ._common import check, shape_str


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

    The last ``min(M, K)`` keys are kept; the newest key is at ``(ptr - 1) mod K``.
    """
    torch.ops.mona.queue_push(queue, ptr, fill, keys.detach())


def _check_state(op, name, storage, ptr, fill, C):
    """The shape checks of ``bank_checks::check_state`` / ``check_keys`` (csrc/bank/bank_checks.h)."""
    check(storage.shape[-2] > 0, op, lambda: f"{name} must have K > 0 slots, got shape {shape_str(storage)}")
    check(
        ptr.numel() == C and fill.numel() == C,
        op,
        lambda: (
            f"ptr and fill must be contiguous with {C} element(s), got shapes {shape_str(ptr)} and {shape_str(fill)}"
        ),
    )


def _check_keys(op, storage, keys):
    D = storage.shape[-1]
    check(
        keys.dim() == 2 and keys.shape[1] == D,
        op,
        lambda: f"keys must be [M, D] with D = {D}, got shape {shape_str(keys)}",
    )


@torch.library.register_fake("mona::bank_push")
def _bank_push_fake(storage, ptr, fill, keys, labels, valid=None, priority=None, cap=-1, ignore_index=-1):
    op = "bank_push"
    check(storage.dim() == 3, op, lambda: f"storage must be [C, K, D], got shape {shape_str(storage)}")
    _check_state(op, "storage", storage, ptr, fill, storage.shape[0])
    _check_keys(op, storage, keys)
    M = keys.shape[0]
    check(
        labels.dim() == 1 and labels.shape[0] == M,
        op,
        lambda: f"labels must be [M] = [{M}] to match keys, got shape {shape_str(labels)}",
    )
    if valid is not None:
        check(
            valid.dim() == 1 and valid.shape[0] == M,
            op,
            lambda: f"valid must be [M] = [{M}], got shape {shape_str(valid)}",
        )
    check(cap >= -1, op, lambda: f"cap must be -1 (no cap) or >= 0, got {cap}")
    if cap >= 0:
        check(
            priority is not None,
            op,
            lambda: f"cap={cap} needs a priority tensor (the random subset is the cap keys of highest priority)",
        )
    if priority is not None:
        check(
            priority.dim() == 1 and priority.shape[0] == M,
            op,
            lambda: f"priority must be [M] = [{M}], got shape {shape_str(priority)}",
        )
    return None


@torch.library.register_fake("mona::queue_push")
def _queue_push_fake(queue, ptr, fill, keys):
    op = "queue_push"
    check(queue.dim() == 2, op, lambda: f"queue must be [K, D], got shape {shape_str(queue)}")
    _check_state(op, "queue", queue, ptr, fill, 1)
    _check_keys(op, queue, keys)
    return None
