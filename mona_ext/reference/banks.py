"""Pure-Python models of the ring-buffer pushes: per-class ``collections.deque(maxlen=K)``.

A push appends the selected keys of each class in input order to that class's deque; the
bank state (``storage``/``ptr``/``fill``) that ``mona.bank_push`` maintains is reconstructed
from the deques by ``ring_state`` (slot of the i-th oldest key = (ptr - fill + i) mod K).
"""

from __future__ import annotations

from collections import deque

import torch


class DequeBank:
    """Reference model of ``ClassMemoryBank``: one ``deque(maxlen=size)`` of keys per class.

    ``num_classes``, ``size``, ``dim``: C, K, D, as for ``ClassMemoryBank``.
    """

    def __init__(self, num_classes: int, size: int, dim: int, dtype: torch.dtype = torch.float32):
        self.num_classes, self.size, self.dim, self.dtype = num_classes, size, dim, dtype
        self.keys = [deque(maxlen=size) for _ in range(num_classes)]  # the kept keys of each class, oldest first
        self.pushed = [0] * num_classes  # keys ever pushed per class: ptr = pushed mod K

    def push(
        self,
        keys: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor | None = None,
        priority: torch.Tensor | None = None,
        cap: int | None = None,
        ignore_index: int = -1,
    ) -> None:
        keys = keys.detach().cpu().to(self.dtype)
        labels = labels.cpu().tolist()
        valid_l = valid.cpu().tolist() if valid is not None else [True] * len(labels)
        for c in range(self.num_classes):
            idx = [i for i, (lab, ok) in enumerate(zip(labels, valid_l)) if lab == c and ok]
            if cap is not None:
                pr = priority.cpu().tolist()
                # highest priority first, ties -> lower index; then back to input order
                idx = sorted(sorted(idx, key=lambda i: (-pr[i], i))[:cap])
            for i in idx:
                self.keys[c].append(keys[i].clone())
            self.pushed[c] += len(idx)
        for lab in labels:
            if not (0 <= lab < self.num_classes or lab == ignore_index):
                raise ValueError(f"labels contain {lab}")

    def ring_state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(storage [C, K, D], ptr [C], fill [C])`` laid out as the op lays them out; never-written
        slots are zero (the modules start from zeros)."""
        storage = torch.zeros(self.num_classes, self.size, self.dim, dtype=self.dtype)
        ptr = torch.tensor([n % self.size for n in self.pushed], dtype=torch.int64)
        fill = torch.tensor([len(kept) for kept in self.keys], dtype=torch.int64)
        for c, kept in enumerate(self.keys):
            for age, key in enumerate(kept):  # age 0 = oldest kept
                storage[c, (int(ptr[c]) - len(kept) + age) % self.size] = key
        return storage, ptr, fill

    def class_keys(self, c: int) -> torch.Tensor:
        """The kept keys of class c, oldest first, ``[fill[c], D]``."""
        kept = self.keys[c]
        return torch.stack(list(kept)) if kept else torch.zeros(0, self.dim, dtype=self.dtype)


def concat_truncate_push(
    storage: list[torch.Tensor], keys: torch.Tensor, labels: torch.Tensor, size: int
) -> list[torch.Tensor]:
    """The public code's approach (for the benchmark): per class ``torch.cat`` new keys in front of the
    old ones and truncate to ``size`` keys (a new tensor every push). ``storage``: one ``[n_c, D]``
    tensor per class, newest first; returns the new list."""
    out = []
    for c, old in enumerate(storage):
        new = keys[labels == c]
        out.append(torch.cat([new.flip(0), old], 0)[:size])
    return out
