"""Batch samplers driven by an explicit ``torch.Generator`` (its state is checkpointed, so a
resumed run draws exactly the batches an uninterrupted run would have drawn)."""

from __future__ import annotations

import torch


class EpochShuffler:
    """Endless shuffled pass over ``n`` items: each epoch a fresh permutation from ``generator``."""

    def __init__(self, n: int, generator: torch.Generator):
        if n <= 0:
            raise ValueError("EpochShuffler: need at least one item to sample from")
        self.n, self.gen = n, generator
        self.perm: list[int] = []
        self.pos = 0

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos >= len(self.perm):
                self.perm = torch.randperm(self.n, generator=self.gen).tolist()
                self.pos = 0
            take = min(k - len(out), len(self.perm) - self.pos)
            out += self.perm[self.pos : self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"perm": list(self.perm), "pos": self.pos, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"sampler state is for {state['n']} items, this run has {self.n}")
        self.perm, self.pos = list(state["perm"]), int(state["pos"])


class LabeledUnlabeledSampler:
    """Batches whose first ``labeled_bs`` entries are labeled items and the rest unlabeled items.

    ``labeled``/``unlabeled``: item ids (e.g. slice indices). Returns ``(labeled_ids, unlabeled_ids)``.
    With ``labeled_bs == batch_size`` the unlabeled pool may be empty (supervised training).

    Sharded (``world_size > 1``, one sampler per rank, every one with a generator seeded alike): each
    call draws the global batch, ``world_size`` times ``labeled_bs`` labeled and ``batch_size -
    labeled_bs`` unlabeled items, and returns rank ``rank``'s contiguous part of each half. The ranks
    thus see disjoint parts of every global batch (within an epoch of the shuffler), and the global
    batch is the one a single process with ``world_size`` times the batch would draw. The state
    (the shuffled epochs) is the same on every rank.
    """

    def __init__(
        self,
        labeled: list[int],
        unlabeled: list[int],
        batch_size: int,
        labeled_bs: int,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 < labeled_bs <= batch_size:
            raise ValueError(f"labeled_bs must be in 1..batch_size={batch_size}, got {labeled_bs}")
        if labeled_bs < batch_size and not unlabeled:
            raise ValueError("LabeledUnlabeledSampler: unlabeled half requested but no unlabeled items")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"LabeledUnlabeledSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.labeled, self.unlabeled = list(labeled), list(unlabeled)
        self.batch_size, self.labeled_bs = batch_size, labeled_bs
        self.rank, self.world_size = rank, world_size
        self._lab = EpochShuffler(len(self.labeled), generator)
        self._unl = EpochShuffler(len(self.unlabeled), generator) if self.unlabeled else None

    def next_batch(self) -> tuple[list[int], list[int]]:
        w, r = self.world_size, self.rank
        lbs, n_unl = self.labeled_bs, self.batch_size - self.labeled_bs
        lab = [self.labeled[i] for i in self._lab.take(w * lbs)[r * lbs : (r + 1) * lbs]]
        unl = (
            [self.unlabeled[i] for i in self._unl.take(w * n_unl)[r * n_unl : (r + 1) * n_unl]]
            if (self._unl and n_unl)
            else []
        )
        return lab, unl

    def state_dict(self) -> dict:
        return {"labeled": self._lab.state_dict(), "unlabeled": self._unl.state_dict() if self._unl else None}

    def load_state_dict(self, state: dict) -> None:
        self._lab.load_state_dict(state["labeled"])
        if self._unl is not None and state["unlabeled"] is not None:
            self._unl.load_state_dict(state["unlabeled"])
