"""References of the contrastive-loss ops, and the two baselines the benchmark compares with.

* ``class_pools``, ``contrast_infonce``: plain-PyTorch versions of the ops with identical
  semantics (the tests compare the kernels with them, indices fixed).
* ``reco_loss_published``: a faithful re-implementation of the algorithm of ReCo's published
  ``compute_reco_loss`` (boolean-mask copies per class, ``.item()`` syncs, a Categorical draw and
  a per-query Python loop of numpy ``randint`` calls for the negative indices, materialised keys).
* ``contrast_loss_vectorised``: the whole ``contrast_loss`` op (batch / bank / both negatives, teacher
  key map, hard / all / balanced queries) written as well-vectorised PyTorch (one permuted copy of the
  map, argsort pools, ``multinomial`` sampling, ``index_select`` of the keys, ``bmm``): the same loss in
  distribution, the ``impl: reference`` of the training code and the benchmark's baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..ops._common import acc_dtype
from .class_mean import _pixels_by_channel

COS_EPS = 1e-8


def class_pools(labels, num_classes, valid=None, prob=None, strong_threshold=1.0, ignore_index=-1):
    """Reference of ``mona.class_pools`` with a stable argsort of the bucket keys."""
    C = num_classes
    lab = labels.reshape(-1).long()
    ok = (lab >= 0) & (lab < C)
    if valid is not None:
        ok &= valid.reshape(-1) != 0
    if prob is None:
        hard = torch.ones_like(ok)
    else:
        p = prob.permute(0, 2, 3, 1).reshape(-1, C) if prob.dim() == 4 else prob
        # the kernels compare in float32 precision, promoted to double
        hard = p.gather(1, lab.clamp(0, C - 1)[:, None])[:, 0].float().double() < strong_threshold
    key = torch.where(ok, 2 * lab + (~hard).long(), torch.full_like(lab, 2 * C))
    order = torch.sort(key, stable=True).indices
    bucket = torch.bincount(key, minlength=2 * C + 1)
    starts = torch.cumsum(bucket, 0) - bucket
    perm = torch.where(torch.sort(key, stable=True).values == 2 * C, torch.full_like(order, -1), order)
    return starts[0 : 2 * C : 2], bucket[0 : 2 * C : 2] + bucket[1 : 2 * C : 2], bucket[0 : 2 * C : 2], perm


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x.y / (max(|x|, eps) max(|y|, eps)) over the last dim (the kernels' convention)."""
    return (x * y).sum(-1) / (x.norm(dim=-1).clamp_min(COS_EPS) * y.norm(dim=-1).clamp_min(COS_EPS))


def contrast_infonce(
    features, key_features, prototypes, query_index, negative_index, class_weight, temperature, bank=None
):
    """Reference of ``mona.contrast_infonce`` (loss only): materialises the keys, autograd gradient."""
    acc = acc_dtype(features.dtype)
    x = _pixels_by_channel(features).to(acc)
    keys = _pixels_by_channel(key_features).detach().to(acc)
    if bank is not None:
        keys = torch.cat([keys, bank.detach().reshape(-1, bank.shape[-1]).to(acc)])
    C, Q = query_index.shape
    use = class_weight > 0
    if x.shape[0] == 0:  # zero-size batch: no class has queries
        return x.sum() * 0.0
    q = x[query_index.clamp_min(0)]  # [C, Q, D]
    neg = keys[negative_index.clamp_min(0)]  # [C, Q, M, D]
    pos = prototypes.detach().to(acc)[:, None, None, :].expand(C, Q, 1, -1)
    logits = cosine(q[:, :, None, :], torch.cat([pos, neg], 2)) / temperature  # [C, Q, M+1]
    row = torch.logsumexp(logits, -1) - logits[..., 0]
    row = torch.where(use[:, None], row, torch.zeros_like(row))
    return (row.mean(1) * class_weight.to(acc)).sum()


def reco_loss_published(rep, label, mask, prob, strong_threshold=1.0, temp=0.5, num_queries=256, num_negatives=256):
    """ReCo's published algorithm (one-hot ``label [B,C,H,W]``, ``mask [B,(1,)H,W]``), re-implemented.

    Randomness: ``torch`` global RNG for queries and classes, ``numpy`` global RNG for the
    negative pixel indices (as published).
    """
    B, D, H, W = rep.shape
    C = label.shape[1]
    if mask.dim() == 3:
        mask = mask[:, None]
    valid = label * mask
    feats = rep.permute(0, 2, 3, 1)
    protos, members, hard_members, sizes = [], [], [], []
    for c in range(C):
        in_class = valid[:, c].bool()
        if in_class.sum() == 0:
            continue
        hard = (prob[:, c] < strong_threshold) & in_class
        protos.append(feats[in_class].mean(0, keepdim=True))
        members.append(feats[in_class])
        hard_members.append(feats[hard])
        sizes.append(int(in_class.sum().item()))
    if len(sizes) <= 1:
        return rep.sum() * 0.0
    protos = torch.cat(protos)
    n = len(sizes)
    loss = rep.new_zeros(())
    for i in range(n):
        if len(hard_members[i]) == 0:
            continue
        anchors = hard_members[i][torch.randint(len(hard_members[i]), size=(num_queries,))]
        with torch.no_grad():
            rotated = list(range(i, n)) + list(range(0, i))
            sim = F.cosine_similarity(protos[rotated[0]][None], protos[rotated[1:]], dim=1)
            class_prob = torch.softmax(sim / temp, dim=0)
            drawn = torch.distributions.Categorical(probs=class_prob).sample((num_queries, num_negatives))
            per_class = torch.stack([(drawn == k).sum(1) for k in range(len(class_prob))], dim=1)
            neg_sizes = sizes[i + 1 :] + sizes[:i]
            starts = np.cumsum([0] + neg_sizes)
            index: list[int] = []
            for q in range(num_queries):
                for k in range(len(neg_sizes)):
                    index += np.random.randint(starts[k], starts[k + 1], size=int(per_class[q, k])).tolist()
            pool = torch.cat(members[i + 1 :] + members[:i])
            negatives = pool[index].reshape(num_queries, num_negatives, D)
            positive = protos[i][None, None].repeat(num_queries, 1, 1)
            keys = torch.cat((positive, negatives), dim=1)
        logits = F.cosine_similarity(anchors[:, None], keys, dim=2)
        loss = loss + F.cross_entropy(logits / temp, torch.zeros(num_queries, dtype=torch.long, device=rep.device))
    return loss / n


NEGATIVE_SOURCES = ("batch", "bank", "both")
QUERY_MODES = ("hard", "all", "balanced")


def _uniform_index(u: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``floor(u * n)`` clamped to ``n - 1`` (``sample_negatives_math::uniform_index``: the product in double)."""
    return torch.minimum((u.double() * n.double()).long(), (n - 1).clamp_min(0))


def _query_slots(mode: str, u: torch.Tensor, count: torch.Tensor, hard_count: torch.Tensor) -> torch.Tensor:
    """Positions of the Q queries of one class in its pool segment ``[hard | easy]``
    (``sample_negatives_math::query_slot``; the caller only asks for a class that has queries in ``mode``)."""
    if mode == "hard":
        return _uniform_index(u, hard_count)
    if mode == "all":
        return _uniform_index(u, count)
    # balanced: the first ceil(Q/2) queries hard, the rest easy; all from one side if the other is empty
    easy_count = count - hard_count
    want_hard = torch.arange(u.shape[0], device=u.device) < (u.shape[0] + 1) // 2
    take_hard = (want_hard & (hard_count > 0)) | (easy_count == 0)
    return torch.where(take_hard, _uniform_index(u, hard_count), hard_count + _uniform_index(u, easy_count))


def _check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    lab = labels.reshape(-1)
    bad = ((lab < 0) | (lab >= num_classes)) & (lab != ignore_index)
    if bool(bad.any()):
        raise ValueError(
            f"contrast_loss_vectorised: labels contain {int(lab[bad][0])}, which is neither in "
            f"[0, num_classes={num_classes}) nor ignore_index={ignore_index}"
        )


def contrast_loss_vectorised(
    features,
    labels,
    num_classes,
    valid=None,
    prob=None,
    strong_threshold=0.97,
    temperature=0.5,
    num_queries=256,
    num_negatives=512,
    generator=None,
    *,
    key_features=None,
    bank=None,
    bank_fill=None,
    negatives="batch",
    query_mode="hard",
    ignore_index=-1,
):
    """The ACF loss of ``mona_ext.contrast_loss`` (same options, same semantics, same sampling
    distribution) as well-vectorised plain PyTorch: one permuted copy of the map, argsort pools,
    ``multinomial`` class draws, ``index_select`` of the materialised keys, ``bmm``; one class at a time.

    * prototypes (positive keys) = mean of ``key_features`` (default ``features``, detached) over the
      valid pixels of each class (``valid`` masks them, ``ignore_index`` / out-of-range labels take no part);
    * negative classes: class c draws v != c with probability ``softmax_v(cos(g_c, g_v) / temperature)``
      over the classes that have keys in the source (``negatives``: ``"batch"`` = pixels of v in the batch,
      ``"bank"`` = filled bank slots of v, ``"both"`` = either); g = the batch prototype, or, with a bank,
      the mean of the filled bank slots for a class absent from the batch;
    * a negative key is then uniform over the class's batch pixels followed by its filled bank slots;
    * queries: ``num_queries`` pixels of ``features`` drawn uniformly with replacement from the class's
      hard pixels (``prob[c] < strong_threshold``; all pixels hard without ``prob``), all its pixels, or
      ``"balanced"`` (first ceil(Q/2) hard, the rest easy, one side only if the other is empty);
    * loss = sum over classes with queries and at least one negative class of the mean cross-entropy,
      divided by the number of classes present in the batch (a present class without queries counts);
      no contributing class (e.g. fewer than two classes with keys) -> 0 with a gradient path.

    ``bank`` is ``[C, K, D]`` storage with ``bank_fill`` ``[C]`` (slots ``[0, fill)`` are filled), or a
    ``mona_ext.ClassMemoryBank``. Randomness from ``generator`` (a different stream than the op's: equal
    in distribution, not per seed). Gradient to ``features`` only. Float64 in -> float64 loss.
    """
    name = "contrast_loss_vectorised"
    if negatives not in NEGATIVE_SOURCES:
        raise ValueError(f"{name}: negatives must be one of {NEGATIVE_SOURCES}, got {negatives!r}")
    if query_mode not in QUERY_MODES:
        raise ValueError(f"{name}: query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
    if hasattr(bank, "storage") and hasattr(bank, "fill"):  # a ClassMemoryBank
        if bank_fill is not None:
            raise ValueError(f"{name}: pass either a ClassMemoryBank or (bank tensor, bank_fill), not both")
        bank, bank_fill = bank.storage, bank.fill
    use_bank = negatives != "batch"
    if use_bank and (bank is None or bank_fill is None):
        raise ValueError(f"{name}: negatives={negatives!r} needs bank [C, K, D] and bank_fill [C]")
    if num_queries <= 0 or num_negatives <= 0:
        raise ValueError(f"{name}: num_queries and num_negatives must be positive, got {num_queries}, {num_negatives}")
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"{name}: temperature must be positive and finite, got {temperature}")
    if key_features is not None and key_features.shape != features.shape:
        raise ValueError(
            f"{name}: key_features must have the features' shape {tuple(features.shape)}, "
            f"got {tuple(key_features.shape)}"
        )
    C, Q, M = num_classes, num_queries, num_negatives
    D = features.shape[1]
    acc = acc_dtype(features.dtype)
    device = features.device
    _check_labels(labels, C, ignore_index)
    if use_bank and (bank.dim() != 3 or bank.shape[0] != C or bank.shape[2] != D or bank_fill.shape != (C,)):
        raise ValueError(
            f"{name}: bank must be [C, K, D] = [{C}, K, {D}] and bank_fill [{C}], got "
            f"{tuple(bank.shape)} and {tuple(bank_fill.shape)}"
        )

    x = _pixels_by_channel(features).to(acc)  # queries: permuted copy, differentiable
    keys = x.detach() if key_features is None else _pixels_by_channel(key_features).detach().to(acc)
    N = x.shape[0]
    offsets, counts, hard_counts, perm = class_pools(labels, C, valid, prob, strong_threshold)

    # prototypes of the key map over the valid pixels
    lab = labels.reshape(-1).long()
    ok = (lab >= 0) & (lab < C)
    if valid is not None:
        ok &= valid.reshape(-1) != 0
    idx = torch.where(ok, lab, torch.zeros_like(lab))
    sums = torch.zeros(C, D, dtype=acc, device=device).index_add_(0, idx[ok], keys[ok])
    protos = sums / counts.clamp_min(1)[:, None].to(acc)
    present = counts > 0

    # negative source: which classes have keys, how many in the batch / the bank, where the key rows lie
    in_batch = counts if negatives != "bank" else torch.zeros_like(counts)
    graph_protos = protos
    if use_bank:
        bank = bank.detach().to(acc)
        K = bank.shape[1]
        fill = bank_fill.to(device=device, dtype=torch.long)
        filled = torch.arange(K, device=device)[None, :] < fill[:, None]
        bank_protos = (bank * filled[..., None]).sum(1) / fill.clamp_min(1)[:, None].to(acc)
        graph_protos = torch.where(present[:, None], protos, bank_protos)
        in_bank = fill
        bank_rows = bank.reshape(C * K, D)
        table, bank_base = (bank_rows, 0) if negatives == "bank" else (torch.cat([keys, bank_rows]), N)
    else:
        K, in_bank, table, bank_base = 0, torch.zeros_like(counts), keys, N
    available = (in_batch + in_bank) > 0

    # class relation graph, masked softmax over the classes that can supply negatives
    normed = F.normalize(graph_protos, dim=1, eps=COS_EPS)
    allowed = available[None, :] & ~torch.eye(C, dtype=torch.bool, device=device)
    graph = ((normed @ normed.T) / temperature).masked_fill(~allowed, float("-inf"))
    has_queries = (hard_counts if query_mode == "hard" else counts) > 0
    contributing = (has_queries & allowed.any(1)).nonzero().flatten().tolist()

    loss = x[:0].sum()  # 0 with a gradient path
    for c in contributing:
        u = torch.rand(Q, generator=generator, device=device)
        slot = _query_slots(query_mode, u, counts[c], hard_counts[c])
        anchors = F.normalize(x.index_select(0, perm[offsets[c] + slot]), dim=1, eps=COS_EPS)  # [Q, D]
        v = torch.multinomial(torch.softmax(graph[c], 0), Q * M, replacement=True, generator=generator)
        nb = in_batch[v]
        key_slot = _uniform_index(torch.rand(Q * M, generator=generator, device=device), nb + in_bank[v])
        from_batch = perm[(offsets[v] + key_slot).clamp(0, max(N - 1, 0))] if N > 0 else key_slot
        rows = torch.where(key_slot < nb, from_batch, bank_base + v * K + (key_slot - nb))
        neg = table.index_select(0, rows).view(Q, M, D)
        all_keys = F.normalize(torch.cat([protos[c].expand(Q, 1, D), neg], 1), dim=2, eps=COS_EPS)
        logits = torch.bmm(all_keys, anchors[:, :, None])[..., 0] / temperature  # [Q, M+1]
        loss = loss + F.cross_entropy(logits, torch.zeros(Q, dtype=torch.long, device=device))
    return loss / present.sum().clamp_min(1)
