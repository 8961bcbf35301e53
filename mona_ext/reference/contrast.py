"""References of the contrastive-loss ops, and the two baselines the benchmark compares with.

* ``class_pools``, ``contrast_infonce``: plain-PyTorch versions of the ops with identical
  semantics (the tests compare the kernels with them, indices fixed).
* ``reco_loss_published``: a faithful re-implementation of the algorithm of ReCo's published
  ``compute_reco_loss`` (boolean-mask copies per class, ``.item()`` syncs, a Categorical draw and
  a per-query Python loop of numpy ``randint`` calls for the negative indices, materialised keys).
* ``contrast_loss_vectorised``: the same loss written as well-vectorised PyTorch (one permuted
  copy of the map, argsort pools, ``multinomial`` sampling, ``index_select`` of the keys, ``bmm``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .class_mean import _pixels_by_channel

COS_EPS = 1e-8


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    return starts[0:2 * C:2], bucket[0:2 * C:2] + bucket[1:2 * C:2], bucket[0:2 * C:2], perm


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x.y / (max(|x|, eps) max(|y|, eps)) over the last dim (the kernels' convention)."""
    return (x * y).sum(-1) / (x.norm(dim=-1).clamp_min(COS_EPS) * y.norm(dim=-1).clamp_min(COS_EPS))


def contrast_infonce(features, key_features, prototypes, query_index, negative_index, class_weight, temperature,
                     bank=None):
    """Reference of ``mona.contrast_infonce`` (loss only): materialises the keys, autograd gradient."""
    acc = _acc(features.dtype)
    x = _pixels_by_channel(features).to(acc)
    keys = _pixels_by_channel(key_features).detach().to(acc)
    if bank is not None:
        keys = torch.cat([keys, bank.detach().reshape(-1, bank.shape[-1]).to(acc)])
    C, Q = query_index.shape
    use = class_weight > 0
    if x.shape[0] == 0:  # zero-size batch: no class has queries
        return x.sum() * 0.0
    q = x[query_index.clamp_min(0)]                                   # [C, Q, D]
    neg = keys[negative_index.clamp_min(0)]                           # [C, Q, M, D]
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
            neg_sizes = sizes[i + 1:] + sizes[:i]
            starts = np.cumsum([0] + neg_sizes)
            index: list[int] = []
            for q in range(num_queries):
                for k in range(len(neg_sizes)):
                    index += np.random.randint(starts[k], starts[k + 1], size=int(per_class[q, k])).tolist()
            pool = torch.cat(members[i + 1:] + members[:i])
            negatives = pool[index].reshape(num_queries, num_negatives, D)
            positive = protos[i][None, None].repeat(num_queries, 1, 1)
            keys = torch.cat((positive, negatives), dim=1)
        logits = F.cosine_similarity(anchors[:, None], keys, dim=2)
        loss = loss + F.cross_entropy(logits / temp, torch.zeros(num_queries, dtype=torch.long, device=rep.device))
    return loss / n


def contrast_loss_vectorised(features, labels, num_classes, valid=None, prob=None, strong_threshold=0.97,
                             temperature=0.5, num_queries=256, num_negatives=512, generator=None):
    """The ACF loss (batch negatives, hard queries) as well-vectorised plain PyTorch."""
    C, Q, M = num_classes, num_queries, num_negatives
    D = features.shape[1]
    x = _pixels_by_channel(features)                       # permuted copy, differentiable
    keys = x.detach()
    offsets, counts, hard_counts, perm = class_pools(labels, C, valid, prob, strong_threshold)
    lab = labels.reshape(-1).long()
    ok = (lab >= 0) & (lab < C)
    if valid is not None:
        ok &= valid.reshape(-1) != 0
    idx = torch.where(ok, lab, torch.zeros_like(lab))
    sums = torch.zeros(C, D, dtype=keys.dtype, device=keys.device).index_add_(0, idx[ok], keys[ok])
    protos = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
    present = counts > 0
    normed = F.normalize(protos, dim=1, eps=COS_EPS)
    graph = (normed @ normed.T) / temperature
    allowed = present[None, :] & ~torch.eye(C, dtype=torch.bool, device=keys.device)
    graph = graph.masked_fill(~allowed, float("-inf"))
    n_present = present.sum().clamp_min(1)
    loss = x.new_zeros(())
    for c in range(C):
        if counts[c] == 0 or hard_counts[c] == 0 or not allowed[c].any():
            continue
        q_slot = (torch.rand(Q, generator=generator, device=keys.device) * hard_counts[c]).long()
        anchors = F.normalize(x[perm[offsets[c] + q_slot]], dim=1, eps=COS_EPS)            # [Q, D]
        neg_class = torch.multinomial(torch.softmax(graph[c], 0), Q * M, replacement=True, generator=generator)
        slot = (torch.rand(Q * M, generator=generator, device=keys.device) * counts[neg_class]).long()
        neg = keys.index_select(0, perm[offsets[neg_class] + slot]).view(Q, M, D)
        all_keys = F.normalize(torch.cat([protos[c].expand(Q, 1, D), neg], 1), dim=2, eps=COS_EPS)
        logits = torch.bmm(all_keys, anchors[:, :, None])[..., 0] / temperature            # [Q, M+1]
        loss = loss + F.cross_entropy(logits, torch.zeros(Q, dtype=torch.long, device=keys.device))
    return loss / n_present
